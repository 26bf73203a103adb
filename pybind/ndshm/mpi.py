"""ndshm for MPI programs: one shared array per node, allocated and freed collectively.

``allocate_shared(comm, shape, dtype)`` is ndshm's counterpart of ``MPI.Win.Allocate_shared``
on a node communicator: the ranks of ``comm`` that share a node (``comm.Split_type(
MPI.COMM_TYPE_SHARED)``) get one segment between them. Rank 0 of that node communicator (the
node leader) creates it, broadcasts its name, every other rank of the node attaches it, and
:meth:`SharedWindow.free` releases it collectively, as ``Win.Free()`` does::

    from mpi4py import MPI
    import ndshm.mpi

    comm = MPI.COMM_WORLD
    with ndshm.mpi.allocate_shared(comm, (comm.Get_size(), 1000), "f4") as a:
        a[comm.Get_rank()] = comm.Get_rank()     # each rank writes its row, in place
        comm.Barrier()
        print(a[:, 0])                           # and reads the rows of every rank on its node

Between nodes nothing is shared: each node has its own array, and data moves between nodes with
MPI itself (for example ``comm.Bcast`` among the node leaders). This is a thin layer over
:func:`ndshm.Segment.create` / :meth:`ndshm.Segment.attach`, not a new MPI: the data is a plain
NumPy array (an :class:`ndshm.SharedArray`), so ``comm.Send(a, ...)`` and friends take it as is.

Errors are collective too: a failure on any rank (a shape no memory can hold on a leader, a full
``/dev/shm``, arguments that differ between ranks) raises the same exception, with the same
message, on every rank of ``comm``, and nothing is left behind. Run MPI programs with ``python -m
mpi4py`` so that an exception one rank does not catch aborts the job instead of leaving the other
ranks waiting in a collective.

mpi4py is imported here only: ``import ndshm`` does not load it.
"""

from __future__ import annotations

import os
import pickle
import uuid
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn, Optional, cast

from . import _dtype
from ._dtype import ShapeLike
from ._errors import ClosedError
from ._segment import Segment

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from mpi4py import MPI
    from numpy.typing import DTypeLike, NDArray

__all__ = ["SharedWindow", "allocate_shared"]


def _mpi() -> Any:
    """The mpi4py ``MPI`` module, imported on first use (so that ``import ndshm`` never pays for it).
    Typed ``Any``, as a module object has no static type; annotations name the ``MPI`` that
    ``TYPE_CHECKING`` imports."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError("ndshm.mpi needs mpi4py: pip install 'ndshm[mpi]' (or mpi4py) "
                          "against the MPI library mpirun uses") from e
    return MPI


class SharedWindow:
    """One node's shared array and the node communicator that shares it.

    Made by :func:`allocate_shared`; like ``MPI.Win``, it must be released collectively with
    :meth:`free` by every rank of the node (or used as a context manager, whose ``with`` block
    yields the array and frees it at the end).

    Attributes: :attr:`array` (this rank's view), :attr:`comm` (the node communicator, owned by
    the window), :attr:`leader` (whether this rank created the segment), :attr:`name` and
    :attr:`dir` (where the segment lives), :attr:`segment` (the :class:`ndshm.Segment`).
    """

    __slots__ = ("_comm", "_segment", "_array", "_leader", "_name", "_dir", "_freed")
    _comm: MPI.Intracomm
    _segment: Optional[Segment]  # None once freed
    _array: Optional[NDArray[Any]]  # None once freed
    _leader: bool
    _name: str
    _dir: str
    _freed: bool

    def __init__(self) -> None:  # pragma: no cover - made by allocate_shared only
        raise TypeError("use ndshm.mpi.allocate_shared(comm, shape, dtype)")

    @classmethod
    def _wrap(cls, comm: MPI.Intracomm, segment: Segment, array: NDArray[Any], leader: bool) -> SharedWindow:
        self = object.__new__(cls)
        name, dir = segment.name, segment.dir
        assert name is not None and dir is not None  # a named segment
        self._comm = comm
        self._segment = segment
        self._array = array
        self._leader = leader
        self._name = name
        self._dir = dir
        self._freed = False
        return self

    @property
    def array(self) -> NDArray[Any]:
        """This rank's view of the node's array (the same memory on every rank of the node)."""
        array = self._array
        if array is None:
            raise ClosedError(f"shared window {self._name!r} was freed")
        return array

    @property
    def comm(self) -> MPI.Intracomm:
        """The node communicator (``Split_type(COMM_TYPE_SHARED)`` of the allocating ``comm``);
        freed by :meth:`free`."""
        return self._comm

    @property
    def leader(self) -> bool:
        """True on the node leader (rank 0 of :attr:`comm`), which created the segment."""
        return self._leader

    @property
    def name(self) -> str:
        """The segment's name (the same on every rank of the node)."""
        return self._name

    @property
    def dir(self) -> str:
        """The directory holding the segment."""
        return self._dir

    @property
    def segment(self) -> Segment:
        """This rank's :class:`ndshm.Segment` of the array."""
        segment = self._segment
        if segment is None:
            raise ClosedError(f"shared window {self._name!r} was freed")
        return segment

    @property
    def freed(self) -> bool:
        """True once :meth:`free` (or the ``with`` block) ended."""
        return self._freed

    def free(self) -> None:
        """Release the array collectively (every rank of the node must call it, like ``Win.Free()``).

        A node barrier (every rank is done with the array), then the leader removes the segment's
        name, every rank drops its mapping and the node communicator is freed. When it returns, on
        any rank, the name is gone. Arrays still referenced stay valid memory (ndshm never unmaps
        under a live view) but are private leftovers: drop them. Calling it again does nothing. A
        window never freed keeps its segment until the leader's process ends."""
        seg = self._segment
        if seg is None:  # freed
            return
        comm = self._comm
        comm.Barrier()
        mine: Optional[Exception] = None
        if self._leader:
            try:
                seg.unlink()
            except FileNotFoundError:  # removed by hand (ndshm gc, rm): nothing left to remove
                pass
            except Exception as e:
                mine = e
        blob = comm.bcast(None if mine is None else _portable(mine), root=0)  # after the unlink
        self._release()
        comm.Free()
        if mine is not None:
            raise mine
        if blob is not None:
            _raise(blob, "the node leader (rank 0 of the node communicator)")

    def _release(self) -> None:
        """Drop this rank's use of the segment (local: no communication)."""
        self._freed = True
        seg, self._segment, self._array = self._segment, None, None  # the mapping goes with the last view
        try:
            if seg is not None:
                seg.close()
        except FileNotFoundError:
            pass

    def __enter__(self) -> NDArray[Any]:
        return self.array

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        if exc_type is None:
            self.free()
            return
        seg = self._segment
        if seg is None:  # freed
            return
        # The block raised on this rank, perhaps on this rank only: a collective free() could wait
        # for ever on ranks that are elsewhere. Release locally (the leader removes the name) and
        # let the exception propagate; under `python -m mpi4py`, an uncaught one aborts the job.
        if self._leader:
            try:
                seg.unlink()
            except OSError:
                pass
        self._release()

    def __repr__(self) -> str:
        seg = self._segment
        state = "freed" if seg is None else f"shape={seg.shape} dtype={seg.dtype}"
        role = "leader" if self._leader else "member"
        return f"<ndshm.mpi.SharedWindow {self._name!r} {state} ({role})>"


def allocate_shared(comm: MPI.Intracomm, shape: ShapeLike, dtype: DTypeLike = float, *, order: str = "C",
                    fill: Any = None, readonly: bool = False, populate: bool = False,
                    dir: Optional[str] = None) -> SharedWindow:
    """Allocate one array of ``shape`` and ``dtype`` per node, shared by the node's ranks of ``comm``.

    Collective over ``comm`` (every rank calls it, with the same ``shape``, ``dtype`` and ``order``),
    like ``MPI.Win.Allocate_shared``. The ranks of ``comm`` on one node form the node communicator
    ``comm.Split_type(MPI.COMM_TYPE_SHARED)``; its rank 0, the node leader, creates the segment in
    ``dir`` (default ``$NDSHM_DIR`` or ``/dev/shm``) zero-filled, or filled with ``fill``; the
    others attach it before anyone may remove it (the leader's ``fill`` and ``dir`` are the ones
    used). ``readonly=True`` maps it read-only on the other
    ranks (their arrays are not writeable); the leader's array stays writeable, so the leader can
    load the data. ``populate=True`` pre-faults the memory (``ndshm.create(populate=True)``: split
    over the CPUs on the leader) and every other rank's mapping of it, so that no rank pays page
    faults at first touch.

    Returns a :class:`SharedWindow`: ``with allocate_shared(...) as a:`` gives the array and frees
    it collectively at the end of the block; or keep ``win = allocate_shared(...)``, use
    ``win.array`` and call ``win.free()`` on every rank.

    It succeeds on every rank or raises on every rank of ``comm``: an error anywhere (a bad shape
    or no space for the segment on a leader, arguments that differ from the leader's, a failed
    attach) is raised everywhere with the same type and message, and nothing is left allocated.
    ``comm`` that is not an ``MPI.Intracomm`` raises TypeError before any communication.
    """
    MPI = _mpi()
    if not isinstance(comm, MPI.Intracomm):
        raise TypeError(f"comm must be an mpi4py MPI.Intracomm (such as MPI.COMM_WORLD), "
                        f"not {type(comm).__module__}.{type(comm).__qualname__} {comm!r}")
    node = _node_comm(comm)
    try:
        return _allocate_on_node(comm, node, shape, dtype, order, fill, readonly, populate, dir)
    except BaseException:
        node.Free()  # every rank gets here together: failures are agreed collectively
        raise


def _node_comm(comm: MPI.Intracomm) -> MPI.Intracomm:
    """The ranks of ``comm`` that share this node's memory (rank 0 of it is the node leader)."""
    # Split_type of an Intracomm makes an Intracomm (mpi4py's stubs declare Comm.Split_type's).
    return cast("MPI.Intracomm", comm.Split_type(_mpi().COMM_TYPE_SHARED))


def _allocate_on_node(comm: MPI.Intracomm, node: MPI.Intracomm, shape: ShapeLike, dtype: DTypeLike, order: str,
                      fill: Any, readonly: bool, populate: bool, dir: Optional[str]) -> SharedWindow:
    """The protocol: the node leader creates and broadcasts (name, dir) or its error on the node;
    the others attach; every rank's outcome is gathered on the node (so no name is removed before
    all attached) and, across nodes, agreed on ``comm``: all succeed or all raise the first error."""
    leader = node.Get_rank() == 0
    seg: Optional[Segment] = None
    arr: Optional[NDArray[Any]] = None
    mine: Optional[Exception] = None  # this rank's failure, raised as is (with its traceback) here
    if leader:
        try:
            name = f"mpi-{os.getpid()}-{uuid.uuid4().hex[:12]}"
            seg = Segment.create(name, shape=shape, dtype=dtype, order=order, dir=dir, fill=fill,
                                 populate=populate)
            arr = seg.asarray()
        except Exception as e:
            mine = e
        node.bcast(None if mine is not None or seg is None else (seg.name, seg.dir), root=0)
    else:
        where = node.bcast(None, root=0)
        if where is not None:  # None: the leader failed and sends its error below
            try:
                seg = Segment.attach(where[0], readonly=readonly, dir=where[1], populate=populate)
                _check_same(seg, shape, dtype, order, node.Get_rank())
                arr = seg.asarray()
            except Exception as e:
                mine = e
    outcomes = node.allgather(None if mine is None else _portable(mine))
    failed = next((r for r, o in enumerate(outcomes) if o is not None), None)
    blob, origin = (outcomes[failed], f"rank {failed} of the node communicator") if failed is not None else (None, "")
    if node.Get_size() < comm.Get_size():  # more than one node: agree on comm
        MPI = _mpi()
        first = comm.allreduce(comm.Get_rank() if blob is not None else comm.Get_size(), op=MPI.MIN)
        if first < comm.Get_size():
            blob = comm.bcast(blob, root=first)
            if failed is None or first != comm.Get_rank():
                origin = f"a node whose ranks include rank {first} of comm"
    if blob is None:
        assert seg is not None and arr is not None
        return SharedWindow._wrap(node, seg, arr, leader)
    if seg is not None:
        _discard(seg, leader)
    if mine is not None and blob == outcomes[node.Get_rank()]:
        raise mine
    _raise(blob, origin)


def _check_same(seg: Segment, shape: ShapeLike, dtype: DTypeLike, order: str, rank: int) -> None:
    """Refuse a rank whose arguments describe another array than the leader's (MPI programs call
    collectives with the same arguments everywhere; a mismatch is a bug worth naming)."""
    order = _dtype.check_order(order)
    dims, dt = _dtype.normalize(shape, dtype)
    fortran = len(dims) > 1 and seg.strides == _dtype.contiguous_strides(dims, dt.itemsize, "F")
    if dims != seg.shape or dt != seg.dtype or (len(dims) > 1 and (order == "F") != fortran):
        got = f"shape {seg.shape}, dtype {seg.dtype}, order {'F' if fortran else 'C'}"
        raise ValueError(f"rank {rank} of the node communicator asked for shape {dims}, dtype {dt}, order "
                         f"{order!r}, but the node leader allocated {got}: allocate_shared is collective and "
                         f"needs the same shape, dtype and order on every rank")


def _discard(seg: Segment, leader: bool) -> None:
    """Undo an allocation locally: the leader removes the name, every rank closes its segment."""
    try:
        if leader:
            seg.unlink()
    except OSError:
        pass
    try:
        seg.close()
    except OSError:
        pass


def _portable(exc: BaseException) -> bytes:
    """``exc`` pickled for the other ranks; one that does not come back from pickling with its
    type and message travels as a RuntimeError naming both."""
    try:
        blob = pickle.dumps(exc)
        back = pickle.loads(blob)
        if type(back) is type(exc) and str(back) == str(exc):
            return blob
    except Exception:
        pass
    return pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))


def _raise(blob: bytes, origin: str) -> NoReturn:
    """Raise, on this rank, the exception that ``origin`` (a rank, described) sent."""
    exc = pickle.loads(blob)
    note = f"(raised on {origin}, and so on every rank)"
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    raise exc

"""A shared-memory queue of NumPy arrays between processes: :class:`Queue`.

The ring lives in one named segment (see the README's Queue section for the fault guarantees). Every
message carries its own dtype and shape. ``put``/``get`` copy once on each side; ``loan`` and
``receive`` work in place in the slot (zero copy).

The array of a ``loan``/``receive`` block is a :class:`SlotArray` (an ndarray subclass) and is valid
only inside the block. The rules:

- Nothing made from it can crash the process: views derived from it and what exports it
  (memoryview, ``__array_interface__`` users, DLPack, ``torch.from_numpy``/``as_tensor``/
  ``from_dlpack``, ctypes) keep the ring mapped for as long as they live, on CPython and PyPy.
- After the block the array itself is closed if nothing but the ``with`` target refers to it: on
  CPython every use of it (attributes, indexing, ufuncs, NumPy functions) raises
  :class:`ClosedError` saying to copy inside the block; it holds no element, so even C-level
  readers see nothing of the ring. An array with another name or an export is never changed
  (see :mod:`ndshm._slots` for how the counts are taken).
- CPython, ``receive``: a view or export still alive at the end of the block keeps the slot (its
  message stays valid) until the last of them dies; producers meanwhile use the other slots, and a
  full queue says how many slots such views hold. An export of the array itself (a tensor, a
  memoryview, a list holding it) keeps the slot until the export *and* the block's ``as`` name are
  gone; a view derived from it (``view[2:]``, ``view.reshape(...)``) only until the view dies.
- CPython, ``loan``: the message is sent when the block ends normally (discarded if it raises). If
  the array then has another name (OpenCV's returned ``dst=``), an export (a tensor, a memoryview,
  a list holding it) or a derived view (``out.view(np.int64)``), its slot is pinned: no producer
  in any process writes there until they are all gone (or this process dies); a producer of this
  process that comes round to it gets :class:`BusyError` at once. Writing through them changes
  the sent message.
- These counts assume the ``as`` name stays bound for the whole block: a block that deletes it and
  keeps exactly one export of the array is taken for a plain block (the export stays safe to read,
  but reads what the slot holds next).
- PyPy has no reference counts: the slot goes back (a loan is published) when the block ends,
  whatever still refers to it. Derived views and exports stay safe to touch but read whatever the
  slot holds next, so copy inside the block. A closed array is only emptied there (shape ``(0,)``:
  indexing raises ``IndexError``), as PyPy cannot change an ndarray's class.
"""

from __future__ import annotations

import operator
import os
import sys
import uuid
import weakref
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterable, Iterator, List, Optional

import numpy as np

from . import _async, _dtype
from ._errors import CorruptSegmentError, Empty, Full, ShutDown, error_from_code, retry_interrupted
from ._lib import ffi, lib
from ._dtype import typestr_bytes
from ._messages import (
    MAX_NBYTES, MAXDIM, TYPESTR_MAX, W_NBYTES, W_NDIM, W_SHAPE0, W_TYPESTR, WORD_DESC, describe, dtype_of, new_msg,
    push_msg, thread_msg,
)
from ._ring import Ring, as_dir, as_name, attach_waiting, c_timeout, encode_name, path_of, unlink_if
from ._slots import (
    ClosedSlot, Loan, Receive, RingCalls, SlotArray, SlotSource, copy_target, hold_past_block, receive_loop,
)
from ._waits import SLICE as _SLICE, rest as _rest, sliced as _sliced

if TYPE_CHECKING:
    from ._messages import Guess, MsgWords

__all__ = ["Queue", "SlotArray"]

# the C waits this module returns the codes of (their cffi functions are untyped)
_take: Callable[[Any, float, Any], int]
_take_copy: Callable[[Any, float, Any, Any, int], int]
_ETIMEDOUT, _EEMPTY, _EFULL, _ESHUTDOWN = lib.NDSHM_ETIMEDOUT, lib.NDSHM_EEMPTY, lib.NDSHM_EFULL, lib.NDSHM_ESHUTDOWN
_PERSIST, _POPULATE = lib.NDSHM_SEG_PERSIST, lib.NDSHM_SEG_POPULATE
# module-level aliases of the C calls: ~25 ns less per call than lib.<name> (~3 calls a message:
# bench_queue's "ndshm put+get", 64 B)
_put, _take, _release, _release_copy = lib.ndshm_queue_put, lib.ndshm_queue_take, lib.ndshm_queue_release, \
    lib.ndshm_queue_release_copy
_loan, _publish, _discard = lib.ndshm_queue_loan, lib.ndshm_queue_publish, lib.ndshm_queue_discard
_put_many, _get_many, _size = lib.ndshm_queue_put_many, lib.ndshm_queue_get_many, lib.ndshm_queue_size
_close, _take_copy = lib.ndshm_queue_close, lib.ndshm_queue_take_copy
_pin, _unpin = lib.ndshm_queue_pin, lib.ndshm_queue_unpin
_ETOOBIG = lib.NDSHM_ETOOBIG
_MAX_SLOTS = lib.NDSHM_QUEUE_MAX_SLOTS

_PINNED: dict[tuple[Optional[str], str], int] = {}  # (dir, name) -> slots of that queue held past their block by views in this process
_VOIDP = ffi.typeof("void *")
_NDIM_OF, _DTYPE_OF, _NBYTES_OF = (operator.attrgetter(n) for n in ("ndim", "dtype", "nbytes"))
_ND_ONLY, _ONE = {np.ndarray}, {1}
_U1 = np.dtype(np.uint8)


class _ClosedLoan(ClosedSlot):
    __slots__ = ()
    _message = ("loan() array used after its with block: the message was published (or discarded) when the block "
                "ended; write it inside the block, and copy what you keep from it there (np.array(out))")


class _ClosedReceive(ClosedSlot):
    __slots__ = ()
    _message = ("receive() view used after its with block: its slot went back to the queue when the block ended; "
                "copy what you keep inside the block (np.array(view), tensor.clone())")


# The hot calls (put, get, loan, receive) make the first slice of their wait inline and call
# _rest only when it ran out: a closure and a call more per message cost ~0.25 us (bench_queue's
# "ndshm put+get" and "ndshm loan+receive" rows, 64 B).
def _take_waiting(h: Any, t: float, m: Any, dst: Any = None, cap: int = 0) -> int:
    """``ndshm_queue_take`` into ``m`` (``ndshm_queue_take_copy`` into ``dst`` of ``cap`` bytes if
    ``dst`` is given), waiting ``t`` seconds (negative: for ever) in slices."""
    s = t if 0 <= t <= _SLICE else _SLICE
    if dst is not None:
        rc = _take_copy(h, s, m, dst, cap)
        if rc == _ETIMEDOUT and s != t:
            rc = _rest(lambda s: _take_copy(h, s, m, dst, cap), t)
        return rc
    rc = _take(h, s, m)
    if rc == _ETIMEDOUT and s != t:
        rc = _rest(lambda s: _take(h, s, m), t)
    return rc


def _attach(name: str, dir: Optional[str], shape: Any, dtype: Any) -> "Queue":
    return Queue(name, dir=dir, create=False, shape=shape, dtype=dtype)


def _release_later(handle: Any, mw: MsgWords, key: tuple[Optional[str], str]) -> None:
    _release(handle, mw[0])
    n = _PINNED.get(key, 0) - 1
    if n > 0:
        _PINNED[key] = n
    else:
        _PINNED.pop(key, None)


_CALLS = RingCalls(_loan, _publish, _discard, _pin, _unpin, _ClosedLoan, _ClosedReceive)


class Queue(Ring, SlotSource):
    """A bounded multi-producer multi-consumer queue of NumPy arrays in shared memory.

    ``Queue(name=None, *, slots=16, slot_bytes=1 MiB, shape=None, dtype=None, dir=None,
    create=True, persist=False, mode=0o600, populate=True)``

    ``slots`` (1 .. 2**20) is rounded up to a power of two (2 at least); ``slot_bytes`` is at
    least 1; ``mode`` is an int 0 .. 0o7777; ``dir`` a str, bytes or os.PathLike (kept as a str in
    ``.dir``). A typed queue (``shape`` and ``dtype``) sizes its slots for exactly that array and
    makes it the default of :meth:`loan`. ``create=False`` attaches to the existing queue ``name``
    (as :meth:`attach` does). The creator removes the name on :meth:`close` (or when it is
    collected, or at exit) unless ``persist``; attached handles keep working. ``populate`` (the
    default) pre-faults the ring in the creator, in every process that attaches and in a fork()ed
    child at its first call, so no message pays page faults. Pickles by reference (its name), so
    it can go to ``Process(args=...)`` and pool initializers under both fork and spawn.

    The arrays of :meth:`loan` and :meth:`receive` blocks are valid inside the block only; the
    module docstring gives the rules (CPython and PyPy) for views and exports kept past it.
    """

    __slots__ = ("_lib", "_shape", "_guess")
    _KIND = "queue"
    _shape: Optional[tuple[int, ...]]
    _dtype: Optional[np.dtype[Any]]
    _guess: Optional[Guess]

    def __init__(self, name: Optional[str] = None, *, slots: int = 16, slot_bytes: int = 1 << 20,
                 shape: Any = None, dtype: Any = None, dir: Optional[str] = None, create: bool = True,
                 persist: bool = False, mode: int = 0o600, populate: bool = True) -> None:
        self._shape = self._dtype = self._guess = None
        if name is not None:
            name = as_name(name)
        dir = as_dir(dir)
        if shape is not None or dtype is not None:
            if shape is None or dtype is None:
                raise TypeError("a typed queue needs both shape= and dtype=")
            dims, dt = _dtype.normalize(shape, dtype)
            self._shape, self._dtype = dims, dt
            typestr_bytes(dt)
            slot_bytes = _dtype.nbytes_of(dims, dt)
        out = ffi.new("ndshm_queue_t **")
        dir_c = os.fsencode(dir) if dir else ffi.NULL
        self._finalizer = None
        if create:
            if name is None:
                name = f"q-{os.getpid()}-{uuid.uuid4().hex[:16]}"
            n = _dtype.as_int(slots, "slots", 1, _MAX_SLOTS)
            n = max(2, 1 << (n - 1).bit_length())
            nb = slot_bytes if self._dtype is not None else _dtype.as_int(slot_bytes, "slot_bytes", 1, MAX_NBYTES)
            mode = _dtype.as_int(mode, "mode", 0, 0o7777)
            rc = lib.ndshm_queue_create(encode_name(name), dir_c, n, nb, mode,
                                        (_PERSIST if persist else 0) | (_POPULATE if populate else 0), out)
            if rc:
                raise error_from_code(rc, path_of(name, dir))
            if not persist:
                self._finalizer = weakref.finalize(self, unlink_if, name, dir, os.getpid())
        else:
            if name is None:
                raise ValueError("attaching needs the queue's name")
            rc = lib.ndshm_queue_attach(encode_name(name), dir_c, out)
            if rc:  # (again if a signal ended its wait for the ring's lock, once Python ran the handlers)
                rc = retry_interrupted(rc, lib.ndshm_queue_attach, encode_name(name), dir_c, out)
            if rc:
                raise error_from_code(rc, path_of(name, dir))
        self._handle = ffi.gc(out[0], _close)
        self._lib = lib
        self._closed = False
        self._creator = bool(create)
        self.name, self.dir = name, dir
        info = ffi.new("ndshm_queue_info_t *")
        lib.ndshm_queue_info(self._handle, info)
        self.slots, self.slot_bytes = int(info.slots), int(info.slot_bytes)
        self.ring_address, self.ring_bytes = int(info.ring), int(info.ring_bytes)
        self._map_ring()

    @classmethod
    def attach(cls, name: str, *, dir: Optional[str] = None, shape: Any = None, dtype: Any = None,
               timeout: Optional[float] = None) -> "Queue":
        """Attach to the existing queue ``name``. With ``timeout`` (seconds; ``float("inf")``: for
        ever) a queue not created yet, or whose creator is still filling its header, is waited
        for (:class:`SegmentNotFoundError` once it runs out); None (the default) tries once."""
        return attach_waiting(lambda: cls(name, dir=dir, create=False, shape=shape, dtype=dtype), timeout,
                               f"queue {name!r}")

    # ---- internals -------------------------------------------------------------------------

    def _toobig(self, nbytes: int) -> int:
        rc: int = _loan(self._handle, nbytes, 0.0, thread_msg()[0])  # sets ETOOBIG naming both sizes
        return rc

    # what the loan and receive blocks of ndshm._slots ask of a queue
    _calls = _CALLS

    def _loan_defaults(self, shape: Any, dtype: Any) -> tuple[Any, Any]:
        """(shape, dtype) of a loan that left one out: the typed queue's."""
        if dtype is None:
            if self._dtype is None:
                raise TypeError("loan() needs a dtype on an untyped queue")
            dtype = self._dtype
        if shape is None:
            if self._shape is None:
                raise TypeError("loan() needs a shape on an untyped queue")
            shape = self._shape
        return shape, dtype

    def _loan_error(self, rc: int, t: float) -> Exception:
        return self._error(rc, False, waited=t)

    def _rx_take(self, t: float, mw: MsgWords) -> int:
        if self._closed:
            self._live()  # raises
        h, m = self._handle, mw[0]
        s = t if 0 <= t <= _SLICE else _SLICE  # the first slice inline (see _take_waiting)
        rc = _take(h, s, m)
        if rc == _ETIMEDOUT and s != t:
            rc = _rest(lambda s: _take(h, s, m), t)
        return rc

    def _rx_error(self, rc: int, t: float) -> Exception:
        return self._error(rc, True, waited=t)

    def _rx_keep(self, arr: Any, exported: bool, inner: Any, mw: MsgWords) -> None:
        key = (self.dir, self.name)
        _PINNED[key] = _PINNED.get(key, 0) + 1
        hold_past_block(arr, exported, self, _ClosedReceive, inner, _release_later, self._handle, mw, key)

    def _rx_done(self, mw: MsgWords) -> None:
        _release(self._handle, mw[0])
        push_msg(mw)

    def _error(self, rc: int, empty: bool, done: Optional[int] = None, count: int = 0,
               waited: Optional[float] = None) -> Exception:
        """The exception for the failed call ``rc`` of a consumer (``empty``) or a producer.

        Returned, never raised here: a frame that raises an exception held in one of its locals
        makes the cycle exception -> traceback -> frame -> exception, which keeps this queue (and
        its descriptor and mapping) alive until the cyclic collector runs. ``done`` (put_many):
        how many of its ``count`` arrays went in. ``waited``: the whole timeout of a wait made in
        slices (the C detail names the last slice's)."""
        if rc != _ETIMEDOUT and rc != _EFULL and rc != _EEMPTY:
            exc = error_from_code(rc)
            if done is not None:
                exc.arrays_put = done  # a C error of put_many: any NdshmError says how many went in
            return exc
        detail = ffi.string(lib.ndshm_last_detail()).decode("utf-8", "replace")
        if rc == _ETIMEDOUT and waited is not None and waited > _SLICE:
            detail = (f"queue still empty after {waited:g} s" if empty else
                      f"queue still full ({self.slots} slots) after {waited:g} s")
        if not empty:
            pinned = _PINNED.get((self.dir, self.name), 0)
            if pinned:
                detail += (f"; {pinned} of the {self.slots} slots are held by live views of received messages in "
                           "this process (a view derived from a receive() view, or a tensor, memoryview or list "
                           "keeping one, holds its slot until it dies): copy what you keep inside the with block "
                           "(np.array(view[...])) and drop the views")
            if done is not None:
                detail += f"; put_many put {done} of its {count} arrays"
        exc = error_from_code(rc, detail=detail, timed_out=Empty if empty else Full)
        if done is not None:
            exc.arrays_put = done  # Full of put_many (documented there)
        return exc

    # ---- the queue API ---------------------------------------------------------------------

    def put(self, arr: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        """Copy array ``arr`` into a free slot (waiting up to ``timeout`` seconds; ``None``: for ever).
        Raises :class:`Full` on timeout and :class:`MessageTooBigError` if it exceeds a slot."""
        h = self._live()
        a = np.asarray(arr)
        sdt = self._dtype
        if sdt is not None and a.dtype != sdt:
            a = a.astype(sdt)
        if not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)
        dt = a.dtype
        ts = typestr_bytes(dt)
        try:
            ptr = ffi.from_buffer(a)
        except (TypeError, ValueError, BufferError):  # dtypes without a buffer format (datetime64, ...)
            ptr = ffi.cast(_VOIDP, a.__array_interface__["data"][0])
        t = c_timeout(block, timeout)
        s = t if 0 <= t <= _SLICE else _SLICE  # the first slice inline (see _take_waiting)
        rc = _put(h, ptr, a.nbytes, ts, a.ndim, a.shape, s)
        if rc == _ETIMEDOUT and s != t:
            rc = _rest(lambda s: _put(h, ptr, a.nbytes, ts, a.ndim, a.shape, s), t)
        if rc:
            raise self._error(rc, False, waited=t)

    def put_nowait(self, arr: Any) -> None:
        """``put(arr, False)``: raises :class:`Full` at once when no slot is free."""
        self.put(arr, False)

    def get(self, block: bool = True, timeout: Optional[float] = None) -> np.ndarray:
        """Take the oldest message and return a copy of it as a fresh array.
        Raises :class:`Empty` on timeout."""
        if self._closed:
            self._live()
        h = self._handle
        m, w = thread_msg()
        t = -1.0 if block and timeout is None else c_timeout(block, timeout)
        g = self._guess
        if g is not None:
            # the output array made before the take, from the last message's description: one
            # C call takes, copies and releases when this message has the same (the usual case;
            # bench_queue's "ndshm put+get" row)
            out = np.empty(g[0], g[1])
            rc = _take_waiting(h, t, m, ffi.from_buffer(out), g[2])
            if rc == 0:
                if (w[W_TYPESTR] == g[3] and w[W_NBYTES] == g[2] and w[W_NDIM] == g[4]
                        and (w[W_SHAPE0] == g[0][0] if g[4] == 1 else tuple(m.shape[0:g[4]]) == g[0])):
                    return out
                return self._regot(m, w, out)  # another description, but it fitted and was copied
        else:
            rc = _take_waiting(h, t, m, ffi.NULL, 0)
        if rc != _ETOOBIG or m.state_ != 2:
            if rc == 0:  # a zero-byte message (no guess yet)
                return self._regot(m, w, None)
            raise self._error(rc, True, waited=t)
        try:
            out, dst = copy_target(self, m, w, "queue")
        except BaseException:
            _release(h, m)
            raise
        _release_copy(h, m, dst)
        self._remember(out.shape, out.dtype, out.nbytes)
        return out

    def _remember(self, shape: tuple[int, ...], dt: np.dtype[Any], nbytes: int) -> None:
        """Make (shape, dt) the guess of the next get's output array (see get)."""
        if not WORD_DESC or not dt.itemsize or dt.hasobject:
            return
        ts = typestr_bytes(dt) if dt.names is None else f"|V{dt.itemsize}".encode()
        if len(ts) >= 8 or (self._dtype is not None and dt is not self._dtype and dt.names is not None):
            return
        word = int.from_bytes(ts.ljust(8, b"\0"), "little", signed=True)
        self._guess = (shape, dt, nbytes, word, len(shape))

    def _regot(self, m: Any, w: Any, out: Optional[np.ndarray]) -> np.ndarray:
        """get() of a message already copied into ``out`` (or of no bytes) and released, whose
        description differs from the guess."""
        n = int(w[W_NBYTES])
        try:
            dt, shape = describe(m, w, self._dtype)  # raises CorruptSegmentError for impossible ones
            new = np.empty(shape, dt)
        except CorruptSegmentError:
            raise
        except Exception as e:  # NumPy's ValueError/MemoryError for shapes no array can have
            raise CorruptSegmentError(f"queue message cannot be made into an array: {e}") from None
        if new.nbytes != n:  # never hand out bytes nobody wrote
            raise CorruptSegmentError(f"queue message of shape {shape} and dtype {dt} makes an array of "
                                      f"{new.nbytes} bytes, not its {n}")
        if n:
            ffi.memmove(ffi.cast(_VOIDP, new.__array_interface__["data"][0]),
                        ffi.cast(_VOIDP, out.__array_interface__["data"][0]), n)  # type: ignore[union-attr]  # out is None only for n == 0
        self._remember(shape, dt, n)
        return new

    def get_nowait(self) -> np.ndarray:
        """``get(False)``: raises :class:`Empty` at once when no message is waiting."""
        return self.get(False)

    def loan(self, shape: Any = None, dtype: Any = None, timeout: Optional[float] = None) -> Loan:
        """``with q.loan(shape, dtype) as out:`` fill ``out`` in place (zero copy); it is published
        on a normal exit and discarded if the block raises. ``out`` is closed after the block
        (:class:`ClosedError` on use) unless something else still refers to it; on CPython a name,
        export or view of it still alive then pins its slot (see the module docstring)."""
        self._live()
        return Loan(self, shape, dtype, c_timeout(True, timeout))

    def receive(self, timeout: Optional[float] = None) -> Receive:
        """``with q.receive() as view:`` read the oldest message in place (read-only, zero copy); the
        slot goes back to producers after the block, and ``view`` is closed (:class:`ClosedError`
        on use). On CPython views and exports of it still alive then keep the slot until they die;
        on PyPy the slot goes back at once (see the module docstring)."""
        self._live()
        return Receive(self, self, c_timeout(True, timeout))

    def _receive_owned(self, timeout: Optional[float], convert: Callable[[np.ndarray], Any]) -> Any:
        """``convert(arr)`` of the oldest message as a writable plain ndarray ``arr`` in place on
        its slot, which stays taken until ``arr`` and everything made from it (views, tensors,
        DLPack exports) are gone (CPython reference counts; see ``ndshm.torch``). Writes change
        only this message, which no other consumer reads. If ``convert`` raises, the slot goes
        back at once."""
        if self._closed:
            self._live()
        h = self._handle
        t = c_timeout(True, timeout)
        mw = new_msg()  # owned by the finalizer, not the pool
        m = mw[0]
        rc = _take_waiting(h, t, m)
        if rc:
            raise self._error(rc, True, waited=t)
        try:
            dt, shape = describe(m, mw[1], self._dtype)
            if not dt.itemsize:  # nothing in the slot to point at
                _release(h, m)
                return convert(np.empty(shape, dt))
            # the base is the ring's buffer (not an ndarray), so views made from `arr` have `arr`
            # as their base and keep it (and the slot) alive
            arr = np.ndarray(shape, dt, self._rw, self._offset(m))
        except Exception as e:
            _release(h, m)
            if isinstance(e, CorruptSegmentError):
                raise
            raise CorruptSegmentError(f"queue message cannot be viewed as an array: {e}") from None
        except BaseException:
            _release(h, m)
            raise
        key = (self.dir, self.name)
        _PINNED[key] = _PINNED.get(key, 0) + 1
        fin = weakref.finalize(arr, _release_later, h, mw, key)
        try:
            return convert(arr)
        except BaseException:
            fin()
            raise

    def _prepare(self, a: np.ndarray) -> np.ndarray:
        """``a`` as :meth:`put` sends it (the queue's dtype, C order), refusing what it would refuse."""
        sdt = self._dtype
        if sdt is not None and a.dtype != sdt:
            a = a.astype(sdt)
        if not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)
        typestr_bytes(a.dtype)
        if a.ndim > MAXDIM:
            raise ValueError(f"an array of shape {a.shape} has {a.ndim} dimensions; a message has at most {MAXDIM}")
        if a.nbytes > self.slot_bytes:
            raise error_from_code(self._toobig(a.nbytes))
        return a

    def put_many(self, arrays: Iterable[Any], timeout: Optional[float] = None) -> None:
        """Put every array (in order). 1-D arrays of one dtype go through one C call per batch.
        Every array is checked (dtype, size) before the first is put. On a timeout the
        :class:`Full` says how many went in (also as its ``arrays_put``); those stay queued."""
        h = self._live()
        t = c_timeout(True, timeout)
        arrs = list(arrays)
        if not arrs:
            return
        # the checks are C-level passes (map over attribute getters): no Python loop per array
        if set(map(type, arrs)) != _ND_ONLY:
            arrs = [np.asarray(a) for a in arrs]
        dt = arrs[0].dtype
        if (self._dtype is not None or dt.itemsize == 0 or set(map(_NDIM_OF, arrs)) != _ONE
                or len(set(map(_DTYPE_OF, arrs))) != 1):
            arrs = [self._prepare(a) for a in arrs]  # all refusals happen before any put
            for i, a in enumerate(arrs):
                try:
                    self.put(a, timeout=timeout)
                except (Full, ShutDown) as e:
                    rc = e.code
                    break
            else:
                return
            raise self._error(rc, False, i, len(arrs))
        ts = typestr_bytes(dt)
        data: bytes | np.ndarray[Any, Any]
        try:
            data = b"".join(arrs)  # C-contiguous arrays with a buffer format: much faster than concatenate
        except (TypeError, ValueError, BufferError):
            cat = np.concatenate(arrs) if len(arrs) > 1 else np.ascontiguousarray(arrs[0])
            data = cat if cat.dtype == dt else cat.astype(dt)
        sizes1 = set(map(_NBYTES_OF, arrs))
        if len(sizes1) == 1:  # one size: the offsets are a range
            nb = arrs[0].nbytes
            if nb > self.slot_bytes:
                self.put(arrs[0], timeout=0)  # raises MessageTooBigError naming both sizes
            offsets = np.arange(0, (len(arrs) + 1) * nb, nb if nb else 1, dtype=np.uint64)[: len(arrs) + 1]
            if not nb:
                offsets[:] = 0
        else:
            sizes = np.fromiter(map(_NBYTES_OF, arrs), np.uint64, len(arrs))
            offsets = np.zeros(len(arrs) + 1, np.uint64)
            np.cumsum(sizes, out=offsets[1:])
            big = int(sizes.max())
            if big > self.slot_bytes:
                i = int(np.argmax(sizes))
                self.put(arrs[i], timeout=0)  # raises MessageTooBigError naming both sizes
        try:
            dptr = ffi.from_buffer(data)
        except (TypeError, ValueError, BufferError):
            dptr = ffi.cast("void *", data.__array_interface__["data"][0])  # type: ignore[union-attr]  # bytes have a buffer: an ndarray here
        optr = ffi.cast("uint64_t *", offsets.__array_interface__["data"][0])
        done = ffi.new("uint64_t *")
        start, count = 0, len(arrs)
        isz = dt.itemsize
        while start < count:
            # only the batch's first message waits (a timeout means none went in)
            rc = _sliced(lambda s: _put_many(h, dptr, optr + start, count - start, ts, isz, s, done), t)
            if rc:
                raise self._error(rc, False, start + done[0], count, waited=t)
            start += done[0]

    def get_many(self, max_messages: int = 64, timeout: Optional[float] = None) -> List[np.ndarray]:
        """Wait up to ``timeout`` for one message, then take up to ``max_messages`` in all (at most
        ``slots``) without waiting; returns them as a list of fresh arrays (1-D batches are copied
        in one C call). ``max_messages=0`` returns ``[]`` without taking anything."""
        mx = max_messages
        if mx.__class__ is not int or mx < 0:  # ~0.1 us less than as_int ("ndshm put_many/get_many", 64 B)
            mx = _dtype.as_int(max_messages, "max_messages", 0, sys.maxsize)  # before anything is taken
        if mx <= 1:
            if mx == 1:
                return [self.get(True, timeout)]
            c_timeout(True, timeout)
            self._live()
            return []
        first = self.get(True, timeout)
        out = [first]
        if first.dtype.itemsize == 0:
            # a batch would lose the shapes of zero-itemsize messages (all 0 bytes): one at a time
            for _ in range(min(mx, self.slots) - 1):
                try:
                    out.append(self.get(False))
                except (Empty, CorruptSegmentError):
                    break
            return out
        h = self._handle
        more = min(mx, self.slots) - 1
        cap = max(self.slot_bytes, min(more * self.slot_bytes, 4 << 20))
        buf = np.empty(cap, _U1)
        offsets = np.empty(more + 1, np.uint64)
        ts = ffi.new("char[]", TYPESTR_MAX)
        count = ffi.new("uint64_t *")
        rc = _get_many(h, ffi.from_buffer(buf), cap, ffi.cast("uint64_t *", offsets.__array_interface__["data"][0]),
                       more, ts, 0.0, count)
        n = count[0]
        if rc and n == 0:
            return out
        try:
            dt = dtype_of(ffi.string(ts))
        except CorruptSegmentError:  # hostile messages (all of the batch share the typestr): dropped
            return out
        sdt = self._dtype
        if sdt is not None and sdt.names is not None and dt.kind == "V" and dt.itemsize == sdt.itemsize:
            dt = sdt  # as get() does: a typed structured queue's messages travel as raw V<n>
        offs = offsets[: n + 1].tolist()
        size = offs[1] - offs[0] if n else 0
        if dt.itemsize and size and size % dt.itemsize == 0 and offs[n] == n * size:
            if (offsets[: n + 1] == np.arange(0, (n + 1) * size, size, dtype=np.uint64)).all():
                # one size (the usual batch): rows of one 2-D array, made in C
                out.extend(buf[: n * size].view(dt).reshape(n, size // dt.itemsize))
                return out
        if dt.itemsize:
            for i in range(n):
                try:
                    out.append(buf[offs[i]:offs[i + 1]].view(dt))
                except Exception:  # a hostile length (not a multiple of the itemsize): the rest is dropped
                    break
        else:  # pragma: no cover - zero-itemsize messages behind a first one that is not (lengths lost)
            for i in range(n):
                out.append(np.empty(0, dt))
        return out

    def qsize(self) -> int:
        """Messages in the queue (published or being written); approximate under concurrency."""
        return int(_size(self._live()))

    def empty(self) -> bool:
        """Whether no message waits now (as ``queue.Queue.empty``: a hint, racy by nature)."""
        return self.qsize() == 0

    def full(self) -> bool:
        """Whether every slot is taken now (as ``queue.Queue.full``: a hint, racy by nature)."""
        return self.qsize() >= self.slots

    # ---- end of stream ---------------------------------------------------------------------

    def shutdown(self, immediate: bool = False) -> None:
        """Shut the queue down for every process, as Python 3.13's ``queue.Queue.shutdown``: from
        now on ``put``/``put_many``/``loan`` raise :class:`ShutDown` (blocked ones wake and raise);
        consumers take what is queued (and loans already made, once published), then ``get``/
        ``receive``/``get_many`` raise :class:`ShutDown` and ``for arr in q:`` ends. With
        ``immediate=True`` consumers raise at once (sleeping ones wake) and what is queued is
        discarded (``qsize()`` is 0). Idempotent; ``immediate`` may follow a plain shutdown."""
        lib.ndshm_queue_shutdown(self._live(), 1 if immediate else 0)

    @property
    def is_shutdown(self) -> bool:
        """True once the queue was shut down (by any process, or by its registered producers all
        exiting)."""
        rc: int = lib.ndshm_queue_is_shutdown(self._live())
        return rc != 0

    def register_producer(self) -> None:
        """Record this process as a producer of the queue: once every registered producer has
        exited (normally, killed or crashed) or called :meth:`unregister_producer`, the queue shuts
        down by itself (a consumer notices within ~40 ms of finding it empty): consumers drain it,
        then get :class:`ShutDown` saying every registered producer exited, and iteration ends.
        Registering twice is harmless. Raises :class:`ShutDown` on a shut-down queue and
        :class:`BusyError` when 64 live producers are registered already."""
        rc = lib.ndshm_queue_register_producer(self._live())
        if rc:
            raise error_from_code(rc)

    def expect_producers(self, n: int) -> None:
        """Do not let the queue end by its producers exiting before ``n`` registrations (since
        creation) have happened: call it before starting producers, so the first one to finish
        cannot end the stream while the others are still starting."""
        n = _dtype.as_int(n, "n", 0, 2**32 - 1)
        lib.ndshm_queue_expect_producers(self._live(), n)

    def unregister_producer(self) -> None:
        """This process is done producing (see :meth:`register_producer`); the last one to go
        ends the stream. :class:`InvalidValueError` if it is not registered."""
        rc = lib.ndshm_queue_unregister_producer(self._live())
        if rc:
            raise error_from_code(rc)

    @property
    def producers(self) -> int:
        """Registered producers still running."""
        return int(lib.ndshm_queue_producers(self._live()))

    def register_consumer(self) -> None:
        """Record this process as a consumer of the queue (the mirror of :meth:`register_producer`):
        once every registered consumer has exited (normally, killed with kill -9, or crashed) or
        called :meth:`unregister_consumer`, a producer that finds the queue full shuts it down
        (within ~40 ms), and blocked or later ``put``/``put_many``/``loan`` calls raise
        :class:`ShutDown` saying that every registered consumer has exited, instead of waiting
        for ever. A ``put`` that finds a free slot still succeeds (a consumer that attaches later
        can drain the queue). Registering twice is harmless. Raises :class:`ShutDown` on a
        shut-down queue and :class:`BusyError` when 64 live consumers are registered already."""
        rc = lib.ndshm_queue_register_consumer(self._live())
        if rc:
            raise error_from_code(rc)

    def expect_consumers(self, n: int) -> None:
        """Producers give up on dead consumers only once ``n`` consumer registrations (since
        creation) have happened: call it before starting consumers, so that a first consumer that
        exits early does not end the stream while the others are still starting."""
        n = _dtype.as_int(n, "n", 0, 2**32 - 1)
        lib.ndshm_queue_expect_consumers(self._live(), n)

    def unregister_consumer(self) -> None:
        """This process is done consuming (see :meth:`register_consumer`); once the last one is
        gone, producers blocked on a full queue raise :class:`ShutDown`. :class:`InvalidValueError`
        if it is not registered."""
        rc = lib.ndshm_queue_unregister_consumer(self._live())
        if rc:
            raise error_from_code(rc)

    @property
    def consumers(self) -> int:
        """Registered consumers still running."""
        return int(lib.ndshm_queue_consumers(self._live()))

    def __iter__(self) -> Iterator[np.ndarray]:
        """``for arr in q:`` yields :meth:`get` (a copy, waiting for ever) until the queue is shut
        down and drained."""
        get = self.get
        while True:
            try:
                arr = get()
            except ShutDown:
                return
            yield arr

    def receiving(self, timeout: Optional[float] = None) -> Iterator[np.ndarray]:
        """``for view in q.receiving():`` the zero-copy form of ``for arr in q``: each ``view`` is a
        :meth:`receive` view (read-only, in place), valid until the next iteration (then its slot
        goes back, and the view is closed unless something else still refers to it: the usual
        receive rules); iteration ends once the queue is shut down and drained. ``timeout``: as
        for :meth:`receive` (:class:`Empty` if no message comes in time)."""
        return receive_loop(self.receive, timeout)

    # ---- asyncio ---------------------------------------------------------------------------

    def _epoch(self, producer: int) -> Callable[[], int]:
        h = self._handle
        return lambda: int(lib.ndshm_queue_epoch(h, producer))

    def _wait_epoch(self, producer: int) -> Callable[[int, float], int]:
        h = self._handle
        return lambda seen, s: int(lib.ndshm_queue_wait_epoch(h, producer, seen, s))

    async def get_async(self, timeout: Optional[float] = None) -> np.ndarray:
        """``await q.get_async()``: :meth:`get` without blocking the event loop (see
        :mod:`ndshm._async`: a cancellation never loses a message). :class:`Empty` after
        ``timeout`` seconds (None: wait for ever); :class:`ShutDown` once shut down and drained."""
        self._live()
        t = None if timeout is None else c_timeout(True, timeout)
        return await _async.retry(lambda: self.get(False), self._epoch(0), self._wait_epoch(0), t, Empty,
                                  "queue still empty")

    async def put_async(self, arr: Any, timeout: Optional[float] = None) -> None:
        """``await q.put_async(arr)``: :meth:`put` without blocking the event loop; a cancelled
        call has not put ``arr``. :class:`Full` after ``timeout`` seconds (None: for ever)."""
        self._live()
        t = None if timeout is None else c_timeout(True, timeout)
        a = self._prepare(np.asarray(arr))
        await _async.retry(lambda: self.put(a, False), self._epoch(1), self._wait_epoch(1), t, Full,
                           f"queue still full ({self.slots} slots)")

    def receive_async(self, timeout: Optional[float] = None) -> _async.AsyncContext:
        """``async with q.receive_async() as view:`` :meth:`receive` without blocking the event loop
        (the same view rules); a cancellation before the block never takes a message."""
        self._live()
        t = None if timeout is None else c_timeout(True, timeout)

        async def enter() -> tuple[Receive, np.ndarray]:
            rec = Receive(self, self, 0.0)
            view = await _async.retry(rec.__enter__, self._epoch(0), self._wait_epoch(0), t, Empty,
                                      "queue still empty")
            return rec, view
        return _async.AsyncContext(enter)

    def loan_async(self, shape: Any = None, dtype: Any = None, timeout: Optional[float] = None) -> _async.AsyncContext:
        """``async with q.loan_async(shape, dtype) as out:`` :meth:`loan` without blocking the event
        loop; a cancellation before the block never claims a slot."""
        self._live()
        t = None if timeout is None else c_timeout(True, timeout)

        async def enter() -> tuple[Loan, np.ndarray]:
            ln = Loan(self, shape, dtype, 0.0)
            out = await _async.retry(ln.__enter__, self._epoch(1), self._wait_epoch(1), t, Full,
                                     f"queue still full ({self.slots} slots)")
            return ln, out
        return _async.AsyncContext(enter)

    async def __aiter__(self) -> AsyncIterator[np.ndarray]:
        """``async for arr in q:`` :meth:`get_async` until the queue is shut down and drained."""
        while True:
            try:
                arr = await self.get_async()
            except ShutDown:
                return
            yield arr

    def close(self) -> None:
        """End this handle's use; the creator's name is removed (unless ``persist``). Memory is
        unmapped when the last view of a slot is gone. Every call of this handle blocked in another
        thread (``get``, ``receive``, ``put``, ``loan``, ``get_many``, ``put_many``, the async
        forms) wakes at once with :class:`ClosedError`; other handles and processes are not
        affected."""
        if self._closed:
            return
        self._closed = True
        lib.ndshm_queue_interrupt(self._handle)
        if self._finalizer is not None:
            self._finalizer()

    def __reduce__(self) -> tuple[Callable[..., Queue], tuple[Any, ...]]:
        return (_attach, (self.name, self.dir, self._shape, self._dtype))

    def __repr__(self) -> str:
        state = "closed " if self._closed else ""
        typed = f" shape={self._shape} dtype={self._dtype}" if self._dtype is not None else ""
        return f"<ndshm.Queue {state}{self.name!r} slots={self.slots} slot_bytes={self.slot_bytes}{typed}>"


def receive_owned(q: Queue, timeout: Optional[float], convert: Callable[[np.ndarray], Any]) -> Any:
    """``q._receive_owned(timeout, convert)``, what ``ndshm.torch.receive_tensor`` asks of a queue,
    under a package-level name (as a Queue method without the underscore it would be public API)."""
    return q._receive_owned(timeout, convert)

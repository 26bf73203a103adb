"""ndshm arrays in Dask distributed: by reference between processes of one node, by value otherwise.

Stock Dask copies every worker-to-worker transfer over the network, even between processes of one
machine, and would send a :class:`~ndshm.SharedArray` by value (its serializer registry finds
NumPy's through the ndarray subclass chain). Importing this module (in every process: see
:func:`install`) registers:

- a Dask serializer for :class:`~ndshm.SharedArray`: a transfer to a process that can map the
  segment carries only an :class:`ndshm.Reference`, and the receiver maps the segment (no second
  copy in RAM). That is a process with the same node key (the same :func:`ndshm.node_identity`
  *and* the same file system at the default segment directory, ``$NDSHM_DIR`` or ``/dev/shm``:
  two processes of one boot, each with its own tmpfs mounted there, are two nodes), or one in
  another container of this machine (same boot id) that sees the segment's directory as the very
  same directory (device and inode: a tmpfs both containers share). Every other case travels by
  value with Dask's own NumPy serializer: a recipient on another node or in a container with its
  own ``/dev/shm``, one that has not installed ndshm.dask, a connection made before the install,
  an array not in a live named segment, and the spill path (Dask spills with no recipient: the
  data, not a reference, goes to disk; it comes back as a plain ndarray).
  How the sender knows the recipient: each process adds its node key and the (device, inode) of
  its segment directories to the handshake Dask's comms exchange when they connect
  (``Comm.handshake_info``, which Dask made to share "environment information that may differ"
  between peers), so the serializer finds them in ``context["recipient"]``. A scheduler announces
  no node: it forwards what it is sent (a plain ``client.scatter``, which goes through it) to
  workers that may be on other nodes, so it is sent data; :func:`scatter` sends straight to the
  workers (``direct=True``).
- the same for a SharedArray pickled inside another object (``types.SimpleNamespace(x=arr)``, a
  task's argument; Dask's "pickle" family): by reference to a process that can map it, re-pickled
  by value for any other recipient and for the disk.
- a reference that cannot be mapped where it arrives (it reached another node in a way the sender
  could not tell, or its segment is gone) fails with :class:`UnreachableReferenceError`, a
  ``RuntimeError`` naming the segment and both nodes: the task that needed it errs. Not an
  ``OSError`` (:class:`ndshm.WrongNodeError` is one), which Dask takes for a network failure and
  retries for ever.
- receivers get **read-only** views unless ``install(client, writeable=True)``.

**Node-owned arrays, and the Active Memory Manager.** Arrays a task makes for Dask to hold should
be created with :func:`empty` (or :func:`share`). Such an array belongs to its node, not to a
process: its name lives while any process of the node holds it (the worker that made it, every
worker or client that received it by reference, as long as its array or a view of it lives) and
goes when the last one lets go. So the AMM may drop whichever replica it likes (ReduceReplicas:
often the maker's, which uses the most memory), retire the maker's worker (RetireWorker) or move
the key (``rebalance``): every worker of the node still gets the data by reference and zero copy
while one of them holds the key. How: every holder holds a shared OFD lock (``F_OFD_SETLK``) on
byte 0 of the segment's file; the last holder to let go gets the exclusive lock and removes the
name. If every holder is killed, nobody maps the segment any more and ndshm's sweep
(``ndshm._ownership``) removes it.

**Accounting.** Exactly one holder per node counts the bytes: the one holding the exclusive OFD
lock on byte 1 (at first the maker). ``dask.sizeof`` of a shared array is its bytes there and about
100 bytes in every other holder, and :class:`NdshmPlugin` makes each worker's managed memory
(``worker.state.nbytes``, what it reports as managed) agree: Dask would otherwise count every
by-reference replica at the maker's size. When the accounting holder lets go or dies, another
holder takes the lock and the bytes over within ``NdshmPlugin.interval`` (0.5 s). Limits: the
scheduler keeps one size per key (it still counts a key once per worker holding it, as it does for
every replicated key), and a worker that took the accounting over keeps the spill weight it gave
the array on arrival (about 100 bytes: it never spills it; spilling a mapping would free nothing
while another process holds it). A spilled node-owned array goes to disk by value and its holder
lets go of the segment.

Arrays made with another ``owner`` (``empty(owner="views")``, ``ndshm.create``) keep that
owner's rules: receivers map them while the name lives and count about 100 bytes.

**The node pool** (opt-in: ``install(client, pool_bytes=N)`` or ``$NDSHM_ENGINE_POOL_BYTES``). The
client's process creates one pre-faulted :class:`ndshm.Pool` of ``N`` bytes and every worker of
its node maps it once (:class:`NdshmPlugin` carries its name; workers of other nodes go without).
:func:`empty` (and :func:`share`) then carve node-owned arrays from it (a full pool: a node-owned
segment, as without a pool): the maker writes into pages faulted long ago, and a receiver's read
faults nothing either. A pool block is node-owned by the pool's own rule: every process holding
it pins it (in the pool, per process), and it is free again when the last holder lets go (the
AMM may drop any replica). A transfer to a worker or client of this node carries a pool
reference and records one hand-over, which the recipient's unpickling ends; to any other
recipient, the scheduler and the spill path the data goes by value (hand-overs that pickling
made for an object sent by value are ended at once). A transfer lost on the way keeps its block
until the sender's process ends (then ``Pool.reclaim``, which a full pool runs, frees it). A
reference to a block freed since fails with :class:`UnreachableReferenceError` (its memory is not
read). Accounting: the maker counts the bytes, receivers about 100 (no hand-over of the count
when the maker drops its replica). The pool's name goes when the client's process ends; workers
that mapped it keep using it.
"""


from __future__ import annotations

import fcntl
import importlib
import io
import itertools
import os
import pickle
import struct
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
from numpy.typing import NDArray

import dask.sizeof as _dask_sizeof
from distributed.comm import core as _comm_core
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.protocol.numpy import deserialize_numpy_ndarray, serialize_numpy_ndarray
from distributed.protocol.serialize import dask_deserialize, dask_serialize

from . import _segment
from . import pool as _pool
from ._api import create
from ._errors import NoSpaceError, SegmentNotFoundError
from ._lib import lib
from ._reference import Reference, dir_identity, from_reference, node_identity, reference, same_boot
from ._replica import Replica

if TYPE_CHECKING:
    from typing_extensions import TypeGuard


__all__ = ["install", "NdshmPlugin", "scatter", "empty", "share", "stats", "replicate", "node_pool",
           "UnreachableReferenceError"]

HANDSHAKE_KEY = "ndshm-node"
DIRS_KEY = "ndshm-dirs"  # the handshake's {segment directory: [device, inode]} of the process announcing it
_writeable = False
_counts = {"by_reference": 0, "by_value": 0, "received_by_reference": 0}


# ---- the handshake: every comm tells its peer this process's node identity ------------------

def _port(address: Any) -> Optional[str]:
    if not isinstance(address, str) or ":" not in address:
        return None
    return address.rsplit(":", 1)[1]


def _is_scheduler_end(comm: Any) -> bool:
    """True if ``comm`` is the scheduler's end of a connection (a Scheduler of this process
    listens on its local port)."""
    mod = sys.modules.get("distributed.scheduler")
    if mod is None:
        return False
    try:
        port = _port(comm.local_address)
    except Exception:
        return False
    if port is None:
        return False
    for sched in list(getattr(mod.Scheduler, "_instances", ())):
        try:
            if any(_port(lst.listen_address) == port or _port(lst.contact_address) == port
                   for lst in sched.listeners):
                return True
        except Exception:
            continue
    return False


def _patch_handshake() -> None:
    comm_cls = _comm_core.Comm
    original = comm_cls.handshake_info
    if getattr(original, "_ndshm", False):
        return

    def handshake_info(self: Any) -> dict[str, Any]:
        info: dict[str, Any] = original(self)
        # A scheduler forwards what it is sent (client.scatter without direct=True) to workers
        # that may be on other nodes: it announces no node, so it is sent data, not references.
        if not _is_scheduler_end(self):
            info[HANDSHAKE_KEY] = _node_key()
            info[DIRS_KEY] = _dir_identities()
        return info

    handshake_info._ndshm = True  # type: ignore[attr-defined]
    handshake_info.__doc__ = original.__doc__
    comm_cls.handshake_info = handshake_info  # type: ignore[method-assign]


_patch_handshake()


# ---- the serializer ---------------------------------------------------------------------------

_key_cache: list[str] = []


def _node_key() -> str:
    """What a peer must share with this process to be sent references: the node identity and the
    file system of the default segment directory (two processes of one boot with their own tmpfs
    mounted at ``/dev/shm`` are two nodes for shared memory)."""
    if not _key_cache:
        try:
            st = os.stat(_segment.default_dir())
            fs = f"{st.st_dev}:{st.st_ino}"
        except OSError:
            fs = "?"
        _key_cache.append(f"{node_identity()}|{fs}")
    return _key_cache[0]


def _dir_identities() -> dict[str, list[int]]:
    """{directory: [device, inode]} of the segment directories this process sees (for the handshake)."""
    out = {}
    for d in dict.fromkeys((_segment.default_dir(), "/dev/shm")):
        ident = dir_identity(d)
        if ident is not None:
            out[d] = list(ident)
    return out


def _recipient_node(context: Optional[dict[str, Any]]) -> Optional[str]:
    """The node key the recipient announced (None: the spill path, a scheduler, an old peer)."""
    recipient = context.get("recipient") if context else None
    node = recipient.get(HANDSHAKE_KEY) if isinstance(recipient, dict) else None
    return node if isinstance(node, str) else None


def _same_node(context: Optional[dict[str, Any]]) -> bool:
    """Whether the recipient has this process's node key (for objects pickled whole, whose
    segments are not looked at one by one)."""
    return _recipient_node(context) == _node_key()


def _by_reference(context: Optional[dict[str, Any]], x: Any) -> bool:
    """Whether the recipient of ``x`` (as ``context`` tells) can map its segment: the same node
    identity, or another container of this machine that sees the segment's directory as the
    very same directory."""
    node = _recipient_node(context)
    if node is None:
        return False  # the spill path, or a recipient that does not say where it is
    if node == _node_key():
        return True
    if not same_boot(node.partition("|")[0]):
        return False
    try:
        d = _segment.segment_of(x).dir
    except ValueError:
        return False
    dirs = context["recipient"].get(DIRS_KEY)  # type: ignore[index]  # a recipient announced a node
    if d is None or not isinstance(dirs, dict):
        return False
    there, here = dirs.get(d), dir_identity(d)
    return here is not None and isinstance(there, (list, tuple)) and tuple(there) == here


class UnreachableReferenceError(RuntimeError):
    """A reference to a shared array reached a Dask process that cannot map it (another node, or
    the segment is gone). Deliberately not an ``OSError``: Dask treats those as network failures
    and retries the transfer for ever; this one fails the task that needed the data, with a
    message naming the segment and both nodes."""


def _unreachable(err: BaseException) -> UnreachableReferenceError:
    return UnreachableReferenceError(f"{err} (receiving Dask process {os.getpid()} on node "
                                     f"{node_identity()!r}; ndshm.dask sends arrays by value to other nodes, "
                                     "so this reference came in a way the sender could not tell apart)")


@dask_serialize.register(_segment.SharedArray)  # type: ignore[untyped-decorator, no-untyped-call]
def serialize_shared_array(x: NDArray[Any],
                           context: Optional[dict[str, Any]] = None) -> tuple[dict[str, Any], list[Any]]:
    """Dask serializer of a SharedArray: a Reference when the recipient is on this node, else the
    data with Dask's NumPy serializer. A pool block (:class:`ndshm.PoolArray`) goes as a pool
    reference with a hand-over that the recipient's unpickling ends (one per transfer)."""
    if isinstance(x, _pool.PoolArray):
        args = _pool.reference_args(x) if _same_node(context) else None
        if args is not None:
            _counts["by_reference"] += 1
            return {"ndshm": "pool"}, [pickle.dumps(args, protocol=4)]
    elif _by_reference(context, x):
        try:
            ref = reference(x)
        except ValueError:  # not in a live named segment (any more): by value
            pass
        else:
            _counts["by_reference"] += 1
            return {"ndshm": "reference"}, [pickle.dumps(ref, protocol=4)]
    _counts["by_value"] += 1
    header, frames = serialize_numpy_ndarray(np.asarray(x), context)
    header["ndshm"] = "value"
    return header, frames


@dask_deserialize.register(_segment.SharedArray)  # type: ignore[untyped-decorator, no-untyped-call]
def deserialize_shared_array(header: dict[str, Any], frames: list[Any]) -> NDArray[Any]:
    """Dask deserializer: map a Reference (read-only unless installed with writeable=True), or
    rebuild a NumPy array sent by value."""
    if header.get("ndshm") == "pool":
        try:
            block: NDArray[Any] = _pool.rebuild(pickle.loads(bytes(frames[0])), received=True)
        except SegmentNotFoundError as e:  # BlockFreedError too: never an OSError (see above)
            raise _unreachable(e) from None
        if not _writeable:
            block.flags.writeable = False
        _counts["received_by_reference"] += 1
        _mark_received(block)
        return block
    if header.get("ndshm") == "reference":
        ref = pickle.loads(bytes(frames[0]))
        if not isinstance(ref, Reference):
            raise TypeError(f"an ndshm.dask reference frame holds a {type(ref).__name__}, not an ndshm.Reference")
        try:
            got = from_reference(ref, readonly=True if ref.readonly else not _writeable)
        except SegmentNotFoundError as e:  # WrongNodeError too: an OSError would be retried for ever
            raise _unreachable(e) from None
        _counts["received_by_reference"] += 1
        if ref.name.startswith(NODE_PREFIX) and _SETLK is not None:
            if ref.handover:
                _segment.give_up(_segment.owner_of(got))
            _hold(got)
        return got
    arr: NDArray[Any] = deserialize_numpy_ndarray(header, frames)
    return arr


_received_pool: dict[int, "weakref.ref[NDArray[Any]]"] = {}  # id of a received pool array's root -> it


def _mark_received(arr: NDArray[Any]) -> None:
    """Remember that ``arr``'s pool block came by reference: this process does not count its bytes
    (the maker does, as for node-owned segments)."""
    root = _root(arr)
    key = id(root)
    _received_pool[key] = weakref.ref(root)
    weakref.finalize(root, _received_pool.pop, key, None)


def _sizeof_shared_array(x: NDArray[Any]) -> int:
    if isinstance(x, _pool.PoolArray):
        root = _root(x)
        r = _received_pool.get(id(root))
        return 100 if r is not None and r() is root else int(x.nbytes) + 100
    seg = _segment.owner_of(x)
    if isinstance(seg, _segment.Segment):
        h = _holds.get(_segment.file_identity(seg)) if seg.path is not None else None
        if h is not None:  # node-owned: the holder that accounts for it counts the bytes
            return int(x.nbytes) + 100 if h.accountant else 100
        if not (seg.creator or seg.owner == "received"):
            return 100  # a mapping of memory another process owns
    return int(x.nbytes) + 100


# ---- objects pickled whole: by value to other nodes, a clear error if a reference slips through --

_SEGMENT_MODULE = b"ndshm._segment"
_POOL_MODULE = b"ndshm.pool"
_dask_ser = importlib.import_module("distributed.protocol.serialize")  # the module, not its function
_orig_pickle_dumps, _orig_pickle_loads, _ = _dask_ser.families["pickle"]
_orig_pickle_dumps = getattr(_orig_pickle_dumps, "_ndshm_orig", _orig_pickle_dumps)
_orig_pickle_loads = getattr(_orig_pickle_loads, "_ndshm_orig", _orig_pickle_loads)


def _by_value_pickler() -> type:
    import cloudpickle  # type: ignore[import-untyped]

    class ByValuePickler(cloudpickle.Pickler):  # type: ignore[misc]
        """Pickles every SharedArray by value (for a recipient on another node, or the disk)."""

        def __init__(self, file: Any, protocol: int, **kwargs: Any) -> None:
            super().__init__(file, protocol=protocol, **kwargs)
            self.ndshm_protocol = protocol

        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, _segment.SharedArray):
                _counts["by_value"] += 1
                return np.asarray(obj).__reduce_ex__(self.ndshm_protocol)
            return super().reducer_override(obj)

    return ByValuePickler


_pickler_cls: list[type] = []


def _pickle_dumps(x: Any, context: Optional[dict[str, Any]] = None) -> tuple[dict[str, Any], list[Any]]:
    """Dask's pickle family, except that an object holding ndshm references (a SharedArray inside
    an object Dask pickles whole) is pickled again by value unless the recipient is on this node."""
    header, frames = _orig_pickle_dumps(x, context=context)
    pooled = _POOL_MODULE in frames[0]
    if not pooled and _SEGMENT_MODULE not in frames[0]:
        return header, frames
    if _same_node(context):
        header["ndshm"] = "references"  # the receiver registers its holds on node-owned arrays
        return header, frames
    if pooled:  # pickling sent pool hand-overs that nobody will receive: end them here
        _orig_pickle_loads(header, frames)
    if not _pickler_cls:
        _pickler_cls.append(_by_value_pickler())
    protocol = (context.get("pickle-protocol") if context else None) or pickle.HIGHEST_PROTOCOL
    out: list[Any] = [None]
    writeable: list[bool] = []

    def buffer_callback(b: Any) -> None:
        mv = memoryview(b)
        out.append(mv)
        writeable.append(not mv.readonly)

    f = io.BytesIO()
    _pickler_cls[0](f, protocol, buffer_callback=buffer_callback if protocol >= 5 else None).dump(x)
    out[0] = f.getvalue()
    return {"serializer": "pickle", "writeable": tuple(writeable)}, out


def _rebuild_pool_received(*args: Any) -> Any:
    arr = _pool.rebuild(args, received=True)
    _counts["received_by_reference"] += 1
    _mark_received(arr)
    return arr


def _rebuild_and_hold(*args: Any) -> Any:
    arr = _segment.rebuild_view(*args)
    _counts["received_by_reference"] += 1
    if isinstance(args[0], str) and args[0].startswith(NODE_PREFIX):
        _hold(arr)
    return arr


class _HoldingUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "ndshm._segment" and name == "rebuild_view":
            return _rebuild_and_hold
        if module == "ndshm.pool" and name == "_rebuild":
            return _rebuild_pool_received
        return super().find_class(module, name)


def _pickle_loads(header: dict[str, Any], frames: list[Any]) -> Any:
    """Dask's pickle family's loads; a reference that cannot be mapped here fails with
    UnreachableReferenceError (not an OSError, which Dask would retry as a network failure)."""
    try:
        if header.get("ndshm") != "references":
            return _orig_pickle_loads(header, frames)
        buffers = [memoryview(bytearray(b)) if w and memoryview(b).readonly else memoryview(b)
                   for b, w in zip(frames[1:], header["writeable"])]
        return _HoldingUnpickler(io.BytesIO(frames[0]), buffers=buffers).load()
    except SegmentNotFoundError as e:
        raise _unreachable(e) from None


_pickle_dumps._ndshm_orig = _orig_pickle_dumps  # type: ignore[attr-defined]
_pickle_loads._ndshm_orig = _orig_pickle_loads  # type: ignore[attr-defined]
_dask_ser.register_serialization_family("pickle", _pickle_dumps, _pickle_loads)


# ---- node-owned arrays: the name lives while any process of the node holds one ---------------------
#
# Dask's Active Memory Manager drops whichever replica it likes (ReduceReplicas), retires the
# worker that made an array (RetireWorker) and moves keys around (rebalance). So an array made by
# empty() belongs to no process but to the node: every process holding a node-owned array (the
# maker, every receiver by reference) holds a shared OFD lock on byte 0 of the segment's file for
# as long as its array lives; the name goes when the last holder lets go (it tries an exclusive
# lock: success means nobody holds it) or, if every holder was killed, by ndshm's sweep (the
# segment is not persistent and then nobody maps it). Exactly one holder accounts for the bytes
# in Dask (dask.sizeof and the worker's managed memory): the one holding the exclusive OFD lock
# on byte 1; when it lets go (or dies), another holder takes it over within a second.

NODE_PREFIX = "dask-"
_SETLK = getattr(fcntl, "F_OFD_SETLK", None)
_SETLKW = getattr(fcntl, "F_OFD_SETLKW", None)
_FLOCK = struct.Struct("hhqqi4x")  # struct flock on Linux (64-bit off_t)
_holds_lock = threading.RLock()
_in_lock = threading.local()  # depth of this thread's holds sections: a finalizer run inside one defers
_pending: list[tuple[tuple[int, int], int, int]] = []  # let-gos deferred that way (see _unhold)
_tokens = itertools.count(1)


class _Hold:
    __slots__ = ("path", "key", "fd", "roots", "accountant")

    def __init__(self, path: str, key: tuple[int, int], fd: int) -> None:
        self.path = path
        self.key = key
        self.fd = fd
        self.roots: dict[int, int] = {}  # id of a live root array -> its registration's token
        self.accountant = False


_holds: dict[tuple[int, int], _Hold] = {}


def _lock_byte(fd: int, kind: int, byte: int, wait: bool = False) -> bool:
    cmd = _SETLKW if wait else _SETLK
    assert cmd is not None
    try:
        fcntl.fcntl(fd, cmd, _FLOCK.pack(kind, os.SEEK_SET, byte, 1, 0))
    except (BlockingIOError, PermissionError):
        return False
    return True


def _same_file(path: str, key: tuple[int, int], fd: Optional[int] = None) -> bool:
    try:
        st = os.fstat(fd) if fd is not None else os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == key


def _open_hold(path: str, key: tuple[int, int]) -> Optional[int]:
    """A descriptor of the segment's file holding the shared holder lock, or None if the name no
    longer leads to it (the last holder removed it meanwhile)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if _same_file(path, key, fd) and _lock_byte(fd, fcntl.F_RDLCK, 0, wait=True) and _same_file(path, key):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _root(arr: NDArray[Any]) -> NDArray[Any]:
    root = arr
    while isinstance(root.base, np.ndarray):
        root = root.base
    return root


def _hold(arr: NDArray[Any], accountant: bool = True) -> bool:
    """Hold ``arr``'s node-owned segment while ``arr`` (or any view of it) lives in this process;
    ``accountant``: count its bytes here if no other holder does. False if it cannot be held."""
    seg = _segment.owner_of(arr)
    if _SETLK is None or not isinstance(seg, _segment.Segment) or seg.path is None or seg.kind != "named":
        return False
    key = _segment.file_identity(seg)
    root = _root(arr)
    token = next(_tokens)
    with _holding():
        h = _holds.get(key)
        if h is None:
            fd = _open_hold(seg.path, key)
            if fd is None:
                return False
            h = _holds[key] = _Hold(seg.path, key, fd)
        if id(root) in h.roots:
            return True
        h.roots[id(root)] = token
        if accountant and not h.accountant:
            h.accountant = _lock_byte(h.fd, fcntl.F_WRLCK, 1)
    weakref.finalize(root, _unhold, key, id(root), token)
    return True


class _holding:
    """The holds' lock, marking this thread as inside it; on leaving, it does the let-gos that
    finalizers deferred meanwhile (a finalizer runs wherever the garbage collector frees a root,
    possibly inside a holds section of its own thread)."""

    def __enter__(self) -> None:
        _holds_lock.acquire()
        _in_lock.depth = getattr(_in_lock, "depth", 0) + 1

    def __exit__(self, *exc: object) -> None:
        _in_lock.depth -= 1
        _holds_lock.release()
        if _pending and not _in_lock.depth:
            _drain()


def _adopt(h: _Hold) -> bool:
    """Become the accountant of a held segment if no live holder is (it let go, or died)."""
    with _holding():
        if not h.accountant and h.fd >= 0:
            h.accountant = _lock_byte(h.fd, fcntl.F_WRLCK, 1)
        return h.accountant


def _unhold(key: tuple[int, int], root_id: int, token: int) -> None:
    _pending.append((key, root_id, token))
    if not getattr(_in_lock, "depth", 0):
        _drain()


def _drain() -> None:
    """Let go of the roots that died: a segment this process no longer holds loses its name if
    no other process holds it."""
    released: list[_Hold] = []
    with _holds_lock:
        while _pending:
            key, root_id, token = _pending.pop()
            h = _holds.get(key)
            if h is None or h.roots.get(root_id) != token:
                continue
            del h.roots[root_id]
            if h.roots:
                continue
            del _holds[key]
            os.close(h.fd)  # lets go of both locks
            h.fd = -1
            released.append(h)
    for h in released:
        _remove_if_unheld(h.path, h.key)


def _remove_if_unheld(path: str, key: tuple[int, int]) -> None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        if _same_file(path, key, fd) and _lock_byte(fd, fcntl.F_WRLCK, 0):
            # nobody holds it any more: the name goes (newcomers wait on this lock, then see it gone)
            if _same_file(path, key):
                os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)


def _new_name() -> str:
    import uuid
    return NODE_PREFIX + uuid.uuid4().hex[:24]


def holders_info() -> dict[str, dict[str, Any]]:
    """The node-owned segments this process holds: name -> {"arrays": live arrays holding it,
    "accountant": whether this process counts its bytes}. For tests and diagnostics."""
    with _holds_lock:
        return {os.path.basename(h.path).split(".", 1)[-1]: {"arrays": len(h.roots), "accountant": h.accountant}
                for h in _holds.values()}


_dask_sizeof.sizeof.register(_segment.SharedArray)(_sizeof_shared_array)  # type: ignore[no-untyped-call]


def stats() -> dict[str, int]:
    """How many SharedArrays this process sent by reference and by value, and received by reference."""
    return dict(_counts)


# ---- installing it in every process --------------------------------------------------------

def _fast_value(worker: Any, key: Any) -> Any:
    """The value of ``key`` in the worker's memory (None if spilled or absent: never unspills)."""
    data = worker.data
    fast = getattr(data, "fast", data)
    try:
        return fast[key] if key in fast else None
    except Exception:
        return None


def _fix_nbytes(worker: Any, key: Any, value: Any) -> None:
    """Make the worker's managed memory for ``key`` what ``dask.sizeof`` says of a shared array
    (the scheduler tells a worker fetching a key its producer's size: every by-reference replica
    would count the whole array again)."""
    state = getattr(worker, "state", None)
    if state is None:
        return
    ts = state.tasks.get(key)
    if ts is None or ts.state != "memory" or not isinstance(value, _segment.SharedArray):
        return
    nbytes = _sizeof_shared_array(value)
    if ts.nbytes != nbytes:
        state.nbytes += nbytes - (ts.nbytes or 0)
        ts.nbytes = nbytes


class NdshmPlugin(WorkerPlugin):
    """Registers ndshm's serializer in a worker (unpickling this plugin imports ndshm.dask), keeps
    the worker's managed memory honest for shared arrays, and takes over the accounting of a
    node-owned array whose accounting holder let go of it (checked every ``interval`` seconds)."""

    idempotent = False
    name = "ndshm"
    interval = 0.5

    def __init__(self, writeable: bool = False, pool: Optional[tuple[str, str, str]] = None) -> None:
        self.writeable = bool(writeable)
        self.pool = pool  # (name, directory, node key) of the node pool made by install(pool_bytes=...)
        self.worker: Any = None

    def setup(self, worker: Any) -> None:
        """Dask calls it in each worker: sets whether receivers get writeable views, attaches the
        node pool (if any) and starts the periodic accounting of node-owned arrays."""
        global _writeable
        _writeable = self.writeable
        self.worker = worker
        if self.pool is not None:
            _attach_node_pool(*self.pool)
        elif worker is not None:
            _node_pools.clear()  # installed again without a pool: empty() makes segments again
        from tornado.ioloop import PeriodicCallback
        pc = PeriodicCallback(self.adopt, self.interval * 1000)
        worker.periodic_callbacks["ndshm-accounting"] = pc
        pc.start()

    def teardown(self, worker: Any) -> None:
        """Dask calls it when the worker closes or the plugin is removed: stops the accounting."""
        pc = worker.periodic_callbacks.pop("ndshm-accounting", None)
        if pc is not None:
            pc.stop()

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        """Dask calls it on every task transition: a key entering ``memory`` gets its ``nbytes``
        from ndshm's accounting (the maker counts the bytes, receivers about 100)."""
        if finish == "memory" and self.worker is not None:
            _fix_nbytes(self.worker, key, _fast_value(self.worker, key))

    def adopt(self) -> None:
        """Take over the accounting of held node-owned arrays nobody accounts for any more."""
        with _holds_lock:
            idle = [h for h in _holds.values() if not h.accountant]
        if not idle or not any(_adopt(h) for h in idle) or self.worker is None:
            return
        data = self.worker.data
        fast = getattr(data, "fast", data)
        for key in list(fast.keys()):
            _fix_nbytes(self.worker, key, _fast_value(self.worker, key))


def install(client: Any, *, writeable: bool = False, pool_bytes: Optional[int] = None) -> None:
    """Make ``client`` and every worker of its cluster (present and future) send ndshm arrays by
    reference within a node: registers :class:`NdshmPlugin` and sets this process up.
    ``writeable``: receivers get writeable views (default read-only). Call it right after the
    cluster starts: connections opened before it carry no node identity and send by value.
    ``dask worker --preload ndshm.dask`` does the same for workers from their start.

    ``pool_bytes`` (default ``$NDSHM_ENGINE_POOL_BYTES``, else 0: none): this process creates a
    pre-faulted :class:`ndshm.Pool` of that many bytes, the *node pool*, that :func:`empty` in
    every worker of this node carves its arrays from (no page fault for the maker or any receiver;
    a full pool falls back to a node-owned segment). The pool's name goes when this process ends;
    blocks stay valid while any process holds them. Workers on other nodes do not use it."""
    global _writeable
    if not isinstance(writeable, (bool, np.bool_)):
        raise TypeError(f"writeable={writeable!r} is not a bool")
    nbytes = _pool.engine_pool_bytes(pool_bytes)
    _writeable = bool(writeable)
    spec = None
    if nbytes:
        p = _make_node_pool(nbytes)
        spec = (p.name, p.dir, _node_key())
    else:
        _node_pools.clear()  # a pool made before stays valid for its blocks, and goes at exit
    client.register_plugin(NdshmPlugin(writeable=_writeable, pool=spec), name="ndshm")


POOL_BYTES_ENV = _pool.ENGINE_POOL_BYTES_ENV
_node_pools: list[_pool.Pool] = []  # this process's node pool (at most one), made or attached


def _make_node_pool(nbytes: int) -> _pool.Pool:
    old = node_pool()
    if old is not None and old.nbytes >= nbytes:
        return old
    p = _pool.Pool(nbytes, on_full="raise")
    _node_pools[:] = [p]
    return p


def _attach_node_pool(name: str, dir: str, node: str) -> Optional[_pool.Pool]:
    """In a worker: use the node pool ``name`` if this process is on its node (else none)."""
    if node != _node_key():
        return None
    try:
        p = _pool.Pool.attach(name, dir=dir, on_full="raise")
    except (OSError, ValueError):  # its maker ended, or another file system: workers go without
        return None
    _node_pools[:] = [p]
    return p


def node_pool() -> Optional[_pool.Pool]:
    """The node pool this process carves :func:`empty` arrays from (see :func:`install`), or None."""
    p = _node_pools[0] if _node_pools else None
    return p if p is not None and not p.closed else None


def dask_setup(worker: Any) -> None:
    """The preload hook (``--preload ndshm.dask``): importing this module registered the
    serializers; this adds :class:`NdshmPlugin` to the worker."""
    plugin = NdshmPlugin(writeable=_writeable)
    worker.plugins[plugin.name] = plugin
    plugin.setup(worker)


# ---- putting data into shared memory -----------------------------------------------------------

def _in_named_segment(arr: object) -> TypeGuard[NDArray[Any]]:
    """True if ``arr`` lies in an open named segment (checked without side effects: taking a
    reference would hand an owner="receiver" segment over)."""
    if not isinstance(arr, np.ndarray):
        return False
    seg = _segment.owner_of(arr)
    return isinstance(seg, _segment.Segment) and seg.kind == "named" and not seg.closed


def empty(shape: Any, dtype: Any = float, *, owner: str = "node", dir: Optional[str] = None) -> NDArray[Any]:
    """A new shared array (zeroed) for a task to fill and return. ``owner="node"`` (the default):
    its name lives while any process of this node holds it (this one, or a worker that received
    it by reference), so Dask's Active Memory Manager may drop or move any replica; it goes with
    the last holder, and this process accounts for its bytes until then (another holder takes the
    accounting over when it lets go). Other values are ``ndshm.create``'s owners; without OFD
    locks (``F_OFD_SETLK``: Linux only) ``"node"`` means ``"views"``, the maker's views.
    With a node pool (:func:`install` ``pool_bytes``) and no ``dir``, a node-owned array is a
    block of that pool (an :class:`ndshm.PoolArray`): every process holding it pins it, and it is
    free again when the last one lets go."""
    if owner == "node" and dir is None:
        p = node_pool()
        if p is not None:
            try:
                return p.zeros(shape, dtype)
            except NoSpaceError:
                pass  # a full node pool: a node-owned segment of its own
    if owner != "node" or _SETLK is None:  # no OFD locks (not Linux): the maker's views own the name
        return create(None, shape, dtype, owner="views" if owner == "node" else owner, dir=dir)
    arr = create(_new_name(), shape, dtype, owner="creator", dir=dir)
    _segment.give_up(_segment.owner_of(arr))
    _hold(arr)
    return arr


def share(arr: Any, *, owner: str = "node", dir: Optional[str] = None) -> NDArray[Any]:
    """``arr`` in shared memory: itself if it lies in a live named segment, else a copy in a new one
    made as :func:`empty` makes them (a pool block's view is itself too)."""
    if _in_named_segment(arr) or (isinstance(arr, _pool.PoolArray) and _pool.reference_args(arr, send=False)):
        return arr
    src = np.asarray(arr)
    out = empty(src.shape, src.dtype, owner=owner, dir=dir)
    out[...] = src
    return out


def scatter(client: Any, data: Any, *, workers: Any = None, broadcast: bool = False, direct: Optional[bool] = None,
            dir: Optional[str] = None) -> Any:
    """``client.scatter`` of a NumPy array through shared memory: ``data`` is put into a segment
    (unless it lies in one already) handed to the first worker that receives it
    (``owner="receiver"``: its name lives as long as that worker holds the data), and scattered
    with ``hash=False`` (tokenising hundreds of MB costs more than the transfer) straight to the
    workers (``direct=True``: through the scheduler, which may forward to another node, it would
    go by value). Returns the Future. On a worker of another node the data arrives by value."""
    if _in_named_segment(data):
        shared = data
    else:  # handed to the first receiver, which makes it node-owned (see empty)
        src = np.asarray(data)
        shared = create(_new_name(), src.shape, src.dtype, owner="receiver", dir=dir)
        shared[...] = src
    return client.scatter(shared, workers=workers, broadcast=broadcast, direct=True if direct is None else direct,
                          hash=False)


# ---- one copy per node -------------------------------------------------------------------------

_held: dict[str, _segment.Segment] = {}  # replica name -> the Segment this process wrote for its node


def _node_of_worker() -> str:
    return _node_key()


def _write_replica(name: str, data: NDArray[Any]) -> bool:
    """On the node's chosen worker: write the node's copy (owned by this worker)."""
    seg = _segment.Segment.create(name, data.shape, data.dtype)
    seg.asarray()[...] = data
    _held[name] = seg
    return True


def _drop_replica(name: str) -> bool:
    seg = _held.pop(name, None)
    if seg is None:
        return False
    seg.close()  # the creator's close removes the name; mappings elsewhere stay valid
    return True


def replicate(client: Any, arr: Any, *, name: Optional[str] = None, include_client: bool = False) -> Replica:
    """``arr`` copied once to every node of ``client``'s cluster that runs a worker (see
    ``ndshm.replicate``): on this node (if a worker runs here) into a segment this process owns,
    on every other node by a by-value scatter to one of its workers, which writes the node's
    segment. ``include_client``: this node gets a copy even if no worker runs here. Tasks call
    ``replica.array()``."""
    import uuid

    src = np.asarray(arr)
    if src.dtype.hasobject:
        raise TypeError(f"dtype {src.dtype} holds Python objects: it cannot live in shared memory")
    name = name or f"replica-{uuid.uuid4().hex[:20]}"
    if not isinstance(include_client, (bool, np.bool_)):
        raise TypeError(f"include_client={include_client!r} is not a bool")
    nodes = client.run(_node_of_worker)
    here = _node_key()
    by_node: dict[str, str] = {}
    for addr, node in sorted(nodes.items()):
        by_node.setdefault(node, addr)
    local = here in by_node or bool(include_client)
    seg = _segment.Segment.create(name, src.shape, src.dtype) if local else None
    done: list[str] = []
    try:
        if seg is not None:
            seg.asarray()[...] = src
        for node, addr in by_node.items():
            if node == here:
                continue
            fut = client.scatter(src, workers=[addr], hash=False)
            client.submit(_write_replica, name, fut, workers=[addr], pure=False).result()
            done.append(addr)
            del fut
    except BaseException:
        if seg is not None:
            seg.close()
        if done:
            client.run(_drop_replica, name, workers=done)
        raise
    holders = list(done)

    def release() -> None:
        if seg is not None:
            seg.close()
        if holders:
            client.run(_drop_replica, name, workers=holders)

    return Replica(name, src.shape, src.dtype, len(by_node) if here in by_node or not local else len(by_node) + 1,
                   release)

"""ndshm arrays in Dask distributed: by reference between processes of one node, by value otherwise.

Stock Dask copies every worker-to-worker transfer over the network, even between processes of one
machine, and would send a :class:`~ndshm.SharedArray` by value (its serializer registry finds
NumPy's through the ndarray subclass chain). Importing this module (in every process: see
:func:`install`) registers:

- a Dask serializer for :class:`~ndshm.SharedArray`: a transfer to a process that sees the
  segment's file carries only an :class:`ndshm.Reference`, and the receiver maps the segment (no
  second copy in RAM): a process with the **same node identity** (:func:`ndshm.node_identity`:
  same boot, mount and IPC namespaces), or one in another container of this machine (same boot
  id) that sees the segment's directory as the same directory (device and inode: a tmpfs both
  containers share). Every other case travels by value with Dask's own NumPy serializer: a
  recipient on another node or in a container with its own ``/dev/shm``, a recipient that has
  not installed ndshm.dask, a connection made before the install, an array not in a live named
  segment, and the spill path (Dask spills with no recipient: the data, not a reference, goes
  to disk; it comes back as a plain ndarray).
  How the sender knows the recipient's identity: each process adds its node identity, and the
  (device, inode) of its segment directories (``$NDSHM_DIR`` or ``/dev/shm``, and ``/dev/shm``),
  to the handshake Dask's comms exchange when they connect (``Comm.handshake_info``, which Dask
  made to share "environment information that may differ" between peers), so the serializer
  finds them in ``context["recipient"]``; the receiver checks once more and refuses a reference
  from another node, or to a file its directory does not lead to (:class:`ndshm.WrongNodeError`).
  A scheduler announces no node: it forwards what it is sent (a plain ``client.scatter``, which
  goes through it) to workers that may be on other nodes, so it is sent data; :func:`scatter`
  sends straight to the workers (``direct=True``).
  A SharedArray pickled inside another object (a task's argument, a tuple's element Dask
  pickles whole) goes by ndshm's own pickling: by reference, refused with WrongNodeError if it
  reaches another node.
- receivers get **read-only** views unless ``install(client, writeable=True)``;
- ``dask.sizeof`` counting a shared array's bytes only where its memory is owned (the process
  that created the segment, or claimed it as ``owner="receiver"``); receivers by reference count
  about 100 bytes, so Dask's memory accounting is not multiplied per replica.

Arrays a task makes for Dask to hold should be created with :func:`empty` (or :func:`share`):
their name then lives while the creating worker holds the result (``owner="views"``), and is gone,
without leaks, when Dask releases it; receivers keep their mappings as long as they hold it.
"""

from __future__ import annotations

import pickle
import sys
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
from numpy.typing import NDArray

import dask.sizeof as _dask_sizeof
from distributed.comm import core as _comm_core
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.protocol.numpy import deserialize_numpy_ndarray, serialize_numpy_ndarray
from distributed.protocol.serialize import dask_deserialize, dask_serialize

from . import _segment
from ._reference import Reference, dir_identity, from_reference, node_identity, reference, same_boot

if TYPE_CHECKING:
    from typing_extensions import TypeGuard

    from ._replicate import Replica

__all__ = ["install", "NdshmPlugin", "scatter", "empty", "share", "stats", "replicate"]

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
            info[HANDSHAKE_KEY] = node_identity()
            info[DIRS_KEY] = _dir_identities()
        return info

    handshake_info._ndshm = True  # type: ignore[attr-defined]
    handshake_info.__doc__ = original.__doc__
    comm_cls.handshake_info = handshake_info  # type: ignore[method-assign]


_patch_handshake()


# ---- the serializer ---------------------------------------------------------------------------

def _dir_identities() -> dict[str, list[int]]:
    """{directory: [device, inode]} of the segment directories this process sees (for the handshake)."""
    out = {}
    for d in dict.fromkeys((_segment.default_dir(), "/dev/shm")):
        ident = dir_identity(d)
        if ident is not None:
            out[d] = list(ident)
    return out


def _by_reference(context: Optional[dict[str, Any]], x: Any) -> bool:
    """Whether the recipient of ``x`` (as ``context`` tells) can map its segment: the same node
    identity, or another container of this machine that sees the segment's directory as the
    very same directory."""
    if not context:
        return False  # the spill path, or a caller that does not say where the data goes
    recipient = context.get("recipient")
    if not isinstance(recipient, dict):
        return False
    node = recipient.get(HANDSHAKE_KEY)
    if not isinstance(node, str):
        return False
    if node == node_identity():
        return True
    if not same_boot(node):
        return False
    try:
        d = _segment.segment_of(x)._dir
    except ValueError:
        return False
    dirs = recipient.get(DIRS_KEY)
    if d is None or not isinstance(dirs, dict):
        return False
    there, here = dirs.get(d), dir_identity(d)
    return here is not None and isinstance(there, (list, tuple)) and tuple(there) == here


@dask_serialize.register(_segment.SharedArray)  # type: ignore[untyped-decorator, no-untyped-call]
def serialize_shared_array(x: NDArray[Any],
                           context: Optional[dict[str, Any]] = None) -> tuple[dict[str, Any], list[Any]]:
    """Dask serializer of a SharedArray: a Reference when the recipient is on this node, else the
    data with Dask's NumPy serializer."""
    if _by_reference(context, x):
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
    if header.get("ndshm") == "reference":
        ref = pickle.loads(bytes(frames[0]))
        if not isinstance(ref, Reference):
            raise TypeError(f"an ndshm.dask reference frame holds a {type(ref).__name__}, not an ndshm.Reference")
        _counts["received_by_reference"] += 1
        return from_reference(ref, readonly=True if ref.readonly else not _writeable)
    arr: NDArray[Any] = deserialize_numpy_ndarray(header, frames)
    return arr


def _sizeof_shared_array(x: NDArray[Any]) -> int:
    seg = _segment._owner(x)
    if isinstance(seg, _segment.Segment) and not (seg._creator or seg._owner == "received"):
        return 100  # a mapping of memory another process owns
    return int(x.nbytes) + 100


_dask_sizeof.sizeof.register(_segment.SharedArray)(_sizeof_shared_array)  # type: ignore[no-untyped-call]


def stats() -> dict[str, int]:
    """How many SharedArrays this process sent by reference and by value, and received by reference."""
    return dict(_counts)


# ---- installing it in every process --------------------------------------------------------

class NdshmPlugin(WorkerPlugin):
    """Registers ndshm's serializer in a worker (unpickling this plugin imports ndshm.dask)."""

    idempotent = False
    name = "ndshm"

    def __init__(self, writeable: bool = False) -> None:
        self.writeable = bool(writeable)

    def setup(self, worker: Any) -> None:
        global _writeable
        _writeable = self.writeable


def install(client: Any, *, writeable: bool = False) -> None:
    """Make ``client`` and every worker of its cluster (present and future) send ndshm arrays by
    reference within a node: registers :class:`NdshmPlugin` and sets this process up.
    ``writeable``: receivers get writeable views (default read-only). Call it right after the
    cluster starts: connections opened before it carry no node identity and send by value.
    ``dask worker --preload ndshm.dask`` does the same for workers from their start."""
    global _writeable
    if not isinstance(writeable, (bool, np.bool_)):
        raise TypeError(f"writeable={writeable!r} is not a bool")
    _writeable = bool(writeable)
    client.register_plugin(NdshmPlugin(writeable=_writeable), name="ndshm")


def dask_setup(worker: Any) -> None:
    """The preload hook (``--preload ndshm.dask``): importing this module registered everything."""


# ---- putting data into shared memory -----------------------------------------------------------

def _in_named_segment(arr: object) -> TypeGuard[NDArray[Any]]:
    """True if ``arr`` lies in an open named segment (checked without side effects: taking a
    reference would hand an owner="receiver" segment over)."""
    if not isinstance(arr, np.ndarray):
        return False
    seg = _segment._owner(arr)
    return isinstance(seg, _segment.Segment) and seg.kind == "named" and not seg.closed


def empty(shape: Any, dtype: Any = float, *, owner: str = "views", dir: Optional[str] = None) -> NDArray[Any]:
    """A new shared array (uninitialised: zeroed) for a task to fill and return. Its name lives
    while this process holds it (``owner="views"``): Dask holding the result keeps it; releasing it
    frees it (receivers keep their mappings)."""
    return _segment.create(None, shape, dtype, owner=owner, dir=dir)


def share(arr: Any, *, owner: str = "views", dir: Optional[str] = None) -> NDArray[Any]:
    """``arr`` in shared memory: itself if it lies in a live named segment, else a copy in a new one."""
    if _in_named_segment(arr):
        return arr
    src = np.asarray(arr)
    out = _segment.create(None, src.shape, src.dtype, owner=owner, dir=dir)
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
    else:
        shared = share(data, owner="receiver", dir=dir)
    return client.scatter(shared, workers=workers, broadcast=broadcast, direct=True if direct is None else direct,
                          hash=False)


# ---- one copy per node -------------------------------------------------------------------------

_held: dict[str, _segment.Segment] = {}  # replica name -> the Segment this process wrote for its node


def _node_of_worker() -> str:
    return node_identity()


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


def replicate(client: Any, arr: Any, *, name: Optional[str] = None) -> Replica:
    """``arr`` copied once to every node of ``client``'s cluster (see ``ndshm.replicate``): on this
    node into a segment this process owns, on every other node by a by-value scatter to one of
    its workers, which writes the node's segment. Tasks call ``replica.array()``."""
    import uuid

    from ._replicate import Replica
    src = np.asarray(arr)
    if src.dtype.hasobject:
        raise TypeError(f"dtype {src.dtype} holds Python objects: it cannot live in shared memory")
    name = name or f"replica-{uuid.uuid4().hex[:20]}"
    nodes = client.run(_node_of_worker)
    here = node_identity()
    by_node: dict[str, str] = {}
    for addr, node in sorted(nodes.items()):
        by_node.setdefault(node, addr)
    seg = _segment.Segment.create(name, src.shape, src.dtype)
    done: list[str] = []
    try:
        seg.asarray()[...] = src
        for node, addr in by_node.items():
            if node == here:
                continue
            fut = client.scatter(src, workers=[addr], hash=False)
            client.submit(_write_replica, name, fut, workers=[addr], pure=False).result()
            done.append(addr)
            del fut
    except BaseException:
        seg.close()
        if done:
            client.run(_drop_replica, name, workers=done)
        raise
    holders = list(done)

    def release() -> None:
        seg.close()
        if holders:
            client.run(_drop_replica, name, workers=holders)

    return Replica(name, src.shape, src.dtype, len(by_node) if here in by_node else len(by_node) + 1, release)

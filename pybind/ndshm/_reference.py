"""References to shared arrays, and the node identity that keeps them on their machine.

A :class:`Reference` says where an array's data lies: the segment's name and directory, the
byte offset, shape, strides and dtype, and the identity of the segment's file (device and inode:
a segment removed and re-created under the same name is refused). It is what a
:class:`~ndshm.SharedArray` pickles to, and what engine integrations (``ndshm.dask``,
``ndshm.ray``) send instead of the data.

A name means something only on the machine it was made on, and (in containers) only where the
directory holding it is the same file system. So every reference also carries the **node
identity** of the process that made it: the kernel's boot id
(``/proc/sys/kernel/random/boot_id``) and the inodes of the mount and IPC namespaces
(``/proc/self/ns/mnt``, ``/proc/self/ns/ipc``), read once per process, and the segment file's
device and inode. A reference made with another boot id (another machine, or another boot)
raises :class:`WrongNodeError` before anything is attached, instead of attaching a different
segment that happens to share the name. One made in the same namespaces is used as is. One made
on the same boot in other namespaces (another container) is decided by the file itself: if the
segment's path resolves here to the very (device, inode) the reference carries, both containers
see one file (a shared tmpfs: ``--ipc=container:X``, a pod's ``emptyDir``) and it is mapped, zero
copy; otherwise (a container with its own ``/dev/shm``) :class:`WrongNodeError`.

``NDSHM_NODE_ID``, when set in a process's environment before it first needs its identity,
replaces the computed one. It exists for tests that simulate a second node on one machine
(a worker whose identity differs must get data by value); do not set it otherwise.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Optional

import numpy as np

from ._errors import SegmentNotFoundError

__all__ = ["Reference", "WrongNodeError", "reference", "from_reference", "node_identity"]

NODE_ENV = "NDSHM_NODE_ID"


class WrongNodeError(SegmentNotFoundError):
    """A reference to a shared array reached a process on another node or in another container
    (its node identity differs): the segment it names is not reachable here. A
    :class:`~ndshm.SegmentNotFoundError` (so a ``FileNotFoundError``)."""


_node: Optional[str] = None


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().strip().decode("ascii", "replace")
    except OSError:
        return ""


def _ns(kind: str) -> str:
    try:
        return str(os.stat(f"/proc/self/ns/{kind}").st_ino)
    except OSError:
        try:
            return os.readlink(f"/proc/self/ns/{kind}")
        except OSError:
            return ""


def node_identity() -> str:
    """This process's node identity: ``"<boot id>/<mount ns>/<ipc ns>"`` (computed once per
    process; ``$NDSHM_NODE_ID`` overrides it, for tests only). Equal identities share segments by
    name; identities with the same boot id (the part before the first ``/``: containers of one
    machine) share a segment when its path leads to the same file in both (see the module
    documentation); others never do."""
    global _node
    node = _node
    if node is None:
        node = os.environ.get(NODE_ENV) or f"{_read('/proc/sys/kernel/random/boot_id')}/{_ns('mnt')}/{_ns('ipc')}"
        _node = node
    return node


def same_boot(node: str) -> bool:
    """True if ``node`` (another process's identity) has this process's boot id: the same machine
    and boot, in any container."""
    here = _node or node_identity()
    return node.split("/", 1)[0] == here.split("/", 1)[0]


def dir_identity(dir: str) -> Optional[tuple[int, int]]:
    """(device, inode) of directory ``dir`` as this process sees it, or None if it cannot be read."""
    try:
        st = os.stat(dir)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Reference(NamedTuple):
    """Where a shared array's data lies, small and picklable (see the module documentation).
    Made by :func:`reference`, turned back into an array by :func:`from_reference`."""

    name: str
    """The segment's name."""
    dir: str
    """The directory holding it."""
    offset: int
    """Byte offset of the array's first element from the start of the segment's data."""
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    descr: Any
    """The dtype, as ``numpy.lib.format.dtype_to_descr`` writes it."""
    readonly: bool
    """True if the referenced array was read-only (its receivers then get read-only views)."""
    dev: int
    """Device of the segment's file (its directory's file system)."""
    ino: int
    """Inode of the segment's file: with ``dev``, the segment's identity."""
    handover: bool
    """True for a segment created with ``owner="receiver"``: the first receiver becomes its owner."""
    node: str
    """The node identity of the process that made the reference (:func:`node_identity`)."""

    @property
    def dtype(self) -> np.dtype:
        from numpy.lib import format as npformat
        return npformat.descr_to_dtype(self.descr)

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * self.dtype.itemsize


def reference(arr: Any) -> Reference:
    """A :class:`Reference` to ``arr``, an array (or any view of one) in a live named segment.
    ValueError if its data lies elsewhere (a copy, an anonymous or memfd segment, a closed or
    removed segment). For a segment created with ``owner="receiver"`` this is a hand-over, as
    pickling it is: the first process to call :func:`from_reference` on it becomes its owner."""
    from . import _segment
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"reference() takes a NumPy array in an ndshm segment, not {type(arr).__name__}")
    args = _segment._reference(arr)
    if args is None:
        raise ValueError("the array does not lie in a live named ndshm segment (a copy, an anonymous or memfd "
                         "segment, or a closed or removed one): it has no reference")
    name, dir, offset, shape, strides, descr, readonly, dev, ino, claim, node = args[1]
    return Reference(name, dir, offset, tuple(shape), tuple(strides), descr, bool(readonly), dev, ino,
                     bool(claim), node)


def from_reference(ref: Reference, readonly: Optional[bool] = None) -> np.ndarray:
    """The array ``ref`` refers to, zero-copy (a :class:`~ndshm.SharedArray`). ``readonly``:
    None gives what the reference says, True a read-only view; False asks for a writeable view
    (ValueError if the reference is read-only). Raises :class:`WrongNodeError` if ``ref`` was
    made on another node or in another container, and :class:`~ndshm.SegmentNotFoundError` if
    the segment is gone or its name now leads to another segment."""
    from . import _segment
    if not isinstance(ref, Reference):
        raise TypeError(f"from_reference() takes an ndshm.Reference, not {type(ref).__name__}")
    if readonly is None:
        readonly = ref.readonly
    else:
        from ._dtype import as_flag
        readonly = as_flag(readonly, "readonly")
        if not readonly and ref.readonly:
            raise ValueError(f"the reference to segment {ref.name!r} is read-only: readonly=False cannot make it "
                             "writeable")
    return _segment._rebuild(ref.name, ref.dir, ref.offset, ref.shape, ref.strides, ref.descr, readonly,
                             ref.dev, ref.ino, ref.handover, ref.node)


def check_node(node: Optional[str], name: str, dir: str) -> bool:
    """Whether a reference made with identity ``node`` can be used here: True if it needs no
    further check (same identity, or none), False if it was made in another container on this
    machine (then :func:`check_file` decides); WrongNodeError for another machine or boot."""
    if node is None or node == (_node or node_identity()):
        return True
    if same_boot(node):
        return False
    raise WrongNodeError(f"segment {name!r} in {dir} was referenced on another node or container (node "
                         f"identity {node!r}, here {node_identity()!r}): its name does not reach it here; "
                         "send the data by value across nodes")


def check_file(node: str, name: str, dir: str, path: str, dev: Optional[int], ino: Optional[int]) -> None:
    """For a reference made in another container of this machine: WrongNodeError unless ``path``
    leads here to the very file (``dev``, ``ino``) the reference names (a file system both share)."""
    try:
        st = os.stat(path)
        here: Optional[tuple[int, int]] = (st.st_dev, st.st_ino)
    except OSError:
        here = None
    if dev is None or here != (dev, ino):
        raise WrongNodeError(f"segment {name!r} in {dir} was referenced in another container (node identity "
                             f"{node!r}, here {node_identity()!r}), and {path} does not lead here to that file "
                             f"(device {dev}, inode {ino}; here {'none' if here is None else here}): the "
                             "containers do not share that directory; share it (the same tmpfs in both) or send "
                             "the data by value")

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

This module also makes a :class:`~ndshm.SharedArray` pickle by reference: it registers
:func:`reduce_shared_array` with ``copyreg.pickle`` (pickle, multiprocessing's ForkingPickler and
cloudpickle consult ``copyreg.dispatch_table`` before an object's own ``__reduce_ex__``). The
stream names ``ndshm._segment.rebuild_view``, which attaches and views (the segment room: it
cannot import this one).
"""

from __future__ import annotations

import copyreg
import os
from typing import Any, NamedTuple, Optional

import numpy as np
from numpy.lib import format as _npformat
from numpy.typing import NDArray

from ._dtype import as_flag, byte_span
from ._identity import WrongNodeError, dir_identity, node_identity, same_boot
from ._segment import Segment, SharedArray, file_identity, hand_over_once, owner_of, rebuild_view

__all__ = ["Reference", "WrongNodeError", "reference", "from_reference", "node_identity", "same_boot",
           "dir_identity"]


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
        """The referenced array's dtype."""
        return _npformat.descr_to_dtype(self.descr)

    @property
    def nbytes(self) -> int:
        """The referenced array's bytes (its elements times its itemsize)."""
        n = 1
        for d in self.shape:
            n *= d
        return n * self.dtype.itemsize


def reference_of(arr: NDArray[Any]) -> Optional[Reference]:
    """The :class:`Reference` to ``arr`` if its data lies in a live named segment, else None. For
    a segment created with ``owner="receiver"`` this hands the name over (see _ownership)."""
    seg = owner_of(arr)
    # (a raw, headerless mapping is never "named": ndshm.attach_raw's segments are "file" ones)
    if not isinstance(seg, Segment) or seg.kind != "named" or seg.closed or seg.path is None:
        return None
    iface = arr.__array_interface__
    addr = iface["data"][0]
    strides = arr.strides
    lo, hi = byte_span(arr.shape, strides, arr.itemsize)
    offset = addr - seg.address
    if arr.size and (offset + lo < 0 or offset + hi > seg.nbytes):
        return None
    try:  # the name must still lead to this very segment (it may have been removed, or reused)
        st = os.stat(seg.path)
    except OSError:
        return None
    dev, ino = file_identity(seg)
    if (st.st_dev, st.st_ino) != (dev, ino):
        return None
    name, dir = seg.name, seg.dir
    assert name is not None and dir is not None  # a live named segment has both
    return Reference(name, dir, offset, tuple(arr.shape), tuple(strides), _npformat.dtype_to_descr(arr.dtype),
                     not arr.flags.writeable, dev, ino, hand_over_once(seg), node_identity())


def array_of(ref: Reference, readonly: bool) -> NDArray[Any]:
    """The view ``ref`` describes (``readonly`` or not): see ``_segment.rebuild_view``."""
    return rebuild_view(ref.name, ref.dir, ref.offset, ref.shape, ref.strides, ref.descr, readonly, ref.dev,
                        ref.ino, ref.handover, ref.node)


def reduce_shared_array(arr: SharedArray) -> str | tuple[Any, ...]:
    """How pickle reduces a SharedArray (registered with copyreg below): by reference when its data
    lies in a live named segment (unpickled by ``ndshm._segment.rebuild_view``), else by value."""
    ref = reference_of(arr)
    if ref is not None:
        return (rebuild_view, tuple(ref))
    # By value: the plain ndarray over the same data, which the pickler then reduces with the
    # stream's protocol (a copyreg function is not told it: protocol 5's out-of-band buffers stay)
    return (np.asarray, (np.asarray(arr),))


# Registered whenever ndshm is imported (ndshm/__init__.py imports this module).
copyreg.pickle(SharedArray, reduce_shared_array)


def reference(arr: Any) -> Reference:
    """A :class:`Reference` to ``arr``, an array (or any view of one) in a live named segment.
    ValueError if its data lies elsewhere (a copy, an anonymous or memfd segment, a closed or
    removed segment). For a segment created with ``owner="receiver"`` this is a hand-over, as
    pickling it is: the first process to call :func:`from_reference` on it becomes its owner."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"reference() takes a NumPy array in an ndshm segment, not {type(arr).__name__}")
    ref = reference_of(arr)
    if ref is None:
        raise ValueError("the array does not lie in a live named ndshm segment (a copy, an anonymous or memfd "
                         "segment, or a closed or removed one): it has no reference")
    return ref


def from_reference(ref: Reference, readonly: Optional[bool] = None) -> np.ndarray:
    """The array ``ref`` refers to, zero-copy (a :class:`~ndshm.SharedArray`). ``readonly``:
    None gives what the reference says, True a read-only view; False asks for a writeable view
    (ValueError if the reference is read-only). Raises :class:`WrongNodeError` if ``ref`` was
    made on another node or in another container, and :class:`~ndshm.SegmentNotFoundError` if
    the segment is gone or its name now leads to another segment."""
    if not isinstance(ref, Reference):
        raise TypeError(f"from_reference() takes an ndshm.Reference, not {type(ref).__name__}")
    if readonly is None:
        readonly = ref.readonly
    else:
        readonly = as_flag(readonly, "readonly")
        if not readonly and ref.readonly:
            raise ValueError(f"the reference to segment {ref.name!r} is read-only: readonly=False cannot make it "
                             "writeable")
    return array_of(ref, readonly)

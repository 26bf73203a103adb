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

from typing import Any, Optional

import numpy as np

from ._dtype import as_flag
from ._identity import WrongNodeError, dir_identity, node_identity, same_boot
from ._segment import Reference, array_of, reference_of

__all__ = ["Reference", "WrongNodeError", "reference", "from_reference", "node_identity", "same_boot",
           "dir_identity"]


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

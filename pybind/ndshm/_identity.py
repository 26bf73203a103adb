"""Node identity: which machine, boot and container a process runs in, and whether a segment name
made elsewhere reaches the same file here (see :mod:`ndshm._reference`, whose references carry it).

A name means something only on the machine it was made on, and (in containers) only where the
directory holding it is the same file system. The identity is the kernel's boot id
(``/proc/sys/kernel/random/boot_id``) and the inodes of the mount and IPC namespaces
(``/proc/self/ns/mnt``, ``/proc/self/ns/ipc``), read once per process. ``NDSHM_NODE_ID``, when
set before a process first needs its identity, replaces it (tests that simulate a second node).
"""

from __future__ import annotations

import os
from typing import Optional

from ._errors import SegmentNotFoundError

__all__ = ["WrongNodeError", "node_identity", "same_boot", "dir_identity", "check_node", "check_file"]

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
    here = node_identity()
    return node.split("/", 1)[0] == here.split("/", 1)[0]


def dir_identity(dir: str) -> Optional[tuple[int, int]]:
    """(device, inode) of directory ``dir`` as this process sees it, or None if it cannot be read."""
    try:
        st = os.stat(dir)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_node(node: Optional[str], name: str, dir: str) -> bool:
    """Whether a reference made with identity ``node`` can be used here: True if it needs no
    further check (same identity, or none), False if it was made in another container on this
    machine (then :func:`check_file` decides); WrongNodeError for another machine or boot."""
    if node is None or node == (node_identity()):
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

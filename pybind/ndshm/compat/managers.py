"""``multiprocessing.managers.SharedMemoryManager`` without a server process or a resource tracker.

The standard library's manager starts a server process that records every block made through it
and unlinks them at :meth:`~SharedMemoryManager.shutdown`. This one keeps that record in the
process that made the blocks: ``shutdown()`` (or leaving its ``with`` block, or a normal exit of
this process) unlinks every block it made that still exists under its name. Nothing else is
started, so nothing has to be told about the blocks: they are ordinary
:class:`ndshm.compat.shared_memory.SharedMemory` blocks, attachable by name from any process with
either module.

If this process is killed instead, nothing unlinks them at once; each block is marked as made by
ndshm, so once no ndshm process maps it any more ``python -m ndshm gc`` removes it.

What it does not offer, having no server: ``connect()`` to a manager in another process,
``register()`` of proxy types, and ``start(initializer)`` (there is no process to initialise:
``start`` raises ``ValueError`` if one is given). A forked child's calls of the factories are
recorded in the child's copy and unlinked by the child's ``shutdown()``.
"""

from __future__ import annotations

import os
import threading
import weakref
from multiprocessing import ProcessError
from typing import Any, Callable, Iterable, Optional

from . import shared_memory as _sm
from ._shareable_list import SLT
from ._shared_memory import block_path
from .shared_memory import ShareableList, SharedMemory

__all__ = ["SharedMemoryManager"]

_INITIAL, _STARTED, _SHUTDOWN = "initial", "started", "shut down"


def _unlink_all(blocks: dict[str, tuple[str, int, int]], pid: int) -> None:
    """Unlink each recorded block whose name still holds the file that was made (run once)."""
    if os.getpid() != pid:
        return  # a forked child's copy: the blocks are its parent's
    for path, dev, ino in list(blocks.values()):
        try:
            st = os.lstat(path)
            if (st.st_dev, st.st_ino) == (dev, ino):
                os.unlink(path)
        except OSError:
            pass  # unlinked already, by its user or another process
    blocks.clear()


class SharedMemoryManager:
    """Make :class:`SharedMemory` blocks and :class:`ShareableList` lists that are unlinked together
    at :meth:`shutdown`. The standard library's constructor arguments (``address``, ``authkey``,
    ``serializer``, ``ctx``, ``shutdown_timeout``) are accepted and have no use here."""

    def __init__(self, address: Any = None, authkey: Optional[bytes] = None, serializer: str = "pickle",
                 ctx: Any = None, *, shutdown_timeout: float = 1.0) -> None:
        self._state = _INITIAL
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._blocks: dict[str, tuple[str, int, int]] = {}
        self._finalizer: Optional[weakref.finalize[..., SharedMemoryManager]] = None

    @property
    def address(self) -> None:
        """None: there is no server to connect to."""
        return None

    def start(self, initializer: Optional[Callable[..., Any]] = None, initargs: Iterable[Any] = ()) -> None:
        """Start recording blocks. ``ProcessError`` if started or shut down already."""
        with self._lock:
            if self._state == _STARTED:
                raise ProcessError("Already started server")
            if self._state == _SHUTDOWN:
                raise ProcessError("Manager has shut down")
            if initializer is not None:
                if not callable(initializer):
                    raise TypeError("initializer must be a callable")
                raise ValueError(f"initializer {initializer!r} cannot run: this SharedMemoryManager has no "
                                 "server process")
            self._state = _STARTED
            self._pid = os.getpid()
            self._finalizer = weakref.finalize(self, _unlink_all, self._blocks, self._pid)

    def shutdown(self) -> None:
        """Unlink every block made through this manager (in this process); later calls do nothing.
        Mappings of them stay valid until closed, as after any unlink."""
        with self._lock:
            if self._state != _STARTED:
                return
            self._state = _SHUTDOWN
            if self._finalizer is not None:
                self._finalizer()

    def join(self, timeout: Optional[float] = None) -> None:
        """Return at once: there is no server process to wait for."""

    def _record(self, shm: SharedMemory) -> None:
        path = block_path(shm)
        st = os.stat(path)
        self._blocks[shm.name] = (path, st.st_dev, st.st_ino)

    def _check_started(self) -> None:
        if self._state != _STARTED:
            raise ValueError(f"this SharedMemoryManager is {self._state}: call start() first"
                             if self._state == _INITIAL else "this SharedMemoryManager has shut down")

    def SharedMemory(self, size: int) -> _sm.SharedMemory:
        """A new :class:`SharedMemory` block of ``size`` bytes, unlinked at :meth:`shutdown`."""
        with self._lock:
            self._check_started()
            shm = SharedMemory(None, create=True, size=size)
            self._record(shm)
        return shm

    def ShareableList(self, sequence: Optional[Iterable[SLT]]) -> _sm.ShareableList[SLT]:
        """A new :class:`ShareableList` holding ``sequence``, unlinked at :meth:`shutdown`."""
        with self._lock:
            self._check_started()
            sl = ShareableList(sequence)
            self._record(sl.shm)
        return sl

    def __enter__(self) -> "SharedMemoryManager":
        if self._state == _INITIAL:
            self.start()
        if self._state != _STARTED:
            raise ProcessError("Unable to start server")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def __reduce__(self) -> Any:
        raise TypeError("a SharedMemoryManager cannot be pickled: pass its blocks or lists instead")

    def __repr__(self) -> str:
        return f"<{self.__class__.__name__} {self._state}, {len(self._blocks)} blocks>"

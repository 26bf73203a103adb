"""``multiprocessing.shared_memory.SharedMemory`` with the same API and the same blocks, minus its traps.

Blocks live where the standard library puts them (``/dev/shm/<name>``, no header), so a block
created by either class attaches in the other. Differences, all deliberate:

* no resource tracker: a block is removed only by :meth:`SharedMemory.unlink` (the standard
  library's tracker unlinks blocks that other processes still use);
* the space is reserved at creation (``posix_fallocate``): a full ``/dev/shm`` raises
  ``OSError(ENOSPC)`` here instead of SIGBUS later;
* :meth:`SharedMemory.close` never raises ``BufferError`` while NumPy arrays or memoryviews of
  ``buf`` exist: the mapping lives until the last of them is gone (numpy/numpy#23305);
* it works on PyPy (no ``_posixshmem``).
"""

from __future__ import annotations

import errno
import os
import secrets
from typing import Any, Optional

import numpy as np

from .._segment import Segment

__all__ = ["SharedMemory", "SHM_DIR"]

SHM_DIR = "/dev/shm"
_PREFIX = "psm_"


def _path(name: str) -> str:
    bare = name.lstrip("/")
    if not bare or "/" in bare:
        raise ValueError(f"shared memory name {name!r} is not a valid POSIX shm name")
    return os.path.join(SHM_DIR, bare)


class SharedMemory:
    """Create (``create=True``) or attach to a shared-memory block ``name`` of ``size`` bytes."""

    _prepend_leading_slash = True

    def __init__(self, name: Optional[str] = None, create: bool = False, size: int = 0, *, track: bool = True):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"shared memory name {name!r} is not a str")
        if not size >= 0:
            raise ValueError("'size' must be a positive integer")
        if create:
            if size == 0:
                raise ValueError("'size' must be a positive number different from zero")
        elif name is None:
            raise ValueError("'name' can only be None if create=True")
        if create:
            name = self._create(name, size)
        path = _path(name)
        self._seg: Optional[Segment] = Segment._attach_raw(path, False)
        self._name = "/" + name.lstrip("/")
        self._path = path
        self._size = size if create else self._seg.nbytes
        arr = self._seg._view(0, (self._size,), np.dtype(np.uint8), (1,), False)
        self._buf: Optional[memoryview] = memoryview(arr)

    @staticmethod
    def _create(name: Optional[str], size: int) -> str:
        while True:
            candidate = name if name is not None else _PREFIX + secrets.token_hex(4)
            path = _path(candidate)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            except FileExistsError:
                if name is not None:
                    raise
                continue
            try:
                try:
                    os.posix_fallocate(fd, 0, size)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        if exc.errno == errno.ENOSPC:
                            raise OSError(errno.ENOSPC, f"no space in {SHM_DIR} for a block of {size} bytes",
                                          path) from None
                        raise
                    os.ftruncate(fd, size)
            except BaseException:
                os.unlink(path)
                raise
            finally:
                os.close(fd)
            return candidate

    @property
    def name(self) -> str:
        """Unique name that identifies the block (without the leading slash)."""
        return self._name[1:] if self._prepend_leading_slash else self._name

    @property
    def size(self) -> int:
        """Size in bytes."""
        return self._size

    @property
    def buf(self) -> Optional[memoryview]:
        """A memoryview of the block's contents (None after close)."""
        return self._buf

    def close(self) -> None:
        """Close this instance's access. Views of ``buf`` made before stay valid until they die."""
        buf, self._buf = self._buf, None
        if buf is not None:
            try:
                buf.release()
            except BufferError:
                pass  # exported to NumPy or another memoryview: the mapping lives on with them
        if self._seg is not None:
            self._seg.close()
            self._seg = None

    def unlink(self) -> None:
        """Remove the block's name (once, from any one process)."""
        os.unlink(self._path)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __reduce__(self) -> Any:
        return (self.__class__, (self.name, False, 0))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.name!r}, size={self.size})"

"""The room of :class:`~ndshm.compat.shared_memory.SharedMemory`: one block in :data:`SHM_DIR`,
created (and marked as ndshm's, see :mod:`ndshm._compat_blocks`) or attached by name, mapped as
an ndshm segment. Users import it from :mod:`ndshm.compat.shared_memory`, whose ``SHM_DIR`` reads
and sets this module's."""

from __future__ import annotations

import os
import secrets
from typing import Any, Optional

import numpy as np

from .._dtype import as_int
from .._segment import Segment, map_raw, view
from .. import _compat_blocks as _marks
from .._compat_blocks import PREFIX, bare_name, mark_block, new_file, unmark_block

__all__ = ["SHM_DIR", "SharedMemory", "block_path"]

#: Where the standard library's blocks live, and so this drop-in's (POSIX shared memory on Linux);
#: tests point it elsewhere (through ``ndshm.compat.shared_memory.SHM_DIR``, which sets this one).
SHM_DIR: str = _marks.SHM_DIR


class SharedMemory:
    """Create (``create=True``) or attach to a shared-memory block ``name`` of ``size`` bytes.

    As in the standard library: ``name`` is kept as given (``"/x"`` stays ``"/x"``), names glibc's
    ``shm_open`` refuses (``""``, ``"/"``, ``"a/b"``) raise ``OSError(EINVAL)``, ``size`` is the
    block's size as an ``int``, and a subclass may set ``_mode`` (the new block's permissions) and
    ``_prepend_leading_slash``. ``track`` (Python 3.13's argument) is accepted: there is no tracker."""

    __module__ = "ndshm.compat.shared_memory"  # pickles and reprs name the public module, as before the split

    _name: Optional[str] = None
    _buf: Optional[memoryview] = None
    _seg: Optional[Segment] = None
    _mode = 0o600
    _prepend_leading_slash = True

    def __init__(self, name: Optional[str] = None, create: bool = False, size: int = 0, *, track: bool = True):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"shared memory name {name!r} is not a str")
        if not size >= 0:
            raise ValueError("'size' must be a positive integer")
        if create:
            if size == 0:
                raise ValueError("'size' must be a positive number different from zero")
            size = as_int(size, "shared memory size", 1, 2**63 - 1)
        elif name is None:
            raise ValueError("'name' can only be None if create=True")
        d = SHM_DIR
        if name is None:
            name = self._create_unique(d, size)
        else:
            name = "/" + name if self._prepend_leading_slash else name
            if create:
                self._create(d, name, size)
        path = os.path.join(d, bare_name(name, name))
        try:
            self._seg = map_raw(path, False)
        except BaseException:
            if create:  # as the stdlib does when its mmap fails
                os.unlink(path)
                unmark_block(d, path.rsplit("/", 1)[1])
            raise
        self._name = name
        self._path = path
        self._size = int(self._seg.nbytes)
        arr = view(self._seg, 0, (self._size,), np.dtype(np.uint8), (1,), False)
        self._buf = arr.data  # memoryview(arr)

    def _create_unique(self, d: str, size: int) -> str:
        while True:
            name = "/" + PREFIX + secrets.token_hex(4)
            try:
                self._create(d, name, size)
            except FileExistsError:
                continue
            return name

    def _create(self, d: str, name: str, size: int) -> None:
        bare = bare_name(name, name)
        path = os.path.join(d, bare)
        fd = new_file(path, size, self._mode)
        try:
            mark_block(fd, d, bare)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)

    @property
    def name(self) -> str:
        """Unique name that identifies the block (as given; one leading slash added here is not shown)."""
        reported = self._name or ""
        if self._prepend_leading_slash and reported.startswith("/"):
            reported = reported[1:]
        return reported

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
        seg, self._seg = self._seg, None
        if seg is not None:
            seg.close()

    def unlink(self) -> None:
        """Remove the block's name (once, from any one process)."""
        if self._name:
            bare = bare_name(self._name, self._name)
            d = os.path.dirname(self._path)
            os.unlink(self._path)
            unmark_block(d, bare)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __reduce__(self) -> Any:
        return (self.__class__, (self.name, False, self.size))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.name!r}, size={self.size})"


def block_path(shm: SharedMemory) -> str:
    """The file behind ``shm`` (``ndshm.compat.managers`` records it to unlink that very file)."""
    return shm._path

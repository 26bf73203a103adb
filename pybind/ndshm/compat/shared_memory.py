"""``multiprocessing.shared_memory`` (``SharedMemory``, ``ShareableList``) with the same API and the
same blocks, minus its traps.

Blocks live where the standard library puts them (``/dev/shm/<name>``, no header), so a block
created by either module attaches in the other, and a :class:`ShareableList` made by either reads
in the other (the same binary layout). Differences, all deliberate:

* no resource tracker: a block is removed only by :meth:`SharedMemory.unlink` (the standard
  library's tracker unlinks blocks that other processes still use). A block ndshm created is
  marked as such (see :mod:`ndshm._compat_blocks`); once its creator is dead and no ndshm process maps
  it, ``python -m ndshm gc`` may remove it, as the stdlib's tracker would have at the creator's exit;
* the space is reserved at creation (``posix_fallocate``): a full ``/dev/shm`` raises
  ``OSError(ENOSPC)`` here instead of SIGBUS later;
* :meth:`SharedMemory.close` never raises ``BufferError`` while NumPy arrays or memoryviews of
  ``buf`` exist: the mapping lives until the last of them is gone (numpy/numpy#23305);
* a :class:`ShareableList` attached by name checks the block's layout, so a foreign or corrupt
  block raises ``ValueError`` instead of reading garbage;
* it needs no ``_posixshmem`` (some PyPy builds lack it).

Liveness: every ndshm process that maps a block holds a shared ``flock`` on it (as for ndshm's own
segments), so "does any ndshm process still map it?" has a true answer after ``kill -9``.
Processes using the standard library's class take no lock: a block only they still use is not
protected from ``gc`` once its ndshm creator is dead.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from . import _shared_memory
from ._shareable_list import ShareableList, ShareableListTypeError
from ._shared_memory import SharedMemory

__all__ = ["SharedMemory", "ShareableList", "ShareableListTypeError", "SHM_DIR"]

# The rooms: ndshm._compat_blocks (marks and reclaim), ._shared_memory (SharedMemory and the
# directory it reads), ._shareable_list (ShareableList on a SharedMemory block); this module only
# mirrors multiprocessing.shared_memory's names.

#: Where the standard library's blocks live, and so this drop-in's (POSIX shared memory on Linux);
#: tests point it elsewhere.
SHM_DIR = _shared_memory.SHM_DIR


class _PublicModule(types.ModuleType):
    """This module: setting its ``SHM_DIR`` (as tests and users do) also sets the one
    :class:`SharedMemory` reads, in its own room."""

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name == "SHM_DIR":
            _shared_memory.SHM_DIR = value


sys.modules[__name__].__class__ = _PublicModule

"""Where named segments live: the default directory (``$NDSHM_DIR`` or ``/dev/shm``), huge-page
mounts for ``hugepages=True``, and the real directory paths the mapping cache is keyed by."""

from __future__ import annotations

import os
import stat
from typing import Optional

__all__ = ["default_dir"]


def default_dir(dir: Optional[str] = None) -> str:
    """The directory holding named segments: ``dir``, else ``$NDSHM_DIR``, else ``/dev/shm``."""
    return dir or env_dir()


_ENV_DIRS: dict[bytes, str] = {}  # bounded: bench row "Attach latency: ndshm (mapping kept: the default)"


def env_dir() -> str:
    """``$NDSHM_DIR`` or ``/dev/shm``. ``os.environ.get`` of a missing key raises and catches a
    KeyError inside (about 2 us here); the bytes dict that ``os.environ`` keeps in step with
    the environment (CPython and PyPy alike) answers in 0.1 us."""
    data = getattr(os.environ, "_data", None)
    if data.__class__ is not dict:
        return os.environ.get("NDSHM_DIR") or "/dev/shm"
    raw = data.get(b"NDSHM_DIR")
    if not raw:
        return "/dev/shm"
    got = _ENV_DIRS.get(raw)
    if got is None:
        got = os.fsdecode(raw)
        if len(_ENV_DIRS) < 16:
            _ENV_DIRS[raw] = got
    return got


REALDIRS: dict[str, str] = {}  # dir -> its real path, bounded (bench row "Attach latency: ndshm (mapping kept: the default)": realpath ~30 us)


def mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, file system type, options) of every mount /proc/self/mounts lists."""
    out = []
    try:
        with open("/proc/self/mounts", "rb") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 4:
                    # mount points escape blanks and backslashes as octal: decode them
                    raw = parts[1]
                    for esc, ch in ((b"\\040", b" "), (b"\\011", b"\t"), (b"\\012", b"\n"), (b"\\134", b"\\")):
                        raw = raw.replace(esc, ch)
                    mnt = os.fsdecode(raw)
                    out.append((mnt, os.fsdecode(parts[2]), set(os.fsdecode(parts[3]).split(","))))
    except OSError:
        pass
    return out


def huge_kind(fstype: str, opts: set[str]) -> Optional[str]:
    if fstype == "hugetlbfs":
        return "hugetlbfs"
    if fstype == "tmpfs" and opts & {"huge=always", "huge=within_size"}:
        return "tmpfs"
    return None


def _nr_hugepages() -> int:
    try:
        with open("/proc/sys/vm/nr_hugepages") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def huge_dir(dir: Optional[str]) -> tuple[Optional[str], bool]:
    """Where a named ``hugepages=True`` segment goes, and whether C must use hugetlb pages there:
    (that directory, True) for a hugetlbfs, (it, False) for a huge-page tmpfs (ordinary files
    whose pages the kernel makes huge), (None, True) to let C refuse with its nr_hugepages
    message when there is no such mount."""
    table = mounts()
    explicit = dir or os.environ.get("NDSHM_DIR")
    if explicit:
        real = os.path.realpath(os.fspath(explicit))
        best = None
        for mnt, fstype, opts in table:  # the longest mount point containing the directory; later wins
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and (best is None or len(mnt) >= len(best[0])):
                best = (mnt, fstype, opts)
        kind = huge_kind(best[1], best[2]) if best else None
        return explicit, kind != "tmpfs"
    found: dict[str, str] = {}
    for mnt, fstype, opts in table:
        kind = huge_kind(fstype, opts)
        if kind and kind not in found and os.access(mnt, os.W_OK | os.X_OK):
            found[kind] = mnt
    if "hugetlbfs" in found and _nr_hugepages() > 0:
        return found["hugetlbfs"], True
    if "tmpfs" in found:
        return found["tmpfs"], False
    return None, True


def cache_key(dir: str, name: str) -> tuple[str, str]:
    """The mapping cache's key: the directory's real path (cached: realpath costs ~30 us), and the name."""
    real = REALDIRS.get(dir)
    if real is None:
        real = os.path.realpath(dir)
        if len(REALDIRS) < 256:
            REALDIRS[dir] = real
    return real, name


# How a reclaimer or lister opens a file it did not make: read-only, never following a link,
# never blocking (a planted FIFO), never inherited.
READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW


def sorted_entries(d: str) -> list[str]:
    """The names in directory ``d``, sorted ([] if it does not exist): what ls, gc and the compat
    listing walk."""
    try:
        return sorted(os.listdir(d))
    except FileNotFoundError:
        return []


def open_regular(path: str) -> Optional[int]:
    """A read-only descriptor of ``path`` if it is a regular file (not a symlink, FIFO, device,
    socket or directory), else None. Never blocks: /dev/shm is world-writable, so anyone may
    plant a FIFO there, and a plain open() of one waits for a writer for ever."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        fd = os.open(path, READ_FLAGS)
    except OSError:
        return None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):  # swapped between lstat and open
            return fd
    except OSError:
        pass
    os.close(fd)
    return None

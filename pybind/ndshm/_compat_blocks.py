"""Which ``/dev/shm`` blocks ndshm's compat layer made, and whether their creator lives.

A block :class:`~ndshm.compat.shared_memory.SharedMemory` creates is marked (a ``user.`` extended
attribute, or a per-user registry file where tmpfs has none) with its creator's process key;
:func:`ndshm_blocks` lists marked blocks with their liveness (``ndshm ls``, ``ndshm.list``) and
:func:`reclaim_dead` removes those whose creator died and that no ndshm process maps (``ndshm gc``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from typing import NamedTuple, Optional

from ._dirs import READ_FLAGS, sorted_entries
from ._errors import NdshmError, error_from_code
from ._lib import ffi, lib

__all__ = ["SHM_DIR", "CompatBlock", "ndshm_blocks", "reclaim_dead"]

SHM_DIR = "/dev/shm"
PREFIX = "psm_"
_NAME_MAX = 255


def bare_name(name: str, reported: str) -> str:
    """The file name glibc's ``shm_open`` would use for ``name`` (leading slashes dropped);
    ``OSError(EINVAL)`` naming ``reported`` where ``shm_open`` refuses it."""
    bare = name.lstrip("/")
    if not bare or "/" in bare:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), reported)
    if len(bare.encode("utf-8", "surrogateescape")) > _NAME_MAX:
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), reported)
    return bare


XATTR = "user.ndshm.compat"
USE_XATTR = True  # tmpfs has user xattrs from Linux 6.6; before that a per-user registry is used
_KEY_TAG = b"key"  # a mark "key <16 hex digits>": the creator's process key in the block's directory
_PID_MAX = 2**31 - 1  # a pid that does not fit a C int is no pid (and never reaches os.kill)


class _Mark(NamedTuple):
    """A decoded liveness mark: the creator's process key in the block's directory (the kernel
    vouches for it, in any PID namespace), or a legacy mark of older ndshm versions (pid and start
    time, meaningful only in the creator's own PID namespace)."""
    key: int    # 0 for a legacy mark
    pid: int    # legacy marks only (0 otherwise)
    start: int  # legacy marks only


def decode_mark(raw: bytes) -> Optional[_Mark]:
    """``raw`` (a mark's bytes) decoded, or None if it is not a mark ndshm wrote: the caller treats
    that one block as unknown. Never raises."""
    fields = raw.split()
    try:
        if len(fields) == 2 and fields[0] == _KEY_TAG and len(fields[1]) == 16:
            key = int(fields[1], 16)
            return _Mark(key, 0, 0) if key else None
        if len(fields) == 2 and all(f.isdigit() and len(f) <= 20 for f in fields):  # bytes: ASCII digits only
            pid, start = int(fields[0]), int(fields[1])
            return _Mark(0, pid, start) if 0 < pid <= _PID_MAX and start < 2 ** 63 else None
    except ValueError:
        pass
    return None


# What _read_mark gives for a block that carries ndshm's mark but one no ndshm wrote (key 0 and
# pid 0, which decode_mark never returns): listed as corrupt, never removed on a guess.
_UNREADABLE = _Mark(0, 0, 0)


def _own_key(d: str) -> int:
    """This process's key in directory ``d``'s process table (registered on first use)."""
    out = ffi.new("uint64_t *")
    rc = lib.ndshm_process_key(os.fsencode(d), out)
    if rc:
        raise error_from_code(rc, d)
    return int(out[0])


def _mark_alive(d: str, mark: _Mark) -> bool:
    """Whether the process that wrote ``mark`` on a block in ``d`` still runs (an error: yes, so
    nothing is removed on a guess)."""
    if not mark.key:
        return _legacy_alive(mark.pid, mark.start)
    return bool(lib.ndshm_key_alive(os.fsencode(d), mark.key) != 0)


def _mark_pid(d: str, mark: _Mark) -> int:
    """The creator's pid, where it names a process this one can see: 0 when the creator runs in
    another PID namespace (another container: its pid means nothing here) or its entry is gone."""
    if not mark.key:
        return mark.pid
    pid, same_ns = ffi.new("int64_t *"), ffi.new("int *")
    if lib.ndshm_key_pid(os.fsencode(d), mark.key, pid, same_ns) != 0 or not same_ns[0]:
        return 0
    return int(pid[0]) if 0 < pid[0] <= _PID_MAX else 0


def _start_time(pid: int) -> Optional[int]:
    """The start time of process ``pid`` (clock ticks since boot); -1 for a zombie (it is dead);
    None when /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        if fields[0] in (b"Z", b"X"):
            return -1
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _legacy_alive(pid: int, start: int) -> bool:
    """Whether the process of a legacy mark (``pid``, started at ``start``) still runs, as older
    versions judged it: the pid exists in this PID namespace, is no zombie, and (where /proc
    tells) started when the mark says, so a reused pid does not keep a block alive."""
    if not 0 < pid <= _PID_MAX:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    except OSError:
        return False
    now = _start_time(pid)
    if now is None:
        return True
    return now != -1 and (start == 0 or now == start)


def registry(d: str, uid: int, create: bool = False) -> Optional[str]:
    """User ``uid``'s registry of the blocks it made in ``d`` (the fallback where tmpfs has no user
    xattrs): ``d/.ndshm-compat-<uid>``, used only if it is a real directory that ``uid`` owns and
    nobody else may write (``d`` is world-writable: anyone could plant a look-alike)."""
    reg = os.path.join(d, f".ndshm-compat-{uid}")
    if create:
        try:
            os.mkdir(reg, 0o700)
        except FileExistsError:
            pass
    try:
        st = os.lstat(reg)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o022:
        return None
    return reg


def mark_block(fd: int, d: str, bare: str) -> None:
    """Record in block ``bare`` (open as ``fd``) that this process created it. Where neither an
    xattr nor a safe registry can be written, the block stays unmarked (``gc`` leaves it alone)."""
    global USE_XATTR
    try:
        value = f"{_KEY_TAG.decode()} {_own_key(d):016x}"
    except (OSError, NdshmError):  # no process table in d: unmarked, gc leaves it alone
        return
    if USE_XATTR:
        try:
            os.setxattr(fd, XATTR, value.encode())
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                raise
            USE_XATTR = False
    st = os.fstat(fd)
    reg = registry(d, st.st_uid, create=True)
    if reg is None:
        return
    entry = os.path.join(reg, bare)
    tmp = f"{entry}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{st.st_dev} {st.st_ino} {value}\n")
    os.replace(tmp, entry)


def _read_mark(path: str, d: str, bare: str, st: os.stat_result) -> Optional[_Mark]:
    """The creator's mark if ndshm made the block at ``path``, else None (see :func:`decode_mark`);
    :data:`_UNREADABLE` if it carries a mark that does not decode."""
    raw: Optional[bytes] = None
    try:
        raw = os.getxattr(path, XATTR, follow_symlinks=False)
    except OSError:
        pass
    if raw is None:
        reg = registry(d, st.st_uid)
        if reg is None:
            return None
        try:
            with open(os.path.join(reg, bare), "rb") as f:
                dev, ino, *rest = f.read().split()
            if (int(dev), int(ino)) != (st.st_dev, st.st_ino):
                return None  # a stale entry: that name now holds another file
            raw = b" ".join(rest)
        except (OSError, ValueError):
            return None
    mark = decode_mark(raw)
    return _UNREADABLE if mark is None else mark


def unmark_block(d: str, bare: str, uid: Optional[int] = None) -> None:
    """Drop block ``bare``'s registry entry, if it has one (its owner ``uid``, default this user)."""
    reg = registry(d, os.getuid() if uid is None else uid)
    if reg is not None:
        try:
            os.unlink(os.path.join(reg, bare))
        except OSError:
            pass


class CompatBlock(NamedTuple):
    """A block made through ``ndshm.compat`` as :func:`ndshm_blocks` sees it."""
    name: str
    path: str
    size: int
    in_use: bool              # an ndshm process maps it (holds its shared flock)
    creator_pid: int
    creator_alive: bool
    corrupt: bool = False     # its mark does not decode: shown as corrupt, never removed




def _locked_by_others(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def ndshm_blocks(dir: Optional[str] = None) -> list[CompatBlock]:
    """Every block in ``dir`` (default :data:`SHM_DIR`) that ``ndshm.compat`` created, sorted by name:
    (name, path, size, in_use, creator_pid, creator_alive). Blocks of other tools, ndshm's own
    ``ndshm.*`` segments and anything not a regular file are left out; never raises for one entry."""
    d = os.fspath(dir) if dir else SHM_DIR
    out = []
    for entry in sorted_entries(d):
        if entry.startswith((".", "ndshm.")):
            continue
        path = os.path.join(d, entry)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        mark = _read_mark(path, d, entry, st)
        if mark is None:
            continue
        try:
            fd = os.open(path, READ_FLAGS)
        except OSError:
            in_use = True  # cannot tell: say it is used, so nothing removes it
        else:
            try:
                in_use = _locked_by_others(fd)
            finally:
                os.close(fd)
        if mark is _UNREADABLE:
            out.append(CompatBlock(entry, path, int(st.st_size), in_use, 0, True, True))
            continue
        out.append(CompatBlock(entry, path, int(st.st_size), in_use, _mark_pid(d, mark), _mark_alive(d, mark)))
    return out


def reclaim_dead(dir: Optional[str] = None, *, dry_run: bool = False) -> list[str]:
    """Remove the ``ndshm.compat`` blocks in ``dir`` whose creator is dead and that no ndshm process
    maps; return their names. A block is unlinked while holding its exclusive flock, so no ndshm
    attacher can slip in; with ``dry_run`` nothing is removed."""
    d = os.fspath(dir) if dir else SHM_DIR
    removed = []
    for blk in ndshm_blocks(d):
        if blk.in_use or blk.creator_alive:
            continue
        try:
            fd = os.open(blk.path, READ_FLAGS)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # mapped meanwhile
            st, now = os.fstat(fd), os.lstat(blk.path)
            if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
                continue
            mark = _read_mark(blk.path, d, blk.name, st)
            if mark is None or mark is _UNREADABLE or _mark_alive(d, mark):
                continue
            if not dry_run:
                os.unlink(blk.path)
                unmark_block(d, blk.name, st.st_uid)
            removed.append(blk.name)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


def new_file(path: str, size: int, mode: int) -> int:
    """Create ``path`` exclusively with ``size`` bytes reserved (``posix_fallocate``, so a full
    tmpfs fails here with ``OSError(ENOSPC)`` instead of SIGBUS later); return its descriptor.
    Nothing is left behind if it fails."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            rc: Optional[int] = os.posix_fallocate(fd, 0, size)  # type: ignore[func-returns-value]
            if rc:  # PyPy returns the error number instead of raising it
                raise OSError(rc, os.strerror(rc), path)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise OSError(errno.ENOSPC, f"no space in {os.path.dirname(path)} for {size} bytes",
                              path) from None
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            os.ftruncate(fd, size)  # a file system without fallocate
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    return fd

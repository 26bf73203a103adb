"""``python -m ndshm ls | info NAME | rm NAME... | gc``: inspect and clean named segments.

Every command takes ``--dir DIR`` (default ``$NDSHM_DIR``, else ``/dev/shm``). ``gc`` removes
segments that no live process maps (nobody holds their flock) and that were not created with
``persist=True``; it skips anything younger than a few seconds (a creator may be mid-way) and
leaves foreign or corrupt files alone unless they are blank ndshm headers of a dead creator.
"""

from __future__ import annotations

import fcntl
import math
import os
import stat
import sys
import time
from typing import Optional, Sequence

from ._errors import NdshmError
from ._listing import SegmentRecord, list_segments, probe
from ._segment import default_dir, unlink

GRACE_SECONDS = 5.0
_MAGIC = b"NDSHMSEG"

USAGE = """usage: python -m ndshm [--dir DIR] COMMAND
  ls              list named segments
  info NAME       describe one segment
  rm NAME...      remove segments by name
  gc [--dry-run] [--min-age SECONDS]
                  remove segments no live process maps (persistent ones, and ones younger
                  than --min-age, default 5 s, are kept)"""


def human(n: Optional[int]) -> str:
    """Bytes as a short human-readable size (1023 B, 4.0 KiB, 1.5 GiB)."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _created(rec: SegmentRecord) -> str:
    return rec.created.astimezone().strftime("%Y-%m-%d %H:%M:%S") if rec.created else "-"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def cmd_ls(d: str, out) -> int:
    recs = list_segments(d)
    rows = [["NAME", "SIZE", "DTYPE", "SHAPE", "PID", "CREATED", "IN USE", "PERSIST", "STATUS"]]
    for r in recs:
        rows.append([r.name, human(r.size), str(r.dtype) if r.dtype is not None else "-",
                     str(r.shape) if r.shape is not None else "-", str(r.creator_pid or "-"), _created(r),
                     "yes" if r.in_use else "no", "yes" if r.persist else "no", r.status])
    print(_table(rows), file=out)
    print(f"{len(recs)} segment{'s' if len(recs) != 1 else ''} in {d}", file=out)
    return 0


def cmd_info(d: str, names: Sequence[str], out, err) -> int:
    if not names:
        print("info: give a segment NAME", file=err)
        return 2
    rc = 0
    for name in names:
        try:
            r = probe(name, dir=d)
        except (NdshmError, OSError, ValueError) as exc:
            print(f"info: {name}: {exc}", file=err)
            rc = 1
            continue
        for key, value in (("name", r.name), ("path", r.path), ("size", f"{human(r.size)} ({r.size} bytes)"),
                           ("dtype", r.dtype), ("shape", r.shape), ("creator pid", r.creator_pid),
                           ("created", _created(r)), ("in use", r.in_use), ("persist", r.persist),
                           ("status", r.status), ("meta", r.meta)):
            print(f"{key + ':':13} {value}", file=out)
    return rc


def cmd_rm(d: str, names: Sequence[str], err) -> int:
    if not names:
        print("rm: give at least one segment NAME", file=err)
        return 2
    rc = 0
    for name in names:
        try:
            unlink(name, dir=d)
        except (NdshmError, OSError, ValueError) as exc:
            print(f"rm: {name}: {exc}", file=err)
            rc = 1
    return rc


_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW


def _open_regular(path: str) -> Optional[int]:
    """A read-only descriptor of ``path`` if it is a regular file (not a symlink, FIFO, device,
    socket or directory), else None. Never blocks: /dev/shm is world-writable, so anyone may
    plant a FIFO there, and a plain open() of one waits for a writer for ever."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        return None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):  # swapped between lstat and open
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _blank_or_ours(path: str) -> bool:
    fd = _open_regular(path)
    if fd is None:
        return False
    try:
        head = os.pread(fd, 8, 0)
    except OSError:
        return False
    finally:
        os.close(fd)
    return head == _MAGIC or head.strip(b"\0") == b""


def _remove_if_unused(path: str) -> bool:
    """Unlink ``path`` while holding its exclusive flock, so no attacher can slip in."""
    fd = _open_regular(path)
    if fd is None:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # someone maps it
        st, now = os.fstat(fd), os.lstat(path)
        if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
            return False
        os.unlink(path)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _min_age(text: str) -> float:
    try:
        grace = float(text)
    except ValueError:
        raise ValueError(f"--min-age {text!r} is not a number of seconds") from None
    if not math.isfinite(grace) or grace < 0:
        raise ValueError(f"--min-age {text!r} must be a finite number of seconds >= 0")
    return grace


def cmd_gc(d: str, args: Sequence[str], out) -> int:
    dry = False
    grace = GRACE_SECONDS
    args = list(args)
    i = 0
    try:
        while i < len(args):
            a = args[i]
            if a in ("--dry-run", "-n"):
                dry = True
            elif a == "--min-age":
                if i + 1 >= len(args):
                    raise ValueError("--min-age needs a number of seconds")
                grace = _min_age(args[i + 1])
                i += 1
            elif a.startswith("--min-age="):
                grace = _min_age(a[len("--min-age="):])
            else:
                raise ValueError(f"unknown option {a!r}")
            i += 1
    except ValueError as exc:
        print(f"gc: {exc}", file=sys.stderr)
        return 2
    removed = 0
    now = time.time()
    for r in list_segments(d):
        if r.in_use or r.persist:
            continue
        try:
            st = os.lstat(r.path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue  # a symlink, FIFO, device or directory: never ours to open or remove
        if now - max(st.st_mtime, st.st_ctime) < grace:
            continue
        if r.status != "ready" and not _blank_or_ours(r.path):
            continue
        if dry:
            print(f"would remove {r.name} ({human(r.size)}, {r.status})", file=out)
            removed += 1
        elif _remove_if_unused(r.path):
            print(f"removed {r.name} ({human(r.size)}, {r.status})", file=out)
            removed += 1
    print(f"{'would remove' if dry else 'removed'} {removed} segment{'s' if removed != 1 else ''} from {d}", file=out)
    return 0


def main(argv: Sequence[str]) -> int:
    """Run one command; returns the exit status."""
    args = list(argv)
    out, err = sys.stdout, sys.stderr
    d: Optional[str] = None
    while "--dir" in args:
        i = args.index("--dir")
        if i + 1 >= len(args):
            print("--dir needs a DIR", file=err)
            return 2
        d = args[i + 1]
        del args[i:i + 2]
    d = default_dir(d)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, file=out if args else err)
        return 0 if args else 2
    cmd, rest = args[0], args[1:]
    if cmd not in ("ls", "list", "info", "rm", "gc"):
        print(f"unknown command {cmd!r}\n{USAGE}", file=err)
        return 2
    if not os.path.isdir(d):
        why = "not a directory" if os.path.lexists(d) else "no such directory"
        print(f"{cmd}: --dir {d!r}: {why}", file=err)
        return 2
    try:
        if cmd in ("ls", "list"):
            return cmd_ls(d, out)
        if cmd == "info":
            return cmd_info(d, rest, out, err)
        if cmd == "rm":
            return cmd_rm(d, rest, err)
        return cmd_gc(d, rest, out)
    except (NdshmError, OSError) as exc:  # e.g. the directory went, or may not be read
        print(f"{cmd}: {d}: {exc}", file=err)
        return 1

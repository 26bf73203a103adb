"""``python -m ndshm ls | info NAME | rm NAME... | gc``: inspect and clean named segments.

Every command takes ``--dir DIR`` (default ``$NDSHM_DIR``, else ``/dev/shm``). ``gc`` removes
segments that no live process maps (nobody holds their flock) and that were not created with
``persist=True``; it skips anything younger than a few seconds (a creator may be mid-way) and
leaves foreign or corrupt files alone unless they are blank ndshm headers of a dead creator.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from typing import Optional, Sequence

from ._errors import NdshmError
from ._segment import SegmentRecord, default_dir, list_segments, probe, unlink

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


def _blank_or_ours(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return head == _MAGIC or head.strip(b"\0") == b""


def _remove_if_unused(path: str) -> bool:
    """Unlink ``path`` while holding its exclusive flock, so no attacher can slip in."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # someone maps it
        st, now = os.fstat(fd), os.stat(path)
        if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
            return False
        os.unlink(path)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def cmd_gc(d: str, args: Sequence[str], out) -> int:
    dry = "--dry-run" in args or "-n" in args
    grace = GRACE_SECONDS
    if "--min-age" in args:
        i = list(args).index("--min-age")
        try:
            grace = float(args[i + 1])
        except (IndexError, ValueError):
            print("gc: --min-age needs a number of seconds", file=sys.stderr)
            return 2
    removed = 0
    now = time.time()
    for r in list_segments(d):
        if r.in_use or r.persist:
            continue
        try:
            st = os.stat(r.path)
        except OSError:
            continue
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
    if cmd in ("ls", "list"):
        return cmd_ls(d, out)
    if cmd == "info":
        return cmd_info(d, rest, out, err)
    if cmd == "rm":
        return cmd_rm(d, rest, err)
    if cmd == "gc":
        return cmd_gc(d, rest, out)
    print(f"unknown command {cmd!r}\n{USAGE}", file=err)
    return 2

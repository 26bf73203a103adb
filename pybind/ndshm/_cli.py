"""``python -m ndshm ls | info | rm | gc | bench``: inspect and clean named segments.

Every command takes ``--dir DIR`` (default ``$NDSHM_DIR``, else ``/dev/shm``), before or after
the command's name. ``gc`` removes segments that no live process maps (nobody holds their flock)
and that were not created with ``persist=True``; it skips anything younger than a few seconds (a
creator may be mid-way) and leaves foreign or corrupt files alone unless they carry an ndshm
header (or are blank) and nobody maps them. Exit status: 0 on success, 1 when a named segment
could not be found or handled, 2 for a usage error (one line on stderr naming the bad option).
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import json
import math
import os
import stat
import sys
import time
from typing import Any, NoReturn, Optional, Sequence, TextIO

from ._errors import NdshmError
from ._api import unlink
from ._dirs import default_dir, open_regular
from ._listing import SegmentRecord, list_segments, named_segments, probe
from ._ownership import GRACE_SECONDS, blank_or_ours, reclaimable, remove_if_unused
from ._compat_blocks import reclaim_dead

_VALUE_OPTIONS = ("--dir", "--min-age")  # options that take the next word whatever it looks like

_EPILOG = """\
DIR defaults to $NDSHM_DIR, else /dev/shm. `COMMAND --help` describes one command.
Exit status: 0 success, 1 a segment could not be found or handled, 2 a usage error."""


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


def _layout(rec: SegmentRecord) -> tuple[str, str]:
    """The DTYPE and SHAPE cells. Only an array's header layout describes its content (a queue's
    is its ring's bytes): other kinds show their slots when known, else nothing."""
    if rec.kind in ("array", None):
        return (str(rec.dtype) if rec.dtype is not None else "-"), (str(rec.shape) if rec.shape is not None else "-")
    if rec.kind == "pool":
        return "-", _pool_fill(rec)
    return "-", (f"{rec.slots} slots x {human(rec.slot_bytes)}" if rec.slots is not None else "-")


def _pool_fill(rec: SegmentRecord) -> str:
    """How full a pool is: "12.0 MiB of 256.0 MiB (4.7%), 3 blocks", or "-" when unreadable."""
    if rec.pool_capacity is None or rec.pool_used is None:
        return "-"
    pct = 100.0 * rec.pool_used / max(rec.pool_capacity, 1)
    return f"{human(rec.pool_used)} of {human(rec.pool_capacity)} ({pct:.1f}%), {rec.pool_blocks} blocks"


def as_json(rec: SegmentRecord) -> dict[str, Any]:
    """``rec`` as a JSON-ready dict: every field of the record (dtype as its NumPy name, created as
    ISO 8601). ``meta`` is the JSON value stored, or bytes in base64 (``meta_encoding`` says which)."""
    d = rec._asdict()
    d["dtype"] = str(rec.dtype) if rec.dtype is not None else None
    d["shape"] = list(rec.shape) if rec.shape is not None else None
    d["created"] = rec.created.isoformat() if rec.created is not None else None
    if isinstance(rec.meta, bytes):
        d["meta"], d["meta_encoding"] = base64.b64encode(rec.meta).decode("ascii"), "base64"
    else:
        d["meta_encoding"] = None if rec.meta is None else "json"
    return d


def _dump_json(recs: Sequence[SegmentRecord], out: TextIO) -> None:
    """One JSON array, one segment's object per line (``| python -m json.tool`` and ``| jq`` read it)."""
    if not recs:
        print("[]", file=out)
        return
    rows = [json.dumps(as_json(r)) for r in recs]
    print("[\n" + ",\n".join(rows) + "\n]", file=out)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _why(exc: BaseException) -> str:
    """An exception as the rest of one error line, naming its path once (an OSError's str()
    repeats the filename its message already names)."""
    if isinstance(exc, OSError) and exc.strerror:
        msg = str(exc.strerror)
        if exc.filename is not None and os.fsdecode(exc.filename) not in msg:
            msg = f"{os.fsdecode(exc.filename)}: {msg}"
        return msg
    return str(exc)


def _error(cmd: str, what: str, exc: BaseException, err: TextIO) -> None:
    msg = _why(exc)
    print(f"{cmd}: {msg}" if what in msg else f"{cmd}: {what}: {msg}", file=err)


def cmd_ls(d: str, patterns: Sequence[str], as_json_: bool, out: TextIO, err: TextIO) -> int:
    recs = list_segments(d)
    rc = 0
    if patterns:
        for p in patterns:
            if not any(fnmatch.fnmatchcase(r.name, p) for r in recs):
                print(f"ls: no segment matches {p!r} in {d}", file=err)
                rc = 1
        recs = [r for r in recs if any(fnmatch.fnmatchcase(r.name, p) for p in patterns)]
    if as_json_:
        _dump_json(recs, out)
        return rc
    rows = [["NAME", "KIND", "SIZE", "DTYPE", "SHAPE", "PID", "CREATED", "IN USE", "PERSIST", "STATUS"]]
    for r in recs:
        rows.append([r.name, r.kind or "-", human(r.size), *_layout(r), str(r.creator_pid or "-"), _created(r),
                     "yes" if r.in_use else "no", "yes" if r.persist else "no", r.status])
    print(_table(rows), file=out)
    print(f"{len(recs)} segment{'s' if len(recs) != 1 else ''} in {d}", file=out)
    return rc


def cmd_info(d: str, names: Sequence[str], as_json_: bool, out: TextIO, err: TextIO) -> int:
    rc = 0
    found: list[SegmentRecord] = []
    for name in names:
        try:
            found.append(probe(name, dir=d))
        except (NdshmError, OSError, ValueError) as exc:
            _error("info", name, exc, err)
            rc = 1
    if as_json_:
        _dump_json(found, out)
        return rc
    for i, r in enumerate(found):
        if i:
            print(file=out)
        dtype, shape = _layout(r)
        rows: list[tuple[str, object]] = [("name", r.name), ("path", r.path), ("kind", r.kind or "-"),
                                          ("size", f"{human(r.size)} ({r.size} bytes)")]
        if r.kind in ("array", None):
            rows += [("dtype", dtype), ("shape", shape)]
        elif r.slots is not None:
            rows += [("slots", r.slots), ("slot bytes", human(r.slot_bytes))]
        elif r.kind == "pool":
            rows += [("pool use", _pool_fill(r))]
        rows += [("creator pid", r.creator_pid), ("created", _created(r)), ("in use", r.in_use),
                 ("persist", r.persist), ("status", r.status), ("meta", repr(r.meta))]  # repr: no raw escapes
        for key, value in rows:
            print(f"{key + ':':13} {value}", file=out)
    return rc


def cmd_rm(d: str, names: Sequence[str], err: TextIO) -> int:
    rc = 0
    for name in names:
        try:
            unlink(name, dir=d)
        except (NdshmError, OSError, ValueError) as exc:
            _error("rm", name, exc, err)
            rc = 1
    return rc


def _blank_or_ours(path: str) -> bool:
    fd = open_regular(path)
    if fd is None:
        return False
    try:
        return blank_or_ours(fd)
    finally:
        os.close(fd)


def _min_age(text: str) -> float:
    try:
        grace = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(grace) or grace < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds >= 0")
    return grace


def _would_remove(path: str, age: float, grace: float) -> bool:
    fd = open_regular(path)
    if fd is None:
        return False
    try:
        return reclaimable(fd, age, grace)
    finally:
        os.close(fd)


def cmd_gc(d: str, dry: bool, grace: float, out: TextIO) -> int:
    """Remove what nobody maps and nobody owns, by the rule segment creation sweeps with
    (:func:`ndshm._ownership.reclaimable`: a live owner keeps its segment, an unclaimed hand-over
    waits for its receiver)."""
    removed = 0
    now = time.time()
    for r in named_segments(d):  # only ndshm.<name> files: nothing else is gc's to remove
        if r.in_use or r.persist:
            continue
        try:
            st = os.lstat(r.path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue  # a symlink, FIFO, device or directory: never ours to open or remove
        age = now - max(st.st_mtime, st.st_ctime)
        if age < grace:
            continue
        if r.status != "ready" and not _blank_or_ours(r.path):
            continue
        if dry:
            if _would_remove(r.path, age, grace):
                print(f"would remove {r.name} ({human(r.size)}, {r.status})", file=out)
                removed += 1
        elif remove_if_unused(r.path, grace, now):  # under the file's exclusive flock: no attacher slips in
            print(f"removed {r.name} ({human(r.size)}, {r.status})", file=out)
            removed += 1
    for r in named_segments(d):  # pools in use: their dead processes' pins and blocks go back
        if r.kind == "pool" and r.in_use and r.status == "ready" and not dry:
            from .pool import reclaim_pool
            n = reclaim_pool(r.name, d)
            if n:
                print(f"pool {r.name}: released the blocks and pins of {n} dead process{'es' if n != 1 else ''}",
                      file=out)
    for name in reclaim_dead(d, dry_run=dry):  # compat blocks: their creator is dead and no ndshm process maps them
        print(f"{'would remove' if dry else 'removed'} compat block {name}", file=out)
        removed += 1
    print(f"{'would remove' if dry else 'removed'} {removed} segment{'s' if removed != 1 else ''} from {d}", file=out)
    return 0


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (try --help)\n")


def prog_name() -> str:
    """How the user started us: ``python -m ndshm`` or the ``ndshm`` console script."""
    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python -m ndshm" if argv0 in ("", "-c", "-m", "__main__.py") else argv0


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The command line's parser: ``[--dir DIR] {ls,info,rm,gc,bench,help} ...``."""
    from . import __version__

    def add_dir(p: argparse.ArgumentParser, default: Any) -> None:
        p.add_argument("--dir", metavar="DIR", default=default,
                       help="directory of the segments (default: $NDSHM_DIR, else /dev/shm)")

    top = _Parser(prog=prog, description="Inspect and clean ndshm's named shared-memory segments.",
                  epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    add_dir(top, None)
    top.add_argument("--version", action="version", version=f"ndshm {__version__}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help: str, listed: bool = True) -> argparse.ArgumentParser:
        kw: dict[str, Any] = {"help": help} if listed else {}  # a subparser without help= is left out of the list
        p = sub.add_parser(name, description=help[:1].upper() + help[1:] + ".", allow_abbrev=False, **kw)
        add_dir(p, argparse.SUPPRESS)  # after the command too; the top level's otherwise
        return p

    for name in ("ls", "list"):  # 'list' is an alias (argparse's aliases= would wrap the help's layout)
        p = command(name, "list named segments (all, or those matching NAME or a glob)", listed=name == "ls")
        p.add_argument("--json", action="store_true",
                       help="a JSON array, one object per segment with every field of ndshm.list()")
        p.add_argument("patterns", nargs="*", metavar="NAME", help="a segment name or a glob such as 'job-*'")
    p = command("info", "describe segments")
    p.add_argument("--json", action="store_true", help="as ls --json")
    p.add_argument("names", nargs="+", metavar="NAME")
    p = command("rm", "remove segments by name")
    p.add_argument("names", nargs="+", metavar="NAME")
    p = command("gc", "remove segments no live process maps (persistent and young ones are kept)")
    p.add_argument("-n", "--dry-run", action="store_true", help="say what would be removed; remove nothing")
    p.add_argument("--min-age", metavar="SECONDS", type=_min_age, default=GRACE_SECONDS,
                   help=f"keep segments changed less than this long ago (default {GRACE_SECONDS:g})")
    p = sub.add_parser("bench", add_help=False, prefix_chars="\0",
                       help=f"run the benchmarks in the source tree's bench/ ({prog} bench --help)")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p = sub.add_parser("help", help="this help, or COMMAND's", allow_abbrev=False)
    p.add_argument("topic", nargs="?", metavar="COMMAND")
    return top


def _getopt_values(args: Sequence[str]) -> list[str]:
    """``--dir X`` as ``--dir=X``: an option that takes a value takes the next word as getopt
    does, even one that starts with '-' (argparse would call ``--min-age -inf`` a missing value)."""
    out: list[str] = []
    it = iter(args)
    for a in it:
        if a == "--":
            out.append(a)
            out.extend(it)
            break
        if a in _VALUE_OPTIONS:
            value = next(it, None)
            out.append(a if value is None else f"{a}={value}")
        else:
            out.append(a)
    return out


def main(argv: Sequence[str], prog: Optional[str] = None) -> int:
    """Run one command; returns the exit status."""
    out, err = sys.stdout, sys.stderr
    prog = prog or prog_name()
    parser = build_parser(prog)
    try:
        ns, extra = parser.parse_known_args(_getopt_values(list(argv)))
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    cmd = ns.command
    if extra and cmd != "bench":
        what = "unknown option" if extra[0].startswith("-") else "unexpected argument"
        print(f"{prog}{' ' + cmd if cmd else ''}: {what} {extra[0]!r} (try --help)", file=err)
        return 2
    if cmd is None:
        parser.print_help(err)
        return 2
    if cmd == "help":
        if ns.topic is None:
            parser.print_help(out)
            return 0
        return main([ns.topic, "--help"], prog)
    if cmd == "bench":
        from ._benchcli import main as bench_main

        return bench_main(ns.args, prog=f"{prog} bench")
    cmd = "ls" if cmd == "list" else cmd
    d = default_dir(ns.dir)
    if not os.path.isdir(d):
        why = "not a directory" if os.path.lexists(d) else "no such directory"
        print(f"{cmd}: --dir {d!r}: {why}", file=err)
        return 2
    try:
        if cmd == "ls":
            return cmd_ls(d, ns.patterns, ns.json, out, err)
        if cmd == "info":
            return cmd_info(d, ns.names, ns.json, out, err)
        if cmd == "rm":
            return cmd_rm(d, ns.names, err)
        return cmd_gc(d, ns.dry_run, ns.min_age, out)
    except BrokenPipeError:
        raise  # the reader went away: the entry point ends quietly
    except (NdshmError, OSError) as exc:  # e.g. the directory went, or may not be read
        _error(cmd, d, exc, err)
        return 1

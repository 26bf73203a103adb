"""Who removes a segment's name, and when.

A named segment is created with one of three owners (``create(..., owner=...)``):

- ``"creator"`` (the default): the name lives until the creator closes or unlinks the segment,
  leaves its ``with`` block, or exits; not when its last view dies, so a bare ``create(...)``
  statement works. This process keeps a record of the name (path, device, inode), not the
  segment: its mapping goes with its last view, or stays in the bounded mapping cache.
- ``"views"``: the name goes when the creator's last view of it dies (temporaries).
- ``"receiver"``: the creator hands the segment over to whoever receives its reference. Once a
  reference to it was pickled, the creator no longer removes the name (not at close, not at exit);
  the first process that unpickles it becomes its owner, and the name goes when *that* process's
  last view dies or it exits. Ownership is the robust lock in sync slot 3 of the header (the
  owner's pid and start time, taken atomically); a hand-over nobody claimed is recognised by a
  marker word in the same slot, so the name survives its creator's exit until someone claims it.
  A creator holds the same lock while it owns the name: a live owner is visible in the file itself,
  even when no process maps the segment.

``persist=True`` segments have no owner: only ``unlink`` (or ``ndshm rm``) removes them.

Dead owners' segments are reclaimed by :func:`sweep`: at most every ``SWEEP_SECONDS`` per
directory, creating a segment removes the segments there that nobody maps (no one holds their
flock: a mapping a process only keeps in its mapping cache, which no view uses, holds none; see
:mod:`ndshm._mappings`), that are not persistent and older than ``GRACE_SECONDS``; an unclaimed hand-over only
after ``HANDOVER_SECONDS`` (its receiver may not have unpickled it yet). ``ndshm gc`` applies the
same rule (:func:`reclaimable`). :func:`cleanup_on_signals` makes SIGTERM, SIGHUP and SIGINT
remove this process's names before it dies.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import signal
import stat
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Iterable, Optional, cast

if TYPE_CHECKING:
    from ._segment import Segment

from . import _mappings
from ._dirs import open_regular
from ._errors import error_from_code
from ._lib import ffi, lib

__all__ = ["cleanup_on_signals", "sweep", "reclaimable", "OwnerState"]

OWNERS = ("creator", "views", "receiver")
GRACE_SECONDS = 5.0
HANDOVER_SECONDS = 600.0
SWEEP_SECONDS = 10.0
OWNER_SLOT = lib.NDSHM_SYNC_OWNER  # the header's sync slot holding the ownership lock and the hand-over marker

_lock = threading.RLock()
# path -> (dev, ino, pid) of each name this process owns as creator: a record, not the segment (no
# descriptor or mapping is held for it; the mapping cache may keep the mapping, within its limits)
_owned: dict[str, tuple[int, int, int]] = {}
# owner="views": the Segment objects (and their states), removed at exit if still alive
_temporaries: "weakref.WeakKeyDictionary[Any, OwnerState]" = weakref.WeakKeyDictionary()
_received: "dict[int, tuple[str, int, int]]" = {}  # id(segment) -> (path, dev, ino) owned as receiver
_last_sweep: dict[str, float] = {}


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.RLock()
    _owned.clear()  # a forked child owns nothing its parent made
    _temporaries.clear()
    _received.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def check_owner(owner: Any, persist: bool) -> str:
    if owner not in OWNERS:
        raise ValueError(f"owner {owner!r} is not one of {', '.join(map(repr, OWNERS))}")
    if persist and owner != "creator":
        raise ValueError(f"owner={owner!r} does not apply to persist=True segments, which no process owns")
    return cast(str, owner)  # one of OWNERS


# ---- the owner state of a Segment: this module alone reads and changes it -------------------------
# Each function takes the Segment (``seg``: only its public properties are read, and it is a key
# of the tables below), its OwnerState, and the segment's C handle where C is asked.

class OwnerState:
    """One Segment object's part in removing its name; the Segment keeps it (``Segment.owner``
    reads ``owner``), this module alone changes it. ``owner``: None (not this process's to remove)
    or one of "creator", "views", "receiver", "handed", "received" (see ``Segment.owner``);
    ``pid``: the creating process (0 when not the creator; a forked child's copy is not its own);
    ``dev``, ``ino``: the identity of the segment's file (a name is removed only while it leads there)."""

    __slots__ = ("owner", "pid", "dev", "ino")

    def __init__(self, pid: int, dev: int, ino: int, owner: Optional[str] = None) -> None:
        self.owner = owner
        self.pid = pid
        self.dev = dev
        self.ino = ino


def start(seg: Any, st: OwnerState, handle: Any, owner: str) -> None:
    """A creator's new non-persistent named or file segment: ``owner`` (one of OWNERS) removes its name."""
    st.owner = owner
    if owner == "receiver":
        mark_handover(handle, seg.path)
    own(seg, st, handle)


def end(seg: Any, st: OwnerState) -> None:
    """``seg`` was closed or its name removed: this process owns it no more."""
    if st.owner == "received":
        release_received(seg, st)
    else:
        disown(seg, st)
    st.owner = None


def removes_at_close(seg: Any, st: OwnerState) -> bool:
    """True if closing ``seg`` must remove its name: this process created it (not persistent, not
    handed over) or owns that very file (the creator's object may be gone)."""
    return ((seg.creator and not seg.persist and st.owner != "handed" and st.pid == os.getpid())
            or owns(seg.path, st))


def hand_over_once(seg: Any, st: OwnerState, handle: Any) -> bool:
    """A reference to ``seg`` is leaving this process: True if it carries the hand-over (created
    with owner="receiver"); the first such reference ends this process's ownership."""
    owner = st.owner
    if owner == "receiver":
        hand_over(seg, st, handle)
        return True
    return owner == "handed"


def give_up(seg: Any, st: OwnerState, handle: Any) -> None:
    """Make ``seg`` (just created, or just claimed from a hand-over) owned by no process: its owner
    lock is released, no exit or close removes its name (ndshm.dask's node-owned arrays: their
    holders decide; the sweep reclaims them once every holder died)."""
    was = st.owner
    disown(seg, st)
    with _lock:
        _received.pop(id(seg), None)
    if was in ("creator", "received") and not seg.readonly:
        lib.ndshm_lock_release(_owner_area(handle, seg.path))
    st.owner = None


# ---- the creator's side --------------------------------------------------------------------------

def own(seg: Any, st: OwnerState, handle: Any) -> None:
    """Keep ``seg`` (a creator's non-persistent segment) until it is closed, handed over or the
    process exits (``owner="views"``: only until its last view dies), and make sure exits and
    :func:`cleanup_on_signals` remove its name."""
    with _lock:
        if st.owner == "views":
            _temporaries[seg] = st
        else:
            _owned[seg.path] = (st.dev, st.ino, os.getpid())
    if st.owner != "views":
        # Say so in the header too: the owner lock (pid and start time) tells a sweep or gc in any
        # process that a live process owns this name even when nobody maps it.
        rc = lib.ndshm_lock_acquire(_owner_area(handle, seg.path), 0.0)
        if rc != 0 and rc != _EOWNERDEAD:
            raise error_from_code(rc, seg.path)
    _ensure_exit_hook()


_EOWNERDEAD = lib.NDSHM_EOWNERDEAD


def _owner_area(handle: Any, path: Optional[str]) -> Any:
    """The ``void *`` of the owner slot of segment ``handle`` (one C call; the mapping must be writable)."""
    out = ffi.new("void **")
    rc = lib.ndshm_segment_sync(handle, OWNER_SLOT, out)
    if rc:
        raise error_from_code(rc, path)
    return out[0]


def owned_names() -> int:
    """How many segment names this process will remove (as creator, receiver, or with its views)."""
    with _lock:
        return len(_owned) + len(_temporaries) + len(_received)


def owns(path: Optional[str], st: OwnerState) -> bool:
    """True if this process owns name ``path`` of the very file ``st`` names (as its creator)."""
    rec = _owned.get(path) if path else None
    return rec is not None and rec[0] == st.dev and rec[1] == st.ino and rec[2] == os.getpid()


_DROP_CHECK = 256


def drop_removed() -> bool:
    """Forget the records of owned names someone else removed (``ndshm.unlink``, ``ndshm rm``,
    another process); checked when there are many, so the table stays small. Nothing to watch:
    a record holds no memory."""
    if len(_owned) < _DROP_CHECK:
        return False
    with _lock:
        for path, (dev, ino, _) in list(_owned.items()):
            try:
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) == (dev, ino):
                    continue
            except OSError:
                pass
            del _owned[path]
    return False


_mappings.checks.append(drop_removed)


def disown(seg: Any, st: OwnerState) -> None:
    with _lock:
        path = seg.path
        if owns(path, st):
            del _owned[path]
        _temporaries.pop(seg, None)


def mark_handover(handle: Any, path: Optional[str]) -> None:
    """Write the hand-over marker into a new receiver-owned segment (before anyone can claim it)."""
    rc = lib.ndshm_segment_mark_handover(handle)
    if rc:
        raise error_from_code(rc, path)


def hand_over(seg: Any, st: OwnerState, handle: Any) -> None:
    """A reference to ``seg`` is leaving this process: from now on its creator does not remove
    the name (the first receiver will). Its handle was created with KEEP_NAME, so even its last
    view dying here leaves the name alone. (The caller tells the mapping cache: _mappings.note_owner.)"""
    disown(seg, st)
    st.owner = "handed"
    # Unowned from now on (the marker says: handed over, waiting for a receiver) until one claims it.
    lib.ndshm_lock_release(_owner_area(handle, seg.path))


# ---- the receiver's side -------------------------------------------------------------------------

def claim(seg: "Segment", st: OwnerState, handle: Any) -> bool:
    """Become the owner of a handed-over segment just attached, if nobody (alive) is: the name then
    goes when this process's last view of it dies, or when it exits. False if another process
    owns it already, or the mapping is read-only (it cannot take the lock). A segment this process
    owns otherwise (its creator's, not handed over) is left as it is."""
    owner = st.owner
    if owner not in (None, "handed", "received"):  # "handed": back in its creator
        return False
    if seg.readonly or owner == "received":
        return owner == "received"
    path = seg.path
    if path is None:  # not a named segment: there is no name to take over
        return False
    if lib.ndshm_segment_handover_marked(handle) != 1:
        return False  # not a hand-over segment (the name was reused since the pickling)
    rc = lib.ndshm_lock_acquire(ffi.cast("void *", seg.sync_address(OWNER_SLOT)), 0.0)
    if rc not in (0, lib.NDSHM_EOWNERDEAD):
        return False
    st.owner = "received"
    with _lock:
        _received[id(seg)] = (path, st.dev, st.ino)
    weakref.finalize(seg, _drop_received, id(seg), path, st.dev, st.ino).atexit = False
    _ensure_exit_hook()
    return True


def release_received(seg: Any, st: OwnerState) -> None:
    """The receiver closed or unlinked ``seg``: its name goes now (if it still names that file)."""
    _drop_received(id(seg), seg.path, st.dev, st.ino)


def _drop_received(key: int, path: str, dev: int, ino: int) -> None:
    with _lock:
        if _received.pop(key, None) is None:
            return
    _unlink_same(path, dev, ino)


def _unlink_same(path: str, dev: int, ino: int) -> None:
    """Remove ``path`` if it still names the file (dev, ino): never a segment made since under that name."""
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == (dev, ino):
            os.unlink(path)
    except OSError:
        pass


# ---- exits and signals ---------------------------------------------------------------------------

def release_all() -> None:
    """Remove the names this process owns (creator- and receiver-owned): at exit and on a signal."""
    pid = os.getpid()
    with _lock:
        names = [(path, dev, ino) for path, (dev, ino, p) in _owned.items() if p == pid]
        _owned.clear()
        temporaries = [s for s, st in list(_temporaries.items()) if st.pid == pid]
        names += [(path, dev, ino) for path, dev, ino in _received.values()]
        _received.clear()
    for seg in temporaries:
        try:
            seg.close()
        except Exception:
            pass
    for path, dev, ino in names:
        _unlink_same(path, dev, ino)


_exit_hook_pid = 0


def _ensure_exit_hook() -> None:
    """multiprocessing's children end with os._exit (no atexit) after running its finalizers:
    register one there too, once per process (a forked child ignores its parent's)."""
    global _exit_hook_pid
    pid = os.getpid()
    if _exit_hook_pid == pid:
        return
    _exit_hook_pid = pid
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        try:
            mp_util.Finalize(None, release_all, exitpriority=100)
        except Exception:  # pragma: no cover - defensive
            pass


atexit.register(release_all)

_SIGNALS = ("SIGTERM", "SIGHUP", "SIGINT")
_installed: dict[int, Any] = {}


def cleanup_on_signals(signals: Iterable[str] = _SIGNALS) -> None:
    """Remove this process's segment names (those it owns) when SIGTERM, SIGHUP or SIGINT arrives,
    then let the signal do what it did before: the previous Python handler runs (SIGINT raises
    KeyboardInterrupt as usual), and a signal whose action was the default kills the process as
    before. The names go before that, so a program that catches the KeyboardInterrupt and goes on
    keeps its mappings but no longer its names. Useful where exit handlers do not run: SIGTERM
    (``docker stop``, systemd) on CPython, Ctrl-C on PyPy. Call it from the main thread (as
    :func:`signal.signal` requires); calling it again changes nothing."""
    for sig_name in signals:
        signum = getattr(signal, sig_name, None)
        if not isinstance(signum, int) and not isinstance(signum, signal.Signals):
            raise ValueError(f"{sig_name!r} is not a signal name such as 'SIGTERM'")
        signum = int(signum)
        if signum in _installed:
            continue
        previous = signal.getsignal(signum)
        _installed[signum] = previous
        signal.signal(signum, _on_signal)


def _on_signal(signum: int, frame: Any) -> None:
    release_all()
    previous = _installed.get(signum)
    if callable(previous):
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    signal.signal(signum, signal.SIG_DFL)  # the default action: die by this very signal
    os.kill(os.getpid(), signum)


# ---- reclaiming dead owners' segments ------------------------------------------------------------

def probe(fd: int) -> Any:
    """What C reads at the start of open file ``fd`` without mapping it (an ``ndshm_fd_probe_t``:
    ``magic`` one of the ``NDSHM_PROBE_*``, ``flags``, ``owner_state``, ``handover``), or None if
    it cannot be read."""
    out = ffi.new("ndshm_fd_probe_t *")
    return out if lib.ndshm_segment_probe_fd(fd, out) == 0 else None


def blank_or_ours(fd: int) -> bool:
    """True if open file ``fd`` starts with the segment magic, or is blank where it goes (a creator
    that died before writing its header)."""
    found = probe(fd)
    return found is not None and found.magic in (lib.NDSHM_PROBE_OURS, lib.NDSHM_PROBE_BLANK)


def reclaimable(fd: int, age: float, grace: float = GRACE_SECONDS) -> bool:
    """The rule ``gc`` and :func:`sweep` share, for a regular file ``fd`` (open, not locked) of a
    non-persistent segment ``age`` seconds old that no process maps: True if it may go. A segment
    handed over and not yet claimed waits HANDOVER_SECONDS; one whose owner is alive stays."""
    if age < grace:
        return False
    found = probe(fd)
    if found is None:
        return False
    return _reclaimable(found, age)


def _reclaimable(found: Any, age: float) -> bool:
    state = found.owner_state
    if state < 0:
        return True  # too short to be owned by anyone
    if state in (1, 2):  # owned by this or another live process
        return False
    if found.handover and state == 0 and age < HANDOVER_SECONDS:
        return False  # handed over, not yet claimed: its receiver may still be on the way
    return True


def remove_if_unused(path: str, grace: float = GRACE_SECONDS, now: Optional[float] = None) -> bool:
    """Unlink segment file ``path`` if :func:`reclaimable` says so, holding its exclusive flock
    while checking and removing (no attacher can slip in). Never follows links or opens FIFOs."""
    fd = open_regular(path)
    if fd is None:
        return False
    try:
        st = os.fstat(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # someone maps it
        age = (time.time() if now is None else now) - max(st.st_mtime, st.st_ctime)
        # the owner lock holds a process id: open the directory's process tables to test it
        lib.ndshm_key_alive(os.fsencode(os.path.dirname(path) or "."), 0)
        found = probe(fd)
        if found is None or found.magic == lib.NDSHM_PROBE_FOREIGN:
            return False  # not ours
        if not found.flags & lib.NDSHM_SEG_PERSIST and age >= grace and _reclaimable(found, age):
            cur = os.lstat(path)
            if (cur.st_dev, cur.st_ino) == (st.st_dev, st.st_ino):
                os.unlink(path)
                return True
        return False
    except OSError:
        return False
    finally:
        os.close(fd)


def sweep(dir: str, force: bool = False) -> int:
    """Remove dead owners' segments in ``dir`` (at most every SWEEP_SECONDS unless ``force``);
    returns how many went. Cheap: names and ages come from one directory scan, and only files
    older than the grace are opened."""
    now = time.time()
    if not force:
        last = _last_sweep.get(dir)
        mono = time.monotonic()
        if last is not None and mono - last < SWEEP_SECONDS:
            return 0
        if len(_last_sweep) > 256:
            _last_sweep.clear()
        _last_sweep[dir] = mono
    removed = 0
    try:
        entries = os.scandir(dir)
    except OSError:
        return 0
    with entries:
        for entry in entries:
            if not entry.name.startswith("ndshm."):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or now - max(st.st_mtime, st.st_ctime) < GRACE_SECONDS:
                continue
            removed += remove_if_unused(entry.path, GRACE_SECONDS, now)
    return removed

"""The per-process mapping cache: one mapping per named segment, kept after its last view dies.

Mapping a segment is cheap; touching its pages through a *new* mapping is not (every 4 KiB page
faults again, about 20 us each, even though the memory exists already). So a process keeps the
segments it attached mapped, in a bounded least-recently-used list (by count and by bytes, see
:func:`set_mapping_cache`), and the next attach of the same segment (the next Pool or engine task)
reuses the mapping and its page tables.

Two tables, both keyed by (real directory, name):

- ``live``: a weak reference to every mapped :class:`~ndshm.Segment` (creator's or attacher's),
  so that all views of one segment in a process share one mapping;
- ``kept``: an :class:`_Entry` per recently attached segment: its C handle and what the Segment
  gave to rebuild itself (a snapshot this module never looks into), which keep it mapped after its
  last view (and with it the Segment object) died.

Each Segment object keeps a :class:`MapState` (its key here, its handle, its recency flag): this
module alone reads and changes it, and it knows a Segment otherwise by its public properties.

A kept mapping no Segment object uses (every view of it died, and nothing else holds the Segment)
is **idle**: it lets go of the segment's shared ``flock``, which tells ``gc`` and ``create``'s
sweep that someone maps the file. So a cached mapping never keeps a dead owner's segment from
being reclaimed. When an attach finds an idle mapping of its name, it takes the shared flock
again (without waiting: a reclaimer holds it exclusively only while it removes the name), checks
that the name still leads to that very file (device and inode: a reclaimed or replaced segment
fails this), and only then hands it out in a new Segment object; otherwise the entry is dropped and
the segment mapped afresh (or not found). A live mapping's name is also checked on every reuse,
in ``Segment.attach``. Mappings whose file was removed are dropped promptly (checked at most
every ``CHECK_SECONDS`` on attach and create, and by a daemon thread while anything is kept),
so the cache never keeps a removed segment's memory alive for long.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    from ._segment import Segment

__all__ = ["set_mapping_cache", "mapping_cache_info", "MapState"]

_LIMIT_COUNT_ENV, _LIMIT_BYTES_ENV = "NDSHM_MAPPING_CACHE_COUNT", "NDSHM_MAPPING_CACHE_BYTES"
CHECK_SECONDS = 1.0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw, 0)
    except ValueError:
        raise ValueError(f"${name}={raw!r} is not an int") from None
    if value < 0:
        raise ValueError(f"${name}={raw!r} is negative")
    return value


_max_count = _env_int(_LIMIT_COUNT_ENV, 64)
_max_bytes = _env_int(_LIMIT_BYTES_ENV, 8 << 30)

class MapState:
    """What the mapping cache knows of one Segment object; the Segment keeps it, this module alone
    reads and changes it. ``key``: its (real dir, name) here once remembered, else None;
    ``handle``: its C handle (one per mapping: Segment objects handed the same kept mapping share
    it); ``dev``, ``ino``: its file's identity; ``hot``: reused since the cache last looked (see
    :func:`_evict`; ``Segment.attach`` sets it on a reuse, the hot path)."""

    __slots__ = ("key", "handle", "dev", "ino", "hot")

    def __init__(self, handle: Any, dev: int, ino: int) -> None:
        self.key: Optional[tuple[str, str]] = None
        self.handle = handle
        self.dev = dev
        self.ino = ino
        self.hot = False


class _Entry:
    """A kept mapping: its C handle (which keeps it mapped), the snapshot its Segment gave to be
    rebuilt from and the owner state to rebuild it with (see :func:`note_owner`), and a weak
    reference to the Segment object now using it (None, or dead: idle, its flock released) with
    that object's MapState."""

    __slots__ = ("key", "handle", "snapshot", "owner", "readonly", "dev", "ino", "fd", "size", "ref", "ms", "hot",
                 "pid", "__weakref__")

    def __init__(self, key: tuple[str, str], seg: "Segment", ms: MapState, snapshot: Any,
                 owner: Optional[str]) -> None:
        self.key = key
        self.pid = _pid  # a forked child shares the descriptor (and its flock): it leaves it alone
        self.handle = ms.handle
        self.snapshot = snapshot
        self.owner = owner
        self.readonly: bool = seg.readonly
        self.dev, self.ino = ms.dev, ms.ino
        self.fd: int = seg.fd
        self.size: int = seg.nbytes
        self.ref: "Optional[weakref.ref[Segment]]" = None
        self.ms = ms
        self.hot = False

    def use(self, seg: "Segment", ms: MapState) -> None:
        """``seg`` (whose MapState is ``ms``) uses this mapping (caller holds ``lock``): when it
        dies, the mapping is idle."""
        self.ref = weakref.ref(seg, self._unused)
        self.ms = ms

    def idle(self) -> bool:
        ref = self.ref
        return ref is None or ref() is None

    def _unused(self, ref: "weakref.ref[Segment]") -> None:
        """The Segment object using this kept mapping died: the mapping is idle and releases the
        segment's shared flock (it no longer says "mapped" to a reclaimer)."""
        if self.pid != _pid:
            return  # a parent's, inherited through fork: its flock is the parent's too
        with lock:
            if self.ref is ref and kept.get(self.key) is self:
                self.ref = None
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_UN)
                except OSError:
                    pass



lock = threading.RLock()
live: "dict[tuple[str, str], weakref.ref[Segment]]" = {}
kept: "OrderedDict[tuple[str, str], _Entry]" = OrderedDict()
_kept_bytes = 0
_fresh = 0  # attaches that had to map a segment afresh (no live or kept mapping served them)
_last_check = 0.0
_watcher_pid = 0
_pid = os.getpid()
# More checks run with drop_removed (the ownership registry's: see _ownership.drop_removed); each
# returns True while it still has something to watch.
checks: list[Callable[[], bool]] = []


def _after_fork_in_child() -> None:
    global lock, _watcher_pid, _pid, _fresh
    lock = threading.RLock()  # another thread may have held it at the fork
    _watcher_pid = 0  # the watcher thread did not survive the fork
    _fresh = 0
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def set_mapping_cache(max_bytes: Optional[int] = None, max_count: Optional[int] = None) -> dict[str, int]:
    """Bound the mappings this process keeps after their last view died: at most ``max_count``
    segments and ``max_bytes`` bytes (``0`` keeps none; ``None`` leaves a limit as it is). Defaults:
    64 segments, 8 GiB, or ``$NDSHM_MAPPING_CACHE_COUNT`` / ``$NDSHM_MAPPING_CACHE_BYTES``. A kept
    mapping costs address space and page tables, not memory: the memory belongs to the segment's
    name, and mappings of removed segments are dropped. Returns the limits now in force."""
    from ._dtype import as_int
    global _max_bytes, _max_count
    with lock:
        if max_bytes is not None:
            _max_bytes = as_int(max_bytes, "max_bytes", 0, 1 << 62)
        if max_count is not None:
            _max_count = as_int(max_count, "max_count", 0, 1 << 20)
        _evict()
    return {"max_bytes": _max_bytes, "max_count": _max_count}


def mapping_cache_info() -> dict[str, int]:
    """What the cache holds: ``cached_mappings`` (segments kept mapped), ``cached_mapping_bytes``,
    ``fresh_attach_mappings`` (attaches since start that had to map afresh), and the limits."""
    with lock:
        return {"cached_mappings": len(kept), "cached_mapping_bytes": _kept_bytes, "fresh_attach_mappings": _fresh,
                "mapping_cache_max_count": _max_count, "mapping_cache_max_bytes": _max_bytes}


def remember(key: tuple[str, str], seg: "Segment", ms: MapState) -> None:
    """Make ``seg`` (whose MapState is ``ms``) the mapping of ``key`` for later attaches (caller
    holds ``lock``)."""
    ms.key = key
    live[key] = weakref.ref(seg)


def keep(key: tuple[str, str], seg: "Segment", ms: MapState, snapshot: Callable[[], Any], owner: Optional[str],
         fresh: bool = True) -> None:
    """Keep ``seg`` (whose MapState is ``ms``) mapped after its last view dies (a new attach's
    mapping, or a creator's; caller holds ``lock``): ``snapshot()`` gives what :func:`revive`
    hands back to rebuild a Segment object, ``owner`` its owner state then. ``fresh``: count it
    as an attach that had to map afresh."""
    global _kept_bytes, _fresh
    if fresh:
        _fresh += 1
    old = kept.pop(key, None)
    if old is not None:
        _kept_bytes -= old.size
    if _max_count == 0 or seg.nbytes > _max_bytes:
        return
    entry = _Entry(key, seg, ms, snapshot(), owner)
    entry.use(seg, ms)
    kept[key] = entry
    _kept_bytes += entry.size
    _evict()
    _start_watcher()


def note_owner(ms: MapState, owner: Optional[str]) -> None:
    """The ownership of the Segment whose MapState is ``ms`` changed to ``owner`` (a hand-over):
    a mapping handed out again must say so too."""
    key = ms.key
    if key is None:
        return
    with lock:
        entry = kept.get(key)
        if entry is not None and entry.handle is ms.handle:
            entry.owner = owner


def revive(key: tuple[str, str], path: str, readonly: bool,
           make: "Callable[[Any, Optional[str]], tuple[Segment, MapState]]") -> "Optional[Segment]":
    """The idle kept mapping of ``key``, in a new Segment object, if it may be handed out: not
    read-only when ``readonly`` is False, its shared flock taken again (never waiting: a
    reclaimer holds it exclusively while it removes the name) and ``path`` still leading to that
    very file. Else None (an entry that can serve no more is dropped). ``make(snapshot, owner)``
    builds the Segment object and its MapState from what :func:`keep` was given. Caller holds ``lock``."""
    global _kept_bytes
    entry = kept.get(key)
    if entry is None or not entry.idle() or (not readonly and entry.readonly):
        return None
    ok = False
    if entry.pid != _pid:
        pass  # inherited through fork: its flock is the parent's too, so this process maps afresh
    else:
        try:
            fcntl.flock(entry.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            pass
        else:
            try:
                st = os.stat(path)
                ok = st.st_ino == entry.ino and st.st_dev == entry.dev
            except OSError:
                pass
    if not ok:  # reclaimed, removed or replaced: this mapping serves no attach any more
        del kept[key]
        _kept_bytes -= entry.size
        return None
    seg, ms = make(entry.snapshot, entry.owner)
    ms.key = key
    ms.hot = True
    live[key] = weakref.ref(seg)
    entry.use(seg, ms)
    return seg


def release(seg: "Segment", ms: MapState) -> None:
    """Forget ``seg`` (whose MapState is ``ms``) everywhere (it was closed, unlinked by its
    owner, or must die with its views)."""
    key = ms.key
    if key is None:
        return
    with lock:
        _unkeep(key, ms)
        ref = live.get(key)
        if ref is not None and ref() is seg:
            del live[key]


def unkeep(ms: MapState) -> None:
    """Stop keeping the mapping of the Segment whose MapState is ``ms`` past its views (it is
    owned here and must die with them, or its name was removed); later attaches still share it
    while it lives."""
    key = ms.key
    if key is None:
        return
    with lock:
        _unkeep(key, ms)


def _unkeep(key: tuple[str, str], ms: MapState) -> None:
    """Drop the mapping of ``ms`` from the kept ones if it is the one kept under ``key`` (``lock`` held)."""
    global _kept_bytes
    entry = kept.get(key)
    if entry is not None and entry.handle is ms.handle:
        del kept[key]
        _kept_bytes -= entry.size


def _evict() -> None:
    """Drop the least recently used mappings until within the limits. Recency is a second chance
    (CLOCK): an attach that reuses a mapping only sets its Segment's ``MapState.hot`` flag (no
    reordering on the hot path); eviction moves a hot entry to the young end once, clearing the
    flag, and drops the first cold one it meets."""
    global _kept_bytes
    chances = len(kept)
    while kept and (len(kept) > _max_count or _kept_bytes > _max_bytes):
        key, entry = kept.popitem(last=False)
        ms: Optional[MapState] = None if entry.idle() else entry.ms  # the MapState of the Segment using it
        if (entry.hot or (ms is not None and ms.hot)) and chances > 0 and _max_count > 0:
            entry.hot = False
            if ms is not None:
                ms.hot = False
            chances -= 1
            kept[key] = entry
            continue
        _kept_bytes -= entry.size


def drop_removed(force: bool = False) -> int:
    """Drop kept mappings whose file was removed (at most every CHECK_SECONDS unless ``force``):
    their memory must not outlive the name because of this cache. Returns how many went."""
    global _last_check, _kept_bytes
    now = time.monotonic()
    if not force and now - _last_check < CHECK_SECONDS:
        return 0
    _last_check = now
    gone = []
    with lock:
        for key, entry in kept.items():
            try:
                if os.fstat(entry.fd).st_nlink == 0:
                    gone.append(key)
            except OSError:
                gone.append(key)
        for key in gone:
            _kept_bytes -= kept.pop(key).size
    for check in checks:
        check()
    return len(gone)


def clear() -> None:
    """Forget every mapping (views alive keep theirs): tests, and a forked child that wants its own."""
    global _kept_bytes
    with lock:
        kept.clear()
        live.clear()
        _kept_bytes = 0


def start_watcher() -> None:
    """Make sure the watcher thread runs (it stops by itself when there is nothing to watch)."""
    _start_watcher()


def _start_watcher() -> None:
    global _watcher_pid
    if _watcher_pid == _pid:
        return
    _watcher_pid = _pid
    threading.Thread(target=_watch, name="ndshm-mapping-cache", daemon=True).start()


def _watch() -> None:
    """While anything is kept: every CHECK_SECONDS, drop mappings of removed segments."""
    global _watcher_pid
    me = _pid
    while True:
        time.sleep(CHECK_SECONDS)
        if _pid != me:
            return
        drop_removed(force=True)
        more = any([check() for check in checks])  # outside the lock: checks take their own
        with lock:
            if not kept and not more:
                _watcher_pid = 0
                return

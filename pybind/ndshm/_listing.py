"""Listing named segments without mapping them: :func:`probe` one, :func:`list_segments` a directory.

What a segment's header says is decoded here for ``ndshm.list()`` and the command line. Anyone
who may write to the directory (``/dev/shm`` is world-writable) can plant a file there, so a
listing trusts nothing it reads: a segment whose header, dtype or metadata cannot be decoded,
whatever the decoder raises, is reported with status ``'corrupt'`` and the listing goes on with
the others; it never raises out of a listing.

Every record has a ``kind``: ``'array'``, ``'queue'`` (a :class:`~ndshm.Queue`'s ring),
``'broadcast'`` (a broadcast ring), ``'sync'`` (a standalone Lock, Event or Barrier) or ``'pool'``
(an :class:`~ndshm.Pool`, with how full it is), from its
header's flags; ``None`` when the header could not be read. Sources of segments that are not
``ndshm.<name>`` files with a header (compat blocks: headerless files) add themselves to
:data:`LISTERS` and give their own kind.
"""

from __future__ import annotations

import datetime as _dt
import os
import stat
from typing import Any, Callable, Iterable, NamedTuple, Optional

import numpy as np

from ._errors import SegmentNotFoundError, error_from_code
from ._lib import ffi, lib
from ._api import str_name
from ._codec import decode_dtype, decode_meta
from ._dirs import default_dir, open_regular, sorted_entries
from ._params import PERSIST, PREFIX, cstr
from ._compat_blocks import ndshm_blocks

__all__ = ["SegmentRecord", "probe", "list_segments", "LISTERS"]


class SegmentRecord(NamedTuple):
    """One named segment as :func:`list_segments` sees it.

    ``dtype`` and ``shape`` are the header's layout (a queue's is its ring as ``uint8`` bytes);
    ``kind`` says what the segment holds; ``slots`` and ``slot_bytes`` are a queue's geometry
    (None for other kinds, or when its ring header cannot be read)."""
    name: str
    size: int
    dtype: Optional[np.dtype[Any]]
    shape: Optional[tuple[int, ...]]
    creator_pid: Optional[int]
    created: Optional[_dt.datetime]
    in_use: bool
    persist: bool
    status: str          # 'ready', 'initializing' or 'corrupt'
    path: str
    meta: Any = None
    kind: Optional[str] = "array"   # 'array', 'queue', 'broadcast', 'sync'; None if the header is unreadable
    slots: Optional[int] = None
    slot_bytes: Optional[int] = None
    pool_used: Optional[int] = None      # a pool's bytes in live blocks (kind 'pool'; None if unreadable)
    pool_capacity: Optional[int] = None  # a pool's bytes blocks are carved from
    pool_blocks: Optional[int] = None    # a pool's live blocks


# What a header's flags say its data holds; anything else is an array.
_KINDS = ((lib.NDSHM_SEG_QUEUE, "queue"), (lib.NDSHM_SEG_BROADCAST, "broadcast"), (lib.NDSHM_SEG_SYNC, "sync"),
          (lib.NDSHM_SEG_POOL, "pool"))


def _kind_of(flags: int) -> str:
    for flag, kind in _KINDS:
        if flags & flag:
            return kind
    return "array"




def _queue_geometry(path: str, data_offset: int, data_size: int) -> tuple[Optional[int], Optional[int]]:
    """(slots, slot_bytes) of the queue ring at ``data_offset`` of ``path``, or (None, None). The C
    library reads the ring's header (with pread: a mapping would let whoever truncates the file
    kill the lister with SIGBUS) and checks it."""
    fd = open_regular(path)
    if fd is None:
        return None, None
    head = ffi.new("ndshm_ring_header_t *")
    try:
        rc = lib.ndshm_ring_read_header(fd, data_offset, data_size, head)
    finally:
        os.close(fd)
    if rc or head.kind != lib.NDSHM_SEG_QUEUE:
        return None, None
    return int(head.slots), int(head.slot_bytes)


def _pool_fill(path: str, data_offset: int) -> tuple[Optional[int], Optional[int], Optional[int]]:
    """(used, capacity, live blocks) of the pool at ``data_offset`` of ``path`` (C reads and checks
    its header with pread: no mapping), or Nones."""
    fd = open_regular(path)
    if fd is None:
        return None, None, None
    try:
        st = ffi.new("ndshm_pool_stats_t *")
        if lib.ndshm_pool_peek(fd, data_offset, st) != 0:
            return None, None, None
        return int(st.used), int(st.capacity), int(st.live_blocks)
    finally:
        os.close(fd)


def probe(name: str, *, dir: Optional[str] = None) -> SegmentRecord:
    """Describe named segment ``name`` without mapping it.

    Raises :class:`SegmentNotFoundError` if there is none and ``ValueError`` for a bad name; a
    segment that exists but cannot be decoded is a record with status ``'corrupt'``."""
    str_name(name)
    d = default_dir(dir)
    path = os.path.join(d, PREFIX + name)
    info = ffi.new("ndshm_segment_info_t *")
    in_use = ffi.new("int *")
    rc = lib.ndshm_segment_probe(lib.NDSHM_KIND_NAMED, cstr(name), cstr(d), info, in_use)
    if rc in (lib.NDSHM_ENOENT, lib.NDSHM_EINVAL):
        raise error_from_code(rc, path)
    size = int(info.segment_size)
    if rc:
        status = "initializing" if rc == lib.NDSHM_EBUSY else "corrupt"
        return SegmentRecord(name, size, None, None, None, None, bool(in_use[0]), False, status, path, None, None)
    status, dt, meta, slots, slot_bytes = "ready", None, None, None, None
    lay = info.layout
    # Each decoder may fail in its own way on hostile bytes (RecursionError, MemoryError,
    # UnicodeDecodeError, ValueError, ...): the segment is corrupt, the listing goes on.
    try:
        dt = decode_dtype(ffi.string(lay.typestr).decode("ascii", "replace"),
                           bytes(ffi.buffer(info.descr, info.descr_len)), int(lay.itemsize), name)
    except Exception:
        status = "corrupt"
    try:
        meta = decode_meta(bytes(ffi.buffer(info.meta, info.meta_len)))
    except Exception:
        status = "corrupt"
    flags = int(info.flags)
    kind = _kind_of(flags)
    if kind == "queue":
        slots, slot_bytes = _queue_geometry(path, int(info.data_offset), int(info.data_size))
    pool: tuple[Optional[int], Optional[int], Optional[int]] = (None, None, None)
    if kind == "pool":
        pool = _pool_fill(path, int(info.data_offset))
    created = _dt.datetime.fromtimestamp(info.created_ns / 1e9, tz=_dt.timezone.utc)  # any int64 ns fits
    return SegmentRecord(name, size, dt, tuple(int(lay.shape[i]) for i in range(lay.ndim)), int(info.creator_pid),
                         created, bool(in_use[0]), bool(flags & PERSIST), status, path, meta, kind, slots, slot_bytes,
                         *pool)


def named_segments(d: str) -> list[SegmentRecord]:
    """Every ``ndshm.<name>`` segment in directory ``d``, sorted by name."""
    out = []
    for entry in sorted_entries(d):
        if not entry.startswith(PREFIX):
            continue
        try:
            out.append(probe(entry[len(PREFIX):], dir=d))
        except (SegmentNotFoundError, ValueError):
            continue  # removed meanwhile, or not a valid name
    return out


#: Where :func:`list_segments` finds segments: callables taking a directory and returning
#: records. A kind of segment that is not an ``ndshm.<name>`` file appends its own.
def compat_blocks(d: str) -> list[SegmentRecord]:
    """The blocks ``ndshm.compat`` made in ``d`` (headerless, named as the standard library names
    them), as records of kind ``'compat'``; ``in_use`` says whether an ndshm process maps one, and a
    block whose creation mark does not decode is ``'corrupt'``."""
    return [SegmentRecord(b.name, b.size, None, None, None if b.corrupt else b.creator_pid, None, b.in_use, False,
                          "corrupt" if b.corrupt else "ready", b.path, None, "compat") for b in ndshm_blocks(d)]


LISTERS: list[Callable[[str], Iterable[SegmentRecord]]] = [named_segments, compat_blocks]


def list_segments(dir: Optional[str] = None) -> list[SegmentRecord]:
    """Every named segment in ``dir`` (default: ``$NDSHM_DIR`` or ``/dev/shm``), sorted by name."""
    d = default_dir(dir)
    recs: list[SegmentRecord] = []
    for lister in LISTERS:
        recs.extend(lister(d))
    if len(LISTERS) > 1:
        recs.sort(key=lambda r: r.name)
    return recs

"""Listing named segments without mapping them: :func:`probe` one, :func:`list_segments` a directory.

What a segment's header says is decoded here for ``ndshm.list()`` and the command line; a segment
whose header or metadata cannot be decoded is reported with status ``'corrupt'``, never raised
out of a listing.
"""

from __future__ import annotations

import datetime as _dt
import os
from typing import Any, NamedTuple, Optional

import numpy as np

from ._errors import CorruptSegmentError, SegmentNotFoundError, error_from_code
from ._lib import ffi, lib
from ._segment import _PERSIST, _PREFIX, _cstr, _decode_dtype, _decode_meta, _str_name, default_dir

__all__ = ["SegmentRecord", "probe", "list_segments"]

class SegmentRecord(NamedTuple):
    """One named segment as :func:`list_segments` sees it."""
    name: str
    size: int
    dtype: Optional[np.dtype]
    shape: Optional[tuple]
    creator_pid: Optional[int]
    created: Optional[_dt.datetime]
    in_use: bool
    persist: bool
    status: str          # 'ready', 'initializing' or 'corrupt'
    path: str
    meta: Any = None


def probe(name: str, *, dir: Optional[str] = None) -> SegmentRecord:
    """Describe named segment ``name`` without mapping it."""
    _str_name(name)
    d = default_dir(dir)
    path = os.path.join(d, _PREFIX + name)
    info = ffi.new("ndshm_segment_info_t *")
    in_use = ffi.new("int *")
    rc = lib.ndshm_segment_probe(lib.NDSHM_KIND_NAMED, _cstr(name), _cstr(d), info, in_use)
    if rc == lib.NDSHM_ENOENT:
        raise error_from_code(rc, path)
    if rc == lib.NDSHM_EINVAL:
        raise error_from_code(rc, path)
    status, dt, shape, pid, created, persist, meta = "ready", None, None, None, None, False, None
    size = int(info.segment_size)
    if rc == lib.NDSHM_EBUSY:
        status = "initializing"
    elif rc:
        status = "corrupt"
    else:
        lay = info.layout
        try:
            dt = _decode_dtype(ffi.string(lay.typestr).decode("ascii", "replace"),
                               bytes(ffi.buffer(info.descr, info.descr_len)), int(lay.itemsize), name)
            meta = _decode_meta(bytes(ffi.buffer(info.meta, info.meta_len)))
        except CorruptSegmentError:
            status = "corrupt"
        shape = tuple(int(lay.shape[i]) for i in range(lay.ndim))
        pid = int(info.creator_pid)
        created = _dt.datetime.fromtimestamp(info.created_ns / 1e9, tz=_dt.timezone.utc)
        persist = bool(info.flags & _PERSIST)
    return SegmentRecord(name, size, dt, shape, pid, created, bool(in_use[0]), persist, status, path, meta)


def list_segments(dir: Optional[str] = None) -> list[SegmentRecord]:
    """Every named segment in ``dir`` (default: ``$NDSHM_DIR`` or ``/dev/shm``), sorted by name."""
    d = default_dir(dir)
    out = []
    try:
        entries = sorted(os.listdir(d))
    except FileNotFoundError:
        return []
    for entry in entries:
        if not entry.startswith(_PREFIX):
            continue
        name = entry[len(_PREFIX):]
        try:
            out.append(probe(name, dir=d))
        except (SegmentNotFoundError, ValueError):
            continue  # removed meanwhile, or not a valid name
    return out

"""The module-level functions over segments: arrays by name (``ndshm.create``, ``attach``,
``attach_raw``, ``unlink``, ``exists``) and ``ndshm.stats()``. Thin functions over
:class:`~ndshm.Segment` and the rooms below it; they sit above the rings because
``attach(timeout=...)`` waits for a creator as ring attaches do (one wait for both)."""

from __future__ import annotations

import os
from typing import Any, Optional

from numpy.typing import NDArray

from . import _dtype
from ._buffer import library_counters
from ._dirs import default_dir
from ._mappings import mapping_cache_info
from ._ownership import owned_names
from ._ring import attach_waiting
from ._params import PREFIX
from ._segment import Segment, map_raw, unlink_name, view

__all__ = ["create", "attach", "attach_raw", "unlink", "exists", "stats"]


def create(name: Optional[str], shape: Any, dtype: Any = float, order: str = "C", *, fill: Any = None,
           align: Any = 64, persist: bool = False, mode: int = 0o600, hugepages: bool = False,
           populate: bool = False, meta: Any = None, owner: str = "creator", dir: Optional[str] = None) -> NDArray[Any]:
    """Create the named segment ``name`` (``None``: a unique name) holding a zeroed array (or
    ``fill``) and return the array. The name lives until this process closes the segment
    (``ndshm.segment_of(arr).close()``), unlinks it, or exits; ``owner="views"``: until the last
    view is gone; ``owner="receiver"``: handed to the process that unpickles it (see
    :meth:`Segment.create`); ``persist=True``: until :func:`unlink`."""
    return Segment.create(name, shape, dtype, order, kind="named", dir=dir, fill=fill, align=align, persist=persist,
                          mode=mode, hugepages=hugepages, populate=populate, meta=meta, owner=owner).asarray()


def attach(name: str, *, readonly: bool = False, populate: bool = False, dir: Optional[str] = None,
           timeout: Optional[float] = None) -> NDArray[Any]:
    """The array in named segment ``name``, zero-copy, with dtype and shape restored. A queue's or a
    standalone Lock's, Event's or Barrier's segment is refused (attach those with their class).
    With ``timeout`` (seconds; ``float("inf")``: for ever) a segment not created yet, or whose
    creator is still filling its header, is waited for; None (the default) tries once."""
    seg = attach_waiting(lambda: Segment.attach(name, readonly=readonly, dir=dir, populate=populate), timeout,
                          f"segment {name!r}")
    return seg.asarray(readonly)


def attach_raw(name_or_path: str, shape: Any, dtype: Any, offset: int = 0, *, readonly: bool = False) -> NDArray[Any]:
    """Map a headerless segment or file made by another tool: a bare name means ``/dev/shm/<name>``
    (as ``multiprocessing.shared_memory`` makes them). The view is bounds-checked against its size."""
    path = os.fspath(name_or_path)
    if os.sep not in path.lstrip("/"):
        path = os.path.join("/dev/shm", path.lstrip("/"))
    dims, dt = _dtype.normalize(shape, dtype)
    offset = _dtype.as_offset(offset)
    seg = map_raw(path, _dtype.as_flag(readonly, "readonly"))
    need = _dtype.nbytes_of(dims, dt)
    if offset + need > seg.nbytes:
        raise ValueError(f"shape {dims} of dtype {dt} at offset {offset} needs {offset + need} bytes; "
                         f"{path} has {seg.nbytes}")
    return view(seg, offset, dims, dt, _dtype.contiguous_strides(dims, dt.itemsize, "C"), readonly)


def str_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"segment name {name!r} is not a str")
    return name


def unlink(name: str, *, dir: Optional[str] = None) -> None:
    """Remove the named segment ``name`` (processes that map it keep their mappings). If this
    process owns it, ownership ends: the segment is no longer kept mapped for its name's sake."""
    unlink_name(str_name(name), dir)


def exists(name: str, *, dir: Optional[str] = None) -> bool:
    """True if a named segment ``name`` exists (in any state)."""
    str_name(name)
    return os.path.exists(os.path.join(default_dir(dir), PREFIX + name))


def stats() -> dict[str, int]:
    """The C library's process-wide counters (live buffers and bytes, segments, mappings, queues),
    plus ``cached_buffers``: small blocks kept for reuse, which ``live_buffers`` includes, and the
    mapping cache's ``cached_mappings`` / ``cached_mapping_bytes`` (segments kept mapped after
    their last view died, which ``live_mappings`` includes) with its limits, and ``owned_names``: the
    segment names this process will remove (at close, with its views, or at exit)."""
    counters = library_counters()
    counters.update(mapping_cache_info())
    counters["owned_names"] = owned_names()
    return counters

"""What :meth:`ndshm.Segment.create` asks C for: its arguments checked, in the order their errors
are raised, and written into an ``ndshm_segment_params_t`` (kind, name or path, directory, mode,
flags, alignment, the array's layout, descr and meta); and the C strings of names, dirs and paths.
Below the segment core: it knows arguments and the C struct, never a mapped segment."""

from __future__ import annotations

import os
import uuid
from typing import Any, NamedTuple, Optional

from . import _dtype, _ownership
from ._codec import encode_dtype, encode_meta
from ._dirs import default_dir, huge_dir
from ._lib import ffi, lib

__all__ = ["KINDS", "PREFIX", "PERSIST", "cstr", "cbuf", "CreateParams", "create_params"]

KINDS = {"named": lib.NDSHM_KIND_NAMED, "anonymous": lib.NDSHM_KIND_ANONYMOUS, "memfd": lib.NDSHM_KIND_MEMFD,
         "file": lib.NDSHM_KIND_FILE}
PREFIX = "ndshm."  # a named segment's file is <dir>/ndshm.<name>
PERSIST, _POPULATE, _HUGE = lib.NDSHM_SEG_PERSIST, lib.NDSHM_SEG_POPULATE, lib.NDSHM_SEG_HUGEPAGES
_FORTRAN = lib.NDSHM_SEG_FORTRAN
_KEEP_NAME = lib.NDSHM_SEG_KEEP_NAME  # create: the handle's close leaves the name (ownership decides)


def cstr(s: Any) -> Any:
    """``s`` (a str, bytes or path) as C string bytes; NUL bytes are refused (C would cut there)."""
    if s is None:
        return ffi.NULL
    b = os.fsencode(s)
    if b"\0" in b:
        raise ValueError(f"{s!r} contains a NUL character")
    return b


def cbuf(s: Any) -> Any:
    return ffi.NULL if s is None else ffi.new("char[]", cstr(s))


class CreateParams(NamedTuple):
    """The checked arguments of a create: ``params`` for ``ndshm_segment_create`` (``keep`` holds
    the buffers it points to), and what the new Segment is made of."""

    params: Any  # the ndshm_segment_params_t *
    keep: list[Any]
    name: Optional[str]
    dir: Optional[str]
    path: Optional[str]
    where: Optional[str]  # the file, for error messages (named and file segments)
    owner: str
    persist: bool


def create_params(name: Optional[str], shape: Any, dtype: Any, order: str, kind: str, path: Optional[str],
                  dir: Optional[str], align: Any, persist: bool, mode: int, hugepages: bool, populate: bool,
                  meta: Any, owner: str, flags: int) -> CreateParams:
    """The arguments of :meth:`ndshm.Segment.create` checked (each error names the bad value) and
    made into C parameters."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {sorted(KINDS)}")
    if kind == "named" and name is not None and not isinstance(name, str):
        raise TypeError(f"segment name {name!r:.80} is not a str: the name comes first, as in "
                        "create(name, shape, dtype) (None picks a unique name)")
    persist = _dtype.as_flag(persist, "persist")
    hugepages = _dtype.as_flag(hugepages, "hugepages")
    populate = _dtype.as_flag(populate, "populate")
    owner = _ownership.check_owner(owner, persist)
    if owner == "receiver" and kind != "named":
        raise ValueError(f"owner='receiver' applies to named segments, not kind={kind!r}")
    order = _dtype.check_order(order)
    dims, dt = _dtype.normalize(shape, dtype)
    _dtype.nbytes_of(dims, dt)
    strides = _dtype.contiguous_strides(dims, dt.itemsize, order)
    typestr, descr = encode_dtype(dt)
    meta_b = encode_meta(meta)
    alignment = _dtype.as_alignment(align)
    if kind == "named":
        if name is None:
            name = f"ndshm-{os.getpid()}-{uuid.uuid4().hex[:16]}"
        if path is not None:
            raise ValueError("path= applies to kind='file'; named segments take name= and dir=")
        if not isinstance(name, str):
            raise TypeError(f"segment name {name!r} is not a str")
        if hugepages:
            dir, hugepages = huge_dir(dir)
        dir = os.fspath(default_dir(dir))
        where: Optional[str] = os.path.join(dir, PREFIX + name)
    elif kind == "file":
        if path is None:
            if name is None:
                raise ValueError("kind='file' needs path=")
            path = name
        where = path = os.path.abspath(os.fspath(path))
        name = None
    else:
        where = name = None
    p = ffi.new("ndshm_segment_params_t *")
    p.kind = KINDS[kind]
    keep = [cbuf(name if kind == "named" else path), cbuf(dir)]
    p.name = keep[0]
    p.dir = keep[1]
    p.mode = _dtype.as_int(mode, "mode", 0, 0o7777)
    p.flags = ((PERSIST if persist else 0) | (_POPULATE if populate else 0) | (_HUGE if hugepages else 0)
               | (_FORTRAN if order == "F" and len(dims) > 1 else 0) | (_KEEP_NAME if owner != "views" else 0)
               | flags)
    p.alignment = alignment
    lay = p.layout
    tb = typestr.encode()
    if len(tb) >= lib.NDSHM_TYPESTR_MAX:
        raise ValueError(f"dtype {dt} has a typestr {typestr!r} longer than {lib.NDSHM_TYPESTR_MAX - 1}")
    lay.typestr = tb
    lay.itemsize = dt.itemsize
    lay.ndim = len(dims)
    for i, (n, s) in enumerate(zip(dims, strides)):
        lay.shape[i] = n
        lay.strides[i] = s
    if descr:
        keep.append(ffi.from_buffer(descr))
        p.descr = keep[-1]
        p.descr_len = len(descr)
    if meta_b:
        keep.append(ffi.from_buffer(meta_b))
        p.meta = keep[-1]
        p.meta_len = len(meta_b)
    return CreateParams(p, keep, name, dir, path, where, owner, persist)

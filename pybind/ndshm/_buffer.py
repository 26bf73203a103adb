"""Aligned allocations as NumPy arrays: :class:`Buffer` and the NumPy-style constructors."""

from __future__ import annotations

import atexit
import platform
import threading
from math import prod as _prod
from typing import Any, Optional

import numpy as np
from numpy.typing import NDArray

from . import _dtype
from ._dtype import AlignLike, ShapeLike
from ._errors import ClosedError, raise_for
from ._lib import ffi, lib

__all__ = ["Buffer", "empty", "zeros", "ones", "full", "empty_like", "zeros_like", "ones_like",
           "full_like", "asaligned", "is_aligned"]

_free = lib.ndshm_buffer_free
_alloc = lib.ndshm_alloc
_tls = threading.local()  # per-thread out-parameters for ndshm_alloc (cffi releases the GIL in calls)

# Small-block cache, like NumPy's: blocks of up to _SMALL bytes (alignment <= 64, no page-level
# options) go back to a bounded free list per 64-byte size class when their Buffer dies, so the
# common small-array case costs no C call at all. Entries: (gc'd handle, address, char * cdata).
# CPython only: it runs Buffer.__del__ before dropping the handle, so handing the handle to the
# cache keeps the block alive. PyPy gives ffi.gc destructors no such ordering (the block could be
# freed while __del__ caches it), and its GC defers finalizers anyway, so there _SMALL is -1.
_SMALL = 1024 if platform.python_implementation() == "CPython" else -1
_CACHE_DEPTH = 64
_cache: list[list[tuple[Any, int, Any]]] = [[] for _ in range((max(_SMALL, 0) >> 6) + 1)]
_ZERO_BYTES = bytes(max(_SMALL, 0))


# Constants read once: attribute lookups on an ABI-mode cffi library are slow.
_ZERO, _HUGEPAGES, _NO_HUGEPAGES = lib.NDSHM_ALLOC_ZERO, lib.NDSHM_ALLOC_HUGEPAGES, lib.NDSHM_ALLOC_NO_HUGEPAGES
_POPULATE, _LOCK = lib.NDSHM_ALLOC_POPULATE, lib.NDSHM_ALLOC_LOCK


def _flags(zero: bool, hugepages: Optional[bool], populate: bool, lock: bool) -> int:
    """C allocation flags; ``hugepages=None`` leaves the choice to the size (like NumPy). The flags
    must be bools (``populate="no"`` is a TypeError naming it, not a request to populate)."""
    if populate.__class__ is not bool or lock.__class__ is not bool or zero.__class__ is not bool:
        populate, lock = _dtype.as_flag(populate, "populate"), _dtype.as_flag(lock, "lock")
        zero = _dtype.as_flag(zero, "zero")
    if hugepages is not None and hugepages.__class__ is not bool:
        hugepages = _dtype.as_flag(hugepages, "hugepages (True, False or None)")
    huge = 0 if hugepages is None else _HUGEPAGES if hugepages else _NO_HUGEPAGES
    return (_ZERO if zero else 0) | huge | (_POPULATE if populate else 0) | (_LOCK if lock else 0)


class Buffer:
    """One aligned allocation, owned by this object.

    ``Buffer(nbytes, align=64, *, zero=False, hugepages=None, populate=False, lock=False)``

    ``numpy.asarray(buffer)`` is a zero-copy view through ``__array_interface__`` (by default the
    bytes as a 1-D ``uint8`` array; :meth:`asarray` gives any shape and dtype that fits). Every
    view keeps the buffer alive through ``.base``, and the memory is freed exactly once, when the
    buffer and its last view are gone. :meth:`close` ends the buffer's own use (no new views) but
    never frees memory that a live view still uses.
    """

    __slots__ = ("_block", "_cls", "__array_interface__", "nbytes", "alignment", "__weakref__")
    _block: tuple[Any, int, Any]  # (gc'd handle, address, char * cdata or None): see _allocate
    _cls: int  # the small-block cache's size class, or -1
    __array_interface__: dict[str, Any]
    nbytes: int
    """Bytes allocated."""
    alignment: int
    """The alignment of the first byte, in bytes."""
    # Keeps the library loaded for as long as any buffer lives (instances hold their class), so a
    # finalizer never calls into an unloaded library at interpreter exit.
    _lib = lib

    def __init__(self, nbytes: int, align: AlignLike = 64, *, zero: bool = False, hugepages: Optional[bool] = None,
                 populate: bool = False, lock: bool = False) -> None:
        if hasattr(self, "_cls"):
            raise RuntimeError("Buffer.__init__ called on a live buffer; make a new Buffer instead")
        (n,) = _dtype.as_shape((nbytes,))
        _allocate(self, n, _dtype.as_alignment(align), _flags(zero, hugepages, populate, lock), (n,), "|u1", None)

    def __del__(self) -> None:
        # A cacheable block goes back to its size class; any other is freed by its ffi.gc handle.
        try:
            cls = self._cls
        except AttributeError:  # __init__ failed before allocating
            return
        if cls >= 0:
            free_list = _cache[cls]
            if len(free_list) < _CACHE_DEPTH:
                free_list.append(self._block)

    @property
    def address(self) -> int:
        """The address of the first byte."""
        return self._block[1]

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self.__class__ is _ClosedBuffer

    def asarray(self, shape: Optional[ShapeLike] = None, dtype: Any = np.uint8, order: str = "C",
                offset: int = 0) -> NDArray[Any]:
        """A zero-copy ndarray over the buffer's bytes (``shape=None``: as many items as fit)."""
        if self.__class__ is _ClosedBuffer:
            self.__array_interface__  # raises ClosedError
        dt = _dtype.as_dtype(dtype)
        order = _dtype.check_order(order)
        offset = _dtype.as_offset(offset)
        if offset > self.nbytes:
            raise ValueError(f"offset {offset} is outside the buffer's {self.nbytes} bytes")
        if shape is None:
            if dt.itemsize == 0:
                raise ValueError(f"dtype {dt} has no size; give a shape")
            shape = ((self.nbytes - offset) // dt.itemsize,)
        dims, dt = _dtype.normalize(shape, dt)
        need = _dtype.nbytes_of(dims, dt)
        if need > self.nbytes - offset:
            raise ValueError(f"shape {dims} of dtype {dt} needs {need} bytes; the buffer has "
                             f"{self.nbytes - offset} from offset {offset}")
        holder = _View(self, self.address + offset, dims, dt, _dtype.contiguous_strides(dims, dt.itemsize, order))
        return _dtype.exact_dtype(np.asarray(holder), dt)

    def memoryview(self) -> memoryview:
        """A writable ``memoryview`` of the bytes (for ``readinto``, ``recv_into``, ``bytes()``)."""
        return self.asarray().data

    def close(self) -> None:
        """End this buffer's use. The memory is freed when the last view of it is gone."""
        if self.__class__ is Buffer:
            # A closed buffer's class answers __array_interface__ with a ClosedError (a None
            # there would get NumPy's "must be a dict", and no interface at all an object array).
            self.__class__ = _ClosedBuffer

    def __enter__(self) -> "Buffer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed " if self.closed else ""
        return f"<ndshm.Buffer {state}{self.nbytes} bytes at 0x{self.address:x}, align={self.alignment}>"


class _ClosedBuffer(Buffer):
    """What a :class:`Buffer` becomes when closed: the same object, whose ``__array_interface__``
    raises :class:`ClosedError` (so ``np.asarray(closed)`` names the buffer)."""

    __slots__ = ()

    @property
    def __array_interface__(self) -> dict[str, Any]:  # type: ignore[override]
        raise ClosedError(f"Buffer of {self.nbytes} bytes at 0x{self.address:x} is closed")


def _c_alloc(nbytes: int, alignment: int, flags: int) -> tuple[Any, int]:
    """One ndshm_alloc call: the gc'd handle and the data address."""
    try:
        handle, address = _tls.outs
    except AttributeError:
        handle, address = _tls.outs = (ffi.new("ndshm_buffer_t **"), ffi.new("uintptr_t *"))
    rc = _alloc(nbytes, alignment, flags, handle, address)
    if rc:
        raise_for(rc)
    return ffi.gc(handle[0], _free, nbytes), address[0]  # the size tells PyPy's GC about the memory


def _allocate(self: Buffer, nbytes: int, alignment: int, flags: int, shape: tuple[int, ...], typestr: str,
              strides: Optional[tuple[int, ...]]) -> Buffer:
    """Allocate into ``self`` and describe the bytes as ``shape``/``typestr``: the hot path of
    every constructor, kept to at most one C call and no per-call cffi allocations."""
    if nbytes <= _SMALL and alignment <= 64 and not flags & ~_ZERO:
        cls = (nbytes + 63) >> 6
        try:
            block = _cache[cls].pop()
        except IndexError:
            handle, addr = _c_alloc(cls << 6, 64, flags)
            block = (handle, addr, ffi.cast("char *", addr))
        else:
            if flags:
                ffi.memmove(block[2], _ZERO_BYTES, nbytes)
    else:
        cls = -1
        handle, addr = _c_alloc(nbytes, alignment, flags)
        block = (handle, addr, None)
    self._block = block
    self._cls = cls
    self.nbytes = nbytes
    self.alignment = alignment
    self.__array_interface__ = {"version": 3, "data": (block[1], False), "shape": shape, "typestr": typestr,
                                "strides": strides}
    return self


@atexit.register
def _drop_cache() -> None:
    """Free every cached block (at exit, before the library could be unloaded; tests call it too)."""
    for free_list in _cache:
        free_list.clear()


_new_buffer = Buffer.__new__


class _View:
    """A transient provider of ``__array_interface__`` for one view of a :class:`Buffer`.

    NumPy collapses base chains to the first object that is not an array, so the array made
    from it would keep this object (and through it the buffer) alive."""

    __slots__ = ("__array_interface__", "owner")
    __array_interface__: dict[str, Any]
    owner: Buffer

    def __init__(self, owner: Buffer, address: int, shape: tuple[int, ...], dtype: np.dtype[Any],
                 strides: tuple[int, ...]) -> None:
        self.owner = owner
        self.__array_interface__ = _dtype.array_interface(address, shape, dtype, strides, False)


# dtype argument -> (dtype, itemsize, typestr, simple): one dict lookup per array instead of
# several calls; `simple` means no subarray and no fields, so shape and typestr are exact as given.
_SPECS: dict[Any, tuple[np.dtype[Any], int, str, bool]] = {}
_MAX_NBYTES = _dtype.MAX_NBYTES


def _spec(dtype: Any) -> tuple[np.dtype[Any], int, str, bool]:
    dt, sub = _dtype.resolve_dtype(dtype)  # raises for bad or object dtypes
    spec = (dt, dt.itemsize, _dtype.typestr_of(dt), not sub and dt.names is None)
    try:
        if len(_SPECS) < 1024:
            _SPECS[dtype] = spec
    except TypeError:  # an unhashable dtype description
        pass
    return spec


def _new_array(shape: ShapeLike, dtype: Any, order: str, align: AlignLike, flags: int) -> NDArray[Any]:
    try:
        dt, itemsize, typestr, simple = _SPECS[dtype]
    except (KeyError, TypeError):
        dt, itemsize, typestr, simple = _spec(dtype)
    dims: tuple[int, ...]
    if simple and shape.__class__ is int and 0 <= shape and shape * itemsize <= _MAX_NBYTES:
        dims, nbytes = (shape,), shape * itemsize  # the common cases, without helper calls
    elif simple and shape.__class__ is tuple and _dtype.is_plain_shape(shape):
        dims, nbytes = shape, _prod(shape) * itemsize
        if nbytes > _MAX_NBYTES:
            _dtype.nbytes_of(dims, dt)  # raises, naming the shape
    else:
        dims, dt = _dtype.normalize(shape, dtype)
        nbytes = _dtype.nbytes_of(dims, dt)
        typestr = _dtype.typestr_of(dt)
    alignment = align if align.__class__ is int and align == 64 else _dtype.as_alignment(align)
    strides = None if order == "C" else _dtype.contiguous_strides(dims, dt.itemsize, _dtype.check_order(order))
    arr = np.asarray(_allocate(_new_buffer(Buffer), nbytes, alignment, flags, dims, typestr, strides))
    # The interface cannot describe padded or aligned structs exactly: those map raw bytes, then view.
    return arr if dt.names is None else arr.view(dt)


def empty(shape: ShapeLike, dtype: Any = float, order: str = "C", *, align: AlignLike = 64,
          hugepages: Optional[bool] = None, populate: bool = False, lock: bool = False) -> NDArray[Any]:
    """Like ``numpy.empty``, with the data aligned to ``align`` bytes (a power of two, ``'page'`` or
    ``'huge'``). ``hugepages``: transparent huge pages always (True), never (False), or, by default,
    from 4 MiB up as NumPy does. ``populate`` pre-faults the pages, ``lock`` keeps them in RAM
    (``mlock``)."""
    flags = 0 if hugepages is None and populate is False and lock is False else _flags(False, hugepages, populate, lock)
    return _new_array(shape, dtype, order, align, flags)


def zeros(shape: ShapeLike, dtype: Any = float, order: str = "C", *, align: AlignLike = 64,
          hugepages: Optional[bool] = None, populate: bool = False, lock: bool = False) -> NDArray[Any]:
    """Like ``numpy.zeros``, aligned as :func:`empty` describes."""
    flags = _ZERO if hugepages is None and populate is False and lock is False else \
        _flags(True, hugepages, populate, lock)
    return _new_array(shape, dtype, order, align, flags)


def full(shape: ShapeLike, fill_value: Any, dtype: Any = None, order: str = "C", *, align: AlignLike = 64,
         hugepages: Optional[bool] = None, populate: bool = False, lock: bool = False) -> NDArray[Any]:
    """Like ``numpy.full``, aligned as :func:`empty` describes."""
    if dtype is None:
        dtype = np.array(fill_value).dtype
    arr = _new_array(shape, dtype, order, align, _flags(False, hugepages, populate, lock))
    np.copyto(arr, fill_value, casting="unsafe")
    return arr


def ones(shape: ShapeLike, dtype: Any = float, order: str = "C", *, align: AlignLike = 64,
         hugepages: Optional[bool] = None, populate: bool = False, lock: bool = False) -> NDArray[Any]:
    """Like ``numpy.ones``, aligned as :func:`empty` describes."""
    return full(shape, 1, dtype, order, align=align, hugepages=hugepages, populate=populate, lock=lock)


def _like(a: Any, dtype: Any, order: str, shape: Optional[ShapeLike]) -> tuple[Any, Any, str]:
    """Shape, dtype and order of a new array like ``a``, as NumPy's ``*_like`` functions take them."""
    a = np.asanyarray(a)
    if order in ("A", "K"):
        order = "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"
    elif order not in ("C", "F"):
        raise ValueError(f"order {order!r} is not 'C', 'F', 'A' or 'K'")
    return a.shape if shape is None else shape, a.dtype if dtype is None else dtype, order


def empty_like(a: Any, dtype: Any = None, order: str = "K", *, shape: Optional[ShapeLike] = None,
               align: AlignLike = 64, hugepages: Optional[bool] = None, populate: bool = False,
               lock: bool = False) -> NDArray[Any]:
    """Like ``numpy.empty_like``, aligned as :func:`empty` describes."""
    return empty(*_like(a, dtype, order, shape), align=align, hugepages=hugepages, populate=populate, lock=lock)


def zeros_like(a: Any, dtype: Any = None, order: str = "K", *, shape: Optional[ShapeLike] = None,
               align: AlignLike = 64, hugepages: Optional[bool] = None, populate: bool = False,
               lock: bool = False) -> NDArray[Any]:
    """Like ``numpy.zeros_like``, aligned as :func:`empty` describes."""
    return zeros(*_like(a, dtype, order, shape), align=align, hugepages=hugepages, populate=populate, lock=lock)


def full_like(a: Any, fill_value: Any, dtype: Any = None, order: str = "K", *,
              shape: Optional[ShapeLike] = None, align: AlignLike = 64, hugepages: Optional[bool] = None,
              populate: bool = False, lock: bool = False) -> NDArray[Any]:
    """Like ``numpy.full_like``, aligned as :func:`empty` describes."""
    shape, dtype, order = _like(a, dtype, order, shape)
    return full(shape, fill_value, dtype, order, align=align, hugepages=hugepages, populate=populate, lock=lock)


def ones_like(a: Any, dtype: Any = None, order: str = "K", *, shape: Optional[ShapeLike] = None,
              align: AlignLike = 64, hugepages: Optional[bool] = None, populate: bool = False,
              lock: bool = False) -> NDArray[Any]:
    """Like ``numpy.ones_like``, aligned as :func:`empty` describes."""
    return full_like(a, 1, dtype, order, shape=shape, align=align, hugepages=hugepages, populate=populate,
                     lock=lock)


def is_aligned(a: Any, align: AlignLike = 64) -> bool:
    """True if the first byte of array ``a`` lies on a multiple of ``align``."""
    alignment = _dtype.as_alignment(align)
    address: int = np.asarray(a).__array_interface__["data"][0]
    return address % alignment == 0


def asaligned(a: Any, align: AlignLike = 64, dtype: Any = None) -> NDArray[Any]:
    """``a`` as an array whose data is aligned to ``align``: ``a`` itself when it already is (and
    has the dtype asked for), otherwise an aligned copy."""
    arr = np.asarray(a, dtype=dtype)
    if is_aligned(arr, align):
        return arr
    out = empty_like(arr, order="K", align=align)
    np.copyto(out, arr)
    return out


def library_counters() -> dict[str, int]:
    """The C library's process-wide counters, plus ``cached_buffers``: small blocks kept for reuse
    (which ``live_buffers`` includes). ``ndshm.stats()`` adds the segment rooms' counts."""
    s = ffi.new("ndshm_stats_t *")
    lib.ndshm_get_stats(s)
    counters = {name: getattr(s, name) for name, _ in ffi.typeof("ndshm_stats_t").fields}
    counters["cached_buffers"] = sum(map(len, _cache))
    return counters

"""Argument normalisation shared by allocations, segments and queues.

Every check names the offending value, so a bad argument never reaches C unexplained.
"""

from __future__ import annotations

import mmap
import operator
import sys
from typing import TYPE_CHECKING, Any, Optional, Sequence, SupportsIndex, Union

import numpy as np

from ._lib import lib

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from numpy.typing import NDArray

# What NumPy accepts as a shape: an int (NumPy's integers too) or a sequence of them.
ShapeLike = Union[SupportsIndex, Sequence[SupportsIndex]]
AlignLike = Union[int, str]

PAGE_SIZE = mmap.PAGESIZE
HUGE_PAGE_SIZE = 2 * 1024 * 1024
MAX_ALIGNMENT = 1 << 30
MAX_NBYTES = sys.maxsize  # PTRDIFF_MAX: the largest object C and NumPy can address


def as_dtype(dtype: Any) -> np.dtype[Any]:
    """``np.dtype(dtype)``, refusing dtypes that hold Python objects (they cannot be shared)."""
    dt: np.dtype[Any] = np.dtype(dtype)
    if dt.hasobject:
        raise TypeError(f"dtype {dt!r} holds Python objects, which cannot live in raw or shared memory")
    return dt


def as_shape(shape: ShapeLike) -> tuple[int, ...]:
    """A shape as a tuple of non-negative ints: an int (NumPy's integers too) means a 1-D shape,
    otherwise a sequence of ints (not a str, bytes or mapping, as NumPy refuses them)."""
    if shape.__class__ is tuple:
        items: Any = shape
    else:
        try:
            items = (operator.index(shape),)  # type: ignore[arg-type]  # a sequence: TypeError
        except TypeError:
            if isinstance(shape, (str, bytes, bytearray, memoryview, dict)) or not hasattr(shape, "__len__"):
                raise TypeError(f"shape {shape!r} is not an int or a sequence of ints") from None
            items = shape
    try:
        dims = tuple(map(operator.index, items))
    except TypeError:
        raise TypeError(f"shape {shape!r} is not an int or a sequence of ints") from None
    if isinstance(shape, bool) or any(isinstance(d, bool) for d in items):
        raise TypeError(f"shape {shape!r} holds a bool, not an int")
    if dims and min(dims) < 0:
        raise ValueError(f"shape {shape!r} has a negative dimension")
    if dims and max(dims) > MAX_NBYTES:
        raise ValueError(f"shape {shape!r} has a dimension larger than {MAX_NBYTES}")
    if len(dims) > 32:
        raise ValueError(f"shape {shape!r} has {len(dims)} dimensions; at most 32 are supported")
    return dims


def as_int(value: Any, what: str, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi] (NumPy's integers too, bools refused), naming it otherwise."""
    try:
        if isinstance(value, bool):
            raise TypeError
        v = int(operator.index(value))
    except TypeError:
        raise TypeError(f"{what} {value!r} is not an int") from None
    if not lo <= v <= hi:
        raise ValueError(f"{what} {value!r} is not an int from {lo} to {hi}")
    return v


def as_flag(value: Any, what: str) -> bool:
    """``value`` as a bool: ``True``/``False`` or a NumPy bool, a TypeError naming ``what`` otherwise
    (``persist="yes"`` or a dtype passed where ``readonly`` goes must not pass as true)."""
    if value.__class__ is bool:
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{what} {value!r:.80} is not a bool")


def as_offset(offset: Any) -> int:
    """A byte offset: a non-negative int (NumPy's integers too)."""
    try:
        off = operator.index(offset)
    except TypeError:
        raise TypeError(f"offset {offset!r} is not an int") from None
    if off < 0:
        raise ValueError(f"offset {offset!r} is negative")
    return off


def is_plain_shape(shape: tuple[Any, ...]) -> bool:
    """True for a tuple of at most 32 non-negative Python ints, bools excluded (as NumPy does)."""
    return (len(shape) <= 32 and all(map(int.__instancecheck__, shape)) and not any(map(bool.__instancecheck__, shape))
            and (not shape or (min(shape) >= 0 and max(shape) <= MAX_NBYTES)))

# dtype argument -> (element dtype, trailing dims of a subarray dtype); a hot-path cache.
_RESOLVED: dict[Any, tuple[np.dtype[Any], tuple[int, ...]]] = {}
# The one dtype -> typestr cache (views, and every ring message; bench rows "attach+view" and the
# queue's "put/get" rows: ``dt.str`` costs ~0.5 us): element dtype -> (the typestr that maps it
# exactly, raw void for structured dtypes (see exact_dtype); its bytes once checked for a ring
# message, else None).
_TYPESTR: dict[np.dtype[Any], tuple[str, Optional[bytes]]] = {}


def typestr_of(dt: np.dtype[Any]) -> str:
    """The ``__array_interface__`` typestr for element dtype ``dt``."""
    try:
        return _TYPESTR[dt][0]
    except KeyError:
        ts = dt.str if dt.names is None else f"|V{dt.itemsize}"
        if len(_TYPESTR) < 1024:
            _TYPESTR[dt] = (ts, None)
        return ts


def typestr_bytes(dt: np.dtype[Any], limit: int = lib.NDSHM_TYPESTR_MAX) -> bytes:
    """``dt``'s typestr as the bytes a ring message carries: TypeError for a dtype holding Python
    objects (pointers mean nothing in another process), ValueError if it is ``limit`` bytes or longer
    (C's NDSHM_TYPESTR_MAX, NUL included)."""
    try:
        b = _TYPESTR[dt][1]
    except KeyError:
        b = None
    if b is not None:
        return b
    as_dtype(dt)
    ts = typestr_of(dt)
    b = ts.encode()
    if len(b) >= limit:
        raise ValueError(f"dtype {dt} has a typestr {b!r} longer than {limit - 1} bytes")
    if len(_TYPESTR) < 1024:
        _TYPESTR[dt] = (ts, b)
    return b


def resolve_dtype(dtype: Any) -> tuple[np.dtype[Any], tuple[int, ...]]:
    """The element dtype NumPy would build for ``dtype``, and the dimensions a subarray dtype
    adds (``('f4', (2, 3))`` gives ``float32`` and ``(2, 3)``)."""
    try:
        return _RESOLVED[dtype]
    except (KeyError, TypeError):  # TypeError: an unhashable dtype description
        pass
    dt = as_dtype(dtype)
    sub: tuple[int, ...] = ()
    if dt.subdtype is not None:
        base, sub = dt.subdtype
        dt = as_dtype(base)
    if dt.itemsize == 0 and dt.kind in "SU":  # 'S0', 'U0', 'S', 'U': one character, as NumPy makes them
        dt = np.dtype(dt.str[:2] + "1")
    resolved: tuple[np.dtype[Any], tuple[int, ...]] = (dt, tuple(sub))
    try:
        if len(_RESOLVED) < 1024:
            _RESOLVED[dtype] = resolved
    except TypeError:
        pass
    return resolved


def normalize(shape: ShapeLike, dtype: Any) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """Shape and dtype as NumPy would build them: a subarray dtype adds its dimensions."""
    dt, sub = resolve_dtype(dtype)
    if shape.__class__ is int and shape >= 0 and not sub:  # the common case, kept cheap
        return (shape,), dt
    return as_shape(as_shape(shape) + sub), dt


def contiguous_strides(shape: tuple[int, ...], itemsize: int, order: str) -> tuple[int, ...]:
    """Byte strides of a C- or Fortran-contiguous array."""
    strides, step = [], itemsize
    dims = shape if order == "F" else reversed(shape)
    for d in dims:
        strides.append(step)
        step *= max(d, 1)
    return tuple(strides) if order == "F" else tuple(reversed(strides))


def check_order(order: str) -> str:
    if order not in ("C", "F"):
        raise ValueError(f"order {order!r} is not 'C' or 'F'")
    return order


def nbytes_of(shape: tuple[int, ...], dtype: np.dtype[Any]) -> int:
    """Bytes an array of ``shape`` and ``dtype`` needs, refusing sizes no process could address."""
    n = dtype.itemsize
    for d in shape:
        n *= d  # Python ints: no overflow here, the limit is checked below
    if n > MAX_NBYTES:
        raise ValueError(f"shape {shape} of dtype {dtype} needs {n} bytes, more than the maximum {MAX_NBYTES}")
    return n


def as_alignment(align: AlignLike) -> int:
    """An alignment in bytes: a power of two up to 1 GiB, or ``'page'`` or ``'huge'``."""
    if isinstance(align, str):
        if align == "page":
            return PAGE_SIZE
        if align == "huge":
            return HUGE_PAGE_SIZE
        raise ValueError(f"align {align!r} is not a power of two, 'page' or 'huge'")
    if isinstance(align, bool):
        raise TypeError(f"align {align!r} is not an int")
    try:
        a = operator.index(align)
    except TypeError:
        raise TypeError(f"align {align!r} is not an int, 'page' or 'huge'") from None
    if a <= 0 or a & (a - 1) or a > MAX_ALIGNMENT:
        raise ValueError(f"align {align!r} is not a power of two between 1 and {MAX_ALIGNMENT}")
    return a


def array_interface(address: int, shape: tuple[int, ...], dtype: np.dtype[Any],
                    strides: tuple[int, ...] | None, readonly: bool) -> dict[str, Any]:
    """An ``__array_interface__`` (version 3) dict. Structured dtypes carry ``descr`` too,
    which is as much as the protocol can say (it cannot express padding: see ``view_of``)."""
    iface: dict[str, Any] = {"version": 3, "data": (address, readonly), "shape": shape, "typestr": dtype.str,
                             "strides": strides}
    if dtype.names is not None:
        iface["descr"] = dtype.descr
    return iface


def exact_dtype(arr: NDArray[Any], dtype: np.dtype[Any]) -> NDArray[Any]:
    """``arr`` reinterpreted with ``dtype`` if the interface could not carry it exactly
    (structured dtypes with padding, titles or alignment). The view's base stays the owner."""
    return arr if arr.dtype == dtype and dtype.names is None else arr.view(dtype)


def byte_span(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> tuple[int, int]:
    """Lowest and one-past-highest byte offsets an array's elements reach from its data pointer."""
    lo, hi = 0, itemsize
    for n, s in zip(shape, strides):
        if n == 0:
            return 0, 0
        if s < 0:
            lo += (n - 1) * s
        else:
            hi += (n - 1) * s
    return lo, hi

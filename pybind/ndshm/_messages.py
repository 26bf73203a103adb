"""The message structs of the queue and broadcast rings, and the descriptions they carry.

A message (``ndshm_qmsg_t``) names a slot and the array in it: typestr, ndim, shape, nbytes. This
module holds the per-thread pool of message structs, the typestr <-> dtype caches, and the loan
plans (a (shape, dtype) argument made ready to write into a message once, then reused).
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from . import _dtype
from ._errors import CorruptSegmentError
from ._lib import ffi, lib

TYPESTR_MAX, MAXDIM = lib.NDSHM_TYPESTR_MAX, lib.NDSHM_MAXDIM
MAX_NBYTES = sys.maxsize
_QMSG_P = ffi.typeof("ndshm_qmsg_t *")
_tls = threading.local()

# A message struct is allocated as int64 words, so that its nbytes, the first 8 bytes of its
# typestr (the whole typestr for the usual ones, zero-padded by the C side) and shape[0] read as
# plain integers: (m, w) with m the struct and w its words. A receive reads its typestr as one word
# instead of ffi.string: ~0.1 us less per message (bench_queue's "ndshm put+receive", 64 B).
W_NBYTES = ffi.offsetof("ndshm_qmsg_t", "nbytes") // 8
W_TYPESTR = ffi.offsetof("ndshm_qmsg_t", "typestr") // 8
W_SHAPE0 = ffi.offsetof("ndshm_qmsg_t", "shape") // 8
_WORDS = (ffi.sizeof("ndshm_qmsg_t") + 7) // 8
assert ffi.offsetof("ndshm_qmsg_t", "typestr") % 8 == 0 and ffi.offsetof("ndshm_qmsg_t", "shape") % 8 == 0


if TYPE_CHECKING:
    MsgWords = tuple[Any, Any]  # (ndshm_qmsg_t *, its int64 words)
    # a loan plan: (dims, dtype, nbytes, typestr bytes, typestr word or None), see PLANS
    Plan = tuple[tuple[int, ...], np.dtype[Any], int, bytes, Optional[int]]
    # get's guess: (shape, dtype, nbytes, typestr word, ndim), see Queue._remember
    Guess = tuple[tuple[int, ...], np.dtype[Any], int, int, int]


def new_msg() -> MsgWords:
    w = ffi.new("int64_t[]", _WORDS)
    return ffi.cast(_QMSG_P, w), w


def thread_msg() -> MsgWords:
    try:
        return _tls.msg  # type: ignore[no-any-return]  # threading.local attributes are untyped
    except AttributeError:
        _tls.msg = mw = new_msg()
        return mw


def pop_msg() -> MsgWords:
    """A message struct for one loan or receive: reused from this thread's pool (at most 8), ~0.2 us
    less than ffi.new ("ndshm loan+receive", 64 B)."""
    try:
        return _tls.pool.pop()  # type: ignore[no-any-return]  # threading.local attributes are untyped
    except (AttributeError, IndexError):
        return new_msg()


def push_msg(m: MsgWords) -> None:
    try:
        pool = _tls.pool
    except AttributeError:
        pool = _tls.pool = []
    if len(pool) < 8:
        pool.append(m)


_TS_DTYPE: dict[bytes, np.dtype[Any]] = {}   # typestr bytes -> dtype
_KEY_DTYPE: dict[int, np.dtype[Any]] = {}  # first 8 bytes of a typestr shorter than 8, as the native int64 -> dtype


_typestr_bytes = _dtype.typestr_bytes  # dtype -> typestr bytes, from the one dtype -> typestr cache


def dtype_of(ts: bytes) -> np.dtype[Any]:
    try:
        return _TS_DTYPE[ts]
    except KeyError:
        try:
            dt = np.dtype(ts.decode("ascii"))
        except Exception:  # whatever the bytes make NumPy raise (RecursionError, MemoryError, a warning as error)
            raise CorruptSegmentError(f"queue message has an unknown typestr {ts!r}") from None
        if dt.hasobject:  # never build Python objects out of bytes from shared memory
            raise CorruptSegmentError(f"queue message has an object typestr {ts!r}")
        if dt.subdtype is not None:  # no array has one: NumPy would move it into the shape
            raise CorruptSegmentError(f"queue message has a subarray typestr {ts!r}")
        if len(_TS_DTYPE) < 1024:
            _TS_DTYPE[ts] = dt
        return dt


# (shape, dtype) argument -> (dims, dtype, nbytes, typestr bytes, typestr word or None): the loan
# fast path, ~0.6 us less per loan than planning again ("ndshm loan+receive", 64 B). The typestr word (see W_TYPESTR) is set for 1-D messages whose typestr is shorter
# than 8 bytes, on little-endian machines: their description is written as three int64 words.
PLANS: dict[tuple[Any, Any], Plan] = {}
W_NDIM = ffi.offsetof("ndshm_qmsg_t", "ndim") // 8  # ndim (uint32) and the padding after it
WORD_DESC = (sys.byteorder == "little" and ffi.offsetof("ndshm_qmsg_t", "ndim") == 8 * W_NDIM
              and ffi.offsetof("ndshm_qmsg_t", "shape") == 8 * (W_NDIM + 1) == 8 * W_SHAPE0)


def make_plan(shape: Any, dtype: Any) -> Plan:
    dims, dt = _dtype.normalize(shape, dtype)
    ts = _typestr_bytes(dt)
    word = None
    if WORD_DESC and len(dims) == 1 and len(ts) < 8:
        word = int.from_bytes(ts.ljust(8, b"\0"), "little", signed=True)
    plan = (dims, dt, _dtype.nbytes_of(dims, dt), ts, word)
    try:
        if len(PLANS) < 256:
            PLANS[(shape, dtype)] = plan
    except TypeError:  # unhashable shape or dtype argument
        pass
    return plan



def write_desc(mw: MsgWords, dims: tuple[int, ...], ts: bytes, word: Optional[int]) -> None:
    """Describe, in message ``mw``, the array a loan writes (a plan's dims, typestr and word)."""
    if word is not None:  # 1-D, short typestr: typestr, ndim and shape[0] as three words
        w = mw[1]
        w[W_TYPESTR] = word
        w[W_NDIM] = 1
        w[W_SHAPE0] = dims[0]
    else:
        m = mw[0]
        m.typestr = ts
        nd = len(dims)
        m.ndim = nd
        if nd:
            m.shape[0:nd] = dims


def describe(m: Any, w: Any, sdt: Optional[np.dtype[Any]]) -> tuple[np.dtype[Any], tuple[int, ...]]:
    """(dtype, shape) of message ``m`` (``w`` its words), refusing what no publisher wrote: an
    unknown or object typestr, a negative dimension, an item count NumPy cannot hold, items of 0
    bytes that are not void (NumPy would make them 1-character strings), or nbytes that disagree. ``sdt``: the dtype of a typed ring (a structured dtype travels as ``|V<n>``)."""
    key = w[W_TYPESTR]
    try:
        dt = _KEY_DTYPE[key]
    except KeyError:
        ts = ffi.string(m.typestr)
        try:
            dt = _TS_DTYPE[ts]
        except KeyError:
            dt = dtype_of(ts)
        if len(ts) < 8 and len(_KEY_DTYPE) < 1024 and key == int.from_bytes(ts.ljust(8, b"\0"), sys.byteorder,
                                                                              signed=True):
            _KEY_DTYPE[key] = dt
    ndim = m.ndim
    if ndim == 1:
        d = w[W_SHAPE0]
        shape = (d,)
        n = dt.itemsize * d
        if d < 0:
            raise CorruptSegmentError(f"queue message has a negative dimension in shape {shape}")
    else:
        shape = tuple(m.shape[0:ndim]) if ndim else ()
        count = 1
        for d in shape:
            if d < 0:
                raise CorruptSegmentError(f"queue message has a negative dimension in shape {shape}")
            count *= d
        if count > MAX_NBYTES:  # zero-size items: NumPy cannot count that many
            raise CorruptSegmentError(f"queue message of shape {shape} has more items than NumPy can count")
        n = dt.itemsize * count
    if not n and dt.kind != "V" and (shape[0] if ndim == 1 else count):
        # NumPy makes an 'S0'/'U0' array of one character per item: memory nobody wrote
        raise CorruptSegmentError(f"queue message of shape {shape} has items of dtype {dt}, of 0 bytes")
    if sdt is not None and sdt.names is not None and dt.kind == "V" and dt.itemsize == sdt.itemsize:
        dt = sdt
    if n != w[W_NBYTES] or n < 0:
        raise CorruptSegmentError(f"queue message of shape {shape} and dtype {dt} should have {n} bytes, "
                                  f"not {m.nbytes}")
    return dt, shape

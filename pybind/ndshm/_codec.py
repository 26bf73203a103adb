"""What a segment header's variable bytes mean: the user metadata (bytes verbatim, or JSON) and
the dtype (typestr, or NumPy's descr for structured dtypes). Everything decoded here comes from
shared memory any local user may have written: every failure is a CorruptSegmentError naming the
segment, whatever the bytes provoke."""

from __future__ import annotations

import ast
import json
from typing import Any, Optional

import numpy as np
from numpy.lib import format as _npformat

from . import _dtype
from ._errors import CorruptSegmentError
from ._lib import lib

# (typestr bytes, descr bytes) -> (dtype, its __array_interface__ typestr, whether a view to the
# dtype is needed after np.asarray): decoding a dtype costs 1-30 us, a lookup 0.05 us. Bounded;
# bench row "Attach latency: ndshm (mapping kept: the default)".
DTYPES: dict[tuple[bytes, bytes], tuple[np.dtype, str, bool]] = {}


def encode_meta(meta: Any) -> bytes:
    if meta is None:
        return b""
    if isinstance(meta, (bytes, bytearray, memoryview)):
        data = b"B" + bytes(meta)
    else:
        try:
            data = b"J" + json.dumps(meta, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            raise TypeError(f"meta {meta!r:.80} is neither bytes nor JSON-serialisable: {exc}") from None
    if len(data) > lib.NDSHM_META_MAX:
        raise ValueError(f"meta takes {len(data) - 1} bytes; at most {lib.NDSHM_META_MAX - 1} fit")
    return data


def decode_meta(data: bytes, where: Optional[str] = None) -> Any:
    """The metadata a header holds. Whatever its bytes provoke while decoding (bad UTF-8, bad JSON,
    JSON nested deeper than the interpreter recurses, no memory) is a CorruptSegmentError naming
    the segment, so one hostile file cannot stop a listing or a gc of the others."""
    if not data:
        return None
    tag, body = data[:1], data[1:]
    if tag == b"B":
        return body
    if tag == b"J":
        try:
            return json.loads(body.decode())
        except Exception as exc:  # anything a hostile header can provoke (RecursionError, MemoryError...)
            what = f"segment {where}" if where else "a segment"
            raise CorruptSegmentError(f"{what} has metadata that is not valid JSON: "
                                      f"{type(exc).__name__}: {str(exc):.200}") from None
    return bytes(data)  # written by another tool: hand back the raw bytes


def encode_dtype(dt: np.dtype) -> tuple[str, bytes]:
    if dt.names is None and dt.subdtype is None:
        return dt.str, b""
    descr = repr(_npformat.dtype_to_descr(dt)).encode()
    if len(descr) > lib.NDSHM_DESCR_MAX:
        raise ValueError(f"dtype {dt} has a description of {len(descr)} bytes; at most {lib.NDSHM_DESCR_MAX} fit")
    return f"|V{dt.itemsize}", descr


def decode_dtype(typestr: str, descr: bytes, itemsize: int, where: str) -> np.dtype:
    return lookup_dtype(typestr.encode("ascii", "replace"), descr, itemsize, where)[0]


def lookup_dtype(typestr: bytes, descr: bytes, itemsize: int, where: str) -> tuple[np.dtype, str, bool]:
    """The dtype a header describes (cached by (typestr, descr)), its interface typestr, and
    whether ``np.asarray`` of that typestr needs a ``.view(dtype)`` to become it."""
    key = (typestr, descr)
    entry = DTYPES.get(key)
    if entry is None:
        try:
            if descr:
                dt = _dtype.as_dtype(_npformat.descr_to_dtype(ast.literal_eval(descr.decode())))
            else:
                dt = _dtype.as_dtype(np.dtype(typestr.decode("ascii")))
            ts = _dtype.typestr_of(dt)
            entry = (dt, ts, dt.names is not None or np.dtype(ts) != dt)
        except Exception as exc:  # anything a hostile header can provoke
            raise CorruptSegmentError(f"segment {where} has an unusable dtype "
                                      f"{typestr.decode('ascii', 'replace')!r}: {type(exc).__name__}: "
                                      f"{str(exc):.200}") from None
        if len(DTYPES) < 256:
            DTYPES[key] = entry
    if entry[0].itemsize != itemsize:
        dt = entry[0]
        raise CorruptSegmentError(f"segment {where}: dtype {dt} has itemsize {dt.itemsize}, header says {itemsize}")
    return entry

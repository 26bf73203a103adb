"""Hostile but consistently checksummed segment headers, planted as files in a private directory:
attach refuses them with a CorruptSegmentError naming the bad field (never a bare NumPy error)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import ndshm
from test_segment_mp import _reseal  # the header checksum (FNV-1a 64), as header.c documents it

# offsets in the fixed header (csrc/header.c)
_NDIM, _ITEMSIZE, _TYPESTR, _SHAPE, _STRIDES = 28, 56, 80, 112, 368


@pytest.fixture
def planted(tmp_path, unique_name):
    """A function that writes a segment ``unique_name`` in a private directory, its header
    changed to the given layout (zero strides: the extent is one item) and resealed."""
    ndshm.Segment.create(unique_name, 1, "f8", dir=str(tmp_path), persist=True).close()
    path = tmp_path / f"ndshm.{unique_name}"
    good = path.read_bytes()

    def plant(typestr: str, itemsize: int, shape: tuple) -> None:
        bad = bytearray(good)
        bad[_NDIM:_NDIM + 4] = len(shape).to_bytes(4, "little")
        bad[_ITEMSIZE:_ITEMSIZE + 8] = itemsize.to_bytes(8, "little")
        bad[_TYPESTR:_TYPESTR + 32] = typestr.encode().ljust(32, b"\0")
        bad[_SHAPE:_STRIDES + 256] = bytes(512)
        for i, n in enumerate(shape):
            bad[_SHAPE + 8 * i:_SHAPE + 8 * i + 8] = n.to_bytes(8, "little")
        _reseal(bad)
        os.unlink(path)  # a new file: a mapping this process may cache is not reused
        path.write_bytes(bytes(bad))

    return plant


@pytest.mark.parametrize("typestr, itemsize, shape, field", [
    ("|u1", 1, (1 << 62, 1 << 62), "shape[1] = 4611686018427387904"),
    ("|u1", 1, (1 << 32, 1 << 32), "shape[1] = 4294967296"),
    ("<f8", 8, (1 << 60,), "shape[0] = 1152921504606846976"),   # 2**63 bytes
    ("|u1", 1, (0, 1 << 62, 1 << 62), "shape[2]"),              # NumPy refuses it despite the 0
    ("|V0", 0, (1 << 62, 1 << 62), "shape[1]"),                 # NumPy would give it size 0
])
def test_shape_numpy_cannot_represent_is_corrupt(planted, tmp_path, unique_name, typestr, itemsize, shape, field):
    planted(typestr, itemsize, shape)
    with pytest.raises(ndshm.CorruptSegmentError, match=r"too big") as ei:
        ndshm.attach(unique_name, dir=str(tmp_path))
    assert field in str(ei.value)
    with pytest.raises(ndshm.CorruptSegmentError, match=r"too big"):
        ndshm.Segment.attach(unique_name, dir=str(tmp_path))
    rec, = [r for r in ndshm.list(str(tmp_path)) if r.name == unique_name]
    assert rec.status == "corrupt"


def test_largest_shapes_numpy_takes_still_attach(planted, tmp_path, unique_name):
    planted("|u1", 1, ((1 << 63) - 1,))  # exactly the limit, one byte of data thanks to the zero stride
    arr = ndshm.attach(unique_name, dir=str(tmp_path))
    assert arr.shape == ((1 << 63) - 1,) and arr.strides == (0,) and arr.dtype == np.uint8
    del arr
    planted("<f8", 8, (1 << 30, 1 << 29))  # 2**62 bytes
    arr = ndshm.attach(unique_name, dir=str(tmp_path))
    assert arr.shape == (1 << 30, 1 << 29) and arr.size == 1 << 59
    del arr


def test_create_refuses_a_shape_whose_element_count_overflows(unique_name):
    # a zero itemsize makes every stride 0: only the element count can tell
    with pytest.raises(ValueError, match=r"shape\[1\] = 4611686018427387904"):
        ndshm.create(unique_name, (1 << 62, 1 << 62), "V0")
    assert not ndshm.exists(unique_name)

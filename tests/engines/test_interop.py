"""Zero-copy interop with PyTorch, OpenCV and DLPack: shared addresses and write-through, not just "it runs".

torch and cv2 come with `make venv`: missing, a test skips locally and fails under CI
(conftest.skip_or_fail); the PyPy and oldest-NumPy runs have neither and skip them saying so
(optional_deps.require).
"""

from __future__ import annotations

import weakref

import numpy as np
import pytest

import ndshm
from conftest import PYPY, collect, run_python
from optional_deps import require as requires


def addr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


# ---------------------------------------------------------------- DLPack (NumPy only: always runs)

def writable_dlpack(a: np.ndarray) -> np.ndarray:
    """np.from_dlpack(a); NumPy before 2.1 marks DLPack imports read-only, so those only read."""
    d = np.from_dlpack(a)
    if not d.flags.writeable and tuple(int(x) for x in np.__version__.split(".")[:2]) >= (2, 1):
        pytest.fail(f"NumPy {np.__version__} made a read-only array from a writable DLPack export")
    return d


def test_numpy_from_dlpack_shares_memory():
    a = ndshm.zeros((8, 16), np.float32, align=4096)
    d = writable_dlpack(a)
    assert addr(d) == addr(a) and d.shape == a.shape and d.dtype == a.dtype
    a[0, 0] = -1.0
    assert d[0, 0] == -1.0
    if d.flags.writeable:
        d[3, 4] = 5.0
        assert a[3, 4] == 5.0


def test_numpy_from_dlpack_of_a_slice_keeps_offset_and_strides():
    a = ndshm.zeros((10, 10), np.float64)
    s = a[2:8:2, 1:9]
    d = writable_dlpack(s)
    assert addr(d) == addr(s) and d.strides == s.strides
    s[...] = 3
    assert d.sum() == 3 * d.size and a.sum() == 3 * d.size


def test_dlpack_keeps_the_owner_alive():
    a = ndshm.full((1000,), 2.5, np.float32)
    owner = weakref.ref(a.base)  # the ndshm.Buffer that owns the memory
    d = np.from_dlpack(a)
    del a
    collect()
    assert owner() is not None, "the DLPack import lost the memory's owner"
    ndshm.full((1000,), 7.0, np.float32)  # would reuse freed memory
    assert float(d.sum()) == 2500.0
    del d
    for _ in range(50 if PYPY else 1):  # PyPy runs the capsule's and the owner's finalizers over several GCs
        collect()
        if owner() is None:
            break
    assert owner() is None, "the owner outlived its last view"


def test_segment_array_through_dlpack():
    a = ndshm.create(None, (64, 64), np.int32)
    d = writable_dlpack(a)
    again = ndshm.attach(ndshm.segment_of(a).name)
    again[1] = 9  # a write through another mapping of the segment shows in the DLPack import
    assert int(d[1].sum()) == 9 * 64
    if d.flags.writeable:
        d[2] = 4
        assert int(again[2].sum()) == 4 * 64


# ---------------------------------------------------------------- PyTorch

def test_torch_from_numpy_shares_and_writes_through():
    torch = requires("torch")
    a = ndshm.zeros((32, 32), np.float32, align=64)
    t = torch.from_numpy(a)
    assert t.data_ptr() == addr(a)
    t.add_(2)
    assert float(a.sum()) == 2 * 32 * 32
    a[5, 5] = 100
    assert t[5, 5].item() == 100
    assert addr(t.numpy()) == addr(a)  # and back again, still the same bytes


def test_torch_from_dlpack_shares_and_writes_through():
    torch = requires("torch")
    a = ndshm.zeros((4, 8), np.float64)
    t = torch.from_dlpack(a)
    assert t.data_ptr() == addr(a)
    t[1, 2] = 7
    assert a[1, 2] == 7
    back = np.from_dlpack(t)
    assert addr(back) == addr(a)


def test_torch_out_into_segment_is_read_zero_copy_in_another_process():
    requires("torch")
    a = ndshm.create(None, (16, 16), np.float32)
    name = ndshm.segment_of(a).name
    run_python(f"""
        import numpy as np, torch, ndshm
        out = ndshm.attach({name!r})
        t = torch.from_numpy(out)
        assert t.data_ptr() == out.ctypes.data
        torch.mm(torch.ones(16, 16), torch.eye(16) * 3, out=t)   # written in place, in shared memory
    """, timeout=120)
    t = __import__("torch").from_numpy(a)
    assert t.data_ptr() == addr(a)
    assert float(t.sum()) == 3 * 16 * 16


# ---------------------------------------------------------------- OpenCV

def test_cv2_dst_writes_into_ndshm_array():
    cv2 = requires("cv2")
    src = ndshm.empty((60, 80, 3), np.uint8)
    src[...] = (10, 20, 30)
    dst = ndshm.empty((60, 80), np.uint8, align=4096)
    ret = cv2.cvtColor(src, cv2.COLOR_BGR2GRAY, dst=dst)
    assert addr(ret) == addr(dst)
    expect = cv2.cvtColor(np.ascontiguousarray(src), cv2.COLOR_BGR2GRAY)
    assert addr(expect) != addr(dst)  # without dst=, OpenCV allocates a new buffer
    assert np.array_equal(dst, expect) and dst[0, 0] != 0


def test_cv2_reads_an_ndshm_array_in_place_and_blurs_into_another():
    cv2 = requires("cv2")
    src = ndshm.zeros((64, 64), np.float32)
    src[32, 32] = 1.0
    dst = ndshm.zeros((64, 64), np.float32)
    ret = cv2.GaussianBlur(src, (5, 5), 0, dst=dst)
    assert addr(ret) == addr(dst)
    assert abs(float(dst.sum()) - 1.0) < 1e-5 and dst[32, 32] < 1.0 and dst[31, 32] > 0


def test_cv2_result_in_segment_seen_by_another_process():
    requires("cv2")
    img = ndshm.create(None, (40, 50, 3), np.uint8)
    img[..., 2] = 200
    gray = ndshm.create(None, (40, 50), np.uint8)
    run_python(f"""
        import cv2, ndshm
        img, gray = ndshm.attach({ndshm.segment_of(img).name!r}), ndshm.attach({ndshm.segment_of(gray).name!r})
        ret = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY, dst=gray)
        assert ret.ctypes.data == gray.ctypes.data
    """, timeout=120)
    assert gray.min() == gray.max() == round(0.299 * 200)  # the child's result, visible here

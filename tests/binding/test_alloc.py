"""Aligned allocation: constructors, dtypes, bad input, lifetime (proven with the C counters)."""

from __future__ import annotations

import ctypes
import mmap
import subprocess
import sys
import threading

import numpy as np
import pytest

import ndshm
from ndshm._lib import lib
from conftest import PYPY, child_env, collect

ALIGNS = [8, 16, 64, 256, 4096, "page", "huge", 1 << 20]

DTYPES = [
    np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
    np.float16, np.float32, np.float64, np.longdouble, np.complex64, np.complex128, np.clongdouble,
    "M8[ns]", "m8[s]", "S5", "U3", "V7", ">f8", "<i2",
    np.dtype([("a", "u1"), ("b", "<f8")], align=True),
    np.dtype([("a", "u1"), ("b", "<f8")]),
    np.dtype([("x", [("p", "<i4"), ("q", "<f4", (2,))]), ("y", "S3")]),
    np.dtype({"names": ["x", "y"], "formats": ["<i4", "<f4"], "offsets": [0, 8], "itemsize": 16}),
    np.dtype([(("title", "n"), "<i4")]),
]


def live() -> int:
    """Buffers alive in C, not counting small blocks cached for reuse."""
    collect()
    s = ndshm.stats()
    return s["live_buffers"] - s["cached_buffers"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("order", ["C", "F"])
def test_empty_matches_numpy_for_every_dtype(dtype, order):
    a = ndshm.empty((3, 4), dtype, order)
    ref = np.empty((3, 4), dtype, order)
    assert type(a) is np.ndarray
    assert a.dtype == ref.dtype and a.shape == ref.shape and a.strides == ref.strides
    assert a.flags.writeable and ndshm.is_aligned(a, 64)
    a[...] = np.ones((), ref.dtype) if ref.dtype.names is None else np.zeros((), ref.dtype)
    np.testing.assert_array_equal(a, np.full((3, 4), a.flat[0], ref.dtype))  # every element writable


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zeros_ones_full_contents(dtype):
    assert not ndshm.zeros((5, 2), dtype).tobytes().strip(b"\0")
    dt = np.dtype(dtype)
    if dt.names is None and dt.kind in "iufc":
        assert (ndshm.ones(7, dt) == 1).all()
        assert (ndshm.full((2, 2), 3, dt) == 3).all()


def test_subarray_dtype_adds_dimensions_like_numpy():
    a = ndshm.zeros(4, ("f4", (2, 3)))
    assert a.shape == np.zeros(4, ("f4", (2, 3))).shape == (4, 2, 3) and a.dtype == np.float32


@pytest.mark.parametrize("align", ALIGNS)
@pytest.mark.parametrize("nbytes", [0, 1, 64, 4097, 1 << 20, 40 << 20])
def test_alignment_of_every_size(align, nbytes):
    want = {"page": 4096, "huge": 2 << 20}.get(align, align)
    a = ndshm.empty(nbytes, np.uint8, align=align)
    assert a.ctypes.data % want == 0 and a.nbytes == nbytes
    a[:] = 7
    assert (a == 7).all()


def test_gigabyte_alignment():
    a = ndshm.empty(10, np.float64, align=1 << 30)
    assert a.ctypes.data % (1 << 30) == 0


def test_full_infers_dtype_and_like_functions_keep_layout():
    assert ndshm.full(3, 2.5).dtype == np.full(3, 2.5).dtype
    assert ndshm.full(3, 7).dtype == np.full(3, 7).dtype
    f = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    for like in (ndshm.empty_like(f), ndshm.zeros_like(f), ndshm.ones_like(f), ndshm.full_like(f, 5)):
        assert like.flags.f_contiguous and like.shape == (3, 4) and like.dtype == f.dtype
    assert ndshm.zeros_like(f, order="C").flags.c_contiguous
    assert ndshm.zeros_like(f, dtype=np.int8, shape=(2,)).dtype == np.int8
    assert (ndshm.full_like(f, 5) == 5).all() and (ndshm.ones_like(f) == 1).all()


def test_asaligned_copies_only_when_needed():
    src = ndshm.zeros(100, np.uint8, align=64)
    assert ndshm.asaligned(src, 64) is src
    mis = src[1:]
    assert not ndshm.is_aligned(mis, 64)
    out = ndshm.asaligned(mis, 64)
    assert out is not mis and ndshm.is_aligned(out, 64) and (out == mis).all()
    lst = ndshm.asaligned([1.0, 2.0], 4096)
    assert ndshm.is_aligned(lst, 4096) and lst.tolist() == [1.0, 2.0]


@pytest.mark.parametrize("call, exc, needle", [
    (lambda: ndshm.empty(-1), ValueError, "-1"),
    (lambda: ndshm.empty((2, -5)), ValueError, "-5"),
    (lambda: ndshm.empty((1 << 40, 1 << 40)), ValueError, "1099511627776"),
    (lambda: ndshm.empty(1 << 62, np.float64), ValueError, "4611686018427387904"),
    (lambda: ndshm.empty(3, align=3), ValueError, "align 3"),
    (lambda: ndshm.empty(3, align=0), ValueError, "align 0"),
    (lambda: ndshm.empty(3, align=1 << 31), ValueError, "2147483648"),
    (lambda: ndshm.empty(3, align="big"), ValueError, "big"),
    (lambda: ndshm.empty(3, align=True), TypeError, "True"),
    (lambda: ndshm.empty(3, align=4.0), TypeError, "4.0"),
    (lambda: ndshm.empty(3, "not-a-dtype"), TypeError, "not-a-dtype"),
    (lambda: ndshm.empty(3, object), TypeError, "object"),
    (lambda: ndshm.empty(3, [("a", "O")]), TypeError, "O"),
    (lambda: ndshm.empty(3, order="X"), ValueError, "X"),
    (lambda: ndshm.empty(2.5), TypeError, "2.5"),
    # ndshm's own limit (NDSHM_MAXDIM, NumPy 1.x's too), named by ndshm before NumPy sees the shape:
    (lambda: ndshm.empty((1,) * (lib.NDSHM_MAXDIM + 1)), ValueError, f"at most {lib.NDSHM_MAXDIM} are supported"),
    (lambda: ndshm.empty((np.int64(2), -1)), ValueError, "-1"),
    (lambda: ndshm.empty((True, 2)), TypeError, "True"),
    (lambda: ndshm.empty(False), TypeError, "False"),
    (lambda: ndshm.Buffer(-3), ValueError, "-3"),
    (lambda: ndshm.empty_like(np.zeros(2), order="Q"), ValueError, "Q"),
    (lambda: ndshm.empty(b"3"), TypeError, "b'3'"),  # NumPy refuses bytes, str and mappings too
    (lambda: ndshm.empty("3"), TypeError, "'3'"),
    (lambda: ndshm.empty({3: 1}), TypeError, "{3: 1}"),
    (lambda: ndshm.zeros((0, 2 ** 63)), ValueError, "9223372036854775808"),
])
def test_bad_arguments_name_the_value(call, exc, needle):
    before = live()
    with pytest.raises(exc) as info:
        call()
    assert needle in str(info.value)
    assert live() <= before  # nothing leaked (PyPy may still be finalizing earlier tests' buffers)


def test_numpy_integer_shapes_offsets_and_flexible_dtypes_like_numpy():
    assert ndshm.empty(np.int64(3)).shape == np.empty(np.int64(3)).shape == (3,)
    assert ndshm.zeros(np.array([2, 3])).shape == (2, 3) and ndshm.zeros(range(2, 4)).shape == (2, 3)
    b = ndshm.Buffer(16)
    assert b.asarray(offset=np.int64(4)).shape == (12,)
    for offset, exc in ((1.5, TypeError), (None, TypeError), (-1, ValueError), (17, ValueError)):
        with pytest.raises(exc, match=f"offset {offset}"):
            b.asarray(offset=offset)
    for d in ("S0", "U0", "S", "U", "V0"):  # a zero-size string becomes one character, as in NumPy
        assert ndshm.zeros(3, d).dtype == np.zeros(3, d).dtype and ndshm.empty(2, d).dtype == np.empty(2, d).dtype


def test_buffer_init_cannot_reallocate_under_its_views():
    b = ndshm.Buffer(1 << 20)
    v = b.asarray()
    with pytest.raises(RuntimeError, match="live buffer"):
        b.__init__(10)
    v[:] = 7  # the views' memory is untouched and still owned
    assert b.nbytes == 1 << 20 and int(v.sum()) == 7 << 20


def test_exhausted_address_space_is_memory_error():
    with pytest.raises(ndshm.OutOfMemoryError, match="cannot map 4611686018427387904 bytes") as info:
        ndshm.empty(1 << 62, np.uint8)
    assert isinstance(info.value, ndshm.NdshmError) and "4611686018427387904" in str(info.value)


@pytest.mark.mlock
def test_lock_refused_by_rlimit_names_it():
    # root ignores RLIMIT_MEMLOCK, so a real child process drops to an unprivileged user first.
    code = ("import os, ndshm\nif os.getuid() == 0:\n    os.setgid(65534); os.setuid(65534)\n"
            "try:\n    ndshm.empty(256 << 20, 'u1', lock=True)\n"
            "except OSError as e:\n    print('refused', e.errno, e)\nelse:\n    print('locked')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("refused") and "RLIMIT_MEMLOCK" in proc.stdout, proc.stdout


def test_the_dimension_limit_is_ndshms_and_reaches_it():
    assert lib.NDSHM_MAXDIM == 32
    a = ndshm.zeros((1,) * lib.NDSHM_MAXDIM, np.int8)
    assert a.ndim == lib.NDSHM_MAXDIM and a.shape == np.zeros((1,) * lib.NDSHM_MAXDIM).shape


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]


def resident_pages(a: np.ndarray) -> int:
    """How many of the pages under ``a`` are in RAM now (mincore), without touching them."""
    page = mmap.PAGESIZE
    start = a.ctypes.data // page * page
    n = (a.ctypes.data + a.nbytes - start + page - 1) // page
    vec = ctypes.create_string_buffer(n)
    if _libc.mincore(ctypes.c_void_p(start), n * page, vec) != 0:
        raise OSError(ctypes.get_errno(), "mincore")
    return sum(b & 1 for b in vec.raw)


def locked_kib() -> int:
    """VmLck of this process (/proc/self/status): memory it holds locked with mlock."""
    for line in open("/proc/self/status"):
        if line.startswith("VmLck:"):
            return int(line.split()[1])
    raise AssertionError("no VmLck in /proc/self/status")


@pytest.mark.parametrize("hugepages", [False, None])
def test_populate_makes_every_page_resident_before_first_touch(hugepages):
    n = 8 << 20
    pages = n // mmap.PAGESIZE
    plain = ndshm.empty(n, np.uint8, align="page", hugepages=hugepages)
    populated = ndshm.empty(n, np.uint8, align="page", hugepages=hugepages, populate=True)
    assert resident_pages(populated) == pages
    assert resident_pages(plain) < pages // 4, "without populate the fresh pages are not there yet"


@pytest.mark.mlock
def test_lock_locks_the_whole_buffer_in_ram():
    n = 8 << 20
    before = locked_kib()
    plain = ndshm.empty(n, np.uint8, align="page")
    assert locked_kib() == before
    locked = ndshm.empty(n, np.uint8, align="page", lock=True)
    assert locked_kib() - before >= n >> 10
    assert resident_pages(locked) == n // mmap.PAGESIZE
    del plain, locked
    collect()
    assert locked_kib() == before, "freeing a locked buffer unlocks it"


def test_options_allocate_usable_memory():
    for kw in ({"hugepages": True}, {"populate": True}, {"lock": True}, {"hugepages": True, "populate": True}):
        a = ndshm.zeros((4 << 20) // 8, np.float64, **kw)
        assert not a.any()
        a[::512] = 1.0
        assert a.sum() == len(a[::512])


def _anon_huge_kib(address: int) -> int:
    """AnonHugePages of the mapping holding ``address``, from /proc/self/smaps."""
    current = False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            current = lo <= address < hi
        elif current and head == "AnonHugePages:":
            return int(line.split()[1])
    raise AssertionError(f"no mapping holds 0x{address:x}")


@pytest.mark.system_wide  # needs free huge pages, which another test's reservation takes
def test_large_buffers_get_transparent_huge_pages_like_numpy():
    mode = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    if "[madvise]" not in mode:
        pytest.fail(f"this test needs THP in madvise mode, the kernel says {mode.strip()!r}")
    # Fresh mappings (40 MiB is above the heap threshold): heap blocks may reuse 4 KiB pages.
    auto = ndshm.zeros(40 << 20, np.uint8)  # advised by default
    off = ndshm.zeros(40 << 20, np.uint8, hugepages=False)
    small = ndshm.zeros(3 << 20, np.uint8, align="page")  # below 4 MiB: not advised by default
    forced = ndshm.zeros(3 << 20, np.uint8, align="huge", hugepages=True)
    for a in (auto, off, small, forced):
        a[::4096] = 1  # first touch
    assert _anon_huge_kib(auto.ctypes.data) >= 8192
    assert _anon_huge_kib(forced.ctypes.data) >= 2048
    assert _anon_huge_kib(off.ctypes.data) == 0 and _anon_huge_kib(small.ctypes.data) == 0


def test_buffer_interface_and_memoryview():
    buf = ndshm.Buffer(64, align=4096)
    iface = buf.__array_interface__
    assert iface["version"] == 3 and iface["data"] == (buf.address, False) and iface["shape"] == (64,)
    assert iface["typestr"] == "|u1" and buf.address % 4096 == 0 and buf.nbytes == 64 and buf.alignment == 4096
    mv = buf.memoryview()
    assert mv.nbytes == 64 and not mv.readonly
    mv[:5] = b"hello"
    assert bytes(mv[:5]) == b"hello" and np.asarray(buf)[:5].tobytes() == b"hello"
    x = buf.asarray((2, 2), np.float64, offset=32)
    x[...] = 1.5
    assert np.frombuffer(bytes(mv[32:]), np.float64).tolist() == [1.5] * 4
    with pytest.raises(ValueError, match="needs 40 bytes"):
        buf.asarray(5, np.float64, offset=32)
    with pytest.raises(ValueError, match="offset 65"):
        buf.asarray(offset=65)


def test_buffer_readinto(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * 16)
    buf = ndshm.Buffer(4096, align="page")
    with open(path, "rb", buffering=0) as f:
        assert f.readinto(buf.memoryview()) == 4096
    assert np.asarray(buf)[:256].tolist() == list(range(256))


def test_memory_is_freed_exactly_once_when_the_last_view_dies():
    base = live()
    a = ndshm.zeros((100, 100))
    b = a[10:20, ::3]  # a slice
    c = b.T[::2, 1:]  # a view of a view
    d = a.view(np.uint8)
    assert live() == base + 1
    owner = a.base
    assert isinstance(owner, ndshm.Buffer)
    del a, owner
    assert live() == base + 1  # b, c, d still hold it
    b[...] = 3.0
    assert d.view(np.float64).reshape(100, 100)[10, 0] == 3.0
    del b, c
    assert live() == base + 1
    del d
    assert live() == base  # freed, and only once (a second free would underflow the counter)


def test_structured_views_keep_owner():
    base = live()
    dt = np.dtype([("a", "u1"), ("b", "<f8")], align=True)
    a = ndshm.zeros(10, dt)
    field = a["b"]
    del a
    assert live() == base + 1
    field[:] = 2.0
    del field
    assert live() == base


def test_close_never_invalidates_views():
    base = live()
    with ndshm.Buffer(1024) as buf:
        view = buf.asarray(128, np.float64)
        view[:] = 4.0
    assert buf.closed
    with pytest.raises(ValueError, match="closed"):
        buf.asarray()
    assert np.asarray(view).sum() == 512.0  # still valid memory
    del buf
    assert live() == base + 1
    del view
    assert live() == base


def test_threads_allocate_concurrently():
    base = live()
    errors = []

    def work():
        try:
            for i in range(300):
                a = ndshm.empty(i % 50 + 1, np.float32, align=1 << (i % 13))
                a[:] = i
                assert (a == i).all() and ndshm.is_aligned(a, 1 << (i % 13))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert live() == base


def test_small_blocks_are_reused_and_freed_at_drop():
    from ndshm import _buffer

    _buffer._drop_cache()
    collect()
    c_live = ndshm.stats()["live_buffers"]
    a = ndshm.zeros(10, np.float32)
    addr = a.ctypes.data
    a[:] = 9
    del a
    collect()
    assert ndshm.stats()["cached_buffers"] == (0 if PYPY else 1)  # CPython only: see _buffer._SMALL
    b = ndshm.zeros(12, np.float32)  # same 64-byte class: the cached block, zeroed again
    assert not b.any()
    if not PYPY:
        assert b.ctypes.data == addr
    c = ndshm.empty(3, np.uint8, align=4096)  # page-aligned: never from the cache
    assert c.ctypes.data % 4096 == 0
    del b, c
    collect()
    _buffer._drop_cache()
    collect()
    assert ndshm.stats()["cached_buffers"] == 0 and ndshm.stats()["live_buffers"] == c_live


@pytest.mark.skipif(not PYPY, reason="PyPy only: memory pressure hint for the GC")
def test_pypy_collects_large_buffers():
    base = live()
    for _ in range(50):
        ndshm.zeros(8 << 20, np.uint8)
    assert live() == base

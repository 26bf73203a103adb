"""Queue and broadcast rings under hostile message descriptors (issue 16): a descriptor that would
make NumPy hand out memory nobody wrote (a zero-size string dtype with a non-zero count: NumPy
turns ``S0``/``U0`` into one character per item) is refused, NumPy's own errors for impossible
shapes are a CorruptSegmentError on every read path, and a bounded fuzz of descriptors
(typestr x shape x nbytes x ndim) never returns an array holding a byte the publisher did not
write."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

import ndshm
from ndshm._lib import ffi, lib

# (typestr, shape, nbytes): an item count with items of 0 bytes that NumPy would make 1 or 4 bytes
# each (S0/U0 and their short spellings), so a copy of 0 bytes would leave the whole array unwritten
LEAKS = [(b"|S0", [100000], 0), (b"S", [4096], 0), (b"<U0", [1000], 0), (b"U", [3, 5], 0)]
# shapes NumPy cannot make an array of (its ValueError or MemoryError, never ours)
IMPOSSIBLE = [(b"<f8", [0, 2 ** 61], 0), (b"|u1", [0, 2 ** 62, 4], 0), (b"<U0", [2 ** 33], 0)]


def _put_raw(put, h, typestr: bytes, shape: list, nbytes: int, fill: int = 0xA5) -> int:
    data = ffi.new("char[]", bytes([fill]) * max(nbytes, 1))
    c_shape = ffi.new("int64_t[]", shape or [0])
    return put(h, data, nbytes, typestr, len(shape), c_shape, 1.0)


def _read(ring, sub, how: str):
    if how == "get":
        return (sub or ring).get(timeout=1)
    if how == "get_many":
        return ring.get_many(4, timeout=1)
    with (sub or ring).receive(timeout=1) as view:
        # copying zero-size items still visits each (2**62 of them: for ever): nothing to copy
        return np.array(view) if view.dtype.itemsize else np.empty(0, view.dtype)


@pytest.mark.parametrize("ts, shape, nbytes", LEAKS + IMPOSSIBLE, ids=lambda v: repr(v))
@pytest.mark.parametrize("how", ["get", "get_many", "receive"])
def test_queue_refuses_descriptors_numpy_cannot_fill(unique_name, ts, shape, nbytes, how):
    """Queue.get returned 100,000 bytes of the consumer's own heap for a '|S0' message of shape
    (100000,) and 0 bytes, and let NumPy's ValueError/MemoryError through for impossible shapes."""
    with ndshm.Queue(unique_name, slots=4, slot_bytes=64) as q:
        for warm in (False, True):  # get() without, then with, a guess from an earlier message
            if warm:
                q.put(np.arange(4, dtype=np.uint64))
                q.get(timeout=1)
            assert _put_raw(lib.ndshm_queue_put, q._handle, ts, shape, nbytes) == 0
            q.put(np.arange(3))  # a good message behind is still delivered
            with pytest.raises(ndshm.CorruptSegmentError):
                _read(q, None, how)
            assert q.get(timeout=1).tolist() == [0, 1, 2]
            assert q.empty()


@pytest.mark.parametrize("ts, shape, nbytes", LEAKS + IMPOSSIBLE, ids=lambda v: repr(v))
@pytest.mark.parametrize("how", ["get", "receive"])
def test_broadcast_refuses_descriptors_numpy_cannot_fill(unique_name, ts, shape, nbytes, how):
    with ndshm.Broadcast(unique_name, slots=4, slot_bytes=64) as b:
        sub = b.subscribe()
        assert _put_raw(lib.ndshm_bcast_put, b._handle, ts, shape, nbytes) == 0
        b.put(np.arange(3))
        with pytest.raises(ndshm.CorruptSegmentError):
            _read(b, sub, how)
        assert sub.get(timeout=1).tolist() == [0, 1, 2]


def test_the_issue_reproducer_on_the_ring_file(tmp_path):
    """The issue's own steps: slot 0's descriptor rewritten in the file (nbytes 0, '|S0', shape[0]
    100000) after a put; the consumer's get must refuse it, not return its heap."""
    d = str(tmp_path)
    with ndshm.Queue("r", slots=4, slot_bytes=64, dir=d) as q:
        q.put(np.arange(4, dtype=np.uint64))
        with q.receive() as v:  # slot 0's data, to find its header in the file (the ring header's size varies)
            data = v.__array_interface__["data"][0]
        q.put(np.arange(4, dtype=np.uint64))  # again: position 1 is slot 1, so write position 4's way round
        q.get()
        for _ in range(2):
            q.put(np.arange(4, dtype=np.uint64))
            q.get()
        q.put(np.arange(4, dtype=np.uint64))  # position 4: slot 0 again, published
        # slot 0's state word (320 bytes before its data), in the file: the segment's data starts at 4096
        so = 4096 + (data - 320 - q.ring_address)
        with open(f"{d}/ndshm.r", "r+b") as f:
            f.seek(so + 8)
            assert int.from_bytes(f.read(8), "little") == 32  # the descriptor is where the issue says
            f.seek(so + 8)
            f.write(bytes(8))
            f.seek(so + 24)
            f.write(b"|S0".ljust(32, b"\0"))
            f.seek(so + 56)
            f.write((100000).to_bytes(8, "little"))
        with pytest.raises(ndshm.CorruptSegmentError, match="0 bytes"):
            q.get(timeout=1)
        assert q.empty()


# ---- a bounded fuzz of descriptors --------------------------------------------------------------

TYPESTRS = [b"|S0", b"S", b"<U0", b"U", b"|V0", b"V", b"|S1", b"<U1", b"|S3", b"<U2", b">U2", b"|V3", b"|V8",
            b"<f8", b">f4", b"|b1", b"|u1", b"<i2", b"<c16", b"<M8[s]", b"<m8", b"<M8", b"|O", b"|O8",
            b"f8,i4", b"(2,)f8", b"(0,)f8", b"[", b"<f8x", b"", b"\xff", b"<U0,<i4", b"S0,u1"]
DIMS = [0, 1, 2, 3, 5, 8, 64, 2 ** 31, 2 ** 32 + 1, 2 ** 61, 2 ** 62, 2 ** 63 - 1, -1, -(2 ** 63)]


def _case(rng: random.Random) -> tuple[bytes, list, int]:
    ts = rng.choice(TYPESTRS)
    ndim = rng.choice([0, 1, 1, 1, 2, 3, rng.randrange(4, 33)])
    shape = [rng.choice(DIMS[:7]) if rng.random() < 0.8 else rng.choice(DIMS) for _ in range(ndim)]
    try:
        size = np.dtype(ts.decode("latin-1")).itemsize
    except Exception:
        size = 8
    count = 1
    for d in shape:
        count *= d
    if rng.random() < 0.5:  # consistent with the shape (and so often accepted)
        return ts, shape, count * size
    nbytes = rng.choice([0, 1, 8, 16, 63, 64, count * size + 1, count * size - 1])
    return ts, shape, nbytes


def _check(got: np.ndarray, nbytes: int, ts: bytes) -> None:
    """An array a read path returned for a message of ``nbytes`` bytes of 0xA5: exactly those."""
    assert got.nbytes == nbytes, (ts, got.shape, got.dtype, nbytes)
    raw = np.ascontiguousarray(got).view(np.uint8).reshape(-1) if got.nbytes else np.zeros(0, np.uint8)
    assert bool((raw == 0xA5).all()), (ts, got.shape, got.dtype)
    assert not got.dtype.hasobject


def _fuzz(ring, put, sub, paths: list[str], cases: int, seed: int) -> dict:
    rng = random.Random(seed)
    seen = {"accepted": 0, "refused": 0, "too big": 0}
    for i in range(cases):
        ts, shape, nbytes = _case(rng)
        if not 0 <= nbytes <= 64:
            continue
        rc = _put_raw(put, ring._handle, ts, shape, nbytes)
        if rc:  # the C side refused to write it (typestr too long: never here)
            seen["too big"] += 1
            continue
        how = paths[i % len(paths)]
        try:
            got = _read(ring, sub, how)
        except ndshm.CorruptSegmentError:
            seen["refused"] += 1
        else:
            for a in (got if isinstance(got, list) else [got]):
                _check(a, nbytes, ts)
            seen["accepted"] += 1
        if how == "get_many" or rng.random() < 0.1:  # the ring still works (and is empty again)
            ring.put(np.arange(3))
            assert (sub or ring).get(timeout=1).tolist() == [0, 1, 2]
    return seen


def test_fuzz_queue_descriptors(unique_name):
    """A few thousand descriptors written by a hostile producer: each read either refuses the
    message (CorruptSegmentError) or returns exactly the bytes that were put."""
    t0 = time.monotonic()
    with ndshm.Queue(unique_name, slots=4, slot_bytes=64) as q:
        seen = _fuzz(q, lib.ndshm_queue_put, None, ["get", "receive", "get", "get_many"], 5000, 16)
        assert q.empty()
    assert seen["accepted"] > 500 and seen["refused"] > 500, seen
    assert time.monotonic() - t0 < 60


def test_fuzz_broadcast_descriptors(unique_name):
    with ndshm.Broadcast(unique_name, slots=4, slot_bytes=64) as b:
        sub = b.subscribe()
        seen = _fuzz(b, lib.ndshm_bcast_put, sub, ["get", "receive"], 4000, 17)
    assert seen["accepted"] > 400 and seen["refused"] > 400, seen

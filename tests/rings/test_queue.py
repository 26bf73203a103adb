"""ndshm.Queue: copies, zero-copy loan/receive, every dtype and ndim, timeouts, batches, pickling
into spawned workers, many producers and consumers, and kill -9 of a producer and a consumer."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import re
import queue as std_queue
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import ndshm
from conftest import PYPY, child_env, collect, run_python


@pytest.fixture
def q(unique_name):
    with ndshm.Queue(unique_name, slots=8, slot_bytes=1 << 16) as q:
        yield q


def test_put_get_roundtrip(q):
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    q.put(a)
    assert q.qsize() == 1 and not q.empty() and bool(q)
    b = q.get()
    assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)
    assert b.flags.writeable and b.flags.c_contiguous
    assert q.empty()
    # non-contiguous and list inputs
    q.put(a[:, ::2, 1])
    assert np.array_equal(q.get(), a[:, ::2, 1])
    q.put([1, 2, 3])
    assert q.get().tolist() == [1, 2, 3]
    q.put(np.float64(2.5))
    got = q.get()
    assert got.shape == () and got == 2.5


DTYPES = ["?", "i1", "u1", "<i2", ">i2", "<u4", "<i8", "<f2", "<f4", ">f8", "<c8", "<c16", "S7", "<U5", "V6",
          "<M8[ns]", "<m8[s]", np.dtype([("x", "<f4"), ("y", "u1")])]


@pytest.mark.parametrize("dt", DTYPES, ids=str)
def test_every_dtype(q, dt):
    dt = np.dtype(dt)
    a = np.zeros((3, 2), dt)
    raw = a.view(np.uint8)
    raw[...] = np.arange(raw.size, dtype=np.uint8).reshape(raw.shape) % 200
    q.put(a)
    b = q.get()
    assert b.shape == a.shape
    assert b.dtype.itemsize == dt.itemsize
    assert b.tobytes() == a.tobytes()
    if dt.names is None:
        assert b.dtype == dt


def test_typed_structured_queue(unique_name):
    dt = np.dtype([("x", "<f4"), ("y", "u1")], align=True)
    with ndshm.Queue(unique_name, slots=2, shape=(5,), dtype=dt) as q:
        assert q.slot_bytes == 5 * dt.itemsize
        a = np.zeros(5, dt)
        a["x"] = np.arange(5)
        q.put(a)
        b = q.get()
        assert b.dtype == dt and np.array_equal(b["x"], a["x"])
        with q.loan() as out:
            out["y"] = 7
        with q.receive() as v:
            assert v.dtype == dt and (v["y"] == 7).all()


def test_typestrs_of_every_length_through_the_same_slots(unique_name):
    # long and short typestrs alternate in the same two slots: each message keeps its own dtype
    # (the bindings compare the first 8 typestr bytes as one word, so leftovers must not leak)
    dts = [np.dtype("<m8[10us]"), np.dtype("<f4"), np.dtype("<U12"), np.dtype("u1"), np.dtype("<M8[25ms]"),
           np.dtype("<c16")]
    with ndshm.Queue(unique_name, slots=2, slot_bytes=256) as q:
        for rnd in range(3):
            for dt in dts:
                a = np.zeros(4, dt)
                q.put(a)
                with q.receive() as v:
                    assert v.dtype == dt and v.shape == (4,)
                with q.loan((2,), dt) as out:
                    out[...] = a[:2]
                b = q.get()
                assert b.dtype == dt and b.shape == (2,)


@pytest.mark.parametrize("ndim", [0, 1, 5, 31, 32])
def test_every_ndim(q, ndim):
    shape = (2,) * min(ndim, 3) + (1,) * (ndim - min(ndim, 3))
    a = np.arange(int(np.prod(shape)), dtype=np.int16).reshape(shape)
    q.put(a)
    b = q.get()
    assert b.shape == shape and np.array_equal(a, b)
    with q.loan(shape, np.int16) as out:
        out[...] = a
    with q.receive() as v:
        assert v.shape == shape and np.array_equal(v, a)


def test_zero_copy_loan_receive_addresses(q):
    lo, hi = q.ring_address, q.ring_address + q.ring_bytes
    with q.loan((4, 4), np.float64) as out:
        addr = out.__array_interface__["data"][0]
        assert lo <= addr and addr + out.nbytes <= hi and addr % 64 == 0
        assert out.flags.writeable
        out[...] = 3.0
    if PYPY:  # closed by emptying it (PyPy cannot change an ndarray's class)
        assert out.shape == (0,)
    else:
        with pytest.raises(ndshm.ClosedError, match="inside the block"):
            out.shape  # closed: no longer over the ring
    with q.receive() as view:
        vaddr = view.__array_interface__["data"][0]
        assert vaddr == addr  # read in place: the very slot written
        assert not view.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            view[0, 0] = 1
        assert (view == 3.0).all()
    with pytest.raises(IndexError if PYPY else ndshm.ClosedError, match=None if PYPY else "copy what you keep"):
        view[0]


def test_loan_exception_discards(q):
    with pytest.raises(RuntimeError, match="boom"):
        with q.loan(3, np.uint8) as out:
            out[:] = 1
            raise RuntimeError("boom")
    with pytest.raises(ndshm.Empty):
        q.get(timeout=0.05)  # a discarded slot yields nothing
    with q.loan(2, np.uint8) as out:
        out[:] = 9
    assert q.get(timeout=1).tolist() == [9, 9]
    with pytest.raises(std_queue.Empty):
        q.get(timeout=0)


@pytest.mark.skipif(sys.implementation.name == "pypy", reason="derived views are not tracked on PyPy")
def test_receive_derived_view_keeps_slot(unique_name):
    with ndshm.Queue(unique_name, slots=2, slot_bytes=64) as q:
        q.put(np.arange(4, dtype=np.int32))
        q.put(np.arange(4, dtype=np.int32))
        with q.receive() as v:
            tail = v[1:]
        with pytest.raises(ndshm.Full):
            q.put(np.zeros(1), timeout=0)
        assert tail.tolist() == [1, 2, 3]
        del tail
        collect()
        q.put(np.zeros(1), timeout=1)
        assert q.get().tolist() == [0, 1, 2, 3] and q.get().tolist() == [0.0]


def test_timeouts(q):
    with pytest.raises(ndshm.Empty) as ei:
        q.get(timeout=0)
    assert isinstance(ei.value, std_queue.Empty)
    t0 = time.monotonic()
    with pytest.raises(std_queue.Empty):
        q.get(timeout=0.1)
    assert 0.09 <= time.monotonic() - t0 < 1
    with pytest.raises(std_queue.Empty):
        q.get_nowait()
    with pytest.raises(std_queue.Empty):
        with q.receive(timeout=0.01):
            pass
    for i in range(q.slots):
        q.put(np.full(3, i))
    assert q.full()
    t0 = time.monotonic()
    with pytest.raises(std_queue.Full):
        q.put(np.zeros(3), timeout=0.1)
    assert 0.09 <= time.monotonic() - t0 < 1
    with pytest.raises(ndshm.Full):
        q.put_nowait(np.zeros(3))
    with pytest.raises(std_queue.Full):
        with q.loan(3, float, timeout=0.01):
            pass
    with pytest.raises(ValueError, match="timeout -1 must be a non-negative number"):
        q.get(timeout=-1)


def test_oversize_messages(q):
    with pytest.raises(ndshm.MessageTooBigError) as ei:
        q.put(np.zeros(1 << 17, np.uint8))
    msg = str(ei.value)
    assert "131072" in msg and "65536" in msg
    assert isinstance(ei.value, ValueError)
    with pytest.raises(ValueError, match="65536"):
        with q.loan((1 << 14) + 1, np.float32):
            pass
    with pytest.raises(ValueError, match="131072"):
        q.put_many([np.zeros(1 << 17, np.uint8)])
    assert q.qsize() == 0


def test_object_arrays_are_refused(q):
    with pytest.raises(TypeError, match="object"):
        q.put(np.array([object(), None]))
    with pytest.raises(TypeError, match="object"):
        q.put(np.zeros(2, [("a", "f8"), ("o", "O")]))
    with pytest.raises(TypeError, match="object"):
        with q.loan(2, object):
            pass
    assert q.qsize() == 0


def test_timeout_nan_inf_and_non_numbers(q):
    """A NaN timeout used to wait for ever; it is refused (ValueError naming it) before anything is
    taken or put. +inf waits for ever; a non-number is a TypeError naming it."""
    nan = float("nan")
    q.put(np.arange(3))  # not empty and not full: a call that does not refuse NaN returns at once
    for call in (lambda: q.get(timeout=nan), lambda: q.receive(timeout=nan), lambda: q.get_many(4, timeout=nan),
                 lambda: q.put(np.zeros(1), timeout=nan), lambda: q.put_many([np.zeros(1)] * 2, timeout=nan),
                 lambda: q.loan((1,), "f8", timeout=nan)):
        with pytest.raises(ValueError, match="nan"):
            call()
        assert q.qsize() == 1
    for bad in ("x", "1.5", b"1", 1j, [1.0], object()):
        with pytest.raises(TypeError, match="timeout"):
            q.get(timeout=bad)
        with pytest.raises(TypeError, match="timeout"):
            q.put(np.zeros(1), timeout=bad)
        with pytest.raises(TypeError, match="timeout"):
            q.receive(timeout=bad)
        assert q.qsize() == 1
    with pytest.raises(TypeError, match="'x'"):
        q.loan((1,), "f8", timeout="x")
    with pytest.raises(ValueError, match="-inf"):
        q.get(timeout=float("-inf"))
    inf = float("inf")
    q.put(np.arange(2), timeout=inf)
    q.put_many([np.arange(1)], timeout=inf)
    with q.loan((1,), "f8", timeout=10 ** 400) as out:  # an int beyond any float: for ever too
        out[0] = 7
    assert q.get(timeout=inf).tolist() == [0, 1, 2]
    with q.receive(timeout=inf) as v:
        assert v.tolist() == [0, 1]
    assert [a.tolist() for a in q.get_many(4, timeout=inf)] == [[0], [7.0]]
    q.put(np.arange(1))
    assert q.get(timeout=np.float32(1.0)).tolist() == [0]
    assert q.empty()


def test_get_many_bad_max_messages_takes_nothing(q):
    """A bad max_messages used to be noticed after the first message was taken (and lost)."""
    q.put(np.arange(3.0))
    for bad in ("x", 1.5, None, True, np.float64(2.0)):
        with pytest.raises(TypeError, match="max_messages"):
            q.get_many(bad)
        assert q.qsize() == 1
    with pytest.raises(ValueError, match="-1"):
        q.get_many(-1)
    assert q.qsize() == 1
    assert q.get_many(0) == [] and q.get_many(0, timeout=0) == []
    assert q.qsize() == 1
    assert [a.tolist() for a in q.get_many(2 ** 40)] == [[0.0, 1.0, 2.0]]
    q.put(np.arange(2.0))
    q.put(np.arange(2.0))
    out = q.get_many(2 ** 64, timeout=1)
    out += q.get_many(np.int64(5), timeout=1) if len(out) < 2 else []
    assert [a.tolist() for a in out] == [[0.0, 1.0]] * 2
    q.put(np.arange(2.0))
    assert [a.tolist() for a in q.get_many(np.int64(1))] == [[0.0, 1.0]]
    with pytest.raises(ndshm.Empty):
        q.get_many(2 ** 64, timeout=0)


def test_get_many_typed_structured_queue(unique_name):
    st = np.dtype([("a", "u1"), ("b", "f8")])
    with ndshm.Queue(unique_name, slots=4, shape=(5,), dtype=st) as q:
        msgs = []
        for i in range(3):
            a = np.zeros(5, st)
            a["a"], a["b"] = i, np.arange(5) + i
            msgs.append(a)
            q.put(a)
        got = q.get_many(10, timeout=1)
        while len(got) < 3:
            got += q.get_many(10, timeout=1)
        assert [g.dtype for g in got] == [st] * 3
        assert all(g.shape == (5,) and g.tobytes() == m.tobytes() for g, m in zip(got, msgs))
        assert got[2]["b"].tolist() == [2.0, 3.0, 4.0, 5.0, 6.0]


@pytest.mark.parametrize("dt", ["V0", np.dtype([])], ids=["V0", "empty-struct"])
def test_get_many_zero_itemsize_messages(q, dt):
    """Messages of 0 bytes with a non-zero length came back from get_many with the wrong shape."""
    msgs = [np.zeros(s, dt) for s in [(2,), (3,), (2, 2), (0,), (4,)]] + [np.arange(3, dtype=np.float32)]
    for m in msgs:
        q.put(m)
    ref = [q.get(timeout=1) for _ in msgs]
    assert [r.shape for r in ref] == [m.shape for m in msgs]
    q.put_many(msgs)
    got = []
    while len(got) < len(ref):
        got += q.get_many(10, timeout=1)
    assert [(g.shape, g.dtype) for g in got] == [(r.shape, r.dtype) for r in ref]
    assert got[-1].tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("how", ["loan", "receive"])
def test_context_entered_twice_or_exited_unentered(unique_name, how):
    """Entering one loan/receive context twice used to claim a second slot that nothing ever
    published or released (the queue lost a slot for good)."""
    with ndshm.Queue(unique_name, slots=2, slot_bytes=64) as q:
        if how == "receive":
            q.put(np.arange(2.0))
            q.put(np.arange(3.0))
            cm = q.receive(timeout=1)
        else:
            cm = q.loan((2,), "f8", timeout=1)
        with pytest.raises(RuntimeError, match="exited without being entered"):
            cm.__exit__(None, None, None)
        arr = cm.__enter__()
        if how == "loan":
            arr[:] = 5
        with pytest.raises(RuntimeError, match="already entered"):
            cm.__enter__()
        cm.__exit__(None, None, None)
        with pytest.raises(RuntimeError, match="exited without being entered"):
            cm.__exit__(None, None, None)
        if how == "loan":
            assert q.qsize() == 1 and q.get(timeout=1).tolist() == [5.0, 5.0]
        else:
            assert q.qsize() == 1 and q.get(timeout=1).tolist() == [0.0, 1.0, 2.0]
        collect()
        # every slot is usable again
        q.put(np.zeros(1), timeout=1)
        q.put(np.ones(1), timeout=1)
        assert q.full()
        assert q.get(timeout=1).tolist() == [0.0] and q.get(timeout=1).tolist() == [1.0]
        assert q.empty()
        # a context that has been left can be entered again
        if how == "receive":
            q.put(np.arange(1.0))
        with cm as again:
            assert again.shape in ((1,), (2,))
        assert q.qsize() == (1 if how == "loan" else 0)


def test_constructor_argument_types(unique_name):
    for bad in (b"q", 5, 1.5):
        with pytest.raises(TypeError, match=repr(bad).replace(".", r"\.")):
            ndshm.Queue(bad, slots=2, slot_bytes=64)
        with pytest.raises(TypeError, match=repr(bad).replace(".", r"\.")):
            ndshm.Queue.attach(bad)
    for kw, exc, text in [(dict(mode=-1), ValueError, "mode -1"),
                          (dict(mode=2 ** 40), ValueError, "mode 1099511627776"),
                          (dict(mode="x"), TypeError, "mode 'x'"), (dict(mode=0o600 + 0.5), TypeError, "mode 384.5"),
                          (dict(slot_bytes=2 ** 64), ValueError, "slot_bytes 18446744073709551616"),
                          (dict(slot_bytes=-1), ValueError, "slot_bytes -1"),
                          (dict(slot_bytes="64"), TypeError, "slot_bytes '64'"),
                          (dict(slots="3"), TypeError, "slots '3'"), (dict(slots=1.5), TypeError, "slots 1.5"),
                          (dict(slots=True), TypeError, "slots True"), (dict(slots=0), ValueError, "slots 0"),
                          (dict(slots=2 ** 64), ValueError, "slots 18446744073709551616"),
                          (dict(dir=5), TypeError, "dir 5")]:
        args = dict(slots=2, slot_bytes=64)
        args.update(kw)
        with pytest.raises(exc, match=text):
            ndshm.Queue(unique_name, **args)
        assert not ndshm.exists(unique_name)
    with ndshm.Queue(unique_name, slots=np.int64(3), slot_bytes=np.uint32(64), mode=np.int16(0o600)) as q:
        assert q.slots == 4 and q.slot_bytes == 64


@pytest.mark.parametrize("kind", ["path", "bytes"])
def test_dir_as_path_or_bytes(unique_name, kind):
    """A pathlib or bytes dir was accepted by create, then close() failed in the finalizer."""
    import pathlib
    shm = os.environ.get("NDSHM_DIR", "/dev/shm")
    d = pathlib.Path(shm) if kind == "path" else os.fsencode(shm)
    q = ndshm.Queue(unique_name, slots=2, slot_bytes=64, dir=d)
    assert q.dir == shm
    q2 = ndshm.Queue.attach(unique_name, dir=d)
    q3 = pickle.loads(pickle.dumps(q))
    q2.put(np.arange(2))
    assert q3.get(timeout=1).tolist() == [0, 1]
    q.close()  # removes the name without raising
    with pytest.raises(ndshm.SegmentNotFoundError):
        ndshm.Queue.attach(unique_name, dir=d)
    q4 = ndshm.Queue(unique_name, slots=2, slot_bytes=64, dir=d, persist=True)
    q4.unlink()
    assert not os.path.exists(os.path.join(shm, f"ndshm.{unique_name}"))
    q4.close()
    q2.close()
    q3.close()


def test_put_many_checks_every_array_before_putting(unique_name):
    """put_many used to put the arrays before a bad one, then raise."""
    with ndshm.Queue(unique_name, slots=8, slot_bytes=64) as q:
        ok = np.arange(2.0)
        batches = [([ok, np.array([None])], TypeError), ([ok, ok, np.zeros(9)], ValueError),
                   ([ok, np.zeros((2, 2))[:, :1], np.zeros((2, 100))], ndshm.MessageTooBigError),
                   ([ok, np.zeros(1, [("o", "O")])], TypeError), ([np.zeros((2, 1)), np.array([None, 1])], TypeError)]
        if np.lib.NumpyVersion(np.__version__) >= "2.0.0":  # NumPy 1 itself has at most 32 dimensions
            batches.append(([ok, np.zeros((1,) * 33)], ValueError))
        for batch, exc in batches:
            with pytest.raises(exc):
                q.put_many(batch)
            assert q.qsize() == 0, batch
    with ndshm.Queue(unique_name + "-typed", slots=4, shape=(2,), dtype="f8") as tq:
        with pytest.raises(ValueError, match="could not convert string to float"):
            tq.put_many([np.zeros(2), np.array(["a", "b"])])  # not convertible to the queue's dtype
        with pytest.raises(ndshm.MessageTooBigError):
            tq.put_many([np.zeros(2), np.zeros(3)])
        assert tq.qsize() == 0
        tq.put_many([np.ones(2), [2, 3]])
        assert [a.tolist() for a in (tq.get(timeout=1), tq.get(timeout=1))] == [[1.0, 1.0], [2.0, 3.0]]


def test_put_many_get_many(q):
    msgs = [np.full(4, i, np.float32) for i in range(20)]
    q2 = ndshm.Queue.attach(q.name)
    got = []

    def drain():
        while True:
            try:
                batch = q2.get_many(16, timeout=0.5)
            except ndshm.Empty:
                return
            got.extend(batch)

    import threading
    t = threading.Thread(target=drain)
    t.start()
    q.put_many(msgs)
    t.join()
    assert [int(a[0]) for a in got] == list(range(20))
    assert all(a.dtype == np.float32 and a.shape == (4,) for a in got)
    # mixed shapes and dtypes fall back to single puts; get_many keeps shapes
    q.put_many([np.zeros((2, 2)), np.ones(3, np.int8)])
    out = q.get_many(10)
    out += q.get_many(10) if len(out) < 2 else []
    assert out[0].shape == (2, 2) and out[1].dtype == np.int8


def test_attach_pickle_and_errors(unique_name):
    with pytest.raises(ndshm.SegmentNotFoundError):
        ndshm.Queue.attach(unique_name)
    q = ndshm.Queue(unique_name, slots=5, slot_bytes=100)
    assert q.slots == 8
    with pytest.raises(ndshm.SegmentExistsError):
        ndshm.Queue(unique_name)
    q2 = pickle.loads(pickle.dumps(q))
    q2.put(np.arange(3))
    assert q.get().tolist() == [0, 1, 2]
    seg = ndshm.Segment.create(unique_name + "-arr", shape=(4,))
    with pytest.raises(ValueError, match="not a queue"):
        ndshm.Queue.attach(unique_name + "-arr")
    seg.close()
    q.close()
    assert q.closed
    with pytest.raises(ndshm.ClosedError):
        q.put(np.zeros(1))
    with pytest.raises(ndshm.SegmentNotFoundError):
        ndshm.Queue.attach(unique_name)
    q2.put(np.arange(2))  # attached handles keep working after the name is gone
    assert q2.get().tolist() == [0, 1]


def test_other_process_roundtrip(unique_name):
    with ndshm.Queue(unique_name, slots=4, slot_bytes=1 << 20) as q, \
            ndshm.Queue(unique_name + "-back", slots=4, slot_bytes=1 << 20) as back:
        proc = subprocess.Popen([sys.executable, "-c", f"""
import numpy as np, ndshm
q = ndshm.Queue.attach({unique_name!r})
back = ndshm.Queue.attach({unique_name + "-back"!r})
for i in range(50):
    a = q.get(timeout=10)
    with back.loan(a.shape, a.dtype) as out:
        out[...] = a * 2
"""], env=child_env())
        for i in range(50):
            q.put(np.full((i + 1, 3), i, np.float64))
            with back.receive(timeout=10) as v:
                assert v.shape == (i + 1, 3) and (v == 2 * i).all()
        assert proc.wait(30) == 0


def _spawn_worker(q_in, q_out, n):
    for _ in range(n):
        a = q_in.get(timeout=20)
        q_out.put(a + 1)


def test_pickle_into_spawn_workers(unique_name):
    ctx = mp.get_context("spawn")
    q_in = ndshm.Queue(unique_name + "-in", slots=8, slot_bytes=4096)
    q_out = ndshm.Queue(unique_name + "-out", slots=8, slot_bytes=4096)
    procs = [ctx.Process(target=_spawn_worker, args=(q_in, q_out, 5)) for _ in range(2)]
    for p in procs:
        p.start()
    for i in range(10):
        q_in.put(np.array([i, i], np.int64))
    got = sorted(int(q_out.get(timeout=20)[0]) for _ in range(10))
    for p in procs:
        p.join(20)
        assert p.exitcode == 0
    assert got == list(range(1, 11))
    q_in.close()
    q_out.close()


_POOL_Q = None


def _pool_init(q):
    global _POOL_Q
    _POOL_Q = q


def _pool_task(i):
    _POOL_Q.put(np.full(2, i))
    return i


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_initializer(unique_name, method):
    q = ndshm.Queue(unique_name, slots=16, slot_bytes=256)
    with mp.get_context(method).Pool(2, initializer=_pool_init, initargs=(q,)) as pool:
        assert sorted(pool.map(_pool_task, range(8))) == list(range(8))
    got = sorted(int(q.get(timeout=5)[0]) for _ in range(8))
    assert got == list(range(8))
    q.close()


def test_many_producers_consumers_ordering(unique_name):
    """4 producers x 4 consumers x 25k small messages through put_many/get_many: per-producer
    order, no loss, no duplicate (the C test runs the full 4 x 4 x 100k with fork)."""
    n, batch = 25_000, 500
    q = ndshm.Queue(unique_name, slots=1024, slot_bytes=64)
    prod = f"""
import sys, numpy as np, ndshm
q = ndshm.Queue.attach({unique_name!r}); p = int(sys.argv[1])
for start in range(0, {n}, {batch}):
    q.put_many([np.array([p, i], np.int64) for i in range(start, start + {batch})], timeout=30)
"""
    cons = f"""
import sys, numpy as np, ndshm
q = ndshm.Queue.attach({unique_name!r}); out = []
while True:
    try:
        batch = q.get_many(256, timeout=30)
    except ndshm.ShutDown:  # drained after the producers ended (no idle timeout to wait out)
        break
    out.extend(batch)
a = np.array([m for m in out], np.int64).reshape(-1, 2)
np.save(sys.argv[1], a)
"""
    env = child_env()
    tmp = os.environ.get("TMPDIR", "/tmp")
    outs = [os.path.join(tmp, f"{unique_name}-c{i}.npy") for i in range(4)]
    cs = [subprocess.Popen([sys.executable, "-c", cons, o], env=env) for o in outs]
    ps = [subprocess.Popen([sys.executable, "-c", prod, str(p)], env=env) for p in range(4)]
    for p in ps:
        assert p.wait(60) == 0
    q.shutdown()  # every message is in: the consumers drain the queue, then get ShutDown
    for c in cs:
        assert c.wait(60) == 0
    seen = np.zeros((4, n), np.int32)
    for o in outs:
        a = np.load(o)
        os.unlink(o)
        for p in range(4):
            seq = a[a[:, 0] == p, 1]
            assert (np.diff(seq) > 0).all(), "per-producer order broken"
            np.add.at(seen[p], seq, 1)
    assert (seen == 1).all(), f"lost {(seen == 0).sum()}, duplicated {(seen > 1).sum()}"
    q.close()


def test_kill_producer_and_consumer_mid_message(unique_name):
    """A producer killed holding a loaned slot and a consumer killed holding a received one:
    the survivors finish, and every fully published message arrives."""
    q = ndshm.Queue(unique_name, slots=4, slot_bytes=1024)
    env = child_env()
    producer = subprocess.Popen([sys.executable, "-c", f"""
import sys, numpy as np, ndshm
q = ndshm.Queue.attach({unique_name!r})
with q.loan(100, np.float64) as out:
    out[:50] = 1.0                      # mid-message
    print("ready", flush=True)
    sys.stdin.read()                    # killed here
"""], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert producer.stdout.readline().strip() == "ready"
    for i in range(2):
        q.put(np.full(4, i, np.int32))  # published behind the claim of the producer
    consumer = subprocess.Popen([sys.executable, "-c", f"""
import sys, numpy as np, ndshm
q = ndshm.Queue.attach({unique_name!r})
with q.receive(timeout=10) as v:        # the dead producer's slot is skipped: gets message 0
    print("got", int(v[0]), flush=True)
    sys.stdin.read()                    # killed here, holding the slot
"""], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    os.kill(producer.pid, signal.SIGKILL)
    line = consumer.stdout.readline().strip()
    assert line == "got 0"
    os.kill(consumer.pid, signal.SIGKILL)
    producer.wait(10)
    consumer.wait(10)
    # survivors: fill the whole ring (needs the dead consumer's slot back), then drain it
    t0 = time.monotonic()
    q.put(np.full(4, 2, np.int32), timeout=5)
    q.put(np.full(4, 3, np.int32), timeout=5)
    q.put(np.full(4, 4, np.int32), timeout=5)
    got = [int(q.get(timeout=5)[0]) for _ in range(4)]
    assert got == [1, 2, 3, 4]  # message 0 died with its consumer; nothing published was lost
    assert time.monotonic() - t0 < 3
    with pytest.raises(ndshm.Empty):
        q.get(timeout=0.05)
    q.close()


def test_stats_count_queues(unique_name):
    collect()
    before = ndshm.stats()["live_queues"]
    q = ndshm.Queue(unique_name, slots=2, slot_bytes=8)
    assert ndshm.stats()["live_queues"] == before + 1
    q.close()
    del q
    collect()
    assert ndshm.stats()["live_queues"] == before


def test_run_python_import(unique_name):
    """A second interpreter started by run_python imports this very ndshm (not an installed copy)
    and talks to this process through a queue it attaches by name."""
    with ndshm.Queue(unique_name, slots=2, slot_bytes=64) as q:
        out = run_python(f"""
            import numpy as np, ndshm
            q = ndshm.Queue.attach({unique_name!r})
            q.put(np.array([7, 8, 9], np.int16))
            print(ndshm.__file__)
            print(ndshm._lib.lib.ndshm_version())
        """)
        path, version = out.stdout.split()
        assert os.path.samefile(path, ndshm.__file__)
        from ndshm._lib import lib
        assert int(version) == lib.ndshm_version()
        got = q.get(timeout=5)
        assert got.dtype == np.int16 and got.tolist() == [7, 8, 9]


def test_slow_live_loan_is_not_taken_for_dead(unique_name):
    """A live child holding a loan 25x the claim-recovery delay (20 ms) while this process waits:
    its message arrives first and whole, and the message published behind it is not lost."""
    with ndshm.Queue(unique_name, slots=4, slot_bytes=1024) as q:
        child = subprocess.Popen([sys.executable, "-c", f"""
import time, numpy as np, ndshm
q = ndshm.Queue.attach({unique_name!r})
with q.loan(8, np.int64) as out:
    out[:4] = 1
    print("ready", flush=True)
    time.sleep(0.5)                     # slow, but alive
    out[4:] = 2
"""], env=child_env(), stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        q.put(np.full(4, 9, np.int32))  # published behind the child's claim
        t0 = time.monotonic()
        first = q.get(timeout=5)
        assert time.monotonic() - t0 > 0.3
        assert first.dtype == np.int64 and first.tolist() == [1] * 4 + [2] * 4
        assert q.get(timeout=1).tolist() == [9] * 4
        with pytest.raises(ndshm.Empty):
            q.get(timeout=0.05)
        assert child.wait(10) == 0


def test_slow_live_receive_is_not_recycled(unique_name):
    """A live child reading a received message for 25x the recovery delay while this process
    waits to put into that very slot: the put waits, and the child's message never changes."""
    with ndshm.Queue(unique_name, slots=2, slot_bytes=1024) as q:
        q.put(np.arange(8))
        q.put(np.arange(8) + 100)
        child = subprocess.Popen([sys.executable, "-c", f"""
import sys, time, numpy as np, ndshm
q = ndshm.Queue.attach({unique_name!r})
with q.receive(timeout=5) as v:
    print("ready", flush=True)
    for _ in range(50):                 # 0.5 s, slow but alive, reading all along
        time.sleep(0.01)
        if v.tolist() != list(range(8)):
            sys.exit(f"message changed under its reader: {{v.tolist()}}")
"""], env=child_env(), stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        assert q.get(timeout=1).tolist() == list(range(100, 108))
        t0 = time.monotonic()
        q.put(np.full(8, 7), timeout=5)  # the ring's next position is the child's slot
        assert time.monotonic() - t0 > 0.3
        assert child.wait(10) == 0
        assert q.get(timeout=1).tolist() == [7] * 8
        assert q.empty()


def _ring_rss_kib(path: str) -> int:
    """Resident KiB of this process's mapping of ``path`` (the queue's ring), from smaps."""
    rss, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                inside = line.rstrip().endswith(path) or line.rstrip().endswith(path + " (deleted)")
            elif inside and line.startswith("Rss:"):
                rss += int(line.split()[1])
    return rss


_RSS_CHILD = """
import re, numpy as np, ndshm
{func}
q = ndshm.Queue.attach({name!r})
print(_ring_rss_kib({path!r}))
"""


@pytest.mark.parametrize("populate", [True, False])
def test_ring_is_prefaulted_in_creator_attacher_and_forked_child(unique_name, populate):
    """populate=True (the default) makes the whole ring resident in the creator, in a process
    that attaches and in a fork()ed child at its first call; populate=False leaves it to faults."""
    path = os.path.join(os.environ.get("NDSHM_DIR", "/dev/shm"), f"ndshm.{unique_name}")
    q = ndshm.Queue(unique_name, slots=16, slot_bytes=256 << 10, populate=populate)
    ring_kib = q.ring_bytes // 1024
    import inspect
    child = _RSS_CHILD.format(func=inspect.getsource(_ring_rss_kib), name=unique_name, path=path)
    attacher = int(run_python(child).stdout)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child inherits the mapping, not its page tables
        try:
            before = _ring_rss_kib(path)
            q.put(np.zeros(1))
            os.write(w, f"{before} {_ring_rss_kib(path)}".encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        before_fork, after_put = map(int, f.read().split())
    os.waitpid(pid, 0)
    creator = _ring_rss_kib(path)
    if populate:
        assert creator >= ring_kib and attacher >= ring_kib and after_put >= ring_kib, \
            (creator, attacher, after_put, ring_kib)
        assert before_fork < ring_kib // 4  # so the child's residency is its own pre-faulting
    else:
        assert max(creator, attacher, after_put) < ring_kib // 4, (creator, attacher, after_put, ring_kib)
    assert q.get(timeout=1).tolist() == [0.0]
    q.close()


def test_get_guesses_the_output_array_and_follows_every_change(unique_name):
    """get() makes its output from the last message's description (one C call when it matches);
    a message of another dtype, shape, rank or size is still returned exactly, smaller or larger."""
    msgs = [np.arange(4, dtype=np.float32), np.arange(4, dtype=np.float32) + 1, np.arange(4, dtype=np.int32),
            np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(6, dtype=np.float32).reshape(3, 2),
            np.arange(2, dtype=np.float32), np.arange(9, dtype=np.float64), np.float64(3.5).reshape(()),
            np.zeros(0, np.float32), np.zeros((2, 0), np.float32), np.arange(3, dtype=np.uint8),
            np.array([b"ab", b"cd"]), np.zeros(2, [("a", "<i4"), ("b", "<f8")]), np.arange(4, dtype=np.float32)]
    with ndshm.Queue(unique_name, slots=4, slot_bytes=256) as q:
        for a in msgs:
            q.put(a)
            got = q.get()
            assert got.shape == a.shape and got.dtype.itemsize == a.dtype.itemsize, (a, got)
            assert got.tobytes() == a.tobytes() and got.flags.writeable and got.flags.owndata
            if a.dtype.names is None:
                assert got.dtype == a.dtype
        q.put(np.arange(4, dtype=np.float32))
        first = q.get()
        q.put(np.arange(4, dtype=np.float32) * 2)
        second = q.get()
        assert first.tolist() == [0, 1, 2, 3] and second.tolist() == [0, 2, 4, 6]  # fresh arrays each time

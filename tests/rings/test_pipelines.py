"""Pipelines that start, wait and end as users expect (issue 20): dead consumers, close() waking this
handle's waiters, asyncio forms and their cancellation, start-up order (wait_for_subscribers,
attach(timeout=)), zero-copy iteration. Every test that needs a second process starts a real one."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import random
import signal
import threading
import time

import numpy as np
import pytest

import ndshm
from conftest import PYPY, dir_files
from ndshm import ClosedError, Empty, Full, ShutDown

CTX = mp.get_context("fork")


def _consume_then_hang(name, dir, ready):
    q = ndshm.Queue.attach(name, dir=dir)
    q.register_consumer()
    ready.set()
    time.sleep(60)


def assert_closed(view):
    """A receive view after its block: CPython raises ClosedError on use; PyPy empties it."""
    if PYPY:
        assert view.shape == (0,)
    else:
        with pytest.raises(ClosedError):
            view.sum()


def _run_in_thread(fn):
    out = []

    def run():
        t0 = time.monotonic()
        try:
            fn()
            out.append(("returned", time.monotonic() - t0))
        except BaseException as e:  # noqa: BLE001 - recorded for the assertion
            out.append((e, time.monotonic() - t0))
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


# ---- 1. dead consumers ----------------------------------------------------------------------

@pytest.mark.parametrize("how", ["kill9", "unregister"])
def test_producers_blocked_in_put_and_loan_raise_once_every_consumer_is_gone(tmp_path, how):
    d = str(tmp_path)
    with ndshm.Queue(slots=2, slot_bytes=64, dir=d) as q:
        q.expect_consumers(1)
        ready = CTX.Event()
        if how == "kill9":
            p = CTX.Process(target=_consume_then_hang, args=(q.name, d, ready))
            p.start()
            assert ready.wait(10)
        else:
            q.register_consumer()
        assert q.consumers == 1
        q.put(np.zeros(2))
        q.put(np.zeros(2))  # full: nobody reads

        def loan():
            with q.loan((2,), np.float64) as out:
                out[:] = 1
        threads = [_run_in_thread(lambda: q.put(np.ones(2))), _run_in_thread(loan)]
        time.sleep(0.3)
        assert all(not out for _, out in threads)  # both really block
        if how == "kill9":
            os.kill(p.pid, signal.SIGKILL)
            p.join()
        else:
            q.unregister_consumer()
        for t, out in threads:
            t.join(3)
            assert not t.is_alive()
            (exc, took), = out
            assert isinstance(exc, ShutDown), exc
            assert "every registered consumer has exited" in str(exc)
            assert took < 2.5
        with pytest.raises(ShutDown, match="consumer"):
            q.put(np.zeros(2))
        assert q.consumers == 0
        assert q.get().shape == (2,)  # a consumer that comes later still drains what was queued
    assert dir_files(d) == []  # nothing left behind once the with block ended


def test_consumers_not_yet_expected_do_not_end_the_stream():
    with ndshm.Queue(slots=2, slot_bytes=64) as q:
        q.expect_consumers(2)
        q.register_consumer()
        q.unregister_consumer()  # 1 of the 2 expected registrations: producers keep waiting
        q.put(np.zeros(1))
        q.put(np.zeros(1))
        with pytest.raises(Full):
            q.put(np.zeros(1), timeout=0.3)


def _subscribe_and_hang(name, ready):
    b = ndshm.Broadcast.attach(name)
    s = b.subscribe()  # noqa: F841 - held until killed
    ready.set()
    time.sleep(60)


def test_block_broadcast_whose_subscribers_were_killed_does_not_block():
    with ndshm.Broadcast(slots=2, slot_bytes=64, policy="block") as b:
        ready = CTX.Event()
        p = CTX.Process(target=_subscribe_and_hang, args=(b.name, ready))
        p.start()
        assert ready.wait(10)
        b.put(np.zeros(1))
        b.put(np.zeros(1))
        with pytest.raises(Full):
            b.put(np.zeros(1), timeout=0.2)  # the live subscriber has not read
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        t0 = time.monotonic()
        for _ in range(5):
            b.put(np.zeros(1), timeout=2)  # the dead subscriber is forgotten within a liveness check
        assert time.monotonic() - t0 < 2
        assert b.subscribers == 0


# ---- 2. close() wakes this handle's waiters ---------------------------------------------------

def _blocked_calls():
    def queue_empty():
        q = ndshm.Queue(slots=2, slot_bytes=64)
        return q, [q.get, lambda: q.receive().__enter__(), lambda: q.get_many(4)]

    def queue_full():
        q = ndshm.Queue(slots=2, slot_bytes=64)
        q.put(np.zeros(1))
        q.put(np.zeros(1))
        return q, [lambda: q.put(np.zeros(1)), lambda: q.loan((1,), np.float64).__enter__(),
                   lambda: q.put_many([np.zeros(1)] * 3)]
    return {"queue-empty": queue_empty, "queue-full": queue_full}


@pytest.mark.parametrize("kind", ["queue-empty", "queue-full"])
def test_close_wakes_blocked_queue_calls_of_that_handle_only(kind):
    q, calls = _blocked_calls()[kind]()
    other = ndshm.Queue.attach(q.name)  # another handle (as another process would have)
    threads = [_run_in_thread(c) for c in calls]
    time.sleep(0.3)
    assert all(not out for _, out in threads)
    t0 = time.monotonic()
    q.close()
    for t, out in threads:
        t.join(2)
        assert not t.is_alive()
        (exc, _), = out
        assert isinstance(exc, ClosedError), exc
    assert time.monotonic() - t0 < 0.25
    # the other handle is untouched
    if kind == "queue-empty":
        other.put(np.arange(3))
        assert other.get().tolist() == [0, 1, 2]
    else:
        assert other.get().shape == (1,)
    other.close()


def test_close_wakes_blocked_broadcast_and_subscription_calls():
    b = ndshm.Broadcast(slots=2, slot_bytes=64)
    pub = ndshm.Broadcast.attach(b.name)
    slow = b.subscribe()  # never reads: publishers on pub block
    sub = b.subscribe()
    pub.put(np.zeros(1))
    pub.put(np.zeros(1))
    sub.get()
    sub.get()
    th_sub_get = _run_in_thread(sub.get)
    time.sleep(0.2)
    t0 = time.monotonic()
    sub.close()
    th_sub_get[0].join(2)
    (exc, _), = th_sub_get[1]
    assert isinstance(exc, ClosedError) and time.monotonic() - t0 < 0.25
    assert sub.closed
    sub2 = b.subscribe()
    th_recv = _run_in_thread(lambda: sub2.receive().__enter__())
    th_put = _run_in_thread(lambda: pub.put(np.zeros(1)))
    th_loan = _run_in_thread(lambda: pub.loan((1,), np.float64).__enter__())
    time.sleep(0.3)
    t0 = time.monotonic()
    sub2.close()
    pub.close()
    for t, out in (th_recv, th_put, th_loan):
        t.join(2)
        (exc, _), = out
        assert isinstance(exc, ClosedError), exc
    assert time.monotonic() - t0 < 0.25
    assert slow.pending == 2  # b and its other subscription are untouched
    slow.close()
    b.close()


def test_close_wakes_blocked_lock_event_barrier():
    lock = ndshm.Lock()
    lock.acquire()
    waiter = ndshm.Lock(lock.name, create=False)
    ev = ndshm.Event()
    ev_waiter = ndshm.Event(ev.name, create=False)
    bar = ndshm.Barrier(2)
    bar_waiter = ndshm.Barrier(2, bar.name, create=False)
    threads = [_run_in_thread(waiter.acquire), _run_in_thread(ev_waiter.wait), _run_in_thread(bar_waiter.wait)]
    time.sleep(0.3)
    assert all(not out for _, out in threads)
    t0 = time.monotonic()
    for h in (waiter, ev_waiter, bar_waiter):
        h.close()
    for t, out in threads:
        t.join(2)
        (exc, _), = out
        assert isinstance(exc, ClosedError), exc
    assert time.monotonic() - t0 < 0.25
    assert lock.locked() and not ev.is_set()  # the shared objects are untouched
    lock.release()
    assert ev.wait(0) is False
    with pytest.raises(ClosedError):
        waiter.acquire()


# ---- 3. asyncio -------------------------------------------------------------------------------

def test_async_forms_of_queue_subscription_lock_event():
    async def main():
        q = ndshm.Queue(slots=4, slot_bytes=256)

        async def produce():
            for i in range(20):
                await q.put_async(np.full(3, i))
                if i % 5 == 0:
                    await asyncio.sleep(0.002)
            async with q.loan_async((3,), np.int64) as out:
                out[:] = 20
            q.shutdown()
        task = asyncio.create_task(produce())
        got = [int(a[0]) async for a in q]
        await task
        assert got == list(range(21))
        q2 = ndshm.Queue(slots=2, slot_bytes=64)
        q2.put(np.arange(3))
        async with q2.receive_async() as view:
            assert view.tolist() == [0, 1, 2]
        assert_closed(view)  # closed after the block, as a receive view
        with pytest.raises(Empty):
            await q2.get_async(timeout=0.1)
        b = ndshm.Broadcast(slots=2, slot_bytes=64)
        sub = b.subscribe()
        await b.put_async(np.arange(2))
        assert (await sub.get_async()).tolist() == [0, 1]
        await b.put_async(np.arange(3))
        async with sub.receive_async() as v:
            assert v.tolist() == [0, 1, 2]
        b.shutdown()
        assert [a async for a in sub] == []
        lock, ev = ndshm.Lock(), ndshm.Event()
        assert await lock.acquire_async()
        assert await lock.acquire_async(timeout=0.1) is False
        asyncio.get_running_loop().call_later(0.05, lock.release)
        other = ndshm.Lock(lock.name, create=False)
        assert await other.acquire_async(timeout=2)
        other.release()
        threading.Timer(0.05, ev.set).start()
        assert await ev.wait_async(timeout=2)
        # the loop keeps running while they wait
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)
        t = asyncio.create_task(tick())
        with pytest.raises(Empty):
            await q2.get_async(timeout=0.2)
        t.cancel()
        assert ticks >= 10
    asyncio.run(main())


def _feed(name, n, dir=None):
    q = ndshm.Queue.attach(name, dir=dir)
    rng = random.Random(1)
    for i in range(n):
        q.put(np.array([i]))
        if rng.random() < 0.3:
            time.sleep(rng.random() * 0.0005)


def test_async_calls_cancelled_at_random_points_lose_nothing_and_hold_no_slot():
    n = 1000

    async def main():
        q = ndshm.Queue(slots=8, slot_bytes=64)
        feeder = mp.get_context("spawn").Process(target=_feed, args=(q.name, n))
        feeder.start()
        rng = random.Random(2)
        got = []
        cancelled = 0

        async def by_receive():
            async with q.receive_async() as v:
                return int(v[0])

        async def by_get():
            return int((await q.get_async())[0])
        for _ in range(1000):
            task = asyncio.create_task(rng.choice((by_get, by_receive))())
            r = rng.random()
            if r < 0.3:
                await asyncio.sleep(0)
            elif r < 0.9:
                await asyncio.sleep(rng.random() * 0.001)
            task.cancel()
            try:
                got.append(await task)
            except asyncio.CancelledError:
                cancelled += 1
        rest = []
        while feeder.is_alive() or q.qsize():  # the final drain (the feeder may wait on a full queue)
            try:
                rest.append(int(q.get(timeout=0.05)[0]))
            except Empty:
                pass
        feeder.join()
        assert sorted(got + rest) == list(range(n))  # every message exactly once
        assert cancelled > 100
        for i in range(q.slots):  # no slot is left claimed: the queue fills to its size
            q.put_nowait(np.array([i]))
        assert q.qsize() == q.slots
        # cancelled puts: a cancelled put_async did not put its array
        q2 = ndshm.Queue(slots=4, slot_bytes=64)
        done = []
        for i in range(300):
            task = asyncio.create_task(q2.put_async(np.array([i])))
            if rng.random() < 0.5:
                await asyncio.sleep(0)
            task.cancel()
            try:
                await task
                done.append(i)
            except asyncio.CancelledError:
                pass
            if q2.qsize() == q2.slots or rng.random() < 0.2:
                while q2.qsize():
                    assert int(q2.get()[0]) == done.pop(0)
        while q2.qsize():
            assert int(q2.get()[0]) == done.pop(0)
        assert done == []
    t0 = time.monotonic()
    asyncio.run(asyncio.wait_for(main(), 60))
    assert time.monotonic() - t0 < 30


def test_async_lock_acquire_cancelled_does_not_keep_the_lock():
    async def main():
        lock = ndshm.Lock()
        lock.acquire()
        waiter = ndshm.Lock(lock.name, create=False)
        for _ in range(20):
            task = asyncio.create_task(waiter.acquire_async())
            await asyncio.sleep(0.001)
            lock.release()
            await asyncio.sleep(random.random() * 0.002)
            task.cancel()
            try:
                await task
                waiter.release()
            except asyncio.CancelledError:
                pass
            await asyncio.sleep(0.08)  # a slice the thread was in has ended (and given the lock back)
            assert lock.acquire(timeout=1)
        lock.release()
    asyncio.run(main())


def test_close_wakes_an_async_wait():
    async def main():
        q = ndshm.Queue(slots=2, slot_bytes=64)
        task = asyncio.create_task(q.get_async())
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        q.close()
        with pytest.raises(ClosedError, match="closed"):
            await task
        # promptly: the waiting thread's next slice (50 ms) at most, plus the loop's turn; 0.5 s
        # bounds it on a loaded machine under PYTHONMALLOC=debug too (CI measured 0.16 s there)
        assert time.monotonic() - t0 < 0.5
    asyncio.run(main())


# ---- 4. start-up order ------------------------------------------------------------------------

def _late_subscriber(name, delay, out):
    time.sleep(delay)
    b = ndshm.Broadcast.attach(name, timeout=10)
    with b.subscribe() as s:
        out.put(int(s.get(timeout=10)[0]))


def test_wait_for_subscribers_with_late_starters():
    with ndshm.Broadcast(slots=4, slot_bytes=64) as b:
        out = CTX.Queue()
        procs = [CTX.Process(target=_late_subscriber, args=(b.name, d, out)) for d in (0.05, 0.2, 0.4)]
        for p in procs:
            p.start()
        with pytest.raises(TimeoutError, match="subscribers"):
            b.wait_for_subscribers(3, timeout=0.01)
        assert b.wait_for_subscribers(3, timeout=10) >= 3
        b.put(np.array([42]))
        assert sorted(out.get(timeout=10) for _ in procs) == [42, 42, 42]
        for p in procs:
            p.join(10)
            assert p.exitcode == 0


def test_subscription_pickling_error_names_wait_for_subscribers():
    import pickle
    with ndshm.Broadcast(slots=2, slot_bytes=8) as b, b.subscribe() as s:
        with pytest.raises(TypeError, match="wait_for_subscribers"):
            pickle.dumps(s)


def _slow_creator(kind, name, delay, done):
    time.sleep(delay)
    if kind == "queue":
        obj = ndshm.Queue(name, slots=2, slot_bytes=8)
    elif kind == "broadcast":
        obj = ndshm.Broadcast(name, slots=2, slot_bytes=8)
    else:
        obj = ndshm.create(name, (3,), np.int64)
        obj[:] = 7
    done.wait(10)
    del obj


@pytest.mark.parametrize("kind", ["queue", "broadcast", "segment"])
def test_attach_timeout_races_a_slow_creator(unique_name, kind):
    done = CTX.Event()
    p = CTX.Process(target=_slow_creator, args=(kind, unique_name, 0.3, done))
    p.start()
    try:
        # without a timeout: at once, as before
        with pytest.raises(ndshm.SegmentNotFoundError, match="no segment .*" + unique_name):
            ndshm.Queue.attach(unique_name) if kind == "queue" else ndshm.attach(unique_name + "-none")
        t0 = time.monotonic()
        if kind == "queue":
            h = ndshm.Queue.attach(unique_name, timeout=10)
        elif kind == "broadcast":
            h = ndshm.Broadcast.attach(unique_name, timeout=10)
        else:
            for _ in range(100):  # the creator may still be writing its values
                h = ndshm.attach(unique_name, timeout=10)
                if h.tolist() == [7, 7, 7]:
                    break
                time.sleep(0.01)
            assert h.tolist() == [7, 7, 7]
        assert 0.2 < time.monotonic() - t0 < 5
        del h
    finally:
        done.set()
        p.join(10)
    with pytest.raises(FileNotFoundError, match="waiting 0.1 s"):
        ndshm.Queue.attach(unique_name + "-never", timeout=0.1)


# ---- 5. zero-copy iteration -------------------------------------------------------------------

def _put_range(name, n):
    q = ndshm.Queue.attach(name)
    for i in range(n):
        q.put(np.full(4, i))
    q.shutdown()


def test_receiving_iterates_views_until_shutdown():
    with ndshm.Queue(slots=4, slot_bytes=64) as q:
        p = CTX.Process(target=_put_range, args=(q.name, 50))
        p.start()
        seen = []
        for view in q.receiving():
            assert not view.flags.writeable
            seen.append(int(view[0]))
        p.join(10)
        assert seen == list(range(50))
        assert_closed(view)  # the last view ended with the iteration
        assert q.qsize() == 0
    with ndshm.Queue(slots=2, slot_bytes=64) as q:
        for i in range(6):  # each view's slot goes back at the next iteration: 2 slots carry 6 messages
            q.put_nowait(np.full(4, i))
            view = next(it) if i else next(it := q.receiving())
            assert int(view[0]) == i


def test_subscription_receiving_iterates_views_until_shutdown():
    with ndshm.Broadcast(slots=4, slot_bytes=64) as b:
        sub = b.subscribe()
        out = []

        def read():
            for view in sub.receiving():
                out.append(view.copy())
        t = threading.Thread(target=read)
        t.start()
        for i in range(30):
            b.put(np.full(2, i), timeout=5)
        b.shutdown()
        t.join(10)
        assert [int(a[0]) for a in out] == list(range(30))
        sub.close()


# ---- 6. messages with the numbers that help ---------------------------------------------------

def test_no_space_error_says_how_much_is_free_and_how_to_enlarge_a_small_dir(monkeypatch):
    # more than /dev/shm holds at all, not just more than is free: refused before a page is
    # allocated (free + 1 GiB could fill a /dev/shm as large as the RAM and wake the OOM killer)
    free = os.statvfs("/dev/shm").f_blocks * os.statvfs("/dev/shm").f_frsize
    with pytest.raises(ndshm.NoSpaceError) as info:
        ndshm.create(None, (free + (1 << 30),), np.uint8)
    msg = str(info.value)
    assert "MiB free of" in msg and "/dev/shm" in msg
    assert info.value.errno == 28
    real = os.statvfs

    class Small:  # a 64 MiB /dev/shm, as Docker gives by default
        f_bavail, f_frsize, f_blocks = 1000, 4096, 16384

    monkeypatch.setattr(os, "statvfs", lambda p: Small() if p == "/dev/shm" else real(p))
    from ndshm._errors import _space_advice
    advice = _space_advice("/dev/shm")
    assert "3.9 MiB free of 64.0 MiB" in advice
    for hint in ("--shm-size", "emptyDir", "medium: Memory", "NDSHM_DIR"):
        assert hint in advice


def test_a_missing_segment_directory_says_to_create_it(tmp_path, monkeypatch):
    missing = str(tmp_path / "nope")
    for make in (lambda: ndshm.create("x", (3,), np.uint8, dir=missing),
                 lambda: ndshm.Queue(slots=2, slot_bytes=8, dir=missing),
                 lambda: ndshm.attach("x", dir=missing)):
        with pytest.raises(ndshm.DirectoryNotFoundError, match="mkdir -m 700") as info:
            make()
        assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ndshm.SegmentNotFoundError)
        assert not os.path.exists(missing)  # never created behind the user's back
    monkeypatch.setenv("NDSHM_DIR", missing)
    with pytest.raises(ndshm.DirectoryNotFoundError, match="NDSHM_DIR"):
        ndshm.create("x", (3,), np.uint8)


# ---- 8. ShareableList: where the drop-in is better than the original --------------------------

def test_shareable_list_sizes_str_by_utf8_bytes_and_the_stdlib_reads_it():
    import subprocess
    import sys
    from ndshm.compat.shared_memory import ShareableList
    sl = ShareableList(["ééééééé", "encodés", "abcdefgh", 7])
    try:
        assert sl[0] == "ééééééé"  # intact: the slot holds its 14 UTF-8 bytes
        assert sl.format == "16s16s16sq"  # the stdlib (3.11-3.13) sizes by characters: '8s8s16sq'
        reader = (
            "import sys\n"
            "from multiprocessing import resource_tracker, shared_memory\n"
            "sl = shared_memory.ShareableList(name=sys.argv[1])\n"
            "print(repr(list(sl)))\n"
            "print(sl.format)\n"
            "resource_tracker.unregister(sl.shm._name, 'shared_memory')\n"  # attaching registered it (< 3.13)
            "sl.shm.close()\n")
        out = subprocess.run([sys.executable, "-c", reader, sl.shm.name], capture_output=True, text=True,
                             timeout=60, check=True).stdout.splitlines()
        assert out == ["['ééééééé', 'encodés', 'abcdefgh', 7]", "16s16s16sq"]
    finally:
        sl.shm.close()
        sl.shm.unlink()

"""ndshm.Lock, Event and Barrier across real processes, standalone and inside a segment."""

from __future__ import annotations

import gc
import math
import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import weakref

import numpy as np
import pytest

import ndshm
from conftest import PYPY, child_env, run_python


def test_lock_basics(unique_name):
    lock = ndshm.Lock(unique_name)
    assert not lock.locked()
    assert lock.acquire()
    assert lock.locked() and not lock.owner_died
    assert lock.acquire(blocking=False) is False  # not recursive
    t0 = time.monotonic()
    assert lock.acquire(timeout=0.05) is False
    assert time.monotonic() - t0 >= 0.045
    lock.release()
    with pytest.raises(ndshm.NdshmPermissionError, match="not held by any process") as ei:
        lock.release()
    assert "pid 0" not in str(ei.value)
    with lock:
        assert lock.locked()
    assert not lock.locked()
    assert "unlocked" in repr(lock)


def test_lock_across_processes(unique_name):
    lock = ndshm.Lock(unique_name)
    code = f"""
import ndshm
lock = ndshm.Lock({unique_name!r}, create=False)
print(lock.acquire(blocking=False), flush=True)
"""
    with lock:
        assert run_python(code).stdout.strip() == "False"
        held = run_python(f"""
import ndshm
try:
    ndshm.Lock({unique_name!r}, create=False).release()
except ndshm.NdshmPermissionError as exc:
    print(exc)
""").stdout
        assert f"but by pid {os.getpid()}" in held and "not held by any" not in held
    assert run_python(code).stdout.strip() == "True"
    # the child exited holding it: the lock is ours, with the news
    assert lock.acquire(timeout=5)
    assert lock.owner_died
    lock.release()
    assert lock.acquire(timeout=1) and not lock.owner_died
    lock.release()


def test_lock_owner_killed_while_waiter_sleeps(unique_name):
    lock = ndshm.Lock(unique_name)
    child = subprocess.Popen([sys.executable, "-c", f"""
import sys, ndshm
lock = ndshm.Lock({unique_name!r}, create=False)
lock.acquire()
print("held", flush=True)
sys.stdin.read()
"""], env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    threading.Timer(0.2, os.kill, (child.pid, signal.SIGKILL)).start()
    t0 = time.monotonic()
    assert lock.acquire(timeout=10)  # asleep when the owner dies
    assert lock.owner_died
    assert time.monotonic() - t0 < 5
    lock.release()
    child.wait(10)


def _count(lock, counter_name, n):
    arr = ndshm.attach(counter_name)
    for _ in range(n):
        with lock:
            arr[0] += 1


def test_lock_mutual_exclusion_fork(unique_name):
    arr = ndshm.create(unique_name, (1,), np.int64)
    lock = ndshm.segment_of(arr).lock
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_count, args=(lock, unique_name, 2000)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert arr[0] == 6000


def _event_child(ev, done):
    ok = ev.wait(10)
    done.set()
    sys.exit(0 if ok else 1)


def test_event_across_processes(unique_name):
    ev = ndshm.Event(unique_name)
    done = ndshm.Event(unique_name + "-done")
    assert not ev.is_set() and ev.wait(0.01) is False
    p = mp.get_context("spawn").Process(target=_event_child, args=(ev, done))
    p.start()
    time.sleep(0.2)
    assert not done.is_set()
    ev.set()
    assert done.wait(20)
    p.join(20)
    assert p.exitcode == 0
    assert ev.is_set() and ev.wait()
    ev.clear()
    assert not ev.is_set()


def _barrier_child(b, out):
    idx = b.wait(20)
    out.put(np.array([idx]))


def test_barrier_across_processes(unique_name):
    b = ndshm.Barrier(3, unique_name)
    out = ndshm.Queue(unique_name + "-q", slots=4, slot_bytes=64)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_barrier_child, args=(b, out)) for _ in range(2)]
    for p in procs:
        p.start()
    mine = b.wait(20)
    got = sorted([mine] + [int(out.get(timeout=20)[0]) for _ in range(2)])
    assert got == [0, 1, 2]
    for p in procs:
        p.join(20)
        assert p.exitcode == 0
    assert not b.broken and b.n_waiting == 0


def test_barrier_timeout_breaks(unique_name):
    b = ndshm.Barrier(2, unique_name)
    t0 = time.monotonic()
    with pytest.raises(ndshm.BrokenBarrierError) as ei:
        b.wait(timeout=0.05)
    assert isinstance(ei.value, threading.BrokenBarrierError)
    assert time.monotonic() - t0 < 2
    assert b.broken
    with pytest.raises(threading.BrokenBarrierError):
        b.wait(0)
    b.reset()
    assert not b.broken
    b2 = pickle.loads(pickle.dumps(b))
    t = threading.Thread(target=b2.wait, args=(5,))
    t.start()
    b.wait(5)
    t.join()
    b.abort()
    with pytest.raises(ndshm.BrokenBarrierError):
        b.wait(1)
    with pytest.raises(ValueError, match="parties 0 is not an int from 1 to"):
        ndshm.Barrier(0)


def test_dead_party_breaks_barrier_by_timeout(unique_name):
    b = ndshm.Barrier(3, unique_name)
    child = subprocess.Popen([sys.executable, "-c", f"""
import ndshm
b = ndshm.Barrier(3, {unique_name!r}, create=False)
b.wait(30)
"""], env=child_env())
    deadline = time.monotonic() + 20
    while b.n_waiting < 1 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.01)
    assert b.n_waiting == 1 and child.poll() is None  # the child is a party, waiting
    child.kill()  # a party dies; the third never comes
    child.wait(10)
    assert b.n_waiting == 1 and not b.broken  # nothing noticed the death yet
    t0 = time.monotonic()
    with pytest.raises(ndshm.BrokenBarrierError, match="2 of 3 parties"):
        b.wait(timeout=0.2)
    assert 0.15 <= time.monotonic() - t0 < 2
    assert b.broken


def test_barrier_wait_without_timeout_is_interrupted_by_ctrl_c(unique_name):
    b = ndshm.Barrier(2, unique_name)
    child = subprocess.Popen([sys.executable, "-c", f"""
import ndshm
b = ndshm.Barrier(2, {unique_name!r}, create=False)
try:
    b.wait()
except KeyboardInterrupt:
    print("interrupted", flush=True)
    raise
print("passed", flush=True)
"""], env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while b.n_waiting < 1 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.01)
        assert b.n_waiting == 1  # the child is inside wait()
        time.sleep(0.3)  # well asleep in the C call
    finally:
        out, err, elapsed = _interrupt(child)
    assert out.strip() == "interrupted" and "KeyboardInterrupt" in err, (out, err)
    assert child.returncode != 0
    assert elapsed < 2, elapsed
    # the party that left broke the barrier: nobody waits for it for ever
    assert b.broken
    t0 = time.monotonic()
    with pytest.raises(ndshm.BrokenBarrierError):
        b.wait()
    assert time.monotonic() - t0 < 1


def _interrupt(child: subprocess.Popen) -> tuple[str, str, float]:
    """Ctrl-C the waiting child: its output, and how long it took to exit (killed if it did not)."""
    t0 = time.monotonic()
    try:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return out, err, time.monotonic() - t0


@pytest.mark.parametrize("kind", ["lock", "event"])
def test_long_timed_waits_are_interrupted_by_ctrl_c(unique_name, kind):
    lock, ev = ndshm.Lock(unique_name), ndshm.Event(unique_name + "-ev")
    assert lock.acquire()  # held here: the child's acquire waits
    call = "ndshm.Lock(n, create=False).acquire(timeout=60)" if kind == "lock" else \
        "ndshm.Event(n + '-ev', create=False).wait(60)"
    child = subprocess.Popen([sys.executable, "-c", f"""
import ndshm
n = {unique_name!r}
print("waiting", flush=True)
try:
    {call}
except KeyboardInterrupt:
    print("interrupted", flush=True)
    raise
"""], env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "waiting"
        time.sleep(0.5)  # inside the C call
    finally:
        out, err, elapsed = _interrupt(child)
    assert out.strip() == "interrupted" and "KeyboardInterrupt" in err, (out, err)
    assert elapsed < 2, elapsed
    lock.release()


def test_long_timed_waits_keep_their_timeout(unique_name):
    lock, ev = ndshm.Lock(unique_name), ndshm.Event(unique_name + "-ev")
    assert lock.acquire()
    for wait in (lambda: lock.acquire(timeout=0.6), lambda: ev.wait(0.6)):
        t0 = time.monotonic()
        assert wait() is False
        assert 0.55 <= time.monotonic() - t0 < 1.5
    threading.Timer(0.7, lock.release).start()  # after a few slices
    threading.Timer(0.7, ev.set).start()
    t0 = time.monotonic()
    assert lock.acquire(timeout=30) and ev.wait(30)
    assert 0.6 <= time.monotonic() - t0 < 5
    lock.release()


def test_barrier_waits_in_slices_keep_their_timeout(unique_name):
    b = ndshm.Barrier(2, unique_name)
    t0 = time.monotonic()
    with pytest.raises(ndshm.BrokenBarrierError, match="before the timeout"):
        b.wait(timeout=0.6)  # longer than a slice: the remainder is passed on, not restarted
    assert 0.55 <= time.monotonic() - t0 < 1.5
    b.reset()
    other = ndshm.Barrier(2, unique_name, create=False)
    threading.Timer(0.7, other.wait, (5,)).start()  # arrives after a few slices
    t0 = time.monotonic()
    assert b.wait() == 0 and 0.6 <= time.monotonic() - t0 < 5
    assert not b.broken and b.n_waiting == 0


def test_in_segment_objects(unique_name):
    arr = ndshm.create(unique_name, (4,), np.float32)
    seg = ndshm.segment_of(arr)
    lock, ev, bar = seg.lock, seg.event, seg.barrier(1)
    assert len({lock.address, ev.address, bar.address}) == 3
    assert lock.segment is seg
    with lock:
        assert lock.locked()
    ev.set()
    assert seg.event.is_set()  # the same shared bytes
    assert bar.wait(1) == 0
    code = f"""
import ndshm
arr = ndshm.attach({unique_name!r})
seg = ndshm.segment_of(arr)
print(seg.event.is_set(), seg.lock.acquire(blocking=False))
"""
    assert run_python(code).stdout.split() == ["True", "True"]
    # pickles by reference through the segment
    lock2 = pickle.loads(pickle.dumps(lock))
    assert lock2.address == lock.address


def test_direct_in_segment_constructors(unique_name):
    from ndshm._segment import Segment
    from ndshm._sync import Barrier, Event, Lock

    seg = Segment.create(unique_name, shape=(0,), dtype=np.uint8)
    for i, obj in enumerate([Lock._in_segment(seg, 0), Event._in_segment(seg, 1), Barrier._in_segment(seg, 2, 2)]):
        assert obj.address == seg.sync_address(i)
    with pytest.raises(ndshm.InvalidValueError, match="sync index 99 is not below 4"):
        Lock._in_segment(seg, 99)
    seg.close()


def test_timeouts_nan_rejected_inf_forever_non_number_typeerror(unique_name):
    nan, inf = float("nan"), float("inf")
    lock, ev = ndshm.Lock(unique_name), ndshm.Event(unique_name + "-ev")
    bar = ndshm.Barrier(1, unique_name + "-bar")
    ev.set()  # without validation none of these would raise (nor hang): a NaN wait would succeed
    for call in (lambda t: lock.acquire(timeout=t), lambda t: lock.acquire(False, t), ev.wait,
                 lambda t: bar.wait(timeout=t)):
        with pytest.raises(ValueError, match="nan"):
            call(nan)
        with pytest.raises(TypeError, match="'x'"):
            call("x")
        with pytest.raises(TypeError, match="b'1'"):
            call(b"1")
    assert not lock.locked()
    with pytest.raises(ValueError, match="nan"):
        ndshm.Barrier(2, unique_name + "-b2", timeout=nan)
    with pytest.raises(TypeError, match="'1'"):
        ndshm.Barrier(2, unique_name + "-b3", timeout="1")
    # +inf (like None or a negative number) waits for ever
    assert lock.acquire(timeout=inf) and lock.locked()
    threading.Timer(0.3, lock.release).start()
    t0 = time.monotonic()
    assert lock.acquire(timeout=inf) and time.monotonic() - t0 >= 0.25
    lock.release()
    ev.clear()
    threading.Timer(0.3, ev.set).start()
    assert ev.wait(inf) is True
    assert ev.wait(np.float64(0.01)) is True and lock.acquire(timeout=np.float32(0.5))
    lock.release()
    assert bar.wait(inf) == 0 and bar.wait(timeout=np.float64(1.0)) == 0
    assert ndshm.Barrier(1, unique_name + "-b4", timeout=inf).wait() == 0


def test_barrier_parties_validated(unique_name):
    from ndshm._segment import Segment
    from ndshm._sync import Barrier

    for bad in (True, False, "3", 1.5, 2.0, None, np.float64(2)):
        with pytest.raises(TypeError, match=repr(bad).replace("(", r"\(").replace(")", r"\)")):
            ndshm.Barrier(bad, unique_name)
    for bad in (0, -1, (1 << 20) + 1, 1 << 40):
        with pytest.raises(ValueError, match=str(bad)):
            ndshm.Barrier(bad, unique_name)
    b = ndshm.Barrier(np.int64(1), unique_name)
    assert type(b.parties) is int and b.parties == 1 and b.wait(1) == 0
    assert ndshm.Barrier(1 << 20, unique_name + "-big").parties == 1 << 20
    seg = Segment.create(unique_name + "-seg", shape=(0,), dtype=np.uint8)
    with pytest.raises(TypeError, match="True"):
        seg.barrier(True)
    with pytest.raises(TypeError, match="'2'"):
        Barrier._in_segment(seg, 2, "2")
    seg.close()


def test_standalone_name_and_dir_types(unique_name):
    for cls in (ndshm.Lock, ndshm.Event, lambda *a, **k: ndshm.Barrier(2, *a, **k)):
        for create in (True, False):
            with pytest.raises(TypeError, match="123"):
                cls(123, create=create)
            with pytest.raises(TypeError, match="b'x'"):
                cls(b"x", create=create)
            with pytest.raises(TypeError, match="4567"):
                cls(unique_name, dir=4567, create=create)


def _message(exc_type: type, call, *args) -> str:
    """The message of the ``exc_type`` that ``call(*args)`` raises (and nothing else of it)."""
    try:
        call(*args)
    except exc_type as exc:
        return str(exc)
    raise AssertionError(f"{call} did not raise {exc_type.__name__}")


def _assert_freed_after(make, poke) -> None:
    """``poke(obj)`` on a fresh ``make()`` runs error paths; with the cyclic collector off, ``del``
    must free the object at once, and the error paths must have left no cyclic garbage: no
    exception it raised (exception -> traceback -> frame -> object) keeps anything alive."""
    gc.collect()
    gc.disable()
    try:
        obj = make()
        ref = weakref.ref(obj)
        poke(obj)
        del obj
        assert ref() is None, gc.get_referrers(ref())
        assert gc.collect() == 0
    finally:
        gc.enable()


class _Interrupt(Exception):
    pass


def _interrupted(call) -> str:
    """Runs ``call()`` with a SIGALRM handler that raises _Interrupt 0.1 s in, as Ctrl-C would."""
    def handler(signum, frame):
        raise _Interrupt("alarm")
    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        return _message(_Interrupt, call)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.skipif(PYPY, reason="PyPy frees objects only when its collector runs: nothing is freed at del")
def test_errors_raised_by_sync_objects_do_not_keep_them_alive(unique_name):
    nan = math.nan

    def lock_errors(lock):
        assert lock.acquire()
        assert lock.acquire(timeout=0.02) is False  # the timed-out path
        assert lock.acquire(blocking=False) is False
        lock.release()
        assert "not held by any process" in _message(ndshm.NdshmPermissionError, lock.release)
        assert "nan" in _message(ValueError, lock.acquire, True, nan)
        assert "'x'" in _message(TypeError, lock.acquire, True, "x")

    def event_errors(ev):
        assert ev.wait(0.02) is False
        assert "nan" in _message(ValueError, ev.wait, nan)

    def barrier_errors(b):
        assert "before the timeout" in _message(ndshm.BrokenBarrierError, b.wait, 0.02)
        assert "broken" in _message(ndshm.BrokenBarrierError, b.wait)  # already broken
        assert "nan" in _message(ValueError, b.wait, nan)
        b.reset()
        assert _interrupted(b.wait) == "alarm"  # an exception inside the sliced wait
        assert b.broken

    _assert_freed_after(lambda: ndshm.Lock(unique_name), lock_errors)
    _assert_freed_after(lambda: ndshm.Event(unique_name + "-ev"), event_errors)
    _assert_freed_after(lambda: ndshm.Barrier(2, unique_name + "-b"), barrier_errors)
    seg = ndshm.segment_of(ndshm.create(unique_name + "-arr", 4))
    _assert_freed_after(lambda: seg.lock, lock_errors)
    _assert_freed_after(lambda: seg.event, event_errors)
    _assert_freed_after(lambda: seg.barrier(2), barrier_errors)

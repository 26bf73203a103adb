"""ndshm.Broadcast: publish-subscribe between real processes -- order, late joiners, block
backpressure without loss, overwrite with exact lag counts, shutdown draining in two subscriber
processes, kill -9 of a subscriber inside receive and of a publisher inside loan, receive views,
bad arguments and corrupt rings."""

from __future__ import annotations

import math
import mmap
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import ndshm
from conftest import PYPY, child_env, collect, expect_line, finish_python, run_python, start_python


def assert_closed(arr: np.ndarray) -> None:
    """The array of an ended loan/receive block: every use raises ClosedError on CPython; on PyPy
    (which cannot change an ndarray's class) it is emptied."""
    if PYPY:
        assert arr.size == 0
        return
    with pytest.raises(ndshm.ClosedError, match="after its with block"):
        arr.size
    with pytest.raises(ndshm.ClosedError):
        arr[0]
    with pytest.raises(ndshm.ClosedError):
        np.sum(arr)


# ---------------------------------------------------------------- in one process

def test_put_get_receive_loan(unique_name):
    with ndshm.Broadcast(unique_name, slots=8, slot_bytes=4096) as b:
        assert (b.slots, b.slot_bytes, b.policy) == (8, 4096, "block")
        s1, s2 = b.subscribe(), b.subscribe()
        assert b.subscribers == 2
        msgs = [np.arange(10, dtype=np.float32).reshape(2, 5), np.array(3.5), np.zeros((0, 3), np.int16),
                np.array([(1, 2.0)], dtype=[("a", "<i4"), ("b", "<f8")]), np.arange(6)[::2]]
        for m in msgs:
            b.put(m)
        with b.loan((3,), np.uint8) as out:
            out[:] = [7, 8, 9]
        assert_closed(out)
        assert b.published == 6 and s1.pending == 6
        for m in msgs:
            got = s1.get(timeout=0)
            if m.dtype.names:  # as through an untyped Queue: structured items travel as raw |V<n>
                assert got.dtype == np.dtype(f"V{m.dtype.itemsize}") and got.tobytes() == m.tobytes()
                continue
            assert got.dtype == m.dtype and got.shape == m.shape and np.array_equal(got, m)
        assert s1.get(timeout=0).tolist() == [7, 8, 9]
        for m in msgs:
            with s2.receive(timeout=0) as view:
                assert not view.flags.writeable
                assert view.tobytes() == m.tobytes() and view.shape == m.shape
            assert_closed(view)
        with s2.receive(timeout=0) as view:
            assert view.tolist() == [7, 8, 9]
        with pytest.raises(ndshm.Empty):
            s1.get(timeout=0)
        t0 = time.monotonic()
        with pytest.raises(ndshm.Empty):
            s2.get(timeout=0.05)
        assert time.monotonic() - t0 >= 0.04
        with pytest.raises(ValueError, match="drop it"):  # a loan that raises is discarded: nobody sees it
            with b.loan((2,), np.int8) as out:
                raise ValueError("drop it")
        b.put(np.array([1]))
        assert s1.get(timeout=0).tolist() == [1]
        s1.close()
        assert b.subscribers == 1
        with pytest.raises(ndshm.ClosedError):
            s1.get()


def test_block_backpressure_and_leaving(unique_name):
    with ndshm.Broadcast(unique_name, slots=2, slot_bytes=64) as b:
        b.put(np.zeros(1))  # nobody subscribed: dropped, never waits
        fast, slow = b.subscribe(), b.subscribe()
        b.put(np.array([1]))
        b.put(np.array([2]))
        with pytest.raises(ndshm.Full):
            b.put(np.array([3]), timeout=0)
        assert fast.get(timeout=0)[0] == 1 and fast.get(timeout=0)[0] == 2
        with pytest.raises(ndshm.Full, match="slowest subscriber"):
            b.put(np.array([3]), timeout=0.02)
        slow.close()  # leaving releases the publishers
        b.put(np.array([3]), timeout=0)
        assert fast.get(timeout=0)[0] == 3


def test_overwrite_in_process_and_held_views(unique_name):
    with ndshm.Broadcast(unique_name, slots=4, slot_bytes=64, policy="overwrite") as b:
        s = b.subscribe()
        for i in range(10):
            b.put(np.array([i]))
        with pytest.raises(ndshm.Lagged) as e:
            s.get(timeout=0)
        assert e.value.missed == 6 and "6" in str(e.value)
        assert isinstance(e.value, ndshm.NdshmError)
        assert [int(s.get(timeout=0)[0]) for _ in range(4)] == [6, 7, 8, 9]
        b.put(np.array([10]))
        with s.receive(timeout=0) as view:  # an in-place read is never overwritten under its reader
            for i in range(11, 14):
                b.put(np.array([i]), timeout=0)
            with pytest.raises(ndshm.Full, match="reading the oldest slot in place"):
                b.put(np.array([14]), timeout=0.02)
            assert view[0] == 10
        assert [int(s.get(timeout=0)[0]) for _ in range(3)] == [11, 12, 13]


def test_iteration_raises_lagged_and_goes_on(unique_name):
    with ndshm.Broadcast(unique_name, slots=2, slot_bytes=64, policy="overwrite") as b:
        s = b.subscribe()
        for i in range(5):
            b.put(np.array([i]))
        b.shutdown()
        got, missed = [], 0
        while True:
            try:
                for arr in s:
                    got.append(int(arr[0]))
                break
            except ndshm.Lagged as e:
                missed += e.missed
        assert (got, missed) == ([3, 4], 3)


def test_receive_views(unique_name):
    b = ndshm.Broadcast(unique_name, slots=2, slot_bytes=64)
    s = b.subscribe()
    b.put(np.arange(4, dtype=np.int64))
    with s.receive() as view:
        with pytest.raises(ValueError, match="read-only"):
            view[0] = 1  # read-only
        with pytest.raises(BufferError, match="still held"):
            s.get(timeout=0)  # one message at a time
        kept = view[1:]
    assert_closed(view)
    if not PYPY:  # CPython: the derived view keeps the message held (never recycled under it)
        b.put(np.arange(4, 8, dtype=np.int64), timeout=0)
        with pytest.raises(ndshm.Full):
            b.put(np.arange(8, 12, dtype=np.int64), timeout=0)  # the held one's slot
        with pytest.raises(BufferError, match="still held"):
            s.get(timeout=0)
        assert kept.tolist() == [1, 2, 3]
        del kept
        collect()
        assert s.get(timeout=0).tolist() == [4, 5, 6, 7]
    else:
        del kept
    b.put(np.arange(3, dtype=np.float64))
    with s.receive() as view:
        keep = view.view()
    b.close()
    del b
    collect()
    if not PYPY:  # the ring stays mapped while a view lives
        assert keep.tolist() == [0.0, 1.0, 2.0]
    del keep
    collect()


@pytest.mark.skipif(PYPY, reason="reference counts: PyPy publishes whatever still refers to the array")
@pytest.mark.parametrize("policy", ["block", "overwrite"])
@pytest.mark.parametrize("export", ["memoryview", "list", "alias"])
def test_loan_with_a_reference_kept_past_the_block_is_published_and_pinned(unique_name, export, policy):
    """As the queue's: an alias or export of a loan() array kept after the block does not stop the
    message (every subscriber gets it); the array is left as it is and its slot pinned, under
    either policy, until the reference is gone."""
    with ndshm.Broadcast(unique_name, slots=2, slot_bytes=64, policy=policy) as b:
        s = b.subscribe()
        with b.loan((4,), np.int64) as out:
            out[:] = 7
            kept = {"memoryview": memoryview, "list": lambda a: [a], "alias": lambda a: a}[export](out)
        assert s.get(timeout=1).tolist() == [7] * 4
        b.put(np.arange(2))
        assert s.get(timeout=1).tolist() == [0, 1]
        with pytest.raises(ndshm.BusyError, match=r"broadcast slot 0 is pinned by this process"):
            b.put(np.arange(2), timeout=0)
        assert out.tolist() == [7] * 4
        del kept, out
        with b.loan((2,), np.int64) as out:  # the pin is gone: published as usual
            tmp = memoryview(out)
            out[:] = 3
            del tmp
        assert s.get(timeout=1).tolist() == [3, 3]
        assert_closed(out)


_INTERRUPTED = """
import time, numpy as np, ndshm
b = ndshm.Broadcast.attach({name!r})
s = b.subscribe()
op = {op!r}
if op in ("put", "loan"):  # block policy: this subscriber has read neither, so both slots stay taken
    b.put(np.arange(2))
    b.put(np.arange(2))
print("ready", flush=True)
t0 = time.monotonic()
try:
    if op == "get":
        s.get(timeout=3600)
    elif op == "receive":
        with s.receive(timeout=3600):
            pass
    elif op == "put":
        b.put(np.arange(2), timeout=3600)
    else:
        with b.loan((2,), np.int64, timeout=3600):
            pass
    print("returned")
except KeyboardInterrupt:
    print("interrupted %.3f" % (time.monotonic() - t0))
"""


@pytest.mark.parametrize("op", ["get", "receive", "put", "loan"])
def test_long_finite_timeouts_are_interruptible(unique_name, op):
    """Ctrl-C ends a wait with a long finite timeout at once, as for the queue (waits go in slices)."""
    with ndshm.Broadcast(unique_name, slots=2, slot_bytes=64) as b:
        p = start_python(_INTERRUPTED.format(name=b.name, op=op))
        expect_line(p, "ready")
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)
        out = finish_python(p, 20).split()
        assert out[0] == "interrupted" and float(out[1]) < 3.0, out


def test_long_finite_timeouts_expire_with_their_own_value(unique_name):
    """A wait made in slices still times out after its own timeout, and the error says so."""
    with ndshm.Broadcast(unique_name, slots=2, slot_bytes=64) as b:
        s = b.subscribe()
        t0 = time.monotonic()
        with pytest.raises(ndshm.Empty, match=r"after 0\.6 s") as e:
            s.get(timeout=0.6)
        assert 0.55 < time.monotonic() - t0 < 2.0 and e.value.errname == "NDSHM_ETIMEDOUT"
        with pytest.raises(ndshm.Empty, match=r"after 0\.4 s"):
            with s.receive(timeout=0.4):
                pass
        b.put(np.arange(2))
        b.put(np.arange(2))
        with pytest.raises(ndshm.Full, match=r"full \(2 slots\) after 0\.5 s"):
            b.put(np.arange(2), timeout=0.5)
        with pytest.raises(ndshm.Full, match=r"after 0\.3 s"):
            with b.loan((2,), np.int64, timeout=0.3):
                pass


def test_close_and_context_managers(unique_name):
    b = ndshm.Broadcast(unique_name, slots=2, slot_bytes=64)
    with b.subscribe() as s:
        assert not s.closed
    assert s.closed
    s2 = b.subscribe()
    b.close()
    assert b.closed and s2.closed
    for call in (lambda: b.put(np.zeros(1)), b.subscribe, lambda: s2.get(timeout=0), b.shutdown):
        with pytest.raises(ndshm.ClosedError):
            call()
    with pytest.raises(ndshm.SegmentNotFoundError):
        ndshm.Broadcast.attach(unique_name)  # the creator removed the name
    assert "closed" in repr(b) and "closed" in repr(s2)


# ---------------------------------------------------------------- bad input

def test_bad_arguments(unique_name, tmp_path):
    B = ndshm.Broadcast
    for bad, exc in [(0, ValueError), (-1, ValueError), (2**21, ValueError), ("4", TypeError), (True, TypeError),
                     (2.0, TypeError)]:
        with pytest.raises(exc, match="slots"):
            B(unique_name, slots=bad, slot_bytes=64)
    for bad, exc in [(0, ValueError), (-5, ValueError), (2**63, ValueError), ("x", TypeError), (None, TypeError)]:
        with pytest.raises(exc, match="slot_bytes"):
            B(unique_name, slots=2, slot_bytes=bad)
    with pytest.raises(ValueError, match="'fast'"):
        B(unique_name, slots=2, slot_bytes=64, policy="fast")
    with pytest.raises(TypeError, match="policy 1"):
        B(unique_name, slots=2, slot_bytes=64, policy=1)
    with pytest.raises(TypeError, match="slots= and slot_bytes="):
        B(unique_name)
    with pytest.raises(ValueError, match="mode"):
        B(unique_name, slots=2, slot_bytes=64, mode=0o17777)
    with pytest.raises(TypeError, match="persist"):
        B(unique_name, slots=2, slot_bytes=64, persist="yes")
    with pytest.raises(ndshm.InvalidValueError, match="bad/name"):
        B("bad/name", slots=2, slot_bytes=64)
    with pytest.raises(ndshm.InvalidValueError, match="overflows"):
        B(unique_name, slots=2**20, slot_bytes=2**50)
    with pytest.raises(ndshm.SegmentNotFoundError):
        B.attach(unique_name + "-none")
    with ndshm.Queue(unique_name + "-q", slots=2, slot_bytes=64):
        with pytest.raises(ndshm.InvalidValueError, match="a queue, not a broadcast"):
            B.attach(unique_name + "-q")
    with B(unique_name, slots=3, slot_bytes=64) as b:
        assert b.slots == 4
        with pytest.raises(ndshm.SegmentExistsError):
            B(unique_name, slots=2, slot_bytes=64)
        s = b.subscribe()
        for bad, exc in [(math.nan, ValueError), (-1, ValueError), ("1", TypeError), ([1], TypeError)]:
            with pytest.raises(exc, match="timeout"):
                b.put(np.zeros(1), timeout=bad)
            with pytest.raises(exc, match="timeout"):
                s.get(timeout=bad)
            with pytest.raises(exc, match="timeout"):
                s.receive(timeout=bad)
            with pytest.raises(exc, match="timeout"):
                b.loan(1, np.int8, timeout=bad)
        with pytest.raises(ndshm.MessageTooBigError, match="65 bytes"):
            b.put(np.zeros(65, np.uint8))
        with pytest.raises(ndshm.MessageTooBigError, match="128 bytes"):
            with b.loan(16, np.float64):
                pass
        with pytest.raises(TypeError, match="holds Python objects"):
            b.put(np.array([object()]))
        with pytest.raises(ValueError, match="-1"):
            b.loan((-1,), np.int8)
        with pytest.raises(TypeError, match="immediate"):
            b.shutdown(immediate="yes")
        with pytest.raises(TypeError, match="pickled"):
            pickle.dumps(s)
        rcv = s.receive(timeout=0)
        with pytest.raises(RuntimeError, match="without being entered"):
            rcv.__exit__(None, None, None)
        assert s.pending == 0  # nothing was put by the refused calls


def test_corrupt_ring_is_an_error_not_a_crash(unique_name, tmp_path):
    with ndshm.Broadcast(unique_name, slots=2, slot_bytes=64, dir=tmp_path) as b:
        s = b.subscribe()
        b.put(np.arange(4, dtype=np.int32))
        b.put(np.arange(4, dtype=np.int32))
        path = tmp_path / f"ndshm.{unique_name}"
        with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
            data = np.frombuffer(m, np.uint8)
            start = m.find(np.uint64(0x5453414344424E44).tobytes())  # the ring's magic
            ring = data[start:start + b.ring_bytes]
            hdr = b.ring_bytes - 2 * 384  # the slots: 320-byte header + 64 bytes of data each
            slot0 = ring[hdr:hdr + 384]
            slot0[8:16] = np.frombuffer(np.uint64(1 << 40).tobytes(), np.uint8)  # nbytes
            slot1 = ring[hdr + 384:hdr + 768]
            slot1[56:64] = np.frombuffer(np.int64(-3).tobytes(), np.uint8)  # shape[0]
            del data, ring, slot0, slot1
        with pytest.raises(ndshm.CorruptSegmentError, match="claims 1099511627776 bytes"):
            s.get(timeout=0)
        with pytest.raises(ndshm.CorruptSegmentError):
            with s.receive(timeout=0):
                pass
        with pytest.raises(ndshm.Empty):  # both were passed over: the ring goes on
            s.get(timeout=0)
        b.put(np.arange(3, dtype=np.int8))
        assert s.get(timeout=0).tolist() == [0, 1, 2]
        with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
            data = np.frombuffer(m, np.uint8)
            ring = data[start:start + b.ring_bytes]
            ring[hdr + 384:hdr + 392] = 0xEE  # the state word of slot 1, where position 3 (the next) goes
            del data, ring
        t0 = time.monotonic()
        with pytest.raises(ndshm.CorruptSegmentError, match="corrupt"):
            s.get()  # waiting for ever would spin: refused at once
        assert time.monotonic() - t0 < 2


# ---------------------------------------------------------------- real processes

SUBSCRIBER = """
import sys, numpy as np, ndshm
b = ndshm.Broadcast.attach({name!r})
s = b.subscribe()
print("subscribed", flush=True)
"""


def test_late_subscriber_sees_only_later_messages(unique_name):
    with ndshm.Broadcast(unique_name, slots=16, slot_bytes=64) as b:
        early = b.subscribe()
        for i in range(5):
            b.put(np.array([i]))
        p = start_python(SUBSCRIBER.format(name=unique_name) + """
got = [int(s.get(timeout=10)[0]) for _ in range(5)]
try:
    s.get(timeout=0.1)
    print("more")
except ndshm.Empty:
    print(got)
""")
        expect_line(p, "subscribed")
        for i in range(5, 10):
            b.put(np.array([i]))
        assert finish_python(p).strip() == "[5, 6, 7, 8, 9]"
        assert [int(early.get(timeout=0)[0]) for _ in range(10)] == list(range(10))


def test_overwrite_reports_exactly_how_many_were_lost(unique_name):
    with ndshm.Broadcast(unique_name, slots=8, slot_bytes=64, policy="overwrite") as b:
        p = start_python(SUBSCRIBER.format(name=unique_name) + """
sys.stdin.readline()
out = []
while True:
    try:
        out.append(int(s.get(timeout=10)[0]))
    except ndshm.Lagged as e:
        out.append(f"lagged {e.missed}")
    except ndshm.ShutDown:
        break
print(out)
""")
        expect_line(p, "subscribed")
        for i in range(100):
            b.put(np.array([i]), timeout=0)  # never waits for the sleeping subscriber
        b.shutdown()
        p.stdin.write("go\n")
        p.stdin.flush()
        assert finish_python(p).strip() == str(["lagged 92"] + list(range(92, 100)))


def test_block_never_loses_one(unique_name):
    """Two subscriber processes, one slow, a small ring: each gets every message, in order."""
    n = 3000
    with ndshm.Broadcast(unique_name, slots=4, slot_bytes=64) as b:
        code = SUBSCRIBER.format(name=unique_name) + """
slow = sys.argv[1] == "slow"
import time
expect = 0
for arr in s:
    assert arr.shape == (2,) and int(arr[0]) == expect and int(arr[1]) == -expect, (arr, expect)
    expect += 1
    if slow and expect % 100 == 0:
        time.sleep(0.005)
print(expect)
"""
        procs = [subprocess.Popen([sys.executable, "-c", code, kind], env=child_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for kind in ("slow", "fast")]
        for p in procs:
            expect_line(p, "subscribed")
        for i in range(n):
            if i % 2:
                b.put(np.array([i, -i]), timeout=30)
            else:
                with b.loan(2, np.int64, timeout=30) as out:
                    out[:] = (i, -i)
        b.shutdown()
        assert [finish_python(p).strip() for p in procs] == [str(n), str(n)]


def test_shutdown_drains_then_ends_iteration_in_two_processes(unique_name):
    with ndshm.Broadcast(unique_name, slots=32, slot_bytes=64) as b:
        code = SUBSCRIBER.format(name=unique_name) + """
sys.stdin.readline()
print([int(a[0]) for a in s])
try:
    s.get(timeout=0)
except ndshm.ShutDown:
    print("shut down")
"""
        procs = [start_python(code) for _ in range(2)]
        for p in procs:
            expect_line(p, "subscribed")
        for i in range(10):
            b.put(np.array([i]))
        # from another process: the shutdown is the ring's, not the handle's
        run_python(f"""
            import numpy as np, ndshm
            b = ndshm.Broadcast.attach({unique_name!r})
            b.shutdown()
            try:
                b.put(np.zeros(1))
            except ndshm.ShutDown:
                pass
            else:
                raise SystemExit("put after shutdown went through")
        """)
        assert b.is_shutdown
        with pytest.raises(ndshm.ShutDown):
            b.put(np.zeros(1))
        with pytest.raises(ndshm.ShutDown):
            with b.loan(1, np.int8):
                pass
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            assert finish_python(p).splitlines() == [str(list(range(10))), "shut down"]


def test_shutdown_immediate_and_wakes_waiters(unique_name):
    with ndshm.Broadcast(unique_name, slots=2, slot_bytes=64) as b:
        s = b.subscribe()
        b.put(np.zeros(1))
        b.put(np.zeros(1))
        p = start_python(f"""
import numpy as np, ndshm, time
b = ndshm.Broadcast.attach({unique_name!r})
print("ready", flush=True)
t0 = time.monotonic()
try:
    b.put(np.zeros(1))          # blocked: the ring is full
except ndshm.ShutDown:
    print("shut down", round(time.monotonic() - t0) < 5)
""")
        expect_line(p, "ready")
        time.sleep(0.3)
        b.shutdown(immediate=True)
        assert finish_python(p).strip() == "shut down True"
        with pytest.raises(ndshm.ShutDown):
            s.get(timeout=0)  # immediate: the two queued ones are dropped
        assert list(s) == []


@pytest.mark.parametrize("policy", ["block", "overwrite"])
def test_kill_subscriber_inside_receive(unique_name, policy):
    """A subscriber killed (-9) while it reads in place: publishers go on after a liveness check,
    the other subscriber gets everything."""
    with ndshm.Broadcast(unique_name, slots=4, slot_bytes=64, policy=policy) as b:
        live = b.subscribe()
        p = start_python(SUBSCRIBER.format(name=unique_name) + """
with s.receive(timeout=10) as view:
    print("holding", int(view[0]), flush=True)
    sys.stdin.read()                    # killed here
""")
        expect_line(p, "subscribed")
        assert b.subscribers == 2
        b.put(np.array([0]))
        expect_line(p, "holding 0")
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        t0 = time.monotonic()
        got = []
        for i in range(1, 13):
            b.put(np.array([i]), timeout=5)
            got.append(int(live.get(timeout=5)[0]))
        assert got == list(range(12))
        assert time.monotonic() - t0 < 3
        assert b.subscribers == 1


@pytest.mark.parametrize("policy", ["block", "overwrite"])
def test_kill_publisher_inside_loan(unique_name, policy):
    """A publisher killed (-9) inside loan: its message is skipped by every subscriber, the other
    publishers and the subscribers go on."""
    with ndshm.Broadcast(unique_name, slots=4, slot_bytes=64, policy=policy) as b:
        s = b.subscribe()
        b.put(np.array([1]))
        p = start_python(f"""
import sys, numpy as np, ndshm
b = ndshm.Broadcast.attach({unique_name!r})
with b.loan(1, np.int64) as out:
    out[0] = 666                        # mid-message
    print("loaned", flush=True)
    sys.stdin.read()                    # killed here
""")
        expect_line(p, "loaned")
        b.put(np.array([2]))  # claimed behind the dead publisher's position
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        t0 = time.monotonic()
        got = [int(s.get(timeout=5)[0]) for _ in range(2)]
        assert got == [1, 2]  # 666 never arrives
        for i in range(3, 12):  # the ring laps past the dead one's slot
            b.put(np.array([i]), timeout=5)
            assert int(s.get(timeout=5)[0]) == i
        assert time.monotonic() - t0 < 3
        with pytest.raises(ndshm.Empty):
            s.get(timeout=0.05)


def test_pickled_to_a_process(unique_name):
    with ndshm.Broadcast(unique_name, slots=4, slot_bytes=64, policy="overwrite") as b:
        blob = pickle.dumps(b)
        out = run_python(f"""
            import pickle, numpy as np, ndshm
            b = pickle.loads({blob!r})
            print(b.name, b.policy, b.slots)
        """)
        assert out.stdout.split() == [unique_name, "overwrite", "4"]

"""Queue shutdown (Python 3.13's queue.Queue.shutdown), registered producers ending the stream,
and Ctrl-C during long finite waits; every cross-process case runs in real interpreters."""

from __future__ import annotations

import json
import queue as stdqueue
import signal
import time

import numpy as np
import pytest

import ndshm
from conftest import expect_line, finish_python, start_python


CONSUMER = """
import json, sys, time, ndshm
q = ndshm.Queue.attach(sys.argv[1])
print("ready", flush=True)
got = [int(a[0]) for a in q]  # ends at the shutdown, once drained
try:
    q.get(timeout=5)
    after = "got one"
except ndshm.ShutDown as e:
    after = str(e)
print(json.dumps({"got": got, "after": after}), flush=True)
"""


def test_shutdown_drains_then_ends_iteration_in_two_consumer_processes(unique_name):
    q = ndshm.Queue(unique_name, slots=8, slot_bytes=64)
    consumers = [start_python(CONSUMER, unique_name) for _ in range(2)]
    for c in consumers:
        expect_line(c, "ready")
    for i in range(200):  # more than the slots: the consumers drain while we put
        q.put(np.array([i], np.int64))
    # shut down from a third process while messages may still be queued
    shutter = start_python("""
        import sys, ndshm
        q = ndshm.Queue.attach(sys.argv[1])
        q.shutdown()
        print(q.is_shutdown)
    """, unique_name)
    assert finish_python(shutter).strip() == "True"
    with pytest.raises(ndshm.ShutDown, match="shut down"):
        q.put(np.array([999], np.int64))
    outs = [json.loads(finish_python(c).strip().splitlines()[-1]) for c in consumers]
    got = outs[0]["got"] + outs[1]["got"]
    assert sorted(got) == list(range(200))  # every message exactly once, none lost
    assert all(o["after"].startswith("queue ") and "shut down" in o["after"] for o in outs)
    assert q.qsize() == 0 and q.is_shutdown
    q.close()


def test_shutdown_in_one_process(unique_name):
    with ndshm.Queue(unique_name, slots=4, slot_bytes=64) as q:
        assert not q.is_shutdown
        q.put(np.arange(3))
        with q.loan((2,), np.int32) as out:  # a loan made before the shutdown is delivered
            q.shutdown()
            out[:] = [7, 8]
        assert q.is_shutdown
        for call in (lambda: q.put(np.arange(2)), lambda: q.put_nowait(np.arange(2)),
                     lambda: q.put_many([np.arange(2), np.arange(3)]), lambda: q.loan((2,), np.int32).__enter__(),
                     q.register_producer):
            with pytest.raises(ndshm.ShutDown):
                call()
        if hasattr(stdqueue, "ShutDown"):  # Python 3.13+: also the stdlib's
            with pytest.raises(stdqueue.ShutDown):
                q.put(np.arange(2))
        assert q.get().tolist() == [0, 1, 2]
        with q.receive() as view:
            assert view.tolist() == [7, 8]
        t0 = time.monotonic()
        for call in (q.get, q.get_nowait, lambda: q.get(timeout=100), lambda: q.receive().__enter__(),
                     lambda: q.get_many(8)):
            with pytest.raises(ndshm.ShutDown, match="shut down"):
                call()
        assert time.monotonic() - t0 < 1.0  # drained: no call waits
        assert list(q) == []
        q.shutdown()  # idempotent
        q.shutdown(immediate=True)
        assert q.is_shutdown
    with pytest.raises(ndshm.ClosedError):
        q.shutdown()


def test_immediate_shutdown_discards_what_is_queued(unique_name):
    with ndshm.Queue(unique_name, slots=8, slot_bytes=64) as q:
        for i in range(5):
            q.put(np.array([i]))
        assert q.get().tolist() == [0]
        q.shutdown(immediate=True)
        assert q.qsize() == 0 and q.empty()
        with pytest.raises(ndshm.ShutDown):
            q.get_nowait()
        assert list(q) == []


def test_put_many_counts_what_went_in_before_the_shutdown(unique_name):
    with ndshm.Queue(unique_name, slots=4, slot_bytes=64) as q:
        q.put_many([np.arange(2)] * 2)
        q.shutdown()
        with pytest.raises(ndshm.ShutDown) as e:
            q.put_many([np.arange(2)] * 2)
        assert e.value.arrays_put == 0
        assert len(q.get_many(8)) == 2


SLEEPER = """
import sys, time, numpy as np, ndshm
q = ndshm.Queue.attach(sys.argv[1])
print("ready", flush=True)
t0 = time.monotonic()
try:
    if sys.argv[2] == "put":
        q.put(np.arange(4))          # the queue is full: blocks
    elif sys.argv[2] == "loan":
        with q.loan((4,), np.int64) as out:
            out[:] = 1
    elif sys.argv[2] == "get":
        q.get()                      # the queue is empty: sleeps
    else:
        with q.receive(timeout=3600) as view:
            pass
    print("returned")
except ndshm.ShutDown:
    print("ShutDown %.3f" % (time.monotonic() - t0))
"""


def test_blocked_producers_and_sleeping_consumers_wake_on_shutdown(unique_name):
    full = ndshm.Queue(unique_name + "f", slots=2, slot_bytes=64)
    empty = ndshm.Queue(unique_name + "e", slots=2, slot_bytes=64)
    full.put(np.arange(2))
    full.put(np.arange(2))
    kids = [start_python(SLEEPER, full.name, "put"), start_python(SLEEPER, full.name, "loan"),
            start_python(SLEEPER, empty.name, "get"), start_python(SLEEPER, empty.name, "receive")]
    for k in kids:
        expect_line(k, "ready")
    time.sleep(0.6)  # they spin 100 us, then sleep on the futex
    t0 = time.monotonic()
    full.shutdown()
    empty.shutdown()
    outs = [finish_python(k, 10).split() for k in kids]
    woke = time.monotonic() - t0
    assert all(o[0] == "ShutDown" and float(o[1]) > 0.5 for o in outs), outs  # they really waited
    assert woke < 3.0
    assert [a.tolist() for a in full] == [[0, 1], [0, 1]]  # the full queue still drains
    full.close()
    empty.close()


PRODUCER = """
import os, sys, numpy as np, ndshm
q = ndshm.Queue.attach(sys.argv[1])
q.register_producer()
q.register_producer()  # harmless
k = int(sys.argv[2])
for i in range(50):
    q.put(np.array([k * 1000 + i]))
print("done", flush=True)
if k == 1:
    sys.stdin.readline()  # stays alive until killed
"""


def test_registered_producers_dying_end_the_stream(unique_name):
    q = ndshm.Queue(unique_name, slots=16, slot_bytes=64)
    assert q.producers == 0
    q.expect_producers(2)  # producer 0 may finish before producer 1 has registered
    kids = [start_python(PRODUCER, unique_name, str(k)) for k in range(2)]
    got = [int(q.get(timeout=20)[0]) for _ in range(100)]
    for k in kids:
        expect_line(k, "done")
    kids[0].wait(20)  # exited normally
    assert q.producers == 1
    with pytest.raises(ndshm.Empty):
        q.get(timeout=0.3)  # a registered producer still runs: no end of stream
    assert not q.is_shutdown
    kids[1].send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    rest = list(q)  # ends once the last producer is dead
    assert time.monotonic() - t0 < 3.0
    kids[1].wait(10)
    assert rest == []
    assert sorted(got) == sorted([i for i in range(50)] + [1000 + i for i in range(50)])
    with pytest.raises(ndshm.ShutDown, match="every registered producer has exited"):
        q.get_nowait()
    with pytest.raises(ndshm.ShutDown):
        q.put(np.arange(2))
    assert q.is_shutdown and q.producers == 0
    for k in kids:
        k.stdin.close()
        k.stdout.close()
        k.stderr.close()
    q.close()


def test_expect_producers_holds_the_stream_open_until_enough_registered(unique_name):
    with ndshm.Queue(unique_name, slots=4, slot_bytes=64) as q:
        q.expect_producers(2)
        q.register_producer()
        q.put(np.array([1]))
        q.unregister_producer()  # the only live producer is gone, but only 1 of 2 has registered
        assert q.get().tolist() == [1]
        with pytest.raises(ndshm.Empty):
            q.get(timeout=0.2)
        assert not q.is_shutdown
        q.register_producer()  # the second one
        q.unregister_producer()
        assert list(q) == [] and q.is_shutdown
        for bad, exc in ((-1, ValueError), (2**32, ValueError), ("2", TypeError)):
            with pytest.raises(exc):
                q.expect_producers(bad)


def test_unregistering_the_last_producer_ends_the_stream_after_the_drain(unique_name):
    with ndshm.Queue(unique_name, slots=4, slot_bytes=64) as q:
        with pytest.raises(ndshm.InvalidValueError, match="not a registered producer"):
            q.unregister_producer()
        q.register_producer()
        assert q.producers == 1
        q.put(np.array([1]))
        q.put(np.array([2]))
        q.unregister_producer()
        assert [a.tolist() for a in q] == [[1], [2]]
        assert q.is_shutdown


INTERRUPTED = """
import sys, time, numpy as np, ndshm
q = ndshm.Queue.attach(sys.argv[1])
print("ready", flush=True)
t0 = time.monotonic()
try:
    if sys.argv[2] == "get":
        q.get(timeout=3600)
    elif sys.argv[2] == "receive":
        with q.receive(timeout=3600):
            pass
    elif sys.argv[2] == "put":
        q.put(np.arange(2), timeout=3600)
    elif sys.argv[2] == "put_many":
        q.put_many([np.arange(2)] * 3, timeout=3600)
    else:
        with q.loan((2,), np.int64, timeout=3600):
            pass
    print("returned")
except KeyboardInterrupt:
    print("interrupted %.3f" % (time.monotonic() - t0))
"""


@pytest.mark.parametrize("op", ["get", "receive", "put", "put_many", "loan"])
def test_long_finite_timeouts_are_interruptible(unique_name, op):
    q = ndshm.Queue(unique_name, slots=2, slot_bytes=64)
    if op in ("put", "put_many", "loan"):
        q.put(np.arange(2))
        q.put(np.arange(2))
    kid = start_python(INTERRUPTED, unique_name, op)
    expect_line(kid, "ready")
    time.sleep(0.5)
    kid.send_signal(signal.SIGINT)
    out = finish_python(kid, 10).split()
    assert out[0] == "interrupted" and float(out[1]) < 3.0, out
    q.close()


def test_long_finite_timeouts_still_expire_with_their_own_value(unique_name):
    with ndshm.Queue(unique_name, slots=2, slot_bytes=64) as q:
        t0 = time.monotonic()
        with pytest.raises(ndshm.Empty, match=r"after 0\.6 s") as e:
            q.get(timeout=0.6)
        assert 0.55 < time.monotonic() - t0 < 2.0
        assert e.value.errname == "NDSHM_ETIMEDOUT"
        q.put(np.arange(2))
        q.put(np.arange(2))
        with pytest.raises(ndshm.Full, match=r"full \(2 slots\) after 0\.4 s"):
            q.put(np.arange(2), timeout=0.4)
        with pytest.raises(ndshm.Full, match=r"after 0\.3 s"):
            with q.loan((2,), np.int64, timeout=0.3):
                pass

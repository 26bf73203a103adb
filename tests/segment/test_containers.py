"""Containers: liveness across PID namespaces, reclaim past cached mappings, zero copy between
containers that share a tmpfs (issue 17).

A peer runs in a PID namespace of its own with its own /proc (``unshare --pid --fork
--mount-proc``, as a container's processes do: it is pid 1 there), and shares a private segment
directory with this process. For locks, queues, broadcasts, segment ownership and compat blocks:
a live peer keeps what it holds; a peer killed with -9 is recovered as in one namespace, in about
the same time. Every wait is bounded (a timeout, or a line read under a watchdog).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import ndshm
from conftest import (child_env, collect, expect_line, finish_python, kill9, read_line, run_cli, start_python,
                      start_python_ns)
from ndshm import _ownership
from optional_deps import require

IMPORT = "import gc, os, sys, time, numpy as np, ndshm\n"
BLOCK = IMPORT + "if 1:\n"  # then an indented block of code


@pytest.fixture
def d():
    """A private segment directory on /dev/shm's tmpfs, removed afterwards."""
    path = tempfile.mkdtemp(prefix="ndshm-ns-", dir="/dev/shm")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _stop(*procs: subprocess.Popen) -> None:
    """End children that may still run (a failed test), without waiting long."""
    for p in procs:
        if p.poll() is None:
            p.kill()
        try:
            p.communicate(timeout=10)
        except (subprocess.TimeoutExpired, ValueError):
            pass


def _say(p: subprocess.Popen, line: str = "go") -> None:
    p.stdin.write(line + "\n")
    p.stdin.flush()


def _gc(d: str) -> str:
    out = run_cli("gc", "--min-age", "0", "--dir", d)
    assert out.returncode == 0, out.stderr
    return out.stdout


# ---- locks, events, barriers -----------------------------------------------------------------

def test_lock_held_in_another_pid_namespace_is_respected(d):
    """The issue's first row: A holds the lock in its own PID namespace and lives; B waits and
    times out; A's release works; then B gets it, with no owner-died news."""
    lock = ndshm.Lock("l", dir=d)
    a = start_python_ns(BLOCK + f"""
        lock = ndshm.Lock("l", dir={d!r}, create=False)
        assert lock.acquire(timeout=5)
        print("held", os.getpid(), flush=True)
        sys.stdin.readline()
        lock.release()
        print("released", flush=True)
    """)
    try:
        assert read_line(a) == "held 1"  # pid 1 in its namespace, as in a container
        t0 = time.monotonic()
        assert not lock.acquire(timeout=1)
        assert time.monotonic() - t0 >= 0.9
        assert not lock.acquire(blocking=False)
        _say(a)
        expect_line(a, "released")
        assert finish_python(a) == ""
        assert lock.acquire(timeout=5) and not lock.owner_died
        lock.release()
    finally:
        _stop(a)


def test_lock_between_two_pid_namespaces(d):
    """Both sides in namespaces of their own, both pid 1 there: still one holder at a time."""
    ndshm.Lock("l", dir=d)
    code = BLOCK + f"""
        lock = ndshm.Lock("l", dir={d!r}, create=False)
        print(sys.argv[1], lock.acquire(timeout=float(sys.argv[2])), flush=True)
        sys.stdin.readline()
    """
    a = start_python_ns(code, "a", "5")
    b = None
    try:
        expect_line(a, "a True")
        b = start_python_ns(code, "b", "1")
        expect_line(b, "b False")
    finally:
        for p in (a, b):
            if p is not None:
                _stop(p)


def test_lock_holder_killed_in_another_pid_namespace_is_recovered(d):
    lock = ndshm.Lock("l", dir=d)
    a = start_python_ns(BLOCK + f"""
        lock = ndshm.Lock("l", dir={d!r}, create=False)
        assert lock.acquire(timeout=5)
        print("held", flush=True)
        sys.stdin.read()
    """)
    try:
        expect_line(a, "held")
        assert not lock.acquire(timeout=0.2)
        kill9(a)
        t0 = time.monotonic()
        assert lock.acquire(timeout=10)
        assert lock.owner_died
        assert time.monotonic() - t0 < 2
        lock.release()
    finally:
        _stop(a)


def test_event_and_barrier_across_pid_namespaces(d):
    ev = ndshm.Event("e", dir=d)
    bar = ndshm.Barrier(2, "b", dir=d)
    a = start_python_ns(BLOCK + f"""
        ev = ndshm.Event("e", dir={d!r}, create=False)
        bar = ndshm.Barrier(2, "b", dir={d!r}, create=False)
        print("waiting", flush=True)
        print("set", ev.wait(timeout=10), flush=True)
        print("index", bar.wait(timeout=10), flush=True)
    """)
    try:
        expect_line(a, "waiting")
        ev.set()
        expect_line(a, "set True")
        index = bar.wait(timeout=10)
        expect_line(a, f"index {1 - index}")
        assert finish_python(a) == ""
    finally:
        _stop(a)


# ---- queues ------------------------------------------------------------------------------------

def test_queue_received_slot_of_a_live_peer_in_another_namespace_is_kept(d):
    """The issue's third row: A holds a received message in place; B puts and gets (get,
    get_many) on the same 2-slot ring: A's slot is never recycled under it (B's put waits for it),
    and A's view keeps its bytes."""
    q = ndshm.Queue("q", slots=2, slot_bytes=64, dir=d)
    q.put(np.full(8, 7, np.int64))
    a = start_python_ns(BLOCK + f"""
        q = ndshm.Queue.attach("q", dir={d!r})
        with q.receive(timeout=10) as v:
            print("holding", int(v.sum()), flush=True)
            sys.stdin.readline()
            print("still", v.tolist() == [7] * 8, flush=True)
    """)
    try:
        expect_line(a, "holding 56")
        q.put(np.full(8, 1, np.int64), timeout=5)  # the other slot
        assert q.get(timeout=5).tolist() == [1] * 8
        with pytest.raises(ndshm.Full):  # the next position is A's slot: it waits for A
            q.put(np.full(8, 2, np.int64), timeout=0.5)
        with pytest.raises(ndshm.Empty):
            q.get(timeout=0.2)
        with pytest.raises(ndshm.Empty):
            q.get_many(4, timeout=0.2)
        _say(a)
        expect_line(a, "still True")
        assert finish_python(a) == ""
        q.put(np.full(8, 2, np.int64), timeout=5)  # A released its slot
        q.put(np.full(8, 3, np.int64), timeout=5)
        assert [int(m[0]) for m in q.get_many(4, timeout=5)] == [2, 3]
    finally:
        _stop(a)
        q.close()


def test_queue_loan_of_a_live_peer_in_another_namespace_is_waited_for(d):
    """A loans a slot and writes slowly: B does not skip its message as dead; A publishes it later
    and B gets it, in order."""
    q = ndshm.Queue("q", slots=4, slot_bytes=64, dir=d)
    a = start_python_ns(BLOCK + f"""
        q = ndshm.Queue.attach("q", dir={d!r})
        q.register_producer()
        with q.loan(4, np.int64, timeout=5) as out:
            out[:] = 5
            print("loaned", flush=True)
            sys.stdin.readline()
        print("published", flush=True)
        sys.stdin.readline()
    """)
    try:
        expect_line(a, "loaned")
        assert q.producers == 1
        q.put(np.full(4, 6, np.int64), timeout=5)  # behind A's claim
        with pytest.raises(ndshm.Empty):
            q.get(timeout=0.5)  # A's message is not ready, and A lives: nothing is skipped
        with pytest.raises(ndshm.Empty):
            q.get_many(4, timeout=0.2)
        _say(a)
        expect_line(a, "published")
        assert [int(m[0]) for m in q.get_many(4, timeout=5)] == [5, 6]
        assert q.producers == 1
        _say(a)
        assert finish_python(a) == ""
    finally:
        _stop(a)
        q.close()


def test_queue_peers_killed_in_another_namespace_are_recovered(d):
    """As test_queue's kill test, with both victims in PID namespaces of their own: a producer
    killed inside loan and a consumer killed holding a received slot."""
    q = ndshm.Queue("q", slots=4, slot_bytes=1024, dir=d)
    producer = start_python_ns(BLOCK + f"""
        q = ndshm.Queue.attach("q", dir={d!r})
        with q.loan(100, np.float64) as out:
            out[:50] = 1.0
            print("ready", flush=True)
            sys.stdin.read()
    """)
    consumer = None
    try:
        expect_line(producer, "ready")
        for i in range(2):
            q.put(np.full(4, i, np.int32))
        consumer = start_python_ns(BLOCK + f"""
            q = ndshm.Queue.attach("q", dir={d!r})
            with q.receive(timeout=10) as v:
                print("got", int(v[0]), flush=True)
                sys.stdin.read()
        """)
        kill9(producer)
        expect_line(consumer, "got 0")
        kill9(consumer)
        t0 = time.monotonic()
        q.put(np.full(4, 2, np.int32), timeout=5)
        q.put(np.full(4, 3, np.int32), timeout=5)
        q.put(np.full(4, 4, np.int32), timeout=5)
        got = [int(q.get(timeout=5)[0])] + [int(m[0]) for m in q.get_many(8, timeout=5)]
        assert got == [1, 2, 3, 4]
        assert time.monotonic() - t0 < 3
        with pytest.raises(ndshm.Empty):
            q.get(timeout=0.05)
    finally:
        _stop(producer, *([consumer] if consumer else []))
        q.close()


def test_queue_producer_killed_in_another_namespace_ends_the_queue(d):
    """A registered producer in another namespace counts while it lives; killed, it no longer
    does, and the queue shuts down once drained, as every registered producer has exited."""
    q = ndshm.Queue("q", slots=4, slot_bytes=64, dir=d)
    a = start_python_ns(BLOCK + f"""
        q = ndshm.Queue.attach("q", dir={d!r})
        q.register_producer()
        q.put(np.arange(4))
        print("producing", flush=True)
        sys.stdin.read()
    """)
    try:
        expect_line(a, "producing")
        assert q.producers == 1
        assert q.get(timeout=5).tolist() == [0, 1, 2, 3]
        with pytest.raises(ndshm.Empty):
            q.get(timeout=0.3)  # a live producer: no shutdown
        kill9(a)
        t0 = time.monotonic()
        assert q.producers == 0
        with pytest.raises(ndshm.ShutDown):
            q.get(timeout=5)
        assert time.monotonic() - t0 < 2
    finally:
        _stop(a)
        q.close()


# ---- broadcasts --------------------------------------------------------------------------------

SUBSCRIBER = IMPORT + """
b = ndshm.Broadcast.attach("b", dir={d!r})
s = b.subscribe()
print("subscribed", flush=True)
"""


def test_broadcast_block_waits_for_a_live_subscriber_in_another_namespace(d):
    """The issue's fourth row: A subscribed and reads slowly; B publishes 12 into 4 slots: B
    waits for A (it is not dropped as dead), and A gets all 12."""
    with ndshm.Broadcast("b", slots=4, slot_bytes=64, policy="block", dir=d) as b:
        a = start_python_ns(SUBSCRIBER.format(d=d) + """
sys.stdin.readline()
print("got", [int(s.get(timeout=10)[0]) for _ in range(12)], flush=True)
""")
        try:
            expect_line(a, "subscribed")
            for i in range(4):
                b.put(np.array([i]), timeout=5)
            with pytest.raises(ndshm.Full):
                b.put(np.array([4]), timeout=0.5)
            assert b.subscribers == 1
            _say(a)
            for i in range(4, 12):
                b.put(np.array([i]), timeout=10)
            expect_line(a, f"got {list(range(12))}")
            assert finish_python(a) == ""
        finally:
            _stop(a)


def test_broadcast_overwrite_spares_a_live_readers_message_in_another_namespace(d):
    """policy="overwrite": a message read in place by a live subscriber in another namespace is
    not overwritten under it while publishers lap the ring, and the subscription stays."""
    with ndshm.Broadcast("b", slots=4, slot_bytes=64, policy="overwrite", dir=d) as b:
        a = start_python_ns(SUBSCRIBER.format(d=d) + """
with s.receive(timeout=10) as v:
    print("holding", int(v[0]), flush=True)
    sys.stdin.readline()
    print("still", int(v[0]), flush=True)
""")
        try:
            expect_line(a, "subscribed")
            b.put(np.array([100]))
            expect_line(a, "holding 100")
            for i in range(1, 10):  # two laps of the ring
                b.put(np.array([i]), timeout=5)
            assert b.subscribers == 1
            _say(a)
            expect_line(a, "still 100")
            assert finish_python(a) == ""
        finally:
            _stop(a)


@pytest.mark.parametrize("policy", ["block", "overwrite"])
def test_broadcast_subscriber_killed_in_another_namespace_is_dropped(d, policy):
    with ndshm.Broadcast("b", slots=4, slot_bytes=64, policy=policy, dir=d) as b:
        live = b.subscribe()
        a = start_python_ns(SUBSCRIBER.format(d=d) + """
with s.receive(timeout=10) as view:
    print("holding", int(view[0]), flush=True)
    sys.stdin.read()
""")
        try:
            expect_line(a, "subscribed")
            assert b.subscribers == 2
            b.put(np.array([0]))
            expect_line(a, "holding 0")
            kill9(a)
            t0 = time.monotonic()
            got = []
            for i in range(1, 13):
                b.put(np.array([i]), timeout=5)
                got.append(int(live.get(timeout=5)[0]))
            assert got == list(range(12))
            assert time.monotonic() - t0 < 3
            assert b.subscribers == 1
        finally:
            _stop(a)


# ---- segment ownership -------------------------------------------------------------------------

OWNER = IMPORT + """
ndshm.set_mapping_cache(max_count=0)  # nothing stays mapped: only the owner lock says "alive"
ndshm.create("owned", 1000, dir={d!r})
ndshm.create("swept", 1000, dir={d!r})
collect = [gc.collect() for _ in range(4)]
print("ready", flush=True)
sys.stdin.read()
"""


def _sweep(d: str, monkeypatch) -> list[str]:
    """Create a segment in ``d`` (its sweep runs), return what is left of the two owned names."""
    monkeypatch.setattr(_ownership, "GRACE_SECONDS", 0.0)
    _ownership._last_sweep.clear()
    with ndshm.Segment.create("next", 4, dir=d):
        pass
    return sorted(n for n in os.listdir(d) if n in ("ndshm.owned", "ndshm.swept"))


def test_segment_owner_in_another_namespace_keeps_its_names(d, monkeypatch):
    """The issue's second row: the owner's views died and nothing maps its segments; gc and
    create's sweep in this namespace leave them."""
    a = start_python_ns(OWNER.format(d=d))
    try:
        expect_line(a, "ready")
        recs = {r.name: r for r in ndshm.list(d)}
        assert not recs["owned"].in_use  # nobody maps it: only the owner lock speaks for it
        assert "removed 0 segments" in _gc(d)
        assert _sweep(d, monkeypatch) == ["ndshm.owned", "ndshm.swept"]
    finally:
        _stop(a)


def test_segment_owner_killed_in_another_namespace_is_reclaimed(d, monkeypatch):
    a = start_python_ns(OWNER.format(d=d))
    try:
        expect_line(a, "ready")
        kill9(a)
        assert _sweep(d, monkeypatch) == []  # create's sweep takes both at once
    finally:
        _stop(a)
    a = start_python_ns(OWNER.format(d=d))
    try:
        expect_line(a, "ready")
        kill9(a)
        out = _gc(d)
        assert "removed owned" in out and "removed swept" in out and "removed 2 segments" in out
    finally:
        _stop(a)


RECEIVER = IMPORT + """
a = ndshm.attach("owned", dir={d!r})
b = ndshm.attach("swept", dir={d!r})
total = float(a.sum() + b.sum())
del a, b
collect = [gc.collect() for _ in range(4)]
print("dropped", total, ndshm.stats()["cached_mappings"], flush=True)
sys.stdin.readline()
for name in ("owned", "swept"):
    try:
        ndshm.attach(name, dir={d!r})
        print(name, "attached", flush=True)
    except ndshm.SegmentNotFoundError:
        print(name, "gone", flush=True)
print("cached", ndshm.stats()["cached_mappings"], flush=True)
"""

FILLED_OWNER = IMPORT + """
a = ndshm.create("owned", 1000, "f8", dir={d!r}, fill=1.0)
b = ndshm.create("swept", 1000, "f8", dir={d!r}, fill=2.0)
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("where", ["same namespace", "other namespace"])
def test_a_receivers_cached_mapping_does_not_keep_a_dead_owners_segment(d, monkeypatch, where):
    """A receiver attached, read and dropped its views: its cache keeps the mappings, but not the
    "someone maps it" flock, so once the owner is killed gc and create's sweep reclaim the
    segments while the receiver lives; its next attach finds them gone."""
    start = start_python if where == "same namespace" else start_python_ns
    owner = start(FILLED_OWNER.format(d=d))
    receiver = None
    try:
        expect_line(owner, "ready")
        receiver = start_python(RECEIVER.format(d=d))
        expect_line(receiver, "dropped 3000.0 2")  # both mappings kept in its cache
        assert "removed 0 segments" in _gc(d)  # the owner lives
        kill9(owner)
        t0 = time.monotonic()
        assert not any(r.in_use for r in ndshm.list(d) if r.name in ("owned", "swept"))  # the cache maps them
        out = _gc(d)
        assert "removed owned" in out
        assert _sweep(d, monkeypatch) == []
        assert time.monotonic() - t0 < 5
        _say(receiver)
        expect_line(receiver, "owned gone")
        expect_line(receiver, "swept gone")
        expect_line(receiver, "cached 0")
        assert finish_python(receiver) == ""
    finally:
        _stop(owner, *([receiver] if receiver else []))


def test_a_cached_mapping_is_handed_out_again_with_its_flock(d):
    """An idle cached mapping comes back on the next attach (no fresh mapping), and with it the
    shared flock: gc sees the segment in use again."""
    ndshm.create("kept", 1000, "f8", dir=d, fill=3.0, persist=True)
    collect()  # this process's own mapping goes idle too (PyPy: at a collection)
    p = start_python(BLOCK + f"""
        a = ndshm.attach("kept", dir={d!r})
        fresh = ndshm.stats()["fresh_attach_mappings"]
        del a
        collect = [gc.collect() for _ in range(4)]
        print("idle", flush=True)
        sys.stdin.readline()
        a = ndshm.attach("kept", dir={d!r})
        print("again", float(a[0]), ndshm.stats()["fresh_attach_mappings"] - fresh, flush=True)
        sys.stdin.readline()
    """)
    try:
        expect_line(p, "idle")
        assert not {r.name: r for r in ndshm.list(d)}["kept"].in_use
        _say(p)
        expect_line(p, "again 3.0 0")
        assert {r.name: r for r in ndshm.list(d)}["kept"].in_use
        _say(p)
        assert finish_python(p) == ""
    finally:
        _stop(p)
        ndshm.unlink("kept", dir=d)


# ---- compat blocks -----------------------------------------------------------------------------

COMPAT = IMPORT + """
from ndshm.compat import shared_memory
shared_memory.SHM_DIR = {d!r}
shm = shared_memory.SharedMemory(create=True, size=4096)
shm.close()
collect = [gc.collect() for _ in range(4)]
print(shm.name, flush=True)
sys.stdin.read()
"""


def test_compat_block_of_a_creator_in_another_namespace(d):
    """A live creator in another namespace keeps its block (even unmapped); killed, its block is
    reclaimed."""
    from ndshm._compat_blocks import ndshm_blocks as _ndshm_blocks, reclaim_dead as _reclaim_dead
    a = start_python_ns(COMPAT.format(d=d))
    try:
        name = read_line(a)
        assert name.startswith("psm_"), name
        (blk,) = _ndshm_blocks(d)
        assert blk.name == name and blk.creator_alive and not blk.in_use
        assert blk.creator_pid == 0  # its pid (1 there) names no process of this namespace
        assert _reclaim_dead(d) == []
        assert "removed 0 segments" in _gc(d)
        kill9(a)
        (blk,) = _ndshm_blocks(d)
        assert not blk.creator_alive
        assert _reclaim_dead(d) == [name]
        assert not os.path.exists(os.path.join(d, name))
    finally:
        _stop(a)


def test_compat_marks_decode_never_raises(d):
    """A mark is the creator's process key ("key <16 hex>"); a legacy "pid start" mark is judged
    as older versions did; anything else (a pid that does not fit a C int, garbage) leaves that
    one block out, never an exception that stops ls or gc."""
    from ndshm import _compat_blocks as sm
    assert sm.decode_mark(b"key 00000000000000ff") == (255, 0, 0)
    assert sm.decode_mark(b"123 456") == (0, 123, 456)
    for bad in (b"key 0000000000000000", b"key ff", b"key zzzzzzzzzzzzzzzz", b"2147483648 0", b"-1 0", b"0 0",
                b"1 2 3", b"", b"\xff\xfe", "\u0663 1".encode()):
        assert sm.decode_mark(bad) is None, bad
    names = []
    for i, raw in enumerate((b"2147483648 0", b"99999999999999999999999 1", b"key " + b"f" * 16, b"garbage")):
        name = f"psm_planted{i}"
        with open(os.path.join(d, name), "wb") as f:
            f.write(bytes(16))
        os.setxattr(os.path.join(d, name), sm.XATTR, raw)
        names.append(name)
    blocks = {b.name: b for b in sm.ndshm_blocks(d)}
    assert sorted(blocks) == names  # the undecodable ones are shown as corrupt
    assert [n for n in names if blocks[n].corrupt] == ["psm_planted0", "psm_planted1", "psm_planted3"]
    # a well-formed key no process holds: a dead creator
    assert not blocks["psm_planted2"].creator_alive and blocks["psm_planted2"].creator_pid == 0
    assert sm.reclaim_dead(d) == ["psm_planted2"]
    assert "removed 0 segments" in _gc(d)
    assert all(os.path.exists(os.path.join(d, n)) for n in names if n != "psm_planted2")


# ---- zero copy between containers that share a tmpfs -------------------------------------------

PEER = IMPORT + """
import json, pickle
if sys.argv[1] == "dask":
    import ndshm.dask
    print(json.dumps({"node": ndshm.node_identity(), "dirs": ndshm.dask._dir_identities()}), flush=True)
else:
    print(json.dumps({"node": ndshm.node_identity()}), flush=True)
blob = bytes.fromhex(sys.stdin.readline())
try:
    arr = pickle.loads(blob)
    print("by reference", type(arr).__name__, float(arr.sum()), flush=True)
except ndshm.WrongNodeError as exc:
    print("refused", type(exc).__name__, flush=True)
"""


def _peer(d: str, own_tmpfs: bool, mode: str) -> tuple[subprocess.Popen, dict]:
    """A peer in a mount namespace of its own (another container's view of the files) that sees
    ``d`` as it is here, or (``own_tmpfs``) a tmpfs of its own mounted over it; it prints its node
    identity (and, ``mode`` "dask", its handshake's directories), then unpickles what it is sent."""
    p = start_python_ns(PEER, mode, unshare=("--mount", "--propagation", "private"),
                        tmpfs_over=d if own_tmpfs else "", NDSHM_DIR=d)
    line = read_line(p)
    if not line.startswith("{"):
        p.kill()
        _, err = p.communicate(timeout=10)
        pytest.fail(f"the peer said {line!r}\nstderr:\n{err}")
    peer = json.loads(line)
    assert peer["node"] != ndshm.node_identity()  # another mount namespace
    assert peer["node"].split("/")[0] == ndshm.node_identity().split("/")[0]  # the same boot
    return p, peer


def _send(p: subprocess.Popen, arr: np.ndarray, own_tmpfs: bool) -> None:
    import pickle
    _say(p, pickle.dumps(arr).hex())
    expect_line(p, "refused WrongNodeError" if own_tmpfs else "by reference SharedArray 200.0")
    assert finish_python(p) == ""


@pytest.mark.parametrize("own_tmpfs", [False, True], ids=["shared dir", "own tmpfs"])
def test_pickle_between_mount_namespaces_is_decided_by_the_file(d, own_tmpfs):
    """A pickled SharedArray reaching a peer in another mount namespace (another container) that
    sees the same segment directory is mapped there, zero copy; one whose directory is a tmpfs of
    its own refuses it (WrongNodeError), even though its segment directory exists."""
    arr = ndshm.create("zc", (100,), "f8", dir=d, fill=2.0)
    p, _ = _peer(d, own_tmpfs, "pickle")
    try:
        _send(p, arr, own_tmpfs)
    finally:
        _stop(p)


@pytest.mark.parametrize("own_tmpfs", [False, True], ids=["shared dir", "own tmpfs"])
def test_dask_between_mount_namespaces_sends_by_reference_only_where_the_dir_is_shared(d, own_tmpfs):
    """ndshm.dask's decision, with the handshake a peer in another mount namespace announces: a
    reference where it sees the segment's directory as the same directory, the data where its
    directory is a tmpfs of its own."""
    require("distributed", "Dask test")
    import ndshm.dask
    arr = ndshm.create("zc", (100,), "f8", dir=d, fill=2.0)
    p, peer = _peer(d, own_tmpfs, "dask")
    try:
        context = {"recipient": {"ndshm-node": peer["node"], "ndshm-dirs": peer["dirs"]}}
        header, frames = ndshm.dask.serialize_shared_array(arr, context=context)
        assert header["ndshm"] == ("value" if own_tmpfs else "reference")
        if own_tmpfs:
            assert np.asarray(ndshm.dask.deserialize_shared_array(header, frames)).sum() == 200.0
        _send(p, arr, own_tmpfs)
    finally:
        _stop(p)

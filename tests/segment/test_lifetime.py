"""Lifetime across real processes: kept mappings, who removes a name and when, hand-over, reclaiming."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import ndshm
from conftest import PYPY, child_env, collect, dir_files, run_python

CONTEXTS = ["fork", "spawn"]


def shm_path(name: str, d: str | None = None) -> str:
    return os.path.join(d or os.environ.get("NDSHM_DIR", "/dev/shm"), "ndshm." + name)


def _maps_of(path: str) -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if line.rstrip("\n").endswith(path))


# ---- workers (module level, so spawn can import them) ------------------------------------------

def _sum_task(view):
    path = ndshm.segment_of(view).path
    return os.getpid(), float(view.sum()), ndshm.stats()["fresh_attach_mappings"], _maps_of(path)


def _make_task(i):
    a = ndshm.create(None, 1000, "i8", fill=i, owner="receiver")
    return a


# ---- mapping reuse ------------------------------------------------------------------------------

@pytest.mark.parametrize("method", CONTEXTS)
def test_pool_worker_maps_a_segment_once_across_tasks(unique_name, method):
    ctx = mp.get_context(method)
    with ctx.Pool(2) as pool:  # started before the array exists, as a real pipeline would
        pool.map(abs, range(4))
        a = ndshm.create(unique_name, (100, 2048), "f4", fill=1.0)
        results = pool.map(_sum_task, [a[i:i + 1] for i in range(100)], chunksize=1)
        again = pool.map(_sum_task, [a[i:i + 1] for i in range(100)], chunksize=1)
    assert all(r[1] == 2048.0 for r in results + again)
    per_pid: dict[int, int] = {}
    for pid, _, fresh, maps in results + again:
        per_pid[pid] = max(per_pid.get(pid, 0), fresh)
        assert maps == 1  # one mapping of the segment in the worker, never more
    assert per_pid and all(fresh == 1 for fresh in per_pid.values()), per_pid  # mapped once per worker


def test_cache_evicts_by_count_and_by_bytes(unique_name):
    names = [f"{unique_name}-{i}" for i in range(3)]
    arrays = [ndshm.create(n, 1 << 20, "u1") for n in names]  # 1 MiB each, owned here
    child = run_python(f"""
        import gc, ndshm
        names = {names!r}
        def touch(n):
            a = ndshm.attach(n)
            a[0] = 1
        def cached():
            for _ in range(4):
                gc.collect()  # PyPy frees an evicted mapping's handle when its GC runs
            s = ndshm.stats()
            return s["cached_mappings"], s["live_mappings"]
        ndshm.set_mapping_cache(max_count=2)
        for n in names:
            touch(n)
        print(*cached())
        ndshm.set_mapping_cache(max_count=10, max_bytes=(3 << 20) // 2)
        print(*cached())
        for n in names:
            touch(n)
        print(*cached())
        ndshm.set_mapping_cache(max_bytes=0)
        print(*cached())
    """)
    lines = [tuple(map(int, line.split())) for line in child.stdout.splitlines()]
    assert lines == [(2, 2), (1, 1), (1, 1), (0, 0)], lines
    assert all(a[0] == 1 for a in arrays)
    with pytest.raises(ValueError, match="max_count -1"):
        ndshm.set_mapping_cache(max_count=-1)
    with pytest.raises(TypeError, match="max_bytes 'x'"):
        ndshm.set_mapping_cache(max_bytes="x")


def test_kept_mapping_not_reused_after_unlink_and_recreate(unique_name):
    ndshm.create(unique_name, 1 << 20, "u1", fill=1, persist=True)
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import gc, sys, time, ndshm
        path = ndshm.Segment.attach({unique_name!r}).path
        a = ndshm.attach({unique_name!r})
        print(int(a[5]), ndshm.stats()["cached_mappings"], flush=True)
        del a
        sys.stdin.readline()          # the parent removes the name and makes a new segment under it
        b = ndshm.attach({unique_name!r})
        print(int(b[5]), ndshm.stats()["fresh_attach_mappings"], flush=True)
        del b
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the old file's mapping goes, without any attach
            gc.collect()  # (PyPy frees the dropped handle when its GC runs)
            with open("/proc/self/maps") as f:
                deleted = sum(1 for line in f if path + " (deleted)" in line)
            if not deleted and not ndshm.stats()["cached_mappings"]:
                break
            time.sleep(0.1)
        print(deleted, ndshm.stats()["cached_mappings"], flush=True)
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert child.stdout.readline().split() == ["1", "1"]
        ndshm.unlink(unique_name)
        ndshm.create(unique_name, 1 << 20, "u1", fill=2, persist=True)
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().split() == ["2", "2"]  # the new file, freshly mapped
        ndshm.unlink(unique_name)
        assert child.stdout.readline().split() == ["0", "0"]  # the removed segment's mapping was dropped
    finally:
        child.kill()
        child.wait()


# ---- who removes a name ---------------------------------------------------------------------------

def test_bare_create_statement_lives_until_exit(unique_name):
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import gc, sys, ndshm
        ndshm.create({unique_name!r}, 10)
        x = ndshm.create({unique_name + "b"!r}, 10) + 1
        gc.collect()
        print("made", flush=True)
        sys.stdin.readline()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert child.stdout.readline().strip() == "made"
        assert os.path.exists(shm_path(unique_name)) and os.path.exists(shm_path(unique_name + "b"))
        # another process started later finds it
        assert run_python(f"import ndshm; print(ndshm.attach({unique_name!r}).shape)").stdout.strip() == "(10,)"
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(30) == 0
    finally:
        child.kill()
    assert not os.path.exists(shm_path(unique_name)) and not os.path.exists(shm_path(unique_name + "b"))


def test_owner_is_checked(unique_name):
    with pytest.raises(ValueError, match="owner 'parent'"):
        ndshm.create(unique_name, 3, owner="parent")
    with pytest.raises(ValueError, match="persist=True"):
        ndshm.create(unique_name, 3, owner="views", persist=True)
    with pytest.raises(ValueError, match="named segments"):
        ndshm.Segment.create(None, 3, kind="memfd", owner="receiver")
    assert not os.path.exists(shm_path(unique_name))


@pytest.mark.parametrize("method", CONTEXTS)
def test_task_created_segment_handed_to_the_parent(method):
    ctx = mp.get_context(method)
    with ctx.Pool(2) as pool:
        results = pool.map(_make_task, range(8))
    # the workers have exited: the names survived their creators, and the parent owns them now
    names = [ndshm.segment_of(r).name for r in results]
    paths = [ndshm.segment_of(r).path for r in results]
    assert [int(r[0]) for r in results] == list(range(8))
    assert all(isinstance(r, ndshm.SharedArray) for r in results) and all(map(os.path.exists, paths))
    assert all(ndshm.segment_of(r).owner == "received" for r in results)
    results[3][0] = 42  # zero-copy: the segment itself
    assert ndshm.attach(names[3])[0] == 42
    del results
    collect()
    assert not any(map(os.path.exists, paths))


def test_handover_survives_the_creator_and_is_claimed_once(unique_name):
    import pickle
    ref = run_python(f"""
        import pickle, ndshm
        a = ndshm.create({unique_name!r}, 4, "i4", fill=7, owner="receiver")
        print(pickle.dumps(a[1:]).hex())
    """).stdout.strip()
    assert os.path.exists(shm_path(unique_name))  # its creator has exited: the name waits for a receiver
    v = pickle.loads(bytes.fromhex(ref))  # the first to unpickle it owns it
    assert int(v.sum()) == 21 and ndshm.segment_of(v).owner == "received"
    second = run_python(f"""
        import pickle, ndshm
        v = pickle.loads(bytes.fromhex({ref!r}))
        print(int(v.sum()), ndshm.segment_of(v).owner)
    """)
    assert second.stdout.split() == ["21", "None"]  # a second receiver only attaches
    assert os.path.exists(shm_path(unique_name))
    del v
    collect()
    assert not os.path.exists(shm_path(unique_name))


def test_sigterm_with_cleanup_on_signals_leaves_nothing(unique_name):
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import time, ndshm
            ndshm.cleanup_on_signals()
            a = ndshm.create({unique_name!r}, 1000)
            s = ndshm.Segment.create({unique_name + "v"!r}, 10, owner="views")
            p = ndshm.create({unique_name + "p"!r}, 10, persist=True)
            print("ready", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
        assert child.stdout.readline().strip() == "ready"
        assert os.path.exists(shm_path(unique_name))
        child.send_signal(sig)
        rc = child.wait(30)
        if sig == signal.SIGINT:
            assert rc != 0 and "KeyboardInterrupt" in child.stderr.read()
        else:
            assert rc == -sig  # the default action still happens: killed by that signal
        assert not os.path.exists(shm_path(unique_name)) and not os.path.exists(shm_path(unique_name + "v"))
        assert os.path.exists(shm_path(unique_name + "p"))  # persistent: nobody owns it
        ndshm.unlink(unique_name + "p")


def test_sigkilled_creator_is_reclaimed_by_the_next_create(tmp_path, monkeypatch):
    from ndshm import _ownership
    d = str(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import gc, pickle, time, ndshm
        ndshm.set_mapping_cache(max_count=0)  # nothing stays mapped: only the owner lock says "alive"
        ndshm.create("dead", 1000, dir={d!r})
        ndshm.create("kept", 10, dir={d!r}, persist=True)
        pickle.dumps(ndshm.create("handed", 10, dir={d!r}, owner="receiver"))  # handed over, never claimed
        gc.collect()
        print("ready", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, env=child_env())
    assert child.stdout.readline().strip() == "ready"
    monkeypatch.setattr(_ownership, "GRACE_SECONDS", 0.0)
    assert _ownership.sweep(d, force=True) == 0  # a live owner's name stays, mapped or not
    child.kill()
    child.wait()
    assert dir_files(d) == ["ndshm.dead", "ndshm.handed", "ndshm.kept"]
    _ownership._last_sweep.clear()
    with ndshm.Segment.create("next", 4, dir=d):
        # the dead creator's segment went; the persistent one and the unclaimed hand-over stay
        assert dir_files(d) == ["ndshm.handed", "ndshm.kept", "ndshm.next"]
    # a hand-over nobody claimed goes after HANDOVER_SECONDS
    monkeypatch.setattr(_ownership, "HANDOVER_SECONDS", 0.0)
    assert _ownership.sweep(d, force=True) == 1
    assert dir_files(d) == ["ndshm.kept"]


def test_a_removed_name_ends_ownership(unique_name):
    """The creator keeps its segment mapped for its name's sake only: once the name is removed (by
    ndshm.unlink here, or by another process), the mapping goes with the last view."""
    from ndshm import _ownership
    a = ndshm.create(unique_name, 1 << 20, "u1")
    path = ndshm.segment_of(a).path
    ndshm.unlink(unique_name)
    assert path not in _ownership._owned
    del a
    collect()
    assert _maps_of(path) + _maps_of(path + " (deleted)") == 0
    b = ndshm.create(unique_name + "o", 1 << 20, "u1")
    path = ndshm.segment_of(b).path
    del b
    run_python(f"import ndshm; ndshm.unlink({unique_name + 'o'!r})")  # another process removes it
    deadline = time.monotonic() + 10
    while _maps_of(path + " (deleted)") and time.monotonic() < deadline:
        time.sleep(0.1)
        collect()
    assert _maps_of(path + " (deleted)") == 0  # the watcher let go: the memory is free


def test_owning_many_names_holds_few_descriptors(unique_name):
    """Owning a name is a record, not an open segment: a loop of bare creates keeps every name but
    at most the mapping cache's worth of descriptors and mappings."""
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import gc, os, sys, ndshm
        fds = len(os.listdir("/proc/self/fd"))
        for i in range(300):
            ndshm.create("{unique_name}-" + str(i), 10)
        for _ in range(4):
            gc.collect()
        print(len(os.listdir("/proc/self/fd")) - fds, ndshm.stats()["live_mappings"], flush=True)
        sys.stdin.readline()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        extra_fds, mappings = map(int, child.stdout.readline().split())
        assert extra_fds <= 70 and mappings <= 70, (extra_fds, mappings)
        assert all(os.path.exists(shm_path(f"{unique_name}-{i}")) for i in range(300))
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(30) == 0
    finally:
        child.kill()
    assert not any(os.path.exists(shm_path(f"{unique_name}-{i}")) for i in range(300))


def test_owner_is_visible(unique_name):
    collect()  # earlier tests' garbage must not be released mid-count
    before = ndshm.stats()["owned_names"]
    seg = ndshm.Segment.create(unique_name, 4)
    tmp = ndshm.Segment.create(unique_name + "v", 4, owner="views")
    hand = ndshm.Segment.create(unique_name + "r", 4, owner="receiver")
    keep = ndshm.Segment.create(unique_name + "p", 4, persist=True)
    assert (seg.owner, tmp.owner, hand.owner, keep.owner) == ("creator", "views", "receiver", None)
    assert ndshm.stats()["owned_names"] == before + 3
    import pickle
    pickle.dumps(hand)
    assert hand.owner == "handed" and ndshm.stats()["owned_names"] == before + 2
    for s in (seg, tmp, hand, keep):
        s.close()
    assert os.path.exists(shm_path(unique_name + "r"))  # handed over: not this process's to remove
    ndshm.unlink(unique_name + "r")
    ndshm.unlink(unique_name + "p")
    assert ndshm.stats()["owned_names"] == before


def test_handover_unpickled_by_its_creator_is_owned_again(unique_name):
    import pickle
    a = ndshm.create(unique_name, 4, owner="receiver")
    data = pickle.dumps(a)
    del a
    collect()
    back = pickle.loads(data)  # e.g. a thread pool, or a queue read in the same process
    assert ndshm.segment_of(back).owner == "received"
    del back
    collect()
    assert not os.path.exists(shm_path(unique_name))

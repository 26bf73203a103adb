"""ndshm.dask under Dask's Active Memory Manager (on, as by default) and its policies: replica
reduction, retirement of the owner's worker and rebalancing (issue 18, item 1). After each, a task
on the node still gets a zero-copy SharedArray, the segment's file lives while any worker holds the
key and goes when none does, and the node's workers count the array's bytes in their managed
memory exactly once."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import ndshm
from conftest import collect
from optional_deps import require
from test_dask import _make, _settle, _where  # the tasks and clean-up test_dask uses

N = 2_000_000  # float32: 8 MB
NBYTES = N * 4


@pytest.fixture(scope="module")
def cluster():
    require("distributed", "Dask AMM test")
    import dask
    import ndshm.dask
    from distributed import Client, LocalCluster
    with dask.config.set({"distributed.scheduler.active-memory-manager.start": True,
                          "distributed.scheduler.active-memory-manager.interval": "100ms",
                          # rebalance by managed memory, whatever the processes' sizes
                          "distributed.worker.memory.rebalance.measure": "managed",
                          "distributed.worker.memory.rebalance.sender-min": 0.0,
                          "distributed.worker.memory.rebalance.recipient-max": 1.0,
                          "distributed.worker.memory.rebalance.sender-recipient-gap": 0.0}):
        cl = LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None,
                          worker_dashboard_address=None)
    client = Client(cl)
    ndshm.dask.install(client)
    try:
        yield client, cl
    finally:
        client.close()
        cl.close()
        _settle()


def _managed(dask_worker, key) -> "int | None":
    """This worker's managed memory for ``key`` (None if it does not hold it in memory); -1 if
    ``dask.sizeof`` of its value says otherwise."""
    import dask.sizeof
    ts = dask_worker.state.tasks.get(key)
    if ts is None or ts.state != "memory":
        return None
    return ts.nbytes if dask.sizeof.sizeof(dask_worker.data.fast[key]) == ts.nbytes else -1


def _wait(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what() if callable(what) else what}")
        time.sleep(0.05)


def _workers(client) -> list:
    return sorted(client.scheduler_info()["workers"])


def _holders(client, fut) -> list:
    return sorted(client.who_has([fut])[fut.key])


def _counted_once(client, fut) -> dict:
    """Wait until the node's workers count the array's bytes once in their managed memory."""
    seen: list = []

    def check():
        held = {w: n for w, n in client.run(_managed, key=fut.key).items() if n is not None}
        seen[:] = [held]
        counts = sorted(held.values())
        ok = counts and counts[-1] == NBYTES + 100 and all(n == 100 for n in counts[:-1])
        return held if ok else None
    return _wait(check, 5, lambda: f"one worker accounting for the array's {NBYTES} bytes, the others 100 bytes "
                 f"(managed memory per worker, -1 where dask.sizeof differs: {seen})")


def _segment_path(name: str) -> str:
    return os.path.join(ndshm._segment.default_dir(), "ndshm." + name)


def _check_on_node(client, fut, path: str, name: str, value: float) -> None:
    """Every worker of the node, and the client, get the array zero copy (a SharedArray in the
    very segment), and the file lives."""
    assert os.path.exists(path)
    for w in _workers(client):
        got = client.submit(_where, fut, workers=[w], pure=False).result(timeout=30)
        assert got["type"] == "SharedArray" and got["segment"] == name and got["sum"] == value * N, got
    back = fut.result(timeout=30)
    assert ndshm.segment_of(back).name == name
    del back
    collect()


def _gone(path: str) -> None:
    _wait(lambda: not os.path.exists(path), 10, f"{path} removed once no worker holds the key")


def test_replica_reduction_keeps_the_array_shared_and_counted_once(cluster):
    client, _ = cluster
    a, b = _workers(client)
    x = client.submit(_make, N, 1.0, workers=[a], pure=False)
    seen = client.submit(_where, x, workers=[b], pure=False).result(timeout=30)
    assert seen["type"] == "SharedArray"
    name, path = seen["segment"], _segment_path(seen["segment"])
    # the AMM drops one of the two replicas (whichever it likes: the owner's, often)
    _wait(lambda: len(_holders(client, x)) == 1, 10, "the AMM reducing x to one replica")
    assert os.path.exists(path)
    held = _counted_once(client, x)
    assert list(held) == _holders(client, x)
    _check_on_node(client, x, path, name, 1.0)
    _counted_once(client, x)
    del x
    _gone(path)


def test_rebalance_keeps_the_array_shared_and_counted_once(cluster):
    client, _ = cluster
    a, b = _workers(client)
    # two arrays on one worker: rebalance moves one (it never moves a key past the cluster's mean)
    futs = [client.submit(_make, N, 2.0, workers=[a], pure=False) for _ in range(2)]
    names = [client.submit(lambda v: ndshm.segment_of(v).name, f, workers=[a], pure=False).result(timeout=30)
             for f in futs]
    paths = [_segment_path(n) for n in names]
    client.rebalance(futures=futs)
    _wait(lambda: sorted(len(_holders(client, f)) for f in futs) == [1, 1] and
          {w for f in futs for w in _holders(client, f)} == {a, b}, 10, "rebalance moving one array to b")
    moved = next(i for i, f in enumerate(futs) if _holders(client, f) == [b])
    assert all(os.path.exists(p) for p in paths)  # moved by reference: the maker let go, the receiver holds
    for f in futs:
        held = _counted_once(client, f)
        assert list(held) == _holders(client, f)
    _check_on_node(client, futs[moved], paths[moved], names[moved], 2.0)
    del futs, f
    for p in paths:
        _gone(p)


def test_retiring_the_owners_worker_keeps_the_array_shared_and_counted_once(cluster):
    """Last in this module: the cluster has one worker afterwards."""
    client, _ = cluster
    a, b = _workers(client)
    x = client.submit(_make, N, 3.0, workers=[a], pure=False)
    x.result(timeout=30)
    name = client.submit(lambda v: ndshm.segment_of(v).name, x, workers=[a], pure=False).result(timeout=30)
    path = _segment_path(name)
    client.retire_workers(workers=[a], close_workers=True)  # the AMM's RetireWorker moves x to b first
    _wait(lambda: _workers(client) == [b], 20, "the owner's worker retired")
    assert _holders(client, x) == [b] and os.path.exists(path)  # its maker exited; b holds it
    held = _counted_once(client, x)  # b took the accounting over
    assert list(held) == [b]
    _check_on_node(client, x, path, name, 3.0)
    del x
    _gone(path)


HOLDER = r'''
import pickle, sys
import dask.sizeof
import ndshm.dask
header, frames = pickle.loads(bytes.fromhex(sys.argv[1]))
x = ndshm.dask.deserialize_shared_array(header, frames)  # by reference: this process holds it now
name = ndshm.segment_of(x).name
print("held", ndshm.dask.holders_info()[name]["accountant"], dask.sizeof.sizeof(x), flush=True)
sys.stdin.readline()
ndshm.dask.NdshmPlugin().adopt()  # what a worker does every 0.5 s: take the accounting over
print("adopted", ndshm.dask.holders_info()[name]["accountant"], dask.sizeof.sizeof(x), flush=True)
sys.stdin.readline()
del x
print("dropped", flush=True)
sys.stdin.readline()
'''


def test_a_node_owned_name_lives_while_any_process_holds_it():
    """Without Dask's machinery: the maker lets go first, the name stays for the receiver (which
    then takes the accounting over); it goes with the receiver's last array."""
    require("distributed", "Dask AMM test")
    import pickle

    import dask.sizeof
    import ndshm.dask
    from conftest import expect_line, finish_python, start_python
    arr = ndshm.dask.empty((1000,), np.float32)
    name = ndshm.segment_of(arr).name
    path = ndshm.segment_of(arr).path
    assert ndshm.dask.holders_info()[name] == {"arrays": 1, "accountant": True}
    assert dask.sizeof.sizeof(arr) == arr.nbytes + 100
    msg = ndshm.dask.serialize_shared_array(arr, context={"recipient": {"ndshm-node": ndshm.dask._node_key()}})
    p = start_python(HOLDER, pickle.dumps(msg).hex())
    try:
        expect_line(p, "held False 100")  # the maker accounts for it
        del arr
        collect()
        assert name not in ndshm.dask.holders_info() and os.path.exists(path)  # the receiver holds it
        p.stdin.write("\n")
        p.stdin.flush()
        expect_line(p, f"adopted True {1000 * 4 + 100}")
        p.stdin.write("\n")
        p.stdin.flush()
        expect_line(p, "dropped")
        assert not os.path.exists(path)
        p.stdin.write("\n")
        p.stdin.flush()
        finish_python(p)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()

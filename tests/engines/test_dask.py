"""ndshm.dask in a real LocalCluster (processes=True, two workers): by reference between workers of
one node, by value across "nodes", on the spill path, and the memory Dask counts (issue 10, item 2)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

import ndshm
from conftest import ROOT, child_env, collect
from optional_deps import require


@pytest.fixture(scope="module")
def cluster():
    require("distributed", "Dask test")
    import ndshm.dask
    from distributed import Client, LocalCluster
    cl = LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None,
                      worker_dashboard_address=None)
    client = Client(cl)
    ndshm.dask.install(client)
    try:
        yield client, sorted(client.scheduler_info()["workers"])
    finally:
        client.close()
        cl.close()
        _settle()


def _settle() -> None:
    """Leave no mapping of a removed segment for the mapping watcher to drop during a later test
    (tests elsewhere compare this process's mapping counts)."""
    from ndshm import _mappings
    collect()
    _mappings.drop_removed(force=True)
    collect()


def _make(n: int, value: float) -> np.ndarray:
    import ndshm.dask
    out = ndshm.dask.empty((n,), np.float32)
    out[...] = value
    return out


def _where(x: np.ndarray) -> dict:
    """Where the task's input lies: its segment, the offset of its data in it, and more."""
    import dask.sizeof
    import ndshm
    import ndshm.dask
    try:
        seg = ndshm.segment_of(x)
    except ValueError:
        seg = None
    addr = x.__array_interface__["data"][0]
    return {"type": type(x).__name__, "segment": seg.name if seg else None,
            "offset": addr - seg.address if seg else None,
            "inside": bool(seg and seg.address <= addr and addr + x.nbytes <= seg.address + seg.nbytes),
            "writeable": bool(x.flags.writeable), "sum": float(x.sum(dtype=np.float64)),
            "sizeof": dask.sizeof.sizeof(x), "stats": ndshm.dask.stats(), "pid": os.getpid()}


def test_worker_to_worker_by_reference(cluster):
    client, (w1, w2) = cluster
    f = client.submit(_make, 250_000, 2.0, workers=[w1], pure=False)
    home = client.submit(_where, f, workers=[w1], pure=False).result(timeout=30)
    away = client.submit(_where, f, workers=[w2], pure=False).result(timeout=30)
    assert home["pid"] != away["pid"]
    assert away["type"] == "SharedArray" and away["segment"] == home["segment"] is not None
    assert away["inside"] and away["offset"] == 0  # the receiver's data lies in the very segment
    assert away["sum"] == 500_000.0
    assert not away["writeable"]  # receivers get read-only views unless install(writeable=True)
    assert away["stats"]["received_by_reference"] >= 1
    # dask.sizeof counts the data where it is owned only
    assert home["sizeof"] >= 1_000_000 and away["sizeof"] < 1000


def _slice_of(x: np.ndarray) -> np.ndarray:
    return x[100:200]


def test_a_slice_travels_by_reference_with_its_offset(cluster):
    client, (w1, w2) = cluster
    f = client.submit(_make, 1000, 3.0, workers=[w1], pure=False)
    s = client.submit(_slice_of, f, workers=[w1], pure=False)
    away = client.submit(_where, s, workers=[w2], pure=False).result(timeout=30)
    assert away["type"] == "SharedArray" and away["offset"] == 400 and away["sum"] == 300.0


def test_released_results_leave_no_segment(cluster):
    client, (w1, w2) = cluster
    f = client.submit(_make, 1000, 1.0, workers=[w1], pure=False)
    name = client.submit(_where, f, workers=[w2], pure=False).result(timeout=30)["segment"]
    assert ndshm.exists(name)
    del f
    deadline = time.monotonic() + 15
    while ndshm.exists(name) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not ndshm.exists(name)


def test_scatter(cluster):
    import ndshm.dask
    client, (w1, w2) = cluster
    data = np.arange(100_000, dtype=np.float32)
    before = ndshm.dask.stats()["by_reference"]
    fut = ndshm.dask.scatter(client, data, workers=[w1])
    got = client.submit(_where, fut, workers=[w1], pure=False).result(timeout=30)
    assert ndshm.dask.stats()["by_reference"] == before + 1
    assert got["type"] == "SharedArray" and got["segment"] and got["sum"] == float(data.sum(dtype=np.float64))
    assert got["sizeof"] >= data.nbytes  # the receiving worker owns it (owner="receiver")
    # the gather comes back by reference too, with the same data
    back = fut.result(timeout=30)
    assert ndshm.segment_of(back).name == got["segment"]
    np.testing.assert_array_equal(back, data)
    name = got["segment"]
    del fut, back
    deadline = time.monotonic() + 15
    while ndshm.exists(name) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not ndshm.exists(name)  # gone once the owning worker released it


def _spill_and_read(dask_worker, key) -> dict:
    buf = dask_worker.data
    while key in getattr(buf, "fast", {}):
        if buf.evict() < 0:
            break
    return {"spilled": key in getattr(buf, "slow", {}), "value": _where(buf[key])}


def test_spill_goes_by_value(cluster):
    import ndshm.dask
    client, (w1, w2) = cluster
    f = client.submit(_make, 10_000, 4.0, workers=[w1], pure=False)
    f.result(timeout=30)
    out = client.run(_spill_and_read, key=f.key, workers=[w1])[w1]
    assert out["spilled"]
    back = out["value"]
    assert back["type"] == "ndarray" and back["segment"] is None and back["sum"] == 40_000.0
    assert back["stats"]["by_value"] >= 1
    # the serializer with no recipient (what the spill path calls) never writes a reference
    from distributed.protocol import deserialize_bytes, serialize_bytelist
    arr = ndshm.create(None, (5,), np.int64, owner="views")
    arr[...] = 7
    frames = serialize_bytelist(arr)
    assert sum(len(memoryview(fr).cast("B")) for fr in frames) >= arr.nbytes
    again = deserialize_bytes(b"".join(frames))
    assert type(again) is np.ndarray and again.tolist() == [7] * 5


@pytest.fixture(scope="module")
def other_node(cluster, tmp_path_factory):
    """A worker simulating another node: its own NDSHM_NODE_ID and its own segment directory."""
    client, _ = cluster
    seg_dir = str(tmp_path_factory.mktemp("other-node-shm"))
    env = child_env(NDSHM_NODE_ID="simulated-second-node", NDSHM_DIR=seg_dir)
    # test_dask (this file) and the conftest it imports, for the functions the worker unpickles
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.abspath(__file__)), str(ROOT / "tests"),
                                         env.get("PYTHONPATH", "")])
    proc = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", client.scheduler.address,
                             "--nthreads", "1", "--no-nanny", "--no-dashboard", "--name", "other-node",
                             "--preload", "ndshm.dask"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client.wait_for_workers(3, timeout=30)
        addr = next(a for a, w in client.scheduler_info()["workers"].items() if w["name"] == "other-node")
        yield addr, seg_dir
    finally:
        client.retire_workers(workers=[a for a, w in client.scheduler_info()["workers"].items()
                                       if w["name"] == "other-node"], close_workers=True)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_second_node_gets_data_by_value(cluster, other_node):
    """A worker whose node identity differs (NDSHM_NODE_ID, as on another machine) gets the data by
    value, correct."""
    client, (w1, w2) = cluster
    other, _ = other_node
    f = client.submit(_make, 1000, 5.0, workers=[w1], pure=False)
    got = client.submit(_where, f, workers=[other], pure=False).result(timeout=30)
    assert got["type"] == "ndarray" and got["segment"] is None and got["sum"] == 5000.0
    assert got["stats"]["received_by_reference"] == 0
    sent = client.run(lambda: __import__("ndshm.dask").dask.stats(), workers=[w1])[w1]
    assert sent["by_value"] >= 1
    # and the other way: its array reaches this node's worker by value too
    g = client.submit(_make, 1000, 6.0, workers=[other], pure=False)
    back = client.submit(_where, g, workers=[w2], pure=False).result(timeout=30)
    assert back["type"] == "ndarray" and back["sum"] == 6000.0


def _replica_info(rep) -> dict:
    arr = rep.array()
    seg = ndshm.segment_of(arr)
    return {"path": seg.path, "sum": float(arr.sum()), "readonly": not arr.flags.writeable,
            "in_segment": seg.address == arr.__array_interface__["data"][0]}


def test_replicate_one_copy_per_node(cluster, other_node):
    client, (w1, w2) = cluster
    other, other_dir = other_node
    data = np.arange(50_000, dtype=np.float64)
    rep = ndshm.replicate(data, client)
    assert rep.nodes == 2 and rep.shape == data.shape and rep.dtype == data.dtype
    here_path = os.path.join(ndshm._segment.default_dir(), "ndshm." + rep.name)
    there_path = os.path.join(other_dir, "ndshm." + rep.name)
    try:
        infos = client.run(_replica_info, rep)
        assert set(infos) == {w1, w2, other}
        assert infos[w1]["path"] == infos[w2]["path"] == here_path  # both local workers map one copy
        assert infos[other]["path"] == there_path  # the other node has its own
        assert all(i["sum"] == float(data.sum()) and i["readonly"] and i["in_segment"] for i in infos.values())
        assert os.path.exists(here_path) and os.path.exists(there_path)
    finally:
        rep.release()
    assert not os.path.exists(here_path) and not os.path.exists(there_path)
    with pytest.raises(ValueError, match="replicate"):
        rep.release()
    with pytest.raises(ndshm.SegmentNotFoundError, match="no copy on this node"):
        rep.array()
    with pytest.raises(TypeError, match="engine"):
        ndshm.replicate(data, object())


def _fill_row(ref, i: int) -> bool:
    ndshm.from_reference(ref)[i] = i + 1
    return True


def test_tasks_fill_disjoint_slices_of_a_shared_output(cluster):
    client, (w1, w2) = cluster
    out = ndshm.create(None, (6, 500), np.float32)
    ref = ndshm.reference(out)
    futs = [client.submit(_fill_row, ref, i, workers=[(w1, w2)[i % 2]], pure=False) for i in range(6)]
    assert all(f.result(timeout=30) for f in futs)
    np.testing.assert_array_equal(out[:, -1], np.arange(1, 7))


def test_receiver_refuses_a_reference_from_another_node():
    require("distributed", "Dask test")
    import pickle

    import ndshm.dask
    arr = ndshm.create(None, (3,), np.int64, owner="views")
    here = {"recipient": {"ndshm-node": ndshm.dask._node_key()}}
    header, frames = ndshm.dask.serialize_shared_array(arr, context=here)
    assert header["ndshm"] == "reference"
    ref = pickle.loads(frames[0])
    forged = [pickle.dumps(ref._replace(node="elsewhere/1/2"))]
    # not an OSError (Dask would retry it as a network failure for ever): names the segment and both nodes
    with pytest.raises(ndshm.dask.UnreachableReferenceError, match=ref.name) as info:
        ndshm.dask.deserialize_shared_array(header, forged)
    assert not isinstance(info.value, OSError)
    assert "elsewhere/1/2" in str(info.value) and ndshm.node_identity() in str(info.value)
    # the same node identity but another segment directory's file system (its own tmpfs) is another node
    assert ndshm.dask.serialize_shared_array(arr, context={"recipient": {"ndshm-node": ndshm.node_identity()}})[0][
        "ndshm"] == "value"
    # an object pickled whole: by value to another node (and to disk), a reference to this node
    import types

    from distributed.protocol.serialize import deserialize, serialize
    wrapped = types.SimpleNamespace(x=arr)
    header, frames = serialize(wrapped, serializers=("pickle",), context={"recipient": {"ndshm-node": "other"}})
    back = deserialize(header, frames)
    assert type(back.x) is np.ndarray and back.x.tolist() == [0, 0, 0]
    header, frames = serialize(wrapped, serializers=("pickle",), context=here)
    assert header["ndshm"] == "references"
    back = deserialize(header, frames)
    assert ndshm.segment_of(back.x).name == ndshm.segment_of(arr).name
    # a reference pickled whole that cannot be mapped here fails clearly too (a forged node identity)
    node = ndshm.node_identity().encode()
    stream = pickle.dumps(wrapped, protocol=5).replace(node, b"x" * len(node))
    with pytest.raises(ndshm.dask.UnreachableReferenceError, match=ndshm.segment_of(arr).name):
        deserialize({"serializer": "pickle", "writeable": ()}, [stream])
    # an unknown recipient (no ndshm in its handshake) gets the data
    header, frames = ndshm.dask.serialize_shared_array(arr, context={"recipient": {"address": "tcp://x"}})
    assert header["ndshm"] == "value"
    assert type(ndshm.dask.deserialize_shared_array(header, frames)) is np.ndarray


def test_plain_scatter_through_the_scheduler_goes_by_value(cluster, other_node):
    """client.scatter without direct=True goes through the scheduler, which may forward to another
    node: a SharedArray is sent to it by value, and reaches a worker of the other node correct."""
    client, (w1, w2) = cluster
    other, _ = other_node
    arr = ndshm.create(None, (1000,), np.float32, owner="views")
    arr[...] = 3.0
    for target in (other, w1):
        fut = client.scatter(arr, workers=[target], hash=False, direct=False)
        got = client.submit(_where, fut, workers=[target], pure=False).result(timeout=30)
        assert got["type"] == "ndarray" and got["sum"] == 3000.0
        del fut


def _write_first(x: np.ndarray) -> bool:
    x[0] = 42.0
    return bool(x.flags.writeable)


def test_install_writeable_gives_receivers_writeable_views(cluster):
    import ndshm.dask
    client, (w1, w2) = cluster
    ndshm.dask.install(client, writeable=True)
    try:
        f = client.submit(_make, 100, 1.0, workers=[w1], pure=False)
        assert client.submit(_write_first, f, workers=[w2], pure=False).result(timeout=30)
        assert client.submit(lambda x: float(x[0]), f, workers=[w1], pure=False).result(timeout=30) == 42.0
    finally:
        ndshm.dask.install(client)
    with pytest.raises(TypeError, match="writeable"):
        ndshm.dask.install(client, writeable="yes")
    g = client.submit(_make, 100, 1.0, workers=[w1], pure=False)
    assert client.submit(_where, g, workers=[w2], pure=False).result(timeout=30)["writeable"] is False


def test_a_shared_array_in_a_task_argument_goes_by_value_through_the_scheduler(cluster):
    """The scheduler, which may forward a task to another node, is sent the argument's data, not a
    reference (pass ndshm.reference(arr), or scatter, to share it by reference)."""
    import types
    client, (w1, _) = cluster
    arr = ndshm.create(None, (1000,), np.float32, owner="views")
    arr[...] = 2.0
    got = client.submit(_where, arr, workers=[w1], pure=False).result(timeout=30)
    assert got["type"] == "ndarray" and got["sum"] == 2000.0
    wrapped = client.submit(lambda ns: _where(ns.x), types.SimpleNamespace(x=arr), workers=[w1],
                            pure=False).result(timeout=30)
    assert wrapped["type"] == "ndarray" and wrapped["sum"] == 2000.0


# ---- the node pool (issue 21): install(client, pool_bytes=...) --------------------------------------

POOL_BYTES = 32 << 20


@pytest.fixture
def pool_cluster(cluster):
    """The module's cluster with a node pool made by this (the client's) process; installed again
    without one afterwards."""
    import ndshm.dask
    client, workers = cluster
    ndshm.dask.install(client, pool_bytes=POOL_BYTES)
    pool = ndshm.dask.node_pool()
    assert pool is not None and pool.nbytes >= POOL_BYTES
    try:
        yield client, workers, pool
    finally:
        ndshm.dask.install(client)
        assert ndshm.dask.node_pool() is None


def _where_pool(x: np.ndarray) -> dict:
    import dask.sizeof
    import ndshm.dask
    from ndshm import pool as P
    args = P.reference_args(x, send=False)
    return {"type": type(x).__name__, "pool": args[0] if args else None, "offset": args[5] if args else None,
            "writeable": bool(x.flags.writeable), "sum": float(x.sum(dtype=np.float64)),
            "sizeof": dask.sizeof.sizeof(x), "pid": os.getpid(),
            "node_pool": getattr(ndshm.dask.node_pool(), "name", None)}


def _wait_free(pool, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    st = pool.stats()
    while (st.live_blocks or st.in_transit) and time.monotonic() < deadline:
        time.sleep(0.05)
        st = pool.stats()
    return st


def test_pool_arrays_pass_worker_to_worker_by_reference_and_are_freed(pool_cluster):
    client, (w1, w2), pool = pool_cluster
    f = client.submit(_make, 250_000, 3.0, workers=[w1], pure=False)
    home = client.submit(_where_pool, f, workers=[w1], pure=False).result(timeout=30)
    away = client.submit(_where_pool, f, workers=[w2], pure=False).result(timeout=30)
    assert home["node_pool"] == away["node_pool"] == pool.name  # both workers attached the client's pool
    assert home["pid"] != away["pid"]
    assert home["type"] == away["type"] == "PoolArray" and away["pool"] == pool.name
    assert away["offset"] == home["offset"]  # the very block, not a copy
    assert away["sum"] == home["sum"] == 750_000.0 and not away["writeable"]
    assert home["sizeof"] >= 1_000_000 and away["sizeof"] <= 200  # the maker counts the bytes
    assert pool.stats().live_blocks == 1
    # the client gets it by reference too
    back = f.result(timeout=30)
    assert type(back).__name__ == "PoolArray" and float(back.sum(dtype=np.float64)) == 750_000.0
    del f, back
    collect()
    st = _wait_free(pool)  # every worker dropped the key: the block is free again
    assert st.live_blocks == 0 and st.in_transit == 0 and st.frees >= 1


def test_pool_array_inside_an_object_goes_by_reference(pool_cluster):
    import types
    client, (w1, w2), pool = pool_cluster
    f = client.submit(lambda n: types.SimpleNamespace(x=_make(n, 5.0)), 1000, workers=[w1], pure=False)
    got = client.submit(lambda ns: _where_pool(ns.x), f, workers=[w2], pure=False).result(timeout=30)
    assert got["type"] == "PoolArray" and got["pool"] == pool.name and got["sum"] == 5000.0
    del f
    collect()
    assert _wait_free(pool).live_blocks == 0


def _receive(header: dict, frames: list) -> float:
    from distributed.protocol.serialize import dask_deserialize
    import ndshm
    x = dask_deserialize.dispatch(ndshm.SharedArray)(header, frames)
    return float(x.sum(dtype=np.float64))


def test_a_freed_pool_block_is_refused(pool_cluster):
    import ndshm.dask
    client, (w1, _), pool = pool_cluster
    x = pool.full((1000,), 2.0, np.float64)
    ctx = {"recipient": {ndshm.dask.HANDSHAKE_KEY: ndshm.dask._node_key()}}
    header, frames = ndshm.dask.serialize_shared_array(x, context=ctx)
    assert header["ndshm"] == "pool" and sum(len(memoryview(fr)) for fr in frames) < 1000
    assert client.run(_receive, header, frames, workers=[w1])[w1] == 2000.0  # ends the hand-over
    del x
    collect()
    assert _wait_free(pool).live_blocks == 0
    y = pool.full((1000,), 9.0, np.float64)  # very likely the same bytes, a new generation
    with pytest.raises(ndshm.dask.UnreachableReferenceError, match="freed"):
        client.run(_receive, header, frames, workers=[w1])
    assert float(y.sum()) == 9000.0


def test_pool_arrays_go_by_value_without_a_same_node_recipient(pool_cluster):
    import types

    import ndshm.dask
    _, _, pool = pool_cluster
    x = pool.full((100,), 4.0, np.float32)
    header, frames = ndshm.dask.serialize_shared_array(x, context=None)  # the spill path
    assert header["ndshm"] == "value"
    header, frames = ndshm.dask._pickle_dumps(types.SimpleNamespace(x=x), context=None)
    back = ndshm.dask._pickle_loads(header, frames)
    assert type(back.x) is np.ndarray and float(back.x.sum()) == 400.0
    assert pool.stats().in_transit == 0  # the hand-overs pickling made were ended, none leaks
    del x, header, frames, back  # by-value frames (and what they load into) view the block until sent
    collect()
    assert pool.stats().live_blocks == 0


def test_install_refuses_a_bad_pool_size(cluster, monkeypatch):
    import ndshm.dask
    client, _ = cluster
    for bad in (-1, 1.5, "1G", True):
        with pytest.raises(ValueError, match="pool_bytes"):
            ndshm.dask.install(client, pool_bytes=bad)
    monkeypatch.setenv(ndshm.dask.POOL_BYTES_ENV, "lots")
    with pytest.raises(ValueError, match="NDSHM_ENGINE_POOL_BYTES='lots'"):
        ndshm.dask.install(client)
    assert ndshm.dask.node_pool() is None

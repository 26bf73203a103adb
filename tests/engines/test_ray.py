"""ndshm.ray with a real local Ray (num_cpus=2): task results handed over by reference, in-place
writes into a driver's array, and the cross-node refusal (issue 10, item 3)."""

from __future__ import annotations

import time

import numpy as np
import pytest

import ndshm
from conftest import collect, skip_or_fail
from optional_deps import require


@pytest.fixture(scope="module")
def ray():
    ray = require("ray", "Ray test")
    import ndshm.ray
    ndshm.ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        from ndshm import _mappings
        collect()  # leave no mapping of a removed segment for the watcher to drop during a later test
        _mappings.drop_removed(force=True)
        collect()


def _tasks(ray):
    @ray.remote
    def make(n: int, value: float):
        import ndshm.ray
        out = ndshm.ray.empty((n,), np.float32)
        out[...] = value
        return out

    @ray.remote
    def where(x):
        import os
        try:
            seg = ndshm.segment_of(x)
        except ValueError:
            seg = None
        addr = x.__array_interface__["data"][0]
        return {"type": type(x).__name__, "segment": seg.name if seg else None,
                "inside": bool(seg and seg.address <= addr and addr + x.nbytes <= seg.address + seg.nbytes),
                "owner": seg.owner if seg else None, "writeable": bool(x.flags.writeable),
                "sum": float(x.sum(dtype=np.float64)), "pid": os.getpid()}

    @ray.remote
    def fill_row(ref, i: int):
        out = ndshm.from_reference(ref)
        out[i] = i + 1
        return True

    @ray.remote
    def try_write(x):
        try:
            x[0] = 1
        except ValueError:
            return "read-only"
        return "written"

    return make, where, fill_row, try_write


def test_task_result_reaches_the_driver_zero_copy_and_lives_while_used(ray):
    make, where, _, _ = _tasks(ray)
    r = make.remote(100_000, 2.0)
    seen = ray.get(where.remote(r), timeout=60)  # a consumer task maps it, without taking it over
    assert seen["type"] == "SharedArray" and seen["inside"] and seen["owner"] != "received"
    time.sleep(0.2)
    arr = ray.get(r, timeout=60)  # the producing task has ended long ago
    seg = ndshm.segment_of(arr)
    assert seg.name == seen["segment"] and seg.owner == "received"  # the driver owns it now
    addr = arr.__array_interface__["data"][0]
    assert seg.address <= addr < seg.address + seg.nbytes
    assert float(arr.sum(dtype=np.float64)) == 200_000.0 and not arr.flags.writeable
    again = ray.get(where.remote(r), timeout=60)  # still there for more consumers
    assert again["segment"] == seg.name and again["sum"] == 200_000.0
    name = seg.name
    del arr, seg
    collect()
    assert not ndshm.exists(name)  # gone with the driver's last view: nothing left behind


def test_task_writes_in_place_into_a_drivers_array(ray):
    _, _, fill_row, try_write = _tasks(ray)
    out = ndshm.create(None, (6, 1000), np.float64)
    ref = ndshm.reference(out)
    assert all(ray.get([fill_row.remote(ref, i) for i in range(6)], timeout=60))
    np.testing.assert_array_equal(out[:, 0], np.arange(1, 7))
    assert (out[3] == 4).all()
    # the array itself reaches a task read-only (the default)
    assert ray.get(try_write.remote(out), timeout=60) == "read-only"
    assert out[0, 0] == 1


def test_plain_arrays_and_copies_go_by_value(ray):
    import ndshm.ray
    _, where, _, _ = _tasks(ray)
    sa = ndshm.create(None, (10,), np.float32) + 1  # a SharedArray that is a copy
    kind, value = ndshm.ray.serialize(sa)
    assert kind == "value" and type(value) is np.ndarray
    got = ray.get(where.remote(sa), timeout=60)
    assert got["segment"] is None and got["sum"] == 10.0


def test_a_reference_reaching_another_node_raises(ray):
    import ndshm.ray
    arr = ndshm.create(None, (4,), np.int64)
    kind, ref, ray_node = ndshm.ray.serialize(arr)
    assert kind == "ref" and ray_node == ray.get_runtime_context().get_node_id()
    with pytest.raises(ndshm.WrongNodeError, match="Ray node") as info:
        ndshm.ray.deserialize(("ref", ref._replace(node="elsewhere/1/2"), "some-other-ray-node"))
    assert "some-other-ray-node" in str(info.value)
    assert ndshm.ray.deserialize((kind, ref, ray_node)).tolist() == [0, 0, 0, 0]


def test_runtime_env_refuses_a_foreign_setup_hook():
    require("ray", "Ray test")
    import ndshm.ray
    env = ndshm.ray.runtime_env({"env_vars": {"A": "1"}}, writeable=True)
    assert env["worker_process_setup_hook"] == "ndshm.ray.setup"
    assert env["env_vars"] == {"A": "1", "NDSHM_RAY_WRITEABLE": "1"}
    with pytest.raises(ValueError, match="setup_hook"):
        ndshm.ray.runtime_env({"worker_process_setup_hook": "other.hook"})
    with pytest.raises(TypeError, match="writeable"):
        ndshm.ray.runtime_env(writeable="yes")


def test_replicate_on_one_node_is_one_copy_mapped_by_tasks(ray):
    data = np.arange(10_000, dtype=np.int32)
    rep = ndshm.replicate(data, ray)
    assert rep.nodes == 1

    @ray.remote
    def look(r):
        arr = r.array()
        seg = ndshm.segment_of(arr)
        return seg.path, int(arr.sum()), bool(arr.flags.writeable)

    path, total, writeable = ray.get(look.remote(rep), timeout=60)
    assert path == ndshm.segment_of(rep.array()).path and total == int(data.sum()) and not writeable
    rep.release()
    assert not ndshm.exists(rep.name)


def test_ray_put_of_a_shared_array_stores_a_reference(ray):
    _, where, _, _ = _tasks(ray)
    arr = ndshm.create(None, (50_000,), np.float32)
    arr[...] = 0.5
    ref = ray.put(arr)
    got = ray.get(where.remote(ref), timeout=60)
    assert got["segment"] == ndshm.segment_of(arr).name and got["inside"] and got["sum"] == 25_000.0
    back = ray.get(ref, timeout=60)
    assert back.__array_interface__["data"][0] == arr.__array_interface__["data"][0]


TWO_NODES = r'''
import json, os, signal, subprocess, sys, time, types
import numpy as np, ray
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
import ndshm, ndshm.ray

layout, other_dir = sys.argv[1], sys.argv[2]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
second_node = None
if layout == "namespaces":
    # a second Ray node in its own mount namespace with its own tmpfs at /dev/shm
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    second_node = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         "mount -t tmpfs -o size=1g tmpfs /dev/shm && exec " + ray_cli + " start --address=" + cluster.address
         + " --num-cpus=1 --block --disable-usage-stats"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
else:
    # a second Ray node whose processes have another ndshm node identity and segment directory
    cluster.add_node(num_cpus=1, env_vars={"NDSHM_NODE_ID": "simulated-second-node", "NDSHM_DIR": other_dir})
try:
    ray.init(address=cluster.address, runtime_env=ndshm.ray.runtime_env(), log_to_driver=False)
    ndshm.ray._driver = True
    ndshm.ray.setup()
    deadline = time.monotonic() + 90
    while len([n for n in ray.nodes() if n["Alive"]]) < 2:
        assert time.monotonic() < deadline, "the second Ray node did not join"
        time.sleep(0.2)
    head = ray.get_runtime_context().get_node_id()
    second = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != head)

    @ray.remote(num_cpus=1)
    def look(r):
        a = r.array()
        path = ndshm.segment_of(a).path
        return [ndshm.node_identity(), path, list(os.stat(path)[1:3]), float(a.sum())]

    @ray.remote(num_cpus=1)
    def files(name):
        d = ndshm._segment.default_dir()
        return [f for f in os.listdir(d) if name in f]

    @ray.remote(num_cpus=1)
    def total(x):
        return float(x.sum())

    @ray.remote(num_cpus=1)
    def total_wrapped(ns):
        return float(ns.x.sum())

    on = lambda node: NodeAffinitySchedulingStrategy(node, soft=False)
    out = {}
    rep = ndshm.replicate(np.arange(10.0), ray)
    out["nodes"] = rep.nodes
    out["files_there"] = ray.get(files.options(scheduling_strategy=on(second)).remote(rep.name))
    out["looks"] = [ray.get(look.options(scheduling_strategy=on(n)).remote(rep)) for n in (head, second)]
    rep.release()
    out["after"] = [ndshm.exists(rep.name), ray.get(files.options(scheduling_strategy=on(second)).remote(rep.name))]
    arr = ndshm.create(None, (10,), np.float32)
    arr[...] = 1.0
    out["same_node"] = ray.get(total.options(scheduling_strategy=on(head)).remote(arr))
    for case, arg in (("other_node", arr), ("wrapped", types.SimpleNamespace(x=arr))):
        start = time.monotonic()
        try:
            fn = total if case == "other_node" else total_wrapped
            ray.get(fn.options(scheduling_strategy=on(second)).remote(arg), timeout=60)
            out[case] = "attached"
        except Exception as e:
            out[case] = type(e).__name__ + ": " + str(e)
        out[case + "_seconds"] = time.monotonic() - start
    ray.shutdown()
finally:
    if second_node is not None:
        os.killpg(second_node.pid, signal.SIGTERM)
        try:
            second_node.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(second_node.pid, signal.SIGKILL)
            second_node.wait()
    cluster.shutdown()
print("RESULT " + json.dumps(out))
'''


@pytest.mark.slow  # a Ray cluster of two nodes: 12-26 s each
@pytest.mark.parametrize("layout", ["namespaces", "node-id"])
def test_two_ray_nodes_replicate_and_refuse_references(tmp_path, layout):
    """A real second Ray node: in its own mount namespace with its own tmpfs at /dev/shm (needs
    root), or (``node-id``) one of ray.cluster_utils whose processes have another ndshm identity
    and directory. replicate() writes one copy there, mapped by its tasks; a driver's shared array
    passed to a task on it, bare or inside another object, raises WrongNodeError within seconds
    instead of attaching."""
    require("ray", "Ray test")
    import json

    from conftest import run_python
    from test_multinode import _namespaces_possible
    if layout == "namespaces":
        why = _namespaces_possible()
        if why:
            skip_or_fail(why)
    other = tmp_path / "other-node-shm"
    other.mkdir()
    proc = run_python(TWO_NODES, layout, str(other), timeout=180)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    assert out["nodes"] == 2 and len(out["files_there"]) == 1
    (here_node, here_path, here_file, here_sum), (there_node, there_path, there_file, there_sum) = out["looks"]
    assert here_node != there_node and here_sum == there_sum == 45.0
    assert here_file != there_file  # two copies, one per node
    if layout == "node-id":
        assert there_node == "simulated-second-node"
        assert there_path.startswith(str(other)) and not here_path.startswith(str(other))
    assert out["after"] == [False, []]
    assert out["same_node"] == 10.0
    for case in ("other_node", "wrapped"):  # an array inside an object too: a clear error within seconds
        # another boot or node id: "does not reach across nodes"; the same boot in another mount
        # namespace (a container with its own /dev/shm): "the containers do not share that directory"
        assert "WrongNodeError" in out[case] and ("shared memory does not reach across nodes" in out[case]
                                                  or "the containers do not share that directory" in out[case]), out[case]
        assert out[case + "_seconds"] < 30


# ---- pool blocks (issue 21) -----------------------------------------------------------------------

def _pool_tasks(ray):
    @ray.remote
    def make_in(pool, n: int, value: float):
        out = pool.empty((n,), np.float32)
        out[...] = value
        return out

    @ray.remote
    def make_empty(n: int, value: float):
        import ndshm.ray
        out = ndshm.ray.empty((n,), np.float32)
        out[...] = value
        return out

    @ray.remote
    def where_pool(x):
        import os

        from ndshm import pool as P
        args = P.reference_args(x, send=False)
        return {"type": type(x).__name__, "pool": args[0] if args else None, "offset": args[5] if args else None,
                "writeable": bool(x.flags.writeable), "sum": float(x.sum(dtype=np.float64)), "pid": os.getpid()}

    return make_in, make_empty, where_pool


def _wait_free(pool, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    st = pool.stats()
    while (st.live_blocks or st.in_transit) and time.monotonic() < deadline:
        collect()
        time.sleep(0.05)
        st = pool.stats()
    return st


def test_pool_result_read_by_many_tasks_then_the_driver_then_freed(ray):
    from ndshm import pool as P
    make_in, _, where_pool = _pool_tasks(ray)
    with ndshm.Pool(16 << 20) as pool:
        r = make_in.remote(pool, 100_000, 2.0)
        first = ray.get(where_pool.remote(r), timeout=60)
        time.sleep(0.2)  # the producer and the first consumer have dropped their views
        more = ray.get([where_pool.remote(r) for _ in range(3)], timeout=60)  # one stored object, read again
        for got in [first] + more:
            assert got["type"] == "PoolArray" and got["pool"] == pool.name and got["sum"] == 200_000.0
            assert got["offset"] == first["offset"] and not got["writeable"]
        assert pool.stats().live_blocks == 1 and pool.stats().in_transit == 1  # the hand-over to the driver
        arr = ray.get(r, timeout=60)  # the driver takes the hand-over
        assert type(arr) is P.PoolArray and P.reference_args(arr, send=False)[5] == first["offset"]
        assert float(arr.sum(dtype=np.float64)) == 200_000.0 and pool.stats().in_transit == 0
        del arr
        st = _wait_free(pool)
        assert st.live_blocks == 0 and st.in_transit == 0  # gone with the driver's last view
        with pytest.raises(Exception, match="freed"):  # a freed block is refused, never read
            ray.get(r, timeout=60)


def test_a_drivers_pool_array_is_read_by_tasks_while_the_driver_holds_it(ray):
    _, _, where_pool = _pool_tasks(ray)
    with ndshm.Pool(16 << 20) as pool:
        x = pool.full((1000,), 3.0, np.float64)
        ref = ray.put(x)
        got = ray.get([where_pool.remote(ref) for _ in range(2)], timeout=60)
        assert all(g["type"] == "PoolArray" and g["sum"] == 3000.0 for g in got)
        assert pool.stats().in_transit == 0  # the driver's own view keeps it: no hand-over to leak
        del x
        assert _wait_free(pool).live_blocks == 0
        with pytest.raises(Exception, match="freed"):
            ray.get(where_pool.remote(ref), timeout=60)


def test_ray_empty_carves_from_the_drivers_node_pool(ray):
    import json

    import ndshm.ray
    _, make_empty, where_pool = _pool_tasks(ray)
    with ndshm.Pool(16 << 20) as pool:
        # what init(pool_bytes=...) puts in every worker's environment, here for these tasks only
        env = {"env_vars": {ndshm.ray.POOL_ENV: json.dumps([ndshm.node_identity(), pool.name, pool.dir]),
                            ndshm.ray.WRITEABLE_ENV: "0"}}
        r = make_empty.options(runtime_env=env).remote(50_000, 1.5)
        got = ray.get(where_pool.remote(r), timeout=120)
        assert got["type"] == "PoolArray" and got["pool"] == pool.name and got["sum"] == 75_000.0
        arr = ray.get(r, timeout=60)
        assert float(arr.sum(dtype=np.float64)) == 75_000.0
        del arr, r
        assert _wait_free(pool).live_blocks == 0


def test_init_refuses_a_bad_pool_size():
    require("ray", "Ray test")
    import ndshm.ray
    for bad in (-1, 2.5, "1G"):
        with pytest.raises(ValueError, match="pool_bytes"):
            ndshm.ray.init(pool_bytes=bad)  # refused before Ray starts


def test_a_driver_that_called_ray_init_itself_is_known_as_the_driver(ray, monkeypatch):
    """ray.init(runtime_env=ndshm.ray.runtime_env()) + ndshm.ray.setup(): the driver still takes
    results' hand-overs (its worker mode says it is the driver)."""
    import ndshm.ray
    monkeypatch.setattr(ndshm.ray, "_driver", False)
    monkeypatch.setattr(ndshm.ray, "_mode_known", [0])

    @ray.remote
    def is_driver() -> bool:
        import ndshm.ray
        return ndshm.ray._is_driver()

    assert ray.get(is_driver.remote(), timeout=60) is False
    assert ndshm.ray._is_driver() is True

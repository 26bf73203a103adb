"""ndshm.dask across "nodes" on one machine (issue 18, item 2 and 3): a scheduler, workers A and C
on one node, B on another, the client on a third.

Two layouts, the same tests:

- ``namespaces``: A and C run in one private mount namespace with their own tmpfs mounted at
  ``/dev/shm``, B in another (``unshare --mount`` + ``mount -t tmpfs``: needs root), as separate
  machines would be: a name in one tmpfs means nothing in the other.
- ``node-id``: the simulation without privileges: ``NDSHM_NODE_ID`` and ``NDSHM_DIR`` (a directory of
  its own) per node.

A→C goes by reference, A→B by value, an array pickled inside another object A→B by value (within
seconds, not a retry loop), ``replicate`` writes one copy per worker node and none on the client's,
and killing A does not take down C's task reading A's array.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest

import ndshm
from conftest import ROOT, child_env, skip_or_fail
from optional_deps import require

N = 1_000_000  # float32: 4 MB
TESTS = os.path.dirname(os.path.abspath(__file__))


def _namespaces_possible() -> "str | None":
    """None if this process may unshare a mount namespace and mount a tmpfs, else why not."""
    if os.geteuid() != 0:
        return "separate mount namespaces with their own tmpfs need root"
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs tmpfs /dev/shm && touch /dev/shm/ndshm-probe"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"unshare --mount + mount -t tmpfs failed: {probe.stderr.strip()}"
    return None


def _worker_cmd(address: str, name: str) -> list:
    return [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1", "--no-nanny",
            "--no-dashboard", "--name", name, "--preload", "ndshm.dask"]


def _start_node(layout: str, address: str, names: list, tmp_path) -> subprocess.Popen:
    """Start the workers ``names`` of one node (one process group)."""
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([TESTS, str(ROOT / "tests"), env["PYTHONPATH"]])
    env.pop("NDSHM_DIR", None)
    env.pop("NDSHM_NODE_ID", None)
    if layout == "node-id":
        seg_dir = tmp_path / f"shm-{names[0]}"
        seg_dir.mkdir()
        env.update(NDSHM_NODE_ID=f"simulated-node-{names[0]}", NDSHM_DIR=str(seg_dir))
    script = " & ".join(shlex.join(_worker_cmd(address, n)) for n in names) + " & wait"
    if layout == "namespaces":
        script = "mount -t tmpfs -o size=256m tmpfs /dev/shm && " + script
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    else:
        cmd = ["sh", "-c", script]
    return subprocess.Popen(cmd, env=env, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


@pytest.fixture(scope="module", params=["namespaces", "node-id"])
def nodes(request, tmp_path_factory):
    require("distributed", "Dask multi-node test")
    layout = request.param
    if layout == "namespaces":
        why = _namespaces_possible()
        if why:
            skip_or_fail(why)
    import dask
    import ndshm.dask  # noqa: F401  (the client's handshake and serializers)
    from distributed import Client, LocalCluster
    tmp = tmp_path_factory.mktemp(f"nodes-{layout}")
    # the Active Memory Manager is off here: which replica it drops is tested in test_dask_amm.py
    with dask.config.set({"distributed.scheduler.active-memory-manager.start": False}):
        cl = LocalCluster(n_workers=0, processes=True, dashboard_address=None, worker_dashboard_address=None)
    client = Client(cl)
    groups = [_start_node(layout, cl.scheduler_address, ["A", "C"], tmp),
              _start_node(layout, cl.scheduler_address, ["B"], tmp)]
    try:
        client.wait_for_workers(3, timeout=60)
        by_name = {w["name"]: a for a, w in client.scheduler_info()["workers"].items()}
        yield client, by_name, layout
    finally:
        client.close()
        cl.close()
        for g in groups:
            stop_group(g)


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """End the process group ``proc`` leads (started with start_new_session): SIGTERM, and SIGKILL
    for whatever is left of it after ``grace`` seconds (the shell may exit before its children)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        proc.poll()
        time.sleep(0.1)
    else:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _make(n: int, value: float) -> np.ndarray:
    import ndshm.dask
    out = ndshm.dask.empty((n,), np.float32)
    out[...] = value
    return out


def _make_wrapped(n: int, value: float) -> types.SimpleNamespace:
    return types.SimpleNamespace(x=_make(n, value), note="wrapped")


def _where(x: np.ndarray) -> dict:
    try:
        seg = ndshm.segment_of(x)
    except ValueError:
        seg = None
    return {"type": type(x).__name__, "segment": seg.name if seg else None,
            "file": list(os.stat(seg.path)[1:3]) if seg and seg.path and os.path.exists(seg.path) else None,
            "sum": float(x.sum(dtype=np.float64)), "pid": os.getpid()}


def _where_wrapped(ns: types.SimpleNamespace) -> dict:
    return _where(ns.x)


def _slow_sum(x: np.ndarray, seconds: float) -> float:
    time.sleep(seconds)
    return float(x.sum(dtype=np.float64))


def _managed(dask_worker, key):
    ts = dask_worker.state.tasks.get(key)
    return ts.nbytes if ts is not None and ts.state == "memory" else None


def _replica_file(name: str):
    seg_dir = ndshm._segment.default_dir()
    path = os.path.join(seg_dir, "ndshm." + name)
    return list(os.stat(path)[1:3]) if os.path.exists(path) else None


def test_by_reference_on_a_node_by_value_across(nodes):
    client, w, _ = nodes
    x = client.submit(_make, N, 2.0, workers=[w["A"]], pure=False)
    home = client.submit(_where, x, workers=[w["A"]], pure=False).result(timeout=30)
    on_c = client.submit(_where, x, workers=[w["C"]], pure=False).result(timeout=30)
    on_b = client.submit(_where, x, workers=[w["B"]], pure=False).result(timeout=30)
    assert on_c["type"] == "SharedArray" and on_c["segment"] == home["segment"] and on_c["file"] == home["file"]
    assert on_b["type"] == "ndarray" and on_b["segment"] is None
    assert home["sum"] == on_c["sum"] == on_b["sum"] == 2.0 * N
    # the client is on a third node: it gets the data
    back = x.result(timeout=30)
    assert type(back) is np.ndarray and float(back.sum(dtype=np.float64)) == 2.0 * N


def test_an_array_wrapped_in_an_object_travels_by_value_across_nodes(nodes):
    client, w, _ = nodes
    ns = client.submit(_make_wrapped, N, 3.0, workers=[w["A"]], pure=False)
    # (C first: once B holds a copy, C may be sent B's, by value: on one IP Dask does not prefer A)
    on_c = client.submit(_where_wrapped, ns, workers=[w["C"]], pure=False).result(timeout=20)
    assert on_c["type"] == "SharedArray" and on_c["sum"] == 3.0 * N  # by reference on A's node
    start = time.monotonic()
    on_b = client.submit(_where_wrapped, ns, workers=[w["B"]], pure=False).result(timeout=20)
    assert time.monotonic() - start < 10
    assert on_b["type"] == "ndarray" and on_b["sum"] == 3.0 * N
    back = ns.result(timeout=20)  # and to the client (a third node) by value
    assert type(back.x) is np.ndarray and back.note == "wrapped"


def test_replicate_one_copy_per_worker_node(nodes):
    client, w, _ = nodes
    data = np.arange(100_000, dtype=np.float64)
    rep = ndshm.replicate(data, client)
    try:
        assert rep.nodes == 2  # A and C's node, B's node; not the client's (no worker runs there)
        assert not ndshm.exists(rep.name)
        files = client.run(_replica_file, rep.name)
        assert files[w["A"]] is not None and files[w["A"]] == files[w["C"]]  # one copy, shared by A and C
        assert files[w["B"]] is not None
        sums = client.run(lambda r: float(r.array().sum()), rep)
        assert set(sums.values()) == {float(data.sum())}
    finally:
        rep.release()
    assert set(client.run(_replica_file, rep.name).values()) == {None}
    # asked for, the client's node gets a copy too
    rep = ndshm.replicate(data, client, include_client=True)
    try:
        assert rep.nodes == 3 and ndshm.exists(rep.name)
    finally:
        rep.release()
    assert not ndshm.exists(rep.name)
    with pytest.raises(TypeError, match="include_client"):
        ndshm.replicate(data, client, include_client="yes")


def test_a_killed_owners_worker_does_not_take_down_a_task_on_its_node(nodes):
    """Last in this module: A is killed."""
    client, w, _ = nodes
    x = client.submit(_make, N, 4.0, workers=[w["A"]], pure=False)
    seen = client.submit(_where, x, workers=[w["C"]], pure=False).result(timeout=30)
    assert seen["type"] == "SharedArray"
    slow = client.submit(_slow_sum, x, 2.0, workers=[w["C"]], pure=False)
    deadline = time.monotonic() + 20
    while not client.processing(workers=[w["C"]])[w["C"]] and time.monotonic() < deadline:
        time.sleep(0.05)
    a_pid = client.run(os.getpid, workers=[w["A"]])[w["A"]]
    os.kill(a_pid, signal.SIGKILL)
    assert slow.result(timeout=30) == 4.0 * N
    # C still holds x, mapped from the segment whose name still lives on the node, and now counts it
    again = client.submit(_where, x, workers=[w["C"]], pure=False).result(timeout=30)
    assert again["type"] == "SharedArray" and again["segment"] == seen["segment"] and again["file"] == seen["file"]
    deadline = time.monotonic() + 5
    while client.run(_managed, key=x.key, workers=[w["C"]])[w["C"]] != N * 4 + 100:
        assert time.monotonic() < deadline, "C did not take over the accounting of A's array"
        time.sleep(0.1)

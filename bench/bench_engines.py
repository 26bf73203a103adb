"""ndshm inside the engines people outgrow a process pool with, against each engine's own way.

1. MPI: ``ndshm.mpi.allocate_shared`` (with and without ``populate=True``) against
   ``MPI.Win.Allocate_shared`` on the node communicator, 2 ranks under ``mpirun``, a 400 MB float32
   array (64 MiB with --quick, 4 MiB with --smoke). Each iteration: allocate + fill (each rank
   writes its half), every rank reads the whole array (the first read maps the pages the other
   rank wrote; "read again" is the steady state of an attached array), free. Every phase runs
   from a node barrier to a node barrier (the slowest rank's time). One implementation per mpirun
   job, the jobs alternating; "cold" is a job's first iteration (fresh processes, nothing mapped),
   "steady" the median of its later ones. The ranks' code is bench/mpi_ranks.py.

2. Dask: a ``LocalCluster(processes=True, n_workers=2, threads_per_worker=1)`` with ``ndshm.dask``
   installed; a 400 MB float32 array (40 MB with --quick, 4 MB with --smoke) made by a task on
   worker A and consumed by a task on worker B (the consumer's submit-to-result time, the input
   made afresh, untimed, before each repeat): a NumPy array (stock Dask, by value over loopback
   TCP) against an ndshm array (``ndshm.dask.empty``, by reference). Then ``client.scatter`` of
   the array: stock (default ``hash=True``, and ``hash=False``) against ``ndshm.dask.scatter`` of
   an array already in shared memory, and of a NumPy array (its copy into shared memory counted).
   "copies in RAM" counts the distinct buffers holding the data after the transfer.
3. Ray: ``ray.init(num_cpus=2)`` through ``ndshm.ray.init``; a task makes the array (fills it),
   another task consumes it (sums it all): returning NumPy (a copy into the object store) against
   returning ``ndshm.ray.empty`` (by reference); then repeated consumer tasks on one finished
   result (the steady state: a warm plasma read against a cached ndshm mapping).

Each engine is one section: a function ``(res, mode)`` that emits its table and records its figures
under ``res.data[<engine>]``, listed in ``SECTIONS``.

    python bench/bench_engines.py [--quick | --smoke] [--json PATH]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Callable, Dict, List, Optional, Tuple

import _common as C
from _common import MiB

# ---------------------------------------------------------------- 1. MPI

MPI_IMPLS = {"ndshm": "ndshm", "ndshm-populate": "ndshm populate=True", "win": "MPI.Win.Allocate_shared"}
MPI_PHASES = ["allocate + fill", "first read", "read again", "free", "whole cycle"]
MPI_SIZES = {"full": (400 * 10**6, 3, 4, 3), "quick": (64 * MiB, 2, 3, 2), "smoke": (4 * MiB, 1, 2, 1)}
MPI_RANKS = 2


def mpirun_argv(n: int) -> List[str]:
    """``mpirun -n N`` with the flags Open MPI needs as root and on more ranks than cores; raises
    LookupError naming what is missing."""
    if C.optional_import("mpi4py") is None:
        raise LookupError("mpi4py is not installed (pip install 'ndshm[mpi]')")
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        raise LookupError("mpirun is not installed (apt-get install -y openmpi-bin libopenmpi-dev)")
    version = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=30).stdout
    argv = [mpirun, "-n", str(n)]
    if "Open MPI" in version or "OpenRTE" in version:
        argv += ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return argv


def _mpi_job(argv: List[str], impl: str, nbytes: int, iterations: int, reads: int) -> Dict[str, Any]:
    """One mpirun job of bench/mpi_ranks.py; its rank 0's JSON."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(C.ROOT / "pybind"), env.get("PYTHONPATH")) if x)
    with tempfile.TemporaryDirectory(prefix="ndshm-bench-mpi-") as tmp:
        out = os.path.join(tmp, "rank0.json")
        cmd = argv + [sys.executable, "-m", "mpi4py", str(C.BENCH_DIR / "mpi_ranks.py"), impl, str(nbytes),
                      str(iterations), str(reads), out]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        if proc.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(f"mpirun {impl} exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
        with open(out) as f:
            return json.load(f)


def mpi_allocate(res: C.Results, mode: str) -> None:
    nbytes, jobs, iterations, reads = MPI_SIZES[mode]
    size = f"{nbytes // 10**6} MB" if nbytes % 10**6 == 0 else C.human_bytes(nbytes)
    title = (f"MPI: one {size} float32 array per node, {MPI_RANKS} ranks "
             f"(target: ndshm within noise of MPI.Win.Allocate_shared, or faster)")
    try:
        argv = mpirun_argv(MPI_RANKS)
    except LookupError as e:
        res.data["mpi"] = {"missing": str(e)}
        res.emit(C.table(["MPI", "status"], [["ndshm.mpi.allocate_shared", f"not measured: {e}"]], title=title))
        return
    runs: Dict[str, List[Dict[str, Any]]] = {k: [] for k in MPI_IMPLS}
    for j in range(jobs):
        for impl in MPI_IMPLS:  # alternating, so drifting machine load hits every implementation alike
            C.progress(f"bench_engines: mpi job {j + 1}/{jobs} {impl}")
            runs[impl].append(_mpi_job(argv, impl, nbytes, iterations, reads))
    figures: Dict[str, Dict[str, Dict[str, float]]] = {}
    for impl, got in runs.items():
        per_phase: Dict[str, Dict[str, float]] = {}
        for phase in MPI_PHASES:
            if phase == "whole cycle":
                series = [[sum(r["s"][p][i] for p in MPI_PHASES[:-1] if p != "read again")
                           for i in range(iterations)] for r in got]
            else:
                series = [r["s"][phase] for r in got]
            per_phase[phase] = {"cold": C.median(s[0] for s in series),
                                "steady": C.median(x for s in series for x in s[1:])}
        figures[impl] = per_phase
    rows = []
    for phase in MPI_PHASES:
        for when in ("cold", "steady"):
            nd, pop, win = (figures[k][phase][when] for k in ("ndshm", "ndshm-populate", "win"))
            rows.append([f"{phase}, {when}", nd * 1e3, pop * 1e3, win * 1e3, C.ratio(nd, win), C.ratio(pop, win)])
    first = runs["win"][0]
    res.data["mpi"] = {"bytes": nbytes, "ranks": MPI_RANKS, "jobs": jobs, "iterations": iterations,
                       "reads": reads, "s": figures, "library": first.get("library"),
                       "runs": {k: [r["s"] for r in v] for k, v in runs.items()},
                       "backing": {k: v[0]["backing"] for k, v in runs.items()}}
    backing = "; ".join(f"{MPI_IMPLS[k]}: {v[0]['backing']}" for k, v in runs.items())
    note = (f"Times in ms, each the slowest rank's (barrier to barrier); ratios are time / MPI.Win's (below 1 is "
            f"faster). 'whole cycle' = allocate + fill + first read + free. {jobs} job(s) of {iterations} "
            f"iterations per implementation. MPI: {first.get('library')}. Memory behind each: {backing}. "
            "ndshm reserves the whole segment when the leader creates it (posix_fallocate: a full /dev/shm is a "
            "NoSpaceError on every rank), where MPI.Win only sizes its file and the ranks' first writes allocate "
            "the pages in parallel (asked for more than /dev/shm holds, Open MPI 4.1 warns, raises MPI_ERR_INTERN "
            "on the leader and leaves the other ranks waiting); that reservation is the allocate + fill gap. "
            "populate=True also maps every page on every rank up front, so no first read faults.")
    res.emit(C.table(["MPI, per node", "ndshm ms", "ndshm populate=True ms", "MPI.Win ms", "ndshm / Win",
                      "populate / Win"], rows, title=title, note=note))


# ---------------------------------------------------------------- 2. Dask

ENGINE_SIZES = {"full": (400 * 10**6, 5), "quick": (40 * 10**6, 5), "smoke": (4 * 10**6, 2)}


def _size_label(nbytes: int) -> str:
    return f"{nbytes // 10**6} MB" if nbytes % 10**6 == 0 else C.human_bytes(nbytes)


def _dask_make_numpy(n: int) -> Any:
    import numpy as np
    return np.full(n, 1.0, np.float32)


def _dask_make_ndshm(n: int) -> Any:
    import numpy as np
    import ndshm.dask
    from ndshm._segment import default_dir
    out = ndshm.dask.empty((n,), np.float32, dir=default_dir())  # a dir: a node-owned segment, not the pool
    out[...] = 1.0
    return out


def _dask_make_pool(n: int) -> Any:
    """A block of the node pool (install(pool_bytes=...)), uninitialised as np.full's memory is, filled."""
    import numpy as np
    import ndshm.dask
    pool = ndshm.dask.node_pool()
    assert pool is not None, "the worker has no node pool"
    out = pool.empty((n,), np.float32)
    out[...] = 1.0
    return out


def _pool_bytes(nbytes: int) -> int:
    """The node pool of the Dask and Ray sections: room for two arrays in flight."""
    return 2 * nbytes + 64 * MiB


def _dask_where(x: Any, read: bool = True) -> Dict[str, Any]:
    """The consumer: it reads the whole array, as a real task would (a new mapping's page faults are
    in the time; ``read=False`` touches one element, for the hand-off alone), and says how long the
    read took and whether its data lies in an ndshm segment (no second copy)."""
    import time

    import ndshm
    from ndshm import pool as P
    t = time.perf_counter()
    total = float(x.sum(dtype="float64")) if read else float(x[0]) * x.size
    took = time.perf_counter() - t
    if P.reference_args(x, send=False) is not None:  # a view of a pool block: the producer's memory
        return {"in_segment": True, "in_pool": True, "sum": total, "read_s": took}
    try:
        seg = ndshm.segment_of(x)
    except ValueError:
        return {"in_segment": False, "sum": total, "read_s": took}
    addr = x.__array_interface__["data"][0]
    return {"in_segment": seg.address <= addr and addr + x.nbytes <= seg.address + seg.nbytes, "sum": total,
            "read_s": took}


def _dask_managed(dask_worker: Any) -> int:
    from dask.sizeof import sizeof
    return int(sum(sizeof(v) for v in dask_worker.data.values()))


def dask_transfer(res: C.Results, mode: str) -> None:
    nbytes, repeats = ENGINE_SIZES[mode]
    title = (f"Dask: a {_size_label(nbytes)} float32 array between two worker processes "
             "(targets: worker->worker >= 10x faster than stock NumPy with one copy in RAM; scatter >= 50x)")
    if C.optional_import("distributed") is None:
        res.data["dask"] = {"missing": "distributed is not installed (pip install 'ndshm[dask]')"}
        res.emit(C.table(["Dask", "status"], [["ndshm.dask", "not measured: distributed is not installed"]],
                         title=title))
        return
    import time

    import numpy as np

    import ndshm.dask
    from distributed import Client, LocalCluster, wait
    n = nbytes // 4
    cluster = LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None,
                           worker_dashboard_address=None, memory_limit=0)
    client = Client(cluster)
    try:
        ndshm.dask.install(client, pool_bytes=_pool_bytes(nbytes))
        wa, wb = sorted(client.scheduler_info()["workers"])
        makers = {"numpy": _dask_make_numpy, "ndshm": _dask_make_ndshm, "pool": _dask_make_pool}
        cases = [(impl, read) for read in (True, False) for impl in makers]
        transfer: Dict[Tuple[str, bool], List[float]] = {c: [] for c in cases}
        reading: Dict[Tuple[str, bool], List[float]] = {c: [] for c in cases}
        got: Dict[str, Dict[str, Any]] = {}
        managed: Dict[str, int] = {}
        for r in range(repeats + 1):  # the first round warms both paths up (connections, imports)
            for impl, read in cases:
                C.progress(f"bench_engines: dask worker->worker {impl} {'read' if read else 'hand-off'} {r}/{repeats}")
                src = client.submit(makers[impl], n, workers=[wa], pure=False)
                wait(src)
                t = time.perf_counter()
                out = client.submit(_dask_where, src, read, workers=[wb], pure=False).result()
                dt = time.perf_counter() - t
                if r:
                    transfer[impl, read].append(dt)
                    reading[impl, read].append(out["read_s"])
                assert out["sum"] == float(n), (impl, out)
                assert out.get("in_pool", False) == (impl == "pool"), (impl, out)  # never a silent fallback
                got[impl] = out
                if r == repeats and read:
                    managed[impl] = sum(client.run(_dask_managed).values())
                del src
                time.sleep(0.05)
        copies = {k: 1 if got[k]["in_segment"] else 2 for k in makers}
        # scatter
        data = np.full(n, 2.0, np.float32)
        shared = ndshm.dask.share(data, owner="creator")
        scatters: Dict[str, Callable[[], Any]] = {
            "stock scatter (hash=True)": lambda: client.scatter(data, workers=[wa]),
            "stock scatter (hash=False)": lambda: client.scatter(data, workers=[wa], hash=False),
            "ndshm.dask.scatter, array in shared memory": lambda: ndshm.dask.scatter(client, shared, workers=[wa]),
            "ndshm.dask.scatter, NumPy array (copy in)": lambda: ndshm.dask.scatter(client, data, workers=[wa]),
        }
        sc: Dict[str, List[float]] = {k: [] for k in scatters}
        for r in range(repeats + 1):
            for name, fn in scatters.items():
                C.progress(f"bench_engines: dask {name} {r}/{repeats}")
                t = time.perf_counter()
                fut = fn()
                wait(fut)
                dt = time.perf_counter() - t
                if r:
                    sc[name].append(dt)
                del fut
                time.sleep(0.05)
        figures = {"worker_to_worker_s": {k: C.median(transfer[k, True]) for k in makers},
                   "worker_to_worker_read_s": {k: C.median(reading[k, True]) for k in makers},
                   "handoff_s": {k: C.median(transfer[k, False]) for k in makers},
                   "copies_in_ram": copies, "dask_managed_bytes": managed,
                   "scatter_s": {k: C.median(v) for k, v in sc.items()}}
    finally:
        client.close()
        cluster.close()
    w2w, rd, ho = figures["worker_to_worker_s"], figures["worker_to_worker_read_s"], figures["handoff_s"]
    stock_sc = figures["scatter_s"]["stock scatter (hash=True)"]
    rows = [["worker A -> worker B reads it all, stock NumPy", w2w["numpy"] * 1e3, rd["numpy"] * 1e3, copies["numpy"],
             C.human_bytes(managed["numpy"]), "1.00x"],
            ["worker A -> worker B reads it all, ndshm.dask", w2w["ndshm"] * 1e3, rd["ndshm"] * 1e3, copies["ndshm"],
             C.human_bytes(managed["ndshm"]), C.ratio(w2w["numpy"], w2w["ndshm"])],
            ["worker A -> worker B reads it all, ndshm.dask node pool", w2w["pool"] * 1e3, rd["pool"] * 1e3,
             copies["pool"], C.human_bytes(managed["pool"]), C.ratio(w2w["numpy"], w2w["pool"])],
            ["hand-off alone (reads one element), stock NumPy", ho["numpy"] * 1e3, "n/a", copies["numpy"], "n/a", "1.00x"],
            ["hand-off alone (reads one element), ndshm.dask", ho["ndshm"] * 1e3, "n/a", copies["ndshm"], "n/a",
             C.ratio(ho["numpy"], ho["ndshm"])],
            ["hand-off alone (reads one element), ndshm.dask node pool", ho["pool"] * 1e3, "n/a", copies["pool"], "n/a",
             C.ratio(ho["numpy"], ho["pool"])]]
    for name, s in figures["scatter_s"].items():
        rows.append([name, s * 1e3, "n/a", "n/a", "n/a", C.ratio(stock_sc, s)])
    res.data["dask"] = {"bytes": nbytes, "repeats": repeats, **figures,
                        "speedup_worker_to_worker": w2w["numpy"] / w2w["ndshm"],
                        "speedup_handoff": ho["numpy"] / ho["ndshm"],
                        "speedup_worker_to_worker_pool": w2w["numpy"] / w2w["pool"],
                        "speedup_handoff_pool": ho["numpy"] / ho["pool"],
                        "pool_bytes": _pool_bytes(nbytes),
                        "speedup_scatter": stock_sc / figures["scatter_s"]["ndshm.dask.scatter, array in shared memory"]}
    note = (f"Median of {repeats} (after a warm-up round). 'speed-up' = stock time / this row's (the scatter rows "
            "against stock scatter with its default hash=True). worker->worker times are the consumer task's "
            "submit-to-result (scheduling included, the same for both). 'reads it all': the consumer sums the whole "
            "array (float64 accumulator; 'of which reading' is that sum, timed inside the task, including the page "
            "faults of the receiver's new mapping), which bounds the speed-up; 'hand-off alone': it reads one "
            "element. 'copies in RAM': 2 when "
            "the consumer holds its own buffer, 1 when its data pointer lies in the producer's segment. 'Dask "
            "managed' is dask.sizeof summed over both workers' data after the transfer (ndshm counts the "
            "bytes only where they are owned). 'node pool': ndshm.dask.install(client, pool_bytes="
            f"{C.human_bytes(_pool_bytes(nbytes))}) made a pre-faulted ndshm.Pool in the client that both workers map "
            "once; the producer carves the array from it (uninitialised, as np.full's memory) and fills it; the "
            "consumer pins the block (no page fault: the pool's pages were faulted once, by the client).")
    res.emit(C.table(["Dask", "ms", "of which reading, ms", "copies in RAM", "Dask managed", "speed-up"], rows,
                     title=title, note=note))


# ---------------------------------------------------------------- 3. Ray

def ray_tasks(res: C.Results, mode: str) -> None:
    nbytes, repeats = ENGINE_SIZES[mode]
    title = (f"Ray: a task makes a {_size_label(nbytes)} float32 array, other tasks consume it (targets: "
             ">= 1.5x faster than returning NumPy; repeated consumers within 1.3x of a warm plasma read)")
    ray = C.optional_import("ray")
    if ray is None:
        res.data["ray"] = {"missing": "ray is not installed (pip install 'ndshm[ray]')"}
        res.emit(C.table(["Ray", "status"], [["ndshm.ray", "not measured: ray is not installed"]], title=title))
        return
    import time

    import numpy as np

    import ndshm.ray
    n = nbytes // 4
    # address="local": a Ray instance of its own, never one another user of the machine started
    ndshm.ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                   object_store_memory=max(4 * nbytes + (256 << 20), 512 << 20), pool_bytes=_pool_bytes(nbytes))
    try:
        @ray.remote
        def make_numpy(k: int) -> Any:
            return np.full(k, 1.0, np.float32)

        @ray.remote
        def make_ndshm(k: int) -> Any:
            import ndshm.ray
            from ndshm._segment import default_dir
            out = ndshm.ray.empty((k,), np.float32, dir=default_dir())  # a dir: a segment, not the node pool
            out[...] = 1.0
            return out

        @ray.remote
        def make_pool(k: int) -> Any:
            import ndshm.ray
            pool = ndshm.ray.node_pool()
            assert pool is not None, "the worker has no node pool"
            out = pool.empty((k,), np.float32)  # uninitialised, as np.full's memory
            out[...] = 1.0
            return out

        @ray.remote
        def make_pool_zeroed(k: int) -> Any:
            import ndshm.ray
            out = ndshm.ray.empty((k,), np.float32)  # the node pool's block, zeroed
            assert ndshm.ray.node_pool() is not None, "the worker has no node pool"
            out[...] = 1.0
            return out

        @ray.remote
        def consume(x: Any) -> float:
            return float(x.sum(dtype=np.float64))

        makers = {"numpy": make_numpy, "ndshm": make_ndshm, "pool": make_pool, "pool zeroed": make_pool_zeroed}
        chain: Dict[str, List[float]] = {k: [] for k in makers}
        again: Dict[str, List[float]] = {k: [] for k in makers}
        for r in range(repeats + 1):
            for impl, make in makers.items():
                C.progress(f"bench_engines: ray produce+consume {impl} {r}/{repeats}")
                t = time.perf_counter()
                ref = make.remote(n)
                total = ray.get(consume.remote(ref))
                dt = time.perf_counter() - t
                assert total == float(n), (impl, total)
                if r:
                    chain[impl].append(dt)
                # repeated consumers of the same finished result: the steady state
                ray.get([consume.remote(ref) for _ in range(2)])
                t = time.perf_counter()
                for _ in range(4):
                    ray.get(consume.remote(ref))
                if r:
                    again[impl].append((time.perf_counter() - t) / 4)
                ray.get(ref)  # untimed: the driver takes the hand-over, so dropping it frees the segment
                del ref
                time.sleep(0.05)
        figures: Dict[str, Any] = {"produce_consume_s": {k: C.median(v) for k, v in chain.items()},
                                   "repeat_consumer_s": {k: C.median(v) for k, v in again.items()},
                                   "produce_consume_runs_s": chain}
    finally:
        ray.shutdown()
    pc, rc = figures["produce_consume_s"], figures["repeat_consumer_s"]
    # each repeat ran every maker in turn: its NumPy time over its pool time is that repeat's speed-up
    per_run = {k: [a / b for a, b in zip(chain["numpy"], chain[k])] for k in ("ndshm", "pool", "pool zeroed")}
    rows = [["task returns NumPy -> consumer task", pc["numpy"] * 1e3, "1.00x", "1.00x"],
            ["task returns ndshm.ray.empty -> consumer task", pc["ndshm"] * 1e3, C.ratio(pc["numpy"], pc["ndshm"]),
             f"{min(per_run['ndshm']):.2f}x"],
            ["task returns a node pool block (node_pool().empty) -> consumer task", pc["pool"] * 1e3,
             C.ratio(pc["numpy"], pc["pool"]), f"{min(per_run['pool']):.2f}x"],
            ["task returns ndshm.ray.empty from the node pool (zeroed) -> consumer task", pc["pool zeroed"] * 1e3,
             C.ratio(pc["numpy"], pc["pool zeroed"]), f"{min(per_run['pool zeroed']):.2f}x"],
            ["another consumer of the result, NumPy (warm plasma read)", rc["numpy"] * 1e3, "1.00x", "n/a"],
            ["another consumer of the result, ndshm (cached mapping)", rc["ndshm"] * 1e3,
             C.ratio(rc["numpy"], rc["ndshm"]), "n/a"],
            ["another consumer of the result, node pool block", rc["pool"] * 1e3,
             C.ratio(rc["numpy"], rc["pool"]), "n/a"]]
    res.data["ray"] = {"bytes": nbytes, "repeats": repeats, **figures, "pool_bytes": _pool_bytes(nbytes),
                       "speedup_produce_consume": pc["numpy"] / pc["ndshm"],
                       "speedup_produce_consume_pool": pc["numpy"] / pc["pool"],
                       "speedup_produce_consume_pool_zeroed": pc["numpy"] / pc["pool zeroed"],
                       "speedup_per_run": per_run,
                       "repeat_consumer_over_plasma": rc["ndshm"] / rc["numpy"],
                       "repeat_consumer_over_plasma_pool": rc["pool"] / rc["numpy"]}
    note = (f"Median of {repeats} (after a warm-up round), ms per task chain / per consumer task (which sums the "
            "whole array). 'speed-up' = the NumPy row's time / this row's. Producing fills fresh memory in both; "
            "returning NumPy copies it into the object store, ndshm hands the segment over (the driver takes it with "
            "an untimed ray.get after each round, so it is freed when the round ends). 'node pool': "
            f"ndshm.ray.init(pool_bytes={C.human_bytes(_pool_bytes(nbytes))}) made a pre-faulted ndshm.Pool in the "
            "driver that every worker maps once; the producer carves its result from it (no page fault), the "
            "consumers pin the block, the driver's get takes the hand-over. 'slowest repeat': the smallest of the "
            f"{repeats} per-repeat speed-ups (each repeat runs every row in turn).")
    res.emit(C.table(["Ray", "ms", "speed-up", "slowest repeat"], rows, title=title, note=note))


# ---------------------------------------------------------------- the benchmark

SECTIONS: List[Callable[[C.Results, str], None]] = [mpi_allocate, dask_transfer, ray_tasks]


def run(mode: str) -> C.Results:
    res = C.Results("engines", mode)
    for section in SECTIONS:
        C.guarded(res, section, mode)
    return res


def main(argv: Optional[List[str]] = None) -> int:
    return C.main(__doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())

"""The shared-memory pool (issue 21): shared arrays carved from a pre-faulted pool against their peers.

Sections, each against its peer in the same run (cases interleaved ABAB so the machine's load hits
them alike):
- ``small``: a 64-byte shared array (16 float32) created and freed: ``Pool.empty`` from a warm pool,
  against ``multiprocessing.shared_memory.SharedMemory(create=True, size=64)`` + close + unlink, a
  segment of its own (``ndshm.create(None, ...)`` + close) and ``np.empty`` (the private floor);
- ``fill``: a 4 MiB shared array created and filled (``Pool.full``) against ``np.full`` and a
  segment of its own (``ndshm.create(..., fill=1.0)``);
- ``results``: ``multiprocessing.Pool(2)`` (fork), 100 tasks each returning a 4 MiB float32 array,
  the parent sums each: pool arrays (the default pool, made by the parent before the workers),
  segments handed to the receiver (``owner="receiver"``, today's path) and plain NumPy (pickled);
  wall time after a warm-up round, and the parent's minor page faults per result (getrusage);
- ``soak``: mixed sizes (64 B .. 4 MiB, log-uniform) carved and freed at random for a while in one
  pool (``--soak-seconds``; 10 s quick, 45 s full): the pool's footprint (the highest end of a
  block ever carved) and its high-water mark of bytes in blocks, against the peak live bytes
  requested.

    python bench/bench_pool.py [--quick | --smoke] [--json PATH] [--soak-seconds S]

A 10-minute soak alone: ``python bench/bench_pool.py --soak-only --soak-seconds 600``.
"""

from __future__ import annotations

import gc
import math
import multiprocessing as mp
import multiprocessing.shared_memory as _stdshm
import random
import resource
import sys
import time
from typing import Any, Dict, List, Optional

import _common as C
from _common import MiB, np, ndshm

FORK = mp.get_context("fork")
TARGET_SMALL_US = 3.0
TARGET_FILL = 1.3
TARGET_VS_SEGMENT, TARGET_VS_NUMPY = 3.0, 10.0
TARGET_FOOTPRINT = 1.5
N = 1 << 20  # float32 elements of a 4 MiB array


# ---- small ------------------------------------------------------------------------------------

def small(res: C.Results, mode: str) -> None:
    pool = ndshm.Pool(16 * MiB)
    f4 = np.dtype(np.float32)

    def stdlib() -> None:
        s = _stdshm.SharedMemory(create=True, size=64)
        s.close()
        s.unlink()

    def segment() -> None:
        a = ndshm.create(None, (16,), f4)
        ndshm.segment_of(a).close()

    cases = {"ndshm Pool.empty + free": lambda: pool.empty(16, f4),
             "SharedMemory create + unlink": stdlib,
             "ndshm.create + close (a segment each)": segment,
             "np.empty (private floor)": lambda: np.empty(16, f4)}
    number = {"smoke": 20, "quick": 300, "full": 2000}[mode]
    repeats = {"smoke": 2, "quick": 7, "full": 15}[mode]
    for _ in range(number):  # warm: the pool's first carve of each record, the allocator's caches
        pool.empty(16, f4)
    # pool and np.empty are ~100x faster than the others: 20x the calls per batch for them
    s = C.interleaved({k: v for k, v in cases.items() if "Pool" in k or "np." in k}, repeats, number * 20)
    s.update(C.interleaved({k: v for k, v in cases.items() if "Pool" not in k and "np." not in k}, repeats, number))
    us = {k: v * 1e6 for k, v in s.items()}
    p = us["ndshm Pool.empty + free"]
    rows = [[k, v, C.ratio(v, p) if "Pool" not in k else C.NA] for k, v in us.items()]
    res.emit(C.table(["64 B shared array, create + free", "µs", "this ÷ pool"], rows,
                     title="Small shared arrays from a warm pool",
                     note=f"Target: the pool ≤ {TARGET_SMALL_US:g} µs (the stdlib peer in the same run for scale)."))
    res.data["small_us"] = us
    pool.close()


# ---- fill -------------------------------------------------------------------------------------

def fill(res: C.Results, mode: str) -> None:
    pool = ndshm.Pool(64 * MiB)
    f4 = np.dtype(np.float32)

    def segment() -> None:
        a = ndshm.create(None, (N,), f4, fill=1.0)
        ndshm.segment_of(a).close()

    cases = {"ndshm Pool.full": lambda: pool.full(N, 1.0, f4), "np.full": lambda: np.full(N, 1.0, f4),
             "ndshm.create(fill=1.0) + close": segment}
    number = {"smoke": 2, "quick": 20, "full": 50}[mode]
    repeats = {"smoke": 2, "quick": 7, "full": 15}[mode]
    s = C.interleaved(cases, repeats, number)
    us = {k: v * 1e6 for k, v in s.items()}
    ratio = us["ndshm Pool.full"] / us["np.full"]
    rows = [[k, v, C.ratio(v, us["np.full"])] for k, v in us.items()]
    res.emit(C.table(["4 MiB float32, create + fill", "µs", "this ÷ np.full"], rows,
                     title="A 4 MiB shared array created and filled",
                     note=f"Target: the pool ≤ {TARGET_FILL:g}x np.full: measured {ratio:.2f}x."))
    res.data["fill_us"] = us
    res.data["fill_over_np_full"] = ratio
    pool.close()


# ---- results ----------------------------------------------------------------------------------

def _task_pool(i: int) -> Any:
    return ndshm.pool.full(N, float(i), np.float32)


def _task_segment(i: int) -> Any:
    return ndshm.create(None, (N,), np.float32, fill=float(i), owner="receiver")


def _task_numpy(i: int) -> Any:
    return np.full(N, float(i), np.float32)


TASKS = {"ndshm pool (default pool)": _task_pool, "ndshm segment each (owner='receiver')": _task_segment,
         "NumPy (pickled)": _task_numpy}


def _minflt() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def results(res: C.Results, mode: str) -> None:
    ntasks = {"smoke": 6, "quick": 50, "full": 100}[mode]
    rounds = {"smoke": 1, "quick": 3, "full": 5}[mode]
    import os
    os.environ["NDSHM_POOL_BYTES"] = str(512 * MiB)  # room for every result in flight
    ndshm.default_pool()  # made (and pre-faulted) here, before the workers: they inherit it
    figs: Dict[str, Any] = {}
    with FORK.Pool(2) as workers:
        samples: Dict[str, List[float]] = {k: [] for k in TASKS}
        faults: Dict[str, List[float]] = {k: [] for k in TASKS}
        for r in range(rounds + 1):  # round 0 warms every path (workers' mappings, the parent's)
            for name, fn in TASKS.items():
                gc.collect()
                f0, t0 = _minflt(), time.perf_counter()
                total = 0.0
                for arr in workers.imap(fn, range(ntasks)):
                    total += float(arr.sum())
                    del arr
                dt = time.perf_counter() - t0
                df = _minflt() - f0
                assert total == sum(float(i) * N for i in range(ntasks)), (name, total)
                if r:
                    samples[name].append(dt)
                    faults[name].append(df / ntasks)
    for name in TASKS:
        figs[name] = {"ms": C.median(samples[name]) * 1e3, "faults_per_result": C.median(faults[name])}
    p = figs["ndshm pool (default pool)"]["ms"]
    rows = [[k, v["ms"], v["faults_per_result"], C.ratio(v["ms"], p) if "pool" not in k else C.NA]
            for k, v in figs.items()]
    vs_seg = figs["ndshm segment each (owner='receiver')"]["ms"] / p
    vs_np = figs["NumPy (pickled)"]["ms"] / p
    res.emit(C.table([f"Pool(2).imap, {ntasks} x 4 MiB results, the parent sums each", "ms",
                      "parent minor faults / result", "this ÷ pool"], rows,
                     title="Task results through multiprocessing.Pool",
                     note=(f"Targets: pool ≥ {TARGET_VS_SEGMENT:g}x faster than a segment each (measured "
                           f"{vs_seg:.2f}x), ≥ {TARGET_VS_NUMPY:g}x faster than NumPy (measured {vs_np:.2f}x), "
                           "< 1 parent minor fault per result. Median of the rounds after a warm-up round.")))
    res.data["results"] = figs
    res.data["results_pool_vs_segment"] = vs_seg
    res.data["results_pool_vs_numpy"] = vs_np
    res.data["results_pool_faults_per_result"] = figs["ndshm pool (default pool)"]["faults_per_result"]
    ndshm.default_pool().close()


# ---- soak -------------------------------------------------------------------------------------

def soak(res: C.Results, seconds: float) -> None:
    """Mixed sizes, freed at random, for ``seconds``: footprint and high-water mark vs peak live bytes."""
    rng = random.Random(21)
    live_target = 256 * MiB
    pool = ndshm.Pool(1024 * MiB, populate=False, max_blocks=65536)
    live: List[Any] = []
    live_bytes = peak = 0
    ops = 0
    t_end = time.perf_counter() + seconds
    lo, hi = math.log(64), math.log(4 * MiB)
    while time.perf_counter() < t_end:
        for _ in range(200):
            if live and (live_bytes > live_target or rng.random() < 0.5):
                a = live.pop(rng.randrange(len(live)))
                live_bytes -= a.nbytes
                del a
            else:
                n = int(math.exp(rng.uniform(lo, hi)))
                live.append(pool.empty(n, np.uint8))
                live_bytes += n
                peak = max(peak, live_bytes)
            ops += 1
    s = pool.stats()
    fig = {"seconds": seconds, "ops": ops, "peak_live_bytes": peak, "high_water": s.high_water,
           "footprint": s.high_end, "footprint_over_peak": s.high_end / peak, "high_water_over_peak": s.high_water / peak,
           "free_extents_at_end": s.free_extents, "live_blocks_at_end": s.live_blocks}
    res.emit(C.table(["soak figure", "value", "÷ peak live bytes"], [
        ["peak live bytes (requested)", C.human_bytes(peak), "1.000x"],
        ["high-water mark of bytes in blocks", C.human_bytes(s.high_water), f"{fig['high_water_over_peak']:.3f}x"],
        ["footprint (highest block end ever)", C.human_bytes(s.high_end), f"{fig['footprint_over_peak']:.3f}x"],
        ["free ranges at the end", s.free_extents, C.NA],
        ["carves and frees", ops, C.NA],
        ["seconds", seconds, C.NA]],
        title="Soak: mixed sizes 64 B .. 4 MiB (log-uniform), ~256 MiB live, one 1 GiB pool",
        note=f"Target: footprint within {TARGET_FOOTPRINT:g}x of the peak live bytes."))
    res.data["soak"] = fig
    del live
    pool.close()


def run(mode: str, soak_seconds: Optional[float] = None, soak_only: bool = False) -> C.Results:
    res = C.Results("pool", mode)
    secs = soak_seconds if soak_seconds is not None else {"smoke": 1.0, "quick": 10.0, "full": 45.0}[mode]
    if not soak_only:
        for section in (small, fill, results):
            C.progress(f"bench_pool: {section.__name__}")
            C.guarded(res, section, mode)
    C.progress(f"bench_pool: soak for {secs:g} s")
    soak(res, secs)
    return res


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    secs: Optional[float] = None
    only = "--soak-only" in args
    if only:
        args.remove("--soak-only")
    if "--soak-seconds" in args:
        i = args.index("--soak-seconds")
        secs = float(args[i + 1])
        del args[i:i + 2]
    a = C.parse_args(__doc__.splitlines()[0], args)
    res = run(a.mode, secs, only)
    res.write(a.json)
    C.progress("bench_pool: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())

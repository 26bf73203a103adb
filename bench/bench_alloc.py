"""Allocation cost: ndshm.empty/zeros against numpy.empty/zeros and pyfftw.empty_aligned.

For 64 B, 4 KiB, 1 MiB, 64 MiB and (full mode, memory allowing) 1 GiB: the cost of the call alone,
and for 1 MiB and up the cost of allocating *and* first-touching every page (what a real
program pays), with ndshm's ``hugepages=True, populate=True`` beside it. One run, interleaved
repeats, medians; ratios are peer time / ndshm time (above 1: ndshm is faster).

    python bench/bench_alloc.py [--quick | --smoke] [--json PATH]
"""

from __future__ import annotations

import gc
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import _common as C
from _common import GiB, KiB, MiB, np, ndshm

PAGE = 4096


def _touch(a: np.ndarray) -> None:
    a.view(np.uint8).reshape(-1)[::PAGE] = 1


def _cases(nbytes: int, fftw: Any) -> Dict[str, Dict[str, Callable[[], Any]]]:
    """operation -> {library: call}; float64 items (64 B = 8 of them)."""
    n = nbytes // 8
    f8 = np.float64
    ops: Dict[str, Dict[str, Callable[[], Any]]] = {
        "empty": {"ndshm": lambda: ndshm.empty(n, f8), "numpy": lambda: np.empty(n, f8)},
        "zeros": {"ndshm": lambda: ndshm.zeros(n, f8), "numpy": lambda: np.zeros(n, f8)},
    }
    if fftw is not None:
        ops["empty"]["pyfftw"] = lambda: fftw.empty_aligned(n, f8, n=64)
        ops["zeros"]["pyfftw"] = lambda: fftw.zeros_aligned(n, f8, n=64)
    if nbytes >= MiB:
        def touched(make: Callable[[], np.ndarray]) -> Callable[[], None]:
            return lambda: _touch(make())

        ops["zeros + first touch"] = {"ndshm": touched(lambda: ndshm.zeros(n, f8)),
                                      "numpy": touched(lambda: np.zeros(n, f8))}
        if fftw is not None:
            ops["zeros + first touch"]["pyfftw"] = touched(lambda: fftw.zeros_aligned(n, f8, n=64))
        ops["zeros + first touch, ndshm hugepages+populate"] = {
            "ndshm": touched(lambda: ndshm.zeros(n, f8, hugepages=True, populate=True)),
            "numpy": touched(lambda: np.zeros(n, f8))}
    return ops


def _batch_size(fn: Callable[[], Any], most: int) -> int:
    """How many calls of ``fn`` last about 20 ms (1 to ``most``), from one timed call after a warm-up."""
    fn()
    t = time.perf_counter()
    fn()
    one = time.perf_counter() - t
    return max(1, min(most, int(0.02 / one) if one > 0 else most))


def _repeated(fn: Callable[[], Any], k: int) -> Callable[[], None]:
    def batch() -> None:
        for _ in range(k):
            fn()
    return batch


def _plan(nbytes: int, mode: str) -> tuple:
    """(calls per timed batch, repeats) so each batch lasts milliseconds, not microseconds."""
    if mode == "smoke":
        return (50, 1) if nbytes <= MiB else (1, 1)
    rep = 5 if mode == "full" else 3
    if nbytes <= 4 * KiB:
        return (5000 if mode == "full" else 2000, rep)
    if nbytes <= MiB:
        return (200, rep)
    if nbytes <= 64 * MiB:
        return (3, rep)
    return (1, 3 if mode == "full" else 1)


def run(mode: str) -> C.Results:
    res = C.Results("alloc", mode)
    fftw = C.optional_import("pyfftw")
    sizes = [64, 4 * KiB] if mode == "smoke" else [64, 4 * KiB, MiB, 64 * MiB]
    if mode == "full":
        if C.available_memory() > 4 * GiB:
            sizes.append(GiB)
        else:
            C.progress("bench_alloc: skipping 1 GiB, less than 4 GiB of memory available")
    C.progress("bench_alloc: measuring the page-fault cost (ceiling)")
    pf = C.page_fault_us(4 * MiB if mode == "smoke" else 64 * MiB)
    res.data["page_fault_us"] = pf
    rows: List[List[Any]] = []
    figures: List[Dict[str, Any]] = []
    for nbytes in sizes:
        C.progress(f"bench_alloc: {C.human_bytes(nbytes)}")
        number, repeats = _plan(nbytes, mode)
        for op, libs in _cases(nbytes, fftw).items():
            # a touch of 64 MiB and up lasts milliseconds; bare calls may last microseconds at any
            # size (nothing touched), so each library's calls are batched to about 20 ms
            number_op = (1 if nbytes >= 64 * MiB else number) if "touch" in op else max(number, 100)
            gc.collect()
            batches = {lib: _batch_size(fn, number_op) for lib, fn in libs.items()}
            t = C.interleaved({lib: _repeated(fn, batches[lib]) for lib, fn in libs.items()}, repeats)
            us = {lib: t[lib] / batches[lib] * 1e6 for lib in libs}
            fig = {"bytes": nbytes, "op": op, "us": us, "calls": batches, "repeats": repeats}
            figures.append(fig)
            ceiling = (nbytes / PAGE * pf.get("anon_4k_us", float("nan")) / 1e3) if "touch" in op else None
            fig["fault_ceiling_ms"] = ceiling
            nd = us["ndshm"]
            rows.append([C.human_bytes(nbytes), op, nd, us["numpy"], us.get("pyfftw"),
                         C.ratio(us["numpy"], nd), C.ratio(us.get("pyfftw"), nd) if "pyfftw" in us else "not installed"
                         if fftw is None else C.NA, ceiling / 1e-3 if ceiling is not None else None])
    res.data["figures"] = figures
    res.emit(C.table(
        ["size", "operation", "ndshm µs", "numpy µs", "pyfftw µs", "numpy/ndshm", "pyfftw/ndshm",
         "4 KiB-fault bound µs"], rows, left=2,
        title="Allocation cost per call (median; float64; ratio = peer time / ndshm time, above 1 = ndshm faster)",
        note=(f"Page faults on this machine: {C.fmt(pf.get('anon_4k_us'))} µs per fresh anonymous 4 KiB page, "
              f"{C.fmt(pf.get('shm_new_4k_us'))} µs per new /dev/shm page, {C.fmt(pf.get('shm_remap_4k_us'))} µs per "
              "page of a second mapping. The bound column is pages × the anonymous fault cost (no huge pages); "
              "numpy itself asks for transparent huge pages on large arrays, so it can beat it.")))
    small = {f["op"]: f["us"] for f in figures if f["bytes"] == 64}
    overhead = {op: small[op]["ndshm"] - small[op]["numpy"] for op in ("empty", "zeros")}
    res.data["small_overhead_us"] = overhead
    res.emit(C.table(["64 B call", "ndshm µs", "numpy µs", "overhead µs", "target"],
                     [[op, small[op]["ndshm"], small[op]["numpy"], overhead[op],
                       "< 2 µs " + ("met" if overhead[op] < 2 else "MISSED")] for op in ("empty", "zeros")],
                     title="Small-array overhead of ndshm over numpy (CPython)"))
    return res


def main(argv: Optional[List[str]] = None) -> int:
    return C.main(__doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())

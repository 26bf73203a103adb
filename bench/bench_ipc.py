"""Moving arrays between processes: ndshm segments against multiprocessing.shared_memory, Pipe and Queue.

1. The classic table: 10 worker processes (fork) each write a 1000×1000 float32 array back to the
   parent, which then reads all of it (a checksum). Rows: nothing (10 workers that do nothing:
   the process-start baseline), ndshm, ndshm on a huge-page tmpfs (root only: a private mount for
   the run), shared_memory, Pipe, Queue. Wall time (median of 5, the
   rows interleaved), the parent's memory growth (private RssAnon and shared RssShmem from
   /proc/self/status, measured in a fresh forked coordinator per trial), excess over the
   baseline, ratios to ndshm.
2. Attach latency by name, in a spawned process: ndshm.attach vs SharedMemory(name) vs
   SharedArray.attach.
3. Pool(2).map over 100 slices of a 381 MiB float32 array, each task summing its slice: ndshm (pickled
   by reference) vs shared_memory attached per task or kept open per worker, SharedArray, and a
   fork-inherited global (the floor). 3b. Repeated attach + touch of one 400 MB segment in one process.
4. Creating and touching 1 GiB (256 MiB in quick mode): ndshm populate=True vs shared_memory, and (as
   root) ndshm in a private tmpfs mounted with huge=always for the run (``dir=``, what ``NDSHM_DIR`` or
   ``hugepages=True`` give users with such a mount; shared_memory cannot choose its directory).

    python bench/bench_ipc.py [--quick | --smoke] [--json PATH]
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import uuid
from multiprocessing import shared_memory
from typing import Any, Callable, Dict, List, Optional

import _common as C
from _common import GiB, MiB, np, ndshm

FORK = mp.get_context("fork")
SPAWN = mp.get_context("spawn")
F4 = np.float32


def _name(tag: str) -> str:
    return f"bench-{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def nd_create(name: Optional[str], shape: Any, dtype: Any, **kw: Any) -> np.ndarray:
    return ndshm.create(name, shape, dtype, **kw)


def nd_unlink(name: str) -> None:
    try:
        ndshm.unlink(name)
    except FileNotFoundError:
        pass


def nd_unlink_in(name: str, dir: Optional[str]) -> None:
    try:
        ndshm.unlink(name, dir=dir)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------- 1. the classic table

def _w_nothing(i: int) -> None:
    pass


def _w_ndshm(name: str, i: int, shape: tuple, dir: Optional[str] = None) -> None:
    out = ndshm.attach(name, dir=dir)
    out[i] = i + 1


def _w_shm(name: str, i: int, shape: tuple) -> None:
    shm = shared_memory.SharedMemory(name)
    out = np.ndarray(shape, F4, buffer=shm.buf)
    out[i] = i + 1
    del out
    shm.close()


def _w_pipe(conn: Any, i: int, shape: tuple) -> None:
    conn.send(np.full(shape[1:], i + 1, F4))
    conn.close()


def _w_queue(q: Any, i: int, shape: tuple) -> None:
    q.put((i, np.full(shape[1:], i + 1, F4)))


HUGE_ROW = "ndshm on a huge-page tmpfs"


def _start_join(ps: List[Any]) -> None:
    for p in ps:
        p.start()
    for p in ps:
        p.join()


def _classic_trial(row: str, nworkers: int, side: int, huge_dir: Optional[str] = None) -> Dict[str, float]:
    """One trial, run inside a freshly forked coordinator so the memory figures start clean."""
    shape = (nworkers, side, side)
    expect = float(side * side * nworkers * (nworkers + 1) / 2)
    m0 = C.memory_kib()
    t0 = time.perf_counter()
    total = expect
    keep: Any = None
    if row == "nothing":
        ps = [FORK.Process(target=_w_nothing, args=(i,)) for i in range(nworkers)]
        _start_join(ps)
    elif row in ("ndshm", HUGE_ROW):
        name = _name("classic")
        d = huge_dir if row == HUGE_ROW else None
        keep = out = nd_create(name, shape, F4, dir=d)
        ps = [FORK.Process(target=_w_ndshm, args=(name, i, shape, d)) for i in range(nworkers)]
        _start_join(ps)
        total = float(out.sum(dtype=np.float64))
    elif row == "shared_memory":
        shm = shared_memory.SharedMemory(create=True, size=int(np.prod(shape)) * 4)
        keep = out = np.ndarray(shape, F4, buffer=shm.buf)
        ps = [FORK.Process(target=_w_shm, args=(shm.name, i, shape)) for i in range(nworkers)]
        _start_join(ps)
        total = float(out.sum(dtype=np.float64))
    elif row == "Pipe":
        pipes = [FORK.Pipe(duplex=False) for _ in range(nworkers)]
        ps = [FORK.Process(target=_w_pipe, args=(w, i, shape)) for i, (r, w) in enumerate(pipes)]
        for p in ps:
            p.start()
        keep = [r.recv() for r, w in pipes]
        for p in ps:
            p.join()
        total = float(sum(a.sum(dtype=np.float64) for a in keep))
    elif row == "Queue":
        q = FORK.Queue()
        ps = [FORK.Process(target=_w_queue, args=(q, i, shape)) for i in range(nworkers)]
        for p in ps:
            p.start()
        keep = [q.get() for _ in range(nworkers)]
        for p in ps:
            p.join()
        total = float(sum(a.sum(dtype=np.float64) for _, a in keep))
    else:
        raise ValueError(row)
    wall = time.perf_counter() - t0
    m1 = C.memory_kib()
    if abs(total - expect) > 1e-6 * expect:
        raise RuntimeError(f"{row}: the parent read {total}, expected {expect}")
    if row in ("ndshm", HUGE_ROW):
        nd_unlink_in(name, d)
    elif row == "shared_memory":
        del out, keep
        shm.close()
        shm.unlink()
    return {"wall_s": wall, "anon_mib": (m1["RssAnon"] - m0["RssAnon"]) / 1024,
            "shmem_mib": (m1["RssShmem"] - m0["RssShmem"]) / 1024}


def _coordinate(conn: Any, row: str, nworkers: int, side: int, huge_dir: Optional[str]) -> None:
    try:
        conn.send(("ok", _classic_trial(row, nworkers, side, huge_dir)))
    except BaseException as e:  # report, never hang the parent
        conn.send(("error", C.error_cell(e)))
    conn.close()


def _run_trial(row: str, nworkers: int, side: int, huge_dir: Optional[str] = None) -> Dict[str, Any]:
    r, w = FORK.Pipe(duplex=False)
    p = FORK.Process(target=_coordinate, args=(w, row, nworkers, side, huge_dir))
    p.start()
    w.close()
    status, value = r.recv()
    p.join()
    if status != "ok":
        raise RuntimeError(value)
    return value


def classic(res: C.Results, mode: str) -> None:
    nworkers, side = (10, 1000) if mode != "smoke" else (3, 100)
    with huge_tmpfs(2 * nworkers * side * side * 4 + 64 * MiB) as (huge_dir, why):
        _classic(res, mode, nworkers, side, huge_dir, why)


def _classic(res: C.Results, mode: str, nworkers: int, side: int, huge_dir: Optional[str], why: Optional[str]) -> None:
    repeats = {"full": 5, "quick": 3, "smoke": 1}[mode]
    rows = ["nothing", "ndshm", HUGE_ROW, "shared_memory", "Pipe", "Queue"]
    missing = {}
    if not C.has("create"):
        missing["ndshm"] = missing[HUGE_ROW] = C.NOT_AVAILABLE + " (ndshm.create)"
    elif huge_dir is None:
        missing[HUGE_ROW] = f"not measured: {why}"
    samples: Dict[str, List[Dict[str, float]]] = {r: [] for r in rows}
    for rep in range(repeats):
        C.progress(f"bench_ipc: classic {nworkers}-process table, repeat {rep + 1}/{repeats}")
        for row in rows:
            if row in missing:
                continue
            try:
                samples[row].append(_run_trial(row, nworkers, side, huge_dir))
            except Exception as e:  # a feature half-landed: show it, keep going
                missing[row] = f"error: {e}"[:120]
    fig: Dict[str, Any] = {"workers": nworkers, "array": [side, side], "dtype": "float32", "repeats": repeats}
    med = {}
    for row in rows:
        if samples[row] and row not in missing:
            med[row] = {k: C.median(s[k] for s in samples[row]) for k in samples[row][0]}
    base = med.get("nothing", {}).get("wall_s")
    nd = med.get("ndshm")
    table_rows = []
    for row in rows:
        if row not in med:
            table_rows.append([row, missing.get(row, C.NA), C.NA, C.NA, C.NA, C.NA, C.NA, C.NA])
            continue
        m = med[row]
        excess = m["wall_s"] - base if base is not None else None
        m["excess_s"] = excess
        nd_excess = nd["wall_s"] - base if nd and base is not None else None
        table_rows.append([row, m["wall_s"] * 1e3, excess * 1e3 if excess is not None else None,
                           C.ratio(m["wall_s"], nd["wall_s"]) if nd else C.NA,
                           C.ratio(excess, nd_excess) if nd and row != "nothing" else C.NA,
                           m["anon_mib"], m["shmem_mib"],
                           C.ratio(m["anon_mib"] + 1, nd["anon_mib"] + 1) if nd and row != "nothing" else C.NA])
    fig["rows"] = med
    fig["missing"] = missing
    res.data["classic"] = fig
    res.emit(C.table(
        ["method", "wall ms", "excess over baseline ms", "time / ndshm", "excess / ndshm", "parent private MiB",
         "parent shm-mapped MiB", "(private+1) / ndshm"], table_rows,
        title=f"Classic table: {nworkers} processes (fork) each write a {side}×{side} float32 array back to the parent "
              f"(median of {repeats})",
        note="'nothing' starts and joins the same processes doing nothing. The parent reads every result (a "
             "checksum). Private = growth of RssAnon (copies the parent owns); shm-mapped = growth of RssShmem "
             "(pages of the shared segment the parent mapped, no extra memory system-wide). Ratios above 1: ndshm "
             "is better." + (f" '{HUGE_ROW}': the same ndshm code with dir={huge_dir}, a tmpfs this benchmark "
                             "mounted with huge=always for the run (NDSHM_DIR or dir= give users the same); the "
                             "targets use the /dev/shm row." if huge_dir else "")))


# ---------------------------------------------------------------- 2. attach latency

def _attach_loop(conn: Any, kind: str, name: str, n: int) -> None:
    """Runs in a spawned interpreter: attach by name and drop it, n times; median per call."""
    try:
        if kind.startswith("ndshm"):
            if kind == "ndshm" and hasattr(ndshm, "set_mapping_cache"):
                ndshm.set_mapping_cache(max_count=0)  # map anew on every call, as the others do

            def once() -> None:
                a = ndshm.attach(name)
                del a
        elif kind == "shared_memory":
            def once() -> None:
                s = shared_memory.SharedMemory(name)
                s.close()
        else:
            import SharedArray as sa

            def once() -> None:
                a = sa.attach("shm://" + name)
                del a
        once()
        times = []
        for _ in range(n):
            t = time.perf_counter()
            once()
            times.append(time.perf_counter() - t)
        conn.send(("ok", C.median(times), C.percentile(times, 99)))
    except BaseException as e:
        conn.send(("error", C.error_cell(e), None))
    conn.close()


KEPT_ATTACH = "ndshm (mapping kept: the default)"


def attach_latency(res: C.Results, mode: str) -> None:
    C.progress("bench_ipc: attach latency")
    n = {"full": 2000, "quick": 500, "smoke": 20}[mode]
    shape = (1000, 1000)
    sa = C.optional_import("SharedArray")
    made: Dict[str, Callable[[], None]] = {}
    names: Dict[str, Optional[str]] = {}
    status: Dict[str, str] = {}
    if C.has("create") and C.has("attach"):
        names["ndshm"] = nm = _name("attach")
        keep_nd = nd_create(nm, shape, F4)  # noqa: F841 - alive while the child attaches
        made["ndshm"] = lambda: nd_unlink(nm)
    else:
        status["ndshm"] = C.NOT_AVAILABLE + " (ndshm.create/attach)"
    shm = shared_memory.SharedMemory(create=True, size=4 * 10 ** 6)
    names["shared_memory"] = shm.name
    made["shared_memory"] = lambda: (shm.close(), shm.unlink())
    if sa is not None:
        names["SharedArray"] = sn = _name("sa")
        keep_sa = sa.create("shm://" + sn, shape, F4)  # noqa: F841
        made["SharedArray"] = lambda: sa.delete("shm://" + sn)
    else:
        status["SharedArray"] = "not installed (pip install SharedArray)"
    figures: Dict[str, Any] = {}
    try:
        kinds = ("ndshm", KEPT_ATTACH, "shared_memory", "SharedArray")
        if not hasattr(ndshm, "set_mapping_cache"):
            status[KEPT_ATTACH] = C.NOT_AVAILABLE + " (ndshm.set_mapping_cache)"
        for kind in kinds:
            if kind in status:
                continue
            r, w = SPAWN.Pipe(duplex=False)
            p = SPAWN.Process(target=_attach_loop, args=(w, kind, names["ndshm" if kind == KEPT_ATTACH else kind], n))
            p.start()
            w.close()
            st, p50, p99 = r.recv()
            p.join()
            if st == "ok":
                figures[kind] = {"p50_us": p50 * 1e6, "p99_us": p99 * 1e6}
            else:
                status[kind] = p50
    finally:
        for f in made.values():
            try:
                f()
            except Exception:
                pass
    nd = figures.get("ndshm", {}).get("p50_us")
    rows = []
    for kind in kinds:
        if kind in figures:
            rows.append([kind, figures[kind]["p50_us"], figures[kind]["p99_us"], C.ratio(figures[kind]["p50_us"], nd)])
        else:
            rows.append([kind, status.get(kind, C.NA), C.NA, C.NA])
    res.data["attach"] = {"array": list(shape), "dtype": "float32", "calls": n, "figures": figures, "missing": status}
    res.emit(C.table(["attach by name (then drop)", "p50 µs", "p99 µs", "p50 / ndshm"], rows,
                     title="Attach latency, 1000×1000 float32, in a spawned process (target for ndshm: < 30 µs)",
                     note="Each call maps the segment anew (the previous view was dropped; for ndshm the mapping "
                          f"cache is off), no page is touched. '{KEPT_ATTACH}': the default, which reuses the "
                          "mapping kept after the previous view died."))


# ---------------------------------------------------------------- 3. Pool.map by reference

def _first(x: np.ndarray) -> float:
    return float(x.flat[0])


def _sum(x: np.ndarray) -> float:
    return float(x.sum(dtype=np.float64))


def _shm_sum_per_task(job: tuple) -> float:
    """shared_memory attached for one task: open by name, view the row, sum, close."""
    name, n, i = job
    s = shared_memory.SharedMemory(name)
    try:
        a = np.ndarray((n,), F4, buffer=s.buf, offset=i * n * 4)
        total = float(a.sum(dtype=np.float64))
        del a
    finally:
        s.close()
    return total


_SHM_OPEN: Dict[str, Any] = {}


def _shm_sum_kept(job: tuple) -> float:
    """shared_memory kept open by the worker (opened once, reused by every later task)."""
    name, n, i = job
    s = _SHM_OPEN.get(name)
    if s is None:
        s = _SHM_OPEN[name] = shared_memory.SharedMemory(name)
    return float(np.ndarray((n,), F4, buffer=s.buf, offset=i * n * 4).sum(dtype=np.float64))


def _sa_sum(job: tuple) -> float:
    import SharedArray as sa
    name, i = job
    return float(sa.attach("shm://" + name)[i].sum(dtype=np.float64))


_FLOOR: Optional[np.ndarray] = None  # set before the floor's Pool forks: inherited, never pickled


def _floor_sum(i: int) -> float:
    assert _FLOOR is not None
    return float(_FLOOR[i].sum(dtype=np.float64))


POOL_ND = "ndshm (slices pickled by reference)"
POOL_SHM_TASK = "shared_memory attached per task"
POOL_SHM_KEPT = "shared_memory kept open per worker"
POOL_SA = "SharedArray (attached per task)"
POOL_FLOOR = "fork-inherited global (the floor)"
POOL_NUMPY = "numpy (pickled by value)"


def pool_map(res: C.Results, mode: str) -> None:
    """Pool(2).map over 100 row slices of a large float32 array, each task summing its whole slice;
    the Pool is started before the array exists; steady state (after one warm-up map of each case)."""
    global _FLOOR
    total = 4 * MiB if mode == "smoke" else 400 * 10 ** 6  # 381 MiB
    if mode != "smoke" and (C.available_memory() < 6 * total or C.shm_free() < 4 * total):
        total //= 4
    repeats = {"full": 7, "quick": 5, "smoke": 1}[mode]
    n = total // 4 // 100
    C.progress(f"bench_ipc: Pool.map summing 100 slices of {C.human_bytes(total)}")
    sa = C.optional_import("SharedArray")
    status: Dict[str, str] = {}
    cleanup: List[Callable[[], Any]] = []
    cases: Dict[str, Callable[[], Any]] = {}
    expect = float(n)
    try:
        with FORK.Pool(2) as pool:
            pool.map(abs, range(4))  # workers started before any array exists
            if C.has("create"):
                name = _name("pool")
                shared = nd_create(name, (100, n), F4, fill=1.0)
                cleanup.append(lambda: nd_unlink(name))
                slices = list(shared)
                cases[POOL_ND] = lambda: pool.map(_sum, slices, chunksize=1)
            else:
                status[POOL_ND] = C.NOT_AVAILABLE + " (ndshm.create)"
            shm = shared_memory.SharedMemory(create=True, size=total)
            np.ndarray((100, n), F4, buffer=shm.buf)[...] = 1.0
            cleanup.append(lambda: (shm.close(), shm.unlink()))
            jobs = [(shm.name, n, i) for i in range(100)]
            cases[POOL_SHM_TASK] = lambda: pool.map(_shm_sum_per_task, jobs, chunksize=1)
            cases[POOL_SHM_KEPT] = lambda: pool.map(_shm_sum_kept, jobs, chunksize=1)
            if sa is not None:
                sname = _name("pool-sa")
                sa.create("shm://" + sname, (100, n), F4)[...] = 1.0
                cleanup.append(lambda: sa.delete("shm://" + sname))
                sjobs = [(sname, i) for i in range(100)]
                cases[POOL_SA] = lambda: pool.map(_sa_sum, sjobs, chunksize=1)
            else:
                status[POOL_SA] = "not installed (pip install SharedArray)"
            _FLOOR = np.ones((100, n), F4)
            with FORK.Pool(2) as floor_pool:  # forked after the array: the workers inherit it
                cases[POOL_FLOOR] = lambda: floor_pool.map(_floor_sum, range(100), chunksize=1)
                for k, fn in list(cases.items()):  # one warm-up map each; every task must read it all
                    got = fn()
                    if got != [expect] * 100:
                        status[k] = f"error: wrong sums {got[:3]}..."
                        del cases[k]
                t = C.interleaved(cases, repeats)
            _FLOOR = None
    finally:
        for f in cleanup:
            try:
                f()
            except Exception:
                pass
        gc.collect()
    nd, kept, floor = t.get(POOL_ND), t.get(POOL_SHM_KEPT), t.get(POOL_FLOOR)
    rows = []
    for k in (POOL_ND, POOL_SHM_KEPT, POOL_SHM_TASK, POOL_SA, POOL_FLOOR):
        if k in t:
            rows.append([k, t[k] * 1e3, C.ratio(t[k], nd), C.ratio(nd, t[k]) if nd else C.NA])
        else:
            rows.append([k, status.get(k, C.NA), C.NA, C.NA])
    res.data["pool_map"] = [{"method": k, "bytes": total, "s": v} for k, v in t.items()]
    res.data["pool_sum"] = {"bytes": total, "repeats": repeats, "s": t, "missing": status,
                            "ndshm_over_shm_kept": nd / kept if nd and kept else None,
                            "ndshm_over_floor": nd / floor if nd and floor else None}
    res.emit(C.table(["Pool(2).map, each task sums its slice", "ms per map", "time / ndshm", "ndshm / this"], rows,
                     title=f"Pool.map over 100 row slices of a {C.human_bytes(total)} float32 array, each task "
                           f"reading its whole slice (median of {repeats}, steady state; targets: ndshm ≤ 1.1x "
                           "shared_memory kept open, ≤ 1.3x the floor)",
                     note="The Pool starts before the arrays exist. ndshm workers only unpickle their slice (the "
                          "mapping is kept between tasks); shared_memory is opened by name in each task, or kept "
                          "open in a worker-global dict; the floor reads a global inherited by a Pool forked after "
                          "the array was made."))


# ---------------------------------------------------------------- 3b. repeated attach of one big segment

def _reattach_loop(conn: Any, name: str, n: int) -> None:
    """In a spawned process: attach the segment, touch one byte per page, drop the view; n times.
    Against touching an array kept mapped (the floor)."""
    try:
        def again() -> None:
            a = ndshm.attach(name)
            a.reshape(-1).view(np.uint8)[::4096].sum()
            del a

        kept = ndshm.attach(name)
        flat = kept.reshape(-1).view(np.uint8)

        def touch() -> None:
            flat[::4096].sum()

        again()
        touch()
        out = {}
        for label, fn in (("reattach", again), ("touch", touch)):
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            out[label] = C.median(times)
        conn.send(("ok", out))
    except BaseException as e:
        conn.send(("error", C.error_cell(e)))
    conn.close()


def reattach(res: C.Results, mode: str) -> None:
    if not C.has("create"):
        res.emit(C.table(["repeated attach", "p50 ms"], [["ndshm", C.NOT_AVAILABLE]], title="Repeated attach"))
        return
    size = 8 * MiB if mode == "smoke" else 400 * 10 ** 6
    n = {"full": 50, "quick": 20, "smoke": 3}[mode]
    C.progress(f"bench_ipc: repeated attach of one {C.human_bytes(size)} segment")
    name = _name("reattach")
    keep = nd_create(name, (size // 4,), F4, fill=1.0)  # noqa: F841 - owned here while the child attaches
    try:
        r, w = SPAWN.Pipe(duplex=False)
        p = SPAWN.Process(target=_reattach_loop, args=(w, name, n))
        p.start()
        w.close()
        st, value = r.recv()
        p.join()
    finally:
        nd_unlink(name)
    if st != "ok":
        rows = [["attach + touch every page, previous view dropped", f"error: {value}"[:120], C.NA]]
        value = {}
    else:
        rows = [["attach + touch every page, previous view dropped", value["reattach"] * 1e3,
                 C.ratio(value["reattach"], value["touch"])],
                ["touch every page of an array kept mapped (the floor)", value["touch"] * 1e3, 1.0]]
    res.data["reattach"] = {"bytes": size, "calls": n, "s": value}
    res.emit(C.table(["one process, one segment", "p50 ms", "/ floor"], rows,
                     title=f"Repeated attach of the same {C.human_bytes(size)} segment after its last view died "
                           "(target: p50 ≤ 2x the floor)",
                     note="The mapping cache keeps the segment mapped between attaches: no page faults again."))


# ---------------------------------------------------------------- 4. create and touch

@contextlib.contextmanager
def huge_tmpfs(nbytes: int) -> Any:
    """A private tmpfs mounted with huge=always in a temporary directory for the block (root only),
    unmounted after: yields (directory, None), or (None, why not)."""
    if os.geteuid() != 0:
        yield None, "mounting a private tmpfs needs root"
        return
    d = tempfile.mkdtemp(prefix="ndshm-bench-huge-")
    rc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"huge=always,size={nbytes},mode=0700", "tmpfs", d],
                        capture_output=True, text=True)
    if rc.returncode != 0:
        os.rmdir(d)
        yield None, f"cannot mount a huge-page tmpfs: {rc.stderr.strip()}"[:120]
        return
    try:
        yield d, None
    finally:
        subprocess.run(["umount", "-l", d], capture_output=True)
        os.rmdir(d)


def create_touch(res: C.Results, mode: str) -> None:
    size = {"full": GiB, "quick": 256 * MiB, "smoke": 8 * MiB}[mode]
    if C.shm_free() < 2 * size or C.available_memory() < 3 * size:
        size //= 4
    # medians of 3 even in quick mode: the first use of memory fresh to this VM costs up to 10x more
    repeats = {"full": 3, "quick": 3, "smoke": 1}[mode]
    C.progress(f"bench_ipc: create + touch {C.human_bytes(size)}")
    # Room for three segments: on PyPy a case's mapping goes only when its GC runs and the mapping
    # watcher sees the name removed, so the next case (hugepages=True picks this mount too) can overlap it.
    with huge_tmpfs(3 * size + 4 * MiB) as (huge_dir, why):
        _create_touch(res, size, repeats, huge_dir, why)


def _create_touch(res: C.Results, size: int, repeats: int, huge_dir: Optional[str], why: Optional[str]) -> None:

    def touch(a: np.ndarray) -> None:
        a.reshape(-1)[::4096] = 1

    cleanup: List[Callable[[], None]] = []
    cases: Dict[str, Callable[[], Any]] = {}
    status: Dict[str, str] = {}

    def nd_case(**kw: Any) -> Callable[[], None]:
        def run() -> None:
            name = _name("touch")
            a = nd_create(name, (size,), np.uint8, **kw)
            d = ndshm.segment_of(a).dir
            touch(a)
            cleanup.append(lambda: nd_unlink_in(name, d))
            holder.append(a)
        return run

    def shm_case() -> None:
        s = shared_memory.SharedMemory(create=True, size=size)
        a = np.ndarray((size,), np.uint8, buffer=s.buf)
        touch(a)
        holder.append(a)
        cleanup.append(lambda: (holder.clear(), s.close(), s.unlink()))

    holder: List[Any] = []
    huge_label = "ndshm on a huge-page tmpfs (dir=...) populate=True"
    labels = ["ndshm populate=True", huge_label, "ndshm hugepages=True", "ndshm (plain)", "shared_memory"]
    if C.has("create"):
        cases["ndshm populate=True"] = nd_case(populate=True)
        if huge_dir is not None:
            cases[huge_label] = nd_case(dir=huge_dir, populate=True)
        else:
            status[huge_label] = f"not measured: {why}"
        cases["ndshm hugepages=True"] = nd_case(hugepages=True, populate=True)
        cases["ndshm (plain)"] = nd_case()
    else:
        for k in labels[:4]:
            status[k] = C.NOT_AVAILABLE + " (ndshm.create)"
    cases["shared_memory"] = shm_case
    samples: Dict[str, List[float]] = {k: [] for k in cases}
    for _ in range(repeats):
        for k, fn in list(cases.items()):
            t = time.perf_counter()
            try:
                fn()
            except Exception as e:
                status[k] = f"not measured: {e}" if isinstance(e, ndshm.NotSupportedError) else C.error_cell(e)
                del cases[k]
                continue
            finally:
                dt = time.perf_counter() - t
            samples[k].append(dt)
            holder.clear()
            for f in cleanup:
                try:
                    f()
                except Exception:
                    pass
            cleanup.clear()
            gc.collect()  # PyPy frees the dropped views (and so the mapping) only when its GC runs
    med = {k: C.median(v) for k, v in samples.items() if v and k not in status}
    ref = med.get("ndshm populate=True")
    shm = med.get("shared_memory")
    rows = []
    notes = []
    for k in labels:
        if k in med:
            rows.append([k, med[k] * 1e3, size / med[k] / 1e9, C.ratio(med[k], ref),
                         C.ratio(shm, med[k]) if shm else C.NA])
        elif status.get(k, "").startswith(("NotSupportedError", "not measured")):  # say why below
            notes.append(f"{k}: not measured on this machine: {status[k]}")
        else:
            rows.append([k, status.get(k, C.NA), C.NA, C.NA, C.NA])
    if huge_dir is not None:
        notes.append(f"dir=...: {huge_dir}, a tmpfs this benchmark mounted with huge=always for the run (unmounted "
                     "after): what users get by pointing NDSHM_DIR or dir= at such a mount; hugepages=True picks the first "
                     "huge-page mount it may write to (this one, unless another exists). /dev/shm on this machine has "
                     "no huge pages (shmem_enabled=never), and shared_memory cannot choose its directory.")
    res.data["create_touch"] = {"bytes": size, "repeats": repeats, "s": med, "missing": status,
                                "huge_tmpfs_dir": huge_dir}
    res.emit(C.table(["create + touch every page", "ms", "GB/s", "time / ndshm populate", "shared_memory / this"],
                     rows,
                     title=f"Creating and touching a {C.human_bytes(size)} shared array "
                           f"(target: ndshm ≥ 4x faster than shared_memory)",
                     note="\n".join(notes) or None))


def run(mode: str) -> C.Results:
    res = C.Results("ipc", mode)
    for section in (classic, attach_latency, pool_map, reattach, create_touch):
        C.guarded(res, section, mode)
    return res


def main(argv: Optional[List[str]] = None) -> int:
    return C.main(__doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())

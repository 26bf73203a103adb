"""ndshm inside the engines people outgrow a process pool with, against each engine's own way.

1. MPI: ``ndshm.mpi.allocate_shared`` (with and without ``populate=True``) against
   ``MPI.Win.Allocate_shared`` on the node communicator, 2 ranks under ``mpirun``, a 400 MB float32
   array (64 MiB with --quick, 4 MiB with --smoke). Each iteration: allocate + fill (each rank
   writes its half), every rank reads the whole array (the first read maps the pages the other
   rank wrote; "read again" is the steady state of an attached array), free. Every phase runs
   from a node barrier to a node barrier (the slowest rank's time). One implementation per mpirun
   job, the jobs alternating; "cold" is a job's first iteration (fresh processes, nothing mapped),
   "steady" the median of its later ones. The ranks' code is bench/mpi_ranks.py.

Each engine is one section: a function ``(res, mode)`` that emits its table and records its figures
under ``res.data[<engine>]``, listed in ``SECTIONS``; Dask and Ray sections join it there.

    python bench/bench_engines.py [--quick | --smoke] [--json PATH]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Callable, Dict, List, Optional

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


# ---------------------------------------------------------------- the benchmark

SECTIONS: List[Callable[[C.Results, str], None]] = [mpi_allocate]


def run(mode: str) -> C.Results:
    res = C.Results("engines", mode)
    for section in SECTIONS:
        C.guarded(res, section, mode)
    return res


def main(argv: Optional[List[str]] = None) -> int:
    return C.main(__doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())

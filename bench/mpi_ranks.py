"""What every MPI rank runs for bench_engines.py's MPI table (started by it under mpirun).

    mpirun -n 2 python -m mpi4py bench/mpi_ranks.py {ndshm|win} NBYTES ITERATIONS READS OUT.json

One implementation per job, so each job's first iteration is a true cold start (fresh processes,
nothing mapped yet). Each iteration, on the node communicator: allocate a float32 array of NBYTES
and fill it (each rank writes its half), every rank reads the whole array (the first read maps the
pages the other rank wrote: "first read"; then READS more: "read again"), and free it. Every phase
is timed from a barrier to a barrier, so it is the slowest rank's time. Rank 0 writes
{"s": {phase: [seconds per iteration]}, "backing": the file behind the memory, "library"} to OUT.json.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable, Dict, List, Tuple

import mpi4py
import numpy as np
from mpi4py import MPI

import ndshm.mpi  # bench_engines.py puts this tree's pybind/ on PYTHONPATH

F4 = np.dtype(np.float32)


def allocate_ndshm(node: MPI.Intracomm, n: int) -> Tuple[np.ndarray, Callable[[], None]]:
    win = ndshm.mpi.allocate_shared(node, n, F4)
    return win.array, win.free


def allocate_win(node: MPI.Intracomm, n: int) -> Tuple[np.ndarray, Callable[[], None]]:
    """The mpi4py way: the leader allocates everything, the others 0 bytes and query its base."""
    win = MPI.Win.Allocate_shared(n * F4.itemsize if node.Get_rank() == 0 else 0, F4.itemsize, comm=node)
    buf, _ = win.Shared_query(0)
    return np.ndarray(n, F4, buffer=buf), win.Free


def allocate_ndshm_populate(node: MPI.Intracomm, n: int) -> Tuple[np.ndarray, Callable[[], None]]:
    win = ndshm.mpi.allocate_shared(node, n, F4, populate=True)
    return win.array, win.free


IMPLS = {"ndshm": allocate_ndshm, "ndshm-populate": allocate_ndshm_populate, "win": allocate_win}


def backing(address: int) -> str:
    """The file /proc/self/maps names for the mapping holding ``address``."""
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= address < hi:
                return parts[5].strip() if len(parts) > 5 else "(anonymous)"
    return "?"


def main(impl: str, nbytes: int, iterations: int, reads: int, out: str) -> None:
    node = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED)
    rank, size = node.Get_rank(), node.Get_size()
    n = nbytes // F4.itemsize
    lo, hi = n * rank // size, n * (rank + 1) // size
    allocate = IMPLS[impl]
    times: Dict[str, List[float]] = {"allocate + fill": [], "first read": [], "read again": [], "free": []}
    where = ""
    clock = time.perf_counter

    def timed(phase: str, fn: Callable[[], Any]) -> Any:
        node.Barrier()
        t = clock()
        got = fn()
        node.Barrier()
        times[phase].append(clock() - t)
        return got

    for _ in range(iterations):
        box: Dict[str, Any] = {}

        def alloc_fill() -> None:
            box["a"], box["free"] = allocate(node, n)
            box["a"][lo:hi] = 1.0

        timed("allocate + fill", alloc_fill)
        a = box["a"]
        total = timed("first read", lambda: float(a.sum()))
        if total != n:
            raise AssertionError(f"rank {rank} read a sum of {total}, expected {n}: the ranks do not share memory")
        again = []
        for _ in range(reads):
            node.Barrier()
            t = clock()
            a.sum()
            node.Barrier()
            again.append(clock() - t)
        times["read again"].append(float(np.median(again)))
        where = backing(a.__array_interface__["data"][0])
        free = box.pop("free")
        del a, box
        timed("free", free)
    if rank == 0:
        with open(out, "w") as f:
            library = MPI.Get_library_version().splitlines()[0].split(",")[0].strip()
            json.dump({"impl": impl, "ranks": size, "bytes": n * F4.itemsize, "s": times, "backing": where,
                       "library": f"{library}, mpi4py {mpi4py.__version__}"}, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])

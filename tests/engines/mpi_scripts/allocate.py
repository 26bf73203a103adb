"""Run by tests/engines/test_mpi.py under ``mpirun -n N``: one scenario of ndshm.mpi.allocate_shared per run.

    MPI_RESULTS=OUT mpirun -n N python -m mpi4py tests/engines/mpi_scripts/allocate.py SCENARIO DIR

Every rank writes what it observed to ``OUT/<rank>.json`` (the test asserts on those); ``DIR`` is a
private directory for the segments, so the test can count what is in it.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time

from mpi4py import MPI

import ndshm
import ndshm.mpi

WORLD = MPI.COMM_WORLD
RANK = WORLD.Get_rank()


def files(d: str) -> list:
    """The names in ``d`` but the process tables (``.ndshm-procs-<uid>``) every ndshm process leaves."""
    return sorted(e for e in os.listdir(d) if not e.startswith(".ndshm-procs-"))


def mapped_file(address: int) -> str:
    """The file /proc/self/maps names for the mapping holding ``address`` ('' for anonymous memory)."""
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= address < hi:
                return parts[5].strip() if len(parts) > 5 else ""
    return "?"


def report(**kw) -> None:
    """Write what this rank saw to ``$MPI_RESULTS/<rank>.json`` (mpirun interleaves long stdout lines)."""
    path = os.path.join(os.environ["MPI_RESULTS"], f"{RANK}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(dict(rank=RANK, **kw), f, sort_keys=True)
    os.replace(path + ".tmp", path)


def failure(fn) -> dict:
    """Call ``fn``; what it raised (type, message, seconds it took), or ok."""
    t = time.perf_counter()
    try:
        fn()
    except Exception as e:
        return {"type": type(e).__name__, "message": str(e), "seconds": time.perf_counter() - t,
                "mro": [c.__name__ for c in type(e).__mro__]}
    return {"type": None, "seconds": time.perf_counter() - t}


def share(d: str) -> None:
    """Every rank sees the same memory, in the same segment, one segment per node; free() leaves nothing."""
    n = 1 << 16
    win = ndshm.mpi.allocate_shared(WORLD, (n,), "f8", dir=d)
    a = win.array
    seg = ndshm.segment_of(a)
    addr = a.__array_interface__["data"][0]
    in_segment = seg.address <= addr and addr + a.nbytes <= seg.address + seg.nbytes
    WORLD.Barrier()
    during = files(d)
    if RANK == 1:
        a[:] = 42.0
        a[123] = -7.5
    WORLD.Barrier()
    seen = [float(a.sum()), float(a[123])]
    WORLD.Barrier()
    a[RANK] = RANK + 1  # every rank writes its own element; everyone reads them all
    WORLD.Barrier()
    slots = a[:WORLD.Get_size()].tolist()
    name, where = win.name, win.dir
    expected_file = os.path.join(where, "ndshm." + name)
    info = dict(name=name, segment_name=seg.name, in_segment=in_segment, mapped=mapped_file(addr),
                expected_file=expected_file, during=during, seen=seen, slots=slots, leader=win.leader,
                node_size=win.comm.Get_size(), writeable=bool(a.flags.writeable), n=n)
    del a, seg
    win.free()
    for _ in range(4):  # PyPy releases the handle at a collection
        gc.collect()
    with open("/proc/self/maps") as f:
        mapped_after = [line for line in f if expected_file in line]
    info.update(exists_after=ndshm.exists(name, dir=where), after=files(d), freed=win.freed,
                array_after=failure(lambda: win.array), segment_after=failure(lambda: win.segment),
                mapped_after=mapped_after)
    WORLD.Barrier()
    info["after_all"] = files(d)
    win.free()  # a second free does nothing (and communicates nothing)
    report(**info)


def context(d: str) -> None:
    """``with allocate_shared(...) as a``: the block gets the array and frees it at the end."""
    with ndshm.mpi.allocate_shared(WORLD, (4, 5), "i4", order="F", fill=7, dir=d) as a:
        WORLD.Barrier()
        during = files(d)
        info = dict(sum=int(a.sum()), f=bool(a.flags.f_contiguous and not a.flags.c_contiguous),
                    name=ndshm.segment_of(a).name, dtype=str(a.dtype), shape=list(a.shape))
        del a
    after = files(d)
    # every rank raises in the block and catches it: each releases locally, the leader removes the name
    try:
        with ndshm.mpi.allocate_shared(WORLD, 3, dir=d) as a:
            raise KeyError("everyone")
    except KeyError:
        pass
    WORLD.Barrier()
    after_raise = files(d)
    win = ndshm.mpi.allocate_shared(WORLD, 3, dir=d)
    try:
        with win:
            win.free()  # freed inside the block, then an exception: nothing is released twice
            raise KeyError("after free")
    except KeyError as e:
        late = repr(e)
    report(after=after, during=during, after_raise=after_raise, late=late, after_late=files(d), **info)


def leader_error(d: str) -> None:
    """A shape no memory can hold, and one no /dev/shm can hold: raised on every rank, alike; then
    an allocation still works (no rank was left behind in a collective)."""
    overflow = failure(lambda: ndshm.mpi.allocate_shared(WORLD, (2**62,), "f8", dir=d))
    after_overflow = files(d)
    nospace = failure(lambda: ndshm.mpi.allocate_shared(WORLD, (2**40,), "f8", dir=d))
    after_nospace = files(d)
    badfill = failure(lambda: ndshm.mpi.allocate_shared(WORLD, 3, "f8", fill="not a number", dir=d))
    WORLD.Barrier()
    after_badfill = files(d)
    with ndshm.mpi.allocate_shared(WORLD, 8, "u1", fill=3, dir=d) as a:
        ok = int(a.sum())
        del a
    report(overflow=overflow, nospace=nospace, badfill=badfill, after_overflow=after_overflow,
           after_nospace=after_nospace, after_badfill=after_badfill, ok=ok, after=files(d))


def mismatch(d: str) -> None:
    """A rank asks for another shape, order or dtype than the leader: every rank raises the same ValueError."""
    shape = (10,) if RANK != 1 else (11,)
    got = failure(lambda: ndshm.mpi.allocate_shared(WORLD, shape, "f4", dir=d))
    order = failure(lambda: ndshm.mpi.allocate_shared(WORLD, (3, 4), "f4", order="F" if RANK == 2 else "C", dir=d))
    dtype = failure(lambda: ndshm.mpi.allocate_shared(WORLD, 10, "f8" if RANK == 1 else "f4", dir=d))
    WORLD.Barrier()
    report(error=got, order=order, dtype=dtype, after=files(d))


def readonly(d: str) -> None:
    """readonly=True: non-leaders' arrays (and mappings) are read-only; the leader writes, all see it."""
    win = ndshm.mpi.allocate_shared(WORLD, 100, "i8", readonly=True, dir=d)
    a = win.array
    if win.leader:
        a[:] = 5
    WORLD.Barrier()
    total = int(a.sum())
    WORLD.Barrier()
    write = failure(lambda: a.__setitem__(0, 1))
    info = dict(leader=win.leader, writeable=bool(a.flags.writeable), mapping_readonly=win.segment.readonly,
                sum=total, write=write)
    del a
    win.free()
    report(after=files(d), **info)


def resident_kib(address: int) -> int:
    """Rss (KiB) of the mapping holding ``address``, from /proc/self/smaps."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "Rss:":
                return int(line.split()[1])
    return -1


def populate(d: str) -> None:
    """populate=True: every rank's mapping is resident before anyone touches it; without, it is not."""
    info = {}
    for pop in (False, True):
        with ndshm.mpi.allocate_shared(WORLD, 1 << 20, "f4", populate=pop, dir=d) as a:
            info[str(pop)] = resident_kib(a.__array_interface__["data"][0])
            WORLD.Barrier()
            a[RANK] = RANK + 1
            WORLD.Barrier()
            info[f"{pop}-slots"] = a[:WORLD.Get_size()].tolist()
            del a
    report(nbytes=4 << 20, after=files(d), **info)


def bad_comm(d: str) -> None:
    """A comm that is not an MPI.Intracomm: TypeError naming it, before any communication."""
    report(string=failure(lambda: ndshm.mpi.allocate_shared("COMM_WORLD", 4)),
           group=failure(lambda: ndshm.mpi.allocate_shared(WORLD.Get_group(), 4)),
           null=failure(lambda: ndshm.mpi.allocate_shared(None, 4)),
           after=files(d))


def two_nodes(d: str) -> None:
    """Two simulated nodes (ranks split by parity): one segment per node, and an error on one node's
    leader raises on the other node's ranks too."""
    ndshm.mpi._node_comm = lambda comm: comm.Split(comm.Get_rank() % 2, comm.Get_rank())
    win = ndshm.mpi.allocate_shared(WORLD, 1000, "f8", dir=d)
    win.array[RANK] = RANK + 1
    WORLD.Barrier()
    during = files(d)
    info = dict(name=win.name, node_size=win.comm.Get_size(), leader=win.leader,
                slots=win.array[:WORLD.Get_size()].tolist(), during=during)
    WORLD.Barrier()  # free() synchronises one node only: let every rank list the directory first
    win.free()
    WORLD.Barrier()
    shape = (2**62,) if RANK == 1 else (1000,)  # rank 1 is the leader of the odd node
    info["error"] = failure(lambda: ndshm.mpi.allocate_shared(WORLD, shape, "f8", dir=d))
    WORLD.Barrier()
    report(after=files(d), **info)


def raise_in_block(d: str) -> None:
    """An exception inside the ``with`` block on one rank: that rank releases locally and dies; the
    job ends (mpirun aborts the others) instead of hanging in a collective free()."""
    who = int(os.environ["RAISE_ON"])
    with ndshm.mpi.allocate_shared(WORLD, 10, "f8", dir=d) as a:
        a[RANK] = 1
        WORLD.Barrier()
        if RANK == who:
            raise RuntimeError(f"boom on rank {RANK}")
    WORLD.Barrier()


SCENARIOS = {f.__name__: f for f in (share, context, leader_error, mismatch, readonly, populate, bad_comm,
                                     two_nodes, raise_in_block)}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]](sys.argv[2])

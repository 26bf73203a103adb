"""ndshm.Pool (issue 21): arrays carved from a pre-faulted shared pool, pickled by reference, across
real processes (multiprocessing.Pool, ProcessPoolExecutor with spawn, a Queue of references),
with holders killed by kill -9, freed blocks refused, full pools, four processes carving at once,
and hostile pool files."""

from __future__ import annotations

import concurrent.futures
import copy
import gc
import json
import multiprocessing as mp
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

import ndshm
from ndshm import pool as ndpool
from conftest import PYPY, child_env, collect, expect_line, finish_python, kill9, read_line, run_cli, run_python, start_python

SHM = Path(os.environ.get("NDSHM_DIR", "/dev/shm"))


@pytest.fixture
def pool(unique_name):
    p = ndshm.Pool(8 << 20, name=unique_name)
    yield p
    p.close()


def _live(p: ndshm.Pool) -> int:
    """Live blocks once dead arrays are gone (PyPy: its GC frees a cpyext level a pass, so until stable)."""
    collect()
    n = p.stats().live_blocks
    for _ in range(20 if PYPY else 0):
        gc.collect()
        n, before = p.stats().live_blocks, n
        if n == before:
            break
    return n


# ---- workers (module level, so spawn can import them) ------------------------------------------

def _make_result(name: str, dir: str, i: int):
    p = ndshm.Pool.attach(name, dir=dir)
    return p.full((1 << 16,), float(i), np.float64)  # 512 KiB, pickled back by reference


def _sum(arr) -> float:
    assert isinstance(arr, ndpool.PoolArray)
    return float(arr.sum())


def _sum_from_queue(q, out) -> None:
    while True:
        arr = q.get()
        if arr is None:
            break
        out.put((int(arr[0]), float(arr.sum()), zlib.crc32(arr.tobytes())))


def _carve_free_checksum(name: str, dir: str, seed: int, rounds: int) -> int:
    """Carves and frees at random, each block filled with a pattern checked before it goes."""
    p = ndshm.Pool.attach(name, dir=dir)
    rng = random.Random(seed)
    live = []
    checked = 0
    for i in range(rounds):
        if live and (len(live) > 20 or rng.random() < 0.5):
            arr, tag = live.pop(rng.randrange(len(live)))
            assert (arr == tag).all(), f"block overwritten: expected {tag}"
            checked += 1
            del arr
        else:
            n = rng.choice((1, 7, 64, 1000, 5000, 40000))
            tag = (seed * 1000 + i) % 251
            try:
                arr = p.full((n,), tag, np.uint8)
            except ndshm.NoSpaceError:
                continue
            live.append((arr, tag))
    for arr, tag in live:
        assert (arr == tag).all()
    return checked


# ---- one process -------------------------------------------------------------------------------

def test_arrays_shapes_dtypes_and_fill(pool):
    a = pool.zeros((3, 4), np.int32)
    assert isinstance(a, ndpool.PoolArray) and isinstance(a, ndshm.SharedArray)
    assert a.shape == (3, 4) and a.dtype == np.int32 and a.flags.c_contiguous and not a.any()
    f = pool.full((5, 2), 7.5, order="F")
    assert f.flags.f_contiguous and f.dtype == np.float64 and (f == 7.5).all()
    src = np.arange(10, dtype=np.int16)
    c = pool.array(src)
    assert c.dtype == np.int16 and (c == src).all() and c.ctypes.data != src.ctypes.data
    rec = pool.zeros(4, np.dtype([("x", "<i4"), ("y", "<f8")]))
    rec["y"] = 2.5
    assert rec.dtype.names == ("x", "y") and (rec["y"] == 2.5).all() and not rec["x"].any()
    frec = pool.zeros((3, 2), np.dtype([("x", "<i2"), ("y", "<f4")], align=True), order="F")
    assert frec.flags.f_contiguous and frec.dtype.itemsize == 8 and not frec["x"].any() and not frec["y"].any()
    del frec
    e = pool.empty(0, np.float32)
    assert e.shape == (0,)
    assert _live(pool) == 5
    del a, f, c, rec, e
    assert _live(pool) == 0


def test_base_keeps_the_block_and_close_keeps_views(pool):
    a = pool.full(1000, 3, np.int64)
    v = a[10:20]
    del a
    collect()
    assert pool.stats().live_blocks == 1 and (v == 3).all()
    name = pool.name
    pool.close()
    assert pool.closed and not (SHM / f"ndshm.{name}").exists()  # the creator's close removes the name
    with pytest.raises(ndshm.ClosedError):
        pool.empty(4)
    assert (v == 3).all()  # the mapping lives while a view does
    v[:] = 4
    assert v.sum() == 40


def test_bad_arguments(unique_name):
    with pytest.raises(ValueError, match="on_full 'grow'"):
        ndshm.Pool(4096, name=unique_name, on_full="grow")
    with pytest.raises(ValueError, match="nbytes"):
        ndshm.Pool(0, name=unique_name)
    with pytest.raises(TypeError):
        ndshm.Pool(4096, name=5)  # type: ignore[arg-type]
    with ndshm.Pool(4096, name=unique_name) as p:
        with pytest.raises(ValueError, match="order"):
            p.empty(4, order="K")
        with pytest.raises(TypeError):
            p.empty(4, dtype=object)
        with pytest.raises(ndshm.SegmentExistsError):
            ndshm.Pool(4096, name=unique_name)
    with pytest.raises(ndshm.SegmentNotFoundError):
        ndshm.Pool.attach(unique_name)
    a = ndshm.create(unique_name, 4)
    with pytest.raises(ndshm.InvalidValueError, match="is not a pool"):
        ndshm.Pool.attach(unique_name)
    ndshm.segment_of(a).close()
    with ndshm.Pool(4096, name=unique_name) as p:
        with pytest.raises(TypeError, match="holds an ndshm pool, not an array: use ndshm.Pool.attach"):
            ndshm.attach(unique_name)


def test_pickle_is_a_reference_and_views_keep_their_offset(pool):
    a = pool.zeros((100, 100), np.float32)
    data = pickle.dumps(a[5:7, ::2])
    assert len(data) < 400  # O(1): no array bytes
    b = pickle.loads(data)
    assert isinstance(b, ndpool.PoolArray) and b.shape == (2, 50) and b.strides == (400, 8)
    b[:] = 9  # the same memory
    assert (a[5:7, ::2] == 9).all() and a.sum() == 900
    c = pickle.loads(pickle.dumps(b[1]))  # a received view passed on again
    assert c.shape == (50,) and c.ctypes.data == a[6].ctypes.data
    assert copy.deepcopy(a).ctypes.data != a.ctypes.data  # a copy is a copy
    assert not isinstance(copy.copy(a), ndpool.PoolArray)


def test_reference_to_a_freed_block_is_refused(pool):
    a = pool.full(100, 1.0)
    data = pickle.dumps(a)  # a hand-over: the block lives until received
    del a
    assert _live(pool) == 1 and pool.stats().in_transit == 1
    b = pickle.loads(data)
    assert pool.stats().in_transit == 0 and b.sum() == 100
    del b
    assert _live(pool) == 0
    c = pool.full(100, 2.0)  # likely the same place, another generation
    with pytest.raises(ndshm.BlockFreedError, match="freed since") as exc:
        pickle.loads(data)
    assert isinstance(exc.value, FileNotFoundError)
    assert (c == 2.0).all()


def test_full_pool_raises_naming_pool_size_and_request(unique_name):
    with ndshm.Pool(1 << 20, name=unique_name) as p:
        keep = [p.empty(100_000, np.uint8) for _ in range(10)]
        with pytest.raises(ndshm.NoSpaceError, match=rf"pool '{unique_name}' of 1048576 bytes .* 200000 bytes"):
            p.empty(200_000, np.uint8)
        with pytest.raises(ndshm.NoSpaceError, match="no room for a block of 2000000 bytes"):
            p.empty(2_000_000, np.uint8)
        del keep
        collect()
        assert p.empty(1 << 20, np.uint8).nbytes == 1 << 20  # everything coalesced back


def test_full_pool_falls_back_to_a_segment(unique_name):
    with ndshm.Pool(1 << 16, name=unique_name, on_full="segment") as p:
        a = p.full(100_000, 5, np.uint8)  # larger than the pool
        assert not isinstance(a, ndpool.PoolArray) and isinstance(a, ndshm.SharedArray)
        assert (a == 5).all() and a.sum() == 500_000
        b = pickle.loads(pickle.dumps(a))
        assert (b == 5).all()
        seg = ndshm.segment_of(a)
        assert seg.name != unique_name
        del a, b, seg


def test_fragmentation_is_bounded_and_measured(unique_name):
    """Mixed sizes, freed at random: the high-water mark stays near the live bytes. In a child
    interpreter: PyPy frees a block at a GC, and each collection walks the whole heap, which in a
    test process (every test module loaded) is many times a fresh interpreter's."""
    run_python("""
        import gc, platform, random, sys
        import numpy as np
        import ndshm

        PYPY = platform.python_implementation() == "PyPy"
        rng = random.Random(5)
        with ndshm.Pool(64 << 20, name=sys.argv[1], max_blocks=8192) as p:
            live = []
            peak_live = 0

            def settle():
                # PyPy frees a block at its GC: as many passes as it takes (conftest.collect's 4 at
                # most), before the next carve, so one settles a run of frees
                for _ in range(4 if PYPY else 0):
                    if p.stats().live_blocks == len(live):
                        break
                    gc.collect()

            for i in range(600 if PYPY else 6000):
                if live and (len(live) > 300 or rng.random() < 0.5):
                    live.pop(rng.randrange(len(live)))
                else:
                    settle()
                    live.append(p.empty(rng.choice((64, 1000, 4096, 60_000, 250_000)), np.uint8))
                peak_live = max(peak_live, sum(a.nbytes for a in live))
            settle()
            s = p.stats()
            assert s.high_water <= 1.5 * peak_live, (s.high_water, peak_live)
            del live
            for _ in range(4 if PYPY else 1):
                gc.collect()
            s = p.stats()
            assert s.live_blocks == 0 and s.free_extents == 1 and s.carves == s.frees, s
    """, unique_name, timeout=600)


# ---- real processes ----------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_pool_results(pool, method):
    ctx = mp.get_context(method)
    with ctx.Pool(2) as workers:
        results = workers.starmap(_make_result, [(pool.name, pool.dir, i) for i in range(12)])
    assert [float(r.sum()) for r in results] == [float(i) * (1 << 16) for i in range(12)]
    assert all(isinstance(r, ndpool.PoolArray) for r in results)
    del results
    collect()
    assert pool.reclaim() >= 0  # the workers ended: their slots go
    assert pool.stats().live_blocks == 0 and pool.stats().in_transit == 0


@pytest.mark.skipif(PYPY, reason="PyPy 7.3's ProcessPoolExecutor is broken with spawn (no _adjust_process_count)")
def test_process_pool_executor_spawn(pool):
    arrays = [pool.full(10_000, i, np.int32) for i in range(8)]
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as ex:
        sums = list(ex.map(_sum, arrays))
    assert sums == [float(i * 10_000) for i in range(8)]
    del arrays
    assert _live(pool) == 0


def test_queue_of_references(pool):
    ctx = mp.get_context("spawn")
    q, out = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_sum_from_queue, args=(q, out))
    proc.start()
    sent = []
    for i in range(20):
        a = pool.full(5000 + i, i, np.uint8)
        sent.append(zlib.crc32(a.tobytes()))
        q.put(a)
        del a  # the hand-over keeps the block until the consumer has it
    q.put(None)
    got = sorted(out.get(timeout=60) for _ in range(20))
    proc.join(60)
    assert proc.exitcode == 0
    assert [g[0] for g in got] == list(range(20))
    assert [g[2] for g in got] == sent
    pool.reclaim()  # PyPy's consumer may end before its GC unpinned its views: its pins go with it
    assert _live(pool) == 0


def test_four_processes_carve_and_free_with_checksums(pool):
    ctx = mp.get_context("fork" if not PYPY else "spawn")
    with ctx.Pool(4) as workers:
        checked = workers.starmap(_carve_free_checksum, [(pool.name, pool.dir, s, 1500) for s in range(4)])
    assert sum(checked) > 1000
    pool.reclaim()
    pool.check()
    s = pool.stats()
    assert s.live_blocks == 0 and s.free_extents == 1


_HOLDER = """
import pickle, random, sys, time
import numpy as np, ndshm
p = ndshm.Pool.attach(sys.argv[1])
random.seed(int(sys.argv[2]))
mine = [p.full(random.choice((100, 5000, 70000)), 7, np.uint8) for _ in range(20)]
theirs = [pickle.loads(bytes.fromhex(line.strip())) for line in iter(sys.stdin.readline, "end\\n")]
print("ready", flush=True)
while True:  # carve and free until killed
    mine.append(p.full(random.choice((100, 5000, 70000)), 7, np.uint8))
    if len(mine) > 20:
        mine.pop(random.randrange(len(mine)))
    time.sleep(random.random() / 1000)
"""


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill9_holder_pins_and_blocks_come_back(pool, seed):
    mine = [pool.full(1000 * (i + 1), i + 1, np.uint8) for i in range(5)]
    sums = [int(a.sum()) for a in mine]
    child = start_python(_HOLDER, pool.name, str(seed))
    for a in mine:
        child.stdin.write(pickle.dumps(a).hex() + "\n")
    child.stdin.write("end\n")
    child.stdin.flush()
    expect_line(child, "ready")
    time.sleep(random.Random(seed).random() / 10)  # a random point of its carving
    del a
    del mine[:3]  # the parent lets go of three the child still views
    collect()
    assert pool.stats().live_blocks >= 5  # the child's pins keep them
    kill9(child)
    assert pool.reclaim() == 1
    s = pool.stats()
    assert s.live_blocks == 2 and s.processes == 1, s  # only what this process views is left
    # nothing this process still views is reused: carve everything else, then check
    filler = []
    while True:
        try:
            filler.append(pool.full(50_000, 0xEE, np.uint8))
        except ndshm.NoSpaceError:
            break
    assert [int(a.sum()) for a in mine] == sums[3:]
    assert len(filler) > 100


def test_corrupt_pool_files_are_refused_never_crash(unique_name):
    """A pool file rewritten by a hostile process: attach raises CorruptSegmentError."""
    p = ndshm.Pool(1 << 20, name=unique_name, max_blocks=64)
    keep = [p.empty(1000, np.uint8) for _ in range(5)]
    path = SHM / f"ndshm.{unique_name}"
    original = path.read_bytes()
    base = original.find(b"DSHMPOOL")
    assert base > 0
    rng = random.Random(7)
    refused = 0
    # Each trial attaches in a fresh process: a fork of one child that imported ndshm and never
    # attached anything (so no mapping is cached), instead of 40 interpreters started anew.
    server = start_python("""
        import os, sys, traceback, json
        import ndshm
        for line in sys.stdin:
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                os.dup2(w, 1)
                os.dup2(w, 2)
                try:
                    try:
                        p = ndshm.Pool.attach(sys.argv[1])
                    except (ndshm.CorruptSegmentError, ndshm.BusyError) as exc:
                        print("refused", type(exc).__name__, exc)
                    else:
                        a = p.empty(100, "u1"); a[:] = 1
                        print("opened", int(a.sum()))
                    sys.stdout.flush()
                    os._exit(0)
                except BaseException:
                    traceback.print_exc()
                    sys.stderr.flush()
                    os._exit(1)
            os.close(w)
            with os.fdopen(r) as f:
                out = f.read()
            _, status = os.waitpid(pid, 0)
            print(json.dumps([os.waitstatus_to_exitcode(status), out]), flush=True)
    """, unique_name)
    # fields of the header and of the first records, then random bytes of the table
    spots = [8, 16, 24, 32, 40, 48, 52, 56, 128, 136, 192, 196, 200, 232]
    spots += [1792 + 64 * r + f for r in range(6) for f in (0, 8, 16, 24, 28, 32, 36, 40, 44)]
    for trial in range(40):
        data = bytearray(original)
        off = base + (spots[trial] if trial < len(spots) else rng.randrange(0, 1792 + 64 * 64))
        data[off:off + 8] = rng.choice([b"\xff" * 8, b"\x00" * 8, b"\x01\x00\x00\x00\x00\x00\x00\x80",
                                        rng.randbytes(8) if hasattr(rng, "randbytes") else os.urandom(8)])
        with open(path, "r+b") as f:
            f.write(data)
        server.stdin.write(f"{trial}\n")
        server.stdin.flush()
        line = read_line(server, timeout=60)
        assert line, (trial, off - base, server.poll())
        returncode, output = json.loads(line)
        assert returncode == 0, (trial, off - base, output)
        refused += output.startswith("refused CorruptSegmentError")
    finish_python(server)  # closes its stdin: the loop ends, and the child must exit 0
    with open(path, "r+b") as f:
        f.write(original)
    assert refused >= 20
    # this process's own handle still answers (a clear error or a consistent state), never crashes
    try:
        p.check()
    except ndshm.CorruptSegmentError:
        pass
    del keep
    p.close()


def test_default_pool_is_shared_with_children(monkeypatch):
    monkeypatch.delenv("NDSHM_DEFAULT_POOL", raising=False)
    monkeypatch.setattr(ndpool, "_default", None)
    monkeypatch.setenv("NDSHM_POOL_BYTES", str(4 << 20))
    p = ndshm.default_pool()
    try:
        assert p is ndshm.default_pool() and p.on_full == "segment" and p.nbytes == 4 << 20
        assert os.environ["NDSHM_DEFAULT_POOL"] == f"{p.name}:{p.dir}"
        a = ndpool.full(10, 3, np.int16)
        out = subprocess.run([sys.executable, "-c", textwrap.dedent("""
            import pickle, sys, ndshm
            a = pickle.loads(sys.stdin.buffer.read())
            p = ndshm.default_pool()
            b = ndshm.pool.full(4, 1, "u1")
            print(p.name, int(a.sum()), type(b).__name__)
        """)], input=pickle.dumps(a), capture_output=True, timeout=60, env=child_env())
        assert out.returncode == 0, out.stderr
        assert out.stdout.decode().split() == [p.name, "30", "PoolArray"]
        big = ndpool.empty(5 << 20, np.uint8)  # larger than the pool: a segment of its own
        assert not isinstance(big, ndpool.PoolArray)
    finally:
        p.close()
        ndpool._default = None


def test_ls_and_gc_show_pools_and_release_dead_processes(pool):
    keep = [pool.empty(1 << 20, np.uint8) for _ in range(3)]
    rec = next(r for r in ndshm.list() if r.name == pool.name)
    assert rec.kind == "pool" and rec.in_use and rec.status == "ready"
    assert (rec.pool_used, rec.pool_capacity, rec.pool_blocks) == (3 << 20, 8 << 20, 3)
    ls = run_cli("ls")
    line = next(l for l in ls.stdout.splitlines() if pool.name in l)
    assert "pool" in line and "3.0 MiB of 8.0 MiB (37.5%), 3 blocks" in line, ls.stdout
    info = run_cli("info", pool.name)
    assert "pool use:" in info.stdout and "37.5%" in info.stdout, info.stdout
    # a process that took blocks and was killed: gc gives them back
    child = start_python("""
        import sys, numpy as np, ndshm
        p = ndshm.Pool.attach(sys.argv[1])
        held = [p.empty(1 << 20, np.uint8) for _ in range(2)]
        print("ready", flush=True)
        sys.stdin.readline()
    """, pool.name)
    expect_line(child, "ready")
    assert pool.stats().live_blocks == 5
    kill9(child)
    gc_out = run_cli("gc")
    assert f"pool {pool.name}: released the blocks and pins of 1 dead process" in gc_out.stdout, gc_out.stdout
    assert pool.stats().live_blocks == 3
    del keep


def test_threads_carve_and_free_at_once(unique_name):
    import threading

    # room for every block even if none is freed before the end (PyPy frees at its GC)
    pool = ndshm.Pool(64 << 20, name=unique_name, max_blocks=65536)

    errors: list = []

    def work(seed: int) -> None:
        try:
            rng = random.Random(seed)
            live = []
            for i in range(3000):
                if live and rng.random() < 0.5:
                    arr, tag = live.pop(rng.randrange(len(live)))
                    assert (arr == tag).all()
                else:
                    tag = (seed * 31 + i) % 251
                    live.append((pool.full(rng.choice((8, 300, 5000)), tag, np.uint8), tag))
            for arr, tag in live:
                assert (arr == tag).all()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    pool.check()
    assert _live(pool) == 0
    pool.close()


def test_a_forked_childs_exit_leaves_the_parents_pool(pool):
    a = pool.full(10, 1, np.uint8)
    pid = os.fork()
    if pid == 0:  # the child uses the pool, closes it and runs what exit runs (the atexit hook)
        code = 4
        try:
            b = pool.full(10, 2, np.uint8)
            code = 0 if (a == 1).all() and (b == 2).all() else 3
            del b
            pool.close()
            ndpool._close_all()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (SHM / f"ndshm.{pool.name}").exists()  # still there: only its creator's close removes it
    b = pool.full(10, 3, np.uint8)
    assert (a == 1).all() and (b == 3).all()
    pool.reclaim()


@pytest.fixture
def huge_tmpfs():
    from conftest import mounted_tmpfs
    yield from mounted_tmpfs("huge=always,size=64m", "a huge-page tmpfs")


def _shmem_huge_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("ShmemHugePages:"):
                return int(line.split()[1])
    return 0


@pytest.mark.system_wide  # a huge-page mount that every process's hugepages=True would find
def test_hugepages_pool_in_a_huge_tmpfs(huge_tmpfs, unique_name):
    before = _shmem_huge_kib()
    with ndshm.Pool(16 << 20, name=unique_name, dir=huge_tmpfs, hugepages=True) as p:
        assert p.dir == huge_tmpfs and (Path(huge_tmpfs) / f"ndshm.{unique_name}").exists()
        assert _shmem_huge_kib() - before >= 8 << 10  # pre-faulted in 2 MiB pages
        a = p.full(1 << 20, 5, np.uint8)
        out = subprocess.run([sys.executable, "-c", "import pickle, sys, ndshm; "
                              "print(int(pickle.loads(sys.stdin.buffer.read()).sum()))"],
                             input=pickle.dumps(a), capture_output=True, timeout=60, env=child_env())
        assert out.returncode == 0, out.stderr
        assert int(out.stdout) == 5 << 20
        del a

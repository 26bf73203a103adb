"""Segments across real processes (fork and spawn), crashes, hostile files, permissions, ENOSPC, leaks."""

from __future__ import annotations

import concurrent.futures
import multiprocessing as mp
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import ndshm
from conftest import PYPY, child_env, collect, dir_files, mounted_tmpfs, run_cli, run_python, skip_or_fail

CONTEXTS = ["fork", "spawn"]


def shm_path(name: str, d: str | None = None) -> str:
    return os.path.join(d or os.environ.get("NDSHM_DIR", "/dev/shm"), "ndshm." + name)


# ---- workers (module level, so spawn can import them) ------------------------------------------

def _sum_and_mark(view):
    total = float(view.sum())
    view[0] = -1.0  # zero-copy: the parent sees it
    return total, type(view).__name__, ndshm.segment_of(view).name


def _attach_and_write(name, value):
    a = ndshm.attach(name)
    a[:] = value
    return int(a.shape[0])


def _race_create(name, barrier, results):
    barrier.wait()
    try:
        seg = ndshm.Segment.create(name, 100, "u1", persist=True)
        seg.asarray()[0] = 1
        results.put("won")
    except FileExistsError:
        results.put("lost")
    except Exception as exc:  # pragma: no cover - reported to the parent
        results.put(repr(exc))


def _queue_worker(q, out):
    view = q.get()
    out.put((float(view.sum()), ndshm.segment_of(view).name))
    view[:] = 0


def _count_mappings(views):
    segs = {id(ndshm.segment_of(v)) for v in views}
    return len(segs), ndshm.stats()["live_mappings"]


# ---- tests ------------------------------------------------------------------------------------

def test_spawned_interpreter_attaches_and_sees_writes(unique_name):
    a = ndshm.create(unique_name, (100, 10), "f4")
    a[:] = 1
    child = run_python(f"""
        import ndshm
        b = ndshm.attach({unique_name!r})
        print(b.shape, b.dtype, float(b.sum()))
        b[:] = 2
    """)
    assert child.stdout.split() == ["(100,", "10)", "float32", "1000.0"]
    assert (a == 2).all()


@pytest.mark.parametrize("method", CONTEXTS)
def test_pool_map_pickles_slices_by_reference(unique_name, method):
    a = ndshm.create(unique_name, (40, 1000), "f8")
    a[:] = 1.0
    slices = [a[i:i + 4] for i in range(0, 40, 4)]
    assert all(len(pickle.dumps(s)) < 600 for s in slices)
    ctx = mp.get_context(method)
    with ctx.Pool(2) as pool:
        results = pool.map(_sum_and_mark, slices)
    assert [r[0] for r in results] == [4000.0] * 10
    assert {r[1] for r in results} == {"SharedArray"} and {r[2] for r in results} == {unique_name}
    assert (a[::4, 0] == -1).all()


@pytest.mark.parametrize("method", ["fork", pytest.param("spawn", marks=pytest.mark.skipif(
    PYPY, reason="PyPy 7.3's ProcessPoolExecutor is broken with spawn (no _adjust_process_count)"))])
def test_process_pool_executor_and_queue(unique_name, method):
    a = ndshm.create(unique_name, 1000, "i8", fill=3)
    ctx = mp.get_context(method)
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        assert list(ex.map(_attach_and_write, [unique_name], [5])) == [1000]
    assert (a == 5).all()
    q, out = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=_queue_worker, args=(q, out))
    p.start()
    q.put(a[100:200])
    assert out.get(timeout=60) == (500.0, unique_name)
    p.join(60)
    assert (a[100:200] == 0).all() and a[99] == 5


def test_one_mapping_for_many_views(unique_name):
    a = ndshm.create(unique_name, (1000,), "f4")
    data = [pickle.dumps(a[i:i + 1]) for i in range(1000)]
    fds_before = len(os.listdir("/proc/self/fd"))
    views = [pickle.loads(d) for d in data]
    n_segs, _ = _count_mappings(views)
    assert n_segs == 1
    assert len(os.listdir("/proc/self/fd")) <= fds_before
    # in a fresh process: a thousand unpickled slices share one mapping and one descriptor
    child = run_python(f"""
        import os, pickle, ndshm
        a = ndshm.attach({unique_name!r})
        before = ndshm.stats()["live_mappings"]
        fds = len(os.listdir("/proc/self/fd"))
        views = [pickle.loads(pickle.dumps(a[i:i + 1])) for i in range(1000)]
        print(ndshm.stats()["live_mappings"] - before, len(os.listdir("/proc/self/fd")) - fds)
    """)
    assert child.stdout.split() == ["0", "0"]


@pytest.mark.parametrize("method", CONTEXTS)
def test_racing_creators_exactly_one_wins(unique_name, method):
    ctx = mp.get_context(method)
    n = 6
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_race_create, args=(unique_name, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    got = sorted(results.get(timeout=60) for _ in range(n))
    for p in procs:
        p.join(60)
    assert got == ["lost"] * (n - 1) + ["won"]
    assert ndshm.attach(unique_name)[0] == 1
    ndshm.unlink(unique_name)


def test_crash_then_gc(tmp_path):
    d = tempfile.mkdtemp(prefix="ndshm-gc-", dir="/dev/shm")
    try:
        env = {"NDSHM_DIR": d}
        code = """
            import ndshm, sys, time
            a = ndshm.create("crashy", (10,), "f8")
            ndshm.create("kept", 3, persist=True)
            print("ready", flush=True)
            time.sleep(60)
        """
        import textwrap
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True,
                                env=child_env(**env))
        assert proc.stdout.readline().strip() == "ready"
        recs = {r.name: r for r in ndshm.list(d)}
        assert recs["crashy"].in_use and recs["crashy"].creator_pid == proc.pid
        # gc spares a segment a live process maps
        out = run_cli("gc", "--min-age", "0", **env)
        assert out.returncode == 0 and os.path.exists(shm_path("crashy", d))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        proc.stdout.close()
        recs = {r.name: r for r in ndshm.list(d)}
        assert not recs["crashy"].in_use  # the kernel dropped the dead process's flock
        out = run_cli("gc", "--min-age", "0", **env)
        assert out.returncode == 0, out.stderr
        assert "removed crashy" in out.stdout
        # an attacher killed with -9 stops counting as a user too
        attacher = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
            import ndshm, time
            a = ndshm.attach("kept")
            print("attached", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True, env=child_env(**env))
        assert attacher.stdout.readline().strip() == "attached"
        assert {r.name: r for r in ndshm.list(d)}["kept"].in_use
        attacher.kill()
        attacher.wait(30)
        attacher.stdout.close()
        assert not {r.name: r for r in ndshm.list(d)}["kept"].in_use
        assert not os.path.exists(shm_path("crashy", d))
        assert os.path.exists(shm_path("kept", d))  # persist=True survives gc
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_gc_skips_young_and_foreign(tmp_path):
    d = tempfile.mkdtemp(prefix="ndshm-gc-", dir="/dev/shm")
    try:
        with open(shm_path("foreign", d), "wb") as f:
            f.write(os.urandom(4096))
        with open(shm_path("blank", d), "wb") as f:
            f.write(b"\0" * 100)
        from ndshm import _cli
        assert _cli.main(["--dir", d, "gc"]) == 0  # both are younger than the grace period
        assert os.path.exists(shm_path("blank", d))
        assert _cli.main(["--dir", d, "gc", "--min-age", "0"]) == 0
        assert not os.path.exists(shm_path("blank", d))  # a dead creator's blank file
        assert os.path.exists(shm_path("foreign", d))  # not ours: left alone
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_random_and_truncated_files_are_corrupt(unique_name):
    path = shm_path(unique_name)
    with open(path, "wb") as f:
        f.write(os.urandom(4096))
    with pytest.raises(ndshm.CorruptSegmentError) as exc:
        ndshm.attach(unique_name)
    assert isinstance(exc.value, ValueError) and "magic" in str(exc.value)
    rec = [r for r in ndshm.list() if r.name == unique_name][0]
    assert rec.status == "corrupt" and not rec.in_use
    os.unlink(path)
    seg = ndshm.Segment.create(unique_name, 100, "f8", persist=True)
    seg.close()
    del seg  # its handle (and shared lock) goes with it: nobody is initialising the file
    collect()
    with open(path, "rb") as f:
        good = f.read()
    for cut in (0, 10, 700, 896, 4096, len(good) - 1):
        with open(path, "wb") as f:
            f.write(good[:cut])
        with pytest.raises(ndshm.CorruptSegmentError):
            ndshm.attach(unique_name)
    os.unlink(path)


def _fnv(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _reseal(hdr: bytearray) -> None:
    size = int.from_bytes(hdr[12:16], "little")
    hdr[632:640] = _fnv(bytes(hdr[0:16]) + bytes(hdr[20:632]) + bytes(hdr[896:size])).to_bytes(8, "little")


def test_every_flipped_header_byte_is_refused(unique_name):
    seg = ndshm.Segment.create(unique_name, (4, 4), np.dtype([("a", "<f4"), ("b", "u1")]), persist=True,
                               meta={"m": 1})
    seg.close()
    del seg
    collect()
    path = shm_path(unique_name)
    with open(path, "rb") as f:
        good = f.read()
    hsize = int.from_bytes(good[12:16], "little")
    accepted = 0
    for i in range(hsize):
        bad = bytearray(good)
        bad[i] ^= 0x10
        os.unlink(path)  # a new file each time: a mapping this process still caches is not reused
        with open(path, "wb") as f:
            f.write(bad)
        try:
            arr = ndshm.attach(unique_name)
        except ndshm.CorruptSegmentError:
            continue
        accepted += 1
        assert 640 <= i < 896, i  # only the sync slots are outside the checksum
        del arr
    assert accepted == 256
    # hostile but consistently checksummed headers: an object dtype, an out-of-range shape
    for offset, value in ((80, b"|O8\0"), (112, (1 << 40).to_bytes(8, "little")), (28, (40).to_bytes(4, "little"))):
        bad = bytearray(good[:hsize])
        bad[offset:offset + len(value)] = value
        bad[624:628] = b"\0\0\0\0"  # descr_len 0: fall back to the typestr
        bad[12:16] = (896 + int.from_bytes(bad[628:632], "little")).to_bytes(4, "little")
        bad[896:] = good[896 + int.from_bytes(good[624:628], "little"):hsize]
        _reseal(bad)
        with open(path, "wb") as f:
            f.write(bytes(bad) + good[len(bad):])
        with pytest.raises(ndshm.CorruptSegmentError):
            ndshm.attach(unique_name)
    os.unlink(path)


def _as_nobody_attach(name: str, readonly: bool) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ndshm._mappings.clear()  # the fork inherited this process's mappings: attach afresh
            os.setgid(65534)
            os.setuid(65534)
            try:
                ndshm.Segment.attach(name, readonly=readonly)
                code = 0
            except PermissionError:
                code = 13
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.WEXITSTATUS(status)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
def test_other_users_are_refused(unique_name):
    seg = ndshm.segment_of(ndshm.create(unique_name, 4))  # mode 0600
    assert os.stat(shm_path(unique_name)).st_mode & 0o777 == 0o600
    assert _as_nobody_attach(unique_name, False) == 13
    assert _as_nobody_attach(unique_name, True) == 13
    wide = ndshm.Segment.create(unique_name + "w", 4, mode=0o644)
    assert os.stat(shm_path(unique_name + "w")).st_mode & 0o777 == 0o644
    assert _as_nobody_attach(unique_name + "w", True) == 0
    assert _as_nobody_attach(unique_name + "w", False) == 13
    wide.close()
    seg.close()


@pytest.fixture
def small_tmpfs():
    yield from mounted_tmpfs("size=1m", "a tmpfs")


@pytest.fixture
def huge_tmpfs():
    yield from mounted_tmpfs("huge=always,size=64m", "a huge-page tmpfs")


@pytest.mark.system_wide  # a huge-page mount that every process's hugepages=True would find
def test_hugepages_named_use_a_huge_tmpfs(huge_tmpfs, unique_name, monkeypatch):
    from ndshm._dirs import huge_kind as _huge_kind, mounts as _mounts
    d = huge_tmpfs
    # an explicit huge-page tmpfs: ordinary files there, no hugetlb reservation needed
    seg = ndshm.Segment.create(unique_name, (512, 1024), "f8", dir=d, hugepages=True, fill=2.0)
    assert seg.dir == d and os.path.exists(os.path.join(d, "ndshm." + unique_name))
    child = run_python(f"""
        import ndshm
        print(ndshm.attach({unique_name!r}, dir={d!r}).sum())
    """)
    assert float(child.stdout) == 2.0 * 512 * 1024
    assert pickle.loads(pickle.dumps(seg.asarray()[3]))[0] == 2.0
    seg.close()
    assert not os.path.exists(os.path.join(d, "ndshm." + unique_name))
    # no directory given: the first huge-page mount this process may write to
    monkeypatch.delenv("NDSHM_DIR", raising=False)
    auto = ndshm.Segment.create(unique_name + "a", 10, hugepages=True)
    kinds = {mnt: _huge_kind(fstype, opts) for mnt, fstype, opts in _mounts()}
    assert auto.dir != "/dev/shm" and kinds.get(auto.dir) is not None
    assert os.path.exists(auto.path) and auto.path.startswith(auto.dir + "/")
    auto.close()


def _huge_free() -> int:
    with open("/proc/meminfo") as f:
        return int(next(line for line in f if line.startswith("HugePages_Free:")).split()[1])


@pytest.fixture
def hugetlb():
    """16 huge pages reserved for one test and a hugetlbfs mounted (root only); both undone after."""
    if os.geteuid() != 0:
        skip_or_fail("reserving huge pages needs root")
    knob = "/proc/sys/vm/nr_hugepages"
    with open(knob) as f:
        before = int(f.read())
    try:
        with open(knob, "w") as f:
            f.write(str(before + 16))
    except OSError as exc:
        skip_or_fail(f"cannot reserve huge pages: {exc}")
    d = tempfile.mkdtemp(prefix="ndshm-hugetlb-")
    try:
        if _huge_free() < 16:
            skip_or_fail("the kernel granted fewer than 16 huge pages")
        rc = subprocess.run(["mount", "-t", "hugetlbfs", "none", d], capture_output=True)
        if rc.returncode != 0:
            skip_or_fail(f"cannot mount hugetlbfs: {rc.stderr.decode().strip()}")
        try:
            yield d
        finally:
            subprocess.run(["umount", "-l", d], capture_output=True)
    finally:
        os.rmdir(d)
        with open(knob, "w") as f:
            f.write(str(before))


@pytest.mark.system_wide  # reserves huge pages, machine-wide
def test_hugepages_backed_by_hugetlb(hugetlb, unique_name, monkeypatch):
    """With huge pages reserved, hugepages=True really uses them: memfd (MFD_HUGETLB), anonymous
    (MAP_HUGETLB) and named segments in a hugetlbfs mount, each shared with another process."""
    free0 = _huge_free()
    shape = (1 << 19,)  # 4 MiB of float64: two huge pages
    for kind in ("memfd", "anonymous"):
        seg = ndshm.Segment.create(None, shape, "f8", kind=kind, hugepages=True, populate=True)
        assert _huge_free() < free0  # huge pages, not 4 KiB ones
        a = seg.asarray()
        pid = os.fork()
        if pid == 0:  # the child writes through its own mapping (inherited, or from the fd)
            try:
                b = ndshm.Segment.from_fd(seg.fd).asarray() if kind == "memfd" else a
                b[:] = 7.0
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert float(a.sum()) == 7.0 * shape[0]
        seg.close()
        del a, seg  # the mapping (and a memfd's descriptor) goes with the last reference
        collect()
        assert _huge_free() == free0
    # a named segment in the hugetlbfs mount, attached by name from another process
    arr = ndshm.create(unique_name, shape, "f8", dir=hugetlb, hugepages=True, fill=2.0)
    assert os.path.exists(os.path.join(hugetlb, "ndshm." + unique_name)) and _huge_free() < free0
    child = run_python(f"""
        import ndshm
        a = ndshm.attach({unique_name!r}, dir={hugetlb!r})
        a[0] = -1.0
        print(a.sum())
    """)
    assert float(child.stdout) == 2.0 * (shape[0] - 1) - 1.0 and arr[0] == -1.0
    # no directory given: hugepages=True finds a huge-page mount it may write to by itself
    monkeypatch.delenv("NDSHM_DIR", raising=False)
    auto = ndshm.Segment.create(unique_name + "a", 10, hugepages=True)
    assert auto.dir != "/dev/shm" and os.path.exists(auto.path)
    auto.close()
    ndshm.segment_of(arr).close()  # the creator owns the name until it closes the segment
    del arr, auto
    collect()
    assert not os.path.exists(os.path.join(hugetlb, "ndshm." + unique_name)) and _huge_free() == free0


def test_enospc_fails_at_create(small_tmpfs):
    d = small_tmpfs
    small = ndshm.Segment.create("fits", 100_000, dir=d)
    with pytest.raises(ndshm.NoSpaceError, match="no space in " + d) as exc:
        ndshm.Segment.create("toobig", 4 << 20, dir=d)
    assert exc.value.errno == 28 and isinstance(exc.value, ndshm.NoSpaceError)
    assert d in str(exc.value) and str((4 << 20) + 4096) in str(exc.value)  # the data plus one header page
    assert dir_files(d) == ["ndshm.fits"]  # the partial file is gone
    # NDSHM_DIR points there too, and a stdlib-style block fails the same way up front
    child = run_python("""
        import ndshm
        try:
            ndshm.create("big", 2 << 20)
        except OSError as exc:
            print(exc.errno)
    """, NDSHM_DIR=d)
    assert child.stdout.strip() == "28"
    small.close()
    assert dir_files(d) == []


def test_stress_no_leaks(unique_name):
    ndshm._mappings.clear()  # what earlier tests left kept mapped (bounded, and not this test's)
    collect()
    fds = len(os.listdir("/proc/self/fd"))
    stats = ndshm.stats()
    for i in range(300):
        name = f"{unique_name}-{i}"
        seg = ndshm.Segment.create(name, (64, 64), "f4", fill=i)
        b = ndshm.attach(name, readonly=True)
        assert b[0, 0] == i
        v = pickle.loads(pickle.dumps(seg.asarray()[3:5]))
        assert v[0, 0] == i
        if i % 2:
            seg.close()
        else:
            seg.unlink()
        del seg, b, v
    collect()
    if not PYPY:
        now = ndshm.stats()
        assert now["live_mappings"] == stats["live_mappings"] and now["live_segments"] == stats["live_segments"]
        assert now["mapped_bytes"] == stats["mapped_bytes"]
        assert len(os.listdir("/proc/self/fd")) == fds
    assert not [e for e in os.listdir("/dev/shm") if e.startswith("ndshm." + unique_name)]


_KEEP = []


def _create_and_exit(name, conn):
    _KEEP.append(ndshm.create(name, 10))  # alive until the process ends
    _KEEP.append(ndshm.create(name + "p", 10, persist=True))
    conn.send("made")
    conn.recv()  # hold until the parent has looked
    del conn


@pytest.mark.parametrize("method", CONTEXTS)
def test_multiprocessing_child_unlinks_its_segments_at_exit(unique_name, method):
    ctx = mp.get_context(method)
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_create_and_exit, args=(unique_name, child))
    p.start()
    assert parent.recv() == "made"
    assert os.path.exists(shm_path(unique_name))
    parent.send("go")
    p.join(60)
    assert p.exitcode == 0
    assert not os.path.exists(shm_path(unique_name))  # the child's finalizer removed it (no atexit there)
    assert os.path.exists(shm_path(unique_name + "p"))
    ndshm.unlink(unique_name + "p")


def test_a_new_tmpfs_with_an_unmounted_ones_numbers_gets_its_own_process_table():
    """A directory this process used (its tiny tmpfs could not hold a process table) is unmounted
    and another tmpfs is mounted that the kernel gives the same device and root inode: segments
    there register in the new directory, not the gone one's path (it failed with ENOENT naming
    the unmounted directory)."""
    if os.geteuid() != 0:
        skip_or_fail("mounting a tmpfs needs root")
    proc = run_python("""
        import os, subprocess, tempfile, ndshm
        def mount(opts):
            d = tempfile.mkdtemp(prefix="ndshm-tmpfs-")
            subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", d], check=True)
            return d
        first = mount("size=4k")                 # one page: no room for a process table
        try:
            ndshm.Segment.create("x", 64, dir=first).close()
        except OSError:
            pass
        dev = os.stat(first).st_dev
        subprocess.run(["umount", "-l", first], check=True)
        import time
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:       # until a new mount reuses the device number (another
            second = mount("size=1m")            # test's mount may hold it meanwhile: then wait)
            if os.stat(second).st_dev == dev:
                break
            subprocess.run(["umount", "-l", second], check=True)
            time.sleep(0.05)
        else:
            print("no reuse")
            raise SystemExit
        s = ndshm.Segment.create("y", 64, dir=second)
        assert any(n.startswith(".ndshm-procs-") for n in os.listdir(second)), os.listdir(second)
        s.close()
        subprocess.run(["umount", "-l", second], check=True)
        print("ok")
    """)
    assert proc.stdout.split() == ["ok"], proc.stdout  # "no reuse": the kernel gave no mount the same numbers

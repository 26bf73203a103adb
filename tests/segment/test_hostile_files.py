"""Planted files against every attach (issue 16): sparse files on a small private tmpfs (their
holes raised SIGBUS once the file system was full), a process holding the file's exclusive flock
(attach blocked for ever, deaf to Ctrl-C), and a FIFO under a ``file://`` name (open blocked)."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import ndshm
from conftest import child_env, collect, mounted_tmpfs, run_python, skip_or_fail

_libc = ctypes.CDLL(None, use_errno=True)
_PUNCH = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


def _punch(path: str, offset: int, length: int) -> None:
    """Deallocate ``length`` bytes of ``path`` at ``offset`` (a hole; the size stays)."""
    fd = os.open(path, os.O_RDWR)
    try:
        if _libc.fallocate(fd, _PUNCH, ctypes.c_long(offset), ctypes.c_long(length)) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), path)
    finally:
        os.close(fd)


def _fill(d: str) -> None:
    """Take every free byte of the file system at ``d``, so that touching a hole raises SIGBUS."""
    fd = os.open(os.path.join(d, "filler"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        size = 1 << 20
        while size >= 4096:
            try:
                rc = os.posix_fallocate(fd, os.fstat(fd).st_size, size)
                if rc:  # PyPy returns the error number instead of raising it
                    raise OSError(rc, os.strerror(rc))
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                size //= 2
    finally:
        os.close(fd)


@pytest.fixture
def tmpfs():
    """A private 64 MiB tmpfs (mounted as root, unmounted afterwards)."""
    yield from mounted_tmpfs("size=64m,mode=0700", "a private tmpfs")


def _blocks(path: str) -> int:
    return os.stat(path).st_blocks * 512


def _in_child(code: str, d: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a child that prints the outcome; a SIGBUS shows as returncode -7."""
    proc = run_python(f"import ndshm, sys, numpy as np\nD = {d!r}\n" + textwrap.dedent(code), check=False)
    assert proc.returncode != -signal.SIGBUS, f"SIGBUS\n{proc.stderr}"
    assert proc.returncode == 0, proc.stderr
    return proc


# ---- sparse files -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["queue", "broadcast", "segment"])
def test_sparse_segment_or_ring_is_refused_at_attach(tmpfs, kind):
    """A ring (or segment) whose data is holes on a full tmpfs: Queue.attach and Broadcast.attach
    died with SIGBUS pre-faulting the ring, ndshm.attach later on the first read."""
    if kind == "queue":
        ndshm.Queue("r", slots=16, slot_bytes=1 << 20, dir=tmpfs, persist=True).close()
        attach = "ndshm.Queue.attach('r', dir=D)"
    elif kind == "broadcast":
        ndshm.Broadcast("r", slots=16, slot_bytes=1 << 20, dir=tmpfs, persist=True).close()
        attach = "ndshm.Broadcast.attach('r', dir=D)"
    else:
        ndshm.create("r", (16 << 20,), np.uint8, persist=True, dir=tmpfs)
        attach = "ndshm.attach('r', dir=D, populate=True).sum()"
    path = os.path.join(tmpfs, "ndshm.r")
    size = os.stat(path).st_size
    assert _blocks(path) >= size  # ndshm reserved every page
    _punch(path, 64 << 10, size - (64 << 10))
    _fill(tmpfs)
    proc = _in_child(f"""
        try:
            {attach}
        except ndshm.CorruptSegmentError as e:
            print("refused:", e)
        else:
            print("attached")
    """, tmpfs)
    assert proc.stdout.startswith("refused:") and path in proc.stdout and "holes" in proc.stdout, proc.stdout


def test_sparse_compat_block_is_reserved_or_refused(tmpfs):
    """A ShareableList block of 1 GiB, all holes, on a 64 MiB tmpfs died with SIGBUS; a block
    the standard library made (ftruncate: sparse) that fits is reserved and works."""
    big = os.path.join(tmpfs, "big")
    with open(big, "wb") as f:
        f.truncate(1 << 30)
    small = os.path.join(tmpfs, "small")
    with open(small, "wb") as f:
        f.truncate(4 << 20)
        f.write((3).to_bytes(8, "little"))
    proc = _in_child("""
        import ndshm.compat.shared_memory as sm
        sm.SHM_DIR = D
        try:
            sm.ShareableList(name="big")
        except ndshm.NoSpaceError as e:
            print("refused:", e)
        s = sm.SharedMemory("small")
        print("small", s.size, bytes(s.buf[:1])[0])
        s.close()
    """, tmpfs)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("refused:") and big in lines[0], proc.stdout
    assert lines[1] == f"small {4 << 20} 3"
    assert _blocks(small) >= 4 << 20  # reserved by the attacher, as ndshm reserves its own


@pytest.mark.parametrize("ro", [False, True])
def test_sparse_sharedarray_segment(tmpfs, ro):
    """A SharedArray segment whose data is all holes attached, and reading it was SIGBUS."""
    import ndshm.compat.sharedarray as SA
    path = os.path.join(tmpfs, "sa")
    SA.create("file://" + path, (16 << 20,), np.uint8)
    _punch(path, 0, 16 << 20)
    _fill(tmpfs)
    proc = _in_child(f"""
        import ndshm.compat.sharedarray as SA
        try:
            a = SA.attach("file://" + D + "/sa", ro={ro})
            print("read", int(a.sum()))
        except ndshm.NoSpaceError as e:
            print("refused:", e)
    """, tmpfs)
    assert proc.stdout.startswith("refused:") and path in proc.stdout, proc.stdout


def test_a_read_only_attacher_who_may_not_write_is_refused(tmpfs):
    """Without write permission the holes cannot be reserved: CorruptSegmentError, never SIGBUS."""
    if os.getuid() != 0:
        skip_or_fail("needs root to run the attacher as another user")
    path = os.path.join(tmpfs, "sparse")
    with open(path, "wb") as f:
        f.truncate(1 << 30)
    os.chmod(path, 0o644)
    os.chmod(tmpfs, 0o755)
    proc = run_python(f"""
        import os, ndshm
        os.setgid(65534); os.setuid(65534)
        try:
            ndshm.attach_raw({path!r}, (1 << 30,), "u1", readonly=True).sum()
        except ndshm.CorruptSegmentError as e:
            print("refused:", e)
    """, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("refused:") and "holes" in proc.stdout, proc.stdout


# ---- a process holding the file's exclusive flock -----------------------------------------------

_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails (and the test with it) if anyone maps it
print("held", flush=True)
time.sleep(60)
"""


def _hold(path: str) -> subprocess.Popen:
    collect()  # nothing of ours may still map it (PyPy frees late)
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, path], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
    except BaseException:
        p.kill()
        raise
    return p


@pytest.fixture(params=["queue", "broadcast", "segment", "shareable", "sharedarray"])
def planted(request, unique_name):
    """(path, attach code) of a ring, segment or compat block that exists and that no process maps
    (so that another can take its exclusive flock); removed afterwards."""
    kind, d = request.param, os.environ.get("NDSHM_DIR", "/dev/shm")
    path = os.path.join(d, f"ndshm.{unique_name}")
    if kind == "queue":
        ndshm.Queue(unique_name, slots=2, slot_bytes=64, persist=True).close()
        attach = f"ndshm.Queue.attach({unique_name!r}, dir={d!r})"
    elif kind == "broadcast":
        ndshm.Broadcast(unique_name, slots=2, slot_bytes=64, persist=True).close()
        attach = f"ndshm.Broadcast.attach({unique_name!r}, dir={d!r})"
    elif kind == "segment":
        run_python(f"import ndshm; ndshm.create({unique_name!r}, 4, persist=True)")  # mapped by no one after
        attach = f"ndshm.attach({unique_name!r}, dir={d!r})"
    elif kind == "shareable":
        from ndshm.compat.shared_memory import ShareableList
        ShareableList([1, 2], name=unique_name).shm.close()
        path = os.path.join("/dev/shm", unique_name)
        attach = f"__import__('ndshm.compat.shared_memory').compat.shared_memory.ShareableList(name={unique_name!r})"
    else:
        import ndshm.compat.sharedarray as SA
        path = os.path.join(d, unique_name)
        SA.create("file://" + path, 4)
        attach = f"__import__('ndshm.compat.sharedarray').compat.sharedarray.attach({'file://' + path!r})"
    yield path, attach
    try:
        os.unlink(path)
    except OSError:
        pass


def test_attach_under_an_exclusive_flock_is_busy_within_the_bound(planted):
    """Any process that may read a segment file can take its LOCK_EX and keep it: attach blocked
    for ever on its shared lock. Now it waits a bounded time, then BusyError names the file."""
    path, attach = planted
    holder = _hold(path)
    try:
        proc = run_python(f"""
            import time, ndshm
            t = time.monotonic()
            try:
                {attach}
            except ndshm.BusyError as e:
                print(f"busy after {{time.monotonic() - t:.2f}} s:", e)
        """, timeout=30, check=False)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("busy after") and path in proc.stdout, proc.stdout
    assert 1.5 < float(proc.stdout.split()[2]) < 10


def test_ctrl_c_interrupts_an_attach_waiting_for_the_lock(planted):
    """EINTR was retried in C, so Ctrl-C could not stop a blocked attach; now it raises
    KeyboardInterrupt at once."""
    path, attach = planted
    holder = _hold(path)
    try:
        child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import sys, time, ndshm
            print("attaching", flush=True)
            t = time.monotonic()
            try:
                {attach}
            except KeyboardInterrupt:
                print(f"interrupted after {{time.monotonic() - t:.2f}} s", flush=True)
        """)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
        assert child.stdout.readline().strip() == "attaching"
        time.sleep(0.5)  # well inside the attach's wait (2 s)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
    finally:
        holder.kill()
        holder.wait()
    assert child.returncode == 0, err
    assert out.startswith("interrupted after"), (out, err)
    assert float(out.split()[2]) < 1.5, out  # 0.5 s, not the 2 s bound


# ---- FIFOs --------------------------------------------------------------------------------------

def test_sharedarray_attach_of_a_fifo_does_not_block(tmp_path):
    """attach("file://" + fifo) blocked for ever in the C open (no O_NONBLOCK)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    proc = run_python(f"""
        import ndshm, ndshm.compat.sharedarray as SA
        for ro in (False, True):
            try:
                SA.attach("file://" + {str(fifo)!r}, ro=ro)
            except ValueError as e:
                print("refused:", e)
        try:
            ndshm.attach_raw({str(fifo)!r}, (4,), "u1")
        except ValueError as e:
            print("refused:", e)
    """, timeout=20, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 and all(line.startswith("refused:") and "not a regular file" in line for line in lines), \
        proc.stdout

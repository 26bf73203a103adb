"""ndshm.compat.sharedarray against the real SharedArray package: one script run with each must
print the same, and a segment made by either attaches in the other (in separate processes)."""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
import textwrap
import uuid
from functools import lru_cache

import numpy as np
import pytest

from conftest import ROOT, child_env, run_python, skip_or_fail
import ndshm
import ndshm.compat.sharedarray as sa


@lru_cache(maxsize=1)
def _real_python() -> str | None:
    """An interpreter that imports the real SharedArray: this one, else the project's CPython venv
    (SharedArray is a CPython extension, so PyPy runs it there)."""
    for exe in (sys.executable, str(ROOT / ".venv" / "bin" / "python")):
        if os.path.exists(exe) and subprocess.run([exe, "-c", "import SharedArray"], capture_output=True,
                                                  env=child_env()).returncode == 0:
            return exe
    return None


def _run(exe: str, code: str, *args: str) -> str:
    proc = subprocess.run([exe, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=120, env=child_env())
    if proc.returncode != 0:
        pytest.fail(f"{exe} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc.stdout


@pytest.fixture
def real() -> str:
    exe = _real_python()
    if exe is None:
        skip_or_fail("the SharedArray package is not installed (pip install SharedArray)")
    return exe


@pytest.fixture
def names(tmp_path):
    """A unique name prefix; every /dev/shm file under it is removed afterwards."""
    prefix = f"ndshm-sa-{uuid.uuid4().hex[:10]}"
    yield prefix
    for entry in os.listdir("/dev/shm"):
        if entry.startswith(prefix):
            os.unlink(os.path.join("/dev/shm", entry))


# The same script for both modules: argv[1] is the module to import, argv[2] a name prefix,
# argv[3] a directory for file:// segments. It prints one JSON line per step.
SCRIPT = r"""
import json, os, sys
import numpy as np
mod, p, d = sys.argv[1:4]
SA = __import__(mod, fromlist=["create"])
out = []
def step(what, fn):
    try:
        v = fn()
    except Exception as exc:
        v = ["raised", type(exc).__name__, getattr(exc, "errno", None), str(getattr(exc, "filename", None))]
    out.append([what, v])

a = SA.create("shm://" + p + "a", (3, 4), np.int32)
step("create", lambda: [str(a.dtype), list(a.shape), int(a.sum()), a.flags.writeable, a.flags.c_contiguous])
a[1, 2] = 7
step("base", lambda: [a.base.name, a.base.size, a.base.addr == a.__array_interface__["data"][0]])
b = SA.attach(p + "a")
step("attach bare name", lambda: [int(b[1, 2]), str(b.dtype), list(b.shape)])
b[0, 0] = 5
step("shared", lambda: int(a[0, 0]))
r = SA.attach("shm://" + p + "a", ro=True)
step("ro", lambda: [r.flags.writeable, int(r[1, 2])])
def write_ro():
    r[0, 0] = 1
step("write ro", write_ro)
step("size on disk", lambda: os.path.getsize("/dev/shm/" + p + "a"))
step("list", lambda: sorted([d_.name.decode(), d_.dtype.__name__, list(d_.dims)] for d_ in SA.list()
                            if d_.name.decode().startswith(p)))
step("list type", lambda: [type(SA.list()).__name__, [f for f in type(SA.list()[0])._fields]
                           if hasattr(type(SA.list()[0]), "_fields") else ["name", "dtype", "dims"]])
step("msync", lambda: [a.base.msync(SA.MS_SYNC), a.base.msync(SA.MS_ASYNC | SA.MS_INVALIDATE)])
step("mlock", lambda: [a.base.mlock(), a.base.munlock()])
step("constants", lambda: [SA.MS_ASYNC, SA.MS_SYNC, SA.MS_INVALIDATE])
step("exists", lambda: SA.create(p + "a", 3))
for dt in ["f8", ">f8", "u1", "?", "c16", "f2", "S5", "U3", [("x", "i4"), ("y", "f8")], "M8", "int64"]:
    def mk(dt=dt):
        x = SA.create(p + "dt", (2, 3), dt)
        y = SA.attach(p + "dt")
        res = [str(x.dtype), str(y.dtype), list(y.shape)]
        SA.delete(p + "dt")
        return res
    step("dtype " + str(dt), mk)
def scalar():
    x = SA.create(p + "s", ())
    x[()] = 2.5
    res = [list(SA.attach(p + "s").shape), float(SA.attach(p + "s")), os.path.getsize("/dev/shm/" + p + "s")]
    SA.delete(p + "s")
    return res
step("0-d", scalar)
def empty():
    x = SA.create(p + "e", (0, 5), "f4")
    res = [list(SA.attach(p + "e").shape), os.path.getsize("/dev/shm/" + p + "e")]
    SA.delete(p + "e")
    return res
step("empty", empty)
def as_file():
    path = os.path.join(d, "seg")
    x = SA.create("file://" + path, 10, "i2")
    x[:] = np.arange(10)
    x.base.msync(SA.MS_SYNC)
    y = SA.attach("file://" + path)
    res = [int(y.sum()), os.path.getsize(path), x.base.name]
    SA.delete("file://" + path)
    return res + [os.path.exists(path)]
step("file://", as_file)
step("shape int", lambda: list(SA.create(p + "i", np.int64(4)).shape))
SA.delete(p + "i")
step("bad scheme", lambda: SA.create("x://" + p, 3))
for bad in ["a/b", "", "/", "shm://a/b"]:
    step("bad name " + bad, lambda bad=bad: SA.create(bad, 3))
step("attach missing", lambda: SA.attach(p + "missing"))
step("delete missing", lambda: SA.delete(p + "missing"))
with open("/dev/shm/" + p + "junk", "wb") as f:
    f.write(b"x" * 1000)
step("attach junk", lambda: SA.attach(p + "junk"))
step("delete junk", lambda: SA.delete(p + "junk"))
os.unlink("/dev/shm/" + p + "junk")
step("zero itemsize", lambda: SA.create(p + "z", 3, "V0"))
step("bad dtype", lambda: SA.create(p + "z", 3, "notadtype"))
step("bad shape", lambda: SA.create(p + "z", "abc"))
step("name not str", lambda: SA.create(5, 3))
SA.delete("shm://" + p + "a")
step("attach deleted", lambda: SA.attach(p + "a"))
step("views survive", lambda: [int(a[1, 2]), int(b[0, 0])])
for row in out:
    print(json.dumps(row))
"""


def test_the_same_script_gives_the_same_results(real, names, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "ours").mkdir()
    theirs = _run(real, SCRIPT, "SharedArray", names + "r-", str(tmp_path / "real")).splitlines()
    ours = _run(sys.executable, SCRIPT, "ndshm.compat.sharedarray", names + "o-", str(tmp_path / "ours")).splitlines()
    assert len(ours) == len(theirs) > 40
    for mine, ref in zip(ours, theirs):
        m, r = json.loads(mine), json.loads(ref)
        if m[0] == "base":
            m[1][0], r[1][0] = m[1][0].replace(names + "o-", "P"), r[1][0].replace(names + "r-", "P")
        if m[0] == "file://":
            m[1][2], r[1][2] = os.path.basename(m[1][2]), os.path.basename(r[1][2])
        if isinstance(m[1], list) and m[1][:1] == ["raised"]:
            m[1][3] = m[1][3].replace(names + "o-", "P")
            r[1][3] = r[1][3].replace(names + "r-", "P")
        if m[0] == "list":
            m[1] = [[n.replace(names + "o-", "P"), *rest] for n, *rest in m[1]]
            r[1] = [[n.replace(names + "r-", "P"), *rest] for n, *rest in r[1]]
        assert m == r, f"step {m[0]!r}: ndshm {m[1]} vs SharedArray {r[1]}"


# A child that makes or changes a segment with the module given; used in both directions.
CHILD = r"""
import sys
import numpy as np
mod, action, name = sys.argv[1:4]
SA = __import__(mod, fromlist=["create"])
if action == "make":
    a = SA.create(name, (4, 5), np.float32)
    a[:] = np.arange(20, dtype=np.float32).reshape(4, 5)
    if name.startswith("file://"):
        a.base.msync(SA.MS_SYNC)
elif action == "check":
    a = SA.attach(name, ro=True)
    print(a.dtype, a.shape, float(a.sum()), float(a[3, 4]))
    SA.delete(name)
"""


@pytest.mark.parametrize("scheme", ["shm://", "", "file://"])
def test_a_segment_made_by_sharedarray_attaches_in_ndshm_and_back(real, names, tmp_path, scheme):
    name = scheme + (str(tmp_path / "seg") if scheme == "file://" else names + "x")
    _run(real, CHILD, "SharedArray", "make", name)
    a = sa.attach(name)
    assert a.dtype == np.float32 and a.shape == (4, 5) and a.sum() == 190
    a[3, 4] = 100
    b = ndshm.attach_raw(sa._path(name), (20,), np.float32)  # the same bytes, seen raw
    assert b[19] == 100
    assert _run(real, CHILD, "SharedArray", "check", name).split() == ["float32", "(4,", "5)", "271.0", "100.0"]
    assert not os.path.exists(sa._path(name))


@pytest.mark.parametrize("scheme", ["shm://", "", "file://"])
def test_a_segment_made_by_ndshm_attaches_in_sharedarray(real, names, tmp_path, scheme):
    name = scheme + (str(tmp_path / "seg") if scheme == "file://" else names + "y")
    _run(sys.executable, CHILD, "ndshm.compat.sharedarray", "make", name)
    assert _run(real, CHILD, "SharedArray", "check", name).split() == ["float32", "(4,", "5)", "190.0", "19.0"]
    assert not os.path.exists(sa._path(name))
    # and with ndshm on both sides
    _run(sys.executable, CHILD, "ndshm.compat.sharedarray", "make", name)
    assert _run(sys.executable, CHILD, "ndshm.compat.sharedarray", "check", name).split()[3] == "190.0"


# ---- ndshm's own guarantees (no reference needed) -----------------------------------------------

def _raw_segment(path: str, data: bytes, typenum: int, itemsize: int, dims: tuple, *, size=None,
                 maxdims: int = 64, magic: bytes = b"[SharedArray]") -> None:
    meta = struct.pack("=16sQiii", magic, len(data) if size is None else size, typenum, itemsize, len(dims))
    meta += struct.pack(f"={maxdims}q", *dims, *([0] * (maxdims - len(dims))))
    with open(path, "wb") as f:
        f.write(data + meta)


def test_reads_segments_of_a_sharedarray_built_with_numpy_1(names):
    path = "/dev/shm/" + names + "old"
    _raw_segment(path, np.arange(6, dtype=np.int16).tobytes(), np.dtype(np.int16).num, 2, (2, 3), maxdims=32)
    a = sa.attach(names + "old")
    assert a.dtype == np.int16 and a.shape == (2, 3) and a[1, 2] == 5
    assert (names.encode() + b"old", np.int16, (2, 3)) in sa.list()
    sa.delete(names + "old")


@pytest.mark.parametrize("case", ["too big", "size mismatch", "negative dim", "bad typenum", "object",
                                  "itemsize mismatch", "too many dims"])
def test_corrupt_metadata_raises_instead_of_mapping_past_the_file(names, case):
    path = "/dev/shm/" + names + "bad"
    data, num, isz, dims, size = bytes(48), np.dtype("f8").num, 8, (6,), None
    if case == "too big":
        dims, size = (10**6,), 8 * 10**6
    elif case == "size mismatch":
        size = 40
    elif case == "negative dim":
        dims, size = (-6,), 48
    elif case == "bad typenum":
        num = 99
    elif case == "object":
        num = np.dtype(object).num
    elif case == "itemsize mismatch":
        isz = 4
    _raw_segment(path, data, num, isz, dims, size=size)
    if case == "too many dims":
        with open(path, "r+b") as f:
            f.seek(48 + 32)
            f.write(struct.pack("=i", 65))
    with pytest.raises(ndshm.CorruptSegmentError, match=names + "bad"):
        sa.attach(names + "bad")
    with pytest.raises(ndshm.CorruptSegmentError, match=names + "bad"):
        sa.delete(names + "bad")
    assert names.encode() + b"bad" not in [d.name for d in sa.list()]


def test_refuses_what_sharedarray_would_crash_on_or_lose(names):
    with pytest.raises(ValueError, match="negative"):
        sa.create(names + "n", -1)  # SharedArray segfaults here
    with pytest.raises(TypeError, match="Python objects"):
        sa.create(names + "o", 3, object)  # SharedArray stores pointers no other process can follow
    with pytest.raises(TypeError, match="unit"):
        sa.create(names + "m", 3, "M8[s]")  # its metadata has no unit: it would read back as 'M8'
    if hasattr(getattr(np, "dtypes", None), "StringDType"):  # NumPy 2 only (np.dtypes is new in 1.25)
        with pytest.raises(TypeError, match="Python objects"):
            sa.create(names + "t", 3, np.dtypes.StringDType())  # its items point into a private arena
    assert not [e for e in os.listdir("/dev/shm") if e.startswith(names)]


def test_a_dtype_the_metadata_cannot_name_is_refused(names, monkeypatch):
    monkeypatch.setattr(sa, "_BY_TYPENUM", {k: v for k, v in sa._BY_TYPENUM.items() if v != np.float16})
    with pytest.raises(TypeError, match="float16 cannot be described"):
        sa.create(names + "h", 3, np.float16)
    assert not os.path.exists("/dev/shm/" + names + "h")


def test_attached_and_created_arrays_hold_a_shared_flock(names):
    a = sa.create(names + "lk", 8, "u1")
    proc = run_python(f"""
        import fcntl, os
        fd = os.open('/dev/shm/{names}lk', os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            print('free')
        except BlockingIOError:
            print('held')
    """)
    assert proc.stdout.strip() == "held"
    sa.delete(names + "lk")
    a[0] = 1  # still mapped after delete


def test_a_full_shm_dir_fails_at_create_not_later(names, monkeypatch):
    from ndshm.compat import shared_memory
    # more than the whole tmpfs holds (not just more than is free): the kernel refuses it before
    # allocating a page, where free + 1 GiB made it fill /dev/shm, which is sized to all the RAM
    # here, and the OOM killer ended whatever process it chose (pytest, another user's job)
    free = os.statvfs("/dev/shm").f_blocks * os.statvfs("/dev/shm").f_frsize
    with pytest.raises(OSError, match="no space in /dev/shm for .* bytes: '" + names + "huge'") as info:
        sa.create(names + "huge", free + (1 << 30), "u1")
    assert info.value.errno == errno.ENOSPC and not os.path.exists("/dev/shm/" + names + "huge")
    assert shared_memory.SHM_DIR == "/dev/shm"

"""Segments in one process: create/attach, dtypes, meta, read-only, lifetime, pickling, kinds, errors."""

from __future__ import annotations

import os
import pickle
import re
import socket
import sys

import numpy as np
import pytest

import ndshm
from conftest import PYPY, ROOT, collect, run_python, skip_or_fail


def shm_path(name: str, d: str | None = None) -> str:
    return os.path.join(d or os.environ.get("NDSHM_DIR", "/dev/shm"), "ndshm." + name)


def test_create_attach_roundtrip(unique_name):
    a = ndshm.create(unique_name, (3, 4), "f4", fill=1.5)
    assert isinstance(a, np.ndarray) and isinstance(a, ndshm.SharedArray)
    assert a.shape == (3, 4) and a.dtype == np.float32 and (a == 1.5).all()
    assert a.__array_interface__["data"][0] % 64 == 0
    b = ndshm.attach(unique_name)
    assert b.shape == (3, 4) and b.dtype == np.float32
    b[1, 2] = 7
    assert a[1, 2] == 7
    assert ndshm.segment_of(a) is ndshm.segment_of(b)  # one mapping per segment per process
    assert ndshm.exists(unique_name)
    seg = ndshm.segment_of(a)
    assert seg.name == unique_name and seg.kind == "named" and seg.creator_pid == os.getpid()
    assert seg.nbytes == 48 and seg.address % 4096 == 0 and not seg.readonly and seg.fd >= 0


@pytest.mark.parametrize("dtype", [
    "f8", "<i2", ">u4", "c16", "U5", "S3", "M8[ns]", "?",
    np.dtype([("x", "<i4"), ("y", "<f8")], align=True),
    np.dtype([("a", "u1"), ("b", "<f4", (2, 3))]),
])
def test_dtypes_roundtrip(unique_name, dtype):
    dt = np.dtype(dtype)
    seg = ndshm.Segment.create(unique_name, (4, 2), dt)
    arr = seg.asarray()
    other = ndshm.Segment.attach(unique_name)
    assert other is seg
    child = run_python(f"""
        import ndshm, numpy as np
        a = ndshm.attach({unique_name!r})
        print(repr(a.dtype), a.shape)
    """)
    assert child.stdout.strip() == f"{arr.dtype!r} (4, 2)"
    assert arr.dtype == dt
    seg.close()


def test_orders_shapes_and_alignment(unique_name):
    f = ndshm.create(unique_name, (3, 5), "i8", order="F", align=4096)
    assert f.flags.f_contiguous and not f.flags.c_contiguous
    assert f.__array_interface__["data"][0] % 4096 == 0
    scalar = ndshm.create(unique_name + "s", (), "f8", fill=2.0)
    assert scalar.shape == () and scalar[()] == 2.0
    empty = ndshm.create(unique_name + "e", (0, 7), "f4")
    assert empty.shape == (0, 7)
    sub = ndshm.create(unique_name + "u", 4, ("f4", (2,)))
    assert sub.shape == (4, 2) and sub.dtype == np.float32
    big = ndshm.Segment.create(unique_name + "b", 10, "u1", align="huge")
    assert big.address % (2 << 20) == 0
    big.close()


def test_meta_bytes_and_json(unique_name):
    s1 = ndshm.Segment.create(unique_name, 3, meta=b"\x00raw")
    assert s1.meta == b"\x00raw"
    s2 = ndshm.Segment.create(unique_name + "j", 3, meta={"a": [1, 2], "b": "x"})
    assert ndshm.Segment.attach(unique_name + "j").meta == {"a": [1, 2], "b": "x"}
    assert ndshm.Segment.create(unique_name + "n", 3).meta is None
    with pytest.raises(ValueError, match="meta"):
        ndshm.Segment.create(unique_name + "big", 3, meta=b"x" * 5000)
    with pytest.raises(TypeError, match="meta <object object at .*> is neither bytes nor JSON-serialisable"):
        ndshm.Segment.create(unique_name + "obj", 3, meta=object())
    s1.close()
    s2.close()


def test_readonly_views(unique_name):
    a = ndshm.create(unique_name, 10, "i4", fill=3)
    r = ndshm.attach(unique_name, readonly=True)
    assert not r.flags.writeable and a.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        r[0] = 1
    # a read-only mapping in another process: writing raises, never segfaults
    child = run_python(f"""
        import ndshm
        seg = ndshm.Segment.attach({unique_name!r}, readonly=True)
        r = seg.asarray()
        assert seg.readonly and not r.flags.writeable
        try:
            r[0] = 5
        except ValueError:
            print("refused", r.sum())
        try:
            seg.sync_address(0)
        except PermissionError:
            print("no sync")
    """)
    assert child.stdout.split() == ["refused", "30", "no", "sync"]
    assert not ndshm.Segment.attach(unique_name).readonly


def _mappings_of(path: str) -> int:
    """How many of this process's mappings are of ``path`` (also once it is unlinked)."""
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if line.rstrip("\n").removesuffix(" (deleted)").endswith(path))


def test_views_outlive_close(unique_name):
    seg = ndshm.Segment.create(unique_name, 1000, "f8", fill=4.0)
    path = seg.path
    a = seg.asarray()
    v = a[10:20]
    seg.close()
    seg.close()  # idempotent
    assert seg.closed and not os.path.exists(shm_path(unique_name))
    assert v.sum() == 40.0
    v[:] = 1.0
    assert a[10] == 1.0
    with pytest.raises(ndshm.ClosedError):
        seg.asarray()
    del seg, a
    collect()
    assert v[0] == 1.0
    assert _mappings_of(path) == 1  # the unlinked segment stays mapped for its last view
    # Only this segment's mapping is checked: the process-wide counts also move with earlier
    # tests' garbage and cached mappings, which a collection here may release.
    del v
    collect()
    if not PYPY:
        assert _mappings_of(path) == 0


def test_lifetime_with_block_and_collection(unique_name):
    with ndshm.Segment.create(unique_name, 4) as seg:
        assert os.path.exists(shm_path(unique_name))
        assert seg.asarray().shape == (4,)
    assert not os.path.exists(shm_path(unique_name))
    ndshm.create(unique_name, 4)  # the result is dropped: the name stays (the creator owns it) until close
    collect()
    assert os.path.exists(shm_path(unique_name))
    ndshm.Segment.attach(unique_name).close()  # the creator's close, through the shared mapping
    assert not os.path.exists(shm_path(unique_name))
    ndshm.create(unique_name, 4, owner="views")  # a temporary: the name goes with its last view
    collect()
    assert not os.path.exists(shm_path(unique_name))
    p = ndshm.Segment.create(unique_name, 4, persist=True)
    p.close()
    assert os.path.exists(shm_path(unique_name))
    ndshm.unlink(unique_name)
    assert not ndshm.exists(unique_name)
    with pytest.raises(ndshm.SegmentNotFoundError, match="no segment .*" + unique_name):
        ndshm.unlink(unique_name)


def test_exit_unlinks_unless_persist(unique_name):
    run_python(f"""
        import ndshm, os
        a = ndshm.create({unique_name!r}, 5)
        b = ndshm.create({unique_name + 'p'!r}, 5, persist=True)
        pid = os.fork()
        if pid == 0:
            raise SystemExit(0)   # a forked child exits normally: it must not unlink its parent's segments
        os.waitpid(pid, 0)
        assert os.path.exists({shm_path(unique_name)!r})
        import sys; sys.modules['keep'] = (a, b)
    """)
    assert not os.path.exists(shm_path(unique_name))
    assert os.path.exists(shm_path(unique_name + "p"))
    arr = ndshm.attach(unique_name + "p")
    assert arr.shape == (5,)
    ndshm.unlink(unique_name + "p")


def test_exclusive_create_and_recreated_name(unique_name):
    s1 = ndshm.Segment.create(unique_name, 4, "u1", fill=1, persist=True)
    with pytest.raises(ndshm.SegmentExistsError, match="segment .*" + unique_name + " exists already") as exc:
        ndshm.Segment.create(unique_name, 4)
    assert isinstance(exc.value, ndshm.SegmentExistsError) and unique_name in str(exc.value)
    ndshm.unlink(unique_name)
    s2 = ndshm.Segment.create(unique_name, 4, "u1", fill=2, persist=True)
    again = ndshm.Segment.attach(unique_name)
    assert again is s2 and again is not s1 and again.asarray()[0] == 2
    s1.close()  # the old segment's close must not remove the new one
    assert os.path.exists(shm_path(unique_name))
    s2.unlink()
    s2.close()


def test_bad_names_and_values(unique_name):
    for bad in ["", "a/b", "x y", "é", "a" * 201]:
        with pytest.raises(ndshm.InvalidValueError, match="segment name '" + re.escape(bad[:40])) as exc:
            ndshm.create(bad, 3)
        assert "segment name" in str(exc.value)
    with pytest.raises(ValueError, match="NUL"):
        ndshm.create(unique_name + "\0x", 3)
    with pytest.raises(ValueError, match="NUL"):
        ndshm.attach(unique_name + "\0x")
    with pytest.raises(TypeError, match="segment name None is not a str"):
        ndshm.attach(None)
    with pytest.raises(ndshm.SegmentNotFoundError, match="no segment .*" + unique_name):
        ndshm.attach(unique_name)
    with pytest.raises(TypeError, match="dtype\\('O'\\) holds Python objects"):
        ndshm.create(unique_name, 3, object)
    with pytest.raises(ValueError, match=r"shape \(4611686018427387904, 4\) of dtype float64 needs .* the maximum"):
        ndshm.create(unique_name, (2 ** 62, 4), "f8")
    with pytest.raises(ValueError, match="kind 'bogus' is not one of"):
        ndshm.Segment.create(unique_name, 3, kind="bogus")
    with pytest.raises(ValueError, match="the array does not live in an ndshm segment"):
        ndshm.segment_of(np.zeros(3))
    with pytest.raises(FileNotFoundError, match="directory does not exist"):
        ndshm.Segment.create(unique_name, 3, dir="/nonexistent-ndshm-dir")
    for call, exc, needle in [
            (lambda: ndshm.create(unique_name, 3, mode=-1), ValueError, "mode -1"),
            (lambda: ndshm.create(unique_name, 3, mode=1 << 40), ValueError, "mode 1099511627776"),
            (lambda: ndshm.create(unique_name, 3, mode="x"), TypeError, "mode 'x'"),
            (lambda: ndshm.Segment.from_fd("x"), TypeError, "descriptor 'x'"),
            (lambda: ndshm.Segment.from_fd(1 << 31), ValueError, "2147483648"),
            (lambda: ndshm.send_fd(None, 3), TypeError, "socket None"),
            (lambda: ndshm.exists(None), TypeError, "name None"),
            (lambda: ndshm.unlink(5), TypeError, "name 5"),
            (lambda: ndshm.attach_raw(unique_name, 3, "u1", offset=1.5), TypeError, "offset 1.5")]:
        with pytest.raises(exc, match=needle):
            call()
    assert not os.path.exists(shm_path(unique_name))
    with ndshm.Segment.create(unique_name, 10) as seg:
        with pytest.raises(ValueError, match="index -1"):
            seg.sync_address(-1)
        with pytest.raises(TypeError, match="index 'x'"):
            seg.sync_address("x")
    # a fill that does not fit the dtype: the new segment goes, persistent or not
    for persist in (True, False):
        with pytest.raises(ValueError, match="x"):
            ndshm.create(unique_name, 3, fill="x", persist=persist)
        assert not os.path.exists(shm_path(unique_name))
    ndshm.create(unique_name, 3, persist=True)  # the name is free again
    ndshm.unlink(unique_name)


@pytest.mark.system_wide  # no huge pages reserved, no huge-page mount: test_segment_mp's make both
def test_hugepages_without_reservation(unique_name, monkeypatch):
    from ndshm._dirs import huge_dir as _huge_dir
    with open("/proc/sys/vm/nr_hugepages") as f:
        if int(f.read()) != 0:
            skip_or_fail("huge pages are reserved here")
    monkeypatch.delenv("NDSHM_DIR", raising=False)
    if _huge_dir(None)[0] is not None:
        skip_or_fail("a huge-page tmpfs is mounted here: named segments would use it")
    with pytest.raises(ndshm.NotSupportedError, match="/proc/sys/vm/nr_hugepages"):
        ndshm.Segment.create(unique_name, 10, dir="/dev/shm", hugepages=True)  # not a huge-page mount
    for kind in ("memfd", "named"):
        with pytest.raises(ndshm.NotSupportedError, match="/proc/sys/vm/nr_hugepages"):
            ndshm.Segment.create(unique_name if kind == "named" else None, 10, kind=kind, hugepages=True)
    assert not os.path.exists(shm_path(unique_name))


def test_populate(unique_name):
    a = ndshm.create(unique_name, 1 << 20, "u1", populate=True)
    b = ndshm.attach(unique_name, populate=True)
    a[-1] = 9
    assert b[-1] == 9


def test_pickle_by_reference(unique_name):
    a = ndshm.create(unique_name, (1000, 100), "f8")
    a[:] = np.arange(100)
    for view in (a, a[10:20], a[::7, ::-3], a.T, a[5], a[3:4, 2:3].reshape(())):
        data = pickle.dumps(view, protocol=pickle.HIGHEST_PROTOCOL)
        assert len(data) < 600, len(data)
        back = pickle.loads(data)
        assert isinstance(back, ndshm.SharedArray)
        assert back.shape == view.shape and back.strides == view.strides
        np.testing.assert_array_equal(back, view)
        assert np.shares_memory(back, a) or back.__array_interface__["data"][0] == view.__array_interface__["data"][0]
    # by reference: a write through the unpickled view is seen by the original
    back = pickle.loads(pickle.dumps(a[2:4]))
    back[0, 0] = -1
    assert a[2, 0] == -1
    # new memory (ufunc results) pickles by value
    b = a[:2] + 1
    data = pickle.dumps(b)
    assert len(data) > b.nbytes
    np.testing.assert_array_equal(pickle.loads(data), b)
    # structured dtypes too
    dt = np.dtype([("x", "<i4"), ("y", "<f8")], align=True)
    s = ndshm.create(unique_name + "s", 5, dt)
    s["y"] = 2.5
    back = pickle.loads(pickle.dumps(s[1:]))
    assert back.dtype == dt and (back["y"] == 2.5).all()
    # a readonly view stays readonly
    r = ndshm.attach(unique_name, readonly=True)
    assert not pickle.loads(pickle.dumps(r[1:3])).flags.writeable


def test_pickle_after_close_is_by_value(unique_name):
    seg = ndshm.Segment.create(unique_name, 100, "i8", fill=3)
    a = seg.asarray()
    seg.close()
    back = pickle.loads(pickle.dumps(a))
    assert (back == 3).all() and not np.shares_memory(back, a)


def test_pickle_after_unlink_or_reuse_never_reads_another_segment(unique_name):
    a = ndshm.create(unique_name, (4,), "f8", fill=1.0)
    before = pickle.dumps(a[1:])
    ndshm.unlink(unique_name)
    # the name is gone: by value now, and the old reference fails clearly instead of reading
    # whatever takes the name next
    b = ndshm.create(unique_name, (8,), "i8", fill=2)
    after = pickle.loads(pickle.dumps(a))
    assert after.tolist() == [1.0] * 4 and after.dtype == np.float64
    with pytest.raises(ndshm.SegmentNotFoundError, match="replaced"):
        pickle.loads(before)
    child = run_python(f"""
        import pickle, sys
        try:
            pickle.loads({before!r})
        except FileNotFoundError as exc:
            print("refused", "replaced" in str(exc))
    """)
    assert child.stdout.split() == ["refused", "True"]
    assert pickle.loads(pickle.dumps(b[2:])).tolist() == [2] * 6  # the new one pickles by reference
    assert len(pickle.dumps(b)) < 400


def test_anonymous_across_fork():
    seg = ndshm.Segment.create(None, 10, "i8", kind="anonymous")
    a = seg.asarray()
    assert seg.name is None and seg.fd == -1
    pid = os.fork()
    if pid == 0:
        a[:] = 42
        os._exit(0)
    os.waitpid(pid, 0)
    assert (a == 42).all()
    with pytest.raises(ValueError, match="anonymous segment has no name to remove"):
        seg.unlink()
    assert seg.sync_address(0) % 64 == 0


def test_memfd_by_fd_passing():
    seg = ndshm.Segment.create(None, (4, 4), "f4", kind="memfd", meta={"k": 1})
    seg.asarray()[:] = 5
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        pid = os.fork()
        if pid == 0:
            try:
                fd = ndshm.recv_fd(right)
                child = ndshm.Segment.from_fd(fd)
                os.close(fd)
                arr = child.asarray()
                ok = arr.shape == (4, 4) and (arr == 5).all() and child.meta == {"k": 1}
                arr[0, 0] = 99
                os._exit(0 if ok else 3)
            except BaseException:
                os._exit(4)
        ndshm.send_fd(left, seg)
        _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert seg.asarray()[0, 0] == 99
    assert pickle.loads(pickle.dumps(seg.asarray())).sum() == 99 + 15 * 5  # memfd pickles by value
    seg.close()


def test_file_backed_persists(tmp_path):
    path = tmp_path / "array.ndshm"
    seg = ndshm.Segment.create(shape=(3, 3), dtype="i2", kind="file", path=str(path), persist=True, fill=7)
    seg.close()
    assert path.exists()
    again = ndshm.Segment.open_file(str(path))
    assert again.kind == "file" and (again.asarray() == 7).all()
    temp = ndshm.Segment.create(shape=3, kind="file", path=str(tmp_path / "tmp.ndshm"))
    temp.close()
    assert not (tmp_path / "tmp.ndshm").exists()


def test_attach_raw_headerless(tmp_path):
    path = tmp_path / "raw.bin"
    np.arange(10, dtype="<i4").tofile(path)
    a = ndshm.attach_raw(str(path), (2, 5), "<i4")
    assert (a.ravel() == np.arange(10)).all()
    b = ndshm.attach_raw(str(path), 3, "<i4", offset=8, readonly=True)
    assert list(b) == [2, 3, 4] and not b.flags.writeable
    with pytest.raises(ValueError, match="needs"):
        ndshm.attach_raw(str(path), 11, "<i4")
    with pytest.raises(ValueError, match="offset -4 is negative"):
        ndshm.attach_raw(str(path), 1, "<i4", offset=-4)
    a[0, 0] = 100
    assert np.fromfile(path, "<i4")[0] == 100


def test_sync_slots(unique_name):
    seg = ndshm.Segment.create(unique_name, 4)
    addrs = [seg.sync_address(i) for i in range(4)]
    assert all(a % 64 == 0 for a in addrs) and len(set(addrs)) == 4
    assert addrs[0] < seg.address
    with pytest.raises(ndshm.InvalidValueError, match="sync index 4 is not below 4"):
        seg.sync_address(4)
    seg.close()


def test_list_and_probe(unique_name):
    a = ndshm.create(unique_name, (2, 3), "u2", meta=[1])
    recs = {r.name: r for r in ndshm.list()}
    r = recs[unique_name]
    assert r.shape == (2, 3) and r.dtype == np.uint16 and r.in_use and r.status == "ready"
    assert r.creator_pid == os.getpid() and r.meta == [1] and not r.persist and r.size >= 12
    ndshm.segment_of(a).close()
    assert unique_name not in {r.name for r in ndshm.list()}


def test_sync_objects_in_segment(unique_name):
    seg = ndshm.Segment.create(unique_name, 4, "i8")
    lock, ev, bar = seg.lock, seg.event, seg.barrier(2)
    assert lock.address == seg.sync_address(0) and ev.address == seg.sync_address(1)
    with lock:
        assert lock.locked()
    assert not lock.locked() and not ev.is_set()
    again = pickle.loads(pickle.dumps(ev))  # by reference to the segment: the same slot
    assert again.address == ev.address
    import subprocess
    import textwrap
    from conftest import child_env
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import ndshm
        seg = ndshm.Segment.attach({unique_name!r})
        with seg.lock:
            seg.asarray()[0] += 1
        seg.barrier(2).wait(timeout=30)
        seg.event.set()
    """)], env=child_env(), stderr=subprocess.PIPE, text=True)
    try:
        assert bar.wait(timeout=30) in (0, 1)
        assert ev.wait(timeout=30)
    finally:
        _, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert seg.asarray()[0] == 1
    seg.close()


def test_attached_handle_reads_meta_and_creator_on_demand(unique_name):
    seg = ndshm.Segment.create(unique_name, (2, 3), "<i2", meta={"k": [1, 2]})
    child = run_python(f"""
        import ndshm, numpy as np
        s = ndshm.Segment.attach({unique_name!r})
        assert not s.creator
        print(s.meta, s.creator_pid, s.created.year > 2000, s.shape, s.dtype)
        a = np.asarray(s)  # the whole array, its base the segment itself
        assert a.base is s and a.dtype == np.dtype("<i2") and a.shape == (2, 3)
        s.close()
        try:
            np.asarray(s)
        except ndshm.ClosedError:
            print("closed")
    """)
    assert child.stdout.split("\n")[:2] == [f"{{'k': [1, 2]}} {os.getpid()} True (2, 3) int16", "closed"]
    seg.close()


def test_default_dir_follows_the_environment(unique_name, tmp_path, monkeypatch):
    from ndshm._segment import default_dir
    d = tmp_path / "segs"
    d.mkdir()
    monkeypatch.setenv("NDSHM_DIR", str(d))
    a = ndshm.create(unique_name, 3, "u1", fill=9)
    assert os.path.exists(d / ("ndshm." + unique_name)) and default_dir() == str(d)
    monkeypatch.delenv("NDSHM_DIR")
    assert default_dir() == "/dev/shm" and not ndshm.exists(unique_name)
    with pytest.raises(ndshm.SegmentNotFoundError, match="no segment /dev/shm/ndshm." + unique_name):
        ndshm.attach(unique_name)
    assert (ndshm.attach(unique_name, dir=str(d)) == 9).all()
    del a
    collect()


def test_hostile_meta_is_a_corrupt_segment_error(unique_name, monkeypatch):
    """Nested JSON deeper than the interpreter recurses, bad UTF-8 and bad JSON in a segment's
    metadata are a CorruptSegmentError naming the segment, never a RecursionError."""
    from ndshm._codec import decode_meta as _decode_meta
    for data in (b"J" + b"[" * 100000 + b"]" * 100000, b"J\xff\xfe", b"J{not json"):
        with pytest.raises(ndshm.CorruptSegmentError, match=unique_name):
            _decode_meta(data, unique_name)
    # a real planted segment (valid checksum, under the meta limit), read by another process
    monkeypatch.setattr(ndshm._params, "encode_meta", lambda meta: b"J" + b"[" * 3000 + b"]" * 1000)
    seg = ndshm.Segment.create(unique_name, 4, meta="anything")
    child = run_python(f"""
        import ndshm
        seg = ndshm.Segment.attach({unique_name!r})
        try:
            seg.meta
        except ndshm.CorruptSegmentError as exc:
            print(type(exc).__name__, exc)
    """)
    assert child.stdout.startswith("CorruptSegmentError segment " + unique_name), child.stdout
    seg.close()


def test_hostile_descr_is_a_corrupt_segment_error():
    from ndshm._codec import lookup_dtype as _lookup_dtype
    for descr in (b"[" * 100000, b"\xff\xfe", b"[('x', '<i4')" + b"," * 10, b"__import__('os')"):
        with pytest.raises(ndshm.CorruptSegmentError, match="planted"):
            _lookup_dtype(b"|V4", descr, 4, "planted")
    with pytest.raises(ndshm.CorruptSegmentError, match="planted"):
        _lookup_dtype(b"\xff<f4", b"", 4, "planted")


def test_forgotten_name_says_so():
    for call in (lambda: ndshm.create((3, 4), np.uint8), lambda: ndshm.Segment.create((3, 4), np.uint8)):
        with pytest.raises(TypeError, match=r"segment name \(3, 4\) is not a str: the name comes first"):
            call()


def test_flags_are_bools_and_keyword_only(unique_name):
    a = ndshm.create(unique_name, 4, "f4")
    with pytest.raises(TypeError, match="takes 1 positional argument but 2 were given"):
        ndshm.attach(unique_name, np.float32)  # readonly is keyword-only: a dtype there is refused
    with pytest.raises(TypeError, match="takes 2 positional arguments but 3 were given"):
        ndshm.Segment.attach(unique_name, True)
    for call, what in [(lambda: ndshm.attach(unique_name, readonly="yes"), "readonly 'yes'"),
                       (lambda: ndshm.attach(unique_name, populate=1), "populate 1"),
                       (lambda: ndshm.Segment.attach(unique_name, readonly=np.float32), "readonly <class"),
                       (lambda: ndshm.create(unique_name + "x", 3, persist="yes"), "persist 'yes'"),
                       (lambda: ndshm.create(unique_name + "x", 3, populate=None), "populate None"),
                       (lambda: ndshm.create(unique_name + "x", 3, hugepages="no"), "hugepages 'no'"),
                       (lambda: ndshm.segment_of(a).asarray(readonly="no"), "readonly 'no'"),
                       (lambda: ndshm.attach_raw(unique_name, 3, "u1", readonly=2), "readonly 2")]:
        with pytest.raises(TypeError, match=what + ".* is not a bool"):
            call()
    assert not os.path.exists(shm_path(unique_name + "x"))
    # NumPy's bools are bools
    r = ndshm.attach(unique_name, readonly=np.bool_(True), populate=np.True_)
    assert not r.flags.writeable
    assert ndshm.attach(unique_name, readonly=np.False_).flags.writeable


def test_attach_refuses_queues_and_sync_segments(unique_name):
    q = ndshm.Queue(unique_name + "q", slots=2, slot_bytes=64)
    with pytest.raises(TypeError, match=r"queue.*ndshm\.Queue\.attach"):
        ndshm.attach(unique_name + "q")
    with pytest.raises(TypeError, match=r"queue.*ndshm\.Queue\.attach"):
        ndshm.Segment.attach(unique_name + "q").asarray()
    lock = ndshm.Lock(unique_name + "l")
    with pytest.raises(TypeError, match="Lock, Event or Barrier"):
        ndshm.attach(unique_name + "l")
    assert ndshm.Lock(unique_name + "l", create=False).acquire()  # the proper way still works
    lock.release()
    q.close()
    with ndshm.Broadcast(unique_name + "b", slots=2, slot_bytes=64) as bc:
        with pytest.raises(TypeError, match=r"broadcast.*ndshm\.Broadcast\.attach"):
            ndshm.attach(unique_name + "b")
        with pytest.raises(TypeError, match=r"broadcast.*ndshm\.Broadcast\.attach"):
            ndshm.Segment.attach(unique_name + "b").asarray()
        assert ndshm.Broadcast.attach(unique_name + "b").name == bc.name


def test_asarray_of_a_closed_buffer_or_segment_is_a_closed_error(unique_name):
    b = ndshm.Buffer(64)
    b.close()
    assert b.closed
    with pytest.raises(ndshm.ClosedError, match="Buffer of 64 bytes at 0x"):
        np.asarray(b)
    with pytest.raises(ndshm.ClosedError, match="Buffer"):
        b.asarray()
    seg = ndshm.Segment.create(unique_name, 4)
    seg.close()
    with pytest.raises(ndshm.ClosedError, match=unique_name):
        np.asarray(seg)


def _rss_kib(path: str) -> int:
    """Resident KiB of this process's mappings of ``path`` (smaps ``Rss``)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(" ", 1)[0]
            if "-" in first and not first.endswith(":"):
                inside = line.rstrip("\n").endswith(path)
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


def test_populate_makes_the_mapping_resident(unique_name):
    size = 8 << 20
    a = ndshm.create(unique_name, size, "u1", populate=True)
    assert _rss_kib(ndshm.segment_of(a).path) >= size // 1024
    plain = ndshm.create(unique_name + "n", size, "u1")
    assert _rss_kib(ndshm.segment_of(plain).path) < size // 1024 // 4
    # a fresh process: attach(populate=True) faults the pages in, a plain attach does not
    code = f"""
        import ndshm, sys
        sys.path[:0] = [{os.path.dirname(__file__)!r}, {str(ROOT / 'tests')!r}]
        from test_segment import _rss_kib
        a = ndshm.attach(sys.argv[1], populate=sys.argv[2] == "1")
        print(_rss_kib(ndshm.segment_of(a).path))
    """
    assert int(run_python(code, unique_name, "1").stdout) >= size // 1024
    assert int(run_python(code, unique_name, "0").stdout) < size // 1024 // 4


def test_allocation_flags_are_bools():
    for call, what in [(lambda: ndshm.empty(4, populate="no"), "populate 'no'"),
                       (lambda: ndshm.zeros(4, lock=1), "lock 1"),
                       (lambda: ndshm.zeros(4, populate=0), "populate 0"),
                       (lambda: ndshm.Buffer(64, zero="yes"), "zero 'yes'"),
                       (lambda: ndshm.empty(4, hugepages="auto"), "hugepages .*'auto'")]:
        with pytest.raises(TypeError, match=what + ".* is not a bool"):
            call()
    assert ndshm.zeros(4, populate=np.True_, hugepages=np.False_).sum() == 0

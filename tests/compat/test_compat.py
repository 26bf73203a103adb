"""ndshm.compat.shared_memory.SharedMemory: the stdlib API, interoperable both ways, without its traps."""

from __future__ import annotations

import os
import pickle
import pickletools
import shutil
import tempfile
from unittest import mock

import numpy as np
import pytest

import ndshm
from conftest import collect, run_python
from ndshm.compat.shared_memory import SharedMemory

try:
    from multiprocessing import resource_tracker
    from multiprocessing import shared_memory as stdlib_shm
except ImportError:  # pragma: no cover - PyPy builds without _posixshmem
    stdlib_shm = None


def _untrack(block) -> None:
    """Keep the stdlib's resource tracker from unlinking (and warning about) a block we attached."""
    try:
        resource_tracker.unregister(block._name, "shared_memory")
    except Exception:
        pass


def test_create_attach_close_unlink():
    a = SharedMemory(create=True, size=1000)
    try:
        assert a.name.startswith("psm_") and a.size == 1000 and len(a.buf) == 1000
        assert os.path.exists("/dev/shm/" + a.name)
        a.buf[:5] = b"hello"
        b = SharedMemory(a.name)
        assert bytes(b.buf[:5]) == b"hello" and b.size == 1000
        b.close()
        assert b.buf is None
        c = pickle.loads(pickle.dumps(a))  # pickles by name
        assert c.name == a.name and bytes(c.buf[:5]) == b"hello"
        c.close()
        assert repr(a) == f"SharedMemory({a.name!r}, size=1000)"
    finally:
        a.close()
        a.unlink()
    assert not os.path.exists("/dev/shm/" + a.name)
    with pytest.raises(ndshm.SegmentNotFoundError, match=a.name):
        SharedMemory(a.name)
    with pytest.raises(FileNotFoundError, match=a.name):
        a.unlink()


def test_argument_errors_match_the_stdlib(unique_name):
    with pytest.raises(ValueError, match="'size' must be a positive number different from zero"):
        SharedMemory(create=True, size=0)
    with pytest.raises(ValueError, match="'size' must be a positive integer"):
        SharedMemory(create=True, size=-1)
    with pytest.raises(ValueError, match="'name' can only be None if create=True"):
        SharedMemory()
    for bad in (5, b"x"):
        with pytest.raises(TypeError, match="name"):
            SharedMemory(bad, create=True, size=4)
    name = "psm_" + unique_name
    a = SharedMemory(name, create=True, size=10)
    with pytest.raises(FileExistsError, match=name):
        SharedMemory(name, create=True, size=10)
    a.close()
    a.unlink()


def test_close_with_numpy_views_alive():
    a = SharedMemory(create=True, size=8 * 100)
    arr = np.ndarray((100,), dtype=np.float64, buffer=a.buf)  # numpy/numpy#23305: stdlib raises BufferError
    arr[:] = 3.0
    mv = a.buf[10:20]
    a.close()  # must not raise
    a.unlink()
    assert arr.sum() == 300.0  # the mapping lives with the views
    arr[0] = 1.0
    assert mv.nbytes == 10
    del arr, mv
    collect()


@pytest.mark.skipif(stdlib_shm is None, reason="no multiprocessing.shared_memory here")
def test_interop_stdlib_creates_ndshm_attaches():
    s = stdlib_shm.SharedMemory(create=True, size=64)
    try:
        s.buf[:3] = b"abc"
        ours = SharedMemory(s.name)
        assert ours.size == 64 and bytes(ours.buf[:3]) == b"abc"
        ours.buf[3] = ord("d")
        assert bytes(s.buf[:4]) == b"abcd"
        ours.close()
    finally:
        s.close()
        s.unlink()


@pytest.mark.skipif(stdlib_shm is None, reason="no multiprocessing.shared_memory here")
def test_interop_ndshm_creates_stdlib_attaches():
    ours = SharedMemory(create=True, size=32)
    try:
        ours.buf[:2] = b"xy"
        s = stdlib_shm.SharedMemory(ours.name)
        _untrack(s)
        assert bytes(s.buf[:2]) == b"xy" and s.size >= 32
        s.buf[2] = ord("z")
        s.close()
        assert bytes(ours.buf[:3]) == b"xyz"
    finally:
        ours.close()
        ours.unlink()


def test_no_resource_tracker_unlinks_in_other_processes():
    a = SharedMemory(create=True, size=16)
    try:
        a.buf[0] = 7
        # a child attaches and exits: the block must survive (the stdlib tracker would remove it)
        child = run_python(f"""
            from ndshm.compat.shared_memory import SharedMemory
            b = SharedMemory({a.name!r})
            print(b.buf[0])
            b.buf[1] = 8
        """)
        assert child.stdout.strip() == "7"
        assert os.path.exists("/dev/shm/" + a.name) and a.buf[1] == 8
    finally:
        a.close()
        a.unlink()


def test_attach_raw_of_a_stdlib_block():
    import ndshm
    a = SharedMemory(create=True, size=80)
    try:
        arr = ndshm.attach_raw(a.name, (10,), "f8")
        arr[:] = 2.5
        assert np.frombuffer(a.buf, "f8").sum() == 25.0
        with pytest.raises(ValueError, match=r"shape \(11,\) of dtype float64 at offset 0 needs 88 bytes; .* has 80"):
            ndshm.attach_raw(a.name, (11,), "f8")
    finally:
        a.close()
        a.unlink()


def _pickled_globals(obj) -> list[str]:
    """The classes and functions a protocol 0 pickle of ``obj`` names ("module qualname")."""
    return [arg for op, arg, _ in pickletools.genops(pickle.dumps(obj, 0)) if op.name == "GLOBAL"]


def test_the_classes_pickle_print_and_raise_under_the_public_module():
    """SharedMemory and ShareableList have rooms of their own (compat/_shared_memory.py,
    compat/_shareable_list.py) but are named as ndshm.compat.shared_memory's, as before the split:
    a pickle made here loads in an ndshm without those rooms."""
    from ndshm.compat.shared_memory import ShareableList, ShareableListTypeError

    sl = ShareableList([1, "two", None])
    try:
        assert _pickled_globals(sl.shm) == ["ndshm.compat.shared_memory SharedMemory"]
        assert _pickled_globals(sl) == ["functools partial", "ndshm.compat.shared_memory ShareableList"]
        other = pickle.loads(pickle.dumps(sl))
        assert type(other) is ShareableList and list(other) == [1, "two", None]
        other.shm.close()
        assert repr(ShareableList[int]) == "ndshm.compat.shared_memory.ShareableList[int]"
        with pytest.raises(ShareableListTypeError, match=r"item 0 \(\[\]\) is a list") as info:
            ShareableList([[]])
        # (tblib, once distributed has installed its pickling, adds its traceback's globals)
        assert "ndshm.compat.shared_memory ShareableListTypeError" in _pickled_globals(info.value)
        assert not any("_shareable_list" in g for g in _pickled_globals(info.value))
        assert type(pickle.loads(pickle.dumps(info.value))) is ShareableListTypeError
    finally:
        sl.shm.close()
        sl.shm.unlink()


def test_shm_dir_set_on_the_public_module_moves_new_blocks(monkeypatch):
    """SHM_DIR is read in SharedMemory's room: setting it on ndshm.compat.shared_memory (by
    assignment, monkeypatch or mock.patch) still moves the blocks made after, and is undone."""
    from ndshm.compat import shared_memory

    d1, d2 = (tempfile.mkdtemp(prefix="ndshm-compat-dir-", dir="/dev/shm") for _ in range(2))
    blocks = []
    try:
        monkeypatch.setattr(shared_memory, "SHM_DIR", d1)
        with mock.patch.object(shared_memory, "SHM_DIR", d2):
            assert shared_memory.SHM_DIR == d2
            blocks.append(SharedMemory(create=True, size=8))
        assert shared_memory.SHM_DIR == d1
        blocks.append(SharedMemory(create=True, size=8))
        assert [e for e in os.listdir(d2) if e.startswith("psm_")] == [blocks[0].name]
        assert [e for e in os.listdir(d1) if e.startswith("psm_")] == [blocks[1].name]
        with pytest.raises(ndshm.SegmentNotFoundError, match=blocks[0].name):
            SharedMemory(blocks[0].name)  # attaches look in d1 again too
        blocks.append(SharedMemory(blocks[1].name))
        assert blocks[2].size == 8
    finally:
        for b in blocks:
            b.close()
        for b in blocks[:2]:
            try:
                b.unlink()
            except FileNotFoundError:
                pass
        shutil.rmtree(d1, ignore_errors=True)
        shutil.rmtree(d2, ignore_errors=True)

"""CPython's own ``_TestSharedMemory`` cases for ``ShareableList`` and ``SharedMemoryManager``
(Lib/test/_test_multiprocessing.py), adapted to ndshm.compat, and the points where the stdlib's
behaviour is the contract: names, sizes, error types, the ``_mode`` hook."""

from __future__ import annotations

import errno
import os
import pickle
import signal
import stat
import subprocess
import sys
import warnings

import numpy as np
import pytest

import ndshm
from conftest import child_env, run_python
from ndshm import _compat_blocks as _marks
from ndshm.compat import managers, shared_memory
from ndshm.compat.managers import SharedMemoryManager
from ndshm.compat.shared_memory import ShareableList, ShareableListTypeError, SharedMemory

try:
    from multiprocessing import shared_memory as stdlib_shm
except ImportError:  # pragma: no cover - a Python built without _posixshmem
    stdlib_shm = None


@pytest.fixture
def shm_name(unique_name):
    """A block name in /dev/shm no other test uses; removed afterwards if a test left it."""
    name = "psm_" + unique_name
    yield name
    try:
        os.unlink(os.path.join(shared_memory.SHM_DIR, name))
    except FileNotFoundError:
        pass


def _gone(name: str) -> bool:
    return not os.path.exists(os.path.join(shared_memory.SHM_DIR, name.lstrip("/")))


# ---- ShareableList: test_shared_memory_ShareableList_basics -----------------------------------

def test_shareable_list_basics(shm_name):
    sl = ShareableList(["howdy", b"HoWdY", -273.154, 100, None, True, 42])
    try:
        assert sl.shm.name in str(sl) and str(list(sl)) in str(sl)
        with pytest.raises(IndexError, match="index out of range"):
            sl[7]
        with pytest.raises(IndexError, match="assignment index out of range"):
            sl[7] = 2
        current_format = sl._get_packing_format(0)
        sl[0] = "howdy"
        assert sl._get_packing_format(0) == current_format
        assert sl.format == "8s8sdqxxxxxx?xxxxxxxx?q"
        assert len(sl) == 7
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BytesWarning comparing with b'HoWdY'
            with pytest.raises(ValueError, match="'100' not in this container"):
                sl.index("100")
            assert sl.index(100) == 3
        assert sl[0] == "howdy" and sl[-2] is True
        assert tuple(sl) == ("howdy", b"HoWdY", -273.154, 100, None, True, 42)

        sl[3] = 42
        assert sl[3] == 42
        sl[4] = "some"  # a new type at a position
        assert sl[4] == "some" and sl.format == "8s8sdq8sxxxxxxx?q"
        with pytest.raises(ValueError, match="exceeds available storage"):
            sl[4] = "far too many"
        assert sl[4] == "some"
        sl[0] = "encodés"  # exactly 8 bytes of UTF-8
        assert sl[0] == "encodés" and sl[1] == b"HoWdY"  # no spill into the next item
        with pytest.raises(ValueError, match="exceeds available storage"):
            sl[0] = "encodées"  # 9 bytes
        with pytest.raises(ValueError, match="exceeds available storage"):
            sl[1] = b"123456789"
        assert sl[1] == b"HoWdY"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert (sl.count(42), sl.count(b"HoWdY"), sl.count(b"adios")) == (2, 1, 0)

        sl_copy = ShareableList(sl, name=shm_name)  # a duplicate under a chosen name
        try:
            assert sl_copy.shm.name == shm_name != sl.shm.name
            assert list(sl_copy) == list(sl)
            # the stdlib sizes a str's slot by its characters (7 here: '8s', which the 8 bytes
            # just fill); ndshm by its UTF-8 bytes, so a copy gets '16s' (see the next test)
            assert sl_copy.format == "16s" + sl.format[2:]
            sl_copy[-1] = 77
            assert sl_copy[-1] == 77 and sl[-1] != 77
            sl_copy.shm.close()
        finally:
            sl_copy.shm.unlink()

        tethered = ShareableList(name=sl.shm.name)  # a second handle on the same list
        assert tethered.shm.name == sl.shm.name
        tethered[-1] = 880
        assert sl[-1] == 880
        tethered.shm.close()
        sl.shm.close()
    finally:
        sl.shm.unlink()


def test_shareable_list_sizes_str_slots_by_their_utf8_bytes():
    # 7 characters, 9 bytes: an 8-byte slot (the stdlib's) would cut the last 'é' in half
    sl = ShareableList(["aaaaaéé", "ü" * 8])
    try:
        assert sl.format == "16s24s" and list(sl) == ["aaaaaéé", "ü" * 8]
        assert list(ShareableList(name=sl.shm.name)) == ["aaaaaéé", "ü" * 8]
    finally:
        sl.shm.close()
        sl.shm.unlink()


def test_shareable_list_empty():
    empty = ShareableList()
    try:
        assert len(empty) == 0 and empty.format == "" and empty.count("any") == 0
        with pytest.raises(ValueError, match="None not in this container"):
            empty.index(None)
        assert list(ShareableList(name=empty.shm.name)) == []
        empty.shm.close()
    finally:
        empty.shm.unlink()


@pytest.mark.parametrize("proto", range(pickle.HIGHEST_PROTOCOL + 1))
def test_shareable_list_pickling(proto):
    sl = ShareableList(range(10))
    larger = ShareableList(range(400))
    try:
        data = pickle.dumps(sl, protocol=proto)
        other = pickle.loads(data)
        assert isinstance(other, ShareableList) and other is not sl and other[-1] == 9
        other[4] = "changed"
        assert sl[4] == "changed"
        sl[3] = "newvalue"
        assert other[3] == "newvalue"
        assert len(pickle.dumps(larger, protocol=proto)) == len(data)  # by name, not by value
        other.shm.close()
    finally:
        for x in (sl, larger):
            x.shm.close()
            x.shm.unlink()


@pytest.mark.parametrize("proto", range(pickle.HIGHEST_PROTOCOL + 1))
def test_shareable_list_pickling_dead_object(proto):
    sl = ShareableList(range(10))
    data = pickle.dumps(sl, protocol=proto)
    sl.shm.close()
    sl.shm.unlink()
    with pytest.raises(ndshm.SegmentNotFoundError, match=sl.shm.name):
        pickle.loads(data)


def test_shareable_list_refuses_what_it_cannot_hold():
    for bad in ([np.int64(3)], [[1, 2]], [1.5j]):
        with pytest.raises(ShareableListTypeError, match="ShareableList holds"):
            ShareableList(bad)
    # the stdlib raises KeyError there: code catching it keeps working
    assert issubclass(ShareableListTypeError, KeyError) and issubclass(ShareableListTypeError, TypeError)
    sl = ShareableList([1])
    try:
        with pytest.raises(ShareableListTypeError, match="is a object: a ShareableList holds"):
            sl[0] = object()
        assert sl[0] == 1
    finally:
        sl.shm.close()
        sl.shm.unlink()
    # a str whose slot's format would not fit its 8 bytes ("10000000s"): refused before anything is made
    with pytest.raises(ValueError, match="at most 9999991 bytes"):
        ShareableList([b"x" * 9999992])
    big = ShareableList([b"x" * 9999991])
    try:
        assert big.format == "9999992s" and len(big[0]) == 9999991
    finally:
        big.shm.close()
        big.shm.unlink()


def test_shareable_list_attach_checks_the_layout(shm_name):
    junk = SharedMemory(shm_name, create=True, size=64)
    try:
        junk.buf[:8] = (10**6).to_bytes(8, "little")  # a million items in 64 bytes
        with pytest.raises(ValueError, match="does not hold a ShareableList.*item count"):
            ShareableList(name=shm_name)
        junk.buf[:] = bytes(64)
        junk.buf[:8] = (1).to_bytes(8, "little")
        junk.buf[16:24] = (3).to_bytes(8, "little")  # item 0 is 3 bytes long
        with pytest.raises(ValueError, match="offsets"):
            ShareableList(name=shm_name)
        with pytest.raises(ValueError, match="too small"):
            tiny = SharedMemory(shm_name + "t", create=True, size=8)
            try:
                ShareableList(name=tiny.name)
            finally:
                tiny.close()
                tiny.unlink()
    finally:
        junk.close()
        junk.unlink()
    sl = ShareableList([1, "ab"], name=shm_name)
    try:
        fmt_at = sl._offset_packing_formats
        sl.shm.buf[fmt_at:fmt_at + 8] = b"999999s\0"  # a format longer than the item's slot
        with pytest.raises(ValueError, match="item 0 has format '999999s'"):
            sl[0]
        sl.shm.buf[fmt_at:fmt_at + 8] = b"q\0\0\0\0\0\0\0"
        sl.shm.buf[sl._offset_back_transform_codes + 1] = 9
        assert sl[0] == 1
        with pytest.raises(ValueError, match="item 1 has type code 9"):
            sl[1]
    finally:
        sl.shm.close()
        sl.shm.unlink()


# ---- SharedMemoryManager: test_shared_memory_SharedMemoryManager_basics ------------------------

def test_manager_basics():
    smm1 = SharedMemoryManager()
    with pytest.raises(ValueError, match="SharedMemoryManager is initial: call start\\(\\) first"):
        smm1.SharedMemory(size=9)  # not started
    smm1.start()
    lol = [smm1.ShareableList(range(i)) for i in range(5, 10)]
    lom = [smm1.SharedMemory(size=j) for j in range(32, 128, 16)]
    doppelganger_list0 = ShareableList(name=lol[0].shm.name)
    assert len(doppelganger_list0) == 5
    doppelganger_shm0 = SharedMemory(name=lom[0].name)
    assert len(doppelganger_shm0.buf) >= 32
    held = [x.name for x in lom] + [x.shm.name for x in lol]
    smm1.shutdown()
    for name in held:
        with pytest.raises(ndshm.SegmentNotFoundError, match=name):
            SharedMemory(name=name)
    assert doppelganger_list0[4] == 4  # mappings outlive the unlink
    smm1.shutdown()  # again: nothing to do

    with SharedMemoryManager() as smm2:
        sl = smm2.ShareableList("howdy")
        shm = smm2.SharedMemory(size=128)
        held = [sl.shm.name, shm.name]
        assert list(sl) == list("howdy") and shm.size == 128
    for name in held:
        with pytest.raises(ndshm.SegmentNotFoundError, match=name):
            ShareableList(name=name)
    for x in (doppelganger_list0.shm, doppelganger_shm0, sl.shm, shm, *lom, *(s.shm for s in lol)):
        x.close()


def test_manager_states_as_the_stdlib():
    from multiprocessing import ProcessError
    smm = SharedMemoryManager()
    smm.shutdown()  # before start: nothing to do
    smm.start()
    with pytest.raises(ProcessError, match="Already started"):
        smm.start()
    with pytest.raises(ValueError, match="different from zero"):
        smm.SharedMemory(0)
    smm.shutdown()
    with pytest.raises(ProcessError, match="shut down"):
        smm.start()
    with pytest.raises(ProcessError):
        with smm:
            pass
    with pytest.raises(ValueError, match="shut down"):
        smm.ShareableList([1])
    with pytest.raises(TypeError, match="callable"):
        SharedMemoryManager().start(initializer=5)
    with pytest.raises(ValueError, match="no server process"):
        SharedMemoryManager().start(initializer=print)


def test_manager_does_not_unlink_a_name_reused_by_another_block():
    with SharedMemoryManager() as smm:
        shm = smm.SharedMemory(16)
        name = shm.name
        shm.close()
        shm.unlink()
        other = SharedMemory(name, create=True, size=16)  # someone else's block, same name
    try:
        assert not _gone(name)
    finally:
        other.close()
        other.unlink()


def test_manager_needs_no_resource_tracker_and_no_server():
    # bpo-36867's case: a manager in a fresh interpreter must leave no warnings behind
    child = run_python("""
        import multiprocessing, os
        from ndshm.compat.managers import SharedMemoryManager
        smm = SharedMemoryManager()
        smm.start()
        sl = smm.ShareableList(range(10))
        print(sl.shm.name)
        assert multiprocessing.active_children() == []
        smm.shutdown()
        print(os.path.exists('/dev/shm/' + sl.shm.name))
    """)
    name, exists = child.stdout.split()
    assert exists == "False" and child.stderr == "" and _gone(name)


def test_manager_unlinks_at_a_normal_exit_not_in_a_forked_child():
    child = run_python("""
        import os
        from ndshm.compat.managers import SharedMemoryManager
        smm = SharedMemoryManager()
        smm.start()
        shm = smm.SharedMemory(64)
        print(shm.name, flush=True)
        pid = os.fork()
        if pid == 0:
            raise SystemExit(0)  # runs atexit handlers: the child must not unlink its parent's blocks
        os.waitpid(pid, 0)
        print(os.path.exists('/dev/shm/' + shm.name))
    """)
    name, after_child = child.stdout.split()
    assert after_child == "True" and _gone(name)


def test_manager_sigint_in_the_caller_still_raises():
    # the stdlib's server ignores SIGINT; ours has none, and the caller's handling is untouched
    with SharedMemoryManager() as smm:
        sl = smm.ShareableList(range(10))
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        sl2 = smm.ShareableList(range(10))
        assert sl2[9] == 9 and sl[0] == 0


# ---- what the stdlib decides: names, sizes, error types, the _mode hook -----------------------

def test_names_are_kept_as_given(shm_name):
    for given, reported in ((shm_name, shm_name), ("/" + shm_name, "/" + shm_name)):
        a = SharedMemory(given, create=True, size=10)
        try:
            assert a.name == reported and os.path.exists("/dev/shm/" + shm_name)
            assert SharedMemory(given).name == reported
            assert pickle.loads(pickle.dumps(a)).name == reported
            if stdlib_shm is not None:
                from multiprocessing import resource_tracker
                s = stdlib_shm.SharedMemory(given)
                resource_tracker.unregister(s._name, "shared_memory")
                assert s.name == reported and s._name == a._name
                s.close()
        finally:
            a.close()
            a.unlink()
        assert _gone(shm_name)


@pytest.mark.parametrize("bad", ["a/b", "", "/", "//", "x/"])
def test_names_shm_open_refuses_raise_oserror(bad):
    for create in (True, False):
        with pytest.raises(OSError, match="Invalid argument") as info:
            SharedMemory(bad, create=create, size=8)
        assert info.value.errno == errno.EINVAL and not isinstance(info.value, ValueError)
        if stdlib_shm is not None:
            with pytest.raises(OSError, match="Invalid argument") as theirs:
                stdlib_shm.SharedMemory(bad, create=create, size=8)
            assert theirs.value.errno == info.value.errno
            assert theirs.value.filename in (None, info.value.filename)  # PyPy's names no file
        assert info.value.filename == "/" + bad
    with pytest.raises(OSError, match="File name too long: '/xxx") as info:
        SharedMemory("x" * 256, create=True, size=8)
    assert info.value.errno == errno.ENAMETOOLONG


def test_size_is_an_int(shm_name):
    a = SharedMemory(shm_name, create=True, size=np.int64(100))
    try:
        assert type(a.size) is int and a.size == 100
        b = SharedMemory(shm_name, size=np.int64(10**6))  # a size given when attaching is ignored
        assert type(b.size) is int and b.size == 100
        b.close()
        with pytest.raises(TypeError, match="10.5"):
            SharedMemory(create=True, size=10.5)
    finally:
        a.close()
        a.unlink()


def test_a_full_shm_dir_fails_at_create_with_enospc(shm_name):
    # PyPy's os.posix_fallocate returns the error instead of raising it: it must still be raised
    # more than the whole tmpfs holds, not just more than is free: refused before a page is
    # allocated (free + 1 GiB filled /dev/shm, as large as the RAM here, and woke the OOM killer)
    vfs = os.statvfs("/dev/shm")
    with pytest.raises(OSError, match="no space in /dev/shm for .* bytes: '/dev/shm/" + shm_name) as info:
        SharedMemory(shm_name, create=True, size=vfs.f_blocks * vfs.f_frsize + (1 << 30))
    assert info.value.errno == errno.ENOSPC and _gone(shm_name)


def test_mode_hook_of_a_subclass(shm_name):
    class Shared(SharedMemory):
        _mode = 0o640

    old = os.umask(0o022)
    try:
        a = Shared(shm_name, create=True, size=8)
        try:
            assert stat.S_IMODE(os.stat("/dev/shm/" + shm_name).st_mode) == 0o640
        finally:
            a.close()
            a.unlink()
        b = SharedMemory(shm_name, create=True, size=8)
        try:
            assert stat.S_IMODE(os.stat("/dev/shm/" + shm_name).st_mode) == 0o600
        finally:
            b.close()
            b.unlink()
    finally:
        os.umask(old)


def test_prepend_leading_slash_hook(shm_name):
    class Raw(SharedMemory):
        _prepend_leading_slash = False

    a = Raw(shm_name, create=True, size=8)
    try:
        assert a.name == shm_name and a._name == shm_name and not _gone(shm_name)
    finally:
        a.close()
        a.unlink()


# ---- interop with the standard library, both directions ----------------------------------------

needs_stdlib = pytest.mark.skipif(stdlib_shm is None, reason="this Python has no multiprocessing.shared_memory")


def _stdlib_child(code: str) -> subprocess.Popen:
    import textwrap
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())


@needs_stdlib
def test_shareable_list_in_one_process_both_ways():
    from multiprocessing import resource_tracker
    ours = ShareableList(["a", b"bc", 1.5, 7, None, False])
    try:
        theirs = stdlib_shm.ShareableList(name=ours.shm.name)
        resource_tracker.unregister(theirs.shm._name, "shared_memory")
        assert list(theirs) == ["a", b"bc", 1.5, 7, None, False] and theirs.format == ours.format
        theirs[0] = "z"
        theirs[3] = "seven"
        assert ours[0] == "z" and ours[3] == "seven"
        theirs.shm.close()
    finally:
        ours.shm.close()
        ours.shm.unlink()
    theirs = stdlib_shm.ShareableList([True, "xyz", -2, b"\x01"])
    try:
        ours = ShareableList(name=theirs.shm.name)
        assert list(ours) == [True, "xyz", -2, b"\x01"] and ours.format == theirs.format
        ours[2] = 3.25
        ours[1] = "u"
        assert theirs[2] == 3.25 and theirs[1] == "u"
        ours.shm.close()
    finally:
        theirs.shm.close()
        theirs.shm.unlink()


@needs_stdlib
def test_stdlib_process_makes_a_list_ndshm_reads_and_writes_it():
    child = _stdlib_child("""
        import sys
        from multiprocessing import shared_memory
        sl = shared_memory.ShareableList(['hello', 42, 2.5, None])
        print(sl.shm.name, flush=True)
        sys.stdin.readline()            # the parent has changed it
        print(repr(list(sl)), flush=True)
        sl.shm.close()
        sl.shm.unlink()
    """)
    try:
        name = child.stdout.readline().strip()
        ours = ShareableList(name=name)
        assert list(ours) == ["hello", 42, 2.5, None]
        ours[0] = "bye"
        ours[3] = True
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "['bye', 42, 2.5, True]"
        ours.shm.close()
    finally:
        out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert _gone(name)


@needs_stdlib
def test_ndshm_makes_a_list_a_stdlib_process_reads_and_writes_it():
    ours = ShareableList([1, "two", b"three", 4.0])
    try:
        child = run_python(f"""
            from multiprocessing import resource_tracker, shared_memory
            sl = shared_memory.ShareableList(name={ours.shm.name!r})
            resource_tracker.unregister(sl.shm._name, 'shared_memory')  # the stdlib would unlink it at exit
            print(repr(list(sl)))
            sl[1] = 'deux'
            sl.shm.close()
        """)
        assert child.stdout.strip() == "[1, 'two', b'three', 4.0]"
        assert ours[1] == "deux"
        # and a manager's list reads in the stdlib too
        with SharedMemoryManager() as smm:
            sl = smm.ShareableList([None, 9])
            theirs = stdlib_shm.ShareableList(name=sl.shm.name)
            from multiprocessing import resource_tracker
            resource_tracker.unregister(theirs.shm._name, "shared_memory")
            assert list(theirs) == [None, 9]
            theirs.shm.close()
        assert _gone(sl.shm.name)
    finally:
        ours.shm.close()
        ours.shm.unlink()


@needs_stdlib
def test_stdlib_blocks_are_not_marked_as_ndshm_blocks():
    s = stdlib_shm.SharedMemory(create=True, size=16)
    try:
        assert s.name not in [b.name for b in _marks.ndshm_blocks()]
    finally:
        s.close()
        s.unlink()

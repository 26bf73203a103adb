"""Blocks made through ndshm.compat are recognisable (``_ndshm_blocks``) and reclaimed once their
creator is dead and no ndshm process maps them (``_reclaim_dead``), with real processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

import pytest

from conftest import child_env, collect, dir_files
from ndshm.compat import _shared_memory, shared_memory
from ndshm import _compat_blocks as _marks
from ndshm._compat_blocks import ndshm_blocks as _ndshm_blocks, reclaim_dead as _reclaim_dead


@pytest.fixture
def shm_dir(monkeypatch):
    """A private directory on /dev/shm's tmpfs that this process's compat blocks go to."""
    d = tempfile.mkdtemp(prefix="ndshm-compat-test-", dir="/dev/shm")
    monkeypatch.setattr(shared_memory, "SHM_DIR", d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _holder(d: str, *, xattr: bool = True, code: str = "") -> tuple[subprocess.Popen, str]:
    """A child that creates a compat block in ``d``, prints its name and waits (until killed)."""
    src = f"""
        import sys
        from ndshm.compat import shared_memory
        shared_memory.SHM_DIR = {d!r}
        from ndshm import _compat_blocks as _marks
        _marks.USE_XATTR = {xattr!r}
        shm = shared_memory.SharedMemory(create=True, size=4096)
        {code}
        print(shm.name, flush=True)
        sys.stdin.read()
    """
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(src)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=child_env())
    name = p.stdout.readline().strip()
    assert name, "the child did not start"
    return p, name


def _kill(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)


@pytest.mark.parametrize("xattr", [True, False], ids=["xattr", "registry"])
def test_a_killed_creators_block_is_reclaimed_a_live_ones_is_kept(shm_dir, xattr):
    dead, dead_name = _holder(shm_dir, xattr=xattr)
    live, live_name = _holder(shm_dir, xattr=xattr)
    foreign = os.path.join(shm_dir, "psm_foreign")  # a block another tool made: never ours to remove
    with open(foreign, "wb") as f:
        f.write(bytes(64))
    try:
        blocks = {b.name: b for b in _ndshm_blocks(shm_dir)}
        assert set(blocks) == {dead_name, live_name}
        assert blocks[dead_name].creator_pid == dead.pid and blocks[dead_name].size == 4096
        assert blocks[dead_name].in_use and blocks[dead_name].creator_alive
        assert blocks[dead_name].path == os.path.join(shm_dir, dead_name)
        assert _reclaim_dead(shm_dir) == []  # both creators alive and mapping their blocks

        _kill(dead)
        blocks = {b.name: b for b in _ndshm_blocks(shm_dir)}
        assert not blocks[dead_name].in_use and not blocks[dead_name].creator_alive
        assert _reclaim_dead(shm_dir, dry_run=True) == [dead_name]
        assert os.path.exists(os.path.join(shm_dir, dead_name))
        assert _reclaim_dead(shm_dir) == [dead_name]
        assert not os.path.exists(os.path.join(shm_dir, dead_name))
        assert os.path.exists(os.path.join(shm_dir, live_name)) and os.path.exists(foreign)
        assert [b.name for b in _ndshm_blocks(shm_dir)] == [live_name]
    finally:
        for p in (dead, live):
            if p.poll() is None:
                _kill(p)
    # once the live one is killed too, it goes as well
    assert _reclaim_dead(shm_dir) == [live_name]
    registry = ".ndshm-compat-%d" % os.getuid()
    assert dir_files(shm_dir) == (["psm_foreign"] if xattr else [registry, "psm_foreign"])
    if not xattr:
        assert os.listdir(os.path.join(shm_dir, ".ndshm-compat-%d" % os.getuid())) == []  # entries dropped


def test_a_dead_creators_block_mapped_by_a_live_ndshm_process_is_kept(shm_dir):
    creator, name = _holder(shm_dir)
    _kill(creator)
    user = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from ndshm.compat import shared_memory
        shared_memory.SHM_DIR = {shm_dir!r}
        shm = shared_memory.SharedMemory({name!r})
        view = shm.buf[:10]
        shm.close()                     # closed, but a view still maps it
        print('attached', flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert user.stdout.readline().strip() == "attached"
        (blk,) = _ndshm_blocks(shm_dir)
        assert blk.in_use and not blk.creator_alive
        assert _reclaim_dead(shm_dir) == []
        assert os.path.exists(os.path.join(shm_dir, name))
    finally:
        _kill(user)
    assert _reclaim_dead(shm_dir) == [name]


def test_a_live_creator_that_closed_its_block_keeps_it(shm_dir):
    p, name = _holder(shm_dir, code="shm.close(); import gc; [gc.collect() for _ in range(4)]")
    try:
        (blk,) = _ndshm_blocks(shm_dir)
        assert not blk.in_use and blk.creator_alive
        assert _reclaim_dead(shm_dir) == []
    finally:
        _kill(p)
    assert _reclaim_dead(shm_dir) == [name]


def test_a_reused_pid_does_not_keep_a_block_alive(shm_dir):
    shm = shared_memory.SharedMemory(create=True, size=64)
    path = os.path.join(shm_dir, shm.name)
    try:
        os.setxattr(path, _marks.XATTR, f"{os.getpid()} 1".encode())  # this pid, another start time
        shm.close()
        collect()  # PyPy releases the mapping, and its flock, at a collection
        (blk,) = _ndshm_blocks(shm_dir)
        assert blk.creator_pid == os.getpid() and not blk.creator_alive
        assert _reclaim_dead(shm_dir) == [shm.name]
    finally:
        if os.path.exists(path):
            shm.unlink()


def test_manager_blocks_survive_its_crash_until_reclaimed(shm_dir):
    p, name = _holder(shm_dir, code=textwrap.dedent("""
        from ndshm.compat.managers import SharedMemoryManager
        smm = SharedMemoryManager(); smm.start()
        sl = smm.ShareableList([1, 2, 3]); sl.shm.close()
        print(sl.shm.name, flush=True)""").replace("\n", "\n        "))
    listed = p.stdout.readline().strip()
    _kill(p)
    assert os.path.exists(os.path.join(shm_dir, listed))  # nothing unlinked it at the crash
    assert sorted(_reclaim_dead(shm_dir)) == sorted([name, listed])


def test_unlink_drops_the_registry_entry(shm_dir, monkeypatch):
    monkeypatch.setattr(_marks, "USE_XATTR", False)
    shm = shared_memory.SharedMemory(create=True, size=32)
    reg = os.path.join(shm_dir, ".ndshm-compat-%d" % os.getuid())
    assert os.listdir(reg) == [shm.name]
    assert [b.name for b in _ndshm_blocks(shm_dir)] == [shm.name]
    shm.close()
    shm.unlink()
    assert os.listdir(reg) == [] and _ndshm_blocks(shm_dir) == []
    other = shared_memory.SharedMemory(create=True, size=32)  # an entry whose file was removed by
    os.unlink(os.path.join(shm_dir, other.name))             # someone else, then the name reused:
    with open(os.path.join(shm_dir, other.name), "wb") as f:  # the stale entry does not mark it
        f.write(bytes(32))
    assert _ndshm_blocks(shm_dir) == []
    other.close()


def test_a_planted_registry_is_neither_written_nor_trusted(shm_dir, monkeypatch):
    monkeypatch.setattr(_marks, "USE_XATTR", False)
    reg = os.path.join(shm_dir, ".ndshm-compat-%d" % os.getuid())
    os.mkdir(reg)
    os.chmod(reg, 0o777)  # anyone could have made it (the directory is world-writable)
    victim = os.path.join(shm_dir, "psm_victim")  # someone's block that ndshm did not make
    with open(victim, "wb") as f:
        f.write(bytes(16))
    st = os.stat(victim)
    with open(os.path.join(reg, "psm_victim"), "w") as f:  # a forged entry: "made by a dead pid"
        f.write(f"{st.st_dev} {st.st_ino} 999999999 0\n")
    shm = shared_memory.SharedMemory(create=True, size=16)
    try:
        assert os.listdir(reg) == ["psm_victim"]  # nothing written into it
        assert _ndshm_blocks(shm_dir) == [] and _reclaim_dead(shm_dir) == []
        assert os.path.exists(victim)
        os.chmod(reg, 0o700)  # the same entry in a safe registry is believed
        assert [b.name for b in _ndshm_blocks(shm_dir)] == ["psm_victim"]
    finally:
        shm.close()
        shm.unlink()


def test_a_block_whose_attach_fails_after_create_is_removed(shm_dir, monkeypatch):
    def refuse(path, readonly):
        raise OSError(12, "no mapping today", path)

    monkeypatch.setattr(_shared_memory, "map_raw", refuse)  # where SharedMemory finds it
    with pytest.raises(OSError, match="no mapping today"):
        shared_memory.SharedMemory("psm_failing", create=True, size=16)
    assert dir_files(shm_dir) == []

"""Planted compat files (issue 16): a block whose creation mark holds a pid no process can have
stopped ``ls`` and ``gc`` (``OverflowError`` from ``os.kill``); a ShareableList format of
non-ASCII digits passed ``isdigit()``; a ShareableList's whole offsets table was parsed before its
size was checked; a SharedArray header of shape ``(0, 2**62)`` gave a bare NumPy error and left
the segment mapped."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import ndshm
from conftest import collect, run_python
from ndshm.compat import _shareable_list, shared_memory
from ndshm import _compat_blocks as _marks
from ndshm._compat_blocks import ndshm_blocks as _ndshm_blocks, reclaim_dead as _reclaim_dead
from ndshm.compat.shared_memory import ShareableList, SharedMemory


@pytest.fixture
def shm_dir(monkeypatch):
    """A private directory on /dev/shm's tmpfs that this process's compat blocks go to."""
    d = tempfile.mkdtemp(prefix="ndshm-compat-hostile-", dir="/dev/shm")
    monkeypatch.setattr(shared_memory, "SHM_DIR", d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


BAD_MARKS = [b"2147483648 0", b"99999999999999999999999 0", b"-5 0", b"0 0", b"12 -1", b"\xd9\xa3 0", b"1 2 3",
             b"", b"  ", b"12", b"1_000 0", b"+7 0", b"7 99999999999999999999999", b"\x00"]


@pytest.mark.parametrize("raw", BAD_MARKS, ids=repr)
def test_a_mark_no_creator_wrote_marks_nothing(raw):
    from ndshm._compat_blocks import decode_mark as _decode_mark
    assert _decode_mark(raw) is None
    assert tuple(_decode_mark(b"1234 5678")) == (0, 1234, 5678)  # (key, pid, start time): the legacy form


def _plant(d: str, name: str, mark: bytes) -> str:
    path = os.path.join(d, name)
    with open(path, "wb") as f:
        f.write(bytes(4096))
    try:
        os.setxattr(path, _marks.XATTR, mark)
    except OSError:  # tmpfs before Linux 6.6: the registry holds the mark
        reg = _marks.registry(d, os.getuid(), create=True)
        st = os.stat(path)
        with open(os.path.join(reg, name), "wb") as f:
            f.write(b"%d %d " % (st.st_dev, st.st_ino) + mark + b"\n")
    return path


def test_one_planted_mark_stops_neither_ls_nor_gc(shm_dir):
    """A block whose mark holds b"2147483648 0" made ndshm.list(), ls and gc raise OverflowError:
    now that one file is shown as corrupt (and left alone), and the others are listed and collected."""
    dead = _plant(shm_dir, "psm_dead", b"%d 0" % _dead_pid())
    bad = [f"psm_bad{i:02d}" for i in range(len(BAD_MARKS))]
    for name, raw in zip(bad, BAD_MARKS):
        _plant(shm_dir, name, raw)
    blocks = _ndshm_blocks(shm_dir)
    assert [b.name for b in blocks] == sorted(bad + ["psm_dead"])
    assert [b.name for b in blocks if b.corrupt] == bad
    recs = {r.name: r for r in ndshm.list(shm_dir) if r.kind == "compat"}
    assert sorted(recs) == sorted(bad + ["psm_dead"])
    assert recs["psm_dead"].status == "ready" and all(recs[n].status == "corrupt" for n in bad)
    ls = run_python("import sys; from ndshm._cli import main; sys.exit(main(['--dir', %r, 'ls']))" % shm_dir,
                    check=False)
    assert ls.returncode == 0 and "psm_dead" in ls.stdout and "psm_bad00" in ls.stdout, ls.stderr
    assert _reclaim_dead(shm_dir) == ["psm_dead"]
    assert not os.path.exists(dead)
    assert len([n for n in os.listdir(shm_dir) if n.startswith("psm_bad")]) == len(BAD_MARKS)


# ---- ShareableList ------------------------------------------------------------------------------

def test_non_ascii_digits_in_a_format_are_corrupt(shm_dir):
    """'٣s' passed str.isdigit(), then struct failed with a confusing UnicodeEncodeError."""
    sl = ShareableList(["abc", 5])
    try:
        struct.pack_into("8s", sl.shm.buf, sl._offset_packing_formats, "٣s".encode())
        with pytest.raises(ValueError, match="does not hold a ShareableList: item 0 has format '٣s'"):
            sl[0]
        assert sl[1] == 5
    finally:
        sl.shm.close()
        sl.shm.unlink()


def test_the_offsets_table_is_not_parsed_before_its_size_is_checked(shm_dir):
    """A block whose count says millions of items had its whole offsets table parsed into Python
    ints (a 2.5 GB block: 18 s and 5.5 GB) before the sizes were found not to fit."""
    formats: list[str] = []

    class Spy:  # the struct module as ShareableList's room sees it, recording what it unpacks
        def __getattr__(self, attr):
            return getattr(struct, attr)

        def unpack_from(self, fmt, *args):
            formats.append(fmt)
            return struct.unpack_from(fmt, *args)

    n = 2_000_000
    shm = SharedMemory(create=True, size=(n + 2) * 8 + 17 * n)  # room for n items of 8 bytes
    try:
        struct.pack_into("q", shm.buf, 0, n)
        struct.pack_into("q", shm.buf, 8 + 8 * n, 8 * n + 8)  # the data area would end past the block
        _shareable_list.struct = Spy()
        try:
            with pytest.raises(ValueError, match="do not fit"):
                ShareableList(name=shm.name)
        finally:
            _shareable_list.struct = struct
        assert formats and max(map(len, formats)) == 1, [f[:8] for f in formats]  # never the table's "q" * (n + 1)
        struct.pack_into("q", shm.buf, 8 + 8 * n, 8 * n)  # fits, but the other offsets do not increase
        with pytest.raises(ValueError, match="not increasing"):
            ShareableList(name=shm.name)
    finally:
        shm.close()
        shm.unlink()


def test_a_valid_list_still_reads(shm_dir):
    sl = ShareableList([1, 2.5, "héllo", b"x", None, True])
    try:
        other = ShareableList(name=sl.shm.name)
        assert list(other) == [1, 2.5, "héllo", b"x", None, True]
        assert other.format == sl.format
        other.shm.close()
    finally:
        sl.shm.close()
        sl.shm.unlink()


# ---- SharedArray --------------------------------------------------------------------------------

@pytest.mark.parametrize("dims, typenum", [((0, 2 ** 62), "f8"), ((0, 2 ** 60), "f8"), ((3, 0, 2 ** 61), "u2")])
def test_a_sharedarray_header_numpy_cannot_make_is_corrupt_and_unmapped(tmp_path, dims, typenum):
    import ndshm.compat.sharedarray as SA
    path = str(tmp_path / "sa")
    SA.create("file://" + path, 4, typenum)
    dt = np.dtype(typenum)
    meta = SA._HEAD.pack(SA._MAGIC, 0, dt.num, dt.itemsize, len(dims)) + struct.pack("=64q", *dims,
                                                                                       *[0] * (64 - len(dims)))
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) - len(meta))
        f.write(meta)
    collect()  # the array create returned (PyPy frees it late)
    assert _maps(path) == 0
    with pytest.raises(ndshm.CorruptSegmentError, match="too large") as ei:
        SA.attach("file://" + path)
    segs, tb = [], ei.tb
    while tb is not None:  # the Segment the attach made, still referenced by the exception's frames
        segs += [v for v in tb.tb_frame.f_locals.values() if isinstance(v, ndshm.Segment)]
        tb = tb.tb_next
    assert segs and all(seg.closed for seg in segs)  # it stayed open


def _maps(path: str) -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if line.rstrip().endswith(path))

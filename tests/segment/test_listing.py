"""ndshm.list() / probe: hostile segments are 'corrupt' and never stop a listing; every record has a kind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import ndshm
from conftest import child_env, dir_files, run_python
from ndshm import _listing
from ndshm._lib import ffi, lib
from ndshm._listing import SegmentRecord, list_segments, probe

DEEP_META = b"J" + b"[" * 3000 + b"]" * 1000  # checksummed by the header, far under NDSHM_META_MAX

# A child that creates segments through the C library's own parameters (so any meta bytes, tag
# included, go in as they are), plus an ordinary orphan, and dies without cleaning up.
_PLANT = """
import os, sys
import ndshm
from ndshm._lib import ffi, lib
d = sys.argv[1]
def plant(name, meta, flags):
    keep = [ffi.new("char[]", name.encode()), ffi.new("char[]", d.encode()), ffi.from_buffer(meta)]
    p = ffi.new("ndshm_segment_params_t *")
    p.kind, p.name, p.dir, p.flags = lib.NDSHM_KIND_NAMED, keep[0], keep[1], flags
    p.layout.typestr, p.layout.itemsize, p.layout.ndim = b"<f8", 8, 1
    p.layout.shape[0], p.layout.strides[0] = 4, 8
    p.meta, p.meta_len = keep[2], len(meta)
    out = ffi.new("ndshm_segment_t **")
    assert lib.ndshm_segment_create(p, out) == 0, ffi.string(lib.ndshm_last_detail())
plant("deep", %(meta)r, lib.NDSHM_SEG_PERSIST)
plant("deep-dead", %(meta)r, 0)
orphan = ndshm.create("orphan", 5, dir=d)
os._exit(0)  # no close, no atexit: the non-persistent segments stay behind, mapped by nobody
"""


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ndshm", *args], capture_output=True, text=True, timeout=timeout,
                          env=child_env())


def _no_traceback(out: subprocess.CompletedProcess) -> None:
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and "Error" not in out.stderr, out.stderr


def test_deeply_nested_meta_is_corrupt_and_gc_still_collects_the_dead(tmp_path):
    d = str(tmp_path)
    run_python(_PLANT % {"meta": DEEP_META}, d)
    recs = {r.name: r for r in ndshm.list(d)}
    assert sorted(recs) == ["deep", "deep-dead", "orphan"]
    deep = recs["deep"]
    assert deep.status == "corrupt" and deep.meta is None and deep.kind == "array"
    assert deep.dtype == np.float64 and deep.shape == (4,) and deep.persist and not deep.in_use  # the rest is read
    assert recs["orphan"].status == "ready"
    assert probe("deep", dir=d).status == "corrupt"
    out = cli("--dir", d, "ls")
    _no_traceback(out)
    lines = {ln.split()[0]: ln for ln in out.stdout.splitlines()[1:-1]}
    assert lines["deep"].endswith("corrupt") and lines["orphan"].endswith("ready") and "3 segments" in out.stdout
    out = cli("--dir", d, "ls", "--json")
    _no_traceback(out)
    assert {r["name"]: r["status"] for r in json.loads(out.stdout)} == {
        "deep": "corrupt", "deep-dead": "corrupt", "orphan": "ready"}
    out = cli("--dir", d, "info", "deep")
    _no_traceback(out)
    assert "corrupt" in out.stdout
    out = cli("--dir", d, "gc", "--min-age", "0")
    _no_traceback(out)
    assert "removed orphan" in out.stdout and "removed deep-dead" in out.stdout, out.stdout
    assert dir_files(d) == ["ndshm.deep"]  # persistent: kept, hostile or not


@pytest.mark.parametrize("exc", [RecursionError("deep"), MemoryError(), ValueError("bad"), KeyError("x"),
                                 UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")])
@pytest.mark.parametrize("decoder", ["decode_meta", "decode_dtype"])
def test_any_decoding_failure_is_corrupt_for_that_segment_only(tmp_path, monkeypatch, decoder, exc):
    d = str(tmp_path)
    bad = ndshm.create("bad", 3, "i4", dir=d, meta={"k": 1})
    good = ndshm.create("good", 3, "i4", dir=d, meta={"k": 2})
    real = getattr(_listing, decoder)

    def hostile(*args):  # (data) for the meta, (typestr, descr, itemsize, name) for the dtype
        if args[-1] in ("bad", b'J{"k":1}'):
            raise exc
        return real(*args)

    monkeypatch.setattr(_listing, decoder, hostile)
    recs = {r.name: r for r in list_segments(d)}
    assert recs["bad"].status == "corrupt" and recs["good"].status == "ready" and recs["good"].meta == {"k": 2}
    assert recs["bad"].in_use and recs["bad"].kind == "array"
    del bad, good


def test_kind_of_arrays_queues_and_sync_objects(tmp_path):
    d = str(tmp_path)
    arr = ndshm.create("arr", (2, 3), "f4", dir=d)
    q = ndshm.Queue("que", slots=16, slot_bytes=100, dir=d)
    lock, ev, bar = ndshm.Lock("lk", dir=d), ndshm.Event("ev", dir=d), ndshm.Barrier(2, "bar", dir=d)
    recs = {r.name: r for r in ndshm.list(d)}
    assert {n: r.kind for n, r in recs.items()} == {"arr": "array", "que": "queue", "lk": "sync", "ev": "sync",
                                                     "bar": "sync"}
    assert (recs["que"].slots, recs["que"].slot_bytes) == (16, 100)
    assert recs["arr"].slots is None and recs["lk"].slot_bytes is None
    assert recs["arr"].dtype == np.float32 and recs["arr"].shape == (2, 3)
    q.close()
    del arr, lock, ev, bar


def test_a_broadcast_ring_is_kind_broadcast(tmp_path):
    d = str(tmp_path)
    out = ffi.new("ndshm_bcast_t **")
    assert lib.ndshm_bcast_create(b"bc", d.encode(), 4, 64, lib.NDSHM_BCAST_BLOCK, 0, 0, out) == 0
    try:
        (r,) = ndshm.list(d)
        assert (r.name, r.kind, r.status) == ("bc", "broadcast", "ready")
        ls = cli("--dir", d, "ls")
        assert ls.returncode == 0 and ls.stdout.splitlines()[1].split()[:2] == ["bc", "broadcast"], ls.stdout
        assert "uint8" not in ls.stdout
    finally:
        lib.ndshm_bcast_close(out[0])


def test_a_queue_with_a_damaged_ring_header_lists_without_geometry(tmp_path):
    d = str(tmp_path)
    q = ndshm.Queue("que", slots=4, slot_bytes=64, dir=d, persist=True)
    q.close()
    path = os.path.join(d, "ndshm.que")
    r = probe("que", dir=d)
    assert (r.slots, r.slot_bytes) == (4, 64)
    info = ffi.new("ndshm_segment_info_t *")
    assert lib.ndshm_segment_probe(lib.NDSHM_KIND_NAMED, b"que", d.encode(), info, ffi.new("int *")) == 0
    ring = int(info.data_offset)  # the ring is the segment's data
    with open(path, "r+b") as f:  # the ring is not covered by the header's checksum: anyone can scribble
        for at, value in ((16, (3).to_bytes(8, sys.byteorder)),        # slots not a power of two
                          (24, (1 << 62).to_bytes(8, sys.byteorder)),  # slot_bytes far beyond the data
                          (0, bytes(8))):                              # no magic
            f.seek(ring + at)
            good = f.read(8)
            f.seek(ring + at)
            f.write(value)
            f.flush()
            r = probe("que", dir=d)
            assert r.kind == "queue" and r.status == "ready" and (r.slots, r.slot_bytes) == (None, None), at
            f.seek(ring + at)
            f.write(good)
            f.flush()
    assert (probe("que", dir=d).slots, probe("que", dir=d).slot_bytes) == (4, 64)
    ndshm.unlink("que", dir=d)


def test_unreadable_header_has_no_kind_and_records_stay_positional(tmp_path):
    (tmp_path / "ndshm.junk").write_bytes(b"NDSHMSEG" + os.urandom(2000))
    (r,) = ndshm.list(str(tmp_path))
    assert r.status == "corrupt" and r.kind is None and r.dtype is None
    old_style = SegmentRecord("n", 1, None, None, None, None, False, False, "ready", "/p", None)  # 11 fields
    assert old_style.kind == "array" and old_style.slots is None and old_style.slot_bytes is None
    assert SegmentRecord._fields[:11] == ("name", "size", "dtype", "shape", "creator_pid", "created", "in_use",
                                          "persist", "status", "path", "meta")

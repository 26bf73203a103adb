"""The public reference API (ndshm.reference / from_reference) and the node identity that every
reference and by-reference pickle carries (issue 10, item 1)."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest

import ndshm
from ndshm import _reference
from conftest import child_env, collect, run_python


def test_round_trip_of_a_slice(unique_name):
    a = ndshm.create(unique_name, (20, 30), np.float32)
    a[...] = np.arange(600, dtype=np.float32).reshape(20, 30)
    view = a[3:9, ::-2]
    ref = ndshm.reference(view)
    assert isinstance(ref, ndshm.Reference)
    assert (ref.name, ref.shape, ref.strides) == (unique_name, view.shape, view.strides)
    assert ref.dtype == np.float32 and ref.nbytes == view.nbytes and not ref.readonly
    assert ref.node == ndshm.node_identity()
    back = ndshm.from_reference(pickle.loads(pickle.dumps(ref)))
    assert isinstance(back, ndshm.SharedArray)
    np.testing.assert_array_equal(back, view)
    assert back.__array_interface__["data"][0] == view.__array_interface__["data"][0]  # zero-copy
    back[0, 0] = -1.0
    assert view[0, 0] == -1.0


def test_round_trip_in_another_process(unique_name):
    a = ndshm.create(unique_name, (8,), np.int64)
    a[...] = np.arange(8) * 3
    ref = ndshm.reference(a[2:6])
    out = run_python("import pickle, sys, ndshm\n"
                     "ref = pickle.loads(bytes.fromhex(sys.argv[1]))\n"
                     "v = ndshm.from_reference(ref)\n"
                     "print(v.tolist()); v[0] = 99\n", pickle.dumps(ref).hex())
    assert out.stdout.split() == ["[6,", "9,", "12,", "15]"]
    assert a[2] == 99


def test_structured_dtype(unique_name):
    dt = np.dtype([("x", "<f8"), ("tag", "S4")])
    a = ndshm.create(unique_name, (4,), dt)
    a["x"] = [1, 2, 3, 4]
    back = ndshm.from_reference(ndshm.reference(a[1:]))
    assert back.dtype == dt and back["x"].tolist() == [2, 3, 4]


def test_readonly(unique_name):
    a = ndshm.create(unique_name, (5,), np.int32)
    ro = ndshm.from_reference(ndshm.reference(a), readonly=True)
    assert not ro.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        ro[0] = 1
    view = a[1:]
    view.flags.writeable = False
    ref = ndshm.reference(view)
    assert ref.readonly
    assert not ndshm.from_reference(ref).flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        ndshm.from_reference(ref, readonly=False)
    with pytest.raises(TypeError, match="readonly"):
        ndshm.from_reference(ref, readonly="no")


def test_bad_inputs(unique_name):
    with pytest.raises(TypeError, match="list"):
        ndshm.reference([1, 2])
    with pytest.raises(ValueError, match="no reference"):
        ndshm.reference(np.zeros(3))
    with pytest.raises(ValueError, match="no reference"):
        ndshm.reference(ndshm.create(unique_name, (3,)) + 1)  # a ufunc result is a copy
    with pytest.raises(TypeError, match="Reference"):
        ndshm.from_reference(("name", "/dev/shm"))


def test_wrong_node_refuses_before_attaching(unique_name):
    a = ndshm.create(unique_name, (4,), np.int64)
    ref = ndshm.reference(a)._replace(node="another-boot-id/1/2")
    with pytest.raises(ndshm.WrongNodeError, match="another node") as info:
        ndshm.from_reference(ref)
    assert isinstance(info.value, ndshm.SegmentNotFoundError) and isinstance(info.value, FileNotFoundError)


def test_pickle_by_reference_reaching_another_node_raises(unique_name):
    """A pickled SharedArray carries the node identity: a process whose identity differs (here
    simulated with NDSHM_NODE_ID) refuses it even though a segment of that name exists."""
    a = ndshm.create(unique_name, (4,), np.int64)
    data = pickle.dumps(a[1:])
    code = ("import pickle, sys, ndshm\n"
            "try:\n    pickle.loads(bytes.fromhex(sys.argv[1]))\n"
            "except ndshm.WrongNodeError as e:\n    print('refused', e)\n"
            "else:\n    print('attached')\n")
    other = subprocess.run([sys.executable, "-c", code, data.hex()], capture_output=True, text=True, timeout=60,
                           env=child_env(NDSHM_NODE_ID="simulated-second-node"))
    assert other.returncode == 0, other.stderr
    assert other.stdout.startswith("refused") and "simulated-second-node" in other.stdout
    same = run_python(code, data.hex())
    assert same.stdout.strip() == "attached"


def test_node_identity_parts():
    node = _reference.node_identity()
    boot, mnt, ipc = node.split("/")
    with open("/proc/sys/kernel/random/boot_id") as f:
        assert boot == f.read().strip()
    import os
    assert mnt == str(os.stat("/proc/self/ns/mnt").st_ino) and ipc == str(os.stat("/proc/self/ns/ipc").st_ino)
    assert run_python("import ndshm; print(ndshm.node_identity())").stdout.strip() == node


def test_removed_or_recreated_segment_refuses(unique_name):
    seg = ndshm.Segment.create(unique_name, (4,), np.int64, owner="views")
    ref = ndshm.reference(seg.asarray())
    ndshm.unlink(unique_name)
    with pytest.raises(ndshm.SegmentNotFoundError):
        ndshm.from_reference(ref)
    again = ndshm.create(unique_name, (4,), np.int64)  # same name, another segment
    with pytest.raises(ndshm.SegmentNotFoundError, match="replaced"):
        ndshm.from_reference(ref)
    del again


def test_readonly_pickle_of_a_handover_is_still_claimed(unique_name):
    """A read-only view of an owner='receiver' segment, pickled: the receiver maps it writeable to
    take ownership (it used to map it read-only and could never claim it), and its view stays
    read-only; the name goes when the receiver's views do."""
    seg = ndshm.Segment.create(unique_name, (4,), np.int64, owner="receiver")
    view = seg.asarray(readonly=True)
    data = pickle.dumps(view)
    del view
    seg.close()
    code = ("import pickle, sys, gc, ndshm\n"
            "v = pickle.loads(bytes.fromhex(sys.argv[1]))\n"
            "print(v.flags.writeable, ndshm.segment_of(v).owner)\n"
            "del v\nfor _ in range(4): gc.collect()\n"
            "print(ndshm.exists(sys.argv[2]))\n")
    out = run_python(code, data.hex(), unique_name)
    assert out.stdout.split() == ["False", "received", "False"]
    collect()
    assert not ndshm.exists(unique_name)


def test_import_ndshm_loads_no_engine():
    out = run_python("import sys, ndshm\n"
                     "print(sorted(m for m in ('dask', 'distributed', 'ray', 'mpi4py') if m in sys.modules))")
    assert out.stdout.strip() == "[]"

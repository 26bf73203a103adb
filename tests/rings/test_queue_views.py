"""Views that can never dangle (issue 9): a loan()/receive() array and everything exported from it
(derived views, memoryview, DLPack, torch, ctypes) keep the ring mapped while they live, so no use
of them can crash the process, on CPython and PyPy. On CPython a receive() slot still used after
its block stays taken until the last user dies (so exports read their own message), a loan()
still referenced at the end of its block is published with its slot pinned until the references
die, and after the block an array that nothing else refers to raises ClosedError. Reads that could crash run in a child process."""

from __future__ import annotations

import ctypes
import pickle

import numpy as np
import pytest

import ndshm
from ndshm._slots import SlotArray
from conftest import PYPY, collect, run_python
from optional_deps import require

CPYTHON_ONLY = pytest.mark.skipif(PYPY, reason="reference counts (CPython) tell what outlives a block; "
                                               "PyPy is covered by the crash tests")


def _kind(kind: str) -> str:
    """Every export kind runs on every NumPy: before 2.1 (no read-only DLPack) a receive view
    exports itself through a writable alias that holds it (SlotArray.__dlpack__)."""
    return kind


def _no_signal(proc) -> None:
    assert proc.returncode == 0, f"child exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "OK" in proc.stdout


@pytest.mark.skipif(PYPY, reason="PyPy cannot change an ndarray's class: a closed array is emptied there "
                                  "(test_pypy_releases_the_slot_at_the_end_of_the_block)")
def test_closed_loan_and_receive_arrays_raise_closed_error(unique_name):
    """After the block the array used to be an empty uint8 array: view.sum() was 0, mean() nan."""
    with ndshm.Queue(unique_name, slots=4, slot_bytes=256) as q:
        with q.loan((2, 3), np.float64) as out:
            out[...] = 2.5
        with q.receive(timeout=1) as view:
            assert view.sum() == 15.0
        for arr, kind, text in ((out, "loan()", "write it inside the block"),
                                (view, "receive()", "copy what you keep inside the block")):
            uses = [lambda: arr.sum(), lambda: arr.mean(), lambda: arr[0], lambda: arr.shape, lambda: len(arr),
                    lambda: np.sum(arr), lambda: arr + 1, lambda: arr == 2.5, lambda: float(arr), lambda: bool(arr),
                    lambda: list(arr), lambda: arr.copy(), lambda: np.add(arr, 1), lambda: arr.tolist(),
                    lambda: pickle.dumps(arr), lambda: arr.__array_interface__, lambda: arr.__dlpack__(),
                    lambda: arr.ctypes, lambda: np.concatenate([arr, arr]), lambda: arr.__setitem__(0, 1)]
            for use in uses:
                with pytest.raises(ndshm.ClosedError, match=text) as ei:
                    use()
                assert kind in str(ei.value)
            assert isinstance(arr, np.ndarray) and kind in repr(arr)
            assert np.asarray(arr).size == 0  # nothing of the ring is left to read through the C level
        q.put(np.arange(3.0))
        assert q.get(timeout=1).tolist() == [0.0, 1.0, 2.0]  # both slots went back


def test_views_inside_the_block_are_plain_arrays_in_results(unique_name):
    """The block's array is an ndarray subclass (SlotArray, so that it can be closed); what NumPy
    computes from it is what it gives for an ndarray: scalars and plain arrays."""
    with ndshm.Queue(unique_name, slots=2, slot_bytes=256) as q:
        with q.loan((4,), np.float32) as out:
            assert isinstance(out, ndshm._queue.SlotArray) and out.flags.writeable
            out[:] = [1, 2, 3, 4]
            assert (out * 2).__class__ is np.ndarray or np.lib.NumpyVersion(np.__version__) < "2.0.0"
        with q.receive(timeout=1) as v:
            assert type(v.sum()) is np.float32 and v.sum() == 10
            assert type(v.mean()) in (np.float32, np.float64) and v.mean() == 2.5
            assert (v + 1).tolist() == [2, 3, 4, 5] and type((v + 1).sum()) is np.float32
            assert bool((v == np.arange(1, 5)).all())
            copied = pickle.loads(pickle.dumps(v[1:]))
            assert copied.__class__ is np.ndarray and copied.tolist() == [2, 3, 4]


@CPYTHON_ONLY
@pytest.mark.parametrize("export", [_kind(k) for k in ["memoryview", "dlpack", "ctypes", "derived", "list"]])
def test_receive_export_keeps_its_slot_and_reads_its_message(unique_name, export):
    with ndshm.Queue(unique_name, slots=4, slot_bytes=256) as q:
        q.put(np.arange(8.0))
        with q.receive(timeout=1) as v:
            if export == "memoryview":
                kept = memoryview(v)
                read = lambda: list(kept)  # noqa: E731
            elif export == "dlpack":
                kept = np.from_dlpack(v)
                read = lambda: kept.tolist()  # noqa: E731
            elif export == "ctypes":
                kept = v.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
                read = lambda: [kept[i] for i in range(8)]  # noqa: E731
            elif export == "derived":
                kept = v.reshape(2, 4)
                read = lambda: kept.ravel().tolist()  # noqa: E731
            else:
                kept = [v]  # the closed array itself, kept: it holds its slot until it dies
                read = lambda: list(range(8))  # noqa: E731
        for i in range(3):  # the other slots keep working; ours is not reused
            q.put(np.full(8, 100.0 + i))
            assert q.get(timeout=1)[0] == 100.0 + i
        assert read() == list(range(8))
        with pytest.raises(ndshm.Full, match="1 of the 4 slots are held by live views"):
            q.put(np.zeros(8), timeout=0)
        del kept, read, v
        collect()
        q.put(np.zeros(8), timeout=0)  # the slot came back
        assert q.get(timeout=1).tolist() == [0.0] * 8


_KEEP = {"memoryview": memoryview, "alias": lambda a: a, "dlpack": np.from_dlpack,
         "ctypes": lambda a: a.ctypes.data_as(ctypes.c_void_p), "list": lambda a: [a]}


@CPYTHON_ONLY
@pytest.mark.parametrize("export", ["memoryview", "dlpack", "ctypes", "list", "torch", "alias"])
def test_loan_with_a_reference_kept_past_the_block_is_published_and_pinned(unique_name, export):
    """An alias (a second name, as OpenCV's returned dst=) or an export of a loan() array kept
    after the block: the message goes out, the array is left as it is (never closed under an
    export), and its slot is pinned, so no later message is written under it, until the last
    reference is gone. A producer of this process that needs the pinned slot is told at once."""
    torch = require("torch") if export == "torch" else None
    keep = dict(_KEEP, torch=torch.from_numpy if torch else None)[export]
    with ndshm.Queue(unique_name, slots=2, slot_bytes=256) as q:
        with q.loan((8,), np.float64) as out:
            out[:] = 1
            kept = keep(out)
        assert q.get(timeout=1).tolist() == [1.0] * 8  # published, not discarded
        assert out.tolist() == [1.0] * 8 and type(out) is SlotArray  # untouched: still its message
        q.put(np.arange(3))  # position 1: the other slot
        assert q.get(timeout=1).tolist() == [0, 1, 2]
        with pytest.raises(ndshm.BusyError, match=r"queue slot 0 is pinned by this process"):
            q.put(np.zeros(1), timeout=0)  # position 2 is slot 0 again
        with pytest.raises(ndshm.BusyError, match=r"pinned by this process"):
            with q.loan((1,), np.float64):
                pass
        assert out.tolist() == [1.0] * 8  # nothing was written under it
        del kept, out
        for i in range(3):  # the pin ends with the last reference: the ring goes on
            with q.loan((2,), np.int64) as out:
                out[:] = i
            assert q.get(timeout=1).tolist() == [i, i]
        with q.loan((2,), np.int64) as out:  # references that die inside the block are nothing
            tmp = memoryview(out)
            out[:] = 9
            del tmp
        assert q.get(timeout=1).tolist() == [9, 9]
        with pytest.raises(ndshm.ClosedError):
            out.sum()


@CPYTHON_ONLY
def test_opencv_dst_in_a_loan_is_sent(unique_name):
    """OpenCV returns its dst= argument itself: `blurred = cv2.GaussianBlur(frame, ..., dst=out)`
    binds a second name to the loan's array. The frame is sent (it used to be discarded with
    BufferError), and its slot stays pinned while the names live."""
    cv2 = require("cv2")
    frame = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    expected = cv2.GaussianBlur(frame, (5, 5), 0)
    with ndshm.Queue(unique_name, slots=2, slot_bytes=1 << 16) as q:
        for _ in range(5):  # the zero-copy frame loop: each frame's names die at the next iteration
            with q.loan(frame.shape, np.uint8) as out:
                blurred = cv2.GaussianBlur(frame, (5, 5), 0, dst=out)
                assert blurred is out
            np.testing.assert_array_equal(q.get(timeout=1), expected)
        np.testing.assert_array_equal(blurred, expected)  # still the last frame sent


@CPYTHON_ONLY
def test_pinned_slot_holds_back_another_process_until_unpinned(unique_name):
    """A pin is in the ring, for every producer: a producer in another process waits for the
    pinned slot (Full at its timeout) and goes on once the pin ends; a killed pinner's pins end
    with it."""
    q = ndshm.Queue(unique_name, slots=2, slot_bytes=64)
    try:
        child = f"""
import numpy as np, ndshm, sys
q = ndshm.Queue.attach({unique_name!r})
q.put(np.arange(2))            # position 1
try:
    q.put(np.arange(2), timeout=0.3)   # position 2: slot 0, pinned by the parent
    print("PUT")
except ndshm.Full:
    print("FULL")
sys.stdout.flush()
"""
        with q.loan((2,), np.int64) as out:
            out[:] = 5
            kept = memoryview(out)
        assert q.get(timeout=1).tolist() == [5, 5]
        proc = run_python(child, timeout=30)
        assert proc.stdout.split() == ["FULL"]
        assert q.get(timeout=1).tolist() == [0, 1]
        del kept, out
        proc = run_python(child.replace("timeout=0.3", "timeout=5"), timeout=30)
        assert proc.stdout.split() == ["PUT"], proc.stderr
        assert [q.get(timeout=1).tolist() for _ in range(2)] == [[0, 1], [0, 1]]
        # a pinner killed with its pin: the slot comes back
        pinner = f"""
import os, signal, numpy as np, ndshm
q = ndshm.Queue.attach({unique_name!r})
with q.loan((2,), np.int64) as out:
    out[:] = 6
    kept = memoryview(out)
print("PINNED", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
        proc = run_python(pinner, timeout=30, check=False)
        assert proc.returncode == -9 and "PINNED" in proc.stdout
        assert q.get(timeout=1).tolist() == [6, 6]
        for i in range(4):  # every slot, the dead pinner's too
            q.put(np.full(2, i), timeout=2)
            assert q.get(timeout=1).tolist() == [i, i]
    finally:
        q.close()


@CPYTHON_ONLY
def test_loan_with_a_derived_view_bound_in_the_block_is_published(unique_name):
    """`stamp = out.view(np.int64)` inside the block is common: the message is published, and the
    slot stays pinned while such a view lives, so it never shows a later message."""
    with ndshm.Queue(unique_name, slots=2, slot_bytes=256) as q:
        with q.loan((4,), np.float64) as out:
            stamp = out.view(np.int64)
            stamp[:2] = 7, 8
            row = out[2:]
            row[:] = 1.5
        got = q.get(timeout=1)
        assert got.view(np.int64)[:2].tolist() == [7, 8] and got[2:].tolist() == [1.5, 1.5]
        q.put(np.zeros(1))
        q.get(timeout=1)
        with pytest.raises(ndshm.BusyError):  # slot 0 is pinned by the views
            q.put(np.zeros(1), timeout=0)
        assert stamp[:2].tolist() == [7, 8] and row.tolist() == [1.5, 1.5]  # their own message
        with pytest.raises(ndshm.ClosedError):  # out itself had no alias: it is closed
            out.sum()
        del stamp, row
        q.put(np.ones(2), timeout=0)
        assert q.get(timeout=1).tolist() == [1.0, 1.0]


@CPYTHON_ONLY
def test_loan_block_that_raises_still_discards_quietly(unique_name):
    with ndshm.Queue(unique_name, slots=2, slot_bytes=256) as q:
        with pytest.raises(KeyError, match="boom"):  # the block's own exception, not a BufferError on top
            with q.loan((8,), np.float64) as out:
                kept = memoryview(out)
                raise KeyError("boom")
        with pytest.raises(ndshm.Empty):
            q.get(timeout=0.05)
        assert kept.shape == (8,)


_TORCH_CHILD = """
import gc, numpy as np, torch, ndshm
q = ndshm.Queue({name!r}, slots=4, slot_bytes=4096)
q.put(np.arange(16.0))
with q.receive(timeout=5) as v:
    t1 = torch.from_numpy(v)
    t2 = torch.as_tensor(v)
    t3 = torch.from_dlpack(v)
    mv = memoryview(v)
    cap = v.__dlpack__(max_version=(1, 0))  # a capsule kept unconsumed (read-only: versioned DLPack)
for i in range(3):                      # the queue goes on; the kept message's slot is not reused
    q.put(np.full(16, -1.0))
    q.get(timeout=5)
want = list(range(16))
assert t1.tolist() == want and t2.tolist() == want and t3.tolist() == want and list(mv) == want
q.close()
del q, v
gc.collect()
t4 = torch.from_dlpack(cap)             # consumed only now, after close() and a collection
for t in (t1, t2, t3, t4):              # the ring is still mapped: reading cannot crash
    assert t.tolist() == want, t.tolist()
    t.sum().item()
assert list(mv) == want
print("OK")
"""


def test_torch_memoryview_dlpack_kept_from_receive_read_their_message_and_never_crash(unique_name):
    require("torch")
    _no_signal(run_python(_TORCH_CHILD.format(name=unique_name), check=False))


_CRASH_CHILD = """
import ctypes, gc, sys, numpy as np, ndshm
kind = {kind!r}
N = 8192
q = ndshm.Queue({name!r}, slots=4, slot_bytes=1 << 16)
q.put(np.arange(float(N)))
make = {{"memoryview": memoryview, "dlpack": np.from_dlpack, "frombuffer": lambda a: np.frombuffer(a, np.float64),
        "ctypes": lambda a: a.ctypes.data_as(ctypes.POINTER(ctypes.c_double)), "derived": lambda a: a[1:]}}
if kind.startswith("loan-"):                # references kept from a loan: it is sent, its slot pinned
    q.get()
    with q.loan((N,), np.float64) as out:
        out[:] = 3.0
        kept = make[kind[5:]](out)
    del out
    assert (q.get(timeout=5) == 3.0).all()
    want = [3.0] * N
elif kind.startswith("unbound-"):           # the with target deleted inside the block: one export left
    with q.receive(timeout=5) as v:
        kept = make[kind[8:]](v)
        del v
    want = None                             # its slot went back: safe to read, not its own message
else:
    with q.receive(timeout=5) as v:
        kept = make[kind](v)
    del v
    want = [float(i) for i in range(N)]
first = kind.split("-")[-1] == "derived"    # a[1:] starts at the second item
q.close()
del q, make
for _ in range(4):
    gc.collect()
for _ in range(3):                          # read every item, after close() and a collection
    if isinstance(kept, memoryview):
        assert kept.format == "d" and kept.shape == (N,), (kept.format, kept.shape)
        got = kept.tolist()
    elif isinstance(kept, np.ndarray):
        assert kept.dtype == np.float64 and kept.shape == ((N - 1,) if first else (N,)), kept.shape
        got = kept.tolist()
    else:                                   # a ctypes pointer
        got = [kept[i] for i in range(N)]
    if want is not None and sys.implementation.name != "pypy":
        assert got == (want[1:] if first else want), got[:4]
print("OK", sum(got))
"""

KINDS = ["memoryview", "dlpack", "frombuffer", "ctypes", "derived"]


@pytest.mark.parametrize("kind", [_kind(k) for k in KINDS + [f"loan-{k}" for k in KINDS]
                                  + [f"unbound-{k}" for k in KINDS[:3]]])
def test_exports_never_crash_after_close_and_collection(unique_name, kind):
    """On CPython and PyPy: memoryview, DLPack, frombuffer, ctypes pointers and derived views of
    loan and receive arrays, kept past the block, close() and a collection, are read whole (format,
    shape, every item) without a signal (they used to read an unmapped ring: exit -11, and on
    NumPy 2.5 a memoryview's freed format string); on CPython they read their own message."""
    _no_signal(run_python(_CRASH_CHILD.format(name=unique_name, kind=kind), check=False))


@pytest.mark.skipif(not PYPY, reason="the PyPy rules")
def test_pypy_releases_the_slot_at_the_end_of_the_block(unique_name):
    """PyPy has no reference counts: a receive() slot goes back when the block ends whatever still
    refers to it, and a loan() is published (the documented PyPy rules)."""
    with ndshm.Queue(unique_name, slots=4, slot_bytes=256) as q:
        q.put(np.arange(4.0))
        q.put(np.arange(4.0))
        with q.receive(timeout=1) as v:
            kept = v[1:]
        q.put(np.zeros(4), timeout=0)  # the slot is free at once
        with q.loan((2,), np.float64) as out:
            out[:] = 5
            kept2 = memoryview(out)
        assert q.get(timeout=1).tolist() == [0.0, 1.0, 2.0, 3.0]
        assert q.get(timeout=1).tolist() == [0.0] * 4
        assert q.get(timeout=1).tolist() == [5.0, 5.0]
        assert kept.shape == (3,) and len(kept2) == 2
        # a closed array is emptied there (PyPy's cpyext cannot take a changed class)
        assert v.shape == (0,) and out.shape == (0,)
        with pytest.raises(IndexError, match="index 0 is out of bounds"):
            v[0]


@pytest.mark.parametrize("dt", ["V0", np.dtype([])], ids=["V0", "empty-struct"])
def test_zero_itemsize_loan_and_receive_close_and_give_back_their_slots(unique_name, dt):
    """Zero-size items take another path (an __array_interface__ provider): same rules."""
    with ndshm.Queue(unique_name, slots=2, slot_bytes=64) as q:
        for _ in range(5):  # more rounds than slots: every slot comes back
            with q.loan((3,), dt) as out:
                assert out.shape == (3,) and isinstance(out, ndshm._queue.SlotArray)
            with q.receive(timeout=1) as v:
                assert v.shape == (3,) and v.dtype.itemsize == 0
        assert q.empty()
        for arr in (out, v):
            if PYPY:
                assert arr.shape == (0,)
            else:
                with pytest.raises(ndshm.ClosedError):
                    arr.shape

"""ndshm.torch: tensors in place in queue slots (receive_tensor, loan), DLPack of receive views,
and ``import ndshm`` never importing torch."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import ndshm
from conftest import PYPY, collect, run_python
from optional_deps import require


def test_import_ndshm_does_not_import_torch():
    out = run_python("""
        import sys
        import ndshm
        a = "torch" in sys.modules
        import ndshm.torch
        b = "torch" in sys.modules
        print(a, b)
    """).stdout.split()
    assert out == ["False", "False"]


_CHILD = """
import gc, signal, sys, warnings
import numpy as np, torch, ndshm, ndshm.torch
warnings.simplefilter("error")  # no "not writable" warning may appear
q = ndshm.Queue({name!r}, slots=8, slot_bytes=1 << 16)
src = np.arange(4096, dtype=np.float32)
q.put(src)
t = ndshm.torch.receive_tensor(q)
assert t.dtype == torch.float32 and t.shape == (4096,)
view = t[100:200]                     # a torch view: shares the slot too
# other messages flow through the other 7 slots while t holds its own (a ring: once the
# producers come round to the held slot they wait for it, and a full queue says why)
for i in range(7):
    q.put(np.full(4096, i, np.float32))
    assert q.get()[0] == i
assert torch.equal(t, torch.from_numpy(src))
try:
    q.put_nowait(np.zeros(8, np.float32))
    raise SystemExit("a put reached the held slot: the tensor's slot was given back")
except ndshm.Full as e:
    assert "1 of the 8 slots are held by live views" in str(e), e
t[0] = 42.0                           # writable: only this consumer's message changes
q.close()
gc.collect()
assert t[0].item() == 42.0 and torch.equal(t[1:], torch.from_numpy(src[1:]))
assert torch.equal(view, torch.from_numpy(src[100:200]))
del t
gc.collect()
assert view.sum().item() == float(src[100:200].sum())
print("OK")
"""


def test_receive_tensor_stays_correct_while_others_flow_and_after_close(unique_name):
    require("torch")
    proc = run_python(_CHILD.format(name=unique_name), check=False)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)  # no signal either
    assert proc.stdout.strip() == "OK"


def test_receive_tensor_gives_its_slot_back_when_it_dies(unique_name):
    torch = require("torch")
    import ndshm.torch as nt

    with ndshm.Queue(unique_name, slots=2, slot_bytes=256) as q:
        for rounds in range(3):
            q.put(np.arange(6, dtype=np.int64).reshape(2, 3))
            t = nt.receive_tensor(q, timeout=1)
            assert t.dtype == torch.int64 and t.tolist() == [[0, 1, 2], [3, 4, 5]]
            if not PYPY:
                q.put(np.zeros(1))
                with pytest.raises(ndshm.Full):
                    q.put_nowait(np.zeros(1))  # one slot held by t
                q.get()
            del t
            collect()
        q.put(np.zeros(1))
        q.put(np.zeros(1))  # both slots free again
        assert len(q.get_many(2)) == 2
        with pytest.raises(ndshm.Empty):
            nt.receive_tensor(q, timeout=0.05)
        q.shutdown()
        with pytest.raises(ndshm.ShutDown):
            nt.receive_tensor(q)


def test_receive_tensor_of_a_dtype_torch_lacks_raises_and_frees_the_slot(unique_name):
    require("torch")
    import ndshm.torch as nt

    with ndshm.Queue(unique_name, slots=2, slot_bytes=256) as q:
        for _ in range(3):
            q.put(np.zeros(2, [("a", "<i4"), ("b", "<f4")]))
            with pytest.raises(TypeError, match="cannot be a torch tensor"):
                nt.receive_tensor(q)
        q.put(np.zeros(1))
        q.put(np.zeros(1))  # nothing is held
        with pytest.raises(TypeError, match="not an ndshm.Queue"):
            nt.receive_tensor(object())


def test_loan_publishes_on_exit_without_warning_and_empties_the_tensor(unique_name):
    torch = require("torch")
    import ndshm.torch as nt

    with ndshm.Queue(unique_name, slots=4, slot_bytes=1024) as q:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with nt.loan(q, (2, 3), torch.float32) as t:
                assert t.dtype == torch.float32 and t.shape == (2, 3)
                t.copy_(torch.arange(6.0).reshape(2, 3))
                assert q.qsize() == 1  # claimed, not yet readable
                with pytest.raises(ndshm.Empty):
                    q.get_nowait()
        assert t.numel() == 0  # nothing of the slot left in it
        got = q.get()
        assert got.dtype == np.float32 and got.tolist() == [[0, 1, 2], [3, 4, 5]]
        with nt.loan_tensor(q, 4, np.int16) as t:  # a NumPy dtype and an int shape work too
            t.fill_(7)
        assert q.get().tolist() == [7, 7, 7, 7]
        with pytest.raises(RuntimeError, match="boom"):
            with nt.loan(q, (3,), torch.float64) as t:
                t.fill_(1)
                raise RuntimeError("boom")
        with pytest.raises(ndshm.Empty):
            q.get_nowait()  # discarded: nothing to read
        with pytest.raises(TypeError, match="bfloat16"):
            with nt.loan(q, (3,), torch.bfloat16):
                pass
        with pytest.raises(ndshm.MessageTooBigError):
            with nt.loan(q, (1000,), torch.float64):
                pass
        q.shutdown()
        with pytest.raises(ndshm.ShutDown):
            with nt.loan(q, (3,), torch.float32):
                pass


def test_loan_on_a_typed_queue_uses_its_shape_and_dtype(unique_name):
    require("torch")
    import ndshm.torch as nt

    with ndshm.Queue(unique_name, slots=2, shape=(2, 2), dtype=np.uint8) as q:
        with nt.loan(q) as t:
            t[:] = 3
        assert q.get().tolist() == [[3, 3], [3, 3]]
        q.put(np.full((2, 2), 5, np.uint8))
        assert nt.get_tensor(q).tolist() == [[5, 5], [5, 5]]


def test_dlpack_of_receive_views_on_every_numpy(unique_name):
    """A receive() view exports through DLPack on every NumPy (before 2.1 as writable: NumPy
    cannot flag it read-only), and the export keeps its slot on CPython."""
    with ndshm.Queue(unique_name, slots=2, slot_bytes=256) as q:
        q.put(np.arange(5.0))
        with q.receive() as view:
            kept = np.from_dlpack(view)
            part = np.from_dlpack(view[1:3])
        assert kept.tolist() == [0, 1, 2, 3, 4] and part.tolist() == [1, 2]
        if not PYPY:
            q.put(np.zeros(1))
            with pytest.raises(ndshm.Full):
                q.put_nowait(np.zeros(1))  # the kept export holds its slot
            assert q.get().tolist() == [0]
            assert kept.tolist() == [0, 1, 2, 3, 4]
        del kept, part, view  # the block's `as` name too (see the module docstring of _queue)
        collect()
        q.put(np.zeros(1))
        q.put(np.zeros(1))

"""Example 2 -- PyTorch and ndshm share memory, in one process and across processes.

``torch.from_numpy(a)`` on an ndshm array makes a tensor over the *same* bytes: write through
either, read through the other. Across processes, a producer computes a tensor straight into a
named segment (``torch.matmul(..., out=t)``); the consumer attaches the segment by name and
wraps it with ``torch.from_numpy``: the tensor it reads is the producer's memory, not a copy
(no pickling, no ``torch.multiprocessing`` file-descriptor passing).

    python examples/torch_zero_copy.py
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import uuid

import numpy as np

try:
    import ndshm
except ImportError:  # a source checkout without an install
    import os

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pybind"))
    import ndshm

N = 256


def produce(name: str) -> None:
    """In the producer process: compute a tensor directly into the named segment."""
    import torch

    out = ndshm.create(name, (N, N), np.float32, persist=True)  # stays after this process exits
    t = torch.from_numpy(out)                                    # the segment's bytes, as a tensor
    a = torch.arange(N * N, dtype=torch.float32).reshape(N, N) / (N * N)
    torch.matmul(a, torch.eye(N) * 2, out=t)                     # result written into shared memory
    assert t.data_ptr() == out.ctypes.data


def main() -> dict:
    import torch

    # 1. One process: from_numpy shares, both ways.
    a = ndshm.zeros((4, 4), np.float32, align=4096)
    t = torch.from_numpy(a)
    t += 1                 # write through the tensor ...
    a[0, 0] = 42           # ... and through the array
    local = {"tensor_ptr": t.data_ptr(), "array_ptr": a.ctypes.data,
             "array_sees_tensor_write": float(a[1, 1]), "tensor_sees_array_write": float(t[0, 0])}
    assert local["tensor_ptr"] == local["array_ptr"]
    print(f"torch.from_numpy(ndshm array): data_ptr 0x{t.data_ptr():x} == array 0x{a.ctypes.data:x}; "
          f"t += 1 shows in the array ({a[1, 1]}), a[0, 0] = 42 shows in the tensor ({t[0, 0].item()})")

    # 2. Two processes: the producer's tensor, read zero-copy here through a named segment.
    name = f"torch-example-{uuid.uuid4().hex[:8]}"
    p = mp.get_context("spawn").Process(target=produce, args=(name,))
    p.start()
    p.join()
    if p.exitcode != 0:
        raise RuntimeError(f"the producer exited with {p.exitcode}")
    try:
        shared = ndshm.attach(name)
        received = torch.from_numpy(shared)  # no copy: the tensor is the segment's memory
        expect = (torch.arange(N * N, dtype=torch.float32).reshape(N, N) / (N * N)) * 2
        remote = {"segment": name, "tensor_ptr": received.data_ptr(), "array_ptr": shared.ctypes.data,
                  "matches": bool(torch.allclose(received, expect)), "producer_pid": ndshm.segment_of(shared).creator_pid}
        assert remote["tensor_ptr"] == remote["array_ptr"] and remote["matches"]
        print(f"tensor made by process {remote['producer_pid']} read here zero-copy from segment {name!r}: "
              f"data_ptr 0x{received.data_ptr():x} is the mapping, values correct: {remote['matches']}")
        del received, shared
    finally:
        ndshm.unlink(name)
    return {"local": local, "remote": remote}


if __name__ == "__main__":
    main()

"""Example 4 -- ten processes write into one shared array, synchronised by ``ndshm.Barrier``.

The classic example: a parent creates one (10, 1000, 1000) float32 array in shared memory, and
ten worker processes each fill their own 1000×1000 block. The array itself is passed to the
workers: it pickles *by reference* (segment name, offset, shape, strides, dtype), so each worker
gets a zero-copy view, with ``spawn`` as well as ``fork``. An ``ndshm.Barrier`` -- not a
``time.sleep`` -- makes every worker wait until all blocks are written; then each worker checks
every other block and records what it saw in a second shared array.

    python examples/ten_writers.py
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import time

import numpy as np

try:
    import ndshm
except ImportError:  # a source checkout without an install
    import os

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pybind"))
    import ndshm

WORKERS, SIDE = 10, 1000


def worker(i: int, out: np.ndarray, seen: np.ndarray, barrier) -> None:
    out[i] = i + 1                       # my block, written straight into shared memory
    barrier.wait(timeout=60)             # nobody reads before everybody has written
    complete = all(out[j, SIDE - 1, SIDE - 1] == j + 1 and out[j, 0, 0] == j + 1 for j in range(WORKERS))
    seen[i] = WORKERS if complete else -1


def main(start_method: str = "spawn") -> dict:
    ctx = mp.get_context(start_method)
    out = ndshm.create(None, (WORKERS, SIDE, SIDE), np.float32)   # zero-filled, in /dev/shm
    seen = ndshm.create(None, (WORKERS,), np.int32)
    barrier = ndshm.Barrier(WORKERS)
    t0 = time.perf_counter()
    procs = [ctx.Process(target=worker, args=(i, out, seen, barrier)) for i in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    codes = [p.exitcode for p in procs]
    sums = out.reshape(WORKERS, -1).sum(axis=1, dtype=np.float64)
    result = {"exitcodes": codes, "block_sums": sums.tolist(), "seen": seen.tolist(), "seconds": wall,
              "segment": ndshm.segment_of(out).name}
    assert codes == [0] * WORKERS, codes
    assert all(s == (i + 1) * SIDE * SIDE for i, s in enumerate(sums)), sums
    assert seen.tolist() == [WORKERS] * WORKERS, seen
    print(f"{WORKERS} {start_method}ed processes wrote their {SIDE}x{SIDE} float32 blocks into segment "
          f"{result['segment']!r} in {wall * 1e3:.0f} ms; after the barrier each saw all {WORKERS} blocks: "
          f"{seen.tolist()}")
    return result


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "spawn")

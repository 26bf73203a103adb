"""Example -- joblib (or any process pool) over slices of one shared array, nothing copied.

A (4000, 2000) float64 array (64 MB) lives in shared memory. Eight tasks each compute statistics
of a block of rows. Each task gets the *whole* array, which pickles by reference (a few hundred
bytes: segment name, shape, dtype), plus its row range, and works on a zero-copy view. joblib's
own memmapping instead dumps large arguments to a file for each call.

With joblib installed (``pip install joblib``; scikit-learn brings it) the tasks run under
``joblib.Parallel(n_jobs=2)`` (its default loky backend: worker processes); without it, under
``concurrent.futures.ProcessPoolExecutor``: the sharing is the same.

    python examples/parallel_slices.py
"""

from __future__ import annotations

import sys
import time
from typing import Any, Dict, List, Tuple

import numpy as np

try:
    import ndshm
except ImportError:  # a source checkout without an install
    import os

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pybind"))
    import ndshm

ROWS, COLS, TASKS = 4000, 2000, 8


def block_stats(data: np.ndarray, lo: int, hi: int) -> Tuple[int, int, float, float]:
    part = data[lo:hi]  # a view: no copy in this worker either
    return lo, hi, float(part.mean()), float(part.std())


def main() -> Dict[str, Any]:
    data = ndshm.create(None, (ROWS, COLS), np.float64)
    data[:] = np.random.default_rng(0).standard_normal((ROWS, COLS))
    data.flags.writeable = False  # the tasks only read (and the flag travels with the reference)
    bounds = [(i * ROWS // TASKS, (i + 1) * ROWS // TASKS) for i in range(TASKS)]
    t0 = time.perf_counter()
    try:
        import joblib
        engine = f"joblib {joblib.__version__}"
        results: List[Tuple[int, int, float, float]] = joblib.Parallel(n_jobs=2)(
            joblib.delayed(block_stats)(data, lo, hi) for lo, hi in bounds)
    except ImportError:
        from concurrent.futures import ProcessPoolExecutor
        engine = "concurrent.futures (joblib is not installed)"
        with ProcessPoolExecutor(2) as pool:
            results = list(pool.map(block_stats, [data] * TASKS, *zip(*bounds)))
    secs = time.perf_counter() - t0
    expect = [(lo, hi, float(data[lo:hi].mean()), float(data[lo:hi].std())) for lo, hi in bounds]
    import pickle
    return {"engine": engine, "seconds": secs, "matches": results == expect, "tasks": len(results),
            "pickled_bytes": len(pickle.dumps(data)), "array_bytes": data.nbytes}


if __name__ == "__main__":
    r = main()
    print(f"{r['tasks']} tasks under {r['engine']} in {r['seconds']:.2f} s; results match: {r['matches']}; "
          f"each task got the {r['array_bytes'] / 1e6:.0f} MB array as {r['pickled_bytes']} pickled bytes")

"""Ray tasks return shared arrays without a copy into the object store, and fill a driver's array.

    python examples/ray_task_results.py

``ndshm.ray.init`` is ``ray.init`` with ndshm's serializer registered in the driver and every
worker. A task makes its result with ``ndshm.ray.empty``: the segment is handed to the driver when
it gets the result and lives while the driver holds it, then goes (nothing persists). Tasks fill
disjoint rows of an array the driver made, through ``ndshm.reference``. On another node a
reference raises ``ndshm.WrongNodeError``: return ``np.asarray(arr)`` to send data by value there.
"""

from __future__ import annotations

import numpy as np
import ray

import ndshm
import ndshm.ray


@ray.remote
def produce(n: int) -> np.ndarray:
    out = ndshm.ray.empty((n,), np.float32)
    out[...] = 2.0
    return out                                      # a reference travels, not 4 MB


@ray.remote
def fill_row(ref: ndshm.Reference, i: int) -> None:
    ndshm.from_reference(ref)[i] = i                # writes straight into the driver's array


def main() -> dict:
    ndshm.ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = ray.get(produce.remote(1_000_000))   # zero-copy: maps the task's segment
        out = ndshm.create(None, (4, 1000), np.float64)
        ray.get([fill_row.remote(ndshm.reference(out), i) for i in range(4)])
        return {"segment": ndshm.segment_of(result).name, "sum": float(result.sum()),
                "rows": out[:, 0].tolist()}
    finally:
        ray.shutdown()


if __name__ == "__main__":
    got = main()
    print(f"the driver reads the task's segment {got['segment']} in place (sum {got['sum']:.0f}); "
          f"tasks filled rows {got['rows']}")

"""Dask workers on one machine hand ndshm arrays to each other by reference: no copy over TCP.

    python examples/dask_by_reference.py

``ndshm.dask.install(client)`` registers ndshm's serializer in the client and every worker. A task
makes its result with ``ndshm.dask.empty`` (in shared memory); a task on the other worker maps it
instead of receiving a copy (its data pointer lies in the producer's segment, read-only).
``ndshm.dask.scatter`` puts a NumPy array into shared memory and scatters it with ``hash=False``.
A worker on another node (another boot id, container or IPC namespace, or its own tmpfs at
/dev/shm) gets the data by value, through Dask's own NumPy serializer; the spill path writes the
data too, never a reference. Dask's Active Memory Manager may drop the producer's replica: the
segment lives while any worker of the node holds the result, and one of them counts its bytes.
"""

from __future__ import annotations

import numpy as np
from distributed import Client, LocalCluster

import ndshm
import ndshm.dask


def produce(n: int) -> np.ndarray:
    out = ndshm.dask.empty((n,), np.float32)  # lives while a worker of this node holds it, then freed
    out[...] = np.arange(n, dtype=np.float32)
    return out


def consume(x: np.ndarray) -> dict:
    return {"segment": ndshm.segment_of(x).name, "writeable": bool(x.flags.writeable), "sum": float(x.sum())}


def main() -> dict:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        ndshm.dask.install(client)
        a, b = sorted(client.scheduler_info()["workers"])
        made = client.submit(produce, 1_000_000, workers=[a])
        seen = client.submit(consume, made, workers=[b]).result()  # worker b maps worker a's segment
        big = ndshm.dask.scatter(client, np.ones(1_000_000, np.float32), workers=[b])
        total = client.submit(lambda x: float(x.sum()), big, workers=[a]).result()
        return {"consumer": seen, "scattered_sum": total, "sent": ndshm.dask.stats()}


if __name__ == "__main__":
    out = main()
    print(f"worker B read segment {out['consumer']['segment']} in place (writeable: "
          f"{out['consumer']['writeable']}), sum {out['consumer']['sum']:.0f}; scattered sum {out['scattered_sum']:.0f}")

"""Example -- share an array read-only: ``flags.writeable = False`` travels with the reference.

A parent makes a shared array, publishes a read-only view of it, and hands that view to worker
processes (it pickles by reference: segment name, offset, shape, dtype -- and read-only-ness). In
every worker the array is read-only and stays so: writing raises ``ValueError``, setting
``flags.writeable = True`` raises ``ValueError``, and ``ndshm.from_reference(ref, readonly=False)``
refuses to make a writeable view of a read-only reference. The parent's own writeable array is
untouched by all of it (and the workers see its later writes: the memory is the same).

    python examples/readonly_sharing.py
"""

from __future__ import annotations

import multiprocessing as mp
import sys
from typing import Any, Dict

import numpy as np

try:
    import ndshm
except ImportError:  # a source checkout without an install
    import os

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pybind"))
    import ndshm


def worker(table: np.ndarray) -> Dict[str, Any]:
    out: Dict[str, Any] = {"writeable": bool(table.flags.writeable), "sum": float(table.sum())}
    try:
        table[0, 0] = -1
        out["write"] = "allowed"
    except ValueError:
        out["write"] = "refused"
    try:
        table.flags.writeable = True
        out["unlock"] = "allowed"
    except ValueError:
        out["unlock"] = "refused"
    try:
        ndshm.from_reference(ndshm.reference(table), readonly=False)
        out["writeable_view"] = "allowed"
    except ValueError:
        out["writeable_view"] = "refused"
    return out


def main(method: str = "spawn") -> Dict[str, Any]:
    table = ndshm.create(None, (1000, 100), np.float64)
    table[:] = 1.0
    shared = table.view()
    shared.flags.writeable = False  # what the workers get
    with mp.get_context(method).Pool(2) as pool:
        results = pool.map(worker, [shared, shared])
    table[0, 0] = 2.0  # the owner still writes; readers see it (same memory)
    return {"workers": results, "owner_writeable": bool(table.flags.writeable), "after": float(shared[0, 0]),
            "segment": ndshm.segment_of(table).name}


if __name__ == "__main__":
    r = main()
    for i, w in enumerate(r["workers"]):
        print(f"worker {i}: writeable={w['writeable']} write {w['write']}, flags.writeable=True {w['unlock']}, "
              f"from_reference(readonly=False) {w['writeable_view']}; sum {w['sum']:.0f}")
    print(f"owner still writes: {r['owner_writeable']}; the read-only view sees its write: {r['after']}")

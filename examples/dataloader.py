"""Example -- a PyTorch ``DataLoader`` whose dataset lives in ndshm shared memory.

The dataset (here 4,000 samples of 3x32x32 float32, 49 MB) is one ndshm array. The ``Dataset``
holds it, and ``DataLoader(num_workers=2)`` pickles the dataset into each worker: the array goes by
reference (its segment's name), so the workers map the same memory instead of each receiving,
or re-loading, a copy -- under the ``spawn`` start method (macOS, Windows-like setups, CUDA) as
under ``fork``. Samples come out as zero-copy tensors of the shared rows (``torch.from_numpy``).

An honest note on when it helps: the gain is in *starting* workers on a large in-memory dataset
(nothing copied, nothing re-read from disk, one copy in RAM however many workers). The batches
themselves still travel back to the main process through torch's own machinery (which already
uses shared memory for tensors); for small batches, measured, ndshm brings no gain there.

    python examples/dataloader.py
"""

from __future__ import annotations

import sys
import time
from typing import Any, Dict

import numpy as np

try:
    import ndshm
except ImportError:  # a source checkout without an install
    import os

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pybind"))
    import ndshm

import torch
from torch.utils.data import DataLoader, Dataset


class SharedImages(Dataset):  # type: ignore[type-arg]
    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels  # ndshm arrays: pickled by reference into workers

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.images[i]), int(self.labels[i])  # a view of the shared row


def main(n: int = 4000) -> Dict[str, Any]:
    images = ndshm.create(None, (n, 3, 32, 32), np.float32)
    images[:] = np.arange(n, dtype=np.float32)[:, None, None, None]
    labels = ndshm.create(None, (n,), np.int64)
    labels[:] = np.arange(n) % 10
    ds = SharedImages(images, labels)
    import pickle
    t0 = time.perf_counter()
    loader = DataLoader(ds, batch_size=256, shuffle=True, num_workers=2, multiprocessing_context="spawn")
    seen, ok = 0, True
    for x, y in loader:
        ok &= bool((x[:, 0, 0, 0].long() % 10 == y).all())
        seen += len(y)
    return {"samples": seen, "consistent": ok, "seconds": time.perf_counter() - t0,
            "dataset_pickled_bytes": len(pickle.dumps(ds)), "dataset_bytes": images.nbytes + labels.nbytes}


if __name__ == "__main__":
    r = main()
    print(f"{r['samples']} samples in {r['seconds']:.1f} s through 2 spawned workers, consistent: {r['consistent']}; "
          f"the {r['dataset_bytes'] / 1e6:.0f} MB dataset pickled into each worker as {r['dataset_pickled_bytes']} "
          "bytes")

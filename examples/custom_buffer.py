"""Example 3 -- a custom buffer object with ``__array_interface__``, built on ``ndshm.Buffer``.

The recipe that circulates (and is wrong)::

    class Image:
        def __init__(self, h, w):
            raw = ctypes.create_string_buffer(h * w + 63)          # owned by a local ...
            addr = (ctypes.addressof(raw) + 63) & ~63              # ... aligned by hand
            self.__array_interface__ = {"data": (addr, False), "shape": (h, w), "typestr": "|u1",
                                        "version": 3}
    img = np.asarray(Image(480, 640))   # `raw` is already freed: img points at released memory

Nothing keeps ``raw`` alive: as soon as ``__init__`` returns, the memory is gone and every array
made from the object reads and writes freed memory (a crash, or silent corruption later).
Storing ``raw`` on the object is not enough either when the object itself is dropped while an
array made from it lives on -- unless NumPy keeps the object, which it does for
``__array_interface__`` providers (the array's ``.base``).

The correct version below: the object *owns* an ``ndshm.Buffer`` (aligned by the C allocator,
freed exactly once, when the last holder is gone), and NumPy's ``.base`` keeps the object --
and through it the buffer -- alive for as long as any array view exists.

    python examples/custom_buffer.py
"""

from __future__ import annotations

import gc
import sys
import weakref

import numpy as np

try:
    import ndshm
except ImportError:  # a source checkout without an install
    import os

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pybind"))
    import ndshm


def collect() -> None:
    """Run the garbage collector until finalizers settle (PyPy frees in later passes)."""
    for _ in range(4):
        gc.collect()


class Image:
    """A grey-scale image whose pixel rows start on 64-byte boundaries (padded row stride)."""

    def __init__(self, height: int, width: int, align: int = 64) -> None:
        stride = (width + align - 1) // align * align
        self._buffer = ndshm.Buffer(height * stride, align=align, zero=True)  # the owner of the bytes
        self.shape = (height, width)
        self.row_stride = stride
        self.__array_interface__ = {
            "version": 3, "data": (self._buffer.address, False), "shape": (height, width),
            "typestr": "|u1", "strides": (stride, 1),
        }

    @property
    def address(self) -> int:
        return self._buffer.address


def main() -> dict:
    img = Image(480, 640)
    owner = weakref.ref(img._buffer)       # watches the allocation without keeping it alive
    view = np.asarray(img)                 # zero-copy: NumPy keeps `img` as view.base
    rows_aligned = all(view[i:].ctypes.data % 64 == 0 for i in range(0, 480, 37))
    address = img.address
    view[10, 20] = 200
    del img                                # the object is gone from our namespace ...
    collect()
    alive = owner() is not None            # ... but its buffer still lives: `view` holds it
    survived = int(view[10, 20])
    sub = view[100:200, 300:400]           # a slice keeps the same owner chain
    del view
    collect()
    still_alive = owner() is not None
    sub_address = sub.__array_interface__["data"][0]
    live_with_slice = ndshm.stats()["live_buffers"]
    del sub
    collect()
    after = owner() is not None
    result = {"address": address, "rows_aligned": rows_aligned, "alive_after_del_object": alive,
              "value_survived": survived, "alive_while_slice_lives": still_alive,
              "slice_offset": sub_address - address, "alive_after_last_view": after,
              "live_buffers_released": live_with_slice - ndshm.stats()["live_buffers"]}
    assert alive and survived == 200 and still_alive and not after
    print(f"Image pixels at 0x{address:x}, every row 64-byte aligned: {rows_aligned}")
    print(f"after `del img`: buffer alive {alive} (the array keeps it), pixel still {survived}")
    print(f"a slice alone keeps it too (alive {still_alive}, at offset {sub_address - address}); after the "
          f"last view it is freed, exactly once (ndshm.stats(): {result['live_buffers_released']} buffer released)")
    return result


if __name__ == "__main__":
    main()

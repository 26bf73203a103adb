"""Example 1 -- OpenCV without copies: results land straight in (shared) ndshm arrays.

Every OpenCV function takes ``dst=``: give it an ndshm array of the right shape and dtype and
OpenCV writes into that memory instead of allocating. A plain ``cv2.cvtColor(img, code)`` returns
a *new* buffer (a fresh NumPy allocation): fine in one process, but then another copy is needed
to share it. Here the source frame and the results live in named segments, so any other process
can ``ndshm.attach`` them by name, zero-copy.

    python examples/opencv_dst.py
"""

from __future__ import annotations

import sys

import numpy as np

try:
    import ndshm
except ImportError:  # a source checkout without an install
    import os

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pybind"))
    import ndshm


def main() -> dict:
    import cv2

    h, w = 480, 640
    # A frame in a named segment (any process may attach it), and the outputs beside it.
    frame = ndshm.create(None, (h, w, 3), np.uint8)
    gray = ndshm.create(None, (h, w), np.uint8)
    blurred = ndshm.empty((h, w, 3), np.uint8, align=4096)  # private, page-aligned: dst= works the same
    yy, xx = np.mgrid[0:h, 0:w]
    frame[..., 0] = xx * 255 // (w - 1)  # a blue ramp
    frame[..., 1] = yy * 255 // (h - 1)  # a green ramp
    frame[..., 2] = 128

    out = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY, dst=gray)   # written into the segment
    cv2.GaussianBlur(frame, (5, 5), 0, dst=blurred)
    plain = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)           # a new buffer, owned by NumPy

    result = {
        "gray_address": gray.ctypes.data, "returned_address": out.ctypes.data,
        "plain_address": plain.ctypes.data, "blurred_address": blurred.ctypes.data,
        "same_values": bool(np.array_equal(plain, gray)),
        "gray_segment": ndshm.segment_of(gray).name,
    }
    assert result["returned_address"] == result["gray_address"], "cv2 allocated instead of using dst="
    assert result["plain_address"] != result["gray_address"]
    print(f"cv2.cvtColor(frame, dst=gray) wrote into the segment {result['gray_segment']!r}: "
          f"returned 0x{out.ctypes.data:x} == gray 0x{gray.ctypes.data:x}")
    print(f"cv2.cvtColor(frame) without dst= returned a new buffer at 0x{plain.ctypes.data:x} "
          f"(same pixels: {result['same_values']})")
    print(f"cv2.GaussianBlur(..., dst=blurred) kept the 4096-aligned buffer: "
          f"{ndshm.is_aligned(blurred, 4096)}")
    return result


if __name__ == "__main__":
    main()

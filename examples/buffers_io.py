"""Example 6 -- ndshm arrays speak Python's buffer protocol and DLPack.

- ``memoryview(a)`` is the array's own bytes (writes show in the array);
- ``socket.recv_into(a)`` and ``file.readinto(a)`` fill an ndshm array straight from the kernel,
  no intermediate ``bytes`` object (with a named segment, another process sees the data at once);
- ``np.from_dlpack(a)`` (and ``torch.from_dlpack(a)``, when torch is installed) hand the same
  memory to another library through DLPack, zero-copy.

    python examples/buffers_io.py
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import threading

import numpy as np

try:
    import ndshm
except ImportError:  # a source checkout without an install
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pybind"))
    import ndshm


def recv_exactly(sock: socket.socket, dst: np.ndarray) -> int:
    """Fill C-contiguous ``dst`` from ``sock`` with ``recv_into``; returns the number of bytes.

    The remaining part is passed as a byte-array view (``flat[got:]``), not a sliced
    ``memoryview``: PyPy refuses sliced memoryviews as writable buffers, both accept arrays."""
    flat = dst.reshape(-1).view(np.uint8)
    got = 0
    while got < flat.size:
        n = sock.recv_into(flat[got:])
        if n == 0:
            raise EOFError(f"peer closed after {got} of {flat.size} bytes")
        got += n
    return got


def main() -> dict:
    out: dict = {}
    # memoryview: the same bytes
    a = ndshm.zeros((4, 256), np.float32, align=4096)
    mv = memoryview(a)
    mv.cast("B")[:4] = np.float32(3.5).tobytes()
    out["memoryview"] = {"format": mv.format, "shape": mv.shape, "nbytes": mv.nbytes, "a00": float(a[0, 0])}
    assert a[0, 0] == 3.5 and mv.nbytes == a.nbytes

    # socket.recv_into: 4 MiB straight into a shared array
    payload = np.random.default_rng(1).integers(0, 255, 4 << 20, dtype=np.uint8)
    dst = ndshm.create(None, payload.shape, np.uint8) if hasattr(ndshm, "create") else ndshm.empty(payload.shape, np.uint8)
    left, right = socket.socketpair()
    sender = threading.Thread(target=lambda: (left.sendall(payload), left.close()), daemon=True)
    sender.start()
    try:
        n = recv_exactly(right, dst)
    finally:
        right.close()  # a failed receive must not leave the sender blocked for ever
    sender.join()
    out["recv_into"] = {"bytes": n, "equal": bool(np.array_equal(dst, payload)), "address": dst.ctypes.data}
    assert out["recv_into"]["equal"]

    # file.readinto
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(payload[: 1 << 20].tobytes())
        path = f.name
    try:
        img = ndshm.empty((1024, 1024), np.uint8, align="page")
        with open(path, "rb", buffering=0) as f:
            got = f.readinto(img)
        out["readinto"] = {"bytes": got, "equal": bool(np.array_equal(img.reshape(-1), payload[: 1 << 20]))}
        assert got == img.nbytes and out["readinto"]["equal"]
    finally:
        os.unlink(path)

    # DLPack through NumPy (and torch when installed): same address, writes visible.
    # NumPy before 2.1 imports DLPack tensors read-only; then we write through `a` and read `d`.
    d = np.from_dlpack(a)
    (d if d.flags.writeable else a)[1, 1] = 7
    out["dlpack_numpy"] = {"same_address": d.ctypes.data == a.ctypes.data, "write_through": float(d[1, 1]),
                           "writeable": bool(d.flags.writeable)}
    assert out["dlpack_numpy"]["same_address"] and a[1, 1] == 7 and d[1, 1] == 7
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        t = torch.from_dlpack(a)
        t[2, 2] = 9
        out["dlpack_torch"] = {"same_address": t.data_ptr() == a.ctypes.data, "write_through": float(a[2, 2])}
        assert out["dlpack_torch"]["same_address"] and a[2, 2] == 9

    print(f"memoryview: format {mv.format!r}, shape {mv.shape}, a write through it shows in the array ({a[0, 0]})")
    print(f"socket.recv_into: {n} bytes straight into the array at 0x{dst.ctypes.data:x}, intact: "
          f"{out['recv_into']['equal']}")
    print(f"file.readinto: {out['readinto']['bytes']} bytes into a page-aligned array, intact: "
          f"{out['readinto']['equal']}")
    print(f"np.from_dlpack: same address {out['dlpack_numpy']['same_address']}, write visible "
          f"({out['dlpack_numpy']['write_through']})"
          + (f"; torch.from_dlpack: same address {out['dlpack_torch']['same_address']}" if torch is not None else
             "; torch not installed, torch.from_dlpack skipped"))
    return out


if __name__ == "__main__":
    main()

"""Passing descriptors over a connected Unix socket: how a memfd segment reaches another process
(``ndshm.send_fd`` / ``ndshm.recv_fd``; C does the SCM_RIGHTS work, csrc/fdpass.c)."""

from __future__ import annotations

from typing import Any

from . import _dtype
from ._errors import check
from ._lib import ffi, lib
from ._segment import Segment

__all__ = ["send_fd", "recv_fd"]


def send_fd(sock: Any, fd: Any) -> None:
    """Send descriptor ``fd`` (or a memfd Segment's) over the connected Unix socket ``sock``."""
    if isinstance(fd, Segment):
        fd = fd.fd
    check(lib.ndshm_send_fd(_sock_fd(sock), _dtype.as_int(fd, "file descriptor", 0, 2**31 - 1)))


def _sock_fd(sock: Any) -> int:
    return _dtype.as_int(sock.fileno() if hasattr(sock, "fileno") else sock, "socket", 0, 2**31 - 1)


def recv_fd(sock: Any) -> int:
    """Receive one descriptor from the connected Unix socket ``sock``; the caller owns it."""
    out = ffi.new("int *")
    check(lib.ndshm_recv_fd(_sock_fd(sock), out))
    return int(out[0])

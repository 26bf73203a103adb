"""Exceptions, and the one function that turns a negative NDSHM_E* code into one.

Every exception derives from :class:`NdshmError` and from the built-in type callers already
catch (``ValueError``, ``FileExistsError``, ``MemoryError``, ...). Each carries ``.code`` (the
negative C code) and ``.errname`` (``"NDSHM_EINVAL"``); OSError subclasses also carry ``.errno``.
"""

from __future__ import annotations

import errno as _errno
import os
import queue as _queue
import threading as _threading
import time as _time
from typing import Any, Callable, NoReturn, Optional

from ._lib import ffi, lib

__all__ = [
    "NdshmError", "InvalidValueError", "CorruptSegmentError", "SegmentExistsError",
    "SegmentNotFoundError", "DirectoryNotFoundError", "NdshmPermissionError", "OutOfMemoryError", "NoSpaceError",
    "NdshmTimeoutError", "BusyError", "Empty", "Full", "MessageTooBigError", "OwnerDiedError",
    "ClosedError", "NotSupportedError", "NdshmOSError", "BrokenBarrierError", "ShutDown", "Lagged",
    "error_from_code", "check",
]


class NdshmError(Exception):
    """Base class of every ndshm error. ``code`` is the C library's negative NDSHM_E* code.
    An error raised by :meth:`Queue.put_many` also says in ``arrays_put`` how many of its
    arrays went in before it (``None`` elsewhere)."""

    code: int = 0
    errname: str = ""
    arrays_put: Optional[int] = None


class InvalidValueError(NdshmError, ValueError):
    """An argument is out of range or a size overflows (NDSHM_EINVAL, NDSHM_EOVERFLOW)."""


class MessageTooBigError(NdshmError, ValueError):
    """A queue message is larger than the queue's slot (NDSHM_ETOOBIG)."""


class CorruptSegmentError(NdshmError, ValueError):
    """A segment's header or size fails validation: corrupt, truncated, foreign or hostile."""


class ClosedError(NdshmError, ValueError):
    """The object was closed (like I/O on a closed file, a ``ValueError``)."""


class SegmentExistsError(NdshmError, FileExistsError):
    """A segment of that name exists already."""


class SegmentNotFoundError(NdshmError, FileNotFoundError):
    """No segment of that name."""


class DirectoryNotFoundError(SegmentNotFoundError):
    """The directory meant to hold segments (``dir=``, or ``$NDSHM_DIR``) does not exist. ndshm
    never creates it (a typo would otherwise scatter segments in a new directory): the message
    says to create it (``mkdir -m 700 DIR``, private to the user) or to fix ``NDSHM_DIR``.
    A ``FileNotFoundError``, and a :class:`SegmentNotFoundError` as before."""


class NdshmPermissionError(NdshmError, PermissionError):
    """Permission denied (file mode, another user, or an operation the caller may not do)."""


class OutOfMemoryError(NdshmError, MemoryError):
    """Memory or address space is exhausted."""


class NoSpaceError(NdshmError, OSError):
    """The file system holding a segment is full (``errno.ENOSPC``)."""


class NotSupportedError(NdshmError, OSError):
    """The system does not offer what was asked (for example no huge pages are reserved)."""


class NdshmOSError(NdshmError, OSError):
    """Another operating-system error; ``.errno`` says which."""


class NdshmTimeoutError(NdshmError, TimeoutError):
    """A wait ran out of time."""


class BusyError(NdshmError, BlockingIOError):
    """A segment is still being initialised by its creator, or the operation would block."""


class Empty(NdshmError, _queue.Empty):
    """A queue had nothing to take within the timeout (also a ``queue.Empty``)."""


class Full(NdshmError, _queue.Full):
    """A queue had no free slot within the timeout (also a ``queue.Full``)."""


class OwnerDiedError(NdshmError, RuntimeError):
    """A lock's previous owner died while holding it."""


class BrokenBarrierError(NdshmError, _threading.BrokenBarrierError):
    """A barrier was broken by a timeout or a dead party."""


# Python 3.13's queue.ShutDown where it exists (so `except queue.ShutDown` catches ours too).
_ShutDownBase: tuple[type[Exception], ...] = (_queue.ShutDown,) if hasattr(_queue, "ShutDown") else ()


class ShutDown(NdshmError, *_ShutDownBase):  # type: ignore[misc]
    """The queue or broadcast was shut down (NDSHM_ESHUTDOWN), as Python 3.13's
    ``queue.ShutDown`` (also one of those on 3.13+): ``put`` raises it at once; readers get it
    once they have drained what was published before the shutdown (``immediate``: at once), and
    iteration ends."""


class Lagged(NdshmError):
    """A broadcast subscriber fell behind an ``overwrite`` broadcast and ``missed`` messages
    were overwritten before it read them (NDSHM_ELAGGED), like tokio's ``RecvError::Lagged``.
    Nothing is wrong with the subscription: the next read returns the oldest message retained."""

    missed: int = 0


# code -> (class, errno for OSError subclasses or None)
_TABLE: dict[int, tuple[type[NdshmError], int | None]] = {
    lib.NDSHM_EINVAL: (InvalidValueError, None),
    lib.NDSHM_EOVERFLOW: (InvalidValueError, None),
    lib.NDSHM_ETOOBIG: (MessageTooBigError, None),
    lib.NDSHM_ECORRUPT: (CorruptSegmentError, None),
    lib.NDSHM_ECLOSED: (ClosedError, None),
    lib.NDSHM_ENOMEM: (OutOfMemoryError, None),
    lib.NDSHM_EEMPTY: (Empty, None),
    lib.NDSHM_EFULL: (Full, None),
    lib.NDSHM_EOWNERDEAD: (OwnerDiedError, None),
    lib.NDSHM_EBROKEN: (BrokenBarrierError, None),
    lib.NDSHM_ESHUTDOWN: (ShutDown, None),
    lib.NDSHM_ELAGGED: (Lagged, None),
    lib.NDSHM_EEXIST: (SegmentExistsError, _errno.EEXIST),
    lib.NDSHM_ENOENT: (SegmentNotFoundError, _errno.ENOENT),
    lib.NDSHM_EACCES: (NdshmPermissionError, _errno.EACCES),
    lib.NDSHM_EPERM: (NdshmPermissionError, _errno.EPERM),
    lib.NDSHM_ENOSPC: (NoSpaceError, _errno.ENOSPC),
    lib.NDSHM_ETIMEDOUT: (NdshmTimeoutError, _errno.ETIMEDOUT),
    lib.NDSHM_EBUSY: (BusyError, _errno.EBUSY),
    lib.NDSHM_ENOTSUP: (NotSupportedError, _errno.EOPNOTSUPP),
    lib.NDSHM_ESYS: (NdshmOSError, None),
}
_ETIMEDOUT = lib.NDSHM_ETIMEDOUT


def error_from_code(code: int, filename: str | None = None, *, detail: str | None = None,
                    timed_out: type[NdshmError] | None = None) -> NdshmError:
    """Build the exception for a negative NDSHM_E* ``code`` from this thread's failure detail
    (or from ``detail``). ``timed_out``: the class of an NDSHM_ETIMEDOUT instead of
    NdshmTimeoutError (a ring's wait that ran out is :class:`Empty` or :class:`Full`)."""
    if detail is None:
        detail = ffi.string(lib.ndshm_last_detail()).decode("utf-8", "replace")
    message = detail or ffi.string(lib.ndshm_strerror(code)).decode()
    cls, err = _TABLE.get(code, (NdshmOSError, None))
    if timed_out is not None and code == _ETIMEDOUT:
        cls, err = timed_out, None
    exc: NdshmError
    if filename is not None and os.path.isabs(filename):
        if code == lib.NDSHM_ENOSPC:
            message += _space_advice(os.path.dirname(filename))
        elif code == lib.NDSHM_ENOENT and not os.path.isdir(os.path.dirname(filename)):
            d = os.path.dirname(filename)
            cls = DirectoryNotFoundError
            message += (f"; the segment directory {d} (dir= or $NDSHM_DIR) does not exist: create it "
                        f"(mkdir -m 700 {d}) or point NDSHM_DIR at an existing one (default /dev/shm)")
    if issubclass(cls, OSError):
        err = err if err is not None else (lib.ndshm_last_errno() or _errno.EIO)
        exc = cls(err, message) if filename is None else cls(err, message, filename)
    else:
        exc = cls(message)
    exc.code = code
    exc.errname = ffi.string(lib.ndshm_errname(code)).decode()
    return exc


_GiB = 1 << 30


def _space_advice(d: str) -> str:
    """What a NoSpaceError adds: the free and total bytes of directory ``d``'s file system and, on a
    small one, how to enlarge it."""
    try:
        st = os.statvfs(d)
    except OSError:
        return ""
    free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    text = f" ({d} has {free / 2**20:.1f} MiB free of {total / 2**20:.1f} MiB)"
    if total < _GiB:
        text += ("; it is small: give the container more shared memory (Docker: --shm-size=2g; Kubernetes: mount "
                 "an emptyDir volume with medium: Memory at /dev/shm), or set NDSHM_DIR to a larger tmpfs directory")
    return text


_ESYS = lib.NDSHM_ESYS


def retry_interrupted(rc: int, call: Callable[..., int], *args: Any) -> int:
    """``rc`` of ``call(*args)``, or of calling it again if a signal ended its wait (the C library
    returns EINTR from an attach's wait for a segment's lock rather than retrying, so that Python
    runs its signal handlers: a Ctrl-C raises KeyboardInterrupt here, as PEP 475 has Python do for
    system calls). Signals arriving without end stop the retries after two seconds."""
    end = 0.0
    while rc == _ESYS and lib.ndshm_last_errno() == _errno.EINTR:
        now = _time.monotonic()
        end = end or now + 2.0
        if now > end:
            break
        rc = call(*args)
    return rc


def check(rc: int, filename: str | None = None) -> int:
    """Return ``rc`` if it is not negative, otherwise raise the matching exception."""
    if rc < 0:
        raise error_from_code(rc, filename)
    return rc


def raise_for(rc: int, filename: str | None = None) -> NoReturn:
    """Raise the exception for the negative code ``rc`` (for hot paths that test ``rc`` inline)."""
    raise error_from_code(rc, filename)

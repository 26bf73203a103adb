"""What the queue and broadcast rings share as named segments: argument checks (names, dirs,
timeouts), waiting for a creator, and :class:`Ring`, the handle part both classes have (name,
unlink, context manager; the ring's slots as :class:`ndshm._slots.SlotRing` has them)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

from ._dirs import default_dir
from ._errors import BusyError, ClosedError, SegmentNotFoundError, error_from_code
from ._lib import ffi, lib
from ._params import PREFIX
from ._slots import SlotRing

_monotonic = time.monotonic
_R = TypeVar("_R", bound="Ring")
_A = TypeVar("_A")


_FOREVER = 1e9  # a timeout above this many seconds (~31 years, or +inf) waits for ever


def c_timeout(block: bool, timeout: Optional[float]) -> float:
    """The C timeout for (block, timeout): 0 tries once, a negative value waits for ever."""
    if not block:
        return 0.0
    if timeout is None:
        return -1.0
    c = timeout.__class__  # a float or int checked inline: ~70 ns less per call ("ndshm put+get", 64 B)
    if (c is float or c is int) and 0 <= timeout <= _FOREVER:  # False for NaN
        return float(timeout)
    return _timeout_slow(timeout)


def _timeout_slow(timeout: Any) -> float:
    if isinstance(timeout, (str, bytes, bytearray)):
        raise TypeError(f"timeout {timeout!r} is not a number of seconds")
    try:
        t = float(timeout)
    except OverflowError:  # an int too large for a float
        t = float("inf") if timeout > 0 else float("-inf")
    except (TypeError, ValueError):
        raise TypeError(f"timeout {timeout!r} is not a number of seconds") from None
    if t != t:
        raise ValueError(f"timeout {timeout!r} is not a number (NaN); use None to wait for ever")
    if t < 0:
        raise ValueError(f"timeout {timeout!r} must be a non-negative number")
    return -1.0 if t > _FOREVER else t


def as_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"queue name {name!r} is not a str")
    if "\0" in name:
        raise ValueError(f"queue name {name!r} contains a NUL character")
    return name


def as_dir(dir: Any) -> Optional[str]:
    """A directory argument (str, bytes or os.PathLike; None or empty: the default) as a str."""
    if dir is None:
        return None
    try:
        d = os.fsdecode(dir)
    except TypeError:
        raise TypeError(f"dir {dir!r} is not a str, bytes or os.PathLike path") from None
    if "\0" in d:
        raise ValueError(f"dir {dir!r} contains a NUL character")
    return d or None


def encode_name(name: str) -> bytes:
    try:
        return name.encode()
    except UnicodeEncodeError:
        raise ValueError(f"queue name {name!r} cannot be encoded as UTF-8") from None


def attach_waiting(attach: Callable[[], _A], timeout: Any, what: str) -> _A:
    """``attach()``, retried while it raises SegmentNotFoundError (no creator yet) or BusyError (a
    creator still filling the header) for up to ``timeout`` seconds (None: one try, as before;
    ``float("inf")``: for ever), then the last error, its message saying how long it waited."""
    if timeout is None:
        return attach()
    t = c_timeout(True, timeout)
    deadline = None if t < 0 else _monotonic() + t
    pause = 0.001
    while True:
        try:
            return attach()
        except (SegmentNotFoundError, BusyError) as e:
            if deadline is not None and _monotonic() >= deadline:
                e.strerror = f"{e.strerror}; still so after waiting {t:g} s for the creator of {what}"
                raise
        time.sleep(pause if deadline is None else max(min(pause, deadline - _monotonic()), 0.0))
        pause = min(pause * 2, 0.05)


def unlink_if(name: str, dir: Optional[str], pid: int) -> None:
    if os.getpid() == pid:
        lib.ndshm_unlink(encode_name(name), os.fsencode(dir) if dir else ffi.NULL)


def path_of(name: str, dir: Optional[str]) -> str:
    """The file of ring ``name`` in ``dir`` (for error messages, as segments name theirs)."""
    return os.path.join(default_dir(dir), PREFIX + name)


class Ring(SlotRing):
    """The handle part of Queue and Broadcast: a named ring (its name, dir, unlink, context
    manager) over the slots of :class:`ndshm._slots.SlotRing`. Each sets ``name`` and ``dir``
    and what SlotRing asks for."""

    __slots__ = ("name", "dir", "_creator", "_finalizer", "__weakref__")
    name: str
    dir: Optional[str]
    _creator: bool
    _finalizer: Any

    def _live(self) -> Any:
        if self._closed:
            raise ClosedError(f"{self._KIND} {self.name!r} is closed")
        return self._handle

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called on this handle."""
        return self._closed

    def unlink(self) -> None:
        """Remove the name now (attached handles keep working)."""
        if self._finalizer is not None:
            self._finalizer.detach()
        rc = lib.ndshm_unlink(encode_name(self.name), os.fsencode(self.dir) if self.dir else ffi.NULL)
        if rc:
            raise error_from_code(rc, self.name)

    if TYPE_CHECKING:
        def close(self) -> None:
            """Each ring says what closing it ends."""

    def __enter__(self: _R) -> _R:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Process-shared synchronisation in shared memory: :class:`Lock`, :class:`Event`, :class:`Barrier`.

Each object lives in one 64-byte sync area of a segment header (whose all-zero state is valid):
standalone (``Lock(name=None)`` makes a small named segment of its own, and pickles by that name)
or inside an array's segment (``ndshm.segment_of(arr).lock``, ``.event``, ``.barrier(parties)``).

The lock is robust: owners are processes (pid + start time). If the holder dies, the next
acquirer gets the lock, ``acquire()`` returns True and ``lock.owner_died`` is True until the next
acquire (the data it protects may be half-updated; check it). A barrier is broken
(:class:`BrokenBarrierError` for every waiter) when a wait times out, which is how a dead party is
noticed: give ``wait`` a timeout when a party may die. A wait interrupted by an exception
(Ctrl-C) breaks it too. Every wait (with a timeout or without) comes back to Python a few times
a second, so Ctrl-C works.

``close()`` ends one handle's use in this process: calls blocked on it in other threads
(``acquire``, ``wait``) wake within 0.1 s with :class:`ClosedError` (a barrier wait that ends so
leaves the barrier broken, as for any exception); later calls raise it too, except
``Lock.release`` (a held lock can still be given back). Other handles and processes notice nothing.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import time
from typing import Any, Callable, Optional, Union

from . import _dtype
from ._errors import BrokenBarrierError, ClosedError, NdshmPermissionError, check, error_from_code
from ._lib import ffi, lib
from ._segment import Segment, sync_segment
from ._waits import sliced as _sliced

__all__ = ["Lock", "Event", "Barrier"]

# A sync area is a cffi ``void *`` (cffi's CData carries no static type: Any). The C calls are
# bound to module globals once, with their C signatures spelled out for type checkers.
_Area = Any
_Wait = Callable[[_Area, float], int]
_EOWNERDEAD: int = lib.NDSHM_EOWNERDEAD
_EBUSY: int = lib.NDSHM_EBUSY
_ETIMEDOUT: int = lib.NDSHM_ETIMEDOUT
_EBROKEN: int = lib.NDSHM_EBROKEN
_acquire: _Wait = lib.ndshm_lock_acquire
_lock_release: Callable[[_Area], int] = lib.ndshm_lock_release
_lock_state: Callable[[_Area], int] = lib.ndshm_lock_state
_ev_set: Callable[[_Area], int] = lib.ndshm_event_set
_ev_clear: Callable[[_Area], int] = lib.ndshm_event_clear
_ev_is_set: Callable[[_Area], int] = lib.ndshm_event_is_set
_ev_wait: _Wait = lib.ndshm_event_wait
# (area, parties, timeout, slice, uint64_t *ticket, uint32_t *index) -> rc; (area, ticket) -> rc
_b_wait: Callable[[_Area, int, float, float, Any, Any], int] = lib.ndshm_barrier_wait_sliced
_b_leave: Callable[[_Area, int], int] = lib.ndshm_barrier_leave
_SLICE = 0.1  # every wait longer than this comes back to Python this often (Ctrl-C, close() from another thread)
_MAX_PARTIES = 1 << 20  # what ndshm_barrier_wait accepts (parties is a uint32_t, 1 .. 2^20)


def _check_timeout(timeout: Any) -> Optional[float]:
    """``timeout`` as a float (None, negative and +inf: wait for ever, returned as None); a
    TypeError for a non-number and a ValueError for NaN, each naming the value."""
    if timeout is None:
        return None
    if not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout {timeout!r} is not a number of seconds (or None)")
    try:
        t = float(timeout)
    except (TypeError, ValueError, OverflowError) as exc:  # an odd Real subclass
        raise TypeError(f"timeout {timeout!r} is not a number of seconds (or None)") from exc
    if math.isnan(t):
        raise ValueError(f"timeout {timeout!r} is not a number of seconds (NaN)")
    if t < 0 or math.isinf(t):
        return None
    return t


def _timeout(blocking: bool, timeout: Optional[float]) -> float:
    """Seconds to pass to the C library: 0.0 for a non-blocking try, -1.0 for "for ever"."""
    t = _check_timeout(timeout)
    if not blocking:
        return 0.0
    return -1.0 if t is None else t


def _rebuild(cls: Union[type[Lock], type[Event], type[Barrier]], segment: Segment, index: int,
             extra: tuple[Any, ...]) -> Union[Lock, Event, Barrier]:
    return cls._in_segment(segment, index, *extra)


def lock_in(segment: Segment, index: int) -> Lock:
    """The Lock in ``segment``'s header sync slot ``index`` (``Segment.lock``)."""
    return Lock._in_segment(segment, index)


def event_in(segment: Segment, index: int) -> Event:
    """The Event in ``segment``'s header sync slot ``index`` (``Segment.event``)."""
    return Event._in_segment(segment, index)


def barrier_in(segment: Segment, index: int, parties: int) -> Barrier:
    """The Barrier for ``parties`` in ``segment``'s header sync slot ``index`` (``Segment.barrier``)."""
    return Barrier._in_segment(segment, index, parties)


class _Sync:
    __slots__ = ("_segment", "_index", "_area", "address", "_closed", "__weakref__")
    _segment: Segment
    _index: int
    _area: _Area
    address: int  #: The address of the object's 64-byte sync area in this process.
    _extra: tuple[Any, ...] = ()

    def _bind(self, segment: Segment, index: int) -> None:
        self._closed = False
        self._segment = segment  # keeps the mapping alive
        self._index = index
        self.address = segment.sync_address(index)
        self._area = ffi.cast("void *", self.address)

    def _standalone(self, name: Optional[str], dir: Optional[str], create: bool) -> None:
        kind = type(self).__name__
        if name is not None and not isinstance(name, str):
            raise TypeError(f"{kind} name {name!r} is not a str")
        if dir is not None and not isinstance(dir, (str, os.PathLike)):
            raise TypeError(f"{kind} dir {dir!r} is not a str or path")
        self._bind(sync_segment(name, dir, create), 0)

    def close(self) -> None:
        """End this handle's use in this process: calls blocked on it in other threads wake with
        :class:`ClosedError` (within 0.1 s), as do later ones (``Lock.release`` excepted). The
        shared object and other handles of it are not affected. Idempotent."""
        self._closed = True

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called on this handle."""
        return self._closed

    def _closed_error(self) -> ClosedError:
        return ClosedError(f"this {type(self).__name__} handle is closed")

    def _live(self) -> _Area:
        if self._closed:
            raise self._closed_error()
        return self._area

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def segment(self) -> Segment:
        """The segment holding this object."""
        return self._segment

    @property
    def name(self) -> Optional[str]:
        """The name of the segment that holds it, or None (anonymous, or inside another segment)."""
        return self._segment.name

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self._segment, self._index, self._extra_args()))

    def _extra_args(self) -> tuple[Any, ...]:
        return ()


class Lock(_Sync):
    """A robust process-shared lock (not recursive).

    ``Lock(name=None, *, dir=None, create=True)``: a new lock in a segment of its own (named
    ``name``, or a unique name); ``create=False`` attaches to an existing one."""

    __slots__ = ("owner_died",)
    owner_died: bool  #: True if the last acquire took the lock from a dead owner.

    def __init__(self, name: Optional[str] = None, *, dir: Optional[str] = None, create: bool = True) -> None:
        self.owner_died = False
        self._standalone(name, dir, create)

    @classmethod
    def _in_segment(cls, segment: Segment, index: int) -> Lock:
        self = object.__new__(cls)
        self.owner_died = False
        self._bind(segment, index)
        return self

    def acquire(self, blocking: bool = True, timeout: Optional[float] = None) -> bool:
        """Take the lock; True once held, False if ``blocking=False`` or ``timeout`` ran out. If the
        previous owner died holding it, the lock is taken all the same and :attr:`owner_died` is
        set to True (it is reset by the next successful acquire)."""
        t = _timeout(blocking, timeout)
        area = self._live()
        rc = _sliced(functools.partial(_acquire, area), t, _SLICE, self._live)  # _live raises once closed
        if rc == 0:
            self.owner_died = False
            return True
        if rc == _EOWNERDEAD:
            self.owner_died = True
            return True
        if rc == _EBUSY or rc == _ETIMEDOUT:
            return False
        raise error_from_code(rc)

    async def acquire_async(self, timeout: Optional[float] = None) -> bool:
        """``await lock.acquire_async()``: :meth:`acquire` without blocking the event loop. The
        wait runs in a pool thread in slices (a lock cannot be waited for without taking it); if
        the coroutine is cancelled while a slice takes the lock, that thread gives it back."""
        from . import _async
        t = _timeout(True, timeout)
        area = self._live()
        rc = _acquire(area, 0.0)
        if rc == _EBUSY and t != 0:
            def give_back(rc: int) -> None:
                if rc == 0 or rc == _EOWNERDEAD:
                    _lock_release(area)
            rc = await _async.sliced_in_thread(lambda s: int(_acquire(area, s)), None if t < 0 else t, _ETIMEDOUT,
                                               give_back, lambda: self._closed, self._closed_error)
        if rc == 0 or rc == _EOWNERDEAD:
            self.owner_died = rc == _EOWNERDEAD
            return True
        if rc == _EBUSY or rc == _ETIMEDOUT:
            return False
        raise error_from_code(rc)

    def release(self) -> None:
        """Release the lock; :class:`NdshmPermissionError` if this process does not hold it."""
        rc = _lock_release(self._area)
        if rc:
            raise error_from_code(rc)

    def locked(self) -> bool:
        """Whether any thread or process holds the lock now (as ``threading.Lock.locked``)."""
        return check(_lock_state(self._area)) != 0

    def held_by_dead_owner(self) -> bool:
        """True if the lock is held by a process that has died."""
        return check(_lock_state(self._area)) == 3

    def __enter__(self) -> "Lock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = ("unlocked", "locked by this process", "locked", "locked by a dead process")[_lock_state(self._area)]
        return f"<ndshm.Lock {state} at 0x{self.address:x}>"


class Event(_Sync):
    """A process-shared event, like :class:`threading.Event`."""

    __slots__ = ()

    def __init__(self, name: Optional[str] = None, *, dir: Optional[str] = None, create: bool = True) -> None:
        self._standalone(name, dir, create)

    @classmethod
    def _in_segment(cls, segment: Segment, index: int) -> Event:
        self = object.__new__(cls)
        self._bind(segment, index)
        return self

    def set(self) -> None:
        """Sets the flag and wakes every waiter, in every process (as ``threading.Event.set``)."""
        _ev_set(self._live())

    def clear(self) -> None:
        """Resets the flag: later :meth:`wait` calls block until the next :meth:`set`."""
        _ev_clear(self._live())

    def is_set(self) -> bool:
        """Whether the flag is set."""
        return _ev_is_set(self._live()) == 1

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until set; False if ``timeout`` ran out first."""
        t = _timeout(True, timeout)
        area = self._live()
        return _sliced(functools.partial(_ev_wait, area), t, _SLICE, self._live) == 0  # _live raises once closed

    async def wait_async(self, timeout: Optional[float] = None) -> bool:
        """``await event.wait_async()``: :meth:`wait` without blocking the event loop (the wait runs
        in a pool thread in slices; cancelling it leaves nothing behind)."""
        from . import _async
        t = _timeout(True, timeout)
        area = self._live()
        if _ev_is_set(area) == 1:
            return True
        if t == 0:
            return False
        rc = await _async.sliced_in_thread(lambda s: int(_ev_wait(area, s)), None if t < 0 else t, _ETIMEDOUT,
                                           lambda rc: None, lambda: self._closed, self._closed_error)
        return rc == 0

    def __repr__(self) -> str:
        return f"<ndshm.Event {'set' if self.is_set() else 'unset'} at 0x{self.address:x}>"


class Barrier(_Sync):
    """A process-shared barrier for ``parties`` processes, like :class:`threading.Barrier`."""

    __slots__ = ("parties", "_timeout")
    parties: int  #: The number of processes that must wait for the barrier to open.
    _timeout: Optional[float]

    def __init__(self, parties: int, name: Optional[str] = None, *, timeout: Optional[float] = None,
                 dir: Optional[str] = None, create: bool = True) -> None:
        self._setup(parties, timeout)
        self._standalone(name, dir, create)

    def _setup(self, parties: int, timeout: Optional[float]) -> None:
        self.parties = _dtype.as_int(parties, "parties", 1, _MAX_PARTIES)
        _check_timeout(timeout)
        self._timeout = timeout

    @classmethod
    def _in_segment(cls, segment: Segment, index: int, parties: int, timeout: Optional[float] = None) -> Barrier:
        self = object.__new__(cls)
        self._setup(parties, timeout)
        self._bind(segment, index)
        return self

    def _extra_args(self) -> tuple[Any, ...]:
        return (self.parties, self._timeout)

    def wait(self, timeout: Optional[float] = None) -> int:
        """Wait for all parties; returns this caller's arrival index (0 .. parties-1). A timeout
        breaks the barrier: :class:`BrokenBarrierError` here and in every other waiter. The wait
        comes back to Python every quarter second, so Ctrl-C works; an exception that ends it
        (KeyboardInterrupt) breaks the barrier too, as the others would otherwise wait for a
        party that is gone."""
        if timeout is None:
            timeout = self._timeout
        t = _timeout(True, timeout)
        area, parties = self._live(), self.parties
        ticket, idx = ffi.new("uint64_t *"), ffi.new("uint32_t *")
        deadline = None if t < 0 else time.monotonic() + t
        try:
            rc = _b_wait(area, parties, t, _SLICE, ticket, idx)
            while rc == _ETIMEDOUT:  # the slice ran out: Python's signal handlers have run
                if self._closed:
                    raise self._closed_error()  # leaves (breaks) the barrier below
                left = -1.0 if deadline is None else max(deadline - time.monotonic(), 0.0)
                rc = _b_wait(area, parties, left, _SLICE, ticket, idx)
        except BaseException:
            _b_leave(area, ticket[0])  # ticket 0 (not waiting) leaves the barrier alone
            raise
        if rc:
            raise error_from_code(rc)
        return int(idx[0])

    def abort(self) -> None:
        """Puts the barrier in the broken state: current and later waiters raise
        :class:`BrokenBarrierError` until :meth:`reset` (as ``threading.Barrier.abort``)."""
        lib.ndshm_barrier_abort(self._area)

    def reset(self) -> None:
        """Returns the barrier to its empty, unbroken state; current waiters raise
        :class:`BrokenBarrierError` (as ``threading.Barrier.reset``)."""
        lib.ndshm_barrier_reset(self._area)

    def _state(self) -> tuple[int, int, bool]:
        p, w, b = ffi.new("uint32_t *"), ffi.new("uint32_t *"), ffi.new("int *")
        lib.ndshm_barrier_state(self._area, p, w, b)
        return int(p[0]), int(w[0]), bool(b[0])

    @property
    def n_waiting(self) -> int:
        """How many parties wait at the barrier now."""
        return self._state()[1]

    @property
    def broken(self) -> bool:
        """Whether the barrier is broken (see :meth:`abort`)."""
        return self._state()[2]

    def __repr__(self) -> str:
        _, w, b = self._state()
        return f"<ndshm.Barrier parties={self.parties} waiting={w}{' broken' if b else ''} at 0x{self.address:x}>"


# names re-exported for the docs
_ = (BrokenBarrierError, NdshmPermissionError)

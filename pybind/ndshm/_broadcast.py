"""Publish-subscribe of NumPy arrays between processes: :class:`Broadcast` and :class:`Subscription`.

One ring in one named segment; any number of publishers (``put``, ``loan``) and up to 128
subscriptions at a time, from any process, each receiving every message published after it
joined, in order. The policy for a slow subscriber is chosen at creation:

- ``"block"``: a publisher waits until every subscriber has read the message its slot holds
  (backpressure: nothing is ever lost);
- ``"overwrite"``: publishers never wait for readers; the oldest messages are overwritten, and a
  subscriber that fell behind gets :class:`~ndshm.Lagged` (``.missed`` says how many it lost)
  and then resumes at the oldest message retained. A message being read in place (inside a
  ``receive`` block) is never overwritten under its reader: its publisher waits for the block
  to end.

Faults: a subscriber process killed at any point (kill -9, even inside ``receive``) blocks
publishers for at most a liveness check (~20 ms) and is then forgotten. A publisher killed inside
``loan`` leaves its message unpublished: every subscriber skips it and receives the next ones.

The arrays of ``loan`` and ``receive`` blocks are :class:`~ndshm._slots.SlotArray` and follow the
queue's rules (see :mod:`ndshm._queue`): after the block an array nothing else refers to is closed
(on CPython every use raises :class:`ClosedError`; on PyPy it is emptied), the ring stays mapped while anything made from
it lives, and on CPython:

- a view derived inside a ``receive`` block (``view[2:]``) or an export of it keeps the message held
  after the block; the subscription's next read then raises ``BufferError`` until those are gone (a
  held message would otherwise be overwritten under them);
- a ``loan`` array with another name, an export or a derived view still alive at the end of its
  block is published, and its slot pinned (no publisher reuses it, under either policy) until
  they are gone.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import sys
import threading
import time
import uuid
import weakref
from typing import Any, AsyncIterator, Callable, Iterator, Optional

import numpy as np
from numpy.typing import NDArray

from . import _async, _dtype
from ._errors import ClosedError, Empty, Full, Lagged, NdshmTimeoutError, ShutDown, error_from_code, retry_interrupted
from ._lib import ffi, lib
from ._dtype import typestr_bytes
from ._messages import push_msg, thread_msg
from ._ring import Ring, as_dir, as_name, attach_waiting, c_timeout, encode_name, path_of, unlink_if
from ._slots import ClosedSlot, Loan, Receive, RingCalls, SlotSource, copy_target, hold_past_block, receive_loop
from ._waits import SLICE as _SLICE, rest as _rest

__all__ = ["Broadcast", "Subscription"]

_ETIMEDOUT, _EEMPTY, _EFULL = lib.NDSHM_ETIMEDOUT, lib.NDSHM_EEMPTY, lib.NDSHM_EFULL
_ELAGGED, _ECLOSED = lib.NDSHM_ELAGGED, lib.NDSHM_ECLOSED
_PERSIST, _POPULATE = lib.NDSHM_SEG_PERSIST, lib.NDSHM_SEG_POPULATE
# module-level aliases of the C calls: ~25 ns less per call than lib.<name> (bench_broadcast's
# "ndshm Broadcast put+receive" and "loan+receive" rows)
_put, _loan, _publish, _discard = lib.ndshm_bcast_put, lib.ndshm_bcast_loan, lib.ndshm_bcast_publish, \
    lib.ndshm_bcast_discard
_take, _release, _release_copy = lib.ndshm_bcast_take, lib.ndshm_bcast_release, lib.ndshm_bcast_release_copy
_pin, _unpin = lib.ndshm_bcast_pin, lib.ndshm_bcast_unpin
_MAX_SLOTS = lib.NDSHM_BCAST_MAX_SLOTS
_MAX_NBYTES = sys.maxsize
_POLICIES = {"block": lib.NDSHM_BCAST_BLOCK, "overwrite": lib.NDSHM_BCAST_OVERWRITE}
_POLICY_NAMES = {v: k for k, v in _POLICIES.items()}
_VOIDP = ffi.typeof("void *")


class _ClosedLoan(ClosedSlot):
    __slots__ = ()
    _message = ("Broadcast loan() array used after its with block: the message was published (or discarded) when "
                "the block ended; write it inside the block, and copy what you keep from it there (np.array(out))")


class _ClosedReceive(ClosedSlot):
    __slots__ = ()
    _message = ("Subscription receive() view used after its with block: the message was released when the block "
                "ended (an overwrite broadcast may reuse its slot); copy what you keep inside the block "
                "(np.array(view))")


_CALLS = RingCalls(_loan, _publish, _discard, _pin, _unpin, _ClosedLoan, _ClosedReceive)


def _detail(rc: int, waited: float) -> str:
    """The C detail of a failed wait, naming the whole timeout of one made in slices (the C side
    names its last slice's)."""
    detail: str = ffi.string(lib.ndshm_last_detail()).decode("utf-8", "replace")
    if rc == _ETIMEDOUT and waited > _SLICE:
        detail = re.sub(r"after [0-9.e+-]+ s", f"after {waited:g} s", detail, count=1)
    return detail


def _attach(name: str, dir: Optional[str]) -> "Broadcast":
    return Broadcast(name, dir=dir, create=False)


def _unsubscribe(bhandle: Any, sub: Any) -> None:
    """Destructor of a subscription's handle; holding ``bhandle`` keeps the ring mapped until it ran."""
    lib.ndshm_bcast_unsubscribe(sub)


def _release_later(sref: "weakref.ref[Subscription]", h: Any, mw: tuple[Any, ...]) -> None:
    _release(h, mw[0])
    sub = sref()
    if sub is not None and sub._held is mw:
        sub._held = None
        if sub._closing:
            sub._close_now()


class Broadcast(Ring):
    """A publish-subscribe channel of NumPy arrays in shared memory.

    ``Broadcast(name=None, *, slots, slot_bytes, policy="block", dir=None, create=True,
    persist=False, mode=0o600, populate=True)``

    ``slots`` (1 .. 2**20, rounded up to a power of two, 2 at least) messages of up to
    ``slot_bytes`` (>= 1) each; ``policy`` ``"block"`` or ``"overwrite"`` (see the module).
    ``create=False`` attaches to the existing broadcast ``name`` (as :meth:`attach`). The creator
    removes the name on :meth:`close` (or when collected, or at exit) unless ``persist``;
    attached handles keep working. Pickles by name. A context manager (``close`` on exit).
    """

    __slots__ = ("policy", "_subs")
    _KIND = "broadcast"

    def __init__(self, name: Optional[str] = None, *, slots: Optional[int] = None,
                 slot_bytes: Optional[int] = None, policy: str = "block", dir: Any = None, create: bool = True,
                 persist: bool = False, mode: int = 0o600, populate: bool = True) -> None:
        self._dtype = None  # read by the queue's message decoder
        if name is not None:
            name = as_name(name)
        dir = as_dir(dir)
        create = _dtype.as_flag(create, "create")
        persist = _dtype.as_flag(persist, "persist")
        populate = _dtype.as_flag(populate, "populate")
        out = ffi.new("ndshm_bcast_t **")
        dir_c = os.fsencode(dir) if dir else ffi.NULL
        self._finalizer = None
        if create:
            if slots is None or slot_bytes is None:
                raise TypeError("Broadcast() needs slots= and slot_bytes= to create one "
                                "(Broadcast.attach(name) attaches to an existing one)")
            if not isinstance(policy, str):
                raise TypeError(f"policy {policy!r} is not a str ('block' or 'overwrite')")
            if policy not in _POLICIES:
                raise ValueError(f"policy {policy!r} is neither 'block' nor 'overwrite'")
            n = _dtype.as_int(slots, "slots", 1, _MAX_SLOTS)
            n = max(2, 1 << (n - 1).bit_length())
            nb = _dtype.as_int(slot_bytes, "slot_bytes", 1, _MAX_NBYTES)
            mode = _dtype.as_int(mode, "mode", 0, 0o7777)
            if name is None:
                name = f"b-{os.getpid()}-{uuid.uuid4().hex[:16]}"
            rc = lib.ndshm_bcast_create(encode_name(name), dir_c, n, nb, _POLICIES[policy], mode,
                                        (_PERSIST if persist else 0) | (_POPULATE if populate else 0), out)
            if rc:
                raise error_from_code(rc, path_of(name, dir))
            if not persist:
                self._finalizer = weakref.finalize(self, unlink_if, name, dir, os.getpid())
        else:
            if name is None:
                raise ValueError("attaching needs the broadcast's name")
            rc = lib.ndshm_bcast_attach(encode_name(name), dir_c, out)
            if rc:  # (again if a signal ended its wait for the ring's lock, once Python ran the handlers)
                rc = retry_interrupted(rc, lib.ndshm_bcast_attach, encode_name(name), dir_c, out)
            if rc:
                raise error_from_code(rc, path_of(name, dir))
        self._handle = ffi.gc(out[0], lib.ndshm_bcast_close)
        self._closed = False
        self._creator = create
        self.name, self.dir = name, dir
        info = ffi.new("ndshm_bcast_info_t *")
        lib.ndshm_bcast_info(self._handle, info)
        self.slots, self.slot_bytes = int(info.slots), int(info.slot_bytes)
        self.policy = _POLICY_NAMES[info.policy]
        self.ring_address, self.ring_bytes = int(info.ring), int(info.ring_bytes)
        self._map_ring()
        self._subs: "weakref.WeakSet[Subscription]" = weakref.WeakSet()

    @classmethod
    def attach(cls, name: str, dir: Any = None, *, timeout: Optional[float] = None) -> "Broadcast":
        """Attach to the existing broadcast ``name`` (in ``dir``; default ``$NDSHM_DIR`` or /dev/shm).
        With ``timeout`` (seconds; ``float("inf")``: for ever) one not created yet, or whose
        creator is still filling its header, is waited for; None (the default) tries once."""
        return attach_waiting(lambda: cls(name, dir=dir, create=False), timeout, f"broadcast {name!r}")

    # ---- internals -------------------------------------------------------------------------

    def _full(self, rc: int, waited: float) -> Exception:
        """The exception of a publisher's failed call (returned, not raised: see Queue._error)."""
        if rc != _ETIMEDOUT and rc != _EFULL:
            return error_from_code(rc)
        return error_from_code(rc, detail=_detail(rc, waited), timed_out=Full)

    # what the loan blocks of ndshm._slots ask of a broadcast
    _calls = _CALLS

    def _toobig(self, nbytes: int) -> int:
        rc: int = _loan(self._handle, nbytes, 0.0, thread_msg()[0])  # sets ETOOBIG naming both sizes
        return rc

    @staticmethod
    def _loan_defaults(shape: Any, dtype: Any) -> tuple[Any, Any]:
        return shape, dtype  # a broadcast is untyped: the plan refuses a None

    _loan_error = _full

    # ---- publishing ------------------------------------------------------------------------

    def put(self, arr: Any, timeout: Optional[float] = None) -> None:
        """Publish a copy of array ``arr`` to every subscriber, waiting up to ``timeout`` seconds
        (``None``: for ever; 0: not at all) for a slot under ``"block"``. Raises :class:`Full` on
        timeout, :class:`MessageTooBigError` if it exceeds a slot, :class:`ShutDown` after
        :meth:`shutdown`."""
        h = self._live()
        t = c_timeout(True, timeout)
        a = np.asarray(arr)
        if not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)
        ts = typestr_bytes(a.dtype)
        if a.ndim > lib.NDSHM_MAXDIM:
            raise ValueError(f"an array of shape {a.shape} has {a.ndim} dimensions; a message has at most "
                             f"{lib.NDSHM_MAXDIM}")
        try:
            ptr = ffi.from_buffer(a)
        except (TypeError, ValueError, BufferError):  # dtypes without a buffer format (datetime64, ...)
            ptr = ffi.cast(_VOIDP, a.__array_interface__["data"][0])
        nb, nd, shape = a.nbytes, a.ndim, a.shape
        s = t if 0 <= t <= _SLICE else _SLICE  # the first slice inline (see ndshm._queue._take_waiting)
        rc = _put(h, ptr, nb, ts, nd, shape, s)
        if rc == _ETIMEDOUT and s != t:
            rc = _rest(lambda s: _put(h, ptr, nb, ts, nd, shape, s), t)
        if rc:
            raise self._full(rc, t)

    def loan(self, shape: Any, dtype: Any, timeout: Optional[float] = None) -> Loan:
        """``with b.loan(shape, dtype) as out:`` fill ``out`` in place (zero copy); it is published
        to every subscriber on a normal exit and discarded (skipped by all) if the block raises.
        ``out`` is closed after the block. Waits for a slot as :meth:`put` does."""
        self._live()
        return Loan(self, shape, dtype, c_timeout(True, timeout))

    def _pub_epoch(self) -> Callable[[], int]:
        h = self._handle
        return lambda: int(lib.ndshm_bcast_epoch(h, 1))

    def _pub_wait(self) -> Callable[[int, float], int]:
        h = self._handle
        return lambda seen, s: int(lib.ndshm_bcast_wait_epoch(h, ffi.NULL, seen, s))

    async def put_async(self, arr: Any, timeout: Optional[float] = None) -> None:
        """``await b.put_async(arr)``: :meth:`put` without blocking the event loop (see
        :mod:`ndshm._async`); a cancelled call has not published ``arr``."""
        self._live()
        t = None if timeout is None else c_timeout(True, timeout)
        a = np.asarray(arr)
        await _async.retry(lambda: self.put(a, 0), self._pub_epoch(), self._pub_wait(), t, Full,
                           f"broadcast still full ({self.slots} slots)")

    def loan_async(self, shape: Any, dtype: Any, timeout: Optional[float] = None) -> _async.AsyncContext:
        """``async with b.loan_async(shape, dtype) as out:`` :meth:`loan` without blocking the event
        loop; a cancellation before the block claims no slot."""
        self._live()
        t = None if timeout is None else c_timeout(True, timeout)

        async def enter() -> tuple[Loan, NDArray[Any]]:
            ln = Loan(self, shape, dtype, 0.0)
            out = await _async.retry(ln.__enter__, self._pub_epoch(), self._pub_wait(), t, Full,
                                     f"broadcast still full ({self.slots} slots)")
            return ln, out
        return _async.AsyncContext(enter)

    def wait_for_subscribers(self, n: int, timeout: Optional[float] = None) -> int:
        """Wait until at least ``n`` live subscriptions (from every process) exist, so that
        workers started in other processes receive the first message published afterwards;
        returns their number. :class:`NdshmTimeoutError` (a ``TimeoutError``) if ``timeout``
        seconds (None: for ever) pass first; :class:`ClosedError` if this handle is closed
        meanwhile."""
        n = _dtype.as_int(n, "n", 0, lib.NDSHM_BCAST_MAX_SUBSCRIBERS)
        t = c_timeout(True, timeout)
        deadline = None if t < 0 else time.monotonic() + t
        pause = 0.0005
        while True:
            have = self.subscribers  # raises ClosedError once closed
            if have >= n:
                return have
            if deadline is not None and time.monotonic() >= deadline:
                raise NdshmTimeoutError(errno.ETIMEDOUT, f"broadcast {self.name!r} has {have} of the {n} "
                                        f"subscribers waited for after {t:g} s")
            time.sleep(pause if deadline is None else max(min(pause, deadline - time.monotonic()), 0.0))
            pause = min(pause * 2, 0.02)

    def shutdown(self, immediate: bool = False) -> None:
        """Shut the broadcast down for every process: further ``put``/``loan`` raise
        :class:`ShutDown`; subscribers first receive what was published before, then their
        ``get``/``receive`` raise :class:`ShutDown` and iteration ends (``immediate``: at once,
        dropping what they had not read). Publishers waiting for a slot raise it too."""
        immediate = _dtype.as_flag(immediate, "immediate")
        lib.ndshm_bcast_shutdown(self._live(), 1 if immediate else 0)

    @property
    def is_shutdown(self) -> bool:
        """Whether :meth:`shutdown` was called (by any process)."""
        state: int = lib.ndshm_bcast_is_shutdown(self._live())
        return state > 0

    # ---- subscribing -----------------------------------------------------------------------

    def subscribe(self) -> "Subscription":
        """A new :class:`Subscription` that receives every message published from now on."""
        h = self._live()
        out = ffi.new("ndshm_bsub_t **")
        rc = lib.ndshm_bcast_subscribe(h, out)
        if rc:
            raise error_from_code(rc)
        sub = Subscription(self, ffi.gc(out[0], functools.partial(_unsubscribe, h)))
        self._subs.add(sub)
        return sub

    @property
    def subscribers(self) -> int:
        """Live subscriptions, from every process (approximate under concurrency)."""
        return int(lib.ndshm_bcast_subscribers(self._live()))

    @property
    def published(self) -> int:
        """Messages published (or being published) so far, by every publisher."""
        return int(lib.ndshm_bcast_published(self._live()))

    # ---- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """End this handle's use and that of the subscriptions made from it; the creator's name is
        removed (unless ``persist``). Memory is unmapped when the last view of a slot is gone."""
        if self._closed:
            return
        for sub in list(self._subs):
            sub.close()
        self._closed = True
        lib.ndshm_bcast_interrupt(self._handle)  # publishers blocked on this handle: ClosedError now
        if self._finalizer is not None:
            self._finalizer()

    def __reduce__(self) -> tuple[Callable[[str, Optional[str]], Broadcast], tuple[str, Optional[str]]]:
        return (_attach, (self.name, self.dir))

    def __repr__(self) -> str:
        state = "closed " if self._closed else ""
        return (f"<ndshm.Broadcast {state}{self.name!r} slots={self.slots} slot_bytes={self.slot_bytes} "
                f"policy={self.policy!r}>")


class Subscription(SlotSource):
    """One subscriber of a :class:`Broadcast` (from :meth:`Broadcast.subscribe`): receives every
    message published after it was made, in order.

    ``get()`` returns a copy, ``with sub.receive() as view:`` reads in place (read-only),
    ``for arr in sub:`` iterates copies until the broadcast is shut down and drained. Raises
    :class:`Lagged` (``overwrite`` broadcasts) when messages were lost, then goes on with the
    oldest retained. A context manager (``close`` on exit). Use it from one thread at a time;
    it cannot be pickled (subscribe in the process that reads).
    """

    __slots__ = ("_b", "_h", "_missed", "_held", "_closing", "_closed", "_waiting", "_lock", "__weakref__")

    def __init__(self, b: Broadcast, handle: Any) -> None:
        self._b, self._h = b, handle
        self._missed = ffi.new("uint64_t *")
        self._held: Optional[tuple[Any, ...]] = None
        self._closing = self._closed = False
        self._waiting = 0  # C waits on the handle in progress (a read, an async wait; close() may come from another thread)
        self._lock = threading.Lock()  # guards _waiting and _closing between those threads

    def _enter_wait(self) -> bool:
        """Count a C wait on the handle about to start; False (nothing counted) once closing."""
        with self._lock:
            if self._closing or self._closed:
                return False
            self._waiting += 1
            return True

    def _leave_wait(self) -> bool:
        """Uncount a C wait; True if it was the last one of a subscription being closed."""
        with self._lock:
            self._waiting -= 1
            return self._closing and not self._waiting

    def _error(self, rc: int, waited: float) -> Exception:
        """The exception of a failed take (returned, not raised: see Queue._error)."""
        if rc == _ELAGGED:
            lagged = error_from_code(rc)
            assert isinstance(lagged, Lagged)  # NDSHM_ELAGGED's class
            lagged.missed = int(self._missed[0])
            return lagged
        if rc != _ETIMEDOUT and rc != _EEMPTY:
            return error_from_code(rc)
        return error_from_code(rc, detail=_detail(rc, waited), timed_out=Empty)

    def _ready(self) -> Any:
        if self._closed or self._closing:
            raise ClosedError(f"subscription to broadcast {self._b.name!r} is closed")
        if self._held is not None:
            raise BufferError("the previous message of this subscription is still held: its receive() block is "
                              "still open, or views derived from its view (or a tensor, memoryview or list keeping "
                              "one) outlive the block; copy what you keep inside the with block "
                              "(np.array(view[...])) and drop the views")
        return self._h

    def _take(self, timeout: float, m: Any) -> int:
        """``ndshm_bcast_take`` into ``m``; a negative ``timeout`` waits for ever; waits longer
        than _SLICE go in slices (Ctrl-C works)."""
        h, missed = self._h, self._missed
        # close() from another thread sets _closing, then looks at _waiting (both under _lock):
        # either it sees this take (it interrupts the handle and leaves the unsubscribing to the
        # last wait to end) or this take sees _closing here and never touches the handle
        last = False
        if not self._enter_wait():
            rc: int = _ECLOSED
        else:
            try:
                s = timeout if 0 <= timeout <= _SLICE else _SLICE  # the first slice inline (see ndshm._queue)
                rc = _take(h, s, m, missed)
                if rc == _ETIMEDOUT and s != timeout:
                    rc = _rest(lambda s: _take(h, s, m, missed), timeout)
            finally:
                last = self._leave_wait()
        if self._closing and self._held is None:
            if rc == 0:
                _release(h, m)  # closed meanwhile: the message goes back (this subscription ends)
            if last:
                self._close_now()
            raise ClosedError(f"subscription to broadcast {self._b.name!r} was closed")
        return rc

    # what the receive blocks of ndshm._slots ask of a subscription
    _rx_error = _error

    def _rx_take(self, t: float, mw: tuple[Any, ...]) -> int:
        if self._held is not None or self._closed or self._closing:
            self._ready()  # raises
        rc = self._take(t, mw[0])
        if rc == 0:
            self._held = mw  # until released: no other read, and close() waits for it
        return rc

    def _rx_keep(self, arr: Any, exported: bool, inner: Any, mw: tuple[Any, ...]) -> None:
        hold_past_block(arr, exported, self._b, _ClosedReceive, inner, _release_later, weakref.ref(self),
                         self._h, mw)

    def _rx_done(self, mw: tuple[Any, ...]) -> None:
        self._held = None
        _release(self._h, mw[0])
        push_msg(mw)
        if self._closing:
            self._close_now()

    def get(self, timeout: Optional[float] = None) -> NDArray[Any]:
        """The next message, as a fresh array, waiting up to ``timeout`` seconds (``None``: for
        ever; 0: not at all). Raises :class:`Empty` on timeout, :class:`Lagged` if messages were
        overwritten before this subscriber read them, :class:`ShutDown` once the broadcast is shut
        down and drained."""
        h = self._ready()
        t = c_timeout(True, timeout)
        m, w = thread_msg()
        rc = self._take(t, m)
        if rc:
            raise self._error(rc, t)
        try:
            out, dst = copy_target(self._b, m, w, "broadcast")
        except BaseException:
            _release(h, m)
            raise
        rc = _release_copy(h, m, dst)
        if rc:
            raise error_from_code(rc)
        return out

    def receive(self, timeout: Optional[float] = None) -> Receive:
        """``with sub.receive() as view:`` read the next message in place (read-only, zero copy).
        ``view`` is closed after the block (see the module). Raises as :meth:`get`."""
        self._ready()
        return Receive(self, self._b, c_timeout(True, timeout))

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> NDArray[Any]:
        """The next message (waiting for ever); ``StopIteration`` once shut down and drained."""
        try:
            return self.get()
        except ShutDown:
            raise StopIteration from None

    def receiving(self, timeout: Optional[float] = None) -> Iterator[NDArray[Any]]:
        """``for view in sub.receiving():`` the zero-copy form of ``for arr in sub``: each ``view``
        is a :meth:`receive` view valid until the next iteration; ends once the broadcast is shut
        down and drained. A view still referred to from elsewhere when the next one is asked for
        holds its message, and the next read raises ``BufferError`` (copy what you keep)."""
        return receive_loop(self.receive, timeout)

    def _epoch(self) -> int:
        return int(lib.ndshm_bcast_epoch(self._b._handle, 0))

    def _wait_epoch(self, seen: int, s: float) -> int:
        if not self._enter_wait():  # the handle stays valid while this wait runs (see close)
            return 0  # the loop's retry raises ClosedError
        try:
            return int(lib.ndshm_bcast_wait_epoch(self._b._handle, self._h, seen, s))
        finally:
            if self._leave_wait() and self._held is None:
                self._close_now()

    async def get_async(self, timeout: Optional[float] = None) -> NDArray[Any]:
        """``await sub.get_async()``: :meth:`get` without blocking the event loop (see
        :mod:`ndshm._async`: a cancellation never loses a message)."""
        self._ready()
        t = None if timeout is None else c_timeout(True, timeout)
        return await _async.retry(lambda: self.get(0), self._epoch, self._wait_epoch, t, Empty, "no new message")

    def receive_async(self, timeout: Optional[float] = None) -> _async.AsyncContext:
        """``async with sub.receive_async() as view:`` :meth:`receive` without blocking the event loop."""
        self._ready()
        t = None if timeout is None else c_timeout(True, timeout)

        async def enter() -> tuple[Receive, NDArray[Any]]:
            rec = Receive(self, self._b, 0.0)
            view = await _async.retry(rec.__enter__, self._epoch, self._wait_epoch, t, Empty, "no new message")
            return rec, view
        return _async.AsyncContext(enter)

    async def __aiter__(self) -> AsyncIterator[NDArray[Any]]:
        """``async for arr in sub:`` :meth:`get_async` until the broadcast is shut down and drained."""
        while True:
            try:
                arr = await self.get_async()
            except ShutDown:
                return
            yield arr

    @property
    def pending(self) -> int:
        """Messages published that this subscription has not read yet."""
        if self._closed:
            return 0
        return int(lib.ndshm_bcast_pending(self._h))

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (or is under way)."""
        return self._closed or self._closing

    def close(self) -> None:
        """Leave the broadcast: publishers no longer wait for this subscriber. If views derived
        from a receive() view still hold a message (CPython), it is released when they go."""
        with self._lock:
            if self._closed or self._closing:
                return
            self._closing = True  # before looking at _waiting (see _take)
            busy = self._held is not None or self._waiting
        if busy:
            lib.ndshm_bsub_interrupt(self._h)  # a take blocked in another thread: ClosedError now
            return
        self._close_now()

    def _close_now(self) -> None:
        if self._closed:
            return
        self._closed = True
        h = self._h
        try:
            ffi.release(h)  # runs the destructor (unsubscribe) now
        except (AttributeError, TypeError, ValueError):  # pragma: no cover - old cffi
            lib.ndshm_bcast_unsubscribe(ffi.gc(h, None))

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError("a Subscription cannot be pickled: pickle the Broadcast and subscribe() in the reading "
                        "process; to make sure no reader misses the first messages, have the publisher call "
                        "broadcast.wait_for_subscribers(n) before publishing")

    def __repr__(self) -> str:
        state = "closed " if self.closed else ""
        return f"<ndshm.Subscription {state}to {self._b.name!r}>"

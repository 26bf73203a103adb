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
queue's rules (see :mod:`ndshm._queue`): after the block the array is closed (on CPython every use
raises :class:`ClosedError`; on PyPy it is emptied), the ring stays mapped while anything made from
it lives, and on CPython:

- a view derived inside a ``receive`` block (``view[2:]``) or an export of it keeps the message held
  after the block; the subscription's next read then raises ``BufferError`` until those are gone (a
  held message would otherwise be overwritten under them);
- a ``loan`` array still exported at the end of its block (a tensor, a memoryview, a list holding
  it) could change the message after every subscriber got it, so the message is discarded and
  ``BufferError`` raised.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import uuid
import weakref
from typing import Any, Callable, Iterator, Optional

import numpy as np
from numpy.typing import NDArray

from . import _dtype
from ._errors import ClosedError, Empty, Full, Lagged, ShutDown, error_from_code, retry_interrupted
from ._lib import ffi, lib
from ._messages import _PLANS, _msg, _plan, _pop_msg, _push_msg, _typestr_bytes, _write_desc
from ._ring import _SLICE, _Ring, _as_dir, _as_name, _encode, _path_of, _sliced, _timeout, _unlink_if
from ._slots import (
    SlotArray, _close_array, _ClosedSlot, _copy_target, _data_of, _escaped_loan, _getrefcount, _hold_past_block,
    _itemless_views, _received_views,
)

__all__ = ["Broadcast", "Subscription"]

_ETIMEDOUT, _EEMPTY, _EFULL = lib.NDSHM_ETIMEDOUT, lib.NDSHM_EEMPTY, lib.NDSHM_EFULL
_ELAGGED = lib.NDSHM_ELAGGED
_PERSIST, _POPULATE = lib.NDSHM_SEG_PERSIST, lib.NDSHM_SEG_POPULATE
_put, _loan, _publish, _discard = lib.ndshm_bcast_put, lib.ndshm_bcast_loan, lib.ndshm_bcast_publish, \
    lib.ndshm_bcast_discard
_take, _release, _release_copy = lib.ndshm_bcast_take, lib.ndshm_bcast_release, lib.ndshm_bcast_release_copy
_MAX_SLOTS = lib.NDSHM_BCAST_MAX_SLOTS
_MAX_NBYTES = sys.maxsize
_POLICIES = {"block": lib.NDSHM_BCAST_BLOCK, "overwrite": lib.NDSHM_BCAST_OVERWRITE}
_POLICY_NAMES = {v: k for k, v in _POLICIES.items()}
_VOIDP = ffi.typeof("void *")


class _ClosedLoan(_ClosedSlot):
    __slots__ = ()
    _message = ("Broadcast loan() array used after its with block: the message was published (or discarded) when "
                "the block ended; write it inside the block, and copy what you keep from it there (np.array(out))")


class _ClosedReceive(_ClosedSlot):
    __slots__ = ()
    _message = ("Subscription receive() view used after its with block: the message was released when the block "
                "ended (an overwrite broadcast may reuse its slot); copy what you keep inside the block "
                "(np.array(view))")


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


class Broadcast(_Ring):
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
            name = _as_name(name)
        dir = _as_dir(dir)
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
            rc = lib.ndshm_bcast_create(_encode(name), dir_c, n, nb, _POLICIES[policy], mode,
                                        (_PERSIST if persist else 0) | (_POPULATE if populate else 0), out)
            if rc:
                raise error_from_code(rc, _path_of(name, dir))
            if not persist:
                self._finalizer = weakref.finalize(self, _unlink_if, name, dir, os.getpid())
        else:
            if name is None:
                raise ValueError("attaching needs the broadcast's name")
            rc = lib.ndshm_bcast_attach(_encode(name), dir_c, out)
            if rc:  # (again if a signal ended its wait for the ring's lock, once Python ran the handlers)
                rc = retry_interrupted(rc, lib.ndshm_bcast_attach, _encode(name), dir_c, out)
            if rc:
                raise error_from_code(rc, _path_of(name, dir))
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
    def attach(cls, name: str, dir: Any = None) -> "Broadcast":
        """Attach to the existing broadcast ``name`` (in ``dir``; default ``$NDSHM_DIR`` or /dev/shm)."""
        return cls(name, dir=dir, create=False)

    # ---- internals -------------------------------------------------------------------------

    def _full(self, rc: int, waited: float) -> Exception:
        """The exception of a publisher's failed call (returned, not raised: see Queue._error)."""
        if rc != _ETIMEDOUT and rc != _EFULL:
            return error_from_code(rc)
        exc = Full(_detail(rc, waited))
        exc.code, exc.errname = rc, ffi.string(lib.ndshm_errname(rc)).decode()
        return exc

    # ---- publishing ------------------------------------------------------------------------

    def put(self, arr: Any, timeout: Optional[float] = None) -> None:
        """Publish a copy of array ``arr`` to every subscriber, waiting up to ``timeout`` seconds
        (``None``: for ever; 0: not at all) for a slot under ``"block"``. Raises :class:`Full` on
        timeout, :class:`MessageTooBigError` if it exceeds a slot, :class:`ShutDown` after
        :meth:`shutdown`."""
        h = self._live()
        t = _timeout(True, timeout)
        a = arr if arr.__class__ is np.ndarray else np.asarray(arr)
        if not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)
        ts = _typestr_bytes(a.dtype)
        if a.ndim > lib.NDSHM_MAXDIM:
            raise ValueError(f"an array of shape {a.shape} has {a.ndim} dimensions; a message has at most "
                             f"{lib.NDSHM_MAXDIM}")
        try:
            ptr = ffi.from_buffer(a)
        except (TypeError, ValueError, BufferError):  # dtypes without a buffer format (datetime64, ...)
            ptr = ffi.cast(_VOIDP, a.__array_interface__["data"][0])
        nb, nd, shape = a.nbytes, a.ndim, a.shape
        if t < 0:
            rc = _put(h, ptr, nb, ts, nd, shape, _SLICE)
            while rc == _ETIMEDOUT:
                rc = _put(h, ptr, nb, ts, nd, shape, _SLICE)
        elif t <= _SLICE:
            rc = _put(h, ptr, nb, ts, nd, shape, t)
        else:  # in slices, so that Ctrl-C is noticed
            rc = _sliced(lambda s: _put(h, ptr, nb, ts, nd, shape, s), t)
        if rc:
            raise self._full(rc, t)

    def loan(self, shape: Any, dtype: Any, timeout: Optional[float] = None) -> "_Loan":
        """``with b.loan(shape, dtype) as out:`` fill ``out`` in place (zero copy); it is published
        to every subscriber on a normal exit and discarded (skipped by all) if the block raises.
        ``out`` is closed after the block. Waits for a slot as :meth:`put` does."""
        self._live()
        return _Loan(self, shape, dtype, _timeout(True, timeout))

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
        if self._finalizer is not None:
            self._finalizer()

    def __reduce__(self) -> tuple[Callable[[str, Optional[str]], Broadcast], tuple[str, Optional[str]]]:
        return (_attach, (self.name, self.dir))

    def __repr__(self) -> str:
        state = "closed " if self._closed else ""
        return (f"<ndshm.Broadcast {state}{self.name!r} slots={self.slots} slot_bytes={self.slot_bytes} "
                f"policy={self.policy!r}>")


class _Loan:
    __slots__ = ("_b", "_shape", "_dt", "_nbytes", "_ts", "_word", "_timeout", "_msg", "_arr", "_slot")
    _msg: Optional[tuple[Any, ...]]  # the message (struct, words) while the block is open
    _arr: Any  # a SlotArray inside the block; closed (another class) after it
    _slot: Any  # the SlotArray arr is a view of, inside the block

    def __init__(self, b: Broadcast, shape: Any, dtype: Any, timeout: float) -> None:
        try:
            plan = _PLANS[(shape, dtype)]
        except (KeyError, TypeError):
            plan = _plan(shape, dtype)
        self._shape, self._dt, self._nbytes, self._ts, self._word = plan
        if len(self._shape) > lib.NDSHM_MAXDIM:
            raise ValueError(f"shape {self._shape} has {len(self._shape)} dimensions; a message has at most "
                             f"{lib.NDSHM_MAXDIM}")
        self._b, self._timeout, self._arr, self._msg = b, timeout, None, None

    def __enter__(self) -> NDArray[Any]:
        if self._msg is not None:
            raise RuntimeError("this loan() context is already entered; call loan() again for another slot")
        b, dims, dt, nbytes = self._b, self._shape, self._dt, self._nbytes
        if b._closed:
            b._live()  # raises
        h = b._handle
        mw = _pop_msg()
        m = mw[0]
        t = self._timeout
        if t < 0:
            rc = _loan(h, nbytes, _SLICE, m)
            while rc == _ETIMEDOUT:
                rc = _loan(h, nbytes, _SLICE, m)
        elif t <= _SLICE:
            rc = _loan(h, nbytes, t, m)
        else:  # in slices, so that Ctrl-C is noticed
            rc = _sliced(lambda s: _loan(h, nbytes, s, m), t)
        if rc:
            _push_msg(mw)
            raise b._full(rc, t)
        try:
            _write_desc(mw, dims, self._ts, self._word)
            if dt.itemsize:
                inner = SlotArray(dims, dt, b._rw, b._offset(m))
                arr: NDArray[Any] = inner.view()
            else:
                inner, arr = _itemless_views(b, _data_of(m), dims, dt, self._ts.decode(), False)
        except BaseException:  # never keep a slot nobody can publish
            _discard(h, m)
            _push_msg(mw)
            raise
        self._msg, self._arr, self._slot = mw, arr, inner
        return arr

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        mw = self._msg
        if mw is None:
            raise RuntimeError("loan() context exited without being entered")
        arr, inner = self._arr, self._slot
        self._arr = self._slot = self._msg = None
        h = self._b._handle
        # CPython, as the queue's loan: an export of arr still alive (more than 3 references) could
        # change the message after it reached the subscribers, so it is discarded
        escaped = _getrefcount(arr) > 3
        rc = _publish(h, mw[0]) if exc_type is None and not escaped else _discard(h, mw[0])
        _close_array(arr, inner, _ClosedLoan)
        del arr, inner
        _push_msg(mw)
        if rc:
            raise error_from_code(rc)
        if escaped and exc_type is None:
            raise _escaped_loan(f"broadcast {self._b.name!r}")


class Subscription:
    """One subscriber of a :class:`Broadcast` (from :meth:`Broadcast.subscribe`): receives every
    message published after it was made, in order.

    ``get()`` returns a copy, ``with sub.receive() as view:`` reads in place (read-only),
    ``for arr in sub:`` iterates copies until the broadcast is shut down and drained. Raises
    :class:`Lagged` (``overwrite`` broadcasts) when messages were lost, then goes on with the
    oldest retained. A context manager (``close`` on exit). Use it from one thread at a time;
    it cannot be pickled (subscribe in the process that reads).
    """

    __slots__ = ("_b", "_h", "_missed", "_held", "_closing", "_closed", "__weakref__")

    def __init__(self, b: Broadcast, handle: Any) -> None:
        self._b, self._h = b, handle
        self._missed = ffi.new("uint64_t *")
        self._held: Optional[tuple[Any, ...]] = None
        self._closing = self._closed = False

    def _error(self, rc: int, waited: float) -> Exception:
        """The exception of a failed take (returned, not raised: see Queue._error)."""
        if rc == _ELAGGED:
            lagged = error_from_code(rc)
            assert isinstance(lagged, Lagged)  # NDSHM_ELAGGED's class
            lagged.missed = int(self._missed[0])
            return lagged
        if rc != _ETIMEDOUT and rc != _EEMPTY:
            return error_from_code(rc)
        exc = Empty(_detail(rc, waited))
        exc.code, exc.errname = rc, ffi.string(lib.ndshm_errname(rc)).decode()
        return exc

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
        if timeout < 0:
            rc: int = _take(h, _SLICE, m, missed)
            while rc == _ETIMEDOUT:
                rc = _take(h, _SLICE, m, missed)
            return rc
        if timeout <= _SLICE:
            rc = _take(h, timeout, m, missed)
            return rc
        return _sliced(lambda s: _take(h, s, m, missed), timeout)

    def get(self, timeout: Optional[float] = None) -> NDArray[Any]:
        """The next message, as a fresh array, waiting up to ``timeout`` seconds (``None``: for
        ever; 0: not at all). Raises :class:`Empty` on timeout, :class:`Lagged` if messages were
        overwritten before this subscriber read them, :class:`ShutDown` once the broadcast is shut
        down and drained."""
        h = self._ready()
        t = _timeout(True, timeout)
        m, w = _msg()
        rc = self._take(t, m)
        if rc:
            raise self._error(rc, t)
        try:
            out, dst = _copy_target(self._b, m, w, "broadcast")
        except BaseException:
            _release(h, m)
            raise
        rc = _release_copy(h, m, dst)
        if rc:
            raise error_from_code(rc)
        return out

    def receive(self, timeout: Optional[float] = None) -> "_Receive":
        """``with sub.receive() as view:`` read the next message in place (read-only, zero copy).
        ``view`` is closed after the block (see the module). Raises as :meth:`get`."""
        self._ready()
        return _Receive(self, _timeout(True, timeout))

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> NDArray[Any]:
        """The next message (waiting for ever); ``StopIteration`` once shut down and drained."""
        try:
            return self.get()
        except ShutDown:
            raise StopIteration from None

    @property
    def pending(self) -> int:
        """Messages published that this subscription has not read yet."""
        if self._closed:
            return 0
        return int(lib.ndshm_bcast_pending(self._h))

    @property
    def closed(self) -> bool:
        return self._closed or self._closing

    def close(self) -> None:
        """Leave the broadcast: publishers no longer wait for this subscriber. If views derived
        from a receive() view still hold a message (CPython), it is released when they go."""
        if self._closed or self._closing:
            return
        if self._held is not None:
            self._closing = True
            return
        self._close_now()

    def _close_now(self) -> None:
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
                        "process")

    def __repr__(self) -> str:
        state = "closed " if self.closed else ""
        return f"<ndshm.Subscription {state}to {self._b.name!r}>"


class _Receive:
    __slots__ = ("_s", "_timeout", "_msg", "_arr", "_slot")
    _msg: Optional[tuple[Any, ...]]  # the message (struct, words) while the block is open
    _arr: Any  # a SlotArray inside the block; closed (another class) after it
    _slot: Any  # the SlotArray arr is a view of, inside the block

    def __init__(self, s: Subscription, timeout: float) -> None:
        self._s, self._timeout, self._arr, self._msg = s, timeout, None, None

    def __enter__(self) -> NDArray[Any]:
        if self._msg is not None:
            raise RuntimeError("this receive() context is already entered; call receive() again for another message")
        s = self._s
        if s._held is not None or s._closed or s._closing:
            s._ready()  # raises
        h, b = s._h, s._b
        mw = _pop_msg()
        m = mw[0]
        rc = s._take(self._timeout, m)
        if rc:
            _push_msg(mw)
            raise s._error(rc, self._timeout)
        try:
            inner, arr = _received_views(b, m, mw[1], "broadcast")  # as the queue's receive
        except BaseException:
            _release(h, m)
            _push_msg(mw)
            raise
        self._msg, self._slot, self._arr = mw, inner, arr
        s._held = mw  # until released: no other read, and close() waits for it
        return arr

    def __exit__(self, *exc: object) -> None:
        mw = self._msg
        if mw is None:
            raise RuntimeError("receive() context exited without being entered")
        arr: Any  # the SlotArray: its state, _keep slot and class change below
        arr, inner = self._arr, self._slot
        self._arr = self._slot = self._msg = None
        s = self._s
        ro = s._b._ro
        # CPython, as the queue's receive (see ndshm._slots): exports of arr or views derived from
        # it kept beyond the block keep the message until they are gone
        exported = _getrefcount(arr) > 3
        if exported or _getrefcount(inner) > 3:
            _hold_past_block(arr, exported, ro, _ClosedReceive, inner, _release_later, weakref.ref(s), s._h, mw)
            return
        _close_array(arr, ro, _ClosedReceive)
        del arr, inner
        s._held = None
        _release(s._h, mw[0])
        _push_msg(mw)
        if s._closing:
            s._close_now()

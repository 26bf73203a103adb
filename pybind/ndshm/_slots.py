"""Arrays over ring slots: the :class:`SlotArray` of ``loan``/``receive`` blocks, how a block ends,
and :class:`SlotRing`, what the blocks read of their ring (the base of both rings' classes).

The queue and the broadcast hand out the same kind of array and end their blocks by the same rules
(see :mod:`ndshm._queue`); each ring supplies its own C calls and wording.

What outlives a block is decided from CPython reference counts (``sys.getrefcount``, a documented
function) against a baseline each block takes at its entry, never against fixed numbers: at the end
of the block the array ``arr`` has the references it had at entry (the ring's own, then the ``with``
target) plus one per alias or export of it (a second name, a list, a memoryview, a DLPack capsule, a
tensor, a ctypes pointer); ``inner`` (``arr``'s base) has one more than at entry per view derived
from ``arr``. An array with aliases or exports is never changed in any way (no ``__setstate__``, no
``__class__`` assignment): its slot is kept (a received message stays taken, a loaned slot is
published or discarded but pinned, so no producer reuses it) until ``inner`` dies, which happens
only when the array and everything made from it are gone. Only an array that nothing but the
``with`` target refers to is closed in place (emptied, and :class:`ClosedError` on every use).
PyPy has no reference counts: there the block's slot goes back when the block ends.
"""

from __future__ import annotations

import builtins
import functools
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple, Optional, TypeVar, overload

import numpy as np

from ._errors import ClosedError, CorruptSegmentError, ShutDown, error_from_code
from ._lib import ffi
from ._messages import PLANS, describe, make_plan, pop_msg, push_msg, write_desc
from ._waits import ETIMEDOUT as _ETIMEDOUT, SLICE as _SLICE, rest as _rest

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

__all__ = ["SlotArray", "RingCalls", "SlotRing", "SlotSource", "Loan", "Receive"]

_PYPY = sys.implementation.name == "pypy"
_UPTR, _VOIDP = ffi.typeof("uintptr_t"), ffi.typeof("void *")
_U1 = np.dtype(np.uint8)
_setstate = np.ndarray.__setstate__
_EMPTY: Any = (1, (0,), _U1, False, b"")  # the state of a closed array: no element, no memory of the ring
_getrefcount = sys.getrefcount if not _PYPY else (lambda obj: 0)  # PyPy has no reference counts
_OWN_REF = 0 if _PYPY else 1  # a block's own reference to its inner array, gone by the count at its end
_NUMPY1 = np.lib.NumpyVersion(np.__version__) < "2.0.0"
# A closed array changes class to raise ClosedError. PyPy's cpyext crashes in NumPy's ufunc
# dispatch on an ndarray whose class was reassigned, so there a closed array is only emptied.
_SEAL = not _PYPY


class _SlotBase(np.ndarray):
    __slots__ = ("_keep",)  # a closed array keeps the ring mapped for whatever it exported
    _keep: Any  # the ring's buffer (memoryview or cffi buffer) or the inner SlotArray


class SlotArray(_SlotBase):
    """An ndarray over a queue slot: the array of a ``loan``/``receive`` block and the views
    derived from it. It behaves as a plain ``ndarray``; reductions on it give scalars and ufuncs
    plain arrays (of this type on NumPy 1). Copies (``.copy()``, ``.astype()``) stay of this type
    and own their memory."""

    __slots__ = ()

    if TYPE_CHECKING:  # NumPy keeps the subclass in a dtype view; numpy's stubs say a plain ndarray
        _ArrayT = TypeVar("_ArrayT", bound=np.ndarray[Any, Any])

        @overload  # type: ignore[override]  # a SlotArray, whatever the dtype (its dtype is not tracked)
        def view(self, /) -> SlotArray: ...
        @overload
        def view(self, /, *, type: builtins.type[_ArrayT]) -> _ArrayT: ...
        @overload
        def view(self, /, dtype: builtins.type[_ArrayT]) -> _ArrayT: ...
        @overload
        def view(self, /, dtype: DTypeLike) -> SlotArray: ...
        @overload
        def view(self, /, dtype: DTypeLike, type: builtins.type[_ArrayT]) -> _ArrayT: ...
        def view(self, /, *args: Any, **kwargs: Any) -> Any: ...

    def __array_wrap__(self, arr: Any, context: Any = None, return_scalar: bool = False) -> Any:
        if arr.__class__ is not np.ndarray:  # an out= argument (NumPy 1: any result, already of this class)
            return arr[()] if _NUMPY1 and arr.ndim == 0 and arr is not self and arr.base is not None else arr
        if arr.ndim == 0 and (return_scalar or _NUMPY1):
            return arr[()]
        return arr

    def __reduce__(self) -> Any:  # pickles as a plain ndarray
        return np.asarray(self).__reduce__()

    if sys.version_info >= (3, 12):
        def __buffer__(self, flags: int, /) -> memoryview:
            """Buffer exports (PEP 688: memoryview, bytes, ffi.from_buffer) go through a plain
            view of this array, which the export keeps: the format and shape it points to belong
            to that view, so closing this array at the end of its block never frees them (NumPy
            2.5 frees an array's buffer information when it is emptied in place)."""
            return memoryview(self.view(np.ndarray))

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        """DLPack export. A read-only view (``receive``) where NumPy cannot flag one read-only
        (before 2.1) is exported as writable: the message belongs to this consumer until its slot
        goes back, so a write changes nobody else's data (but do not write). The export holds this
        array, so it keeps the slot as any export does."""
        if self.flags.writeable or _RO_DLPACK:
            return np.ndarray.__dlpack__(self, *args, **kwargs)
        iface = self.__array_interface__
        alias = np.asarray(_Slot(self, {"version": 3, "data": (iface["data"][0], False), "shape": self.shape,
                                        "typestr": iface["typestr"], "descr": iface["descr"],
                                        "strides": iface["strides"]}))
        return alias.__dlpack__(*args, **kwargs)


def _ro_dlpack() -> bool:
    """True if this NumPy exports read-only arrays through DLPack (2.1 and later)."""
    ro = np.zeros(1)
    ro.flags.writeable = False
    try:
        ro.__dlpack__(max_version=(1, 0))
    except (BufferError, TypeError):
        return False
    return True


_RO_DLPACK = _ro_dlpack()


def _closed(self: Any, *args: Any, **kwargs: Any) -> Any:
    raise ClosedError(type(self)._message)


class ClosedSlot(_SlotBase):
    """The array of a ``loan``/``receive`` block once the block is over: every use raises
    :class:`ClosedError` (NumPy functions and ufuncs too); it holds no element. Each ring's
    subclasses say, in ``_message``, what was closed and what to do instead."""

    __slots__ = ()
    _message = "array used after its with block"
    _ALLOWED = frozenset({"__class__", "__repr__", "__str__"})

    def __getattribute__(self, name: str) -> Any:
        if name in ClosedSlot._ALLOWED:
            return object.__getattribute__(self, name)
        _closed(self)

    def __repr__(self) -> str:
        return f"<{type(self)._message.split(':')[0]}>"

    __str__ = __repr__
    __getitem__ = __setitem__ = __delitem__ = __len__ = __iter__ = __contains__ = __bool__ = _closed
    __int__ = __float__ = __complex__ = __index__ = __format__ = __array__ = _closed
    __copy__ = __deepcopy__ = __reduce__ = __reduce_ex__ = __array_wrap__ = __dlpack__ = _closed
    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _closed  # NumPy 1 turns their ufunc errors into False

    def __array_ufunc__(self, *args: Any, **kwargs: Any) -> Any:
        _closed(self)

    def __array_function__(self, *args: Any, **kwargs: Any) -> Any:
        _closed(self)


class _Slot:
    """The ``__array_interface__`` provider of one loaned or received slot."""

    __slots__ = ("__array_interface__", "queue", "__weakref__")

    def __init__(self, queue: object, iface: dict[str, Any]) -> None:
        self.queue = queue
        self.__array_interface__ = iface


def _itemless_views(ring: object, data: int, shape: tuple[int, ...], dt: np.dtype[Any], typestr: str,
                    readonly: bool) -> tuple[SlotArray, SlotArray]:
    """(inner, arr) for a message of zero-size items at address ``data``: no buffer can hold such
    an array, so it goes through an ``__array_interface__`` that keeps ``ring`` alive."""
    slot = _Slot(ring, {"version": 3, "data": (data, readonly), "shape": shape, "typestr": typestr,
                        "strides": None})
    inner = np.asarray(slot).view(SlotArray)
    return inner, (inner.view(dt) if inner.dtype != dt else inner.view())


def _data_of(m: Any) -> int:
    """The address of message ``m``'s data."""
    return int(ffi.cast(_UPTR, m.data))


def _received_views(ring: SlotRing, m: Any, w: Any, what: str) -> tuple[SlotArray, SlotArray]:
    """(inner, arr): read-only views of the message ``m`` (``w`` its words) just taken from
    ``ring``, on ``ring._ro``. ``arr`` is a view of ``inner``; NumPy collapses a view's base through
    arrays of the view's own type that do not own their data, so views derived from ``arr`` take
    ``inner`` as their base (see the module docstring for what their counts mean). A message no
    publisher could have written, or that NumPy cannot view, is a :class:`CorruptSegmentError`
    naming ``what`` (the caller releases the message)."""
    try:
        dt, shape = describe(m, w, ring._dtype)
        if dt.itemsize:
            inner = SlotArray(shape, dt, ring._ro, ring._offset(m))
            return inner, inner.view()
        return _itemless_views(ring, _data_of(m), shape, dt, dt.str if dt.names is None else f"|V{dt.itemsize}",
                               True)
    except CorruptSegmentError:
        raise
    except Exception as e:
        raise CorruptSegmentError(f"{what} message cannot be viewed as an array: {e}") from None


def copy_target(ring: SlotRing, m: Any, w: Any, what: str) -> tuple[np.ndarray, Any]:
    """A fresh array for the message ``m`` (``w`` its words) just taken from ``ring``, and the
    C pointer to copy the message into. A message no publisher could have written, or that NumPy
    cannot make, is a :class:`CorruptSegmentError` naming ``what`` (the caller releases it)."""
    try:
        dt, shape = describe(m, w, ring._dtype)
        out = np.empty(shape, dt)
        if out.nbytes != m.nbytes:  # never hand out bytes the copy will not write
            raise CorruptSegmentError(f"{what} message of shape {shape} and dtype {dt} makes an array of "
                                      f"{out.nbytes} bytes, not its {m.nbytes}")
        try:
            dst = ffi.from_buffer(out)
        except (TypeError, ValueError, BufferError):  # dtypes without a buffer format (datetime64, ...)
            dst = ffi.cast(_VOIDP, out.__array_interface__["data"][0])
    except CorruptSegmentError:
        raise
    except Exception as e:
        raise CorruptSegmentError(f"{what} message cannot be made into an array: {e}") from None
    return out, dst


def _close_array(arr: Any, keep: Any, cls: type) -> None:
    """Close the array (a SlotArray) of an ended block, which nothing but the block's ``with``
    target refers to (so nothing exports it): no element, ``keep`` (the ring's buffer, or the inner
    array) kept, and on CPython every further use raising :class:`ClosedError` (``cls``: the ring's
    closed class)."""
    _setstate(arr, _EMPTY)
    arr._keep = keep
    if _SEAL:
        arr.__class__ = cls


class _WhenGone:
    """``fn(*args)`` when this object dies. Kept in the ``_keep`` slot of a block's inner array, it
    runs when the last view or export of that array is gone (CPython frees an object when its
    last reference goes). Cheaper than weakref.finalize or a weak reference with a callback on
    the hot loan path: bench_queue's loan+receive row binds a derived view in every block."""

    __slots__ = ("fn", "args")

    def __init__(self, fn: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.fn, self.args = fn, args

    def __del__(self) -> None:
        self.fn(*self.args)


def _when_gone(inner: Any, fn: Callable[..., object], *args: Any) -> None:
    """Call ``fn(*args)`` once ``inner`` (a block's inner SlotArray) is gone."""
    inner._keep = _WhenGone(fn, args)


def hold_past_block(arr: Any, exported: bool, ring: SlotRing, cls: type, inner: Any,
                    release: Callable[..., object], *args: Any) -> None:
    """CPython: a received ``arr`` (a view of ``ring``) or views derived from it outlive the block,
    so its message stays taken until ``inner`` (which every one of them keeps) dies, then
    ``release(*args)`` runs. An ``arr`` that has aliases or exports (``exported``) is left exactly
    as it is: it stays a valid view of the message it holds. Otherwise it is closed."""
    if not exported:
        _close_array(arr, ring._ro, cls)
    _when_gone(inner, release, *args)


def receive_loop(receive: Callable[[Optional[float]], Any], timeout: Optional[float]) -> Iterator[Any]:
    """``for view in ring.receiving():`` (Queue and Subscription): ``receive(timeout)`` blocks, each
    view valid until the next iteration; ends at :class:`ShutDown`."""
    while True:
        rec = receive(timeout)
        try:
            view = rec.__enter__()
        except ShutDown:
            return
        rec._ra += 1  # the caller's loop variable still holds the view when the block ends
        try:
            yield view
        finally:
            rec.__exit__(None, None, None)


class RingCalls(NamedTuple):
    """What differs between the queue's and the broadcast's ``loan`` blocks at the C level: each
    ring's calls (``loan(h, nbytes, seconds, msg)``, ``publish``/``discard``/``pin(h, msg)``,
    ``unpin(h, pos)``) and its closed-array classes (of loan and receive blocks)."""

    loan: Callable[[Any, int, float, Any], int]
    publish: Callable[[Any, Any], int]
    discard: Callable[[Any, Any], int]
    pin: Callable[[Any, Any], int]
    unpin: Callable[[Any, int], int]
    closed_loan: type
    closed_receive: type


def _keep_mapped(handle: Any, ptr: Any) -> None:
    """Destructor of the ring's buffer owner: does nothing; holding ``handle`` keeps the ring mapped."""


class SlotRing:
    """What the loan and receive blocks of this module read of their ring: the base of
    :class:`ndshm._ring.Ring`, so of Queue and Broadcast. Each ring sets ``_handle`` (its C
    handle), ``_closed``, ``_dtype``, ``slots``, ``slot_bytes``, ``ring_address`` and
    ``ring_bytes``, calls :meth:`_map_ring`, and supplies what ``TYPE_CHECKING`` declares below."""

    __slots__ = ("_handle", "slots", "slot_bytes", "ring_address", "ring_bytes", "_dtype", "_closed", "_rw", "_ro",
                 "_offs", "_mask", "_loaned")
    _KIND = "ring"  # how messages name it
    _handle: Any
    slots: int
    slot_bytes: int
    ring_address: int
    ring_bytes: int
    _dtype: Optional[np.dtype[Any]]  # a typed ring's dtype (read by the message decoder)
    _closed: bool
    _rw: Any  # the ring's cffi buffer (writable)
    _ro: memoryview
    _offs: list[Optional[int]]
    _mask: int
    _loaned: list[Optional[tuple[tuple[int, ...], np.dtype[Any], Any]]]  # (dims, dtype, inner) of each slot's last loan

    if TYPE_CHECKING:  # each ring's own (ndshm._ring.Ring, ndshm.Queue, ndshm.Broadcast)
        _calls: RingCalls  # its C calls and closed-array classes

        def _live(self) -> Any:
            """The C handle; :class:`ClosedError` once this handle is closed."""

        def _toobig(self, nbytes: int) -> int:
            """The C error of a loan of ``nbytes`` (more than a slot holds)."""

        def _loan_error(self, rc: int, t: float, /) -> Exception:
            """The exception of a loan that failed with ``rc`` after waiting ``t`` seconds."""

        def _loan_defaults(self, shape: Any, dtype: Any) -> tuple[Any, Any]:
            """(shape, dtype) of a loan that left one out."""

    def _map_ring(self) -> None:
        # The whole ring as one buffer, writable and read-only: loan and receive views are
        # ndarrays on it at a slot's offset. Its owner holds the handle: the ring stays mapped
        # while any view of it lives.
        owner = ffi.gc(ffi.cast("char *", self.ring_address), functools.partial(_keep_mapped, self._handle))
        self._rw = ffi.buffer(owner, self.ring_bytes)
        self._ro = memoryview(self._rw).toreadonly()
        self._offs = [None] * self.slots  # data offset of each slot in the ring (no ffi.cast per message: "ndshm loan+receive")
        self._mask = self.slots - 1
        self._loaned = [None] * self.slots  # see Loan

    def _offset(self, m: Any) -> int:
        """Offset in the ring of the data of message ``m``'s slot."""
        i = m.pos_ & self._mask
        off: Optional[int] = self._offs[i]
        if off is None:
            off = self._offs[i] = int(ffi.cast(_UPTR, m.data)) - self.ring_address
        return off


class SlotSource:
    """What a receive block reads of its source: the base of Queue and Subscription, each of
    which supplies what ``TYPE_CHECKING`` declares below (see :class:`Receive`)."""

    __slots__ = ()

    if TYPE_CHECKING:
        def _rx_take(self, t: float, mw: Any, /) -> int:
            """Take the next message into ``mw`` (waiting ``t`` seconds, negative: for ever): its
            C code; raises first if this source cannot take."""

        def _rx_error(self, rc: int, t: float, /) -> Exception:
            """The exception of a take that failed with ``rc`` after waiting ``t`` seconds."""

        def _rx_keep(self, arr: Any, exported: bool, inner: Any, mw: Any, /) -> None:
            """Keep the message ``mw`` taken while ``inner`` lives (views of it outlive the block)."""

        def _rx_done(self, mw: Any, /) -> None:
            """Give the message ``mw`` back (also undoes a take whose message cannot be viewed)."""


def plain_alias(ring: SlotRing, arr: np.ndarray) -> np.ndarray:
    """A plain writable ndarray on the memory of ``arr`` (the array of a loan block of ``ring``)
    whose base is the ring's buffer: it keeps the ring mapped but is no alias or export of
    ``arr``, so it does not pin the slot (``ndshm.torch.loan`` empties it before the block ends)."""
    return np.ndarray(arr.shape, arr.dtype, ring._rw, arr.__array_interface__["data"][0] - ring.ring_address)


class Loan:
    """``with ring.loan(shape, dtype) as out:`` for both rings: claims a slot on entry, publishes
    it on a normal exit (discards it if the block raises), then closes or pins the array (see
    the module docstring). The ring (a :class:`SlotRing`) supplies ``_calls``
    (:class:`RingCalls`), ``_loan_defaults``, ``_toobig`` and ``_loan_error``."""

    __slots__ = ("_ring", "_shape", "_dt", "_nbytes", "_ts", "_word", "_timeout", "_msg", "_arr", "_slot",
                 "_ra", "_ri")
    _msg: Optional[tuple[Any, Any]]  # the message (struct, words) while the block is open
    _arr: Any  # a SlotArray inside the block; closed (another class) after it
    _slot: Any  # the SlotArray arr is a view of, inside the block
    _ra: int  # references to _arr and _slot at entry (see the module docstring)
    _ri: int

    def __init__(self, ring: SlotRing, shape: Any, dtype: Any, timeout: float) -> None:
        if shape is None or dtype is None:
            shape, dtype = ring._loan_defaults(shape, dtype)
        try:
            plan = PLANS[(shape, dtype)]
        except (KeyError, TypeError):
            plan = make_plan(shape, dtype)
        self._shape, self._dt, self._nbytes, self._ts, self._word = plan
        self._ring, self._timeout, self._arr, self._msg = ring, timeout, None, None

    def __enter__(self) -> np.ndarray:
        if self._msg is not None:
            raise RuntimeError("this loan() context is already entered; call loan() again for another slot")
        r, dims, dt, nbytes = self._ring, self._shape, self._dt, self._nbytes
        if r._closed:
            r._live()  # raises
        h = r._handle
        if nbytes > r.slot_bytes:
            raise error_from_code(r._toobig(nbytes))
        mw = pop_msg()
        m = mw[0]
        t = self._timeout
        calls: RingCalls = r._calls
        loan = calls.loan
        s = t if 0 <= t <= _SLICE else _SLICE  # the first slice inline (see ndshm._queue._take_waiting)
        rc = loan(h, nbytes, s, m)
        if rc == _ETIMEDOUT and s != t:
            rc = _rest(lambda s: loan(h, nbytes, s, m), t)
        if rc:
            push_msg(mw)
            raise r._loan_error(rc, t)
        try:
            write_desc(mw, dims, self._ts, self._word)
            if dt.itemsize:  # inner and arr as in Receive.__enter__
                # a loan counts no reference to inner, so the slot's inner of the last loan of
                # this (shape, dtype) plan is used again: one array made per loan, not two
                # (bench_queue's and bench_broadcast's "loan+receive" rows)
                i = m.pos_ & r._mask
                c: Optional[tuple[tuple[int, ...], np.dtype[Any], SlotArray]] = r._loaned[i]
                if c is not None and c[0] is dims and c[1] is dt:
                    inner = c[2]
                else:
                    inner = SlotArray(dims, dt, r._rw, r._offset(m))
                    r._loaned[i] = (dims, dt, inner)
                arr: SlotArray = inner.view()
            else:
                inner, arr = _itemless_views(r, _data_of(m), dims, dt, self._ts.decode(), False)
        except BaseException:  # never keep a slot nobody can publish
            calls.discard(h, m)
            push_msg(mw)
            raise
        self._msg, self._arr, self._slot = mw, arr, inner
        self._ra, self._ri = _getrefcount(arr), _getrefcount(inner) - _OWN_REF  # the baseline
        return arr

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        mw = self._msg
        if mw is None:
            raise RuntimeError("loan() context exited without being entered")
        arr, inner = self._arr, self._slot
        self._arr = self._slot = self._msg = None
        r = self._ring
        calls: RingCalls = r._calls
        h, m = r._handle, mw[0]
        # CPython: more references to arr than at entry are aliases or exports of it (a second
        # name such as OpenCV's returned dst=, a tensor, a memoryview), more to inner views
        # derived from it. Either way the slot is pinned until they are all gone, so no later
        # message is written under them; arr itself is left untouched if it has any.
        escaped = _getrefcount(arr) > self._ra
        pinned = escaped or _getrefcount(inner) > self._ri
        if pinned:
            calls.pin(h, m)
        # publish first (the hand-off does not wait for the closing), then close the array
        rc = calls.publish(h, m) if exc_type is None else calls.discard(h, m)
        pos = m.pos_
        push_msg(mw)
        if not escaped:
            _close_array(arr, r._rw, calls.closed_loan)  # keeps the ring mapped, not inner (PyPy: for its exports)
        if pinned:
            r._loaned[pos & r._mask] = None  # this inner must die for the pin to end
            _when_gone(inner, calls.unpin, h, pos)  # 0, or EINVAL if the pin was taken back already
        del arr, inner
        if rc:
            raise error_from_code(rc)


class Receive:
    """``with source.receive() as view:`` for both rings (``source`` a Queue or a Subscription,
    ``ring`` the Queue or Broadcast whose slots it reads): takes the next message on entry,
    gives it back on exit, unless views or exports of it live on (see the module docstring). The
    source (a :class:`SlotSource`) supplies ``_rx_take``, ``_rx_error``, ``_rx_keep`` and
    ``_rx_done``."""

    __slots__ = ("_src", "_ring", "_timeout", "_msg", "_arr", "_slot", "_ra", "_ri")
    _msg: Optional[tuple[Any, Any]]  # the message (struct, words) while the block is open
    _arr: Any  # a SlotArray inside the block; closed (another class) after it
    _slot: Any  # the SlotArray arr is a view of, inside the block
    _ra: int  # references to _arr and _slot at entry (see the module docstring)
    _ri: int

    def __init__(self, source: SlotSource, ring: SlotRing, timeout: float) -> None:
        self._src, self._ring, self._timeout, self._arr, self._msg = source, ring, timeout, None, None

    def __enter__(self) -> np.ndarray:
        if self._msg is not None:
            raise RuntimeError("this receive() context is already entered; call receive() again for another message")
        src, ring = self._src, self._ring
        mw = pop_msg()
        m = mw[0]
        rc = src._rx_take(self._timeout, mw)
        if rc:
            push_msg(mw)
            raise src._rx_error(rc, self._timeout)
        try:
            # `inner` is read-only on the ring (its base the ring's buffer, which keeps the ring's
            # mapping alive); see the module docstring for what the counts of inner and arr tell
            inner, arr = _received_views(ring, m, mw[1], ring._KIND)
        except BaseException:
            src._rx_done(mw)
            raise
        self._msg, self._slot, self._arr = mw, inner, arr
        self._ra, self._ri = _getrefcount(arr), _getrefcount(inner) - _OWN_REF  # the baseline
        return arr

    def __exit__(self, *exc: object) -> None:
        mw = self._msg
        if mw is None:
            raise RuntimeError("receive() context exited without being entered")
        arr: Any  # the SlotArray: its state, _keep slot and class change below
        arr, inner = self._arr, self._slot
        self._arr = self._slot = self._msg = None
        ring = self._ring
        # CPython: arr has the with target instead of self._arr, inner lost self._slot; more are
        # aliases or exports of arr, or views derived from it. Kept beyond the block, they keep
        # the message taken (its content valid) until the last of them dies.
        exported = _getrefcount(arr) > self._ra
        if exported or _getrefcount(inner) > self._ri:
            self._src._rx_keep(arr, exported, inner, mw)
            return
        _close_array(arr, ring._ro, ring._calls.closed_receive)  # nothing exports arr: it can be closed
        del arr, inner
        self._src._rx_done(mw)

"""Arrays over ring slots: the :class:`SlotArray` of ``loan``/``receive`` blocks, and how a block ends.

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
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, TypeVar, overload

import numpy as np

from ._errors import ClosedError, CorruptSegmentError, ShutDown
from ._lib import ffi
from ._messages import _describe

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

__all__ = ["SlotArray"]

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


class _ClosedSlot(_SlotBase):
    """The array of a ``loan``/``receive`` block once the block is over: every use raises
    :class:`ClosedError` (NumPy functions and ufuncs too); it holds no element. Each ring's
    subclasses say, in ``_message``, what was closed and what to do instead."""

    __slots__ = ()
    _message = "array used after its with block"
    _ALLOWED = frozenset({"__class__", "__repr__", "__str__"})

    def __getattribute__(self, name: str) -> Any:
        if name in _ClosedSlot._ALLOWED:
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


def _received_views(ring: Any, m: Any, w: Any, what: str) -> tuple[SlotArray, SlotArray]:
    """(inner, arr): read-only views of the message ``m`` (``w`` its words) just taken from
    ``ring``, on ``ring._ro``. ``arr`` is a view of ``inner``; NumPy collapses a view's base through
    arrays of the view's own type that do not own their data, so views derived from ``arr`` take
    ``inner`` as their base (see the module docstring for what their counts mean). A message no
    publisher could have written, or that NumPy cannot view, is a :class:`CorruptSegmentError`
    naming ``what`` (the caller releases the message)."""
    try:
        dt, shape = _describe(m, w, ring._dtype)
        if dt.itemsize:
            inner = SlotArray(shape, dt, ring._ro, ring._offset(m))
            return inner, inner.view()
        return _itemless_views(ring, _data_of(m), shape, dt, dt.str if dt.names is None else f"|V{dt.itemsize}",
                               True)
    except CorruptSegmentError:
        raise
    except Exception as e:
        raise CorruptSegmentError(f"{what} message cannot be viewed as an array: {e}") from None


def _copy_target(ring: Any, m: Any, w: Any, what: str) -> tuple[np.ndarray, Any]:
    """A fresh array for the message ``m`` (``w`` its words) just taken from ``ring``, and the
    C pointer to copy the message into. A message no publisher could have written, or that NumPy
    cannot make, is a :class:`CorruptSegmentError` naming ``what`` (the caller releases it)."""
    try:
        dt, shape = _describe(m, w, ring._dtype)
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


def _hold_past_block(arr: Any, exported: bool, keep: Any, cls: type, inner: Any,
                     release: Callable[..., object], *args: Any) -> None:
    """CPython: a received ``arr`` or views derived from it outlive the block, so its message
    stays taken until ``inner`` (which every one of them keeps) dies, then ``release(*args)``
    runs. An ``arr`` that has aliases or exports (``exported``) is left exactly as it is: it stays
    a valid view of the message it holds. Otherwise it is closed."""
    if not exported:
        _close_array(arr, keep, cls)
    _when_gone(inner, release, *args)


def _receiving(receive: Callable[[Optional[float]], Any], timeout: Optional[float]) -> Iterator[Any]:
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

"""A pre-faulted shared-memory pool that shared arrays are carved from: :class:`Pool`.

A pool is one named segment, created once (its pages faulted up front, on several threads, in
huge pages where the directory allows), that blocks are carved from by the C library
(``csrc/pool.c``): carving and freeing a block cost no system call and no page fault. Arrays
made by :meth:`Pool.empty` and friends are :class:`PoolArray` (a :class:`SharedArray`): their
``.base`` keeps the block alive, and they pickle *by reference* in O(1) (pool name, directory and
identity, block index, generation, offset). A receiving process maps the pool once and keeps the
mapping (a per-process cache), so the thousandth array it receives costs no fault either.

Lifetime of a block: every process that has a view pins it (recorded in the pool, per process);
the block is free again when the last view in the last process is gone. A pickled reference is a
hand-over: the block stays live until a receiver unpickles it (or the sender dies). A dead
process's pins and hand-overs are released (:meth:`Pool.reclaim`, which a full pool runs by
itself). A reference to a block freed since is refused with :class:`BlockFreedError`, never read.

A full pool: ``on_full="raise"`` raises :class:`NoSpaceError` naming the pool, its size and the
request; ``on_full="segment"`` gives the array a segment of its own instead (slower, as
``ndshm.create``). The module-level :func:`empty`, :func:`zeros`, :func:`full` and :func:`array`
use :func:`default_pool`.
"""

from __future__ import annotations

import atexit
import gc
import os
import platform
import threading
import uuid
from typing import Any, NamedTuple, Optional

import numpy as np
from numpy.lib import format as _npformat
from numpy.typing import NDArray

from . import _dtype
from ._dirs import default_dir, huge_dir
from ._errors import ClosedError, SegmentNotFoundError, error_from_code
from ._lib import ffi, lib
from ._api import create as _create_segment
from ._segment import SharedArray

__all__ = ["Pool", "PoolArray", "PoolStats", "BlockFreedError", "default_pool", "empty", "zeros", "full", "array",
           "reference_args", "rebuild"]

# Hot-path aliases: attribute lookups on an ABI-mode cffi library are slow (the 64-byte carve and
# free is ~2 us in all; each lookup costs ~0.1 us).
_carve, _pin, _unpin, _send = lib.ndshm_pool_carve, lib.ndshm_pool_pin, lib.ndshm_pool_unpin, lib.ndshm_pool_send
_ENOSPC, _ENOENT = lib.NDSHM_ENOSPC, lib.NDSHM_ENOENT
_ON_FULL = ("raise", "segment")
_DEFAULT_ENV = "NDSHM_DEFAULT_POOL"
_DEFAULT_BYTES = 256 << 20
_PYPY = platform.python_implementation() == "PyPy"


class BlockFreedError(SegmentNotFoundError):
    """A pool reference names a block that was freed since it was pickled (or a pool that is
    gone): the data is not read. A ``FileNotFoundError``, like :class:`SegmentNotFoundError`."""


class PoolStats(NamedTuple):
    """How full a pool is (:meth:`Pool.stats`)."""

    name: str
    capacity: int        #: bytes blocks are carved from
    used: int            #: bytes in live blocks
    high_water: int      #: the most ``used`` ever was
    high_end: int        #: the highest end of a block ever carved (the pool's footprint)
    live_blocks: int
    max_blocks: int
    free_extents: int    #: free ranges (1: no fragmentation)
    largest_free: int    #: bytes of the largest free range
    in_transit: int      #: blocks with a pickled reference not yet received
    processes: int       #: processes using the pool now
    carves: int
    frees: int
    reclaimed: int       #: dead processes released so far


class _Scratch(threading.local):
    """Per-thread out-parameters (cffi releases the GIL during calls)."""

    def __init__(self) -> None:
        self.block = ffi.new("ndshm_pool_block_t *")


_tls = _Scratch()


class _Handle:
    """This process's mapping of one pool (the C handle). Every block of this process holds it,
    and the per-process cache holds attached pools for the life of the process (receivers map a
    pool once); a creator's pool leaves the cache at :meth:`Pool.close`, and the mapping goes
    with the handle's last reference (its last block). Finalizers run blocks first: a block
    refers to its handle (PyPy too orders finalizers by reference)."""

    __slots__ = ("ptr", "name", "dir", "pool_id", "capacity", "base", "__weakref__")
    _lib = lib  # keeps the library loaded while any handle lives

    def __init__(self, ptr: Any, name: str, dir: str) -> None:
        st = ffi.new("ndshm_pool_stats_t *")
        rc = lib.ndshm_pool_stats(ptr, st)
        if rc < 0:
            lib.ndshm_pool_close(ptr)
            raise error_from_code(rc)
        self.ptr = ptr
        self.name = name
        self.dir = dir
        self.pool_id = int(st.pool_id)
        self.capacity = int(st.capacity)
        self.base = 0  # the address of the pool's data in this process, known from the first block

    def __del__(self, _close: Any = lib.ndshm_pool_close) -> None:
        ptr = getattr(self, "ptr", None)
        if ptr is not None:
            self.ptr = None
            _close(ptr)


# (real directory, name) -> handle: every pool this process has mapped.
_handles: dict[tuple[str, str], _Handle] = {}
_handles_lock = threading.Lock()


def _key(name: str, dir: str) -> tuple[str, str]:
    return os.path.realpath(dir), name


def _attach_handle(name: str, dir: str, pool_id: Optional[int]) -> _Handle:
    key = _key(name, dir)
    with _handles_lock:
        h = _handles.get(key)
        if h is not None and h.ptr is not None and (pool_id is None or h.pool_id == pool_id):
            return h
        out = ffi.new("ndshm_pool_t **")
        rc = lib.ndshm_pool_attach(name.encode(), os.fsencode(dir), lib.NDSHM_SEG_POPULATE, out)
        if rc < 0:
            if rc == _ENOENT and pool_id is not None:
                raise BlockFreedError(f"pool {name!r} in {dir} is gone (its creator closed it or ended): "
                                      "the array pickled from it cannot be received")
            raise error_from_code(rc)
        h = _Handle(out[0], name, dir)
        if pool_id is not None and h.pool_id != pool_id:
            ptr, h.ptr = h.ptr, None
            lib.ndshm_pool_close(ptr)
            raise BlockFreedError(f"pool {name!r} in {dir} was made again since the array was pickled "
                                  f"(identity {h.pool_id:#x}, the reference names {pool_id:#x})")
        _handles[key] = h
        return h


class _Block:
    """One block as seen by this process: the ``.base`` of its arrays, unpinned when it dies.
    ``size`` is what this process uses of it (the request, or what a reference names)."""

    __slots__ = ("handle", "index", "generation", "address", "size", "__array_interface__")
    __array_interface__: dict[str, Any]

    def __init__(self, handle: _Handle, b: Any, size: int) -> None:
        self.handle = handle
        self.index = b.index
        self.generation = b.generation
        self.address = address = b.data
        self.size = size
        if not handle.base:
            handle.base = address - b.offset

    @property
    def offset(self) -> int:
        return int(self.address - self.handle.base)

    def __del__(self, _unpin: Any = _unpin) -> None:  # the default outlives module teardown at exit
        try:
            ptr = self.handle.ptr
        except AttributeError:  # __init__ did not finish
            return
        if ptr is not None:
            _unpin(ptr, self.index, self.generation)


# Read once (bench row "64 B shared array, create + free"): a module global is cheaper than an
# attribute lookup on every array made.
_typestr_of = _dtype.typestr_of
_asarray = np.asarray
_MAX_ITEMS = _dtype.MAX_NBYTES // 64  # a 1-D shape below this of a cached dtype (itemsize <= 64) cannot overflow
# argument -> dtype for the arguments seen (same row): np.dtype(arg) is ~0.3 us of the ~2.5 us.
_DTYPES: dict[Any, np.dtype[Any]] = {}


def _array(block: _Block, shape: tuple[int, ...], dt: np.dtype[Any], strides: Optional[tuple[int, ...]],
           address: int, readonly: bool = False) -> "PoolArray":
    if dt.names is None:  # a typestr says all (the one dtype -> typestr cache, _dtype.typestr_of)
        block.__array_interface__ = {"version": 3, "data": (address, readonly), "shape": shape,
                                     "typestr": _typestr_of(dt), "strides": strides}
        arr = _asarray(block)
    else:
        block.__array_interface__ = _dtype.array_interface(address, shape, dt, strides, readonly)
        arr = _dtype.exact_dtype(_asarray(block), dt)
    out: PoolArray = arr.view(PoolArray)
    return out


class PoolArray(SharedArray):
    """An ndarray whose data is a block of a :class:`Pool`; pickles by reference (a hand-over)."""

    def __reduce_ex__(self, protocol: Any) -> Any:
        ref = _pool_reference(self)
        if ref is not None:
            return ref
        return np.asarray(self).__reduce_ex__(protocol)

    def __reduce__(self) -> Any:
        return self.__reduce_ex__(2)

    # A copy is a private ndarray (pickling's reference would give the same memory back).
    def __deepcopy__(self, memo: Any) -> Any:
        return np.array(self, copy=True)

    def __copy__(self) -> Any:
        return np.array(self, copy=True)


def _block_of(arr: Any) -> Optional[_Block]:
    base = arr
    while isinstance(base, np.ndarray):
        base = base.base
    return base if isinstance(base, _Block) else None


def _pool_reference(arr: NDArray[Any], send: bool = True) -> Optional[tuple[Any, ...]]:
    block = _block_of(arr)
    if block is None or block.handle.ptr is None:
        return None
    addr = arr.__array_interface__["data"][0]
    lo, hi = _dtype.byte_span(arr.shape, arr.strides, arr.itemsize)
    start = addr - block.address
    if arr.size and (start + lo < 0 or start + hi > block.size):
        return None
    h = block.handle
    if send:
        rc = _send(h.ptr, block.index, block.generation)
        if rc < 0:
            raise error_from_code(rc)
    return (_rebuild, (h.name, h.dir, h.pool_id, block.index, block.generation, block.offset, block.size, start,
                       arr.shape, arr.strides, _npformat.dtype_to_descr(arr.dtype), not arr.flags.writeable))


def _rebuild(name: str, dir: str, pool_id: int, index: int, generation: int, offset: int, size: int, start: int,
             shape: tuple[int, ...], strides: tuple[int, ...], descr: Any, readonly: bool,
             received: bool = True) -> "PoolArray":
    """Unpickles a pool reference: maps the pool (once per process), pins the block, views it.
    ``received``: this pin also ends the reference's hand-over (see :func:`rebuild`)."""
    h = _attach_handle(name, dir, pool_id)
    b = _tls.block
    rc = _pin(h.ptr, index, generation, offset, size, 1 if received else 0, b)
    if rc < 0:
        if rc == _ENOENT:
            raise BlockFreedError(f"pool {name!r} in {dir}: block {index} (generation {generation}) was freed "
                                  f"since the array was pickled; its memory is not read "
                                  f"({ffi.string(lib.ndshm_last_detail()).decode(errors='replace')})")
        raise error_from_code(rc)
    block = _Block(h, b, size)
    dt = _npformat.descr_to_dtype(descr)
    lo, hi = _dtype.byte_span(tuple(shape), tuple(strides), dt.itemsize)
    if start + lo < 0 or start + hi > block.size:
        raise BlockFreedError(f"pool {name!r}: a view of {hi - lo} bytes at {start} does not fit block {index} "
                              f"of {block.size} bytes")
    return _array(block, tuple(shape), dt, tuple(strides), block.address + start, readonly)


def reference_args(arr: Any, *, send: bool = True) -> Optional[tuple[Any, ...]]:
    """For the engines' serializers: the arguments of ``arr``'s pool reference (what pickling
    sends, without the callable), or None if ``arr`` is not a view of a live pool block (send it
    by value). ``send=True`` records a hand-over, as pickling does: the block stays live until one
    :func:`rebuild` with ``received=True`` (or until this process dies); ``send=False`` records
    none, so the block lives only as long as this process's views (and other pins) do."""
    ref = _pool_reference(arr, send) if isinstance(arr, np.ndarray) else None
    return None if ref is None else tuple(ref[1])


def rebuild(args: tuple[Any, ...], *, received: bool = True) -> "PoolArray":
    """The array a :func:`reference_args` tuple names, pinned in this process for the life of its
    views. ``received=True`` also ends one hand-over (a reference sent with ``send=True`` is
    received once so); ``received=False`` only pins (a reader that is not the reference's
    receiver). A block freed since raises :class:`BlockFreedError`, never reads."""
    if not isinstance(args, tuple) or len(args) != 12:
        raise TypeError(f"not a pool reference: {args!r:.100}")
    name, dir, pool_id, index, generation, offset, size, start, shape, strides, descr, readonly = args
    return _rebuild(name, dir, pool_id, index, generation, offset, size, start, shape, strides, descr, readonly,
                    received=bool(received))


class Pool:
    """A shared-memory pool of ``nbytes`` that arrays are carved from.

    ``Pool(nbytes, *, name=None, dir=None, hugepages=False, populate=True, on_full="raise",
    max_blocks=0)`` creates the pool (a named segment in ``dir``, ``$NDSHM_DIR`` or /dev/shm;
    ``name=None`` picks a unique one), pre-faulting it unless ``populate=False``. ``hugepages=True``
    puts it where huge pages are (as ``ndshm.create`` does). ``max_blocks``: how many blocks can
    live at once, free ranges included (0: one per 2 KiB, 256 .. 2**20). :meth:`attach` maps an
    existing pool by name.

    ``on_full``: ``"raise"`` (:class:`NoSpaceError` naming the pool, its size and the request)
    or ``"segment"`` (the array gets a named segment of its own, ``owner="receiver"``-free, as
    :func:`ndshm.create`). The creator's :meth:`close` (or ``with`` block, or exit) removes the
    pool's name; blocks still viewed stay valid until their last view is gone.
    """

    def __init__(self, nbytes: int, *, name: Optional[str] = None, dir: Optional[str] = None,
                 hugepages: bool = False, populate: bool = True, on_full: str = "raise",
                 max_blocks: int = 0) -> None:
        n = _dtype.as_int(nbytes, "nbytes", 1, _dtype.MAX_NBYTES - 64)
        blocks = _dtype.as_int(max_blocks, "max_blocks", 0, lib.NDSHM_POOL_MAX_BLOCKS)
        self._on_full = _check_on_full(on_full)
        flags = lib.NDSHM_SEG_POPULATE if _dtype.as_flag(populate, "populate") else 0
        if _dtype.as_flag(hugepages, "hugepages"):
            hdir, hugetlb = huge_dir(dir)
            dir = hdir if hdir is not None else dir
            if hugetlb:
                flags |= lib.NDSHM_SEG_HUGEPAGES
        d = default_dir(dir)
        nm = name if name is not None else f"pool-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        if not isinstance(nm, str):
            raise TypeError(f"name {nm!r} is not a str")
        out = ffi.new("ndshm_pool_t **")
        rc = lib.ndshm_pool_create(nm.encode(), os.fsencode(d), n, blocks, 0o600, flags, out)
        if rc < 0:
            raise error_from_code(rc, nm)
        h = _Handle(out[0], nm, d)
        with _handles_lock:
            _handles[_key(nm, d)] = h
        self._h: Optional[_Handle] = h
        self._creator = os.getpid()  # a fork()ed child's close (or exit) leaves its parent's pool alone
        _creators.add(self)

    @classmethod
    def attach(cls, name: str, *, dir: Optional[str] = None, on_full: str = "raise") -> "Pool":
        """Maps the existing pool ``name`` in ``dir`` (once per process; later calls share it)."""
        if not isinstance(name, str):
            raise TypeError(f"name {name!r} is not a str")
        self = cls.__new__(cls)
        self._on_full = _check_on_full(on_full)
        self._h = _attach_handle(name, default_dir(dir), None)
        self._creator = 0
        return self

    # ---- what it is -------------------------------------------------------------------

    def _handle(self) -> _Handle:
        h = self._h
        if h is None or h.ptr is None:
            raise ClosedError("the pool is closed")
        return h

    @property
    def name(self) -> str:
        """The pool's name (``Pool.attach(name)`` in another process)."""
        return self._handle().name

    @property
    def dir(self) -> str:
        """The directory of the pool's file."""
        return self._handle().dir

    @property
    def nbytes(self) -> int:
        """The bytes blocks are carved from."""
        return self._handle().capacity

    @property
    def on_full(self) -> str:
        """What a request the pool cannot hold does: ``"raise"`` or ``"segment"``."""
        return self._on_full

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._h is None

    def stats(self) -> PoolStats:
        """How full the pool is, now."""
        h = self._handle()
        st = ffi.new("ndshm_pool_stats_t *")
        rc = lib.ndshm_pool_stats(h.ptr, st)
        if rc < 0:
            raise error_from_code(rc)
        return PoolStats(h.name, st.capacity, st.used, st.high_water, st.high_end, st.live_blocks, st.max_blocks,
                         st.free_extents, st.largest_free, st.in_transit, st.procs, st.carves, st.frees,
                         st.reclaimed)

    def reclaim(self) -> int:
        """Releases dead processes' pins, blocks and hand-overs; returns how many processes."""
        h = self._handle()
        n = ffi.new("uint32_t *")
        rc = lib.ndshm_pool_reclaim(h.ptr, n)
        if rc < 0:
            raise error_from_code(rc)
        return int(n[0])

    def check(self) -> None:
        """Validates every record of the pool: :class:`CorruptSegmentError` if one is bad."""
        rc = lib.ndshm_pool_check(self._handle().ptr)
        if rc < 0:
            raise error_from_code(rc)

    # ---- arrays -----------------------------------------------------------------------

    def empty(self, shape: Any, dtype: Any = float, order: str = "C") -> NDArray[Any]:
        """A new array in the pool, uninitialised (a reused block holds old data)."""
        try:
            dt = _DTYPES.get(dtype)
        except TypeError:  # unhashable (a list describing a structured dtype)
            dt = None
        if shape.__class__ is int and dt is not None and 0 <= shape < _MAX_ITEMS:  # the common case
            shp: tuple[int, ...] = (shape,)
            nbytes = shape * dt.itemsize
        else:
            shp, dt = _dtype.normalize(shape, dtype)
            nbytes = _dtype.nbytes_of(shp, dt)
            if dt.names is None and not dt.subdtype and dt.itemsize <= 64 and len(_DTYPES) < 256:
                try:
                    _DTYPES[dtype] = dt
                except TypeError:  # an unhashable dtype argument
                    pass
        if order != "C":
            _dtype.check_order(order)
        h = self._h
        if h is None or h.ptr is None:
            raise ClosedError("the pool is closed")
        b = _tls.block
        rc = _carve(h.ptr, nbytes, b)
        tries = 4 if _PYPY else 0  # blocks of dead arrays wait for PyPy's GC (through cpyext, a level a pass)
        while rc == _ENOSPC and tries:
            gc.collect()
            rc = _carve(h.ptr, nbytes, b)
            tries -= 1
        if rc < 0:
            if rc == _ENOSPC and self._on_full == "segment":
                seg: NDArray[Any] = _create_segment(None, shp, dt, order, dir=h.dir, owner="receiver")
                return seg
            raise error_from_code(rc)
        block = _Block(h, b, nbytes)
        if order == "C" or len(shp) < 2:
            if dt.names is None:  # _array's common case, inlined (bench row "64 B shared array, create + free")
                block.__array_interface__ = {"version": 3, "data": (block.address, False), "shape": shp,
                                             "typestr": _typestr_of(dt), "strides": None}
                out: NDArray[Any] = _asarray(block).view(PoolArray)
                return out
            return _array(block, shp, dt, None, block.address)
        return _array(block, shp, dt, _dtype.contiguous_strides(shp, dt.itemsize, "F"), block.address)

    def zeros(self, shape: Any, dtype: Any = float, order: str = "C") -> NDArray[Any]:
        """A new array in the pool, filled with zeros (as ``np.zeros``)."""
        arr = self.empty(shape, dtype, order)
        if arr.dtype.names is None:
            arr.fill(0)
        else:
            arr[...] = np.zeros((), arr.dtype)
        return arr

    def full(self, shape: Any, fill_value: Any, dtype: Any = None, order: str = "C") -> NDArray[Any]:
        """A new array in the pool, filled with ``fill_value`` (as ``np.full``: the dtype is
        ``fill_value``'s unless given)."""
        dt = np.asarray(fill_value).dtype if dtype is None else dtype
        arr = self.empty(shape, dt, order)
        arr.fill(fill_value)
        return arr

    def array(self, obj: Any, dtype: Any = None, order: str = "C") -> NDArray[Any]:
        """A copy of ``obj`` (anything ``np.asarray`` takes) in the pool."""
        src = np.asarray(obj, dtype=dtype)
        arr = self.empty(src.shape, src.dtype, order)
        np.copyto(arr, src, casting="no")
        return arr

    def empty_like(self, a: Any, dtype: Any = None) -> NDArray[Any]:
        """A new uninitialised array in the pool with ``a``'s shape and dtype (or ``dtype``)."""
        a = np.asarray(a)
        return self.empty(a.shape, a.dtype if dtype is None else dtype)

    def zeros_like(self, a: Any, dtype: Any = None) -> NDArray[Any]:
        """A new zero-filled array in the pool with ``a``'s shape and dtype (or ``dtype``)."""
        a = np.asarray(a)
        return self.zeros(a.shape, a.dtype if dtype is None else dtype)

    # ---- lifetime ---------------------------------------------------------------------

    def close(self) -> None:
        """Ends this object's use. The creator's close also removes the pool's name (no new
        process can attach); blocks with live views stay valid until their last view is gone.
        Idempotent."""
        h, self._h = self._h, None
        if h is None:
            return
        _creators.discard(self)
        if self._creator != os.getpid():
            return
        with _handles_lock:
            if _handles.get(_key(h.name, h.dir)) is h:
                del _handles[_key(h.name, h.dir)]
        if h.ptr is not None:
            lib.ndshm_pool_unlink(h.ptr)  # the mapping goes with the handle's last reference

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        h = self._handle()
        return (_attach_pool, (h.name, h.dir, self._on_full))

    def __repr__(self) -> str:
        if self._h is None:
            return "<ndshm.Pool closed>"
        s = self.stats()
        return (f"<ndshm.Pool {s.name!r} in {self.dir}: {s.used} of {s.capacity} bytes in {s.live_blocks} blocks, "
                f"on_full={self._on_full!r}>")


def _attach_pool(name: str, dir: str, on_full: str) -> Pool:
    return Pool.attach(name, dir=dir, on_full=on_full)


def _check_on_full(on_full: Any) -> str:
    if on_full not in _ON_FULL:
        raise ValueError(f"on_full {on_full!r} is not one of {', '.join(map(repr, _ON_FULL))}")
    return str(on_full)


_creators: "set[Pool]" = set()


@atexit.register
def _close_all() -> None:
    for p in list(_creators):
        p.close()


def reclaim_pool(name: str, dir: str) -> int:
    """Releases the dead processes of pool ``name`` in ``dir`` (``ndshm gc``); returns how many,
    0 if the pool cannot be opened. Maps it for the call only, unless this process has it already."""
    key = _key(name, dir)
    h = _handles.get(key)
    if h is not None and h.ptr is not None:
        ptr, own = h.ptr, False
    else:
        out = ffi.new("ndshm_pool_t **")
        if lib.ndshm_pool_attach(name.encode(), os.fsencode(dir), 0, out) != 0:
            return 0
        ptr, own = out[0], True
    n = ffi.new("uint32_t *")
    rc = lib.ndshm_pool_reclaim(ptr, n)
    if own:
        lib.ndshm_pool_close(ptr)
    return int(n[0]) if rc == 0 else 0


# ---- the default pool ---------------------------------------------------------------------

_default: Optional[Pool] = None
_default_lock = threading.Lock()


def default_pool() -> Pool:
    """The process's default pool (``on_full="segment"``): the one a parent made, if this process
    was started by it (its name is in ``$NDSHM_DEFAULT_POOL``, which children inherit, forked or
    spawned), else a new one of ``$NDSHM_POOL_BYTES`` (default 256 MiB) bytes that this process
    owns and that its children then use."""
    global _default
    p = _default
    if p is not None and not p.closed:
        return p
    with _default_lock:
        if _default is not None and not _default.closed:
            return _default
        inherited = os.environ.get(_DEFAULT_ENV)
        if inherited:
            name, _, dir = inherited.partition(":")
            try:
                _default = Pool.attach(name, dir=dir or None, on_full="segment")
                return _default
            except (FileNotFoundError, ValueError):
                pass  # its creator is gone: make our own
        size = _dtype.as_int(int(os.environ.get("NDSHM_POOL_BYTES", _DEFAULT_BYTES)), "NDSHM_POOL_BYTES", 64,
                             _dtype.MAX_NBYTES - 64)
        _default = Pool(size, on_full="segment")
        os.environ[_DEFAULT_ENV] = f"{_default.name}:{_default.dir}"
        return _default


def empty(shape: Any, dtype: Any = float, order: str = "C") -> NDArray[Any]:
    """:meth:`Pool.empty` of :func:`default_pool`."""
    return default_pool().empty(shape, dtype, order)


def zeros(shape: Any, dtype: Any = float, order: str = "C") -> NDArray[Any]:
    """:meth:`Pool.zeros` of :func:`default_pool`."""
    return default_pool().zeros(shape, dtype, order)


def full(shape: Any, fill_value: Any, dtype: Any = None, order: str = "C") -> NDArray[Any]:
    """:meth:`Pool.full` of :func:`default_pool`."""
    return default_pool().full(shape, fill_value, dtype, order)


def array(obj: Any, dtype: Any = None, order: str = "C") -> NDArray[Any]:
    """:meth:`Pool.array` of :func:`default_pool`."""
    return default_pool().array(obj, dtype, order)


#: The environment variable ``ndshm.dask.install`` and ``ndshm.ray.init`` read for the size of their
#: node pool when ``pool_bytes`` is not given (0 or unset: no node pool).
ENGINE_POOL_BYTES_ENV = "NDSHM_ENGINE_POOL_BYTES"


def engine_pool_bytes(pool_bytes: Optional[int]) -> int:
    """The engines' node pool size: ``pool_bytes``, else ``$NDSHM_ENGINE_POOL_BYTES``, else 0;
    ValueError naming a value that is not a number of bytes >= 0."""
    if pool_bytes is None:
        env = os.environ.get(ENGINE_POOL_BYTES_ENV, "").strip()
        try:
            pool_bytes = int(env) if env else 0
        except ValueError:
            raise ValueError(f"${ENGINE_POOL_BYTES_ENV}={env!r} is not a number of bytes") from None
    if isinstance(pool_bytes, bool) or not isinstance(pool_bytes, (int, np.integer)) or pool_bytes < 0:
        raise ValueError(f"pool_bytes={pool_bytes!r} is not a number of bytes >= 0")
    return int(pool_bytes)

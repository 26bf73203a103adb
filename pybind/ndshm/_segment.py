"""Shared-memory segments as zero-copy NumPy arrays.

A :class:`Segment` owns one C segment handle (one mapping). It is the owner of every array made
from it: each array's ``.base`` chain ends at the segment (or at a small view holder that keeps
it), so the mapping lives exactly as long as the last view. ``close()`` ends the segment's own use
(no new views; a creator's non-persistent segment loses its name) but never unmaps memory a view
still uses.

Arrays are :class:`SharedArray`, a thin ndarray subclass whose pickling is *by reference* when the
data lies in a live named segment (registered by :mod:`ndshm._reference`, which makes references):
(name, dir, byte offset, shape, strides, dtype), unpickled here by :func:`rebuild_view`, attaching
(one mapping per segment per process, reused) and viewing. Anything else (ufunc results, anonymous
or memfd segments) pickles by value like a plain ndarray.

``meta``: ``bytes``/``bytearray`` are stored verbatim and come back as ``bytes``; any other value
is stored as JSON and comes back decoded (a one-byte tag tells them apart). At most 4095 bytes.
"""

from __future__ import annotations

import datetime as _dt
import os
import threading
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
from numpy.lib import format as _npformat
from numpy.typing import NDArray

from . import _dtype, _mappings, _ownership
from ._codec import DTYPES, decode_meta, lookup_dtype
from ._dirs import REALDIRS, cache_key, default_dir, env_dir
from ._errors import ClosedError, CorruptSegmentError, SegmentNotFoundError, check, error_from_code, retry_interrupted
from ._identity import check_file, check_node, node_identity
from ._lib import ffi, lib
from ._params import PERSIST, PREFIX, create_params, cstr

if TYPE_CHECKING:
    from ._sync import Barrier, Event, Lock
    _NDArrayBase = NDArray[Any]
else:
    _NDArrayBase = np.ndarray

__all__ = ["Segment", "SharedArray", "segment_of", "default_dir"]

_POPULATE, _READONLY = lib.NDSHM_SEG_POPULATE, lib.NDSHM_SEG_READONLY
_QUEUE, _SYNC, _BROADCAST = lib.NDSHM_SEG_QUEUE, lib.NDSHM_SEG_SYNC, lib.NDSHM_SEG_BROADCAST
_POOL = lib.NDSHM_SEG_POOL
_CONTENT = _QUEUE | _SYNC | _BROADCAST | _POOL  # segments whose data is not an array
_close = lib.ndshm_segment_close
# Functions and constants read once (bench row "Attach latency: ndshm (mapping kept: the default)"):
# an attribute lookup on an ABI-mode cffi library costs about as much as a small C call.
_seg_info, _seg_attach, _seg_summary = lib.ndshm_segment_info, lib.ndshm_segment_attach, lib.ndshm_segment_summary
_NAMED = lib.NDSHM_KIND_NAMED
_INFO_P, _SEG_PP = ffi.typeof("ndshm_segment_info_t *"), ffi.typeof("ndshm_segment_t **")
# ndshm_segment_summary's slots, by the names ndshm.h gives them (then shape[ndim], strides[ndim])
_SUM_MAX, _SUM_FIXED = lib.NDSHM_SUM_MAX, lib.NDSHM_SUM_FIXED
_S_DATA, _S_SIZE, _S_FLAGS, _S_CREATOR = lib.NDSHM_SUM_DATA, lib.NDSHM_SUM_DATA_SIZE, lib.NDSHM_SUM_FLAGS, lib.NDSHM_SUM_CREATOR
_S_FD, _S_DEV, _S_INO, _S_ITEMSIZE = lib.NDSHM_SUM_FD, lib.NDSHM_SUM_DEV, lib.NDSHM_SUM_INO, lib.NDSHM_SUM_ITEMSIZE
_S_NDIM, _S_DESCR_LEN, _S_META_LEN = lib.NDSHM_SUM_NDIM, lib.NDSHM_SUM_DESCR_LEN, lib.NDSHM_SUM_META_LEN
_ADDR_WRAP = 1 << 64  # ndshm_segment_summary hands out unsigned values as int64


class _Scratch(threading.local):
    """Per-thread output buffers of the attach path (cffi releases the GIL during C calls): no
    ffi.new per attach (bench row "Attach latency: ndshm (mapping kept: the default)")."""

    def __init__(self) -> None:
        self.out = ffi.new(_SEG_PP)
        self.summary = ffi.new("int64_t[]", _SUM_MAX)
        self.typestr = ffi.new("char[]", lib.NDSHM_TYPESTR_MAX)


_scratch = _Scratch()
_live = _mappings.live  # (real dir, name) -> weakref to the mapped Segment (see _mappings)


_UNREAD = object()  # Segment._meta before the metadata was read from the handle
# Names and dirs as C bytes, bounded caches (bench row "Attach latency: ndshm (mapping kept: the default)": os.fsencode per attach).
_DIRBYTES: dict[str, bytes] = {}



_NAMEBYTES: dict[str, bytes] = {}


def _name_bytes(name: str) -> bytes:
    """A segment name as C string bytes (C checks the characters and names a bad one)."""
    b: bytes = cstr(name)
    if len(_NAMEBYTES) < 4096:
        _NAMEBYTES[name] = b
    return b


def _dir_bytes(dir: str) -> bytes:
    b = _DIRBYTES.get(dir)
    if b is None:
        b = cstr(dir)
        if len(_DIRBYTES) < 256:
            _DIRBYTES[dir] = b
    return b


class SharedArray(_NDArrayBase):
    """An ndarray that pickles by reference when its data lies in a live named segment (its
    pickling is registered by ndshm._reference with copyreg; see there)."""


def owner_of(arr: Any) -> Any:
    """What ends ``arr``'s ``.base`` chain: its Segment for a view of one, else whatever it is."""
    base = arr
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, _View):
        return base.owner
    return base


def rebuild_view(name: str, dir: str, offset: int, shape: tuple[int, ...], strides: tuple[int, ...], descr: Any,
                 readonly: bool = False, dev: Optional[int] = None, ino: Optional[int] = None,
                 claim: bool = False, node: Optional[str] = None) -> NDArray[Any]:
    """The view a reference describes (its fields, in the order of ``ndshm.Reference``): what every
    pickle stream of a SharedArray names (``ndshm._segment.rebuild_view``, so it stays in this room,
    which ndshm._reference's pickling and ``from_reference`` build on). WrongNodeError if the
    reference was made on another node or in another container (``ndshm._identity`` decides), else
    attach and view. A hand-over (``claim``) maps the segment writeable even for a read-only
    view: taking ownership writes the header's owner lock."""
    other_container = False
    if node is not None and node != node_identity():
        other_container = not check_node(node, name, dir)
        if other_container:  # decided by the file: the path must lead here to the referenced one
            check_file(node, name, dir, f"{dir}/{PREFIX}{name}", dev, ino)
    seg = None
    if claim and readonly:
        try:
            seg = Segment.attach(name, readonly=False, dir=dir)
        except PermissionError:
            seg = None
    if seg is None:
        seg = Segment.attach(name, readonly=readonly, dir=dir)
    if seg._content:
        raise CorruptSegmentError(f"segment {name!r} in {dir} now holds a {seg._content}, not the array that "
                                  "was pickled")
    if dev is not None and not seg._same_file(dev, ino):
        if other_container:
            assert node is not None  # other_container is set only for a reference with a node
            check_file(node, name, dir, f"{dir}/{PREFIX}{name}", dev, ino)
        raise SegmentNotFoundError(f"segment {name!r} in {dir} was replaced by another one since this array "
                                   "was pickled")
    if claim:
        _claim(seg)
    dt = _npformat.descr_to_dtype(descr)
    return seg._view(offset, tuple(shape), dt, tuple(strides), readonly)


def _claim(seg: "Segment") -> None:
    """Take over a handed-over segment (owner="receiver"); then it dies with this process's views.
    A segment already owned elsewhere (or "handed": back in its creator) is left as it is."""
    if _ownership.claim(seg, seg._own, seg._handle):
        _mappings.unkeep(seg._map)


class _View:
    """A transient ``__array_interface__`` provider for a view at an offset; keeps its segment."""

    __slots__ = ("__array_interface__", "owner")
    __array_interface__: dict[str, Any]
    owner: Segment

    def __init__(self, owner: Segment, iface: dict[str, Any]) -> None:
        self.owner = owner
        self.__array_interface__ = iface




class Segment:
    """One shared-memory segment mapped in this process (see the module documentation).

    Use the classmethods :meth:`create`, :meth:`attach` and :meth:`from_fd`.
    """

    __slots__ = ("_handle", "_info", "_name", "_kind", "_dir", "_path", "_closed", "_creator", "_persist",
                 "_readonly", "_shape", "_strides", "_dtype", "_typestr", "_needs_view", "_meta", "address",
                 "_data_size", "_raw", "_fd", "_dev", "_ino", "_content", "_own", "_map", "__weakref__")
    _lib = lib  # kept reachable for the handles' finalizers at interpreter exit
    address: int  # the data's first byte in this process
    _handle: Any  # the ndshm_segment_t * (closed by its finalizer)
    _info: Any  # the ndshm_segment_info_t *, read on demand (None until then)
    _name: Optional[str]
    _kind: str
    _dir: Optional[str]
    _path: Optional[str]
    _closed: bool
    _creator: bool
    _persist: bool
    _readonly: bool
    _shape: tuple[int, ...]
    _strides: tuple[int, ...]
    _dtype: np.dtype[Any]
    _typestr: str
    _needs_view: bool  # the typestr alone does not give the dtype: views go through .view(dtype)
    _meta: Any  # the encoded metadata, None (raw), or _UNREAD
    _data_size: int
    _raw: bool
    _fd: int
    _dev: int
    _ino: int
    _content: Optional[str]  # 'queue', 'broadcast', 'sync', 'pool', or None for an array
    _own: _ownership.OwnerState  # who removes the name: read and changed by _ownership only
    _map: _mappings.MapState  # what the mapping cache knows of this object: _mappings's only

    def __init__(self) -> None:  # pragma: no cover - use the classmethods
        raise TypeError("use Segment.create(), Segment.attach() or Segment.from_fd()")

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def _wrap(cls, handle: Any, name: Optional[str], kind: str, dir: Optional[str], path: Optional[str],
              raw: bool = False) -> "Segment":
        """A Segment owning ``handle`` (closed by the garbage collector if anything here fails).
        One C call describes it (ndshm_segment_summary); the 9 KB info struct with descr, meta
        and creator is read only when one of those is asked for."""
        scratch = _scratch
        buf, tsbuf = scratch.summary, scratch.typestr
        n = _seg_summary(handle, buf, _SUM_MAX, tsbuf)
        if n < 0:
            _close(handle)
            check(n)
        v = ffi.unpack(buf, n)
        self = object.__new__(cls)
        self._handle = ffi.gc(handle, _close, v[_S_SIZE])
        self._info = None
        self._name = name
        self._kind = kind
        self._dir = dir
        self._path = path
        self._closed = False
        flags = v[_S_FLAGS]
        self._content = (None if not flags & _CONTENT else "queue" if flags & _QUEUE
                         else "broadcast" if flags & _BROADCAST else "pool" if flags & _POOL else "sync")
        self._creator = creator = v[_S_CREATOR] != 0
        self._persist = flags & PERSIST != 0
        self._readonly = flags & _READONLY != 0
        self._raw = raw
        self._fd = v[_S_FD]
        dev, ino, address = v[_S_DEV], v[_S_INO], v[_S_DATA]
        self._dev = dev = dev if dev >= 0 else dev + _ADDR_WRAP
        self._ino = ino = ino if ino >= 0 else ino + _ADDR_WRAP
        # only a creator's close() compares the pid; owner None: not this process's to remove
        self._own = _ownership.OwnerState(os.getpid() if creator else 0, dev, ino)
        self._map = _mappings.MapState(self._handle, dev, ino)
        self.address = address if address >= 0 else address + _ADDR_WRAP
        self._data_size = size = v[_S_SIZE]
        if raw:
            self._dtype = np.dtype(np.uint8)
            self._typestr, self._needs_view = "|u1", False
            self._shape = (size,)
            self._strides = (1,)
            self._meta = None
        else:
            ndim, itemsize, descr_len = v[_S_NDIM], v[_S_ITEMSIZE], v[_S_DESCR_LEN]
            entry = None if descr_len else DTYPES.get((ffi.string(tsbuf), b""))
            if entry is None or entry[0].itemsize != itemsize:
                descr = b""
                if descr_len:
                    info = self._full_info()
                    descr = ffi.unpack(info.descr, info.descr_len)
                entry = lookup_dtype(ffi.string(tsbuf), descr, itemsize, name or path or kind)
            self._dtype, self._typestr, self._needs_view = entry
            self._shape = tuple(v[_SUM_FIXED:_SUM_FIXED + ndim])
            self._strides = tuple(v[_SUM_FIXED + ndim:_SUM_FIXED + 2 * ndim])
            self._meta = _UNREAD if v[_S_META_LEN] else b""
        return self

    def _full_info(self) -> Any:
        """The handle's whole ndshm_segment_info_t (read once, on demand)."""
        info = self._info
        if info is None:
            info = ffi.new(_INFO_P)
            check(_seg_info(self._handle, info))
            self._info = info
        return info

    @classmethod
    def create(cls, name: Optional[str] = None, shape: Any = (), dtype: Any = np.uint8, order: str = "C", *,
               kind: str = "named", path: Optional[str] = None, dir: Optional[str] = None, fill: Any = None,
               align: Any = 64, persist: bool = False, mode: int = 0o600, hugepages: bool = False,
               populate: bool = False, meta: Any = None, owner: str = "creator", _flags: int = 0) -> "Segment":
        """Create a segment holding one array of ``shape`` and ``dtype`` (zero-filled, or ``fill``).

        ``kind``: 'named' (``name`` in ``dir``; ``name=None`` picks a unique one), 'anonymous'
        (shared with fork()ed children), 'memfd' (share :attr:`fd` with :func:`send_fd`) or 'file'
        (at ``path``).

        Who removes the name (``persist=True``: nobody but :meth:`unlink`): ``owner="creator"``
        (default) when the creator closes or unlinks the segment, leaves its ``with`` block, or
        exits, not when its last view dies; ``owner="views"`` when the creator's last view dies
        (temporaries); ``owner="receiver"`` (named only) hands it to the first process that
        unpickles a reference to it, and the name goes when that process's last view dies or it
        exits. Creating a named segment also removes dead owners' segments in ``dir`` (see
        ``ndshm._ownership``).

        ``hugepages=True`` for a named segment: in ``dir`` (or ``$NDSHM_DIR``) if given, which
        must be a hugetlbfs mount (with pages reserved in /proc/sys/vm/nr_hugepages) or a tmpfs
        mounted with ``huge=always`` or ``huge=within_size``; otherwise in the first such mount
        this process may write to (hugetlbfs preferred when pages are reserved), found in
        /proc/self/mounts. The segment then lives in that directory: :attr:`dir` names it, and
        other processes attach with ``dir=`` (arrays pickle with it). With no such mount,
        NotSupportedError names /proc/sys/vm/nr_hugepages."""
        c = create_params(name, shape, dtype, order, kind, path, dir, align, persist, mode, hugepages, populate, meta,
                          owner, _flags)
        name, dir, path, where, owner, persist = c.name, c.dir, c.path, c.where, c.owner, c.persist
        out = ffi.new(_SEG_PP)
        rc = lib.ndshm_segment_create(c.params, out)
        if rc:
            raise error_from_code(rc, where)
        self = cls._wrap(out[0], name, kind, dir, path)
        if kind in ("named", "file"):
            self._path = where
            if not persist:
                _ownership.start(self, self._own, self._handle, owner)
            if kind == "named":
                assert dir is not None and name is not None  # set above for named segments
                key = cache_key(dir, name)
                with _mappings.lock:
                    _mappings.remember(key, self, self._map)
                    if owner != "views":  # the creator's mapping is kept for reuse too, within the limits
                        _mappings.keep(key, self, self._map, self._snapshot, self._own.owner, fresh=False)
                _ownership.sweep(dir)
                _mappings.drop_removed()
        if fill is not None:
            try:
                self.asarray()[...] = fill
            except BaseException:  # a bad fill: the new segment goes, persistent or not
                if kind in ("named", "file"):
                    lib.ndshm_segment_unlink(self._handle)
                self.close()
                raise
        return self

    def _snapshot(self) -> tuple[dict[str, Any], _ownership.OwnerState]:
        """What the mapping cache keeps to hand this mapping out again (see :meth:`_revived`): the
        plain slots (read from the class, so a new slot is never forgotten) and the owner state."""
        return {a: getattr(self, a) for a in _PLAIN_SLOTS}, self._own

    @classmethod
    def _revived(cls, snapshot: tuple[dict[str, Any], _ownership.OwnerState],
                 owner: Optional[str]) -> tuple["Segment", _mappings.MapState]:
        """A new Segment object over a kept mapping (``snapshot``), owned as ``owner`` says (the
        cache's record: a hand-over since the snapshot changed it), with its own MapState."""
        slots, own = snapshot
        self = object.__new__(cls)
        for attr, value in slots.items():
            setattr(self, attr, value)
        self._own = _ownership.OwnerState(own.pid, own.dev, own.ino, owner)
        self._map = ms = _mappings.MapState(self._handle, self._dev, self._ino)
        return self, ms

    def _same_file(self, dev: int, ino: Optional[int]) -> bool:
        return self._dev == dev and self._ino == ino

    @classmethod
    def attach(cls, name: str, *, readonly: bool = False, dir: Optional[str] = None,
               populate: bool = False) -> "Segment":
        """Map the named segment ``name`` (in ``dir``); a mapping this process holds already is reused."""
        # ``__class__ is`` guards: the exact types skip the checks (bench row "Attach latency: ndshm (mapping kept: the default)")
        if name.__class__ is not str and not isinstance(name, str):
            raise TypeError(f"segment name {name!r} is not a str")
        if readonly.__class__ is not bool:
            readonly = _dtype.as_flag(readonly, "readonly")
        if populate.__class__ is not bool:
            populate = _dtype.as_flag(populate, "populate")
        if not dir:
            dir = env_dir()
        elif dir.__class__ is not str:
            dir = os.fspath(dir)
        real = REALDIRS.get(dir)
        key = (real, name) if real is not None else cache_key(dir, name)
        with _mappings.lock:
            ref = _live.get(key)
            if ref is not None:  # the mapping this process holds, if its name still leads to that file
                seg = ref()
                if seg is not None and not seg._closed and (readonly or not seg._readonly):
                    try:
                        st = os.stat(seg._path)  # type: ignore[arg-type]  # cached mappings are named: a path
                    except OSError:
                        st = None
                    if st is not None and seg._dev == st.st_dev and seg._ino == st.st_ino:
                        seg._map.hot = True  # for the cache's eviction (second chance)
                        return seg
            if _mappings.kept:  # an idle kept mapping (no Segment object uses it): hand it out again
                seg = _mappings.revive(key, f"{dir}/{PREFIX}{name}", readonly, cls._revived)
                if seg is not None:
                    return seg
            nb = _NAMEBYTES.get(name) or _name_bytes(name)
            db = _DIRBYTES.get(dir) or _dir_bytes(dir)
            out = _scratch.out
            rc = _seg_attach(_NAMED, nb, db, (_READONLY if readonly else 0) | (_POPULATE if populate else 0), out)
            path = f"{dir}/{PREFIX}{name}"
            if rc:  # (again if a signal ended its wait for the segment's lock, once Python ran the handlers)
                rc = retry_interrupted(rc, _seg_attach, _NAMED, nb, db,
                                       (_READONLY if readonly else 0) | (_POPULATE if populate else 0), out)
            if rc:
                raise error_from_code(rc, path)
            seg = cls._wrap(out[0], name, "named", dir, path)
            # Reached only when no usable mapping of this very file is cached: replace the entry,
            # and keep the mapping after the last view dies (the next task's attach reuses it).
            _mappings.remember(key, seg, seg._map)
            _mappings.keep(key, seg, seg._map, seg._snapshot, seg._own.owner)
        _mappings.drop_removed()
        return seg

    @classmethod
    def open_file(cls, path: str, *, readonly: bool = False, populate: bool = False) -> "Segment":
        """Map the file-backed segment at ``path``."""
        readonly, populate = _dtype.as_flag(readonly, "readonly"), _dtype.as_flag(populate, "populate")
        path = os.path.abspath(os.fspath(path))
        out = ffi.new(_SEG_PP)
        fl = (_READONLY if readonly else 0) | (_POPULATE if populate else 0)
        rc = lib.ndshm_segment_attach(lib.NDSHM_KIND_FILE, cstr(path), ffi.NULL, fl, out)
        if rc:
            rc = retry_interrupted(rc, lib.ndshm_segment_attach, lib.NDSHM_KIND_FILE, cstr(path), ffi.NULL, fl, out)
        if rc:
            raise error_from_code(rc, path)
        return cls._wrap(out[0], None, "file", None, path)

    @classmethod
    def from_fd(cls, fd: int, *, readonly: bool = False) -> "Segment":
        """Map the memfd segment behind descriptor ``fd`` (the caller still owns ``fd``)."""
        fd = _dtype.as_int(fd, "file descriptor", 0, 2**31 - 1)
        readonly = _dtype.as_flag(readonly, "readonly")
        out = ffi.new(_SEG_PP)
        rc = lib.ndshm_segment_attach_fd(fd, _READONLY if readonly else 0, out)
        if rc:
            rc = retry_interrupted(rc, lib.ndshm_segment_attach_fd, fd, _READONLY if readonly else 0, out)
        if rc:
            raise error_from_code(rc)
        return cls._wrap(out[0], None, "memfd", None, None)

    # ---- properties ------------------------------------------------------------------------

    @property
    def name(self) -> Optional[str]:
        """The segment's name (named segments), else None."""
        return self._name

    @property
    def kind(self) -> str:
        """'named', 'anonymous', 'memfd' or 'file'."""
        return self._kind

    @property
    def dir(self) -> Optional[str]:
        """The directory of a named segment."""
        return self._dir

    @property
    def path(self) -> Optional[str]:
        """The backing file (named and file segments)."""
        return self._path

    @property
    def fd(self) -> int:
        """The handle's descriptor (-1 for anonymous segments)."""
        return self._fd

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the array the segment holds."""
        return self._shape

    @property
    def strides(self) -> tuple[int, ...]:
        """Byte strides of that array."""
        return self._strides

    @property
    def dtype(self) -> np.dtype[Any]:
        """Dtype of that array."""
        return self._dtype

    @property
    def nbytes(self) -> int:
        """Bytes of data."""
        return self._data_size

    @property
    def readonly(self) -> bool:
        """True for a read-only mapping."""
        return self._readonly

    @property
    def closed(self) -> bool:
        """True once close() was called."""
        return self._closed

    @property
    def creator(self) -> bool:
        """True if this process created the segment."""
        return self._creator

    @property
    def persist(self) -> bool:
        """True if the name outlives its creator."""
        return self._persist

    @property
    def owner(self) -> Optional[str]:
        """Who removes the name, as this process sees it: 'creator' (this process, at close,
        unlink or exit), 'views' (with this process's last view), 'receiver' (to be handed to
        whoever unpickles it), 'handed' (handed over: no longer this process's), 'received' (this
        process took it over), or None (not this process's to remove)."""
        return self._own.owner

    @property
    def meta(self) -> Any:
        """The user metadata given at creation (bytes, a JSON value, or None)."""
        raw = self._meta
        if raw is _UNREAD:
            info = self._full_info()
            self._meta = raw = ffi.buffer(info.meta, info.meta_len)[:]
        return decode_meta(raw, self._name or self._path) if raw is not None else None

    @property
    def creator_pid(self) -> int:
        """The process id of the segment's creator, in the creator's PID namespace."""
        return int(self._full_info().creator_pid)

    @property
    def created(self) -> _dt.datetime:
        """When the segment was created (UTC)."""
        return _dt.datetime.fromtimestamp(self._full_info().created_ns / 1e9, tz=_dt.timezone.utc)

    # ---- views -----------------------------------------------------------------------------

    def _refuse_content(self) -> None:
        what = self._name or self._path
        if self._content == "queue":
            raise TypeError(f"segment {what!r} holds an ndshm queue, not an array: use ndshm.Queue.attach({what!r})")
        if self._content == "broadcast":
            raise TypeError(f"segment {what!r} holds an ndshm broadcast ring, not an array: use "
                            f"ndshm.Broadcast.attach({what!r})")
        if self._content == "pool":
            raise TypeError(f"segment {what!r} holds an ndshm pool, not an array: use ndshm.Pool.attach({what!r})")
        raise TypeError(f"segment {what!r} holds a standalone ndshm Lock, Event or Barrier, not an array: use "
                        f"ndshm.Lock(name, create=False) (or Event, Barrier)")

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"segment {self._name or self._path or self._kind} is closed")

    def asarray(self, readonly: bool = False) -> NDArray[Any]:
        """The array the segment describes (zero-copy; a :class:`SharedArray`); ``readonly`` gives
        a view that cannot write even if the mapping can."""
        self._check_open()
        readonly = _dtype.as_flag(readonly, "readonly")
        if self._content:
            self._refuse_content()
        return self._view(0, self._shape, self._dtype, self._strides, readonly, True)

    @property
    def __array_interface__(self) -> dict[str, Any]:
        """The whole array, for ``np.asarray(segment)`` (a plain ndarray whose base is the segment)."""
        if self._closed:
            self._check_open()
        return {"version": 3, "data": (self.address, self._readonly), "shape": self._shape,
                "typestr": self._typestr, "strides": self._strides}

    def _view(self, offset: int, shape: tuple[int, ...], dt: np.dtype[Any], strides: tuple[int, ...], readonly: bool,
              whole: bool = False) -> NDArray[Any]:
        """A view at ``offset``; ``whole`` marks the segment's own layout, which C validated already."""
        if self._closed:
            self._check_open()
        if whole:
            if readonly and not self._readonly:
                arr = np.asarray(_View(self, {"version": 3, "data": (self.address, True), "shape": shape,
                                              "typestr": self._typestr, "strides": strides}))
            else:
                arr = np.asarray(self)  # its __array_interface__: one object fewer per view
            if self._needs_view:
                arr = arr.view(dt)
            return arr.view(SharedArray)
        lo, hi = _dtype.byte_span(shape, strides, dt.itemsize)
        if (lo != hi) and (offset + lo < 0 or offset + hi > self._data_size):
            raise ValueError(f"a view at offset {offset} with shape {shape} and strides {strides} reaches "
                             f"outside the segment's {self._data_size} bytes")
        if dt.hasobject:
            raise TypeError(f"dtype {dt} holds Python objects")
        iface = {"version": 3, "data": (self.address + offset, bool(readonly or self._readonly)),
                 "shape": shape, "typestr": _dtype.typestr_of(dt), "strides": strides}
        arr = np.asarray(_View(self, iface))
        if dt.names is not None or arr.dtype != dt:
            arr = arr.view(dt)
        return arr.view(SharedArray)

    def sync_address(self, index: int) -> int:
        """Address of the header's sync slot ``index`` (64 zero-initialised bytes)."""
        self._check_open()
        index = _dtype.as_int(index, "sync slot index", 0, 2**31 - 1)
        out = ffi.new("void **")
        check(lib.ndshm_segment_sync(self._handle, index, out))
        return int(ffi.cast("uintptr_t", out[0]))

    # The sync room sits above this one (its standalone objects are Segments): these three hand out
    # its objects, the package's one upward import (tests/house/test_layers.py ALLOWED_UPWARD): two
    # public classes that name each other (Segment.lock is a Lock, Lock() makes a Segment).
    @property
    def lock(self) -> Lock:
        """The segment's own Lock (in its header's sync slot 0)."""
        from ._sync import lock_in
        return lock_in(self, 0)

    @property
    def event(self) -> Event:
        """The segment's own Event (in its header's sync slot 1)."""
        from ._sync import event_in
        return event_in(self, 1)

    def barrier(self, parties: int) -> Barrier:
        """The segment's own Barrier for ``parties`` processes (in its header's sync slot 2)."""
        from ._sync import barrier_in
        return barrier_in(self, 2, parties)

    # ---- lifetime --------------------------------------------------------------------------

    def unlink(self) -> None:
        """Remove the segment's name now (mappings stay valid). Ownership ends with it."""
        if self._kind not in ("named", "file") or self._raw:
            raise ValueError(f"a {self._kind} segment has no name to remove")
        check(lib.ndshm_segment_unlink(self._handle), self._path)
        _ownership.end(self, self._own)
        _mappings.unkeep(self._map)

    def close(self) -> None:
        """End this segment's use: no new views; a creator's non-persistent segment loses its name.
        The mapping is released when the last view of it is gone."""
        if self._closed:
            return
        self._closed = True
        _mappings.release(self, self._map)
        if self._kind in ("named", "file") and not self._raw and _ownership.removes_at_close(self, self._own):
            rc = lib.ndshm_segment_unlink(self._handle)
            if rc and rc != lib.NDSHM_ENOENT:
                raise error_from_code(rc, self._path)
        _ownership.end(self, self._own)

    def __enter__(self) -> "Segment":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Callable[..., Segment], tuple[Optional[str], Optional[str], bool, bool]]:
        if self._kind != "named" or self._raw:
            raise TypeError(f"a {self._kind} segment cannot be pickled; pickle its arrays or pass its fd")
        return (_attach_segment, (self._name, self._dir, self._readonly, hand_over_once(self)))

    def __repr__(self) -> str:
        state = "closed " if self._closed else ""
        what = self._name or self._path or ""
        return (f"<ndshm.Segment {state}{self._kind} {what!r} shape={self._shape} dtype={self._dtype} "
                f"{self._data_size} bytes{' readonly' if self._readonly else ''}>")


def _attach_segment(name: str, dir: str, readonly: bool, claim: bool = False) -> Segment:
    seg = Segment.attach(name, readonly=readonly, dir=dir)
    if claim:
        _claim(seg)
    return seg


def segment_of(arr: Any) -> Segment:
    """The :class:`Segment` an array (or any view of it) lives in; ValueError if none."""
    seg = owner_of(arr)
    if not isinstance(seg, Segment):
        raise ValueError("the array does not live in an ndshm segment")
    return seg


# ---- for the package's other rooms (module API, fd passing, sync, engines) ------------------

def map_raw(path: str, readonly: bool) -> Segment:
    """A Segment over headerless file ``path`` (see ``ndshm.attach_raw``): raw bytes, no name owned."""
    out = ffi.new(_SEG_PP)
    rc = lib.ndshm_segment_attach_raw(cstr(path), _READONLY if readonly else 0, out)
    if rc:
        rc = retry_interrupted(rc, lib.ndshm_segment_attach_raw, cstr(path), _READONLY if readonly else 0, out)
    if rc:
        raise error_from_code(rc, path)
    return Segment._wrap(out[0], None, "file", None, path, True)


def view(seg: Segment, offset: int, shape: tuple[int, ...], dt: np.dtype[Any], strides: tuple[int, ...],
         readonly: bool) -> NDArray[Any]:
    """A SharedArray view of ``seg`` at byte ``offset``, bounds-checked against its data."""
    return seg._view(offset, shape, dt, strides, readonly)


def unlink_name(name: str, dir: Optional[str]) -> None:
    """Remove named segment ``name`` in ``dir``; if this process maps that very file, its
    ownership of the name ends and the mapping is no longer kept for the name's sake."""
    d = default_dir(dir)
    with _mappings.lock:
        ref = _live.get(cache_key(d, name))
    seg = ref() if ref is not None else None
    path = os.path.join(d, PREFIX + name)
    st = None
    if seg is not None:
        try:
            st = os.lstat(path)
        except OSError:
            pass
    check(lib.ndshm_unlink(cstr(name), cstr(dir)), path)
    if seg is not None and st is not None and seg._same_file(st.st_dev, st.st_ino):
        _ownership.end(seg, seg._own)
        _mappings.unkeep(seg._map)


def file_identity(seg: Segment) -> tuple[int, int]:
    """(device, inode) of ``seg``'s backing file."""
    return seg._dev, seg._ino


def hand_over_once(seg: Segment) -> bool:
    """A reference to ``seg`` is leaving this process (pickled, or ``ndshm.reference``): True if
    it carries the hand-over (created with owner="receiver"); the first one ends this process's
    ownership, and a mapping the cache hands out again says so too."""
    own = seg._own
    was = own.owner
    handed = _ownership.hand_over_once(seg, own, seg._handle)
    if was != own.owner:
        _mappings.note_owner(seg._map, own.owner)
    return handed


def give_up(seg: Segment) -> None:
    """Make ``seg`` owned by no process (see ``_ownership.give_up``: ndshm.dask's node-owned arrays)."""
    _ownership.give_up(seg, seg._own, seg._handle)


def sync_segment(name: Optional[str], dir: Optional[str], create: bool) -> Segment:
    """The segment of a standalone Lock, Event or Barrier: a new one (flagged NDSHM_SEG_SYNC, owned
    by its creator like any other) or the existing one named ``name``."""
    if create:
        return Segment.create(name, shape=(0,), dtype=np.uint8, dir=dir, _flags=_SYNC)
    if name is None:
        raise ValueError("attaching needs a name")
    return Segment.attach(name, dir=dir)


# Segment's slots the mapping cache's snapshot copies (the owner and cache states are per object)
_PLAIN_SLOTS = tuple(a for a in Segment.__slots__ if a not in ("_own", "_map", "__weakref__"))

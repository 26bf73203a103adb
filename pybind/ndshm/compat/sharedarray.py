"""The `SharedArray <https://pypi.org/project/SharedArray/>`_ package's API on ndshm:
``import ndshm.compat.sharedarray as SharedArray`` and keep the rest of the code.

It reads and writes SharedArray's own segments, so either package attaches the other's: a plain
file (``/dev/shm/<name>`` for ``shm://name`` or a bare name, any path for ``file://path``) holding
the array's bytes, followed by SharedArray's metadata at the end of the file::

    char    magic[16]    "[SharedArray]", NUL-padded
    size_t  size         bytes of array data (the data starts at offset 0)
    int     typenum      NumPy's type number (so only the kind of dtype: no byte order, no fields,
    int     itemsize                           no datetime unit)
    int     ndims
    intp    dims[64]     (NPY_MAXDIMS of the NumPy it was built with: 64, or 32 before NumPy 2)

All of it native-endian and packed: 548 bytes (292 with 32 dims; both are read, 548 is written).

Like SharedArray: ``create`` returns zeros; the arrays are plain ``ndarray``\\ s whose ``.base``
has ``msync(flags)``, ``mlock()``, ``munlock()``, ``name``, ``addr`` and ``size``; segments
persist until :func:`delete`; files are made with mode ``0o666`` less the umask; ``list()`` is a
tuple of ``ArrayDesc(name: bytes, dtype: scalar type, dims: tuple)``. Unlike it:

* the space is reserved at creation, so a full ``/dev/shm`` raises ``OSError(ENOSPC)`` instead of
  a SIGBUS later; negative dimensions raise ``ValueError`` (SharedArray crashes);
* metadata is never trusted: a file whose metadata does not match its size raises
  :class:`ndshm.CorruptSegmentError` (a ``ValueError``) instead of mapping past the file's end;
* dtypes holding Python objects, and datetimes with a unit (the format keeps none), raise
  ``TypeError`` at ``create`` instead of making arrays that cannot be shared or read back;
* every process mapping a segment holds a shared ``flock`` on it, as for ndshm's own segments;
* it needs no compiler and runs on PyPy.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import sys
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

import numpy as np

from .._dirs import READ_FLAGS
from .._dtype import as_dtype, as_shape, nbytes_of
from .._errors import CorruptSegmentError
from .._segment import Segment, map_raw
from .._compat_blocks import SHM_DIR, bare_name, new_file

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from numpy.typing import DTypeLike, NDArray

    from .._dtype import ShapeLike

__all__ = ["create", "attach", "delete", "list", "ArrayDesc", "MS_ASYNC", "MS_SYNC", "MS_INVALIDATE"]

# msync(2) flags (Linux values), as the SharedArray package exports them.
MS_ASYNC = 1  #: msync(2) ``MS_ASYNC``: schedule the write-back and return.
MS_INVALIDATE = 2  #: msync(2) ``MS_INVALIDATE``: invalidate other mappings of the same file.
MS_SYNC = 4  #: msync(2) ``MS_SYNC``: write back and wait for it.

_MAGIC = b"[SharedArray]\0"
_HEAD = struct.Struct("=16sQiii")          # magic, size, typenum, itemsize, ndims (packed)
_META_SIZES = (_HEAD.size + 64 * 8, _HEAD.size + 32 * 8)   # 548 (written), 292 (older builds)
_MAX_DIMS = 64
_FILE, _SHM = "file://", "shm://"

# NumPy type number -> dtype, for the fixed-size kinds; the flexible ones take their itemsize.
_BY_TYPENUM: dict[int, np.dtype[Any]] = {np.dtype(c).num: np.dtype(c) for c in np.typecodes["All"]
                                         if np.dtype(c).itemsize}
_FLEXIBLE: dict[int, str] = {np.dtype("S").num: "S", np.dtype("U").num: "U", np.dtype("V").num: "V"}
_OBJECT = np.dtype(object).num


class ArrayDesc(NamedTuple):
    """One entry of :func:`list`: SharedArray's ``ArrayDesc`` struct sequence."""
    name: bytes
    dtype: type[np.generic]
    dims: tuple[int, ...]


SharedArray = ArrayDesc  # the package exports its ArrayDesc type under this name too


def _path(name: str) -> str:
    """The file behind a SharedArray name: ``file://path``, ``shm://name`` or a bare shm name."""
    if not isinstance(name, str):
        raise TypeError(f"SharedArray name {name!r} is not a str")
    if name.startswith(_FILE):
        return name[len(_FILE):]
    bare = name[len(_SHM):] if name.startswith(_SHM) else name
    if "://" in bare and not name.startswith(_SHM):
        raise OSError(22, os.strerror(22), name)
    try:
        return os.path.join(SHM_DIR, bare_name(bare, name))
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, name) from None


def _dtype_of(typenum: int, itemsize: int) -> Optional[np.dtype[Any]]:
    """The dtype SharedArray's reader makes of (typenum, itemsize); None if it names none."""
    kind = _FLEXIBLE.get(typenum)
    if kind is not None:
        if itemsize <= 0 or (kind == "U" and itemsize % 4):
            return None
        return np.dtype(f"{kind}{itemsize // 4 if kind == 'U' else itemsize}")
    dt = _BY_TYPENUM.get(typenum)
    if dt is None or typenum == _OBJECT or dt.itemsize != itemsize:
        return None
    return dt


class _Meta(NamedTuple):
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    nbytes: int


def _read_meta(fd: int, name: str, file_size: int) -> _Meta:
    """Find and check SharedArray's metadata at the end of the open file ``fd``."""
    for meta_size in _META_SIZES:
        if file_size < meta_size:
            continue
        raw = os.pread(fd, meta_size, file_size - meta_size)
        if len(raw) != meta_size or raw[:len(_MAGIC)] != _MAGIC:
            continue
        _, size, typenum, itemsize, ndims = _HEAD.unpack_from(raw)
        if not 0 <= ndims <= (meta_size - _HEAD.size) // 8:
            raise CorruptSegmentError(f"SharedArray {name!r} says it has {ndims} dimensions")
        shape = struct.unpack_from(f"={ndims}q", raw, _HEAD.size)
        dt = _dtype_of(typenum, itemsize)
        if dt is None:
            raise CorruptSegmentError(f"SharedArray {name!r} has NumPy type number {typenum} with "
                                      f"itemsize {itemsize}, which names no dtype that can be shared")
        if any(d < 0 for d in shape):
            raise CorruptSegmentError(f"SharedArray {name!r} has a negative dimension in {shape}")
        nbytes = reach = itemsize
        for d in shape:
            nbytes *= d
            reach *= d or 1  # NumPy counts the bytes of the dimensions that are not 0 too
        if reach > sys.maxsize:
            raise CorruptSegmentError(f"SharedArray {name!r} has shape {shape}, too large for an array of {dt}")
        if nbytes != size or nbytes > file_size - meta_size:
            raise CorruptSegmentError(f"SharedArray {name!r}: shape {shape} of {dt} needs {nbytes} bytes, "
                                      f"its metadata says {size} and its file holds {file_size - meta_size}")
        return _Meta(dt, shape, nbytes)
    raise OSError("No SharedArray at this address")


def _meta_bytes(dt: np.dtype[Any], shape: tuple[int, ...], nbytes: int) -> bytes:
    head = _HEAD.pack(_MAGIC, nbytes, dt.num, dt.itemsize, len(shape))
    return head + struct.pack(f"={_MAX_DIMS}q", *shape, *([0] * (_MAX_DIMS - len(shape))))


# ---- the array's base object --------------------------------------------------------------------

_libc: Any = None


def _call(fn: str, *args: Any) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        for f in ("msync", "mlock", "munlock"):
            getattr(_libc, f).restype = ctypes.c_int
    if getattr(_libc, fn)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{fn}: {os.strerror(err)}")


class MapOwner:
    """The ``.base`` of every array this module returns: keeps the mapping alive, and offers
    SharedArray's ``msync``, ``mlock``, ``munlock``, ``name``, ``addr`` and ``size``."""

    __slots__ = ("name", "addr", "size", "_seg", "_iface", "__weakref__")
    name: str  #: The name the array was created or attached with.
    addr: int  #: The mapping's address.
    size: int  #: The mapping's size in bytes.
    _seg: Segment
    _iface: dict[str, Any]

    def __init__(self, name: str, seg: Segment, dt: np.dtype[Any], shape: tuple[int, ...], readonly: bool) -> None:
        self.name = name
        self._seg = seg
        self.addr = int(seg.address)
        self.size = int(seg.nbytes)
        self._iface = {"version": 3, "data": (self.addr, readonly), "shape": shape, "typestr": dt.str}

    @property
    def __array_interface__(self) -> dict[str, Any]:
        return self._iface

    def msync(self, flags: int) -> None:
        """``msync(2)`` of the whole mapping (``MS_ASYNC``, ``MS_SYNC``, ``MS_INVALIDATE``)."""
        if isinstance(flags, bool) or not isinstance(flags, int):
            raise TypeError(f"msync flags {flags!r} is not an int")
        _call("msync", ctypes.c_void_p(self.addr), ctypes.c_size_t(self.size), ctypes.c_int(flags))

    def mlock(self) -> None:
        """``mlock(2)``: keep the mapping in RAM (``OSError`` when ``RLIMIT_MEMLOCK`` refuses)."""
        _call("mlock", ctypes.c_void_p(self.addr), ctypes.c_size_t(self.size))

    def munlock(self) -> None:
        """``munlock(2)``: let the mapping be paged out again."""
        _call("munlock", ctypes.c_void_p(self.addr), ctypes.c_size_t(self.size))

    def __repr__(self) -> str:
        return f"<ndshm.compat.sharedarray.MapOwner {self.name!r}, {self.size} bytes at {self.addr:#x}>"


def _array(name: str, path: str, ro: bool, meta: Optional[_Meta] = None) -> NDArray[Any]:
    try:
        seg = map_raw(path, ro)
    except FileNotFoundError as exc:
        code = exc.errno or errno.ENOENT
        raise FileNotFoundError(code, os.strerror(code), name) from None
    except PermissionError as exc:
        code = exc.errno or errno.EACCES
        raise PermissionError(code, os.strerror(code), name) from None
    try:
        if meta is None:
            meta = _read_meta(seg.fd, name, int(seg.nbytes))
        return np.asarray(MapOwner(name, seg, meta.dtype, meta.shape, ro))
    except BaseException:
        seg.close()
        raise


# ---- the API ------------------------------------------------------------------------------------

def create(name: str, shape: ShapeLike, dtype: DTypeLike = float) -> NDArray[Any]:
    """A new array of zeros in segment ``name`` (``shm://name``, ``file://path`` or a bare shm
    name); ``FileExistsError`` if it exists. ``shape`` and ``dtype`` as for ``numpy.zeros``."""
    path = _path(name)
    dims = as_shape(shape)
    dt = as_dtype(dtype)
    if dt.itemsize == 0:
        raise ValueError("unsupported data type has element size of 0!")
    if dt.kind in "mM" and np.datetime_data(dt)[0] != "generic":
        raise TypeError(f"dtype {dt} has a unit, which a SharedArray segment cannot record")
    described = _dtype_of(dt.num, dt.itemsize)  # what the metadata can say: no byte order or fields
    if described is None:
        raise TypeError(f"dtype {dt} cannot be described by a SharedArray segment's metadata")
    dt = described
    nbytes = nbytes_of(dims, dt)
    meta = _meta_bytes(dt, dims, nbytes)
    try:
        fd = new_file(path, nbytes + len(meta), 0o666)
    except OSError as exc:
        raise type(exc)(exc.errno, exc.strerror, name) from None
    try:
        os.pwrite(fd, meta, nbytes)
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
    try:
        return _array(name, path, False, _Meta(dt, dims, nbytes))
    except BaseException:
        os.unlink(path)
        raise


def attach(name: str, ro: bool = False) -> NDArray[Any]:
    """The array in the existing segment ``name``; ``ro=True`` maps it read-only."""
    return _array(name, _path(name), bool(ro))


def delete(name: str) -> None:
    """Remove segment ``name``: it can no longer be attached, arrays attached already stay valid."""
    path = _path(name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise type(exc)(exc.errno, exc.strerror, name) from None
    try:
        _read_meta(fd, name, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    try:
        os.unlink(path)
    except OSError as exc:
        raise type(exc)(exc.errno, exc.strerror, name) from None


def list() -> tuple[ArrayDesc, ...]:  # noqa: A001 - SharedArray's name
    """Every SharedArray segment in ``/dev/shm``: a tuple of ``ArrayDesc(name, dtype, dims)``."""
    out = []
    try:
        entries = os.scandir(SHM_DIR)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, SHM_DIR) from None
    with entries:
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                fd = os.open(entry.path, READ_FLAGS)
            except OSError:
                continue
            try:
                meta = _read_meta(fd, entry.name, os.fstat(fd).st_size)
            except (OSError, ValueError):
                continue
            finally:
                os.close(fd)
            out.append(ArrayDesc(os.fsencode(entry.name), meta.dtype.type, meta.shape))
    return tuple(out)

"""``multiprocessing.shared_memory`` (``SharedMemory``, ``ShareableList``) with the same API and the
same blocks, minus its traps.

Blocks live where the standard library puts them (``/dev/shm/<name>``, no header), so a block
created by either module attaches in the other, and a :class:`ShareableList` made by either reads
in the other (the same binary layout). Differences, all deliberate:

* no resource tracker: a block is removed only by :meth:`SharedMemory.unlink` (the standard
  library's tracker unlinks blocks that other processes still use). A block ndshm created is
  marked as such (see :mod:`ndshm._compat_blocks`); once its creator is dead and no ndshm process maps
  it, ``python -m ndshm gc`` may remove it, as the stdlib's tracker would have at the creator's exit;
* the space is reserved at creation (``posix_fallocate``): a full ``/dev/shm`` raises
  ``OSError(ENOSPC)`` here instead of SIGBUS later;
* :meth:`SharedMemory.close` never raises ``BufferError`` while NumPy arrays or memoryviews of
  ``buf`` exist: the mapping lives until the last of them is gone (numpy/numpy#23305);
* a :class:`ShareableList` attached by name checks the block's layout, so a foreign or corrupt
  block raises ``ValueError`` instead of reading garbage;
* it needs no ``_posixshmem`` (some PyPy builds lack it).

Liveness: every ndshm process that maps a block holds a shared ``flock`` on it (as for ndshm's own
segments), so "does any ndshm process still map it?" has a true answer after ``kill -9``.
Processes using the standard library's class take no lock: a block only they still use is not
protected from ``gc`` once its ndshm creator is dead.
"""

from __future__ import annotations

import os
import secrets
import struct
import types
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterable, Iterator, Optional, TypeVar, cast, overload

import numpy as np

from .._dtype import as_int
from .._segment import Segment, map_raw, view
from .. import _compat_blocks as _marks
from .._compat_blocks import PREFIX, bare_name, mark_block, new_file, unmark_block

__all__ = ["SharedMemory", "ShareableList", "ShareableListTypeError", "SHM_DIR"]

#: Where the standard library's blocks live, and so this drop-in's (POSIX shared memory on Linux);
#: tests point it elsewhere.
SHM_DIR = _marks.SHM_DIR


# ---- SharedMemory -------------------------------------------------------------------------------

class SharedMemory:
    """Create (``create=True``) or attach to a shared-memory block ``name`` of ``size`` bytes.

    As in the standard library: ``name`` is kept as given (``"/x"`` stays ``"/x"``), names glibc's
    ``shm_open`` refuses (``""``, ``"/"``, ``"a/b"``) raise ``OSError(EINVAL)``, ``size`` is the
    block's size as an ``int``, and a subclass may set ``_mode`` (the new block's permissions) and
    ``_prepend_leading_slash``. ``track`` (Python 3.13's argument) is accepted: there is no tracker."""

    _name: Optional[str] = None
    _buf: Optional[memoryview] = None
    _seg: Optional[Segment] = None
    _mode = 0o600
    _prepend_leading_slash = True

    def __init__(self, name: Optional[str] = None, create: bool = False, size: int = 0, *, track: bool = True):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"shared memory name {name!r} is not a str")
        if not size >= 0:
            raise ValueError("'size' must be a positive integer")
        if create:
            if size == 0:
                raise ValueError("'size' must be a positive number different from zero")
            size = as_int(size, "shared memory size", 1, 2**63 - 1)
        elif name is None:
            raise ValueError("'name' can only be None if create=True")
        d = SHM_DIR
        if name is None:
            name = self._create_unique(d, size)
        else:
            name = "/" + name if self._prepend_leading_slash else name
            if create:
                self._create(d, name, size)
        path = os.path.join(d, bare_name(name, name))
        try:
            self._seg = map_raw(path, False)
        except BaseException:
            if create:  # as the stdlib does when its mmap fails
                os.unlink(path)
                unmark_block(d, path.rsplit("/", 1)[1])
            raise
        self._name = name
        self._path = path
        self._size = int(self._seg.nbytes)
        arr = view(self._seg, 0, (self._size,), np.dtype(np.uint8), (1,), False)
        self._buf = arr.data  # memoryview(arr)

    def _create_unique(self, d: str, size: int) -> str:
        while True:
            name = "/" + PREFIX + secrets.token_hex(4)
            try:
                self._create(d, name, size)
            except FileExistsError:
                continue
            return name

    def _create(self, d: str, name: str, size: int) -> None:
        bare = bare_name(name, name)
        path = os.path.join(d, bare)
        fd = new_file(path, size, self._mode)
        try:
            mark_block(fd, d, bare)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)

    @property
    def name(self) -> str:
        """Unique name that identifies the block (as given; one leading slash added here is not shown)."""
        reported = self._name or ""
        if self._prepend_leading_slash and reported.startswith("/"):
            reported = reported[1:]
        return reported

    @property
    def size(self) -> int:
        """Size in bytes."""
        return self._size

    @property
    def buf(self) -> Optional[memoryview]:
        """A memoryview of the block's contents (None after close)."""
        return self._buf

    def close(self) -> None:
        """Close this instance's access. Views of ``buf`` made before stay valid until they die."""
        buf, self._buf = self._buf, None
        if buf is not None:
            try:
                buf.release()
            except BufferError:
                pass  # exported to NumPy or another memoryview: the mapping lives on with them
        seg, self._seg = self._seg, None
        if seg is not None:
            seg.close()

    def unlink(self) -> None:
        """Remove the block's name (once, from any one process)."""
        if self._name:
            bare = bare_name(self._name, self._name)
            d = os.path.dirname(self._path)
            os.unlink(self._path)
            unmark_block(d, bare)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __reduce__(self) -> Any:
        return (self.__class__, (self.name, False, self.size))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.name!r}, size={self.size})"


def block_path(shm: SharedMemory) -> str:
    """The file behind ``shm`` (``ndshm.compat.managers`` records it to unlink that very file)."""
    return shm._path


# ---- ShareableList ------------------------------------------------------------------------------
#
# The block's layout, the standard library's (so either module reads the other's lists):
#   8 bytes               number of items N (int64)
#   (N + 1) * 8 bytes     offset of each item in the data area, and the data area's end (int64)
#   K bytes               the data area: 8 bytes per int/float/bool/None, str and bytes rounded
#                         up to a multiple of 8 with at least one NUL after the encoded value
#   N * 8 bytes           each item's struct format, NUL-padded
#   N bytes               each item's back-transform code (0 as is, 1 str, 2 bytes, 3 None)

_ENCODING = "utf8"
_FIXED_FORMATS = frozenset({"q", "d", "xxxxxxx?", "xxxxxx?x"})
# The types an item can have, as the standard library's type stubs spell them: ShareableList[int].
SLT = TypeVar("SLT", int, float, bool, str, bytes, None)
_MAX_SLOT = 9_999_999  # the longest str/bytes slot whose format ("9999999s") fits its 8 bytes


class ShareableListTypeError(TypeError, KeyError):
    """An item of a type a :class:`ShareableList` cannot hold. A ``TypeError``, and a ``KeyError``
    as the standard library raises there."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ShareableList(Generic[SLT]):
    """A fixed-length list of ``int``, ``float``, ``bool``, ``str``, ``bytes`` and ``None`` values in
    one shared-memory block: ``ShareableList(sequence)`` creates it (``name=`` to choose the block's
    name), ``ShareableList(name=name)`` attaches to an existing one. Items can be replaced (a
    ``str``/``bytes`` item by one that fits its slot), not added or removed; ``shm`` is the
    :class:`SharedMemory` holding it."""

    shm: SharedMemory
    _list_len: int
    _allocated_offsets: list[int]
    _types_mapping: dict[type, str] = {
        int: "q",
        float: "d",
        bool: "xxxxxxx?",
        str: "%ds",
        bytes: "%ds",
        type(None): "xxxxxx?x",
    }
    _alignment = 8
    _back_transforms_mapping: dict[int, Callable[[Any], Any]] = {
        0: lambda value: value,                                      # int, float, bool
        1: lambda value: value.rstrip(b"\x00").decode(_ENCODING),   # str
        2: lambda value: value.rstrip(b"\x00"),                      # bytes
        3: lambda _value: None,                                      # None
    }

    @staticmethod
    def _extract_recreation_code(value: Any) -> int:
        """The back-transform code that turns the stored form of ``value`` into ``value`` again."""
        if isinstance(value, str):
            return 1
        if isinstance(value, bytes):
            return 2
        if value is None:
            return 3
        return 0

    @overload
    def __init__(self, sequence: None = None, *, name: Optional[str] = None) -> None: ...
    @overload
    def __init__(self, sequence: Optional[Iterable[SLT]], *, name: Optional[str] = None) -> None: ...

    def __init__(self, sequence: Optional[Iterable[SLT]] = None, *, name: Optional[str] = None) -> None:
        if name is None or sequence is not None:
            items = list(sequence or ())
            formats = [self._format_of(item, i) for i, item in enumerate(items)]
            self._list_len = len(formats)
            offsets = [0]
            for fmt in formats:
                offsets.append(offsets[-1] + (int(fmt[:-1]) if fmt[-1] == "s" else self._alignment))
            self._allocated_offsets = offsets
            size = struct.calcsize("q" + self._format_size_metainfo + "".join(formats)
                                   + self._format_packing_metainfo + self._format_back_transform_codes)
            self.shm = SharedMemory(name, create=True, size=size)
            buf = self._buf
            struct.pack_into("q" + self._format_size_metainfo, buf, 0, self._list_len, *offsets)
            struct.pack_into("".join(formats), buf, self._offset_data_start,
                             *(v.encode(_ENCODING) if isinstance(v, str) else v for v in items))
            struct.pack_into(self._format_packing_metainfo, buf, self._offset_packing_formats,
                             *(f.encode(_ENCODING) for f in formats))
            struct.pack_into(self._format_back_transform_codes, buf, self._offset_back_transform_codes,
                             *(self._extract_recreation_code(v) for v in items))
        else:
            self.shm = SharedMemory(name)
            try:
                self._read_layout()
            except BaseException:
                self.shm.close()
                raise

    def _format_of(self, item: Any, position: int) -> str:
        kind = type(item)
        if kind not in self._types_mapping:
            raise ShareableListTypeError(f"item {position} ({item!r:.60}) is a {kind.__name__}: a "
                                         "ShareableList holds int, float, bool, str, bytes and None")
        if kind is str or kind is bytes:
            n = len(item.encode(_ENCODING) if kind is str else item)
            slot = self._alignment * (n // self._alignment + 1)
            if slot > _MAX_SLOT:
                raise ValueError(f"item {position} is {n} bytes long: a ShareableList's str or bytes "
                                 f"item holds at most {_MAX_SLOT // 8 * 8 - 1} bytes")
            return self._types_mapping[kind] % slot
        return self._types_mapping[kind]

    @property
    def _buf(self) -> memoryview:
        """``shm.buf``. None once ``shm`` is closed, which struct refuses with a TypeError, as it
        does for the standard library's class."""
        return cast(memoryview, self.shm.buf)

    def _corrupt(self, why: str) -> ValueError:
        return ValueError(f"shared memory block {self.shm.name!r} does not hold a ShareableList: {why}")

    def _read_layout(self) -> None:
        """Read and check the item count and offsets of an attached block (never trusted)."""
        size = self.shm.size
        if size < 16:
            raise self._corrupt(f"{size} bytes is too small")
        n: int = struct.unpack_from("q", self._buf, 0)[0]
        # N items need at least 8 (count) + 8 (N + 1) offsets + 8 N formats + N codes bytes
        if not 0 <= n <= (size - 16) // 25:
            raise self._corrupt(f"its item count {n} does not fit in {size} bytes")
        # the sizes first, from the first and last offsets: the table is parsed only if they fit
        first, end = struct.unpack_from("q", self._buf, 8)[0], struct.unpack_from("q", self._buf, 8 + 8 * n)[0]
        if first != 0 or end < 8 * n:
            raise self._corrupt(f"its item offsets (first {first}, last {end}) are not increasing by 8 or more")
        if end > size - (n + 2) * 8 - 9 * n:
            raise self._corrupt(f"its {n} items, their data ending at offset {end}, do not fit in {size} bytes")
        table = np.frombuffer(self._buf, np.int64, n + 1, 8)
        if n and not bool((np.diff(table) >= self._alignment).all()):
            raise self._corrupt(f"its item offsets {table[:8].tolist()}... are not increasing by 8 or more")
        self._list_len = n
        self._allocated_offsets = table.tolist()
        del table  # an export of the block's buffer: close() must find none

    def _check_position(self, position: int) -> int:
        position = position if position >= 0 else position + self._list_len
        if not 0 <= position < self._list_len:
            raise IndexError("Requested position out of range.")
        return position

    def _get_packing_format(self, position: int) -> str:
        """The struct format of the item at ``position`` (read from the block)."""
        position = self._check_position(position)
        raw = struct.unpack_from("8s", self._buf, self._offset_packing_formats + position * 8)[0]
        fmt: str
        try:
            fmt = raw.rstrip(b"\x00").decode(_ENCODING)
        except UnicodeDecodeError:
            fmt = repr(raw)
        slot = self._allocated_offsets[position + 1] - self._allocated_offsets[position]
        digits = fmt[:-1]
        if fmt not in _FIXED_FORMATS and not (fmt[-1:] == "s" and digits.isascii() and digits.isdigit()
                                              and 0 < int(digits) <= slot):  # isdigit alone: also '٣'
            raise self._corrupt(f"item {position} has format {fmt!r}")
        return fmt

    def _get_back_transform(self, position: int) -> Callable[[Any], Any]:
        """The function that turns the stored form of the item at ``position`` into its value."""
        position = self._check_position(position)
        code = struct.unpack_from("b", self._buf, self._offset_back_transform_codes + position)[0]
        try:
            return self._back_transforms_mapping[code]
        except KeyError:
            raise self._corrupt(f"item {position} has type code {code}") from None

    def _set_packing_format_and_transform(self, position: int, fmt_as_str: str, value: Any) -> None:
        """Store the format and back-transform code of ``value`` at ``position``."""
        position = self._check_position(position)
        struct.pack_into("8s", self._buf, self._offset_packing_formats + position * 8,
                         fmt_as_str.encode(_ENCODING))
        struct.pack_into("b", self._buf, self._offset_back_transform_codes + position,
                         self._extract_recreation_code(value))

    def __getitem__(self, position: int) -> SLT:
        try:
            position = self._check_position(position)
        except IndexError:
            raise IndexError("index out of range") from None
        fmt = self._get_packing_format(position)
        (v,) = struct.unpack_from(fmt, self._buf, self._offset_data_start + self._allocated_offsets[position])
        try:
            value: SLT = self._get_back_transform(position)(v)
        except (AttributeError, UnicodeDecodeError) as exc:
            raise self._corrupt(f"item {position} cannot be decoded ({exc})") from None
        return value

    def __setitem__(self, position: int, value: SLT) -> None:
        try:
            position = self._check_position(position)
        except IndexError:
            raise IndexError("assignment index out of range") from None
        item_offset = self._allocated_offsets[position]
        current = self._get_packing_format(position)
        if isinstance(value, (str, bytes)):
            allocated = self._allocated_offsets[position + 1] - item_offset
            encoded = value.encode(_ENCODING) if isinstance(value, str) else value
            if len(encoded) > allocated:
                raise ValueError("bytes/str item exceeds available storage")
            new_format = current if current[-1] == "s" else self._types_mapping[str] % (allocated,)
        else:
            if type(value) not in self._types_mapping:
                raise ShareableListTypeError(f"{value!r:.60} is a {type(value).__name__}: a ShareableList "
                                             "holds int, float, bool, str, bytes and None")
            new_format = self._types_mapping[type(value)]
            encoded = value
        self._set_packing_format_and_transform(position, new_format, value)
        struct.pack_into(new_format, self._buf, self._offset_data_start + item_offset, encoded)

    def __reduce__(self) -> Any:
        return partial(self.__class__, name=self.shm.name), ()

    def __len__(self) -> int:
        n: int = struct.unpack_from("q", self._buf, 0)[0]
        return n

    if TYPE_CHECKING:  # iterated through __getitem__, as a sequence without __iter__ is
        def __iter__(self) -> Iterator[SLT]: ...

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({list(self)}, name={self.shm.name!r})"

    @property
    def format(self) -> str:
        """The struct packing format used by all currently stored items."""
        return "".join(self._get_packing_format(i) for i in range(self._list_len))

    @property
    def _format_size_metainfo(self) -> str:
        return "q" * (self._list_len + 1)

    @property
    def _format_packing_metainfo(self) -> str:
        return "8s" * self._list_len

    @property
    def _format_back_transform_codes(self) -> str:
        return "b" * self._list_len

    @property
    def _offset_data_start(self) -> int:
        return (self._list_len + 2) * 8

    @property
    def _offset_packing_formats(self) -> int:
        return self._offset_data_start + self._allocated_offsets[-1]

    @property
    def _offset_back_transform_codes(self) -> int:
        return self._offset_packing_formats + self._list_len * 8

    def count(self, value: SLT) -> int:
        """L.count(value) -> integer -- return number of occurrences of value."""
        return sum(value == entry for entry in self)

    def index(self, value: SLT) -> int:
        """L.index(value) -> integer -- return first index of value.
        Raises ValueError if the value is not present."""
        for position, entry in enumerate(self):
            if value == entry:
                return position
        raise ValueError(f"{value!r} not in this container")

    @classmethod
    def __class_getitem__(cls, item: Any) -> types.GenericAlias:  # what classmethod(types.GenericAlias) gives
        return types.GenericAlias(cls, item)

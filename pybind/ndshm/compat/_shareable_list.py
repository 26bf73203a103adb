"""The room of :class:`~ndshm.compat.shared_memory.ShareableList`: the standard library's
fixed-length list of scalars and strings, packed with ``struct`` in one
:class:`~ndshm.compat.shared_memory.SharedMemory` block and checked when attached by name. Users
import it from :mod:`ndshm.compat.shared_memory`."""

from __future__ import annotations

import struct
import types
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterable, Iterator, Optional, TypeVar, cast, overload

import numpy as np

from ._shared_memory import SharedMemory

__all__ = ["SLT", "ShareableList", "ShareableListTypeError"]

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

    __module__ = "ndshm.compat.shared_memory"  # pickles and reprs name the public module, as before the split

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ShareableList(Generic[SLT]):
    """A fixed-length list of ``int``, ``float``, ``bool``, ``str``, ``bytes`` and ``None`` values in
    one shared-memory block: ``ShareableList(sequence)`` creates it (``name=`` to choose the block's
    name), ``ShareableList(name=name)`` attaches to an existing one. Items can be replaced (a
    ``str``/``bytes`` item by one that fits its slot), not added or removed; ``shm`` is the
    :class:`SharedMemory` holding it."""

    __module__ = "ndshm.compat.shared_memory"  # pickles and reprs name the public module, as before the split

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

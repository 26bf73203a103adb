"""ndshm: aligned allocations and shared-memory segments as zero-copy NumPy arrays.

The C library (libndshm) does the work; this package talks to it through cffi in ABI mode,
so one build serves CPython and PyPy and no Python headers are needed.
"""

from __future__ import annotations

from ._lib import HEADER_VERSION as _HEADER_VERSION
from ._errors import (
    BrokenBarrierError, BusyError, ClosedError, CorruptSegmentError, DirectoryNotFoundError, Empty, Full,
    InvalidValueError,
    MessageTooBigError, NdshmError, NdshmOSError, NdshmPermissionError, NdshmTimeoutError, NoSpaceError,
    NotSupportedError, OutOfMemoryError, OwnerDiedError, SegmentExistsError, SegmentNotFoundError,
)
from ._errors import Lagged, ShutDown
from ._buffer import (
    Buffer, asaligned, empty, empty_like, full, full_like, is_aligned, ones, ones_like, zeros, zeros_like,
)
from ._segment import Segment, SharedArray, segment_of
from ._api import attach, attach_raw, create, exists, stats, unlink
from ._fdpass import recv_fd, send_fd
from ._mappings import set_mapping_cache
from ._ownership import cleanup_on_signals
from ._reference import Reference, WrongNodeError, from_reference, node_identity, reference
from ._replicate import Replica, replicate
from ._listing import SegmentRecord
from ._listing import list_segments as _list_segments

list = _list_segments  # noqa: A001 - ndshm.list() (an assignment, so type checkers export it), kept out of __all__
from ._queue import Queue
from ._broadcast import Broadcast, Subscription
from ._sync import Barrier, Event, Lock
# the pool (issue 21)
from .pool import BlockFreedError, Pool, PoolArray, PoolStats, default_pool

#: The version of ndshm, from the C header's ``NDSHM_VERSION_*`` (the library must match its ABI).
__version__ = ".".join(map(str, _HEADER_VERSION))

# `list` is deliberately absent: `from ndshm import *` must not shadow the builtin.
__all__ = [
    "__version__",
    # errors
    "NdshmError", "InvalidValueError", "CorruptSegmentError", "SegmentExistsError", "SegmentNotFoundError",
    "NdshmPermissionError", "OutOfMemoryError", "NoSpaceError", "DirectoryNotFoundError", "NdshmTimeoutError", "BusyError", "Empty",
    "Full", "MessageTooBigError", "OwnerDiedError", "ClosedError", "NotSupportedError", "NdshmOSError",
    "BrokenBarrierError", "ShutDown", "Lagged",
    # aligned allocation
    "Buffer", "empty", "zeros", "ones", "full", "empty_like", "zeros_like", "ones_like", "full_like",
    "asaligned", "is_aligned", "stats",
    # segments
    "Segment", "SegmentRecord", "SharedArray", "create", "attach", "attach_raw", "unlink", "exists",
    "segment_of", "send_fd", "recv_fd",
    # lifetime
    "set_mapping_cache", "cleanup_on_signals",
    # references across processes, and the node they belong to
    "Reference", "reference", "from_reference", "node_identity", "WrongNodeError",
    "Replica", "replicate",
    # queue and process-shared synchronisation
    "Queue", "Lock", "Event", "Barrier",
    # publish-subscribe
    "Broadcast", "Subscription",
    # the pool (issue 21)
    "Pool", "PoolArray", "PoolStats", "BlockFreedError", "default_pool",
]

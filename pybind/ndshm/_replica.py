"""The handle on an array replicated to every node: :class:`Replica` (made by
:func:`ndshm.replicate`, see :mod:`ndshm._replicate`; engines' modules build it too)."""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ._api import attach
from ._dirs import default_dir
from ._errors import SegmentNotFoundError

__all__ = ["Replica"]


class Replica:
    """A handle on an array replicated to every node (picklable: tasks take it as an argument).
    ``array()`` maps this node's copy; ``release()`` (in the process that replicated it) removes
    every node's copy."""

    __slots__ = ("name", "shape", "dtype", "nodes", "_release")
    name: str
    """The segment name every node's copy has."""
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    nodes: int
    """How many nodes got a copy."""
    _release: Optional[Callable[[], None]]

    def __init__(self, name: str, shape: tuple[int, ...], dtype: DTypeLike, nodes: int,
                 release: Optional[Callable[[], None]] = None) -> None:
        self.name = name
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.nodes = nodes
        self._release = release

    def __reduce__(self) -> tuple[type[Replica], tuple[str, tuple[int, ...], np.dtype[Any], int]]:
        return (Replica, (self.name, self.shape, self.dtype, self.nodes))

    def array(self, readonly: bool = True) -> NDArray[Any]:
        """This node's copy, zero-copy (read-only unless ``readonly=False``: then writes are seen
        by this node's processes only). SegmentNotFoundError if this node has none (it joined the
        cluster after :func:`replicate`, or the replica was released)."""
        try:
            arr = attach(self.name, readonly=readonly)
        except SegmentNotFoundError:
            raise SegmentNotFoundError(f"replica {self.name!r} has no copy on this node (in "
                                       f"{default_dir()}): it joined after replicate(), or the "
                                       "replica was released") from None
        if arr.shape != self.shape or arr.dtype != self.dtype:
            raise SegmentNotFoundError(f"segment {self.name!r} holds {arr.dtype} {arr.shape}, not replica "
                                       f"{self.dtype} {self.shape}")
        return arr

    def release(self) -> None:
        """Remove every node's copy (processes mapping one keep their mapping). Only the handle
        :func:`replicate` returned can; a copy received by a task cannot."""
        if self._release is None:
            raise ValueError(f"this handle on replica {self.name!r} was not made by replicate() in this process")
        release, self._release = self._release, None
        release()

    def __repr__(self) -> str:
        return f"<ndshm.Replica {self.name!r} {self.dtype} {self.shape} on {self.nodes} node(s)>"

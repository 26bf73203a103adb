"""One copy per node: an array broadcast to every node of an engine's cluster once, attached by name.

Dask keeps one copy of a broadcast array per worker, Ray one per node but read-only and behind
its object store. :func:`replicate` sends the data once to each node, by the engine's own
transport (Dask: a by-value scatter to one worker of the node; Ray: the object store, read by one
task pinned to the node), where it is written into a named segment; every local worker then maps
that segment by name (:meth:`Replica.array`), with no copy and no transfer. The segment's name is
the same on every node, resolved in each node's default directory (``$NDSHM_DIR`` or
``/dev/shm``).

Lifetime: the copy on each node is owned by the process that wrote it (on the caller's node, the
caller; elsewhere the chosen worker, or an actor holding it for Ray): the name lives until
:meth:`Replica.release` (or until that process exits), never longer: no ``persist=True`` leak.

Writeable shared outputs that tasks fill in disjoint slices are node-local by nature: create one
(``ndshm.create``), hand tasks ``ndshm.reference(out)`` and let each write its slice through
``ndshm.from_reference(ref)``; a task on another node gets :class:`~ndshm.WrongNodeError` and
must return its slice by value instead.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ._errors import SegmentNotFoundError

__all__ = ["Replica", "replicate"]


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
        from . import _segment
        try:
            arr = _segment.attach(self.name, readonly=readonly)
        except SegmentNotFoundError:
            raise SegmentNotFoundError(f"replica {self.name!r} has no copy on this node (in "
                                       f"{_segment.default_dir()}): it joined after replicate(), or the "
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


def replicate(arr: Any, engine: Any, *, name: Optional[str] = None, include_client: bool = False) -> Replica:
    """Copy ``arr`` once to every node of ``engine`` that runs workers: ``engine`` is a
    ``distributed.Client`` (``ndshm.dask.replicate``) or the ``ray`` module
    (``ndshm.ray.replicate``; the driver's node is a Ray node). ``include_client``: the calling
    process's node gets a copy too even where no worker runs (Dask). Returns the
    :class:`Replica` tasks attach by name."""
    cls = type(engine)
    if cls.__module__.startswith("distributed") and cls.__name__ == "Client":
        from . import dask as nd_dask
        return nd_dask.replicate(engine, arr, name=name, include_client=include_client)
    if getattr(engine, "__name__", None) == "ray":
        from . import ray as nd_ray
        return nd_ray.replicate(arr, name=name)
    raise TypeError(f"replicate() takes a distributed.Client or the ray module as its engine, not "
                    f"{cls.__module__}.{cls.__name__}")

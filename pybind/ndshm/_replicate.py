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

from typing import Any, Optional

from ._replica import Replica

__all__ = ["Replica", "replicate"]


def replicate(arr: Any, engine: Any, *, name: Optional[str] = None, include_client: bool = False) -> Replica:
    """Copy ``arr`` once to every node of ``engine`` that runs workers: ``engine`` is a
    ``distributed.Client`` (``ndshm.dask.replicate``) or the ``ray`` module
    (``ndshm.ray.replicate``; the driver's node is a Ray node). ``include_client``: the calling
    process's node gets a copy too even where no worker runs (Dask). Returns the
    :class:`Replica` tasks attach by name."""
    cls = type(engine)
    if cls.__module__.startswith("distributed") and cls.__name__ == "Client":
        from . import dask as nd_dask  # imported when asked for: an optional engine ``import ndshm`` never pays for
        return nd_dask.replicate(engine, arr, name=name, include_client=include_client)
    if getattr(engine, "__name__", None) == "ray":
        from . import ray as nd_ray  # the same
        return nd_ray.replicate(arr, name=name)
    raise TypeError(f"replicate() takes a distributed.Client or the ray module as its engine, not "
                    f"{cls.__module__}.{cls.__name__}")

"""ndshm arrays in Ray: tasks hand shared arrays over by reference, within one node.

Ray already gives one read-only copy per node through its object store, but every ``ray.put`` and
every task result is a copy into it. A task that writes its result straight into an ndshm segment
and returns it skips that copy; a consumer maps the segment. This module registers a Ray
serializer for :class:`~ndshm.SharedArray` (``ray.util.register_serializer``) in the driver and,
through the runtime env's ``worker_process_setup_hook``, in every worker: use :func:`init`
instead of ``ray.init``, or pass :func:`runtime_env` to ``ray.init`` / a job and call
:func:`setup` in the driver.

What travels: an :class:`ndshm.Reference` (a few hundred bytes) with the Ray node id and the ndshm
node identity of the process that sent it. An array not in a live named segment travels as a
plain NumPy array (Ray's own zero-copy path).

**Lifetime.** Make task results with :func:`empty` (``owner="receiver"``): the segment is handed
to the driver when it first ``ray.get``\\ s the result, and its name then lives as long as the
driver holds a view of it (or until it exits); no ``persist=True``, nothing left behind. Tasks that
read the result before the driver does map it without taking it over (their mapping is cached, so
repeated consumers reuse it). A result the driver never gets is removed by the next segment
creation in its directory once nobody maps it and its hand-over has waited
``ndshm._ownership.HANDOVER_SECONDS`` (10 minutes). Arrays the driver creates (default
``owner="creator"``) live until the driver closes them or exits: tasks can read them, and write
into them if the driver shares them writeable (see below).

**Read-only by default.** Receivers get read-only views, like Ray's own arrays; ``init(...,
writeable=True)`` gives writeable ones in every process (tasks filling disjoint slices of a
shared output). Per array, pass ``ndshm.reference(arr)`` and call ``ndshm.from_reference(ref)``
in the task for a writeable view.

**The node pool** (opt-in: ``init(pool_bytes=N)`` or ``$NDSHM_ENGINE_POOL_BYTES``). The driver
creates one pre-faulted :class:`ndshm.Pool` of ``N`` bytes; workers on its node map it once (its
name is in the runtime env) and :func:`empty` carves task results from it (a full pool: a
segment, as above), so neither the producer nor a consumer faults a page. Pool blocks
(:class:`ndshm.PoolArray`, any pool) travel as pool references with their own serializer, because
Ray may deserialize one stored object many times: a task's result carries one hand-over *to the
driver*. Tasks that read it only pin it (for the life of their views); the driver's first
``ray.get`` ends the hand-over, and the block is free once the driver's views and every task's
are gone. So a result lives while its readers read it and until the driver has got it and let it
go; a result the driver never gets stays until the worker process that made it exits (then
``Pool.reclaim`` frees it), so a long job's intermediate results that the driver never gets are
better made with ``empty(dir=...)`` (a segment each) or returned by value. An array
the driver carves itself (``ray.put``, task arguments) carries no hand-over: the driver's views
keep it. A reference to a block freed since raises :class:`ndshm.BlockFreedError` (a
``FileNotFoundError``), never reads it: for example a second ``ray.get`` of a result whose first
array the driver already dropped.

**Across nodes: a clear error, not a copy.** A reference deserialized on another node (or in
another container) raises :class:`ndshm.WrongNodeError` naming both Ray node ids; send such data
by value (``np.asarray(arr)`` before returning it) or use ``ndshm.replicate``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import numpy as np
from numpy.typing import NDArray

import ray

from . import _segment
from . import pool as _pool
from ._api import create
from ._errors import NoSpaceError
from ._reference import Reference, WrongNodeError, from_reference, node_identity, reference, same_boot
from ._replica import Replica

__all__ = ["init", "runtime_env", "setup", "empty", "share", "replicate", "node_pool", "SETUP_HOOK"]

#: The ``worker_process_setup_hook`` that registers ndshm's serializer in a Ray worker.
SETUP_HOOK = "ndshm.ray.setup"
WRITEABLE_ENV = "NDSHM_RAY_WRITEABLE"
POOL_ENV = "NDSHM_RAY_POOL"  # JSON [node identity, name, directory] of the driver's node pool (init(pool_bytes=...))
POOL_BYTES_ENV = _pool.ENGINE_POOL_BYTES_ENV
_driver = False
_registered_pid = 0
_ray_node: Optional[str] = None


def _ray_node_id() -> str:
    global _ray_node
    if _ray_node is None:
        try:
            _ray_node = ray.get_runtime_context().get_node_id()
        except Exception:  # not connected to Ray (a serializer called by hand)
            return ""
    return _ray_node


def _is_driver() -> bool:
    """Whether this process is the Ray driver (:func:`init` says so; a driver that called
    ``ray.init`` itself and :func:`setup` is recognised by its worker mode once connected)."""
    global _driver
    if not _driver and _mode_known[0] != os.getpid():
        try:
            mode = ray.get_runtime_context().worker.mode
        except Exception:  # not connected yet: ask again next time
            return False
        if mode is not None:
            _driver = mode == ray.SCRIPT_MODE
            _mode_known[0] = os.getpid()
    return _driver


_mode_known = [0]  # the pid whose worker mode _is_driver has read


def _writeable() -> bool:
    return os.environ.get(WRITEABLE_ENV, "") == "1"


def serialize(x: NDArray[Any]) -> tuple[Any, ...]:
    """Ray serializer of a SharedArray: ``("ref", Reference, ray node id)`` for an array in a live
    named segment (a hand-over for owner="receiver" segments), else ``("value", ndarray)``."""
    try:
        ref = reference(x)
    except ValueError:
        return ("value", np.asarray(x))
    return ("ref", ref, _ray_node_id())


def deserialize(obj: tuple[Any, ...]) -> NDArray[Any]:
    """Ray deserializer: map a reference made on this node (WrongNodeError on another one)."""
    kind = obj[0]
    if kind == "value":
        value: NDArray[Any] = obj[1]
        return value
    if kind != "ref" or not isinstance(obj[1], Reference):
        raise TypeError(f"not an ndshm.ray serialized array: {obj!r:.100}")
    ref, sender_node = obj[1], obj[2]
    if ref.node != node_identity() and not same_boot(ref.node):  # same boot: from_reference checks the file
        raise WrongNodeError(f"the shared array in segment {ref.name!r} was made on Ray node {sender_node} "
                             f"(ndshm node {ref.node!r}); this is Ray node {_ray_node_id()} (ndshm node "
                             f"{node_identity()!r}): shared memory does not reach across nodes. Return "
                             "np.asarray(arr) to send it by value, or use ndshm.replicate")
    if ref.handover and not _is_driver():
        ref = ref._replace(handover=False)  # the driver takes it over; tasks only map it
    return from_reference(ref, readonly=True if ref.readonly else not _writeable())


def serialize_pool(x: NDArray[Any]) -> tuple[Any, ...]:
    """Ray serializer of a pool block (:class:`ndshm.PoolArray`): ``("pool", reference, ndshm node,
    Ray node, handed over)``. From a task, the reference is a hand-over to the driver (the block
    stays live, whoever else reads it, until the driver gets the object; see the module
    documentation); from the driver, none (the driver's own views keep its blocks)."""
    driver = _is_driver()
    args = _pool.reference_args(x, send=not driver)
    if args is None:
        return ("value", np.asarray(x))
    return ("pool", args, node_identity(), _ray_node_id(), not driver)


def deserialize_pool(obj: tuple[Any, ...]) -> NDArray[Any]:
    """Ray deserializer of a pool block: pins it here (the driver's first get also ends the
    hand-over); a block freed since raises :class:`ndshm.BlockFreedError`, never reads."""
    kind = obj[0]
    if kind == "value":
        value: NDArray[Any] = obj[1]
        return value
    if kind != "pool" or len(obj) != 5:
        raise TypeError(f"not an ndshm.ray serialized pool array: {obj!r:.100}")
    args, node, sender_node, handed_over = obj[1], obj[2], obj[3], obj[4]
    if node != node_identity():
        raise WrongNodeError(f"the shared array in pool {args[0]!r} was made on Ray node {sender_node} (ndshm "
                             f"node {node!r}); this is Ray node {_ray_node_id()} (ndshm node {node_identity()!r}): "
                             "shared memory does not reach across nodes. Return np.asarray(arr) to send it by "
                             "value, or use ndshm.replicate")
    got = _pool.rebuild(args, received=bool(handed_over) and _is_driver())
    if not _writeable():
        got.flags.writeable = False
    return got


def setup() -> None:
    """Register the serializer in this process (the workers' setup hook; :func:`init` calls it in
    the driver). Calling it again does nothing."""
    global _registered_pid
    if _registered_pid == os.getpid():
        return
    ray.util.register_serializer(_segment.SharedArray, serializer=serialize, deserializer=deserialize)
    # Ray looks serializers up by exact type: a pool block needs its own
    ray.util.register_serializer(_pool.PoolArray, serializer=serialize_pool, deserializer=deserialize_pool)
    _registered_pid = os.getpid()


def runtime_env(base: Optional[dict[str, Any]] = None, *, writeable: bool = False) -> dict[str, Any]:
    """``base`` (a runtime env dict) with the setup hook that registers ndshm's serializer in every
    worker, and ``$NDSHM_RAY_WRITEABLE`` for ``writeable``."""
    if not isinstance(writeable, (bool, np.bool_)):
        raise TypeError(f"writeable={writeable!r} is not a bool")
    env = dict(base or {})
    hook = env.get("worker_process_setup_hook")
    if hook is not None and hook != SETUP_HOOK:
        raise ValueError(f"the runtime env has a worker_process_setup_hook already ({hook!r}): call "
                         f"ndshm.ray.setup() from it instead")
    env["worker_process_setup_hook"] = SETUP_HOOK
    env_vars = dict(env.get("env_vars") or {})
    env_vars[WRITEABLE_ENV] = "1" if writeable else "0"
    env["env_vars"] = env_vars
    return env


def init(*args: Any, writeable: bool = False, pool_bytes: Optional[int] = None, **kwargs: Any) -> Any:
    """``ray.init(*args, **kwargs)`` with ndshm's serializer in the driver and every worker
    (see :func:`runtime_env`); returns what ray.init returns. ``writeable``: receivers get
    writeable views (default read-only). ``pool_bytes`` (default ``$NDSHM_ENGINE_POOL_BYTES``,
    else 0: none): the driver creates a pre-faulted :class:`ndshm.Pool` of that many bytes, the
    node pool, that :func:`empty` carves task results from in every worker of the driver's node
    (see the module documentation)."""
    global _driver
    nbytes = _pool.engine_pool_bytes(pool_bytes)
    env = runtime_env(kwargs.pop("runtime_env", None), writeable=writeable)
    if nbytes:
        p = node_pool()
        if p is None or p.nbytes < nbytes:
            p = _pool.Pool(nbytes, on_full="raise")
            _node_pools[:] = [p]
        spec = json.dumps([node_identity(), p.name, p.dir])
        env["env_vars"][POOL_ENV] = spec
        os.environ[POOL_ENV] = spec
    ctx = ray.init(*args, runtime_env=env, **kwargs)
    os.environ[WRITEABLE_ENV] = "1" if writeable else "0"
    _driver = True
    setup()
    return ctx


def empty(shape: Any, dtype: Any = float, *, dir: Optional[str] = None) -> NDArray[Any]:
    """A new shared array (zeroed) for a task to fill and return: handed to the driver when it gets
    the result (``owner="receiver"``; see the module documentation). With a node pool
    (``init(pool_bytes=...)``) and no ``dir``, a block of it (a full pool: a segment as above)."""
    if dir is None:
        p = node_pool()
        if p is not None:
            try:
                return p.zeros(shape, dtype)
            except NoSpaceError:
                pass
    return create(None, shape, dtype, owner="receiver", dir=dir)


_node_pools: list[_pool.Pool] = []  # the node pool, made (driver) or attached (a worker of its node)
_pool_tried = [0]  # the pid that looked for the node pool already


def node_pool() -> Optional[_pool.Pool]:
    """The node pool this process carves :func:`empty` results from (see :func:`init`), or None:
    in a worker, the driver's pool if the worker is on the driver's node (mapped once)."""
    p = _node_pools[0] if _node_pools else None
    if p is not None and not p.closed:
        return p
    if _pool_tried[0] == os.getpid():
        return None
    _pool_tried[0] = os.getpid()
    try:
        node, name, d = json.loads(os.environ.get(POOL_ENV) or "null") or ("", "", "")
    except (ValueError, TypeError):
        return None
    if not isinstance(name, str) or not name or node != node_identity():
        return None
    try:
        p = _pool.Pool.attach(name, dir=d or None, on_full="raise")
    except (OSError, ValueError):  # the driver ended, or another file system: go without
        return None
    _node_pools[:] = [p]
    return p


def share(arr: Any, *, dir: Optional[str] = None) -> NDArray[Any]:
    """``arr`` copied into a new shared array made as :func:`empty` makes them."""
    src = np.asarray(arr)
    out = empty(src.shape, src.dtype, dir=dir)
    out[...] = src
    return out


# ---- one copy per node -------------------------------------------------------------------------

def _node_identity_task() -> str:
    return node_identity()


class _ReplicaHolder:
    """An actor pinned to one node, owning that node's copies of replicated arrays (they go when
    it is killed or its job ends)."""

    def __init__(self) -> None:
        self.held: dict[str, _segment.Segment] = {}

    def write(self, name: str, data: NDArray[Any]) -> bool:
        seg = _segment.Segment.create(name, data.shape, data.dtype)
        seg.asarray()[...] = data
        self.held[name] = seg
        return True

    def drop(self, name: str) -> bool:
        seg = self.held.pop(name, None)
        if seg is not None:
            seg.close()
        return seg is not None


def replicate(arr: Any, *, name: Optional[str] = None) -> Replica:
    """``arr`` copied once to every node of the Ray cluster (see ``ndshm.replicate``): on the
    driver's node into a segment the driver owns; on every other node (another ndshm node
    identity) through the object store into a segment owned by an actor pinned to that node.
    Tasks call ``replica.array()``; ``replica.release()`` removes every copy."""
    import uuid

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    src = np.asarray(arr)
    if src.dtype.hasobject:
        raise TypeError(f"dtype {src.dtype} holds Python objects: it cannot live in shared memory")
    name = name or f"replica-{uuid.uuid4().hex[:20]}"
    here_ray, here = _ray_node_id(), node_identity()
    others = [n["NodeID"] for n in ray.nodes()  # type: ignore[no-untyped-call]
              if n.get("Alive") and n["NodeID"] != here_ray]
    probe = ray.remote(num_cpus=0)(_node_identity_task)
    holder_cls = ray.remote(num_cpus=0)(_ReplicaHolder)
    seen = {here}
    seg = _segment.Segment.create(name, src.shape, src.dtype)
    holders: list[Any] = []  # the actors' handles
    try:
        seg.asarray()[...] = src
        obj = None
        for node in others:
            pin = NodeAffinitySchedulingStrategy(node, soft=False)
            ident = ray.get(probe.options(scheduling_strategy=pin).remote())
            if ident in seen:
                continue  # another Ray node on a machine that has its copy already
            seen.add(ident)
            if obj is None:
                obj = ray.put(src)
            holder = holder_cls.options(scheduling_strategy=pin).remote()
            ray.get(holder.write.remote(name, obj))  # type: ignore[attr-defined]  # an actor method
            holders.append(holder)
    except BaseException:
        seg.close()
        for h in holders:
            ray.kill(h)
        raise

    def release() -> None:
        seg.close()
        for h in holders:
            try:
                ray.get(h.drop.remote(name))
            finally:
                ray.kill(h)

    return Replica(name, src.shape, src.dtype, len(seen), release)

"""asyncio forms of the blocking calls: ``await q.get_async()``, ``async with q.receive_async()``,
``await q.put_async(arr)``, ``async with q.loan_async(...)``, ``async for arr in q``, the same for
:class:`Subscription` and :class:`Broadcast` publishers, ``await lock.acquire_async()``,
``await event.wait_async()``.

Design: *wait in a thread, claim on the loop.* A call first reads the ring's wake-up counter
(``ndshm_queue_epoch``), then tries the non-blocking call on the event loop's thread. If that finds
nothing to do (``Empty``/``Full``), a thread of a small pool sleeps on the counter
(``ndshm_queue_wait_epoch``: a futex wait that claims nothing) until it moves, for a slice of at
most 50 ms, and the coroutine then tries again. Every message or slot is therefore claimed by
synchronous code on the loop's thread, between two awaits: a cancellation (``asyncio.wait_for``,
``Task.cancel``) can only land while nothing is claimed, so it never loses a message nor leaves a
slot taken; the waiting thread simply finishes its slice. Dead claimers, dead producers and dead
consumers are still noticed: the non-blocking calls carry those checks. ``close()`` of the handle
ends the thread's sleep at once (the handle's interrupt flag) and the coroutine raises
:class:`ClosedError`.

A lock cannot be waited for without taking it: ``acquire_async`` takes it in the thread (sliced) and,
if the coroutine was cancelled meanwhile, gives it back from that thread.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

from ._errors import Empty, Full, NdshmError, error_from_code
from ._lib import lib

if TYPE_CHECKING:
    import asyncio
    from concurrent.futures import Future, ThreadPoolExecutor

# asyncio and concurrent.futures are imported by the calls that use them, not with the package:
# together they are about a third of `import ndshm` (bench_import's row), and a coroutine of this
# module only runs under a running asyncio loop, so asyncio is already imported then.
_T = TypeVar("_T")
_ETIMEDOUT = lib.NDSHM_ETIMEDOUT
_ASLICE = 0.05  # a waiting thread comes back this often (the loop then retries the call)
_POOL: Optional[ThreadPoolExecutor] = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor
        _POOL = ThreadPoolExecutor(max_workers=32, thread_name_prefix="ndshm-async")
    return _POOL


def _left(deadline: Optional[float]) -> float:
    """Seconds for the next slice of a wait ending at ``deadline`` (None: no end)."""
    if deadline is None:
        return _ASLICE
    return min(max(deadline - time.monotonic(), 0.0), _ASLICE)


def _settle(fut: "asyncio.Future[Any]", value: Any, exc: Optional[BaseException]) -> None:
    if not fut.done():
        if exc is None:
            fut.set_result(value)
        else:
            fut.set_exception(exc)


def _in_thread(loop: asyncio.AbstractEventLoop, wait: Callable[[int, float], int], seen: int,
               s: float) -> "asyncio.Future[Any]":
    """An asyncio future of ``wait(seen, s)`` run in a pool thread, settled straight from that thread
    (one hop back to the loop: no concurrent.futures.Future chained in between)."""
    fut = loop.create_future()

    def job() -> None:
        value: Any = None
        exc: Optional[BaseException] = None
        try:
            value = wait(seen, s)
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
            exc = e
        try:
            loop.call_soon_threadsafe(_settle, fut, value, exc)
        except RuntimeError:  # the loop is closed: nobody awaits any more
            pass
    _pool().submit(job)
    return fut


async def retry(attempt: Callable[[], _T], epoch: Callable[[], int], wait: Callable[[int, float], int],
                timeout: Optional[float], block_exc: type[NdshmError], what: str) -> _T:
    """``attempt()`` (a non-blocking call that raises ``block_exc`` when it would block) until it
    succeeds, waiting between tries in a pool thread with ``wait(seen, seconds)`` for the counter
    ``epoch()`` to move. ``timeout`` None waits for ever; otherwise ``block_exc`` after it."""
    import asyncio
    deadline = None if timeout is None else time.monotonic() + timeout
    loop: Optional[asyncio.AbstractEventLoop] = None
    while True:
        seen = epoch()
        try:
            return attempt()
        except block_exc:
            pass
        s = _left(deadline)
        if s <= 0.0:
            raise error_from_code(_ETIMEDOUT, detail=f"{what} after {timeout:g} s", timed_out=block_exc)
        if loop is None:
            loop = asyncio.get_running_loop()
        # the thread claims nothing: a cancellation here leaves no trace (it finishes its slice)
        await _in_thread(loop, wait, seen, s)


async def sliced_in_thread(call: Callable[[float], int], timeout: Optional[float], again: int,
                           on_cancel: Callable[[int], None], closed: Callable[[], bool],
                           closed_exc: Callable[[], Exception]) -> int:
    """``call(seconds)`` (a C wait returning ``again`` when its slice ran out) in pool threads, in
    slices, until it returns something else or ``timeout`` runs out (then ``again``). If the
    coroutine is cancelled while a slice runs, ``on_cancel(rc)`` gets that slice's result in the
    thread (to give back what it took)."""
    import asyncio
    deadline = None if timeout is None else time.monotonic() + timeout
    loop = asyncio.get_running_loop()
    while True:
        if closed():
            raise closed_exc()
        s = _left(deadline)
        if s <= 0.0:
            return again
        cf: Future[int] = _pool().submit(call, s)
        try:
            rc = await asyncio.wrap_future(cf, loop=loop)
        except asyncio.CancelledError:
            cf.add_done_callback(lambda f: None if f.cancelled() or f.exception() else on_cancel(f.result()))
            raise
        if rc != again:
            return rc


class AsyncContext:
    """``async with``: ``enter`` (a coroutine giving the context manager entered and its value) and
    the synchronous ``__exit__`` of that context manager."""

    __slots__ = ("_enter", "_cm")

    def __init__(self, enter: Callable[[], Any]) -> None:
        self._enter, self._cm = enter, None

    async def __aenter__(self) -> Any:
        if self._cm is not None:
            raise RuntimeError("this async context is already entered")
        cm, value = await self._enter()
        self._cm = cm
        return value

    async def __aexit__(self, *exc: Any) -> None:
        cm, self._cm = self._cm, None
        if cm is None:
            raise RuntimeError("async context exited without being entered")
        cm.__exit__(*exc)


_ = (Empty, Full)

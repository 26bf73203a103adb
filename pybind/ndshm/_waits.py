"""One sliced wait for every blocking call (queue, broadcast, lock, event): a C wait of ``t``
seconds is made in slices of at most ``slice`` seconds, so that Python's signal handlers run
between them (Ctrl-C works) and a ``close()`` from another thread is noticed.

The rings' hot paths make the first slice themselves (``first(t)`` seconds, written inline) and
call :func:`rest` only when it ran out; everything else calls :func:`sliced`."""

from __future__ import annotations

import time
from typing import Callable, Optional

from ._lib import lib

__all__ = ["ETIMEDOUT", "SLICE", "first", "rest", "sliced"]

ETIMEDOUT: int = lib.NDSHM_ETIMEDOUT
SLICE = 0.25  # the rings' slice: a wait longer than this returns to Python this often
_monotonic = time.monotonic


def first(t: float, slice: float = SLICE) -> float:
    """The first slice of a wait of ``t`` seconds (0: one try; negative: for ever)."""
    return t if 0 <= t <= slice else slice


def sliced(call: Callable[[float], int], t: float, slice: float = SLICE,
           between: Optional[Callable[[], None]] = None) -> int:
    """``call(seconds)`` (a C wait returning 0, NDSHM_ETIMEDOUT when its seconds ran out, or
    another code) for ``t`` seconds in all (0: one try; negative: for ever), in slices of at most
    ``slice`` seconds; ``between()`` runs after each slice that ran out (it may raise). Returns
    the last call's code."""
    s = first(t, slice)
    rc = call(s)
    if rc != ETIMEDOUT or s == t:
        return rc
    return rest(call, t, slice, between)


def rest(call: Callable[[float], int], t: float, slice: float = SLICE,
         between: Optional[Callable[[], None]] = None) -> int:
    """The rest of a wait of ``t`` seconds (> ``slice``, or negative: for ever) whose first slice
    of ``slice`` seconds has just run out (see :func:`sliced`). Never a last slice of 0 s: C
    reads a timeout of 0 as "try once" (Full or Empty, not a timeout)."""
    deadline = None if t < 0 else _monotonic() + (t - slice)
    while True:
        if between is not None:
            between()
        if deadline is None:
            s = slice
        else:
            left = deadline - _monotonic()
            if left <= 0:
                return ETIMEDOUT
            s = min(left, slice)
        rc = call(s)
        if rc != ETIMEDOUT:
            return rc

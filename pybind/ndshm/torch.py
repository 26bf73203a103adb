"""PyTorch tensors in place in an :class:`ndshm.Queue`'s slots (zero copy).

``import ndshm`` never imports torch, and neither does ``import ndshm.torch``: torch is imported
at the first call here (:class:`ImportError` naming it if it is missing).

- :func:`receive_tensor` takes the oldest message and returns a CPU tensor on its slot. The slot
  stays taken for as long as the tensor lives, and so do views of it and what shares its memory
  (``t[0]``, ``t.view(...)``, ``t.numpy()``, DLPack): the tensor stays correct after the queue's
  ``close()`` and while other messages flow through the other slots. Free it (``del t``) to give
  the slot back; a full queue says how many slots live tensors hold. The tensor is writable,
  with no warning: the message belongs to this consumer alone (no other process reads it), so a
  write changes only its own data. On PyPy (no reference counts) it is a copy of the message.
- :func:`loan` (also :func:`loan_tensor`): ``with loan(q, shape, torch.float32) as t:`` fill the
  writable tensor ``t`` in place; the message is published when the block ends normally and
  discarded if it raises. After the block ``t`` is emptied (``t.numel() == 0``: it holds nothing
  of the slot any more); views made from it inside the block must not be written after it (they
  would change a published message), as for :meth:`ndshm.Queue.loan`.
- :func:`get_tensor` is a copy (``torch.from_numpy(q.get())``).

A message whose dtype torch lacks (structured dtypes, ``uint16`` on old torch, ...) raises
:class:`TypeError` naming it, and its slot goes back at once.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import numpy as np

from ._queue import Queue, receive_owned
from ._slots import plain_alias

__all__ = ["receive_tensor", "loan", "loan_tensor", "get_tensor"]

_PYPY = sys.implementation.name == "pypy"
_torch: Any = None


def _t() -> Any:
    global _torch
    if _torch is None:
        try:
            import torch
        except ImportError as e:
            raise ImportError(f"ndshm.torch needs PyTorch (pip install torch): {e}") from None
        _torch = torch
    return _torch


def _check_queue(q: Any) -> Queue:
    if not isinstance(q, Queue):
        raise TypeError(f"{q!r} is not an ndshm.Queue")
    return q


def _np_dtype(dtype: Any) -> np.dtype:
    """A numpy dtype for a torch dtype (or anything ``np.dtype`` accepts)."""
    torch = _t()
    if isinstance(dtype, torch.dtype):
        try:
            dt: np.dtype[Any] = np.dtype(torch.empty(0, dtype=dtype).numpy().dtype)
            return dt
        except TypeError:
            raise TypeError(f"dtype {dtype} has no NumPy equivalent, so a queue message cannot carry it") from None
    dt = np.dtype(dtype)
    return dt


def _from_numpy(arr: np.ndarray) -> Any:
    try:
        return _t().from_numpy(arr)
    except TypeError:
        raise TypeError(f"a message of dtype {arr.dtype} cannot be a torch tensor (torch has no such dtype)") from None


def receive_tensor(q: Queue, timeout: Optional[float] = None) -> Any:
    """The oldest message of ``q`` as a writable CPU tensor in place on its slot (zero copy); the
    slot stays taken while the tensor (or anything sharing its memory) lives. Waits up to
    ``timeout`` seconds (``None``: for ever); raises as :meth:`ndshm.Queue.get` (:class:`Empty`,
    :class:`ShutDown`, ...). On PyPy: a copy."""
    _check_queue(q)
    _t()
    if _PYPY:
        return _from_numpy(q.get(timeout=timeout))
    return receive_owned(q, timeout, _from_numpy)


def get_tensor(q: Queue, timeout: Optional[float] = None) -> Any:
    """A copy of the oldest message of ``q`` as a tensor (its own memory)."""
    _check_queue(q)
    _t()
    return _from_numpy(q.get(timeout=timeout))


@contextmanager
def loan(q: Queue, shape: Any = None, dtype: Any = None, timeout: Optional[float] = None) -> Iterator[Any]:
    """``with loan(q, shape, torch.float32) as t:`` fill ``t`` (a writable CPU tensor on a free
    slot) in place; published when the block ends, discarded if it raises. ``dtype``: a torch or
    NumPy dtype (a typed queue's own by default). ``t`` is empty after the block."""
    _check_queue(q)
    torch = _t()
    npdt = None if dtype is None else _np_dtype(dtype)
    with q.loan(shape, npdt, timeout) as out:
        # a plain ndarray on the same memory: the tensor is not an export of `out` (which would
        # pin its slot), and it is emptied below before the message is published
        arr = plain_alias(q, out)
        t = _from_numpy(arr)
        del arr
        try:
            yield t
        finally:
            with torch.no_grad():
                t.set_(torch.empty(0, dtype=t.dtype))


loan_tensor = loan

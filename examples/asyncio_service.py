"""Example -- an asyncio service in front of a compute process, over two ndshm queues.

The service (one event loop) takes requests from many client coroutines, sends each as an array
through ``requests`` with ``await put_async``, and a dispatcher coroutine reads the answers with
``async for arr in answers`` and resolves each client's future. The compute process reads the
requests zero-copy (``for view in requests.receiving():``) and answers through ``answers``. It
registers as the consumer of ``requests``: if it dies, a service blocked on a full ``requests``
queue gets ``ShutDown`` instead of waiting for ever. Nothing blocks the event loop, and a client
that gives up (``asyncio.wait_for`` timing out) cancels its wait without losing a message or
leaving a slot claimed.

    python examples/asyncio_service.py
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import sys
from typing import Any, Dict

import numpy as np

try:
    import ndshm
except ImportError:  # a source checkout without an install
    import os

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pybind"))
    import ndshm


def compute(requests: ndshm.Queue, answers: ndshm.Queue) -> None:
    requests.register_consumer()
    answers.register_producer()  # the service's `async for` ends once this process is gone
    for view in requests.receiving():  # zero copy; ends when the service shuts `requests` down
        req_id, x = int(view[0]), view[1:]
        answers.put(np.concatenate(([req_id], np.sqrt(x))))


async def serve(n_clients: int) -> Dict[str, Any]:
    requests = ndshm.Queue(slots=8, slot_bytes=4096)
    answers = ndshm.Queue(slots=8, slot_bytes=4096)
    requests.expect_consumers(1)
    answers.expect_producers(1)
    worker = mp.get_context("spawn").Process(target=compute, args=(requests, answers))
    worker.start()
    pending: Dict[int, asyncio.Future[np.ndarray]] = {}

    async def dispatch() -> None:
        async for arr in answers:  # ends when the compute process has exited
            pending.pop(int(arr[0])).set_result(arr[1:])

    async def client(i: int) -> float:
        fut = asyncio.get_running_loop().create_future()
        pending[i] = fut
        await requests.put_async(np.concatenate(([i], np.full(100, float(i * i)))))
        return float((await fut).mean())

    dispatcher = asyncio.create_task(dispatch())
    results = await asyncio.gather(*(client(i) for i in range(n_clients)))
    # a client that gives up: its wait is cancelled, nothing is taken
    try:
        await asyncio.wait_for(answers.get_async(), timeout=0.05)
        gave_up = False
    except asyncio.TimeoutError:
        gave_up = True
    requests.shutdown()  # the compute process drains, then its receiving() loop ends
    await dispatcher
    await asyncio.get_running_loop().run_in_executor(None, worker.join)
    requests.close()
    answers.close()
    return {"answers_ok": results == [float(i) for i in range(n_clients)], "clients": n_clients,
            "gave_up_cleanly": gave_up, "worker_exit": worker.exitcode}


def main(n_clients: int = 200) -> Dict[str, Any]:
    return asyncio.run(serve(n_clients))


if __name__ == "__main__":
    r = main()
    print(f"{r['clients']} clients answered correctly: {r['answers_ok']}; a timed-out wait left nothing behind: "
          f"{r['gave_up_cleanly']}; compute process exit code {r['worker_exit']}")

"""Fan-out of 1 MiB frames to 3 subscriber processes: ndshm.Broadcast against 3 ndshm Queues, multiprocessing.Queue x3 and faster-fifo x3.

One producer and 3 subscriber processes (fork), 1 MiB float32 frames, every frame to every subscriber:
- ``ndshm Broadcast loan+receive``: the producer writes the frame in place in the loaned slot (here it
  writes only the 16-byte stamp: the hand-off cost; a camera or decoder would write the frame there),
  each subscriber reads it in place (``receive``): no copy anywhere;
- ``ndshm Broadcast put+receive``: the producer copies a ready frame in (one copy for all subscribers);
- ``ndshm Queue x3 put+receive``: one queue per subscriber, 3 puts per frame (3 copies), read in place;
- ``multiprocessing.Queue x3`` / ``faster_fifo.Queue x3``: one queue per subscriber, 3 puts (pickled).
Throughput: the producer sends as fast as it can; frames/s from the producer's first send to the last
subscriber holding the last frame. Latency: frames paced 2 ms apart (500 fps); from just before the
send call to each subscriber holding the data (inside its ``receive`` block), on the shared monotonic
clock; p50/p99 per subscriber. A channel slower than 2 ms per frame is paced at 2x its own frame time.

    python bench/bench_broadcast.py [--quick | --smoke] [--json PATH]
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import _common as C
from _common import MiB, np, ndshm

FORK = mp.get_context("fork")
F4, I8 = np.float32, np.int64
CLOCK = time.perf_counter_ns  # CLOCK_MONOTONIC on Linux: one clock for every process
NSUB = 3
SLOTS = 8
STOP = -1
BCAST = "ndshm Broadcast loan+receive"
METHODS = [BCAST, "ndshm Broadcast put+receive", "ndshm Queue x3 put+receive", "multiprocessing.Queue x3",
           "faster_fifo.Queue x3"]
REF_Q, REF_MP = "ndshm Queue x3 put+receive", "multiprocessing.Queue x3"
TARGET_Q, TARGET_MP = 3.0, 50.0
TIMEOUT = 120.0


class Channel:
    """One way of fanning a frame out; ``send`` in the producer, ``receiver(k)`` in subscriber k."""

    def __init__(self, method: str, nbytes: int) -> None:
        self.method, self.nbytes, self.n = method, nbytes, nbytes // 4
        self.b: Any = None
        self.qs: List[Any] = []
        if method.startswith("ndshm Broadcast"):
            self.b = ndshm.Broadcast(slots=SLOTS, slot_bytes=nbytes)
            self.send = self._send_loan if method == BCAST else self._send_bput
        elif method.startswith("ndshm Queue"):
            self.qs = [ndshm.Queue(slots=SLOTS, slot_bytes=nbytes) for _ in range(NSUB)]
            self.send = self._send_qput
        elif method.startswith("multiprocessing"):
            self.qs = [FORK.Queue(maxsize=SLOTS) for _ in range(NSUB)]
            self.send = self._send_pickle
        elif method.startswith("faster_fifo"):
            import faster_fifo

            self.qs = [faster_fifo.Queue(max_size_bytes=SLOTS * (nbytes + 4096)) for _ in range(NSUB)]
            self.send = self._send_pickle
        else:
            raise ValueError(method)

    # producer side
    def _send_loan(self, src: np.ndarray, seq: int, ts: int) -> None:
        with self.b.loan(src.shape, F4, timeout=TIMEOUT) as out:
            stamp = out[:4].view(I8)
            stamp[0], stamp[1] = ts, seq
            del stamp

    def _send_bput(self, src: np.ndarray, seq: int, ts: int) -> None:
        stamp = src[:4].view(I8)
        stamp[0], stamp[1] = ts, seq
        self.b.put(src, timeout=TIMEOUT)

    def _send_qput(self, src: np.ndarray, seq: int, ts: int) -> None:
        stamp = src[:4].view(I8)
        stamp[0], stamp[1] = ts, seq
        for q in self.qs:
            q.put(src, timeout=TIMEOUT)

    def _send_pickle(self, src: np.ndarray, seq: int, ts: int) -> None:
        # a frame of its own: multiprocessing.Queue pickles in a feeder thread, after put returns
        frame = src.copy() if self.method.startswith("multiprocessing") else src
        stamp = frame[:4].view(I8)
        stamp[0], stamp[1] = ts, seq
        for q in self.qs:
            q.put(frame, timeout=TIMEOUT)

    # subscriber side: a function returning (ts, seq) of the next frame, and the time it held it
    def receiver(self, k: int) -> Callable[[], Tuple[int, int, int]]:
        # a Broadcast subscription and an ndshm Queue both read in place with receive()
        src = self.b.subscribe() if self.b is not None else self.qs[k]
        if self.b is not None or self.method.startswith("ndshm"):
            def recv() -> Tuple[int, int, int]:
                with src.receive(timeout=TIMEOUT) as v:
                    t = CLOCK()
                    st = v[:4].view(I8)
                    ts, seq = int(st[0]), int(st[1])
                    del st
                return ts, seq, t
            return recv
        q = self.qs[k]

        def recv() -> Tuple[int, int, int]:
            a = q.get(timeout=TIMEOUT)
            t = CLOCK()
            st = a[:4].view(I8)
            return int(st[0]), int(st[1]), t
        return recv

    def close(self) -> None:
        if self.b is not None:
            self.b.close()
        for q in self.qs:
            if hasattr(q, "close"):
                q.close()


def _subscriber(chan: Channel, k: int, ready: Any, results: Any) -> None:
    recv = chan.receiver(k)
    ready.wait()
    seqs, lats, held = [], [], []
    while True:
        ts, seq, t = recv()
        if seq == STOP:
            break
        seqs.append(seq)
        lats.append(t - ts)
        held.append(t)
    results.put((k, seqs, lats, held))


def fan_out(method: str, nbytes: int, n_burst: int, n_paced: int) -> Dict[str, Any]:
    """One channel, 3 subscriber processes: a burst of ``n_burst`` frames, then ``n_paced`` paced ones."""
    chan = Channel(method, nbytes)
    ready = FORK.Barrier(NSUB + 1)
    results = FORK.SimpleQueue()
    procs = [FORK.Process(target=_subscriber, args=(chan, k, ready, results), daemon=True) for k in range(NSUB)]
    for p in procs:
        p.start()
    try:
        ready.wait(timeout=60)
        src = np.ones(nbytes // 4, F4)
        chan.send(src, 0, CLOCK())  # warm-up frame (the first touch of every slot is not what we measure)
        time.sleep(0.05)
        t0 = CLOCK()
        for i in range(1, n_burst + 1):
            chan.send(src, i, CLOCK())
        burst_send_s = (CLOCK() - t0) / 1e9
        time.sleep(0.2 + burst_send_s)  # let every subscriber drain the burst
        gap = max(0.002, 2 * burst_send_s / max(1, n_burst))
        first_paced = n_burst + 1
        nxt = time.perf_counter()
        for i in range(first_paced, first_paced + n_paced):
            nxt += gap
            while time.perf_counter() < nxt:
                pass
            chan.send(src, i, CLOCK())
        chan.send(src, STOP, CLOCK())
        got = [results.get() for _ in range(NSUB)]
        for p in procs:
            p.join(30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        chan.close()
    per_sub: List[Dict[str, Any]] = []
    ends = []
    for k, seqs, lats, held in sorted(got, key=lambda g: g[0]):
        expect = list(range(0, first_paced + n_paced))
        if seqs != expect:
            raise RuntimeError(f"{method}: subscriber {k} got {len(seqs)} frames, not {len(expect)} in order")
        ends.append(held[n_burst])  # the last frame of the burst (index 0 is the warm-up)
        paced = lats[first_paced:]
        per_sub.append({"p50_us": C.percentile(paced, 50) / 1e3, "p99_us": C.percentile(paced, 99) / 1e3})
    dt = (max(ends) - t0) / 1e9
    return {"frames_per_s": n_burst / dt, "gb_per_s_delivered": n_burst * NSUB * nbytes / dt / 1e9,
            "subscribers": per_sub, "paced_gap_us": gap * 1e6, "frames": n_burst}


def run(mode: str) -> C.Results:
    res = C.Results("broadcast", mode)
    nbytes = MiB
    counts = {"smoke": (20, 10, 5, 5), "quick": (1000, 200, 60, 60), "full": (4000, 500, 300, 300)}[mode]
    ff = C.optional_import("faster_fifo")
    figs: Dict[str, Any] = {}
    for method in METHODS:
        if method.startswith("faster_fifo") and ff is None:
            figs[method] = {"error": "not installed: faster-fifo (pip install faster-fifo)"}
            continue
        fast = method.startswith("ndshm")
        n_burst, n_paced = (counts[0], counts[1]) if fast else (counts[2], counts[3])
        C.progress(f"bench_broadcast: {method}: {n_burst} + {n_paced} frames to {NSUB} subscribers")
        try:
            figs[method] = fan_out(method, nbytes, n_burst, n_paced)
        except Exception as e:
            figs[method] = {"error": C.error_cell(e)}
    bc = figs.get(BCAST, {}).get("frames_per_s")
    rows = []
    for method in METHODS:
        f = figs[method]
        if "error" in f:
            rows.append([method, f["error"]] + [C.NA] * (3 + 2 * NSUB))
            continue
        lat = []
        for s in f["subscribers"]:
            lat += [s["p50_us"], s["p99_us"]]
        rows.append([method, f["frames_per_s"], f["gb_per_s_delivered"], *lat,
                     C.ratio(bc, f["frames_per_s"]) if method != BCAST else C.NA])
    heads = ["method", "frames/s", "GB/s delivered"]
    for k in range(NSUB):
        heads += [f"sub {k} p50 µs", f"sub {k} p99 µs"]
    heads.append("Broadcast ÷ this")
    res.emit(C.table(heads, rows, title=f"Fan-out of {C.human_bytes(nbytes)} frames to {NSUB} subscriber processes",
                     note=("frames/s: every frame to every subscriber, from the producer's first send to the last "
                           "subscriber holding the last frame. Latency: frames paced 2 ms apart (or at 2x the "
                           "channel's own frame time if slower), from just before the send call to each "
                           "subscriber holding the data. 'Broadcast ÷ this' above 1 = Broadcast loan+receive is "
                           "that many times faster.")))
    ratios = []
    for ref, need in ((REF_Q, TARGET_Q), (REF_MP, TARGET_MP)):
        v = figs.get(ref, {}).get("frames_per_s")
        r = bc / v if bc and v else None
        ratios.append([f"Broadcast loan+receive vs {ref}", C.NA if r is None else f"{r:.1f}x",
                       C.NA if r is None else f"≥ {need:g}x {'met' if r >= need else 'MISSED'}"])
        res.data[f"ratio_vs_{'queue3' if ref == REF_Q else 'mpqueue3'}"] = r
    res.emit(C.table(["comparison", "ratio", "target"], ratios, title="Fan-out targets (issue 12)"))
    res.data["fanout_1MiB"] = figs
    return res


def main(argv: Optional[List[str]] = None) -> int:
    return C.main(__doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())

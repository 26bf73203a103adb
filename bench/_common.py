"""Shared plumbing for the ndshm benchmarks.

Timing with interleaved repeats and medians, the machine's own ceilings (memcpy bandwidth,
page-fault cost), Markdown tables with ratio columns, progress lines on stderr, and JSON results.

Every benchmark script is runnable alone (``python bench/bench_x.py [--quick|--smoke]
[--json PATH]``); ``bench/run_all.py`` runs them all in fresh interpreters and merges the JSON.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

try:  # an installed (or editable) ndshm first; the source tree otherwise
    import ndshm  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT / "pybind"))
    import ndshm  # noqa: F401

import numpy as np

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
_T0 = time.perf_counter()
NOT_AVAILABLE = "not available yet"


# ---------------------------------------------------------------- command line and progress

def parse_args(description: str, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """``--quick`` (under a minute for all benchmarks), ``--smoke`` (tiny sizes, proves it runs),
    ``--json PATH`` (write this benchmark's figures there)."""
    p = argparse.ArgumentParser(description=description)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (< 1 minute in all)")
    g.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: only proves the code runs")
    p.add_argument("--json", metavar="PATH", help="write the figures as JSON to PATH")
    args = p.parse_args(argv)
    args.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    return args


def main(doc: str, run: Callable[[str], "Results"], argv: Optional[Sequence[str]] = None) -> int:
    """The command line of one benchmark module: parse ``argv``, ``run(mode)``, write the JSON."""
    args = parse_args(doc.splitlines()[0], argv)
    res = run(args.mode)
    res.write(args.json)
    progress(f"bench_{res.name}: done")
    return 0


def progress(msg: str) -> None:
    """One progress line on stderr, stamped with the seconds since the benchmark started."""
    print(f"[{time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- timing

def median(xs: Iterable[float]) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")


def percentile(xs: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; NaN for no data."""
    if not len(xs):
        return float("nan")
    s = sorted(xs)
    k = min(len(s) - 1, max(0, int(round(q / 100.0 * (len(s) - 1)))))
    return s[k]


def interleaved(cases: Dict[str, Callable[[], Any]], repeats: int, number: int = 1,
                setup: Optional[Dict[str, Callable[[], Any]]] = None) -> Dict[str, float]:
    """Median seconds per call of every case, the cases run in turn within each repeat (ABAB…,
    not AAA…BBB…) so drifting machine load hits all of them alike. ``setup[name]`` runs untimed
    before each timed batch of that case."""
    samples: Dict[str, List[float]] = {name: [] for name in cases}
    clock = time.perf_counter
    for _ in range(repeats):
        for name, fn in cases.items():
            if setup and name in setup:
                setup[name]()
            t = clock()
            for _ in range(number):
                fn()
            samples[name].append((clock() - t) / number)
    return {name: median(s) for name, s in samples.items()}


# ---------------------------------------------------------------- the machine's ceilings

def memcpy_bandwidth(nbytes: int = 64 * MiB, repeats: int = 7) -> float:
    """GB/s of ``np.copyto`` between two pre-touched buffers of ``nbytes`` (this machine's ceiling)."""
    src = np.ones(nbytes, np.uint8)
    dst = np.zeros(nbytes, np.uint8)
    np.copyto(dst, src)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t)
    return nbytes / median(times) / 1e9


def page_fault_us(nbytes: int = 64 * MiB) -> Dict[str, float]:
    """µs per 4 KiB first touch: of fresh anonymous memory (no huge pages) and of a fresh
    ``/dev/shm`` mapping (a new file, then a second mapping of the same, already-present file)."""
    page = mmap.PAGESIZE
    pages = nbytes // page

    def touch(m: mmap.mmap) -> float:
        a = np.frombuffer(m, np.uint8)
        t = time.perf_counter()
        a[::page] = 1
        dt = time.perf_counter() - t
        del a
        return dt

    out: Dict[str, float] = {}
    m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(m, "madvise") and hasattr(mmap, "MADV_NOHUGEPAGE"):
        m.madvise(mmap.MADV_NOHUGEPAGE)
    out["anon_4k_us"] = touch(m) / pages * 1e6
    m.close()
    path = f"/dev/shm/ndshm-bench-pf-{os.getpid()}"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, nbytes)
            m = mmap.mmap(fd, nbytes)
            out["shm_new_4k_us"] = touch(m) / pages * 1e6
            m.close()
            m = mmap.mmap(fd, nbytes)
            out["shm_remap_4k_us"] = touch(m) / pages * 1e6
            m.close()
        finally:
            os.close(fd)
            os.unlink(path)
    except OSError:
        pass
    return out


# ---------------------------------------------------------------- machine and versions

def machine_info() -> Dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) * 1024
    except OSError:
        pass

    def read(path: str) -> str:
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return ""

    try:
        st = os.statvfs(os.environ.get("NDSHM_DIR", "/dev/shm"))
        shm_bytes = st.f_blocks * st.f_frsize
    except OSError:
        shm_bytes = 0
    return {
        "cpu_model": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "machine": platform.machine(),
        "memory_bytes": mem, "shm_dir_bytes": shm_bytes,
        "thp": read("/sys/kernel/mm/transparent_hugepage/enabled"),
        "nr_hugepages": read("/proc/sys/vm/nr_hugepages"),
    }


def versions() -> Dict[str, Optional[str]]:
    from importlib import metadata

    out: Dict[str, Optional[str]] = {
        "python": platform.python_version(), "implementation": platform.python_implementation(),
        "numpy": np.__version__, "ndshm": getattr(ndshm, "__version__", None),
    }
    for dist in ("SharedArray", "faster-fifo", "pyFFTW", "psutil", "matplotlib", "torch",
                 "opencv-python-headless"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def shm_free() -> int:
    try:
        st = os.statvfs(os.environ.get("NDSHM_DIR", "/dev/shm"))
        return st.f_bavail * st.f_frsize
    except OSError:
        return 0


def memory_kib() -> Dict[str, int]:
    """This process's resident memory from /proc/self/status: private (RssAnon), shared-memory
    pages (RssShmem) and the total (VmRSS), in KiB."""
    out = {"VmRSS": 0, "RssAnon": 0, "RssShmem": 0, "RssFile": 0}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in out:
                out[key] = int(line.split()[1])
    return out


# ---------------------------------------------------------------- formatting

def human_bytes(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            v = n / size
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{int(n)} B"


NA = "n/a"  # a cell that does not apply to its row (never a missing measurement)


def fmt(x: Any, digits: int = 3) -> str:
    """A number with ``digits`` significant figures (no exponent for ordinary values); text as is."""
    if x is None:
        return NA
    if isinstance(x, str):
        return x
    if isinstance(x, float) and x != x:
        return NA
    if isinstance(x, int):
        return f"{x:,}"
    ax = abs(x)
    if ax == 0:
        return "0"
    if ax >= 10 ** digits:
        return f"{x:,.0f}"
    if ax < 1e-3:
        return f"{x:.2e}"
    return f"{x:.{digits}g}" if ax < 1 else f"{x:.{max(0, digits - len(str(int(ax))))}f}"


def ratio(x: Optional[float], ref: Optional[float]) -> str:
    """``x / ref`` as ``1.23x``; a dash when either is missing."""
    if x is None or ref is None or x != x or ref != ref or ref == 0:
        return NA
    r = x / ref
    return f"{r:.2f}x" if r < 100 else f"{r:.0f}x"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: Optional[str] = None,
          note: Optional[str] = None, left: int = 1) -> str:
    """A Markdown table; numbers are formatted with :func:`fmt`; the first ``left`` columns (the
    labels) are left-aligned, the figures right-aligned."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(headers)]
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines.append("| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |")
    lines.append("| " + " | ".join(("-" * w if i < left else "-" * (w - 1) + ":") for i, w in enumerate(widths)) + " |")
    for r in cells:
        lines.append("| " + " | ".join((c.ljust(w) if i < left else c.rjust(w)) for i, (c, w) in enumerate(zip(r, widths))) + " |")
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- results

class Results:
    """The figures of one benchmark: ``data`` (JSON-able) and the Markdown ``tables`` it printed."""

    def __init__(self, name: str, mode: str) -> None:
        self.name = name
        self.mode = mode
        self.data: Dict[str, Any] = {}
        self.tables: List[str] = []
        self.started = time.time()

    def emit(self, md: str) -> None:
        """Print a table to stdout now (so a long run shows results as they come) and keep it."""
        self.tables.append(md)
        print(md, flush=True)

    def as_dict(self) -> Dict[str, Any]:
        return {"benchmark": self.name, "mode": self.mode, "seconds": round(time.time() - self.started, 2),
                "data": self.data, "tables": self.tables}

    def write(self, path: Optional[str]) -> None:
        if not path:
            return
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.as_dict(), indent=1, default=_jsonable))


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    return str(x)


def error_cell(e: BaseException, width: int = 120) -> str:
    """How a table cell records an exception: always ``error: Type: message`` (the smoke test looks
    for that prefix, and refuses any other text where a figure belongs)."""
    return f"error: {type(e).__name__}: {e}"[:width]


def guarded(res: Results, section: Callable[[Results, str], None], mode: str) -> None:
    """Run one section of a benchmark; if it fails (a feature half-landed), print why and go on."""
    try:
        section(res, mode)
    except Exception as e:
        import traceback

        traceback.print_exc()
        res.data.setdefault("errors", {})[section.__name__] = f"{type(e).__name__}: {e}"
        res.emit(table(["section", "status"], [[section.__name__, error_cell(e, 200)]],
                       title=f"{res.name}: {section.__name__} failed"))


def has(name: str) -> bool:
    """Whether ndshm already offers ``name`` (features land one by one)."""
    return hasattr(ndshm, name)


def optional_import(module: str) -> Any:
    try:
        return __import__(module)
    except Exception:  # a broken optional install must not end the benchmark
        return None

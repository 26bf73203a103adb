"""Run every ndshm benchmark, print their tables, write bench/results/latest.json and the PNG charts.

Each benchmark runs in a fresh interpreter (so one cannot skew another's memory figures); this
script merges their JSON with the machine's description and the versions of everything compared.

    python bench/run_all.py [--quick | --smoke] [--out DIR] [--only alloc,ipc,queue,broadcast,pool,import,engines] [--no-plots]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import _common as C  # noqa: E402

BENCHMARKS = ["alloc", "ipc", "queue", "broadcast", "pool", "import", "engines"]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats: under a minute")
    g.add_argument("--smoke", action="store_true", help="tiny sizes: proves every benchmark runs")
    p.add_argument("--out", default=str(C.RESULTS_DIR), help="results directory (default: bench/results)")
    p.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset of " + ",".join(BENCHMARKS))
    p.add_argument("--no-plots", action="store_true", help="skip the PNG charts")
    args = p.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {BENCHMARKS}")

    t0 = time.perf_counter()
    C.progress(f"run_all: {mode} mode, {len(names)} benchmark(s), results in {out}")
    report = {"mode": mode, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": C.machine_info(), "versions": C.versions(), "benchmarks": {}, "failed": []}
    C.progress("run_all: measuring the machine's ceilings (memcpy, page faults)")
    report["ceilings"] = {"memcpy_gb_per_s": C.memcpy_bandwidth(16 * C.MiB if mode == "smoke" else 64 * C.MiB),
                          "page_fault": C.page_fault_us(4 * C.MiB if mode == "smoke" else 64 * C.MiB)}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(C.ROOT / "pybind"), env.get("PYTHONPATH")) if x)
    for i, name in enumerate(names, 1):
        C.progress(f"run_all: [{i}/{len(names)}] bench_{name}")
        part = out / f"{name}.json"
        if part.exists():
            part.unlink()
        cmd = [sys.executable, str(BENCH_DIR / f"bench_{name}.py"), "--json", str(part)]
        if mode != "full":
            cmd.append("--" + mode)
        print(f"\n## bench_{name} ({mode})\n", flush=True)
        rc = subprocess.call(cmd, env=env)
        if rc != 0 or not part.exists():
            C.progress(f"run_all: bench_{name} FAILED with exit status {rc}")
            report["failed"].append(name)
            continue
        report["benchmarks"][name] = json.loads(part.read_text())
    report["seconds"] = round(time.perf_counter() - t0, 1)
    import targets

    try:
        report["targets"] = targets.check(report)
        print("\n## Targets\n\n" + targets.table(report), flush=True)
    except Exception as e:  # the figures are worth keeping even if a check trips
        C.progress(f"run_all: checking the targets failed: {type(e).__name__}: {e}")
    latest = out / "latest.json"
    latest.write_text(json.dumps(report, indent=1))
    written = [str(latest)]
    if not args.no_plots:
        C.progress("run_all: drawing the charts")
        try:
            import plots
        except ImportError as e:
            print(f"run_all: no charts: matplotlib is not installed ({e}); pip install matplotlib",
                  file=sys.stderr)
        else:
            written += [str(x) for x in plots.make_all(report, out)]
    C.progress(f"run_all: done in {report['seconds']} s; wrote " + ", ".join(written))
    if report["failed"]:
        print(f"run_all: failed: {', '.join(report['failed'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

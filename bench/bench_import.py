"""Import time: ``import ndshm`` against ``import numpy, cffi``, in fresh interpreters.

Each case runs in a new interpreter (this one's executable), the cases interleaved (ABAB…); the
figures are medians (after an untimed round that fills the bytecode caches): the time of the import statement itself, measured inside the child (wall, and
CPU time, which a loaded machine disturbs far less), and the whole process's wall time (start-up,
import and exit). The target (issue 11): ``import ndshm`` costs at most 40 ms more than
``import numpy, cffi`` on CPython, median of 20 interpreters; it is checked on the CPU time.

    python bench/bench_import.py [--quick | --smoke] [--json PATH]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

import _common as C

CASES = {
    "nothing (python -c pass)": "",
    "import numpy": "import numpy",
    "import numpy, cffi": "import numpy, cffi",
    "import ndshm": "import ndshm",
}
REFERENCE = "import numpy, cffi"
TARGET_MS = 40.0

CHILD = ("import time as _t\n_t0, _c0 = _t.perf_counter(), _t.process_time()\n{stmt}\n"
         "print(_t.perf_counter() - _t0, _t.process_time() - _c0)\n")


def _env() -> Dict[str, str]:
    """The children import the ndshm this benchmark runs with (the source tree if not installed),
    from cached bytecode as an installed package is (pip compiles it): PYTHONDONTWRITEBYTECODE is
    dropped, and an untimed first round writes the caches."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(C.ndshm.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH")) if p)
    return env


def measure(runs: int) -> Dict[str, Dict[str, float]]:
    """Median import and wall milliseconds per case over ``runs`` fresh interpreters each."""
    env = _env()
    imports: Dict[str, List[float]] = {k: [] for k in CASES}
    cpus: Dict[str, List[float]] = {k: [] for k in CASES}
    walls: Dict[str, List[float]] = {k: [] for k in CASES}
    for i in range(runs + 1):
        for label, stmt in CASES.items():
            t = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", CHILD.format(stmt=stmt)], capture_output=True, text=True,
                                 env=env, timeout=120)
            wall = time.perf_counter() - t
            if out.returncode != 0:
                raise RuntimeError(f"{label!r} failed in a fresh interpreter: {out.stderr.strip()[-300:]}")
            if i == 0:  # the warm-up round
                continue
            wall_s, cpu_s = out.stdout.split()[-2:]
            imports[label].append(float(wall_s) * 1e3)
            cpus[label].append(float(cpu_s) * 1e3)
            walls[label].append(wall * 1e3)
    return {k: {"import_ms": C.median(imports[k]), "import_cpu_ms": C.median(cpus[k]),
                "import_p90_ms": C.percentile(imports[k], 90), "wall_ms": C.median(walls[k])} for k in CASES}


def run(mode: str) -> C.Results:
    res = C.Results("import", mode)
    runs = {"full": 20, "quick": 20, "smoke": 3}[mode]
    C.progress(f"bench_import: {len(CASES)} cases x {runs} fresh interpreters")
    figs = measure(runs)
    ref, ref_wall = figs[REFERENCE]["import_cpu_ms"], figs[REFERENCE]["import_ms"]
    extra = figs["import ndshm"]["import_cpu_ms"] - ref
    extra_wall = figs["import ndshm"]["import_ms"] - ref_wall
    res.data.update({"runs": runs, "implementation": C.platform.python_implementation(), "figures": figs,
                     "ndshm_over_numpy_cffi_ms": extra, "ndshm_over_numpy_cffi_wall_ms": extra_wall,
                     "target_ms": TARGET_MS})
    verdict = (("met" if extra <= TARGET_MS else "MISSED") + " on this run"
               if res.data["implementation"] == "CPython" else "the target is CPython's")
    rows = [[label, f["import_cpu_ms"], f["import_ms"], f["import_p90_ms"], f["wall_ms"],
             C.ratio(f["import_cpu_ms"], ref)] for label, f in figs.items()]
    res.emit(C.table(["fresh interpreter", "import CPU ms", "import wall ms", "wall p90", "process wall ms",
                      f"CPU / {REFERENCE}"], rows,
                     title=f"Import time, median of {runs} fresh {res.data['implementation']} interpreters "
                           f"(target: import ndshm ≤ {TARGET_MS:.0f} ms more than {REFERENCE})",
                     note=f"import ndshm costs {extra:+.1f} ms of CPU ({extra_wall:+.1f} ms wall) against {REFERENCE} "
                          f"({verdict}). ndshm imports numpy but not "
                          "cffi: its binding is generated from ndshm.h at build time (out-of-line ABI mode), so "
                          "no C is parsed at import."))
    return res


def main(argv: Optional[List[str]] = None) -> int:
    return C.main(__doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())

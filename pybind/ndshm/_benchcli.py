"""``python -m ndshm bench [--quick]``: run every benchmark in the repository's ``bench/`` directory.

The benchmarks are not part of the installed package: they live next to it in a source checkout
(``pybind/ndshm/../../bench``, which an editable install keeps). ``NDSHM_BENCH_DIR`` points
elsewhere. Results go to ``bench/results/latest.json`` and ``bench/results/*.png``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence


def find_bench_dir() -> Optional[Path]:
    """The repository's bench/ directory, or None when this ndshm is not a source/editable install."""
    candidates = []
    if os.environ.get("NDSHM_BENCH_DIR"):
        candidates.append(Path(os.environ["NDSHM_BENCH_DIR"]))
    candidates.append(Path(__file__).resolve().parent.parent.parent / "bench")
    for c in candidates:
        if (c / "run_all.py").is_file():
            return c
    return None


# Runs bench/run_all.py as a script would run (its directory first on sys.path, __name__ ==
# "__main__"), but with sys.argv[0] set to the command the user typed, so that its --help and
# usage errors name `python -m ndshm bench`, not run_all.py.
# (runpy.run_path would set sys.argv[0] back to the file's path.)
_RUN_AS = ("import __main__, os, sys; path, sys.argv = sys.argv[1], sys.argv[2:]; sys.path[0] = os.path.dirname(path); "
           "__main__.__file__ = path; exec(compile(open(path, 'rb').read(), path, 'exec'), __main__.__dict__)")


def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m ndshm bench") -> int:
    """Run bench/run_all.py with ``argv`` (``--quick``, ``--smoke``, ``--out DIR``, ``--only ...``);
    returns its exit status, or 2 with a message when bench/ cannot be found. ``prog`` is how its
    help names the command."""
    args: List[str] = list(sys.argv[1:] if argv is None else argv)
    bench = find_bench_dir()
    if bench is None:
        here = Path(__file__).resolve().parent
        print(f"{prog}: the benchmarks were not found. They live in the ndshm source repository's bench/ "
              f"directory (looked in {here.parent.parent / 'bench'}"
              + (f" and NDSHM_BENCH_DIR={os.environ['NDSHM_BENCH_DIR']}" if os.environ.get("NDSHM_BENCH_DIR") else "")
              + "). Run this from a source checkout with an editable install (`make bench`, or "
              "`pip install -e '.[bench]'`), or set NDSHM_BENCH_DIR=/path/to/ndshm/bench.", file=sys.stderr)
        return 2
    env = dict(os.environ)
    pkg_parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH")) if p)
    return subprocess.call([sys.executable, "-c", _RUN_AS, str(bench / "run_all.py"), prog, *args], env=env)

"""``make test``'s Python matrix: the suite on every interpreter this machine has, in parallel.

Run by the Makefile (``make test``; ``make test-plan`` prints the plan without running it), with
the Makefile's variables as options. Standard library only: any CPython 3.9+ runs it.

Runs (each in its own venv, made or reused here, and its own log under ``build/matrix/``):

* **main**: every optional package (the Makefile's ``$(VENV)``, made by its ``.stamp`` rule), on the
  newest CPython for which pip finds every one of them (``--main-packages``); every test, slow ones too,
  but those of ``tests/system`` and ``tests/docs``, which
* **system** runs at the same time, in the same venv: the wheel and sdist builds and the installed-wheel
  suite, mypy, the docs site in a browser, the examples, the benchmarks' smoke run.
* one run per other CPython 3.9+ found (``python3.X`` on ``PATH``, ``$(pyenv root)/versions/3.*``),
  with the newest NumPy pip gives it and cffi, pytest, pytest-xdist only (``NDSHM_TEST_MINIMAL_DEPS``).
* **floor**: ``numpy==<the floor pyproject declares>``, on the newest CPython with a wheel of it.
* **pypy**: ``pypy3`` (the same libndshm.so).
* **asan-cp3.X**, **asan-main**: the C-touching tests (``--sanitize-tests``) against
  ``build/asan/libndshm.so`` (AddressSanitizer and UBSan) with their runtimes preloaded into the
  interpreter (``PYTHONMALLOC=malloc``, so the sanitizer sees every allocation, NumPy's and
  CPython's too), on the newest other CPython (the newest NumPy); on the main run's venv, only the
  tests that need its torch and OpenCV, and the zero-copy exports into them (``test_torch``,
  ``test_interop``): the rest would run twice. The tests marked ``mlock``
  are left out there: ASan's runtime makes mlock() a no-op.
* **debug-cp3.X**: the same tests under ``PYTHONMALLOC=debug`` (freed memory is overwritten with a
  pattern, so a read after free sees garbage), on the next newest CPython.

The minimal runs leave out the tests marked ``slow``; the main and system runs have them all. At the end a table
says what ran (interpreter, NumPy, counts) and what could not be found or set up. Under ``CI`` an
interpreter pyproject's classifiers name that is missing, or a run that cannot be set up, fails.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
MINIMAL_DEPS_VAR = "NDSHM_TEST_MINIMAL_DEPS"
MIN_VERSION = (3, 9)
# The main venv's second run: the checks of the product as a whole (tests/system: packaging, typing,
# examples, the benchmarks' smoke run; tests/docs: the site, README and guide blocks, the C example).
SYSTEM_DIRS = ("system", "docs")
# The order runs start in, two at a time: the longest first (seconds of the runs on this 2-core
# machine, from make test's table), so none of them starts last and ends alone.
EXPECTED_SECONDS = {"pypy": 240, "main": 150, "system": 150, "asan-main": 40}
PROBE = "import platform, sys; print(platform.python_implementation(), platform.python_version())"


@dataclass(frozen=True)
class Interpreter:
    exe: str
    impl: str  # "CPython" or "PyPy"
    version: Tuple[int, ...]

    @property
    def minor(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"

    def __str__(self) -> str:
        return f"{self.impl} {'.'.join(map(str, self.version))}"


def probe(exe: str) -> Optional[Interpreter]:
    """What ``exe`` is, or None where it does not run (a pyenv shim of a version not selected)."""
    try:
        proc = subprocess.run([exe, "-c", PROBE], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    parts = proc.stdout.split()
    if proc.returncode != 0 or len(parts) != 2:
        return None
    return Interpreter(exe, parts[0], tuple(int(x) for x in re.findall(r"\d+", parts[1])[:3]))


def candidate_executables() -> List[str]:
    """``python3`` and ``python3.X`` on PATH, and ``versions/3.*/bin/python3`` of a pyenv install."""
    found: List[str] = []
    for d in os.environ.get("PATH", "").split(os.pathsep):
        try:
            names = sorted(os.listdir(d or "."))
        except OSError:
            continue
        found += [os.path.join(d, n) for n in names if re.fullmatch(r"python3(\.\d+)?", n)]
    root = None
    if shutil.which("pyenv"):
        out = subprocess.run(["pyenv", "root"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        root = out.stdout.strip() if out.returncode == 0 else None
    root = root or os.environ.get("PYENV_ROOT")
    if root:
        found += sorted(p for p in glob.glob(os.path.join(root, "versions", "3.*", "bin", "python3"))
                        if re.fullmatch(r"3\.\d+\.\d+", Path(p).parent.parent.name))
    return list(dict.fromkeys(found))


def discover_cpythons() -> Dict[str, Interpreter]:
    """The newest working CPython of each minor version from 3.9 up, by "3.X"."""
    best: Dict[str, Interpreter] = {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        found = list(pool.map(probe, candidate_executables()))
    for it in found:
        if it is None or it.impl != "CPython" or it.version[:2] < MIN_VERSION:
            continue
        if it.minor not in best or it.version > best[it.minor].version:
            best[it.minor] = it
    return dict(sorted(best.items(), key=lambda kv: kv[1].version))


def declared_versions(pyproject: Path) -> Tuple[List[str], bool]:
    """The CPython minor versions pyproject's classifiers name, and whether they name PyPy."""
    text = pyproject.read_text()
    minors = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', text)
    return minors, "Programming Language :: Python :: Implementation :: PyPy" in text


def pip_finds(python: str, requirements: Sequence[str], binary_only: bool = False) -> Tuple[bool, str]:
    """Whether pip (of ``python``) finds an installable version of every one of ``requirements``
    for that interpreter; no install, no dependencies (a dry run reads the index's metadata)."""
    cmd = [python, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed", "-q",
           "--disable-pip-version-check"] + (["--only-binary=:all:"] if binary_only else []) + list(requirements)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False, "pip timed out"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
    return proc.returncode == 0, (errors[0] if errors else proc.stderr.strip()[-300:])


# ---------------------------------------------------------------------------------- runs


@dataclass
class Venv:
    path: Path
    interpreter: Interpreter
    requirements: List[str]
    make_target: bool = False  # made by the Makefile's $(VENV)/.stamp rule instead
    lock: threading.Lock = field(default_factory=threading.Lock)
    ready: Optional[bool] = None
    error: str = ""

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python")


@dataclass
class Run:
    name: str
    venv: Venv
    what: str  # which tests, for the table
    pytest_args: List[str]
    env: Dict[str, str]
    numpy: str = "?"
    counts: Dict[str, int] = field(default_factory=dict)
    rc: Optional[int] = None
    seconds: float = 0.0
    cpu: float = 0.0  # pytest's CPU time (user + system, its workers and their children included)
    setup_failed: str = ""
    log: Optional[Path] = None
    pytest_from: int = 0  # where pytest's output starts in the log


class Matrix:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.ci = bool(os.environ.get("CI"))
        self.notes: List[str] = []      # reported, never a failure
        self.missing: List[str] = []    # expected (classifiers) but not found: a failure under CI
        self.runs: List[Run] = []
        self.print_lock = threading.Lock()
        self.children: List[subprocess.Popen] = []

    def say(self, text: str) -> None:
        with self.print_lock:
            print(text, flush=True)

    # -------------------------------------------------------------------------- planning

    def plan(self) -> None:
        o = self.opts
        cps = discover_cpythons()
        declared, pypy_declared = declared_versions(ROOT / "pyproject.toml")
        for minor in declared:
            if minor not in cps:
                self.missing.append(f"CPython {minor} (pyproject's classifiers name it): no python{minor} on PATH "
                                    "or in pyenv")
        for minor in cps:
            if minor not in declared:
                self.notes.append(f"CPython {minor} is tested here but pyproject's classifiers do not name it")
        if not cps:
            self.missing.append("no CPython 3.9+ at all")
            return
        minimal_pkgs = ["numpy", "cffi", "pytest", "pytest-xdist"]
        not_slow = ["-m", "not slow"]

        # The main run: the newest CPython pip has every optional package for (or --main-python).
        # The NumPy floor: on the newest CPython with a wheel of it. Both asked of pip at once.
        newest_first = sorted(cps.values(), key=lambda i: i.version, reverse=True)
        with ThreadPoolExecutor(max_workers=2) as pool:
            main_probe = pool.submit(self.find_main, newest_first)
            floor_probe = pool.submit(self.find_floor, newest_first)
            main_it, floor_it = main_probe.result(), floor_probe.result()
        if main_it is not None:
            # One venv, two runs at the same time: the unit suite (every room of the package), and
            # the system checks (builds, mypy, the docs site, the examples, the benchmarks' smoke run),
            # whose few long serial tests would otherwise hold the main run's end back.
            main_venv = Venv(ROOT / o.venv, main_it, [], make_target=True)
            self.runs.append(Run("main", main_venv, "all but system/ and docs/, every optional package",
                                 [f"--ignore=tests/{d}" for d in SYSTEM_DIRS] + ["tests"], {}))
            self.runs.append(Run("system", main_venv, "system/ and docs/, every optional package",
                                 [f"tests/{d}" for d in SYSTEM_DIRS], {}))
        venvs: Dict[str, Venv] = {}
        for minor, it in cps.items():
            if main_it is not None and it.minor == main_it.minor:
                continue
            venvs[minor] = Venv(ROOT / f"{o.venv_prefix}{minor}", it, minimal_pkgs)
            self.runs.append(Run(f"cp{minor}", venvs[minor], "all but slow", not_slow + ["tests"],
                                 {MINIMAL_DEPS_VAR: f"the CPython {minor} run has numpy, cffi and pytest only; "
                                                    "the main run covers it"}))

        if floor_it is None:
            self.missing.append(f"numpy=={o.numpy_floor}: no CPython here has a wheel of it")
        else:
            self.runs.append(Run("floor", Venv(ROOT / o.floor_venv, floor_it,
                                               [f"numpy=={o.numpy_floor}", "cffi", "pytest", "pytest-xdist"]),
                                 "all but slow", not_slow + ["tests"],
                                 {MINIMAL_DEPS_VAR: f"the numpy=={o.numpy_floor} run has numpy, cffi and pytest "
                                                    "only; the main run covers it"}))

        # PyPy: loads the very same libndshm.so.
        pypy_exe = shutil.which(o.pypy)
        pypy_it = probe(pypy_exe) if pypy_exe else None
        if pypy_it is None or pypy_it.impl != "PyPy":
            (self.missing if pypy_declared else self.notes).append(
                f"PyPy: {o.pypy} is not installed (apt-get install -y pypy3 pypy3-venv)")
        else:
            self.runs.append(Run("pypy", Venv(ROOT / o.pypy_venv, pypy_it, ["numpy", "pytest", "pytest-xdist"]),
                                 "all but slow", not_slow + ["tests"],
                                 {MINIMAL_DEPS_VAR: "the PyPy run has no build of it; the CPython run covers it"}))

        # Memory errors: the sanitizer build and the debug allocator, on the newest other CPythons
        # (NumPy's newest) and, for the sanitizers, on the main run's venv too.
        others = sorted(venvs.values(), key=lambda v: v.interpreter.version, reverse=True)
        san_tests = not_slow + list(o.sanitize_tests)
        # ASan's runtime turns mlock() into a no-op: the tests of what it did run everywhere else.
        asan_tests = ["-m", "not slow and not mlock"] + list(o.sanitize_tests)
        asan_env = {"LD_PRELOAD": o.asan_preload, "ASAN_OPTIONS": "detect_leaks=0",
                    "UBSAN_OPTIONS": "print_stacktrace=1", "PYTHONMALLOC": "malloc",
                    "NDSHM_LIBRARY": str((ROOT / o.asan_lib).resolve())}
        asan_on = ([others[0]] if others else []) + ([self.runs[0].venv] if main_it is not None else [])
        for v in asan_on:
            env = dict(asan_env)
            if not v.make_target:
                env[MINIMAL_DEPS_VAR] = f"the sanitizer run on CPython {v.interpreter.minor} has numpy, cffi and pytest only"
                self.runs.append(Run(f"asan-cp{v.interpreter.minor}", v, "C-touching, ASan+UBSan build", asan_tests, env))
            elif others:
                # The newest CPython's sanitizer run has every C-touching test but those needing the
                # main venv's torch and OpenCV: this one runs just those, with the zero-copy exports
                # into torch and OpenCV (test_torch, test_interop), so no test runs twice under ASan.
                self.runs.append(Run("asan-main", v, "C-touching tests of torch and OpenCV, and their exports, ASan+UBSan",
                                     asan_tests[:2] + ["-k", "torch or cv2 or interop"] + list(o.sanitize_tests)
                                     + ["tests/engines/test_torch.py", "tests/engines/test_interop.py"], env))
            else:
                self.runs.append(Run("asan-main", v, "C-touching, ASan+UBSan build", asan_tests, env))
        debug_on = others[1] if len(others) > 1 else (others[0] if others else
                                                     (self.runs[0].venv if main_it is not None else None))
        if debug_on is not None:
            env = {"PYTHONMALLOC": "debug"}
            if not debug_on.make_target:
                env[MINIMAL_DEPS_VAR] = "the PYTHONMALLOC=debug run has numpy, cffi and pytest only"
            self.runs.append(Run(f"debug-cp{debug_on.interpreter.minor}", debug_on,
                                 "C-touching, PYTHONMALLOC=debug", san_tests, env))

    def find_main(self, newest_first: Sequence[Interpreter]) -> Optional[Interpreter]:
        o = self.opts
        if o.main_python:
            it = probe(o.main_python)
            if it is None:
                self.missing.append(f"the main run's interpreter {o.main_python} does not run")
            return it
        for it in newest_first:
            if not o.main_packages or pip_finds(it.exe, o.main_packages)[0]:
                return it
            for pkg in o.main_packages:  # which one is missing, to say so
                ok, why = pip_finds(it.exe, [pkg])
                if not ok:
                    self.notes.append(f"the main run is not on {it}: pip finds no {pkg} for it ({why})")
                    break
            else:
                self.notes.append(f"the main run is not on {it}: pip cannot install its packages together there")
        return None

    def find_floor(self, newest_first: Sequence[Interpreter]) -> Optional[Interpreter]:
        for it in newest_first:
            if pip_finds(it.exe, [f"numpy=={self.opts.numpy_floor}"], binary_only=True)[0]:
                return it
            self.notes.append(f"the numpy=={self.opts.numpy_floor} run is not on {it}: no wheel of it for it")
        return None

    # -------------------------------------------------------------------------- running

    def setup(self, v: Venv, log) -> bool:
        """Make ``v`` once (the runs sharing it wait); False if it cannot be made."""
        with v.lock:
            if v.ready is None:
                v.ready, v.error = self._make_venv(v, log)
            elif not v.ready:
                log.write(f"setup of {v.path.name} failed before: {v.error}\n")
            return v.ready

    def _make_venv(self, v: Venv, log) -> Tuple[bool, str]:
        exe = v.python
        if os.path.exists(exe):
            got = probe(exe)
            if got is None or got.version != v.interpreter.version:
                log.write(f"{v.path.name} holds {got}, not {v.interpreter}: made anew\n")
                shutil.rmtree(v.path)
        if v.make_target:
            cmd = [self.opts.make, "--no-print-directory", f"VENV={self.opts.venv}", f"PYTHON={v.interpreter.exe}",
                   f"{self.opts.venv}/.stamp"]
            return self._step(cmd, log)
        stamp = v.path / ".ndshm-stamp"
        want = f"{v.interpreter} {' '.join(v.requirements)}\n"
        if stamp.exists() and stamp.read_text() == want:
            log.write(f"{v.path.name}: up to date ({want.strip()})\n")
            return True, ""
        for cmd in ([v.interpreter.exe, "-m", "venv", "--clear", str(v.path)],
                    # --no-compile: the runs read bytecode from build/pycache (PYTHONPYCACHEPREFIX), never
                    # from site-packages' __pycache__, so compiling there at install is 4 s of waste a venv
                    [exe, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile",
                     *v.requirements]):
            ok, why = self._step(cmd, log)
            if not ok:
                return False, why
        stamp.write_text(want)
        return True, ""

    def _step(self, cmd: Sequence[str], log, env: Optional[Dict[str, str]] = None,
              timeout: float = 1800) -> Tuple[bool, str]:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        rc = self._call(cmd, log, env, timeout)
        return rc == 0, f"`{shlex.join(cmd)}` exited {rc}"

    def _call(self, cmd: Sequence[str], log, env: Optional[Dict[str, str]], timeout: float,
              run: Optional[Run] = None) -> int:
        """Run ``cmd`` (its own process group) into ``log``; its exit code. Its CPU time, and that
        of the processes it waited for, is added to ``run.cpu``: the figure the machine's other
        load does not change much, for sizing CI."""
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(ROOT),
                             env=env, start_new_session=True)
        with self.print_lock:
            self.children.append(p)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                p.returncode = os.waitstatus_to_exitcode(status)
                if run is not None:
                    run.cpu += usage.ru_utime + usage.ru_stime
                return p.returncode
            if time.monotonic() > deadline:
                log.write(f"\n*** still running after {timeout:.0f} s: killed\n")
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                return -9
            time.sleep(0.1)

    def execute(self, run: Run) -> None:
        logdir = ROOT / self.opts.logdir
        logdir.mkdir(parents=True, exist_ok=True)
        run.log = logdir / f"{run.name}.log"
        t0 = time.monotonic()
        with open(run.log, "w") as log:
            main = next((r.venv for r in self.runs if r.name == "main"), None)
            if main is not None and run.name != "pypy" and main is not run.venv:
                # Some tests of every run use the main venv's packages (test_compat_sharedarray runs
                # the real SharedArray there): it is made first, and the others wait for it.
                self.setup(main, log)
            if not self.setup(run.venv, log):
                run.setup_failed = run.venv.error
            else:
                ver = subprocess.run([run.venv.python, "-c", "import numpy; print(numpy.__version__)"],
                                     capture_output=True, text=True, stdin=subprocess.DEVNULL)
                run.numpy = ver.stdout.strip() if ver.returncode == 0 else "(none)"
                env = dict(os.environ)
                # The tests' own make commands are a user's: no variables from this make's command line
                # (make puts them in MAKEFLAGS after " -- ", and in the environment).
                flags = env.get("MAKEFLAGS", "")
                overrides = flags.split(" -- ", 1)[1] if " -- " in flags else ""
                for var in [MINIMAL_DEPS_VAR, "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"] + \
                        re.findall(r"(?:^|\s)(\w+)=", overrides):
                    env.pop(var, None)
                env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "pybind"), env.get("PYTHONPATH")) if p)
                # Bytecode of the package and the tests is cached under build/ (the tree stays clean):
                # with PYTHONDONTWRITEBYTECODE every one of the ~280 interpreters a run starts would
                # compile ndshm again (55 ms of a 95 ms import), and pytest rewrite every test file.
                env.pop("PYTHONDONTWRITEBYTECODE", None)
                env["PYTHONPYCACHEPREFIX"] = str(ROOT / "build" / "pycache")
                env.update(run.env)
                cmd = [run.venv.python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                       "-n", str(self.workers(run)), "--dist", "loadfile", "--durations=40", *run.pytest_args]
                self.say(f"matrix: {run.name}: {run.venv.interpreter}, NumPy {run.numpy}: "
                         f"{' '.join(f'{k}={v}' for k, v in run.env.items() if k != MINIMAL_DEPS_VAR)} "
                         f"{shlex.join(cmd[1:])}".replace("  ", " "))
                log.flush()
                run.pytest_from = log.tell()
                log.write(f"$ {' '.join(f'{k}={shlex.quote(v)}' for k, v in run.env.items())} {shlex.join(cmd)}\n")
                log.flush()
                run.rc = self._call(cmd, log, env, self.opts.timeout, run)
        run.seconds = time.monotonic() - t0
        raw = run.log.read_bytes()
        text = raw.decode(errors="replace")
        tail = [line for line in text.splitlines() if re.search(r"\b\d+ (passed|failed|error)", line)]
        if tail:
            run.counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)",
                                                              tail[-1])}
        with self.print_lock:
            print(f"\n======== {run.name} ({run.venv.interpreter}, NumPy {run.numpy}, {run.what}): "
                  f"{self.verdict(run)} in {run.seconds:.0f} s; log {run.log.relative_to(ROOT)}", flush=True)
            # the setup's output stays in the log unless it failed; pytest's is shown whole
            print(raw[run.pytest_from:].decode(errors="replace").rstrip() if not run.setup_failed else text.rstrip()[-6000:], flush=True)

    def workers(self, run: Run) -> str:
        """pytest-xdist workers of ``run``: more for the main venv's two runs, whose tests mostly wait
        (clusters starting, children, timeouts) rather than compute."""
        return self.opts.main_workers if run.name in ("main", "system") else self.opts.workers

    def verdict(self, run: Run) -> str:
        if run.setup_failed:
            return "COULD NOT BE SET UP" + (" (fails under CI)" if self.ci else " (skipped outside CI)")
        return "ok" if run.rc == 0 else f"FAILED (pytest exit {run.rc})"

    def run_all(self) -> int:
        # The longest first: PyPy's, the main run and the system run, the sanitizer runs, then the others.
        order = sorted(self.runs, key=lambda r: -EXPECTED_SECONDS.get(r.name, 130 if r.name.startswith("asan") else 90))
        t0 = time.monotonic()
        try:
            with ThreadPoolExecutor(max_workers=self.opts.jobs) as pool:
                list(pool.map(self.execute, order))
        except KeyboardInterrupt:
            for p in self.children:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
            raise
        return self.report(time.monotonic() - t0)

    # -------------------------------------------------------------------------- the table

    def report(self, seconds: float) -> int:
        rows = [("run", "interpreter", "NumPy", "tests", "passed", "failed", "skipped", "errors", "time", "CPU",
                 "result")]
        for r in self.runs:
            c = r.counts
            rows.append((r.name, str(r.venv.interpreter), r.numpy, r.what, str(c.get("passed", 0)),
                         str(c.get("failed", 0)), str(c.get("skipped", 0)), str(c.get("error", 0) + c.get("errors", 0)),
                         f"{r.seconds:.0f} s", f"{r.cpu:.0f} s", self.verdict(r)))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        print(f"\n==== make test: the Python suite on {len(self.runs)} runs in {seconds:.0f} s "
              f"({self.opts.jobs} at a time, pytest -n {self.opts.workers}, main and system -n {self.opts.main_workers}; "
              f"pytest's CPU time "
              f"{sum(r.cpu for r in self.runs):.0f} s; time includes making the venv) ====")
        for row in rows:
            print("  ".join(cell.rjust(w) if cell.isdigit() else cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        for m in self.missing:
            print(f"NOT FOUND: {m}" + (" (fails under CI)" if self.ci else ""))
        for n in sorted(self.notes):
            print(f"note: {n}")
        failed = [r for r in self.runs if not r.setup_failed and r.rc != 0]
        unset = [r for r in self.runs if r.setup_failed]
        bad = bool(failed) or (self.ci and bool(unset or self.missing)) or not self.runs
        print(("FAILED: " + ", ".join(r.name for r in failed + (unset if self.ci else []))
               + (" and missing interpreters" if self.ci and self.missing else "")) if bad else
              "make test: every run passed")
        return 1 if bad else 0

    def print_plan(self) -> int:
        for r in self.runs:
            v = r.venv
            print(f"{r.name}: {v.interpreter} ({v.interpreter.exe}) in {v.path.relative_to(ROOT)}"
                  f" [{'make ' + self.opts.venv + '/.stamp' if v.make_target else ' '.join(v.requirements)}]"
                  f" {' '.join(f'{k}={shlex.quote(x)}' for k, x in r.env.items())} pytest {shlex.join(r.pytest_args)}")
        for m in self.missing:
            print(f"NOT FOUND: {m}")
        for n in sorted(self.notes):
            print(f"note: {n}")
        return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plan", action="store_true", help="print the runs and exit")
    ap.add_argument("--venv", default=".venv", help="the main run's venv (the Makefile's $(VENV))")
    ap.add_argument("--venv-prefix", default=".venv-cp", help="the other CPythons' venvs: PREFIX3.X")
    ap.add_argument("--floor-venv", default=".venv-oldnumpy")
    ap.add_argument("--pypy-venv", default=".venv-pypy")
    ap.add_argument("--pypy", default="pypy3")
    ap.add_argument("--main-python", default="", help="the main run's interpreter (default: found)")
    ap.add_argument("--main-packages", default="", help="the optional packages the main run needs")
    ap.add_argument("--numpy-floor", required=True)
    ap.add_argument("--asan-lib", default="build/asan/libndshm.so")
    ap.add_argument("--asan-preload", default="", help="the sanitizer runtimes, for LD_PRELOAD")
    ap.add_argument("--sanitize-tests", default="", help="the test files of the sanitizer and debug runs")
    ap.add_argument("--only", default="", help="run only these runs (names as the plan shows them, "
                                               "comma-separated)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--workers", default="2", help="pytest-xdist workers per run")
    ap.add_argument("--main-workers", default="3", help="pytest-xdist workers of the main and system runs")
    ap.add_argument("--timeout", type=float, default=2400, help="seconds one run may take")
    ap.add_argument("--logdir", default="build/matrix")
    ap.add_argument("--make", default=os.environ.get("MAKE", "make"))
    opts = ap.parse_args(argv)
    opts.main_packages = opts.main_packages.split()
    opts.sanitize_tests = opts.sanitize_tests.split()
    m = Matrix(opts)
    m.plan()
    if opts.only:
        names = opts.only.split(",")
        unknown = set(names) - {r.name for r in m.runs}
        if unknown:
            ap.error(f"--only: no run named {', '.join(sorted(unknown))} (make test-plan lists them)")
        m.runs = [r for r in m.runs if r.name in names]
    return m.print_plan() if opts.plan else m.run_all()


if __name__ == "__main__":
    sys.exit(main())

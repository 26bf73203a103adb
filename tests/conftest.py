"""Shared test plumbing: run code in a real second interpreter, and unique segment names.

The tests live in one folder per room of the package they test (``binding/``, ``segment/``,
``rings/``, ``sync/``, ``compat/``, ``engines/``, ``cli/``, ``system/``), without ``__init__.py``:
pytest's default import mode puts this folder on ``sys.path`` when it loads this file, so every
test file imports ``conftest`` and ``optional_deps`` as top-level modules, from any folder (file
names stay unique across folders for the same reason).
"""

from __future__ import annotations

import fcntl
import gc
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPY = platform.python_implementation() == "PyPy"
CI = bool(os.environ.get("CI"))


# ray.init() without an address joins the newest Ray cluster on the machine (/tmp/ray's
# ray_current_cluster), such as one another test, or another test run, has just started: every
# test's own ray.init() starts its own (children inherit this).
os.environ.setdefault("RAY_ADDRESS", "local")

# One lock for every test process on this machine (each pytest-xdist worker, each interpreter of
# make test's matrix running at the same time): a test marked system_wide holds it throughout.
SYSTEM_WIDE_LOCK = Path(tempfile.gettempdir()) / "ndshm-tests-system-wide.lock"


def pytest_configure(config) -> None:
    # Registered here, not in pyproject.toml, so that a copy of tests/ (the installed-wheel test)
    # knows them too.
    config.addinivalue_line("markers", "slow: takes seconds of its own (builds, mypy, multi-node clusters, the "
                                       "benchmarks); make test runs it in its main and system runs only (the others pass "
                                       "-m 'not slow', as a developer's quick loop can)")
    config.addinivalue_line("markers", "system_wide: changes or depends on machine-wide state (huge page "
                                       "reservations, mounts, free huge pages): runs holding a lock every test "
                                       "process on the machine shares, so no other such test runs meanwhile")
    config.addinivalue_line("markers", "mlock: asserts what mlock() did, which AddressSanitizer's runtime makes a "
                                       "no-op (it intercepts mlock and returns 0): make test's sanitizer runs leave "
                                       "these out, every other run has them")


# make test runs pytest-xdist with --dist loadfile: a worker takes whole files, in collection order.
# The files that take longest (--durations of the main and system runs: the wheel and sdist builds, two-node Ray
# clusters, the benchmark smoke run, the examples, mypy, the hostile-file timeouts) are collected
# first, so the other files fill in around them and the workers end together, instead of one
# worker starting the last big file while the other has nothing left. Order within a file is kept.
SLOWEST_FILES_FIRST = ("system/test_packaging.py", "engines/test_ray.py", "system/test_bench_smoke.py",
                       "system/test_examples.py", "system/test_typing.py", "docs/test_docs.py",
                       "segment/test_hostile_files.py", "segment/test_containers.py", "rings/test_broadcast.py",
                       "engines/test_multinode.py", "engines/test_mpi.py", "sync/test_sync.py",
                       "rings/test_queue_views.py", "segment/test_segment_mp.py", "rings/test_queue.py",
                       "engines/test_dask.py", "engines/test_dask_amm.py", "docs/test_readme.py")


def pytest_collection_modifyitems(session, config, items) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FILES_FIRST)}
    last = len(SLOWEST_FILES_FIRST)
    items.sort(key=lambda item: rank.get(f"{item.path.parent.name}/{item.path.name}", last))


@pytest.fixture(autouse=True)
def _system_wide(request):
    """Hold SYSTEM_WIDE_LOCK for a test marked system_wide (an autouse fixture: taken before the
    test's own fixtures, such as one reserving huge pages, and released after theirs)."""
    if request.node.get_closest_marker("system_wide") is None:
        yield
        return
    with open(SYSTEM_WIDE_LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def skip_or_fail(reason: str) -> None:
    """Skip a test whose prerequisite this machine lacks; under CI (``CI`` set, as .ci/run does) fail
    instead, so a broken setup can never pass as a skip."""
    if CI:
        pytest.fail(f"CI must be able to run this test, but: {reason}")
    pytest.skip(reason)


def collect() -> None:
    """Run the garbage collector until finalizers settle (PyPy needs several passes)."""
    for _ in range(4 if PYPY else 1):
        gc.collect()


def dir_files(d: str) -> list[str]:
    """The names in directory ``d``, sorted, without the process tables (``.ndshm-procs-<uid>``,
    csrc/identity.c) that every process which opened a segment there leaves: what tests of a
    directory's segments compare."""
    return sorted(e for e in os.listdir(d) if not e.startswith(".ndshm-procs-"))


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    """``python -m ndshm ARGS`` run in this process (``ndshm._cli.main``, what ``__main__`` calls),
    with ``env`` set in ``os.environ`` meanwhile: its exit status and what it printed, as a
    subprocess's. Where the process itself is not what a test checks (its exit through sys.exit, a
    command that must not hang, output into a pipe), this proves the same without a new interpreter."""
    import contextlib
    import io

    from ndshm import _cli

    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = _cli.main(list(args), prog="python -m ndshm")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return subprocess.CompletedProcess(["python -m ndshm", *args], rc, out.getvalue(), err.getvalue())


def child_env(**extra: str) -> dict:
    """The environment for a child interpreter that must import this very ndshm."""
    env = dict(os.environ)
    pkg_parent = str(ROOT / "pybind")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def run_python(code: str, *args: str, timeout: float = 60, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (the one running the tests); return the result.

    With ``check`` a non-zero exit fails the test and shows the child's output."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=timeout, env=child_env(**env))
    if check and proc.returncode != 0:
        pytest.fail(f"child exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def start_python(code: str, *args: str) -> subprocess.Popen:
    """Start ``code`` in a fresh interpreter that talks through stdin/stdout lines (see
    :func:`expect_line` and :func:`finish_python`)."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())


def finish_python(p: subprocess.Popen, timeout: float = 60) -> str:
    """Wait for a child of :func:`start_python` to exit 0 within ``timeout``; return its stdout."""
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        pytest.fail(f"child still running after {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    assert p.returncode == 0, f"child exited {p.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    return out


_ns_problem: dict[str, str] = {}  # unshare options -> why they cannot be used here ("" if they can)


def require_namespaces(*options: str) -> None:
    """Skip (fail under CI) unless ``unshare <options> true`` works here (it needs root, or user
    namespaces): once per set of options, saying why not."""
    key = " ".join(options)
    if key not in _ns_problem:
        exe = shutil.which("unshare")
        if exe is None:
            _ns_problem[key] = "no unshare command (util-linux) on PATH"
        else:
            try:
                r = subprocess.run([exe, *options, "true"], capture_output=True, text=True, timeout=30)
                _ns_problem[key] = "" if r.returncode == 0 else (
                    f"'unshare {key}' is refused here (exit {r.returncode}: {r.stderr.strip()}); it needs root")
            except (OSError, subprocess.TimeoutExpired) as exc:
                _ns_problem[key] = f"'unshare {key}' failed: {exc}"
    if _ns_problem[key]:
        skip_or_fail(_ns_problem[key])


PID_NS = ("--pid", "--fork", "--mount-proc", "--kill-child")


def start_python_ns(code: str, *args: str, unshare: tuple[str, ...] = PID_NS, tmpfs_over: str = "",
                    **env: str) -> subprocess.Popen:
    """:func:`start_python` in new namespaces: by default a new PID namespace with its own
    ``/proc`` (``unshare --pid --fork --mount-proc``; the interpreter is pid 1 there, and
    ``--kill-child`` ends it with its ``unshare``). ``tmpfs_over``: a directory over which the
    child mounts a tmpfs of its own (needs ``--mount`` among ``unshare``), as a container with
    its own ``/dev/shm`` has. Skips (fails under CI) where unshare is refused. Find the
    interpreter's pid outside with :func:`inner_pid`."""
    require_namespaces(*unshare)
    argv = [sys.executable, "-c", textwrap.dedent(code), *args]
    if tmpfs_over:
        argv = ["sh", "-c", 'mount -t tmpfs -o size=16m ndshm-test "$0" && exec "$@"', tmpfs_over, *argv]
    return subprocess.Popen(["unshare", *unshare, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=child_env(**env))


def inner_pid(p: subprocess.Popen, timeout: float = 10) -> int:
    """The pid (as this process sees it) of the interpreter :func:`start_python_ns` started: the
    child of its ``unshare`` (``unshare`` itself when it forks nothing)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
                kids = f.read().split()
        except OSError:
            kids = []
        if kids:
            return int(kids[0])
        if "--fork" not in p.args:
            return p.pid
        if time.monotonic() > deadline or p.poll() is not None:
            pytest.fail(f"unshare (pid {p.pid}) started no child within {timeout} s")
        time.sleep(0.01)


def kill9(p: subprocess.Popen, timeout: float = 10) -> None:
    """kill -9 the interpreter of ``p`` (:func:`start_python_ns` or :func:`start_python`), and reap it."""
    pid = inner_pid(p) if p.args[0] == "unshare" else p.pid
    os.kill(pid, signal.SIGKILL)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        pytest.fail(f"pid {pid} still running {timeout} s after SIGKILL")


def read_line(p: subprocess.Popen, timeout: float = 60) -> str:
    """The next line the child prints (stripped), killing it if none comes within ``timeout``."""
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    try:
        return p.stdout.readline().strip()
    finally:
        timer.cancel()


def expect_line(p: subprocess.Popen, want: str, timeout: float = 60) -> None:
    """The next line the child prints must be ``want`` (the child prints it once it is ready)
    within ``timeout`` seconds."""
    line = read_line(p, timeout)
    if line != want:
        p.kill()
        _, err = p.communicate()
        pytest.fail(f"child said {line!r}, not {want!r}\nstderr:\n{err}")


@pytest.fixture
def unique_name(request) -> str:
    """A segment name no other test uses; any segment left under it is removed afterwards."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    yield name
    shm = Path(os.environ.get("NDSHM_DIR", "/dev/shm"))
    for leftover in shm.glob(f"ndshm.{name}*"):
        try:
            leftover.unlink()
        except OSError:
            pass


def mounted_tmpfs(options: str, what: str):
    """A private tmpfs mounted with ``options`` for one test (root only), unmounted after."""
    if os.geteuid() != 0:
        skip_or_fail("mounting a tmpfs needs root")
    d = tempfile.mkdtemp(prefix="ndshm-tmpfs-")
    rc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", d], capture_output=True)
    if rc.returncode != 0:
        os.rmdir(d)
        skip_or_fail(f"cannot mount {what}: {rc.stderr.decode().strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", d], capture_output=True)
        os.rmdir(d)

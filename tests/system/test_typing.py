"""ndshm is typed (issue 11, item 6): a user's ``mypy --strict`` script using ndshm type-checks, and
``mypy --strict`` finds no error anywhere in the package (pybind/ndshm).

The scripts assert the types of ndshm's results with ``assert_type`` (``Any`` does not pass it), and
they are run too, so what they say about the types is what the calls really return. mypy is installed
in the main CPython venv only: the PyPy and oldest-NumPy runs skip these tests saying so
(optional_deps.require), a main run without it skips locally and fails under CI.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from optional_deps import require as requires

ROOT = Path(__file__).resolve().parent.parent.parent

# A user's program: ndshm's arrays, sync objects, listing and the compat modules, with the types a
# type checker must see for them.
USER_SCRIPT = '''
from __future__ import annotations

import sys
from typing import Any, Optional

import numpy as np
from numpy.typing import NDArray
from typing_extensions import assert_type

import ndshm
import ndshm.compat.sharedarray as SharedArray
from ndshm.compat.managers import SharedMemoryManager
from ndshm.compat.shared_memory import ShareableList, SharedMemory


def arrays(name: str) -> float:
    a = ndshm.create(name, (4, 3), np.float32)
    a[:] = 1.5
    b = ndshm.attach(name, readonly=True)
    z = ndshm.zeros((8,), np.int64, align=4096)
    q = ndshm.Queue(slots=4, slot_bytes=1024)
    q.put(np.arange(3))
    got = q.get(timeout=5)
    q.close()
    ndshm.unlink(name)
    return float(b.sum()) + float(z.sum()) + float(got.sum())


def sync() -> int:
    lock = ndshm.Lock()
    assert_type(lock.acquire(timeout=1.0), bool)
    assert_type(lock.owner_died, bool)
    assert_type(lock.address, int)
    lock.release()
    with lock:
        assert_type(lock.locked(), bool)
    event = ndshm.Event()
    event.set()
    assert_type(event.is_set(), bool)
    assert_type(event.wait(0.5), bool)
    barrier = ndshm.Barrier(1, timeout=5.0)
    assert_type(barrier.parties, int)
    assert_type(barrier.broken, bool)
    return assert_type(barrier.wait(), int)


def compat(name: str) -> list[int]:
    shm = SharedMemory(name, create=True, size=64)
    try:
        assert_type(shm.size, int)
        assert_type(shm.name, str)
        buf = assert_type(shm.buf, Optional[memoryview])
        assert buf is not None
        buf[0] = 7
        other = SharedMemory(name)
        assert other.buf is not None and other.buf[0] == 7
        other.close()
    finally:
        shm.close()
        shm.unlink()
    sl = ShareableList([1, 2, 3])
    assert_type(sl, ShareableList[int])
    sl[1] = 5
    assert_type(sl[1], int)
    assert_type(sl.index(5), int)
    items = assert_type(list(sl), list[int])
    sl.shm.close()
    sl.shm.unlink()
    with SharedMemoryManager() as smm:
        block = assert_type(smm.SharedMemory(16), SharedMemory)
        names = assert_type(smm.ShareableList(["a", "b"]), ShareableList[str])
        assert_type(names[0], str)
        block.close()
        names.shm.close()
    return items


def sharedarray(path: str) -> float:
    a = assert_type(SharedArray.create("file://" + path, (3, 2), np.float64), NDArray[Any])
    a[:] = 2.0
    b = assert_type(SharedArray.attach("file://" + path, ro=True), NDArray[Any])
    assert_type(SharedArray.list(), tuple[SharedArray.ArrayDesc, ...])
    SharedArray.delete("file://" + path)
    return float(b.sum())


if __name__ == "__main__":
    name, path = sys.argv[1], sys.argv[2]
    assert arrays(name) == 4 * 3 * 1.5 + 3
    assert sync() == 0
    assert compat(name) == [1, 5, 3]
    assert sharedarray(path) == 12.0
    print("ran")
'''

# ndshm.list() lists the named segments; type checkers must see it (it is kept out of __all__ so that
# `from ndshm import *` leaves the builtin alone).
LIST_SCRIPT = '''
from __future__ import annotations

import sys
from typing import Optional

from typing_extensions import assert_type

import ndshm

a = ndshm.create(sys.argv[1], (2,), "f8")
recs = assert_type(ndshm.list(), list[ndshm.SegmentRecord])
rec = next(r for r in recs if r.name == sys.argv[1])
assert assert_type(rec.shape, Optional[tuple[int, ...]]) == (2,)
ndshm.unlink(sys.argv[1])
print("ran")
'''

# ndshm.mpi with a communicator (type-checked only: running it needs mpirun, see test_mpi.py).
MPI_SCRIPT = '''
from __future__ import annotations

from typing import Any

from mpi4py import MPI
from numpy.typing import NDArray
from typing_extensions import assert_type

import ndshm.mpi
from ndshm.mpi import SharedWindow


def rows(comm: MPI.Intracomm) -> float:
    win = assert_type(ndshm.mpi.allocate_shared(comm, (comm.Get_size(), 4), "f4"), SharedWindow)
    assert_type(win.leader, bool)
    assert_type(win.name, str)
    assert_type(win.comm, MPI.Intracomm)
    with win as a:
        assert_type(a, NDArray[Any])
        a[comm.Get_rank()] = 1
        comm.Barrier()
        total = float(a.sum())
    assert_type(win.freed, bool)
    return total
'''


def _mypy(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m mypy --strict ARGS`` in ``cwd`` (the package found as installed: editable here)."""
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory) -> Path:
    """One mypy cache for the user scripts (numpy's stubs are analysed once)."""
    return tmp_path_factory.mktemp("mypy-cache")


def _check_script(tmp_path: Path, cache: Path, source: str) -> Path:
    requires("mypy", "type-checking test")
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(source))
    res = _mypy("--cache-dir", str(cache), script.name, cwd=tmp_path)  # no pyproject.toml there: --strict only
    assert res.returncode == 0 and res.stdout.startswith("Success: no issues found in 1 source file"), \
        f"mypy --strict failed on a user's script:\n{res.stdout}{res.stderr}"
    return script


def _run(script: Path, *args: str, tmp_path: Path) -> None:
    env = dict(os.environ, NDSHM_DIR=str(tmp_path))  # ndshm's named segments in a private directory
    res = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0 and res.stdout.strip() == "ran", res.stdout + res.stderr


def test_users_strict_script_type_checks_and_runs(tmp_path, mypy_cache, unique_name):
    script = _check_script(tmp_path, mypy_cache, USER_SCRIPT)
    _run(script, unique_name, str(tmp_path / "sharedarray.bin"), tmp_path=tmp_path)


def test_ndshm_list_is_exported_for_type_checkers(tmp_path, mypy_cache, unique_name):
    script = _check_script(tmp_path, mypy_cache, LIST_SCRIPT)
    _run(script, unique_name, tmp_path=tmp_path)


def test_mpi_window_types(tmp_path, mypy_cache):
    requires("mpi4py", "type-checking test of ndshm.mpi")
    _check_script(tmp_path, mypy_cache, MPI_SCRIPT)


_ERROR_LINE = re.compile(r"^(?P<path>[^:\s]+\.pyi?):\d+: error: ", re.M)


@pytest.mark.slow  # mypy over the whole package, from a cold cache: 15-40 s
def test_package_is_clean_under_mypy_strict():
    """``mypy --strict`` over the package (as ``[tool.mypy]`` in pyproject.toml configures it)
    reports no error in any of its files."""
    requires("mypy", "type-checking test")
    res = _mypy(cwd=ROOT)
    # 0: no error, 1: errors (listed), anything else: mypy itself failed
    assert res.returncode in (0, 1) and re.search(r"\d+ source files?\)?$", res.stdout, re.M), \
        f"mypy did not check the package:\n{res.stdout}{res.stderr}"
    files = re.search(r"(\d+) source files?\)?$", res.stdout, re.M)
    assert files and int(files.group(1)) >= len(list((ROOT / "pybind" / "ndshm").rglob("*.py"))), \
        f"mypy did not check every module of the package:\n{res.stdout}{res.stderr}"
    errors = [line for line in res.stdout.splitlines() if _ERROR_LINE.match(line)]
    assert not errors and res.returncode == 0, \
        f"mypy --strict errors in the package ({len(errors)}):\n" + "\n".join(errors) + res.stderr

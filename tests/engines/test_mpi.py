"""ndshm.mpi.allocate_shared under a real ``mpirun -n 2`` and ``-n 3`` (Open MPI from Debian here).

Each test runs one scenario of tests/engines/mpi_scripts/allocate.py under mpirun, in a private segment
directory; every rank writes what it saw as JSON and the assertions are made here.
mpi4py comes with `make venv` (the ``[mpi]`` extra); missing, the tests skip locally and fail under
CI, and the minimal-deps runs (PyPy, oldest NumPy) skip saying so (optional_deps.require).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import ROOT, child_env, dir_files, run_python, skip_or_fail
from optional_deps import require

SCRIPT = ROOT / "tests" / "engines" / "mpi_scripts" / "allocate.py"
TIMEOUT = 90  # a hang (a rank left in a collective) fails here instead of blocking the suite


def mpirun_argv(n: int) -> list:
    """``mpirun -n N``, with the flags Open MPI needs to run as root and on more ranks than cores."""
    require("mpi4py", "test")
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        skip_or_fail("mpirun is not installed (apt-get install -y openmpi-bin libopenmpi-dev)")
    version = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=30).stdout
    argv = [mpirun, "-n", str(n)]
    if "Open MPI" in version or "OpenRTE" in version:
        argv += ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return argv


@pytest.fixture
def shm_dir():
    """A private directory on /dev/shm (tmpfs, as real segments live) for one test's segments."""
    d = tempfile.mkdtemp(prefix="ndshm-test-mpi-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def mpirun(scenario: str, n: int, shm_dir: str, expect_ok: bool = True, script: Path = SCRIPT, **env: str):
    """Run ``scenario`` of ``script`` on ``n`` ranks; return (the ranks' result dicts by rank, the
    completed process)."""
    # `python -m mpi4py`: an uncaught exception on a rank aborts the job (mpi4py's advice), so a failing
    # rank cannot leave the others waiting in a collective, nor itself in MPI_Finalize
    argv = mpirun_argv(n) + [sys.executable, "-m", "mpi4py", str(script), scenario, shm_dir]
    with tempfile.TemporaryDirectory(prefix="ndshm-test-mpi-out-") as out_dir:
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=child_env(MPI_RESULTS=out_dir, **env), cwd=str(ROOT),
                              start_new_session=True) as proc:
            try:
                out, err = proc.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
                pytest.fail(f"mpirun {scenario} still running after {TIMEOUT} s (a rank hangs)\n"
                            f"stdout:\n{out}\nstderr:\n{err}")
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # no rank outlives the test
                except ProcessLookupError:
                    pass
        results = {int(p.stem): json.loads(p.read_text()) for p in Path(out_dir).glob("*.json")}
    done = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    if expect_ok:
        assert proc.returncode == 0, f"mpirun {scenario} exited {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
        if script == SCRIPT:
            assert sorted(results) == list(range(n)), f"not every rank reported\nstdout:\n{out}\nstderr:\n{err}"
    return results, done


@pytest.mark.parametrize("n", [2, 3])
def test_every_rank_sees_one_segment_and_free_removes_it(n, shm_dir):
    res, _ = mpirun("share", n, shm_dir)
    names = {r["name"] for r in res.values()}
    assert len(names) == 1, names  # the same segment on every rank of the node
    name = names.pop()
    for r in res.values():
        assert r["segment_name"] == name and r["in_segment"]
        assert r["mapped"] == r["expected_file"], r  # the data pointer is in that segment's mapping
        assert r["during"] == [f"ndshm.{name}"]  # one segment per node, however many ranks
        assert r["node_size"] == n and r["leader"] == (r["rank"] == 0) and r["writeable"]
        # rank 1's writes, read by every rank after a barrier; every rank's own element, read by all
        assert r["seen"] == [42.0 * (r["n"] - 1) - 7.5, -7.5]
        assert r["slots"] == [float(i + 1) for i in range(n)]
        # free(): collective; when it returns on any rank the name is gone, nothing is left
        assert r["freed"] and not r["exists_after"] and r["after"] == [] and r["after_all"] == []
        assert r["array_after"]["type"] == "ClosedError" and name in r["array_after"]["message"]
        assert r["segment_after"]["type"] == "ClosedError"
        assert r["mapped_after"] == []  # every rank dropped its mapping (no cache keeps it)
    assert dir_files(shm_dir) == []


def test_context_manager_fills_and_frees(shm_dir):
    res, _ = mpirun("context", 2, shm_dir)
    assert res[0]["name"] == res[1]["name"]
    for r in res.values():
        assert r["sum"] == 7 * 20 and r["f"] and r["dtype"] == "int32" and r["shape"] == [4, 5]
        assert r["during"] == [f"ndshm.{r['name']}"] and r["after"] == []
        assert r["after_raise"] == [] and r["late"] == "KeyError('after free')" and r["after_late"] == []


@pytest.mark.parametrize("n", [2, 3])
def test_an_error_on_the_leader_raises_on_every_rank(n, shm_dir):
    res, done = mpirun("leader_error", n, shm_dir)
    for case, typ in (("overflow", "ValueError"), ("nospace", "NoSpaceError"), ("badfill", "ValueError")):
        errors = [res[r][case] for r in range(n)]
        assert all(e["type"] == typ for e in errors), (case, errors)
        assert len({e["message"] for e in errors}) == 1, (case, errors)  # the same message everywhere
        assert all(e["seconds"] < TIMEOUT / 3 for e in errors)  # raised, not a rank waiting for ever
    assert "more than the maximum" in res[0]["overflow"]["message"]
    assert "no space" in res[0]["nospace"]["message"] and "OSError" in res[1]["nospace"]["mro"]
    for r in res.values():
        assert r["after_overflow"] == [] and r["after_nospace"] == [] and r["after_badfill"] == []
        assert r["ok"] == 24 and r["after"] == []  # the ranks are still in step afterwards


def test_arguments_differing_from_the_leaders_raise_on_every_rank(shm_dir):
    res, _ = mpirun("mismatch", 3, shm_dir)
    messages = {r["error"]["message"] for r in res.values()}
    assert len(messages) == 1, messages
    msg = messages.pop()
    assert "rank 1" in msg and "(11,)" in msg and "(10,)" in msg
    assert all(r["error"]["type"] == "ValueError" and r["after"] == [] for r in res.values())
    for case, words in (("order", ("rank 2", "order 'F'", "order C")), ("dtype", ("rank 1", "float64", "float32"))):
        assert len({r[case]["message"] for r in res.values()}) == 1, case
        assert all(r[case]["type"] == "ValueError" for r in res.values()), case
        assert all(w in res[0][case]["message"] for w in words), res[0][case]


@pytest.mark.parametrize("n", [2, 3])
def test_readonly_maps_read_only_on_the_other_ranks(n, shm_dir):
    res, _ = mpirun("readonly", n, shm_dir)
    for r in res.values():
        assert r["sum"] == 500  # the leader's writes, seen by all
        if r["leader"]:
            assert r["writeable"] and not r["mapping_readonly"] and r["write"]["type"] is None
        else:
            assert not r["writeable"] and r["mapping_readonly"]
            assert r["write"]["type"] == "ValueError" and "read-only" in r["write"]["message"]
        assert r["after"] == []


def test_populate_maps_every_page_on_every_rank(shm_dir):
    res, _ = mpirun("populate", 2, shm_dir)
    for r in res.values():
        kib = r["nbytes"] // 1024
        assert r["True"] >= kib, r  # resident before any touch, on the leader and on the others
        assert 0 <= r["False"] < kib // 2, r
        assert r["True-slots"] == r["False-slots"] == [1.0, 2.0] and r["after"] == []


def test_comm_must_be_an_intracomm(shm_dir):
    res, _ = mpirun("bad_comm", 2, shm_dir)
    for r in res.values():
        for case, named in (("string", "'COMM_WORLD'"), ("group", "Group"), ("null", "None")):
            assert r[case]["type"] == "TypeError" and "MPI.Intracomm" in r[case]["message"]
            assert named in r[case]["message"], r[case]
        assert r["after"] == []


def test_one_segment_per_node_and_errors_agreed_across_nodes(shm_dir):
    """Two simulated nodes (the script splits ranks by parity instead of by shared memory)."""
    res, _ = mpirun("two_nodes", 3, shm_dir)
    assert res[0]["name"] == res[2]["name"] != res[1]["name"]
    assert [res[r]["node_size"] for r in range(3)] == [2, 1, 2]
    assert [res[r]["leader"] for r in range(3)] == [True, True, False]
    assert res[0]["slots"] == res[2]["slots"] == [1.0, 0.0, 3.0] and res[1]["slots"] == [0.0, 2.0, 0.0]
    for r in res.values():
        assert sorted(r["during"]) == sorted({f"ndshm.{x['name']}" for x in res.values()})
        # rank 1 (the odd node's leader) failed; the even node, which succeeded, raises it too
        assert r["error"]["type"] == "ValueError" and "more than the maximum" in r["error"]["message"]
        assert r["after"] == []
    assert len({r["error"]["message"] for r in res.values()}) == 1


@pytest.mark.parametrize("who", [0, 1])
def test_an_exception_in_the_block_ends_the_job_instead_of_hanging(who, shm_dir):
    """The raising rank releases locally (no collective free()) and dies; under ``python -m mpi4py``
    that aborts the job (the test's timeout catches a hang). Raised on the leader, the segment's name
    is removed on the way out; raised elsewhere, MPI_Abort kills the leader, whose segment waits for
    ndshm's dead-creator sweep."""
    _, done = mpirun("raise_in_block", 2, shm_dir, expect_ok=False, RAISE_ON=str(who))
    assert done.returncode != 0 and f"boom on rank {who}" in done.stderr, done.stderr
    if who == 0:
        assert dir_files(shm_dir) == []


def test_import_ndshm_does_not_import_mpi4py():
    require("mpi4py", "test")
    out = run_python("""
        import sys
        import ndshm, ndshm.mpi
        print("mpi4py" in sys.modules)
        from mpi4py import MPI
        win = ndshm.mpi.allocate_shared(MPI.COMM_SELF, 3, "f4", fill=1.5)   # one rank: a node of its own
        print(float(win.array.sum()), win.leader, win.comm.Get_size())
        win.free()
    """, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1").stdout.split()
    assert out == ["False", "4.5", "True", "1"]


def test_without_mpi4py_allocate_shared_says_what_to_install():
    out = run_python("""
        import sys
        sys.modules["mpi4py"] = None        # as if it were not installed
        import ndshm.mpi                    # importing the module needs nothing
        try:
            ndshm.mpi.allocate_shared(object(), 3)
        except ImportError as e:
            print("ImportError:", e)
    """).stdout
    assert "ImportError: ndshm.mpi needs mpi4py" in out and "ndshm[mpi]" in out, out


def test_the_example_runs_under_mpirun(shm_dir):
    """examples/mpi_allocate_shared.py on 3 ranks (its arguments are ignored; NDSHM_DIR is private)."""
    _, done = mpirun("-", 3, shm_dir, script=ROOT / "examples" / "mpi_allocate_shared.py", NDSHM_DIR=shm_dir)
    out = done.stdout
    assert "3 rank(s), 3 on this node" in out and "read in place correctly" in out, out
    assert "total across nodes correct, freed: True" in out and dir_files(shm_dir) == []

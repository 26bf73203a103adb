"""The six examples of examples/: each runs as a script, and its claims hold (addresses, write-through,
lifetimes, real processes).

torch and cv2 come with `make venv`: missing, a test skips locally and fails under CI
(conftest.skip_or_fail); the PyPy and oldest-NumPy runs have neither and skip them saying so
(optional_deps.require).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

import ndshm
from conftest import ROOT, child_env
from optional_deps import require

EXAMPLES = ROOT / "examples"


def requires(module: str) -> None:
    require(module, "example")


@pytest.fixture
def example(monkeypatch):
    """Import an example module by name (examples/ on sys.path, so spawned children find it too)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setenv("PYTHONPATH", child_env()["PYTHONPATH"])

    def load(name: str):
        sys.modules.pop(name, None)
        return importlib.import_module(name)

    return load


NEEDS = {
    "opencv_dst": ["cv2"],
    "torch_zero_copy": ["torch"],
    "custom_buffer": [],
    "ten_writers": [],
    "video_pipeline": [],
    "buffers_io": [],
    "mpi_allocate_shared": ["mpi4py"],
    "dask_by_reference": ["distributed"],
    "ray_task_results": ["ray"],
    "readonly_sharing": [],
    "parallel_slices": [],
    "asyncio_service": [],
    "dataloader": ["torch"],
}


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_example_runs_as_a_script(name):
    modules = NEEDS[name]
    for m in modules:
        requires(m)
    proc = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py")], capture_output=True, text=True,
                          timeout=180, env=child_env(), cwd=str(ROOT))
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.stdout.strip(), "an example must say what it showed"


def test_opencv_dst_lands_in_the_segment(example):
    requires("cv2")
    r = example("opencv_dst").main()
    assert r["returned_address"] == r["gray_address"]
    assert r["plain_address"] != r["gray_address"] and r["same_values"]
    assert r["gray_segment"]


def test_torch_shares_locally_and_across_processes(example):
    requires("torch")
    r = example("torch_zero_copy").main()
    loc = r["local"]
    assert loc["tensor_ptr"] == loc["array_ptr"]
    assert loc["array_sees_tensor_write"] == 1.0 and loc["tensor_sees_array_write"] == 42.0
    rem = r["remote"]
    assert rem["tensor_ptr"] == rem["array_ptr"] and rem["matches"]
    assert rem["producer_pid"] != os.getpid()  # produced by a real other process
    assert not ndshm.exists(rem["segment"])     # and cleaned up


def test_custom_buffer_lifetime(example):
    r = example("custom_buffer").main()
    assert r["rows_aligned"]
    assert r["alive_after_del_object"] is True and r["value_survived"] == 200
    assert r["alive_while_slice_lives"] is True and r["slice_offset"] == 100 * 640 + 300
    assert r["alive_after_last_view"] is False and r["live_buffers_released"] >= 1


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_ten_writers_with_barrier(example, method):
    r = example("ten_writers").main(method)
    assert r["exitcodes"] == [0] * 10
    assert r["block_sums"] == [float((i + 1) * 1000 * 1000) for i in range(10)]
    assert r["seen"] == [10] * 10  # after the barrier every worker saw every block


def test_video_pipeline_zero_copy(example):
    r = example("video_pipeline").main(frames=120)
    assert r["exitcodes"] == [0, 0] and r["centroids_ok"] and r["frames"] == 120


def test_buffers_io(example):
    r = example("buffers_io").main()
    assert r["memoryview"]["a00"] == 3.5 and r["memoryview"]["format"] == "f"
    assert r["recv_into"]["equal"] and r["recv_into"]["bytes"] == 4 << 20
    assert r["readinto"]["equal"] and r["readinto"]["bytes"] == 1 << 20
    assert r["dlpack_numpy"]["same_address"] and r["dlpack_numpy"]["write_through"] == 7.0
    if "dlpack_torch" in r:
        assert r["dlpack_torch"] == {"same_address": True, "write_through": 9.0}


def test_readonly_sharing_is_enforced_in_other_processes(example):
    r = example("readonly_sharing").main("spawn")
    for w in r["workers"]:
        assert w == {"writeable": False, "sum": 100000.0, "write": "refused", "unlock": "refused",
                     "writeable_view": "refused"}
    assert r["owner_writeable"] and r["after"] == 2.0


def test_parallel_slices_share_by_reference(example):
    r = example("parallel_slices").main()
    assert r["matches"] and r["tasks"] == 8
    assert r["pickled_bytes"] < 1000 < r["array_bytes"]


def test_asyncio_service(example):
    r = example("asyncio_service").main(50)
    assert r == {"answers_ok": True, "clients": 50, "gave_up_cleanly": True, "worker_exit": 0}


def test_dataloader_over_a_shared_dataset(example):
    requires("torch")
    r = example("dataloader").main(1000)
    assert r["samples"] == 1000 and r["consistent"]
    assert r["dataset_pickled_bytes"] < 1000

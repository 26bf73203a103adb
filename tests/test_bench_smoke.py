"""The benchmarks run: every one at a tiny --smoke size, in subprocesses, through `python -m ndshm bench`.

This proves the code paths, not the numbers (those are `make bench`'s job). Quick: well under 30 s.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
import sys

import pytest

from conftest import ROOT, child_env

PYPY = platform.python_implementation() == "PyPy"


def _have(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


def test_python_m_ndshm_bench_smoke(tmp_path):
    args = [sys.executable, "-m", "ndshm", "bench", "--smoke", "--out", str(tmp_path)]
    plots = _have("matplotlib")
    if not plots:
        if os.environ.get("CI") and not PYPY:
            pytest.fail("matplotlib is required in CI for the benchmark charts")
        args.append("--no-plots")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, env=child_env(), cwd=str(ROOT))
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    # progress on stderr, tables on stdout
    assert "bench_alloc" in proc.stderr and "bench_ipc" in proc.stderr and "bench_queue" in proc.stderr
    for title in ("Allocation cost", "Classic table", "Attach latency", "Pool.map", "Creating and touching",
                  "float32 messages between two processes", "put_many/get_many", "without Python"):
        assert title in proc.stdout, f"missing table {title!r}"
    assert "| ndshm" in proc.stdout and "numpy/ndshm" in proc.stdout
    assert "error:" not in proc.stdout, proc.stdout  # a feature may be missing, never broken
    report = json.loads((tmp_path / "latest.json").read_text())
    assert report["mode"] == "smoke" and not report["failed"]
    assert set(report["benchmarks"]) == {"alloc", "ipc", "queue"}
    for key in ("cpu_model", "cores", "kernel", "memory_bytes"):
        assert report["machine"][key]
    assert report["versions"]["numpy"] and report["versions"]["ndshm"] and report["versions"]["python"]
    assert report["ceilings"]["memcpy_gb_per_s"] > 0
    assert report["benchmarks"]["alloc"]["data"]["small_overhead_us"]["empty"] is not None
    assert "classic" in report["benchmarks"]["ipc"]["data"]
    assert "64" in report["benchmarks"]["queue"]["data"]["sizes"]
    assert all(v[0] > 0 for v in report["benchmarks"]["queue"]["data"]["handoff_c"].values())
    if plots:
        for png in ("alloc_cost.png", "ipc_classic.png", "queue_throughput.png"):
            data = (tmp_path / png).read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, png


def test_bench_cli_without_bench_dir_fails_clearly(monkeypatch, capsys):
    from ndshm import _benchcli

    monkeypatch.delenv("NDSHM_BENCH_DIR", raising=False)
    monkeypatch.setattr(_benchcli, "__file__", "/nonexistent/site-packages/ndshm/_benchcli.py")
    assert _benchcli.find_bench_dir() is None
    assert _benchcli.main(["--quick"]) == 2
    err = capsys.readouterr().err
    assert "bench/" in err and "source checkout" in err and "NDSHM_BENCH_DIR" in err


def test_bench_cli_finds_the_repository_bench_dir():
    from ndshm import _benchcli

    assert _benchcli.find_bench_dir() == ROOT / "bench"

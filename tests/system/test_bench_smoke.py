"""The benchmarks run: every one at a tiny --smoke size, in subprocesses, through `python -m ndshm bench`.

This proves the code paths, not the numbers (those are `make bench`'s job). Quick: well under 30 s.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from typing import Iterator, List, Tuple

import pytest

from conftest import CI, PYPY, ROOT, child_env
from optional_deps import minimal_deps_reason


def _have(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


@pytest.mark.slow
def test_python_m_ndshm_bench_smoke(tmp_path):
    args = [sys.executable, "-m", "ndshm", "bench", "--smoke", "--out", str(tmp_path)]
    plots = _have("matplotlib")
    if not plots:
        if CI and not minimal_deps_reason():
            pytest.fail("matplotlib is required in CI for the benchmark charts (`make venv` installs it)")
        args.append("--no-plots")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env=child_env(), cwd=str(ROOT))
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    # progress on stderr, tables on stdout
    assert all(f"bench_{b}" in proc.stderr for b in ("alloc", "ipc", "queue", "broadcast", "pool", "import", "engines"))
    for title in ("Allocation cost", "Classic table", "Attach latency", "Pool.map", "Creating and touching",
                  "float32 messages between two processes", "put_many/get_many", "without Python", "Import time", "MPI: one", "Dask: a", "Ray: a task", "Fan-out of"):
        assert title in proc.stdout, f"missing table {title!r}"
    assert "| ndshm" in proc.stdout and "numpy/ndshm" in proc.stdout
    assert "error:" not in proc.stdout, proc.stdout  # a feature may be missing, never broken
    check_tables(proc.stdout)
    report = json.loads((tmp_path / "latest.json").read_text())
    assert report["mode"] == "smoke" and not report["failed"]
    assert set(report["benchmarks"]) == {"alloc", "ipc", "queue", "broadcast", "pool", "import", "engines"}
    for key in ("cpu_model", "cores", "kernel", "memory_bytes"):
        assert report["machine"][key]
    assert report["versions"]["numpy"] and report["versions"]["ndshm"] and report["versions"]["python"]
    assert report["ceilings"]["memcpy_gb_per_s"] > 0
    assert report["benchmarks"]["alloc"]["data"]["small_overhead_us"]["empty"] is not None
    assert "classic" in report["benchmarks"]["ipc"]["data"]
    assert "64" in report["benchmarks"]["queue"]["data"]["sizes"]
    assert all(v[0] > 0 for v in report["benchmarks"]["queue"]["data"]["handoff_c"].values())
    ipc = report["benchmarks"]["ipc"]["data"]
    assert not ipc.get("errors") and not report["benchmarks"]["alloc"]["data"].get("errors")
    assert ipc["attach"]["figures"]["ndshm"]["p50_us"] > 0, ipc["attach"]
    assert ipc["create_touch"]["s"]["ndshm populate=True"] > 0 and ipc["create_touch"]["s"]["ndshm (plain)"] > 0, \
        ipc["create_touch"]
    assert ipc["classic"]["rows"]["ndshm"]["wall_s"] > 0
    imp = report["benchmarks"]["import"]["data"]
    assert imp["figures"]["import ndshm"]["import_cpu_ms"] > imp["figures"]["nothing (python -c pass)"]["import_cpu_ms"]
    assert isinstance(imp["ndshm_over_numpy_cffi_ms"], float)
    if not PYPY:
        assert any(t["target"].startswith("import ndshm") and t["value"] is not None for t in report["targets"])
    if plots:
        for png in ("alloc_cost.png", "ipc_classic.png", "queue_throughput.png", "engines_mpi.png"):
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


# ---------------------------------------------------------------- what a table cell may hold

NUMBER = re.compile(r"-?[\d,]*\.?\d+(e[-+]\d+)?(x|%)?")
SIZE = re.compile(r"\d+(\.\d)? (B|KiB|MiB|GiB)")
# Cells that are not figures but say why there is none; anything else (an exception's text, which
# must read "error: ...") is a broken benchmark.
WHY_NOT = ("n/a", "no copy", "not installed", "not measured", "not available", "error:")
TARGET = re.compile(r"[<≥≤>] [\d.]+\w* (µs )?(met|MISSED)|[≥≤<>] \d+k: (met|MISSED)")


def tables(stdout: str) -> Iterator[Tuple[str, List[str], int, List[List[str]]]]:
    """(title, headers, label columns, rows) of every Markdown table the benchmarks printed (the
    label columns are the left-aligned ones, ``_common.table``'s ``left``)."""
    title, lines = "", stdout.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("### "):
            title = lines[i][4:]
        if lines[i].startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("| -"):
            cells = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
            headers, rows = cells(lines[i]), []
            left = sum(not c.endswith(":") for c in cells(lines[i + 1]))
            i += 2
            while i < len(lines) and lines[i].startswith("| "):
                rows.append(cells(lines[i]))
                i += 1
            yield title, headers, left, rows
            continue
        i += 1


def is_number(cell: str) -> bool:
    return NUMBER.fullmatch(cell) is not None


def check_tables(stdout: str) -> None:
    """Every ndshm figure is a number, and no cell holds an unprefixed exception."""
    seen = 0
    for title, headers, left, rows in tables(stdout):
        if title.startswith("Targets"):
            continue
        ndshm_cols = [i for i, h in enumerate(headers) if re.fullmatch(r"ndshm (µs|ms|s)", h)]  # alloc's
        for row in rows:
            where = f"table {title!r}, row {row[0]!r}"
            for i, cell in enumerate(row[left:], left):
                ok = is_number(cell) or SIZE.fullmatch(cell) or cell.startswith(WHY_NOT) or TARGET.fullmatch(cell)
                assert ok, f"{where}: cell {headers[i]!r} is {cell!r}: an exception must be recorded as 'error: ...'"
            if row[0].startswith("ndshm") and minimal_deps_reason() and all(
                    c.startswith(("not installed", "not measured")) for c in row[left:]):
                continue  # an engine integration whose engine this minimal-deps run lacks (the main run has it)
            if row[0].startswith("ndshm"):
                figures = [c for c in row[left:] if is_number(c)]
                assert figures, f"{where} has no figure: {row}"
                assert is_number(row[left]) or SIZE.fullmatch(row[left]), f"{where}: first figure is {row[left]!r}"
                seen += 1
            for i in ndshm_cols:
                assert is_number(row[i]), f"{where}: {headers[i]!r} is {row[i]!r}"
                seen += 1
    assert seen >= 20, f"only {seen} ndshm figures in the smoke run's tables"


def smoke_table(cell: str, label: str = "shared_memory") -> str:
    rows = [f"| ndshm {k} | {10 + k} | 1.0 |" for k in range(20)] + [f"| {label} | {cell} | 1.0 |"]
    return "### Attach latency\n\n| attach by name | p50 µs | p99 µs |\n| --- | ---: | ---: |\n" + "\n".join(rows) + "\n"


@pytest.mark.parametrize("cell, good", [
    ("19.1", True), ("1,372,938", True), ("1.00x", True), ("27%", True), ("2.50e-05", True), ("4 MiB", True),
    ("not installed (pip install faster-fifo)", True), ("n/a", True),
    ("TypeError: bad thing", False), ("NotSupportedError: no huge pages", False), ("error: boom", True),
])
def test_table_check_refuses_unprefixed_exceptions(cell, good):
    """The table check itself: an exception's text in any row fails unless it says 'error:' (which the
    smoke test refuses on its own); an ndshm row must hold its figure."""
    if good:
        check_tables(smoke_table(cell))
    else:
        with pytest.raises(AssertionError, match="error: ..."):
            check_tables(smoke_table(cell))
    if not (is_number(cell) or SIZE.fullmatch(cell)):
        with pytest.raises(AssertionError):
            check_tables(smoke_table(cell, label="ndshm populate=True"))

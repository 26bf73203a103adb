"""Every ```python block of README.md and of the documentation's pages (docs/**/*.md) runs as
written, and the README's Quick start also runs pasted into the classic interactive interpreter
(which needs a blank line after each indented block)."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, child_env, dir_files
from optional_deps import require

README = ROOT / "README.md"
# The pages whose examples run: the README and every Markdown page of the docs (not the build).
PAGES = [README] + sorted(p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts)
TIMEOUT = 60  # seconds per block: a block that blocks for ever fails with TimeoutExpired


def python_blocks(page: Path = README) -> list:
    """(line number, code) of every ```python fenced block of ``page``."""
    text = page.read_text(encoding="utf-8")
    blocks = []
    for m in re.finditer(r"^```python\n(.*?)^```[ \t]*$", text, re.S | re.M):
        blocks.append((text.count("\n", 0, m.start()) + 1, m.group(1)))
    return blocks


def quick_start() -> str:
    """The first ```python block after the "## Quick start" heading."""
    text = README.read_text(encoding="utf-8")
    m = re.search(r"^## Quick start\n.*?^```python\n(.*?)^```", text, re.S | re.M)
    assert m, "README.md has no Quick start python block"
    return m.group(1)


def imported_modules(code: str) -> list:
    """The top-level packages a block imports (``import a as b, c``, ``from d.e import f``)."""
    tops = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            tops += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            tops.append(node.module.split(".")[0])
    return tops


def test_imported_modules_sees_every_form():
    assert imported_modules("import numpy as np, ray\nfrom distributed.x import y\nimport a.b") == \
        ["numpy", "ray", "distributed", "a"]


def require_imports(code: str) -> None:
    """Skip (fail under CI) a block whose imports this interpreter cannot satisfy."""
    for top in imported_modules(code):
        if importlib.util.find_spec(top) is None:
            require(top, "README block")  # a visible skip in the minimal-deps runs, else skip_or_fail


def run_group(argv: list, stdin: str = "", **env: str) -> subprocess.CompletedProcess:
    """Run ``argv`` in a session of its own; on timeout kill the whole group (a block's
    multiprocessing children too) and fail."""
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=child_env(**env), start_new_session=True) as proc:
        try:
            out, err = proc.communicate(stdin, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"{argv} still running after {TIMEOUT} s\nstdout:\n{out}\nstderr:\n{err}")
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # nothing it started outlives the test
            except ProcessLookupError:
                pass
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def leftovers(directory: Path) -> list:
    return dir_files(str(directory))


def in_dev_shm(code: str) -> set:
    """The files in /dev/shm named after a string literal of ``code`` (a block that ignored NDSHM_DIR)."""
    names = set(re.findall(r"""["']([A-Za-z0-9._-]+)["']""", code))
    return {n for n in names if os.path.exists(f"/dev/shm/ndshm.{n}")}


# (page relative to the repository, line, code) of every block of every page.
BLOCKS = [(str(page.relative_to(ROOT)), line, code) for page in PAGES for line, code in python_blocks(page)]


def test_pages_have_python_blocks():
    """The README keeps a few examples; the guides hold the rest (more than the README had
    before they moved there)."""
    assert len(python_blocks(README)) >= 1, "README.md has no python block"
    assert len(BLOCKS) >= 15, [(page, line) for page, line, _ in BLOCKS]


@pytest.mark.parametrize("page,line,code", BLOCKS, ids=[f"{page}:{line}" for page, line, _ in BLOCKS])
def test_page_block_runs(page, line, code, tmp_path):
    """The block runs in a fresh interpreter, within the timeout, and leaves no segment behind."""
    require_imports(code)
    shm = tmp_path / "shm"
    shm.mkdir()
    before = in_dev_shm(code)
    proc = run_group([sys.executable, "-c", code], NDSHM_DIR=str(shm))
    assert proc.returncode == 0, (f"{page} block at line {line} exited {proc.returncode}\n"
                                  f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    assert leftovers(shm) == [], f"{page} block at line {line} left segments behind"
    assert in_dev_shm(code) <= before, f"{page} block at line {line} left segments in /dev/shm"


def run_repl(code: str, shm: Path) -> subprocess.CompletedProcess:
    """Feed ``code`` line by line to the classic REPL (``python -i``, input not a terminal)."""
    sentinel = "print('REPL' + '-DONE')\n"
    return run_group([sys.executable, "-q", "-i"], code + sentinel, NDSHM_DIR=str(shm), PYTHON_BASIC_REPL="1")


def test_quick_start_pastes_into_the_repl(tmp_path):
    """Pasted into the interactive interpreter, the Quick start raises nothing (no SyntaxError from
    a statement right after an indented block), waits on nothing, and prints what it says."""
    shm = tmp_path / "shm"
    shm.mkdir()
    proc = run_repl(quick_start(), shm)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and "Error" not in out, out
    assert "REPL-DONE" in proc.stdout, out
    assert "255.0" in proc.stdout, out
    assert leftovers(shm) == []


def test_repl_check_catches_a_missing_blank_line(tmp_path):
    """The REPL check above can fail: a statement right after a `with` block is a SyntaxError there."""
    shm = tmp_path / "shm"
    shm.mkdir()
    proc = run_repl("import os\nwith open(os.devnull):\n    pass\nx = 1\n", shm)
    assert "SyntaxError" in proc.stdout + proc.stderr

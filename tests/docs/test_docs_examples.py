"""The C example of the documentation (docs/examples/*.c, shown on the C library's page) builds
with the project's warning flags, against the one public header, and runs; the Python examples of
the pages run in tests/test_readme.py."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import ROOT, dir_files, skip_or_fail

C_EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.c"))


def test_the_c_library_page_shows_each_c_example():
    page = (ROOT / "docs" / "guide" / "c-library.md").read_text(encoding="utf-8")
    assert C_EXAMPLES, "docs/examples has no C example"
    for example in C_EXAMPLES:
        assert f"../examples/{example.name}" in page, f"docs/guide/c-library.md does not include {example.name}"


@pytest.mark.parametrize("example", C_EXAMPLES, ids=[e.name for e in C_EXAMPLES])
def test_c_example_builds_and_runs(example, tmp_path):
    """Compiled as its comment says (-Wall -Wextra -Werror, only csrc/ndshm.h included), run with a
    directory of its own: it exits 0, prints what it says, and leaves no segment behind."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        skip_or_fail("no C compiler (gcc or cc) on PATH")
    exe = tmp_path / example.stem
    sources = sorted(str(p) for p in (ROOT / "csrc").glob("*.c"))
    build = subprocess.run([cc, "-std=c11", "-D_GNU_SOURCE", "-pthread", "-Wall", "-Wextra", "-Werror",
                            f"-I{ROOT / 'csrc'}", "-o", str(exe), str(example), *sources],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    shm = tmp_path / "shm"
    shm.mkdir()
    run = subprocess.run([str(exe), str(shm)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert "last element 42.0" in run.stdout and "queue holds 1 message" in run.stdout, run.stdout
    assert dir_files(str(shm)) == []

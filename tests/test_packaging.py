"""`pip wheel .` reuses the Makefile, needs no Python headers, and makes a py3-none-<platform> wheel."""

from __future__ import annotations

import os
import platform
import shutil
import stat
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from conftest import ROOT

pytestmark = pytest.mark.skipif(platform.python_implementation() != "CPython",
                                reason="the wheel is built once, by the CPython run")


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
        assert {"ndshm/libndshm.so", "ndshm/ndshm.h", "ndshm/py.typed", "ndshm/__init__.py"} <= names
        info = whl.getinfo("ndshm/libndshm.so")
        assert not stat.S_ISLNK(info.external_attr >> 16) and info.file_size > 10000
        root_is_purelib = "Root-Is-Purelib: false" in whl.read(next(n for n in names if n.endswith("/WHEEL"))).decode()
        assert root_is_purelib

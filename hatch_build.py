"""Hatchling hooks: the version comes from csrc/ndshm.h, the library from the Makefile's flags.

The wheel needs three built files: ``libndshm.so``, a copy of ``ndshm.h`` and the cffi module
generated from it (``build_cffi.py``). They are built with ``make`` when there is one, and
otherwise compiled here with the very flags the Makefile defines (read from it: the build is
defined once). ``CC`` is honoured (default ``cc``); ``-Werror`` is never used here (``WERROR=0``),
so a newer compiler's new warning cannot break an install; the project's own ``make test`` and CI
keep it. A missing compiler is one clear line.

An editable install builds into the source tree (``pybind/ndshm``, as ``make lib`` does); a wheel
builds into ``build/wheel-<cc>/`` and takes the files from there, leaving the tree's copies alone.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any, Dict, List

from hatchling.builders.hooks.plugin.interface import BuildHookInterface
from hatchling.metadata.plugin.interface import MetadataHookInterface

BUILT = ("libndshm.so", "ndshm.h", "_ndshm_cffi.py")


class VersionFromHeader(MetadataHookInterface):
    """Read NDSHM_VERSION_MAJOR/MINOR/PATCH, so the version is written once, in the header."""

    def update(self, metadata: Dict[str, Any]) -> None:
        text = (Path(self.root) / "csrc" / "ndshm.h").read_text()
        parts = []
        for part in ("MAJOR", "MINOR", "PATCH"):
            m = re.search(rf"#define NDSHM_VERSION_{part} (\d+)", text)
            if m is None:
                raise SystemExit(f"ndshm: csrc/ndshm.h does not define NDSHM_VERSION_{part}")
            parts.append(m.group(1))
        metadata["version"] = ".".join(parts)


def makefile_flags(makefile: Path) -> Dict[str, str]:
    """The simple ``NAME := value`` / ``NAME ?= value`` assignments of the Makefile, expanded
    (``$(NAME)`` references); the first assignment of a name wins, so conditional additions such
    as ``WARN += -Werror`` are left out."""
    raw: Dict[str, str] = {}
    for line in makefile.read_text().splitlines():
        m = re.match(r"^([A-Z_]+)\s*[:?]=\s*(.*)$", line)
        if m and m.group(1) not in raw:
            raw[m.group(1)] = m.group(2).strip()

    def expand(value: str, depth: int = 0) -> str:
        if depth > 10:
            raise RuntimeError(f"ndshm: cannot expand the Makefile's flags ({value!r})")
        return re.sub(r"\$\(([A-Z_]+)\)", lambda m: expand(raw.get(m.group(1), ""), depth + 1), value)

    return {name: expand(value) for name, value in raw.items()}


def compiler() -> List[str]:
    """``$CC`` (default ``cc``) as an argument list; one clear line if it cannot be found."""
    cc = os.environ.get("CC", "").strip() or "cc"
    argv = shlex.split(cc)
    if shutil.which(argv[0]) is None:
        raise SystemExit(f"ndshm: no C compiler: {argv[0]!r} (from {'$CC' if os.environ.get('CC') else 'the default cc'})"
                         " is not on PATH; install one (e.g. apt-get install gcc) or set CC=gcc or CC=clang")
    return argv


def generate_cffi(root: Path, out: Path) -> None:
    """Write ``out/_ndshm_cffi.py`` from ``csrc/ndshm.h`` (build_cffi.py, loaded from the tree)."""
    spec = importlib.util.spec_from_file_location("ndshm_build_cffi", root / "build_cffi.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write(root / "csrc" / "ndshm.h", out / "_ndshm_cffi.py")


def run(cmd: List[str], root: Path) -> None:
    """Run one build command; a failure is one line (the compiler said why just above it)."""
    try:
        subprocess.run(cmd, cwd=root, check=True)
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"ndshm: building libndshm failed: `{shlex.join(cmd)}` exited with status {e.returncode}"
                         " (the messages above say why)") from None


def build(root: Path, out: Path) -> None:
    """Build libndshm.so, ndshm.h and _ndshm_cffi.py into ``out``."""
    cc = compiler()
    out.mkdir(parents=True, exist_ok=True)
    if shutil.which("make"):
        cmd = ["make", "--no-print-directory", "lib", f"PKG={out}", f"CC={shlex.join(cc)}",
               f"WERROR={os.environ.get('WERROR', '0')}", f"PYTHON={sys.executable}"]
        run(cmd, root)
        return
    # No make (Debian's gcc does not pull it in): the same flags, read from the Makefile.
    flags = makefile_flags(root / "Makefile")
    srcs = sorted(str(p) for p in (root / "csrc").glob("*.c"))
    lib = out / "libndshm.so"
    tmp = out / ".libndshm.so.tmp"
    cmd = [*cc, *shlex.split(flags["BASE_CFLAGS"]), *shlex.split(os.environ.get("CFLAGS", flags["CFLAGS"])),
           *shlex.split(flags["LIB_LDFLAGS"]), "-o", str(tmp), *srcs, *shlex.split(os.environ.get("LDFLAGS", ""))]
    print("ndshm: make is not installed; compiling directly:", shlex.join(cmd), file=sys.stderr)
    run(cmd, root)
    os.replace(tmp, lib)
    shutil.copyfile(root / "csrc" / "ndshm.h", out / "ndshm.h")
    generate_cffi(root, out)


class BuildLibrary(BuildHookInterface):
    """Build the library and tag the wheel for the platform, not the interpreter."""

    def initialize(self, version: str, build_data: Dict[str, Any]) -> None:
        root = Path(self.root)
        build_data["pure_python"] = False
        build_data["tag"] = "py3-none-" + sysconfig.get_platform().replace("-", "_").replace(".", "_")
        if version == "editable":  # the package is the source tree: build in place, as `make lib`
            build(root, root / "pybind" / "ndshm")
            return
        cc = os.path.basename(compiler()[0])
        out = root / "build" / f"wheel-{cc}"
        build(root, out)
        for name in BUILT:
            build_data["force_include"][str(out / name)] = f"ndshm/{name}"

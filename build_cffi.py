"""Generate ndshm's cffi module (out-of-line ABI mode) from the C header.

    python build_cffi.py csrc/ndshm.h pybind/ndshm/_ndshm_cffi.py

The declarations are read from ``ndshm.h`` itself, never typed twice: :func:`cdef_from_header`
strips comments, preprocessor lines, the C++ guards and the ``NDSHM_API`` export macro, and cffi
parses what is left, once, here. The output is pure Python (``ffi.set_source(name, None)``: no
compiler, no Python headers) that imports only ``_cffi_backend``, so ``import ndshm`` never runs
pycparser. The header's version macros are appended to it, so that ``ndshm._lib`` can refuse a
library built from another header without reading the header again.

``make lib`` runs this (it needs cffi, and so pycparser, at build time only); so does the wheel
build (``hatch_build.py``). ``tests/binding/test_binding.py`` regenerates the module in memory and fails
if the installed one has drifted from the header.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import List, Tuple

MODULE = "ndshm._ndshm_cffi"


def cdef_from_header(text: str) -> str:
    """Return the cffi declarations contained in the text of ``ndshm.h``."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"#\s*ifdef\s+__cplusplus.*?#\s*endif", "", text, flags=re.S)
    kept, continued = [], False
    for line in text.splitlines():
        if continued or line.lstrip().startswith("#"):
            continued = line.rstrip().endswith("\\")
            continue
        kept.append(line)
    return re.sub(r"\bNDSHM_API\b", "", "\n".join(kept))


def define(text: str, name: str) -> int:
    """The value of ``#define name <integer>`` in the header text."""
    m = re.search(rf"^\s*#\s*define\s+{name}\s+(\d+)\s*$", text, flags=re.M)
    if m is None:
        raise ValueError(f"ndshm.h does not define {name}")
    return int(m.group(1))


def versions(text: str) -> Tuple[Tuple[int, int, int], int]:
    """((major, minor, patch), abi) as the header defines them."""
    major, minor, patch = (define(text, f"NDSHM_VERSION_{p}") for p in ("MAJOR", "MINOR", "PATCH"))
    return (major, minor, patch), define(text, "NDSHM_ABI_VERSION")


def generate(header_text: str) -> str:
    """The source of the generated module for this header text."""
    from cffi import FFI

    ffi = FFI()
    ffi.cdef(cdef_from_header(header_text))
    ffi.set_source(MODULE, None)
    version, abi = versions(header_text)
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "m.py"
        with contextlib.redirect_stdout(io.StringIO()):  # cffi says "generating <tmp path>"
            ffi.emit_python_code(str(out))
        code = out.read_text()
    return (code.rstrip("\n") + "\n\n# From the same header's version macros (build_cffi.py):\n"
            f"HEADER_VERSION = {version!r}\nHEADER_ABI = {abi!r}\n")


def write(header: Path, out: Path) -> None:
    """Generate ``out`` from ``header``, replacing it by rename (never a half-written module)."""
    code = generate(header.read_text())
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(code)
    os.replace(tmp, out)


def main(argv: List[str]) -> int:
    if len(argv) != 2:
        print("usage: python build_cffi.py csrc/ndshm.h pybind/ndshm/_ndshm_cffi.py", file=sys.stderr)
        return 2
    try:
        import cffi  # noqa: F401
    except ImportError:
        print(f"build_cffi.py: {sys.executable} has no cffi, which generates ndshm's binding at build time: "
              "pip install cffi, or run make with PYTHON=/path/to/a/python-with-cffi", file=sys.stderr)
        return 1
    write(Path(argv[0]), Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

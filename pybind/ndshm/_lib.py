"""Loading libndshm through cffi in ABI mode.

The declarations are read from ``ndshm.h`` itself (the copy that ``make lib`` places next to
the library), never typed twice: :func:`cdef_from_header` strips comments, preprocessor lines,
the C++ guards and the ``NDSHM_API`` export macro, and cffi parses what is left. The version
macros are read from the same text so that a library built from another header is refused.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

from cffi import FFI

__all__ = ["ffi", "lib", "LIBRARY_PATH", "HEADER_VERSION", "HEADER_ABI", "cdef_from_header"]

_LIBNAME = "libndshm.so"


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


def _define(text: str, name: str) -> int:
    m = re.search(rf"^\s*#\s*define\s+{name}\s+(\d+)\s*$", text, flags=re.M)
    if m is None:
        raise ImportError(f"ndshm.h does not define {name}; the installed header is damaged")
    return int(m.group(1))


def _package_file(name: str) -> Path:
    # importlib.resources rather than __file__: editable installs may put files elsewhere.
    return Path(str(resources.files("ndshm").joinpath(name)))


def _load() -> tuple[FFI, object, str, tuple[int, int, int], int]:
    header_path = _package_file("ndshm.h")
    try:
        header = header_path.read_text()
    except OSError as exc:
        raise ImportError(
            f"ndshm: cannot read the C header {header_path} ({exc.strerror}); "
            "build the library with `make lib` or reinstall with `pip install .`"
        ) from None
    version = tuple(_define(header, f"NDSHM_VERSION_{part}") for part in ("MAJOR", "MINOR", "PATCH"))
    abi = _define(header, "NDSHM_ABI_VERSION")

    ffi = FFI()
    ffi.cdef(cdef_from_header(header))

    env = os.environ.get("NDSHM_LIBRARY")
    candidates = [Path(env)] if env else [_package_file(_LIBNAME)]
    tried = []
    for path in candidates:
        try:
            lib = ffi.dlopen(str(path))
        except OSError as exc:
            tried.append(f"{path} ({exc})")
            continue
        got_abi = lib.ndshm_abi_version()
        if got_abi != abi:
            got = lib.ndshm_version()
            raise ImportError(
                f"ndshm: the library {path} has ABI {got_abi} (version {got // 10000}.{got // 100 % 100}."
                f"{got % 100}) but this package expects ABI {abi} (version {'.'.join(map(str, version))}); "
                "rebuild it with `make lib`"
                + (" or unset NDSHM_LIBRARY" if env else "")
            )
        return ffi, lib, str(path), version, abi
    hint = "unset NDSHM_LIBRARY or point it at a built libndshm.so" if env else (
        "build it with `make lib` (or reinstall with `pip install .`), or set NDSHM_LIBRARY=/path/libndshm.so"
    )
    raise ImportError("ndshm: cannot load libndshm; tried " + "; ".join(tried) + f". To fix: {hint}")


ffi, lib, LIBRARY_PATH, HEADER_VERSION, HEADER_ABI = _load()

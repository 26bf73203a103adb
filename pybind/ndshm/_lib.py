"""Loading libndshm through cffi in ABI mode, out of line.

The declarations come from ``_ndshm_cffi.py``, which ``build_cffi.py`` generates from ``ndshm.h``
when the library is built (``make lib``, or the wheel build): pure Python that hands cffi's backend
the already-parsed types, so importing ndshm runs no C parser and needs no compiler or headers.
The same module carries the header's version macros, so that a library built from another header
is refused.
"""

from __future__ import annotations

import os
from typing import Any, Tuple

__all__ = ["ffi", "lib", "LIBRARY_PATH", "HEADER_VERSION", "HEADER_ABI"]

_LIBNAME = "libndshm.so"
_BUILD_HINT = "build the library with `make lib` or reinstall with `pip install .`"

try:
    from ._ndshm_cffi import HEADER_ABI, HEADER_VERSION, ffi
except ImportError as _exc:  # a source tree that was never built, or a damaged install
    raise ImportError(f"ndshm: cannot import its generated cffi module ndshm._ndshm_cffi ({_exc}); "
                      + _BUILD_HINT) from None


def _package_file(name: str) -> str:
    # Next to this module: wheels and editable installs (a path to the source tree) both put the
    # library there. Plain os.path, not importlib.resources: that costs ~40 ms of imports.
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), name)


def _load() -> Tuple[Any, str]:
    version, abi = HEADER_VERSION, HEADER_ABI
    env = os.environ.get("NDSHM_LIBRARY")
    candidates = [env] if env else [_package_file(_LIBNAME)]
    tried = []
    for path in candidates:
        try:
            lib = ffi.dlopen(path)
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
        return lib, path
    hint = "unset NDSHM_LIBRARY or point it at a built libndshm.so" if env else (
        "build it with `make lib` (or reinstall with `pip install .`), or set NDSHM_LIBRARY=/path/libndshm.so"
    )
    raise ImportError("ndshm: cannot load libndshm; tried " + "; ".join(tried) + f". To fix: {hint}")


lib, LIBRARY_PATH = _load()

# Types of the module build_cffi.py generates from ndshm.h (out-of-line cffi, ABI mode).
from typing import Any, Tuple

ffi: Any  # _cffi_backend.FFI: cffi ships no type information for it
HEADER_VERSION: Tuple[int, int, int]
HEADER_ABI: int

"""The cffi binding agrees with the C header and the built library; loading fails helpfully."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys

import pytest

import ndshm
from ndshm import _errors
from ndshm._lib import HEADER_ABI, HEADER_VERSION, LIBRARY_PATH, ffi, lib
from conftest import ROOT, run_python

HEADER = (ROOT / "csrc" / "ndshm.h").read_text()


def _load_build_cffi():
    spec = importlib.util.spec_from_file_location("build_cffi", ROOT / "build_cffi.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_cffi = _load_build_cffi()
cdef_from_header = build_cffi.cdef_from_header


def declared_functions() -> set[str]:
    return set(re.findall(r"\b(ndshm_\w+)\s*\(", cdef_from_header(HEADER)))


def exported_functions() -> set[str]:
    out = subprocess.run(["nm", "-D", "--defined-only", LIBRARY_PATH], capture_output=True, text=True, check=True)
    return {line.split()[-1] for line in out.stdout.splitlines() if line.split()[1:2] == ["T"]}


def test_packaged_header_is_the_source_header():
    assert (ROOT / "pybind" / "ndshm" / "ndshm.h").read_text() == HEADER


def test_generated_module_is_the_one_the_header_gives():
    """The drift test: the imported cffi module is exactly what build_cffi.py makes of csrc/ndshm.h
    today (a header edited without `make lib` fails here), and it is the module ndshm uses."""
    from ndshm import _ndshm_cffi

    assert _ndshm_cffi.ffi is ffi
    try:
        expected = build_cffi.generate(HEADER)
    except ImportError as e:  # PyPy's cffi is built in; CPython's needs pycparser to generate
        pytest.fail(f"cannot regenerate the module to compare: {e}")
    with open(_ndshm_cffi.__file__) as f:
        assert f.read() == expected, "pybind/ndshm/_ndshm_cffi.py is stale: run `make lib`"
    assert (HEADER_VERSION, HEADER_ABI) == build_cffi.versions(HEADER)


def test_drift_is_detected():
    """A declaration added to (or changed in) the header changes the generated module."""
    edited = HEADER.replace("NDSHM_API int ndshm_abi_version(void);",
                            "NDSHM_API int ndshm_abi_version(void);\nNDSHM_API int ndshm_new_thing(int x);")
    assert edited != HEADER, "the header no longer declares ndshm_abi_version as expected"
    assert build_cffi.generate(edited) != build_cffi.generate(HEADER)
    bumped = re.sub(r"(#define NDSHM_ABI_VERSION )(\d+)", lambda m: m.group(1) + str(int(m.group(2)) + 1), HEADER)
    assert build_cffi.generate(bumped) != build_cffi.generate(HEADER)


def test_import_parses_no_c():
    """Out-of-line mode: importing ndshm loads neither pycparser nor cffi's in-line machinery."""
    proc = run_python("import sys, ndshm; print(sorted(m for m in sys.modules if m.split('.')[0] in "
                      "('pycparser', 'cffi')))")
    assert proc.stdout.strip() == "[]", proc.stdout


def test_missing_generated_module_is_an_import_error_that_says_what_to_do(tmp_path):
    pkg = tmp_path / "ndshm"
    shutil.copytree(ROOT / "pybind" / "ndshm", pkg, ignore=shutil.ignore_patterns("_ndshm_cffi.py", "__pycache__"))
    proc = subprocess.run([sys.executable, "-c", "import ndshm"], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)}, cwd=str(tmp_path))
    assert proc.returncode != 0
    assert "ndshm._ndshm_cffi" in proc.stderr and "make lib" in proc.stderr, proc.stderr


def test_every_declared_function_is_exported_and_nothing_else():
    exported = exported_functions()
    assert exported == declared_functions()
    assert all(name.startswith("ndshm_") for name in exported)


def test_library_links_no_libpython():
    out = subprocess.run(["readelf", "-d", LIBRARY_PATH], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\).*\[(.*)\]", out)
    assert needed and not any("python" in n for n in needed), needed


def test_struct_layouts_and_enums_match_the_compiler(tmp_path):
    """Compile a program against ndshm.h that prints every struct's size and field offsets and
    every enum constant; cffi's view (which ABI mode cannot check itself) must agree."""
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "a C compiler is needed to build ndshm, so it is there"
    structs = sorted(name for name in ffi.list_types()[1])
    enums = re.findall(r"\benum\s+(\w+)\s*\{", HEADER)
    lines, expected = [], []
    for st in structs:
        t = ffi.typeof(f"struct {st}")
        try:  # sizeof first: out-of-line cffi asserts (aborts) on .fields of a never-completed struct
            ffi.sizeof(t)
        except ffi.error:  # an opaque handle: only pointers to it cross the boundary
            continue
        lines.append(f'printf("sizeof {st} %zu\\n", sizeof(struct {st}));')
        expected.append(f"sizeof {st} {ffi.sizeof(t)}")
        for field, _ in t.fields:
            lines.append(f'printf("offsetof {st}.{field} %zu\\n", offsetof(struct {st}, {field}));')
            expected.append(f"offsetof {st}.{field} {ffi.offsetof(t, field)}")
    for en in enums:
        for value, name in sorted(ffi.typeof(f"enum {en}").elements.items()):
            lines.append(f'printf("enum {name} %lld\\n", (long long){name});')
            expected.append(f"enum {name} {value}")
    assert len(structs) >= 2 and len(enums) >= 4
    src = tmp_path / "layout.c"
    src.write_text("#include <stddef.h>\n#include <stdio.h>\n#include \"ndshm.h\"\nint main(void) {\n"
                   + "\n".join(lines) + "\nreturn 0;\n}\n")
    exe = tmp_path / "layout"
    subprocess.run([cc, "-std=c11", "-I", str(ROOT / "csrc"), "-o", str(exe), str(src)], check=True)
    got = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.splitlines()
    assert got == expected


def test_version_is_consistent():
    assert lib.ndshm_abi_version() == HEADER_ABI
    major, minor, patch = map(int, ndshm.__version__.split("."))
    assert lib.ndshm_version() == major * 10000 + minor * 100 + patch


def test_missing_library_is_an_import_error_that_says_where(tmp_path):
    missing = tmp_path / "nope" / "libndshm.so"
    proc = run_python("import ndshm", check=False, NDSHM_LIBRARY=str(missing))
    assert proc.returncode != 0
    assert "ImportError" in proc.stderr and str(missing) in proc.stderr and "NDSHM_LIBRARY" in proc.stderr


def test_mismatched_library_is_refused(tmp_path):
    src = tmp_path / "fake.c"
    src.write_text("int ndshm_abi_version(void) { return 999; }\nint ndshm_version(void) { return 20304; }\n")
    fake = tmp_path / "libfake.so"
    subprocess.run([shutil.which("gcc") or "cc", "-shared", "-fPIC", "-o", str(fake), str(src)], check=True)
    proc = run_python("import ndshm", check=False, NDSHM_LIBRARY=str(fake))
    assert proc.returncode != 0
    assert "ABI 999" in proc.stderr and "2.3.4" in proc.stderr and f"expects ABI {HEADER_ABI}" in proc.stderr


def test_library_override_loads_that_library(tmp_path):
    copy = tmp_path / "libndshm-copy.so"
    shutil.copy(LIBRARY_PATH, copy)
    proc = run_python("import ndshm._lib as L; print(L.LIBRARY_PATH)", NDSHM_LIBRARY=str(copy))
    assert proc.stdout.strip() == str(copy)


@pytest.mark.parametrize("code, builtin", [
    (lib.NDSHM_EINVAL, ValueError), (lib.NDSHM_EOVERFLOW, ValueError), (lib.NDSHM_ETOOBIG, ValueError),
    (lib.NDSHM_ECORRUPT, ValueError), (lib.NDSHM_ECLOSED, ValueError), (lib.NDSHM_ENOMEM, MemoryError),
    (lib.NDSHM_EEXIST, FileExistsError), (lib.NDSHM_ENOENT, FileNotFoundError),
    (lib.NDSHM_EACCES, PermissionError), (lib.NDSHM_EPERM, PermissionError), (lib.NDSHM_ENOSPC, OSError),
    (lib.NDSHM_ETIMEDOUT, TimeoutError), (lib.NDSHM_EBUSY, BlockingIOError), (lib.NDSHM_ENOTSUP, OSError),
    (lib.NDSHM_ESYS, OSError), (lib.NDSHM_EOWNERDEAD, RuntimeError),
])
def test_every_code_maps_to_a_builtin_exception(code, builtin):
    exc = _errors.error_from_code(code)
    assert isinstance(exc, builtin) and isinstance(exc, ndshm.NdshmError)
    assert exc.code == code and exc.errname == ffi.string(lib.ndshm_errname(code)).decode()


def test_queue_codes_are_the_standard_library_exceptions():
    import queue
    import threading

    assert isinstance(_errors.error_from_code(lib.NDSHM_EEMPTY), queue.Empty)
    assert isinstance(_errors.error_from_code(lib.NDSHM_EFULL), queue.Full)
    assert isinstance(_errors.error_from_code(lib.NDSHM_EBROKEN), threading.BrokenBarrierError)


def test_every_code_in_the_enum_is_mapped():
    codes = {v for v, n in ffi.typeof("enum ndshm_error").elements.items() if v < 0 and not n.endswith("_")}
    assert codes <= set(_errors._TABLE) | {lib.NDSHM_ESYS}

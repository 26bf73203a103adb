"""C owns every byte layout of ours (issue 19): no Python file of the package writes a magic, a
header offset or a ``struct`` format of a segment, ring or process table.

The magics are read from the C sources themselves (every ``#define ...MAGIC...`` and the other
tagged words of ``csrc/*.c``), so a new one is covered without editing this test; the header's
offsets from ``csrc/internal.h`` (``NDSHM__HDR_*``). Python reaches those layouts through C calls
(``ndshm_segment_probe_fd``, ``ndshm_segment_summary``'s ``NDSHM_SUM_*`` slots, ``ffi.offsetof``).
Formats that are not ours are allowed where they live, each with its reason.
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "pybind" / "ndshm"

# Files that read or write a binary format that is *not* ndshm's, so struct/pread are theirs to use.
FOREIGN = {
    "compat/_shareable_list.py": "the standard library's ShareableList layout (either module reads the other's lists)",
    "compat/sharedarray.py": "the SharedArray package's metadata trailer",
    "dask.py": "the kernel's struct flock (fcntl F_OFD_SETLK)",
}
GENERATED = {"_ndshm_cffi.py"}  # generated from csrc/ndshm.h by `make lib`


def c_words() -> dict[str, int | bytes]:
    """Every magic and tagged word the C sources define: name -> value (int, or bytes for a string)."""
    words: dict[str, int | bytes] = {}
    pat = re.compile(r'^#define\s+(\w+)\s+(0x[0-9A-Fa-f]+)u?l{0,2}\b|^#define\s+(\w*MAGIC\w*)\s+"([^"]+)"', re.M)
    for path in sorted((ROOT / "csrc").glob("*.[ch]")):
        for m in pat.finditer(path.read_text()):
            if m.group(1):
                value = int(m.group(2), 16)
                if value >= 1 << 24 and re.search(r"MAGIC|MARKER|STATE", m.group(1)):
                    words[m.group(1)] = value
            else:
                words[m.group(3)] = m.group(4).encode()
    return words


def header_offsets() -> dict[str, int]:
    text = (ROOT / "csrc" / "internal.h").read_text()
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"(NDSHM__HDR_\w+)\s*=\s*(\d+)\s*,", text)}


def _ascii_forms(value: int | bytes) -> set[str]:
    """The ways a magic shows up as text: its bytes in either byte order (when printable; 8-byte
    magics only: a 4-byte word such as "HAND" is also part of ordinary words, and is searched for
    as a number)."""
    if isinstance(value, bytes):
        return {value.decode()}
    if value.bit_length() <= 32:
        return set()
    n = (value.bit_length() + 7) // 8
    out = set()
    for order in ("little", "big"):
        raw = value.to_bytes(n, order)  # type: ignore[arg-type]
        if all(0x20 < b < 0x7F for b in raw):
            out.add(raw.decode())
    return out


def _is_cast(call: ast.Call) -> bool:
    f = call.func
    return isinstance(f, ast.Attribute) and f.attr == "cast" and isinstance(f.value, ast.Name) and f.value.id == "ffi"


def _has_int_literal(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Constant) and type(n.value) is int and n.value not in (0, 1)
               for n in ast.walk(node))


def scan(root: Path) -> list[str]:
    """Every place a Python file of the package at ``root`` writes one of our layouts."""
    words = c_words()
    ints = {v: k for k, v in words.items() if isinstance(v, int)}
    texts = {form: k for k, v in words.items() for form in _ascii_forms(v)}
    offsets = {v: k for k, v in header_offsets().items() if v >= 64}
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in GENERATED:
            continue
        src = path.read_text()
        for form, name in texts.items():
            for m in re.finditer(re.escape(form), src):
                found.append(f"{rel}:{src.count(chr(10), 0, m.start()) + 1}: {name} as text {form!r}")
        tree = ast.parse(src, rel)
        foreign = rel in FOREIGN
        for node in ast.walk(tree):
            line = f"{rel}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Constant) and type(node.value) is int:
                if node.value in ints:
                    found.append(f"{line}: {ints[node.value]} ({node.value:#x}) as a number")
                elif node.value in offsets:
                    found.append(f"{line}: header offset {offsets[node.value]} ({node.value}) as a number")
            elif isinstance(node, (ast.Import, ast.ImportFrom)) and not foreign:
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if "struct" in mods:
                    found.append(f"{line}: imports struct (a binary format written in Python)")
            elif isinstance(node, ast.Attribute) and not foreign:
                if node.attr == "pread":
                    found.append(f"{line}: pread of a file's bytes (C reads our files: ndshm_segment_probe_fd)")
                elif isinstance(node.value, ast.Name) and node.value.id == "struct":
                    found.append(f"{line}: struct.{node.attr} (a struct format of ours written in Python)")
            elif isinstance(node, ast.Call) and _is_cast(node) and len(node.args) == 2:
                if isinstance(node.args[1], ast.BinOp) and _has_int_literal(node.args[1]):
                    found.append(f"{line}: pointer arithmetic with a literal offset in ffi.cast")
            elif isinstance(node, ast.Assign) and not foreign:
                for target in node.targets:
                    if (isinstance(target, ast.Name) and re.search(r"OFFSET|_MAGIC$", target.id)
                            and isinstance(node.value, ast.Constant) and type(node.value.value) in (int, bytes, str)):
                        found.append(f"{line}: {target.id} = {node.value.value!r} (a layout constant in Python)")
    return found


def test_the_c_sources_name_what_is_searched() -> None:
    words = c_words()
    assert words.get("MAGIC") == b"NDSHMSEG"
    assert {"NDSHM__QUEUE_MAGIC", "NDSHM__BCAST_MAGIC", "TABLE_MAGIC", "HANDOVER_MARKER"} <= set(words)
    assert header_offsets()["NDSHM__HDR_SYNC_OFFSET"] == 640


def test_no_python_file_writes_our_layouts() -> None:
    assert scan(PKG) == []


def test_a_planted_layout_is_found(tmp_path: Path) -> None:
    copy = tmp_path / "ndshm"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    before = set(scan(copy))
    plant = copy / "_ownership.py"
    plant.write_text(plant.read_text() + '\n\ndef _planted(fd, ffi, addr):\n    head = os.pread(fd, 8, 0) == b"NDSHMSEG"\n'
                     "    flags = os.pread(fd, 4, 24)\n    slot = os.pread(fd, 64, 640 + 3 * 64)\n"
                     '    marker = ffi.cast("uint32_t *", addr + 16)[0] == 0x48414E44\n    return head, flags, slot, marker\n')
    new = sorted(set(scan(copy)) - before)
    text = "\n".join(new)
    assert "MAGIC as text 'NDSHMSEG'" in text
    assert "NDSHM__HDR_SYNC_OFFSET (640)" in text
    assert "HANDOVER_MARKER (0x48414e44)" in text
    assert "pointer arithmetic" in text
    assert text.count("pread") == 3

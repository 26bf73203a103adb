"""The package's import graph keeps its stairs one-way (issue 19).

Every module of ``pybind/ndshm`` is parsed with ``ast`` (imports at module level *and* inside
functions: a lazy import is still a dependency; imports under ``if TYPE_CHECKING:`` are for
annotations only and are left out) and mapped to a layer in ``LAYERS``. The check fails
on an import of a higher layer, on any circle among modules, and on a room reaching into another
room's private names (``from ._x import _name``, ``_x._name`` with ``_x`` bound by ``from . import
_x`` or ``import ndshm._x as _x``). Nor may a room read, write or call a private
attribute of another room's objects (``seg._owner``, ``ring._handle``): see
``attribute_reaches``. A planted upward import
in a copy of the package shows that the check can fail.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path
from typing import Optional

PKG = Path(__file__).resolve().parents[2] / "pybind" / "ndshm"

# Lowest first. A module may import its own layer (without a circle) and the layers below it.
LAYERS: list[tuple[str, set[str]]] = [
    ("binding", {"_lib", "_ndshm_cffi"}),
    ("base", {"_errors", "_dtype", "_dirs", "_codec", "_identity", "_buffer", "_compat_blocks"}),
    # Who removes a name, and the per-process mapping cache: state machines the Segment class
    # drives; they know a segment by its package methods, never by importing the class.
    ("segment state", {"_ownership", "_mappings"}),
    # _params: Segment.create's arguments checked and written into the C struct (no mapped segment)
    ("segment core", {"_params", "_segment", "_fdpass"}),
    ("references", {"_reference"}),
    ("rings and sync", {"_ring", "_messages", "_slots", "_async", "_queue", "_broadcast", "_sync", "_waits"}),
    ("module API", {"_api"}),
    # Arrays carved from a pre-faulted pool; a full pool's fallback is a segment of its own (_api).
    ("pool", {"pool"}),
    ("integrations and compat", {"_replica", "_replicate", "dask", "ray", "mpi", "torch", "_listing", "compat",
                                 "compat.shared_memory", "compat._shared_memory", "compat._shareable_list",
                                 "compat.managers", "compat.sharedarray"}),
    ("front ends", {"_cli", "_benchcli", "__main__", "__init__"}),
]

# Upward edges the package accepts, each with its reason. Keep this list short.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {
    # Segment's public .lock/.event/.barrier hand out objects of the sync room, whose standalone
    # objects are Segments: the one place a lower room names a higher one (inside those methods).
    ("_segment", "_sync"): "Segment.lock/.event/.barrier return the sync room's objects",
}


# Modules that are one room split into files, sharing their private helpers. None today: the rings'
# files (_ring, _messages, _slots, _queue, _broadcast, _async) give what they share a package name
# in the module that owns it (_ring.Ring, _messages.push_msg, _slots.Loan ...). An entry here needs
# its reason, as the lists above.
ROOMS: list[set[str]] = []

# Private names one room may still read in another, each with its reason. Keep this list empty.
ALLOWED_PRIVATE: dict[str, str] = {}


def _same_room(a: str, b: str) -> bool:
    return a == b or any(a in room and b in room for room in ROOMS)


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> Optional[str]:
    """The package module an ImportFrom names (None: outside the package)."""
    if node.level == 0:
        if node.module and (node.module == "ndshm" or node.module.startswith("ndshm.")):
            return node.module[len("ndshm."):] if node.module != "ndshm" else "__init__"
        return None
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    up = node.level - 1
    if up:
        base = base[:-up]
    target = ".".join(base + ([node.module] if node.module else []))
    return target or "__init__"


def _walk(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:`` (annotations only)."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.If) and (
                (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
                or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def collect(root: Path) -> tuple[dict[str, set[str]], list[str], list[str]]:
    """(module -> package modules it imports, private-name reaches, modules without a layer)."""
    graph: dict[str, set[str]] = {}
    private: list[str] = []
    modules = {}
    for path in sorted(root.rglob("*.py")):
        modules[_module_name(path, root)] = path
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py" and path.parent != root
        tree = ast.parse(path.read_text(), str(path))
        deps: set[str] = set()
        aliases: dict[str, str] = {}  # local name -> package module it is bound to
        nodes = _walk(tree)
        for node in nodes:
            if isinstance(node, ast.ImportFrom):
                target = _resolve(mod, is_pkg, node)
                if target is None:
                    continue
                for a in node.names:
                    sub = f"{target}.{a.name}" if target != "__init__" else a.name
                    if sub in modules:  # from . import _x: the module itself
                        deps.add(sub)
                        aliases[a.asname or a.name] = sub
                    else:
                        deps.add(target)
                        if a.name.startswith("_") and not a.name.startswith("__") and not _same_room(target, mod):
                            private.append(f"{mod}:{node.lineno} imports {target}.{a.name}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("ndshm."):
                        deps.add(a.name[len("ndshm."):])
                        if a.asname:  # import ndshm._x as m: m._y reads _x's private name
                            aliases[a.asname] = a.name[len("ndshm."):]
        for node in nodes:
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_") and not node.attr.startswith("__")
                    and not _same_room(aliases[node.value.id], mod)):
                private.append(f"{mod}:{node.lineno} reads {aliases[node.value.id]}.{node.attr}")
        deps.discard(mod)
        graph[mod] = {d for d in deps if d in modules}
    unknown = [m for m in graph if _layer(m) is None]
    return graph, private, unknown


def _layer(mod: str) -> Optional[int]:
    for i, (_, members) in enumerate(LAYERS):
        if mod in members:
            return i
    return None


def upward(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in sorted(graph.items()):
        lm = _layer(mod)
        for dep in sorted(deps):
            ld = _layer(dep)
            if lm is not None and ld is not None and ld > lm and (mod, dep) not in ALLOWED_UPWARD:
                bad.append(f"{mod} ({LAYERS[lm][0]}) imports {dep} ({LAYERS[ld][0]})")
    return bad


def circles(graph: dict[str, set[str]], allowed: bool = True) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), ignoring the allowed
    upward edges when ``allowed``: each is one import circle (or several tangled ones)."""
    edges = {m: {d for d in ds if not (allowed and (m, d) in ALLOWED_UPWARD)} for m, ds in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer() -> None:
    _, _, unknown = collect(PKG)
    assert unknown == [], f"modules missing from LAYERS in tests/test_layers.py: {unknown}"


def test_no_upward_import() -> None:
    graph, _, _ = collect(PKG)
    assert upward(graph) == []


def test_no_import_circle() -> None:
    graph, _, _ = collect(PKG)
    assert circles(graph) == []


def test_allowed_upward_edges_still_exist() -> None:
    """An exception nobody needs any more goes from the list (it must not hide a future edge)."""
    graph, _, _ = collect(PKG)
    stale = [edge for edge in ALLOWED_UPWARD if edge[1] not in graph.get(edge[0], set())]
    assert stale == []


def test_no_room_reads_another_rooms_private_names() -> None:
    _, private, _ = collect(PKG)
    assert [p for p in private if p.split(" ", 1)[0].split(":")[0] + " " + p.split(" ", 1)[1]
            not in ALLOWED_PRIVATE] == []


def test_allowed_private_reaches_still_exist() -> None:
    _, private, _ = collect(PKG)
    seen = {p.split(":")[0] + " " + p.split(" ", 1)[1] for p in private}
    assert sorted(set(ALLOWED_PRIVATE) - seen) == []


def test_the_check_fails_on_a_planted_upward_import(tmp_path: Path) -> None:
    copy = tmp_path / "ndshm"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    graph, _, _ = collect(copy)
    assert upward(graph) == [] and circles(graph) == []
    errors = copy / "_errors.py"
    errors.write_text(errors.read_text() + "\n\ndef _planted():\n    from ._queue import Queue\n    return Queue\n")
    graph, _, _ = collect(copy)
    assert upward(graph) == ["_errors (base) imports _queue (rings and sync)"]
    assert any("_errors" in c and "_queue" in c for c in circles(graph))


def test_the_check_fails_on_a_planted_private_read(tmp_path: Path) -> None:
    copy = tmp_path / "ndshm"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    cli = copy / "_cli.py"
    cli.write_text(cli.read_text() + "\n\nfrom . import _segment as _planted_seg\nX = _planted_seg._PREFIX\n")
    _, private, _ = collect(copy)
    assert any("_cli" in p and "_segment._PREFIX" in p for p in private), private


def test_the_rings_files_are_rooms_of_their_own(tmp_path: Path) -> None:
    """The rings' files share nothing private any more: a reach from one into another fails."""
    copy = tmp_path / "ndshm"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    queue = copy / "_queue.py"
    queue.write_text(queue.read_text() + "\n\nfrom ._messages import _tls as _planted_tls\n"
                     "import ndshm._slots as _planted_slots\nY = _planted_slots._EMPTY\n")
    _, private, _ = collect(copy)
    assert any(p.startswith("_queue:") and p.endswith("imports _messages._tls") for p in private), private
    assert any(p.startswith("_queue:") and p.endswith("reads _slots._EMPTY") for p in private), private


# ---- private attributes of another room's objects ------------------------------------------------
# An attribute ``x._name`` (``x`` not ``self``/``cls``) whose name only classes of OTHER modules
# define (``self._name = ...``, ``__slots__``, ``def _name``) reads, writes or calls another room's object: its state
# belongs to that room, which offers it by a package-level name. Which class ``x`` is cannot be
# told from the source: a name some class of the reading module defines too is left alone (an
# object of its own kind), so this check can miss a reach, never invent one.

def _attr_defs(tree: ast.AST) -> set[str]:
    """The private attribute and method names the classes of a module define."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for sub in ast.walk(t):
                    if (isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name)
                            and sub.value.id in ("self", "cls") and _private(sub.attr)):
                        names.add(sub.attr)
        if isinstance(node, ast.ClassDef):
            body = list(node.body)
            for stmt in body:
                if isinstance(stmt, ast.If):  # if TYPE_CHECKING: the hooks a base class declares
                    body += stmt.body + stmt.orelse
                elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and _private(stmt.name):
                    names.add(stmt.name)  # a private method is the room's too
                elif (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                      and _private(stmt.target.id)):
                    names.add(stmt.target.id)  # declared on the class (a hook its subclasses supply)
                elif (isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__slots__"
                                                         for t in stmt.targets)
                        and isinstance(stmt.value, (ast.Tuple, ast.List))):
                    names |= {e.value for e in stmt.value.elts
                              if isinstance(e, ast.Constant) and isinstance(e.value, str) and _private(e.value)}
    return names


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def attribute_reaches(root: Path) -> list[str]:
    """``module:line reaches _attr (defined by modules ...)`` for every such reach under ``root``."""
    trees = {_module_name(p, root): ast.parse(p.read_text(), str(p)) for p in sorted(root.rglob("*.py"))}
    defs = {m: _attr_defs(t) for m, t in trees.items()}
    out = []
    for mod, tree in trees.items():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and _private(node.attr)) or node.attr in defs[mod]:
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            owners = sorted(m for m, names in defs.items() if node.attr in names)
            if owners:
                out.append(f"{mod}:{node.lineno} reaches .{node.attr} (defined by {', '.join(owners)})")
    return out


def test_no_room_reaches_into_another_rooms_objects() -> None:
    assert attribute_reaches(PKG) == []


def test_the_check_fails_on_a_planted_attribute_reach(tmp_path: Path) -> None:
    copy = tmp_path / "ndshm"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    cli = copy / "_cli.py"
    cli.write_text(cli.read_text() + "\n\ndef _planted(seg):\n    return seg._data_size\n")
    reaches = attribute_reaches(copy)
    assert len(reaches) == 1 and reaches[0].startswith("_cli:") and "._data_size (defined by _segment)" in reaches[0], \
        reaches

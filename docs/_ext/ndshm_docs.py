"""Sphinx extension of ndshm's docs: the pages that are generated, never written by hand.

- The API reference: one page per public module (``ndshm`` and every public submodule), listing
  exactly its ``__all__`` through autosummary, so a name added to ``__all__`` gets its page
  and a name without a docstring fails the build (``make docs`` runs with ``-W``).
- ``.. ndshm-cli-help::``: the ``--help`` text of the command line and of each of its commands,
  taken from ``python -m ndshm`` at build time.
- ``.. ndshm-c-header::``: ``csrc/ndshm.h`` by section, each function with the contract above it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

DOCS = Path(__file__).resolve().parent.parent
ROOT = DOCS.parent
HEADER = ROOT / "csrc" / "ndshm.h"
API = DOCS / "api"  # generated: api/<module>.rst and api/generated/ (autosummary's pages)

# Every public module, in the order of the reference's table of contents. A public module that
# is missing here (found by walking the package) fails the build.
MODULES = ["ndshm", "ndshm.pool", "ndshm.torch", "ndshm.dask", "ndshm.ray", "ndshm.mpi", "ndshm.compat",
           "ndshm.compat.shared_memory", "ndshm.compat.managers", "ndshm.compat.sharedarray"]


def public_modules() -> list[str]:
    """ndshm and its submodules whose dotted names have no part starting with '_'."""
    import ndshm

    found = ["ndshm"]
    for info in pkgutil.walk_packages(ndshm.__path__, "ndshm.", onerror=lambda name: None):
        spec = importlib.util.find_spec(info.name)
        python_source = spec is not None and str(spec.origin).endswith(".py")  # not libndshm.so
        if python_source and not any(part.startswith("_") for part in info.name.split(".")):
            found.append(info.name)
    return found


def groups(module: Any) -> list[tuple[str, list[str]]]:
    """``module.__all__`` split into the groups its source marks with ``# comment`` lines inside the
    list (one group, "Contents", when it has none)."""
    names = list(module.__all__)
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return [("Contents", names)]
    m = re.search(r"^__all__\s*=\s*\[(.*?)\]", source, re.S | re.M)
    if not m or "#" not in m.group(1):
        return [("Contents", names)]
    out: list[tuple[str, list[str]]] = []
    title = "Contents"
    for line in m.group(1).splitlines():
        comment = re.match(r"\s*#\s*(.*)", line)
        if comment:
            title = comment.group(1).strip()
            title = title[:1].upper() + title[1:]
            continue
        found = re.findall(r"""["']([^"']+)["']""", line.split("#")[0])
        if found:
            if not out or out[-1][0] != title:
                out.append((title, []))
            out[-1][1].extend(found)
    listed = [n for _, ns in out for n in ns]
    assert sorted(listed) == sorted(names), (module.__name__, listed, names)
    return out


def module_page(modname: str) -> str:
    module = importlib.import_module(modname)
    title = f"``{modname}``"
    lines = [title, "=" * len(title), "", f".. automodule:: {modname}", "   :no-members:", "",
             f".. currentmodule:: {modname}", ""]
    submodules = []
    for group, names in groups(module):
        objects = []
        for name in names:
            obj = getattr(module, name, None)
            if obj is None:  # a submodule the package imports on first use (ndshm.compat.sharedarray)
                obj = importlib.import_module(f"{modname}.{name}")
            if inspect.ismodule(obj):
                submodules.append(obj.__name__)
            else:
                objects.append(name)
        if not objects:
            continue
        lines += [group, "-" * len(group), "", ".. autosummary::", "   :toctree: generated", ""]
        lines += [f"   {name}" for name in objects]
        lines.append("")
    if submodules:
        lines += ["Submodules", "----------", "", ".. toctree::", "   :maxdepth: 1", ""]
        lines += [f"   {sub}" for sub in submodules]
        lines.append("")
    return "\n".join(lines)


def write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def generate_api(app: Sphinx, config: Any) -> None:
    """Write api/<module>.rst for every public module. It runs at config-inited, before Sphinx lists
    the source files: a page written later (builder-inited) is unknown to that first build, so
    autosummary would not generate its stubs and every reference to them would break."""
    missing = sorted(set(public_modules()) - set(MODULES))
    if missing:
        logger.warning("public modules missing from the API reference (docs/_ext/ndshm_docs.py MODULES): %s",
                       ", ".join(missing))
    for modname in MODULES:
        write_if_changed(API / f"{modname}.rst", module_page(modname))


# ---------------------------------------------------------------- docstrings and members


def _defined_in_ndshm(obj: Any) -> bool:
    target = getattr(obj, "fget", None) or getattr(obj, "__func__", None) or obj
    module = getattr(target, "__module__", None)
    return isinstance(module, str) and (module == "ndshm" or module.startswith("ndshm."))


def callable_or_property(obj: Any) -> bool:
    return isinstance(obj, (property, staticmethod, classmethod)) or callable(obj)


def skip_member(app: Sphinx, what: str, name: str, obj: Any, skip: bool, options: Any) -> Any:
    """Members inherited from NumPy, the standard library or ``object`` stay on their own pages:
    a class's page lists what ndshm defines (its own methods and those of ndshm base classes)."""
    if skip:
        # autodoc skips an undocumented member silently (no undoc-members): a public method or
        # property that ndshm defines must have a docstring, so that skip is a warning.
        if (what in ("class", "exception") and not name.startswith("_") and callable_or_property(obj)
                and _defined_in_ndshm(obj) and not (getattr(obj, "__doc__", None) or "").strip()):
            logger.warning("%s.%s has no docstring (every public member of an ndshm class needs one)", getattr(obj, "__qualname__", "?").rsplit(".", 1)[0] if not isinstance(obj, property) else getattr(obj.fget, "__qualname__", "?").rsplit(".", 1)[0], name)
        return None
    if what in ("class", "exception") and not _defined_in_ndshm(obj):
        return True
    return None


def foreign_base_defining(name: str) -> str:
    """The dotted name of the first base class outside ndshm that defines the method ``name``
    (``ndshm.dask.NdshmPlugin.transition``), or ''."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:-1]:
                obj = getattr(obj, attr)
        except AttributeError:
            return ""
        for base in getattr(obj, "__mro__", ())[1:]:
            if parts[-1] in vars(base) and not base.__module__.startswith("ndshm"):
                return f"{base.__module__}.{base.__qualname__}"
        return ""
    return ""


def _private_base(base: Any) -> bool:
    """A class of ours the reader cannot name: a private name (``_SlotBase``), or a package-internal
    one of a private module that ``ndshm`` does not export (``ndshm._ring.Ring``)."""
    if not isinstance(base, type):
        return False
    if base.__name__.startswith("_"):
        return True
    parts = base.__module__.split(".")
    if parts[0] != "ndshm" or not any(p.startswith("_") for p in parts[1:]):
        return False
    import ndshm
    return getattr(ndshm, base.__name__, None) is not base


def public_bases(app: Sphinx, name: str, obj: Any, options: Any, bases: list[Any]) -> None:
    """"Bases:" names public classes: a private base (``ndshm._ring.Ring``) is replaced by its own
    bases, down to ``object`` (autodoc prints an empty "Bases:" line for an empty list)."""
    i = 0
    while i < len(bases):
        base = bases[i]
        if _private_base(base):
            bases[i:i + 1] = [b for b in base.__bases__ if b is not object and b not in bases]
        else:
            i += 1
    if not bases:
        bases.append(object)


def check_docstring(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """A public name without a docstring is a warning, so an error under -W."""
    last = name.rsplit(".", 1)[-1]
    if what == "data":
        # Without a ``#:`` comment autodoc shows the docstring of the value's type (str, int).
        type_doc = (type(obj).__doc__ or "").strip().splitlines()
        if type_doc and lines and lines[0].strip() == type_doc[0].strip():
            lines[:] = []
        if not any(line.strip() for line in lines):
            logger.warning("%s %s has no '#:' comment (its docstring)", what, name, type="ndshm",
                           subtype="docstring")
        return
    if (last.startswith("_") and last != "__version__") or what in ("module", "attribute"):
        return
    if not any(line.strip() for line in lines) and what == "method":
        base = foreign_base_defining(name)
        if base:  # a hook an engine calls (WorkerPlugin.transition): its own docs describe it
            lines[:] = [f"Implements ``{base}.{last}``."]
            return
    if not any(line.strip() for line in lines):
        logger.warning("%s %s has no docstring", what, name, type="ndshm", subtype="docstring")


# ---------------------------------------------------------------- the command line's --help


def cli_commands() -> list[str]:
    """The commands ``python -m ndshm --help`` lists, in its order."""
    from ndshm._cli import build_parser

    parser = build_parser("ndshm")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return [choice.dest for choice in action._choices_actions]
    raise RuntimeError("ndshm's parser has no commands")


def cli_help(args: list[str]) -> str:
    env = dict(os.environ, COLUMNS="80", NO_COLOR="1", PYTHONPATH=str(ROOT / "pybind"))
    proc = subprocess.run([sys.executable, "-m", "ndshm", *args, "--help"], capture_output=True, text=True,
                          env=env, timeout=60, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"python -m ndshm {' '.join(args)} --help exited {proc.returncode}: {proc.stderr}")
    return proc.stdout.replace("python -m ndshm", "ndshm").rstrip()


class CliHelp(SphinxDirective):
    """``.. ndshm-cli-help::``: a section per command, with its ``--help`` text."""

    def run(self) -> list[nodes.Node]:
        out: list[nodes.Node] = []
        for args in [[]] + [[cmd] for cmd in cli_commands() if cmd != "help"]:
            title = " ".join(["ndshm", *args])
            section = nodes.section(ids=[nodes.make_id("cli " + title)])
            section += nodes.title(text=title)
            block = nodes.literal_block(text=cli_help(args))
            block["language"] = "text"
            section += block
            out.append(section)
        return out


# ---------------------------------------------------------------- the C header


_BANNER = re.compile(r"/\* =+\n((?: \*.*\n)+?) \* =+ \*/\n")


def header_sections(text: str) -> list[tuple[str, str, list[str]]]:
    """(title, intro, chunks) per banner section of the header; a chunk is a run of lines without a
    blank line (a contract comment and the declarations it documents)."""
    parts = _BANNER.split(text)
    sections = []
    for i in range(1, len(parts), 2):
        banner = [line[3:] if line.startswith(" * ") else line[2:] for line in parts[i].splitlines()]
        body = parts[i + 1].split("#ifdef __cplusplus")[0]
        chunks = [c.strip("\n") for c in re.split(r"\n\s*\n", body) if c.strip()]
        sections.append((banner[0].strip(), " ".join(s.strip() for s in banner[1:]), chunks))
    return sections


def declared_functions(text: str) -> list[str]:
    return re.findall(r"NDSHM_API\s[^;(]*?\b(ndshm_\w+)\s*\(", text)


class CHeader(SphinxDirective):
    """``.. ndshm-c-header::``: the header's conventions, then each section with its contracts."""

    def run(self) -> list[nodes.Node]:
        text = HEADER.read_text(encoding="utf-8")
        self.env.note_dependency(str(HEADER))
        conventions = re.search(r"Conventions \(every section\):\n((?: \*.*\n)+?) \*/", text)
        out: list[nodes.Node] = []
        if conventions:
            rst = [line[3:] if line.startswith(" * ") else "" for line in conventions.group(1).splitlines()]
            out += self.parse(["Conventions that hold in every section:", ""] + [r.strip() for r in rst])
        shown: list[str] = []
        for title, intro, chunks in header_sections(text):
            section = nodes.section(ids=[nodes.make_id("c " + title)])
            section += nodes.title(text=title)
            if intro:
                section += nodes.paragraph(text=intro)
            for chunk in chunks:
                names = declared_functions(chunk)
                shown += names
                block = nodes.literal_block(text=chunk)
                block["language"] = "c"
                if names:
                    block["ids"] = [nodes.make_id(n) for n in names]
                section += block
            out.append(section)
        missing = sorted(set(declared_functions(text)) - set(shown))
        if missing:
            logger.warning("functions of csrc/ndshm.h not rendered: %s", ", ".join(missing),
                           location=self.get_location())
        return out

    def parse(self, lines: list[str]) -> list[nodes.Node]:
        node = nodes.container()
        self.state.nested_parse(StringList(lines), self.content_offset, node)
        return list(node.children)


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("config-inited", generate_api)
    app.connect("autodoc-skip-member", skip_member)
    app.connect("autodoc-process-docstring", check_docstring)
    app.connect("autodoc-process-bases", public_bases)
    app.add_directive("ndshm-cli-help", CliHelp)
    app.add_directive("ndshm-c-header", CHeader)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

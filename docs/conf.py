"""Sphinx configuration of ndshm's documentation (``make docs`` builds it into docs/_build/html).

Nothing is fetched at build time: no intersphinx, the theme's assets come with its package.
The API reference is generated from the ``__all__`` lists by ``_ext/ndshm_docs.py``.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "_ext"))
sys.path.insert(0, os.path.join(ROOT, "pybind"))  # the source tree's ndshm (make lib has built it)

import ndshm  # noqa: E402

project = "ndshm"
author = "the ndshm developers"
copyright = "the ndshm developers"
version = release = ndshm.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "myst_parser",
    "sphinx_copybutton",
    "ndshm_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_templates", "examples"]
templates_path = ["_templates"]

# Warnings are errors (make docs passes -W --keep-going); a reference to an ndshm name that does
# not resolve is one of them. References into NumPy, the standard library and the engines stay
# plain text (no intersphinx: nothing is downloaded while building).
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"(?!ndshm\b).*"), (r"py:.*", r".*(^|\.)_[^_].*"),
                        # ShareableList's element TypeVar: in signatures, not a name of its own
                        (r"py:.*", r"ndshm\.compat\.shared_memory\.SLT")]

# Our docstrings are reST with ``literals`` and :class: roles, sectioned (Parameters, Returns) in
# a few places only: napoleon reads those and leaves the rest as written.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False

autosummary_generate = True
autosummary_imported_members = True
# Classes list their members and those of their ndshm base classes (the class template);
# members inherited from NumPy or the standard library are left to those projects' docs.
autodoc_default_options = {"show-inheritance": True}
autodoc_docstring_signature = False  # "L.count(value) -> integer -- ..." is a docstring, not a signature
autodoc_inherit_docstrings = False  # a hook of an engine's base class says where it comes from instead
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True
add_module_names = False
python_use_unqualified_type_names = True
suppress_warnings = ["config.cache"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 4

html_theme = "pydata_sphinx_theme"
html_title = f"ndshm {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "header_links_before_dropdown": 6,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
# The theme reads its colour mode from here: without it its script logs an error in the console.
html_context = {"default_mode": "light"}
html_static_path = ["_static"]
html_favicon = "_static/favicon.svg"  # browsers ask for one; a 404 is a console error
html_show_sourcelink = False
html_copy_source = False

copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True

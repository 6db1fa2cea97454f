"""Sphinx configuration of the lowrank_prox documentation (``make docs``).

Everything a reader sees that comes from the repository -- the API pages, the notebooks, the
figure gallery, the verification and claims tables -- is generated at build time into
``docs/auto/`` (see ``_ext/generate.py``), so a new public name, notebook or figure appears
without editing these files.  The build is offline: notebooks are rendered with their stored
outputs (``nb_execution_mode = "off"``) and nothing is fetched.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path[:0] = [str(ROOT), str(DOCS / "_ext")]

import lowrank_prox  # noqa: E402

project = "lowrank_prox"
author = "the lowrank_prox developers"
copyright = "the lowrank_prox developers"  # noqa: A001
release = version = lowrank_prox.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_nb",
    "generate",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
templates_path = ["_templates"]

# numpydoc-style docstrings through napoleon; one page per public name.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_default_options = {"show-inheritance": True}

# MyST: $...$ and $$...$$ math, ::: fences, and headings as link targets.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # render the outputs committed in the .ipynb files
nb_merge_streams = True

html_theme = "pydata_sphinx_theme"
html_title = f"lowrank_prox {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_static_path = []
html_show_sourcelink = False

"""Sphinx configuration: ``make docs`` (sphinx-build -W --keep-going -b html docs docs/_build/html)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))  # document this checkout, not an installed copy

import pyrovae  # noqa: E402

project = "pyrovae"
author = "pyrovae developers"
copyright = "2026, pyrovae developers"
release = version = pyrovae.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3
exclude_patterns = ["_build"]

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True

html_theme = "alabaster"
html_theme_options = {"description": "Pyro VAEs for count data", "fixed_sidebar": True}

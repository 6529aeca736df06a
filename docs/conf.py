"""Sphinx configuration: pydata-sphinx-theme, MyST pages, numpydoc API pages, a sphinx-gallery of examples.

``make docs`` builds the site with the examples run; the test suite builds it with warnings as errors and
the gallery's execution off (``NEUROSTORM_DOCS_RUN_EXAMPLES=0``), since each example runs in its own test.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from neurostorm.version import __version__  # noqa: E402

project = "neurostorm"
author = "neurostorm developers"
copyright = "2025-2026, neurostorm developers"
release = version = __version__

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.autosummary", "numpydoc",
              "sphinx_gallery.gen_gallery"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py", "auto_examples/*.zip",
                    "auto_examples/*.md5", "auto_examples/*.json"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]  # pages moved from one long README keep their heading levels

autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False}
numpydoc_show_class_members = False
numpydoc_validation_checks: set[str] = set()

html_theme = "pydata_sphinx_theme"
html_title = f"neurostorm {release}"
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}

sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "plot_gallery": os.environ.get("NEUROSTORM_DOCS_RUN_EXAMPLES", "1") == "1",
    "download_all_examples": False,
    "within_subsection_order": "FileNameSortKey",
}

"""Sphinx configuration of the sb3-trpo-ext documentation (MyST Markdown pages, Read the Docs theme)."""

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)  # autodoc imports the package from the checkout, installed or not

import sb3_trpo_ext  # noqa: E402

project = "sb3-trpo-ext"
author = "sb3-trpo-ext contributors"
copyright = "sb3-trpo-ext contributors"  # noqa: A001
release = sb3_trpo_ext.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: `{eval-rst}` blocks carry the autodoc directives; heading anchors let pages link to #sections
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 4

# autodoc: the class docstrings are reST with :param: fields (no napoleon); types go into the parameter list
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_class_signature = "mixed"
# Ray is an extra (sb3-trpo-ext[ray]) that the docs build does not install: sb3_trpo_ext.distributed imports a mock
autodoc_mock_imports = ["ray"]

# Nitpicky mode checks every cross-reference (also where a build runs without -n, as on Read the Docs). intersphinx
# cannot fetch the inventories of SB3, gymnasium, torch and NumPy where these docs are built offline, so references
# to *their* types (in signatures and in the docstrings SB3's base classes pass down) cannot resolve here: they are
# ignored by name. References to this package's own objects are not ignored, so a stale one (a moved module, a
# renamed class) still fails the build.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(stable_baselines3|sb3_contrib|gymnasium|gym|torch|th|numpy|np|optuna|rl_zoo3|ray)(\..*)?"),
    # Python's own inventory is not reachable offline either: the standard-library types of SB3's signatures
    (r"py:.*", r"(collections\.abc|pathlib|io|typing|types)\.\w+"),
    # the ``Self...`` TypeVars of ``learn``'s return annotation (SB3's idiom): type variables have no page to link to
    (r"py:class", r"sb3_trpo_ext\.[\w.]+\.Self\w+"),
    # SB3's names as its own docstrings spell them, unqualified (the inherited members' and the base class's)
    (r"py:class", r"VecEnv|OnPolicyAlgorithm"),
]

html_theme = "sphinx_rtd_theme"
html_title = f"sb3-trpo-ext {release}"
html_static_path = ["_static"]
html_css_files = ["wide_tables.css"]
html_theme_options = {"navigation_depth": 3, "collapse_navigation": False}

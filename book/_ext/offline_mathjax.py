"""Sphinx extension: serve MathJax from the built book itself, so formulas render offline.

Sphinx loads MathJax from a CDN by default; a reader without internet (or a test
browser with the network off) then sees raw TeX. The PyPI package
``django-static-mathjax`` (part of the ``book`` extra; Django itself is not needed)
ships MathJax 3's browser bundles. This extension copies one bundle,
``tex-chtml-full.js`` (TeX input with every TeX extension built in, so nothing is
fetched on demand), and the woff fonts that its CommonHTML output loads into
``_static/mathjax/`` of the HTML output and points ``mathjax_path`` at it.

Without the package the book keeps the CDN and the build prints one note saying so;
a ``mathjax_path`` set in _config.yml is left alone.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Optional

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.ext.mathjax import MATHJAX_URL
from sphinx.util import logging

logger = logging.getLogger(__name__)

PACKAGE = "django-static-mathjax"
BUNDLE = "tex-chtml-full.js"
FONTS = Path("output", "chtml", "fonts", "woff-v2")  # where the bundle looks for its fonts
STATIC_DIR = "mathjax"  # inside the book's _static/


def mathjax_es5_dir() -> Optional[Path]:
    """The es5/ folder of the installed MathJax package, or None if it is not installed."""
    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        es5 = Path(location, "static", "mathjax", "es5")
        if (es5 / BUNDLE).is_file() and (es5 / FONTS).is_dir():
            return es5
    return None


def _use_local_copy(app: Sphinx, config: Config) -> None:
    if config.mathjax_path != MATHJAX_URL:
        return  # the book's configuration chose its own MathJax
    es5 = mathjax_es5_dir()
    if es5 is None:
        # A note, not a warning: the book still builds (with -W) and renders online.
        logger.info(
            f"[offline_mathjax] note: {PACKAGE} is not installed, so formulas load MathJax "
            f"from the CDN and need internet (pip install '.[book]' brings the local copy)."
        )
        return
    config.mathjax_path = f"{STATIC_DIR}/{BUNDLE}"  # relative paths are under _static/
    app.offline_mathjax_source = es5  # type: ignore[attr-defined]


def _copy_files(app: Sphinx, exception: Optional[BaseException]) -> None:
    es5 = getattr(app, "offline_mathjax_source", None)
    if exception is not None or es5 is None or app.builder.format != "html":
        return
    target = Path(app.outdir, "_static", STATIC_DIR)
    (target / FONTS).mkdir(parents=True, exist_ok=True)
    shutil.copy2(es5 / BUNDLE, target / BUNDLE)
    for font in sorted((es5 / FONTS).glob("*.woff")):
        shutil.copy2(font, target / FONTS / font.name)
    logger.info(f"[offline_mathjax] MathJax served from _static/{STATIC_DIR}/ ({PACKAGE})")


def setup(app: Sphinx) -> dict:
    app.setup_extension("sphinx.ext.mathjax")
    # Priority 900: after the mathjax extension's own defaults are in place.
    app.connect("config-inited", _use_local_copy, priority=900)
    app.connect("build-finished", _copy_files)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

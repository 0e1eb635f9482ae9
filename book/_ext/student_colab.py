"""Sphinx extension: on an exercise page, the launch buttons open the STUDENT notebook.

The book shows the instructor notebooks (``notebooks/exercises/<name>.ipynb``), whose
solutions are folded behind a "Show the solution" button. sphinx-book-theme builds
each page's launch buttons (Colab, and Binder/JupyterHub where configured) from the
page's own source path, so on an exercise page they would open the instructor
notebook, solution included. This extension runs after the theme has made the
buttons and points each launch link of an exercise page at the student version
that ci/make_student_notebooks.py generates, ``exercises/student/<name>.ipynb``, on
the same repository and branch; the button's tooltip says so. The page itself (and
its download button, which gives the page's executed source) is unchanged.

An exercise page without a launch link to rewrite is reported as a warning (the
book builds with -W), so a theme or configuration change cannot silently bring the
instructor notebook back behind the button.
"""

from __future__ import annotations

import posixpath
from typing import Any, Dict, Iterator, List, Optional

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

# The same folders as INSTRUCTOR_DIR and STUDENT_DIR of ci/make_student_notebooks.py
# (tests/test_student_colab.py checks that they agree).
INSTRUCTOR_DIR = "notebooks/exercises"
STUDENT_DIR = "exercises/student"
TOOLTIP = "Open the student version (no solutions) in"


def student_notebook(pagename: str) -> Optional[str]:
    """The student notebook of an exercise page (``notebooks/exercises/x`` -> ``exercises/student/x.ipynb``),
    or None for any other page."""
    if posixpath.dirname(pagename) != INSTRUCTOR_DIR:
        return None
    return f"{STUDENT_DIR}/{posixpath.basename(pagename)}.ipynb"


def _launch_links(header_buttons: List[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
    for button in header_buttons:
        if button.get("label") == "launch-buttons":
            yield from (b for b in button.get("buttons", []) if b.get("type") == "link" and b.get("url"))


def point_launch_buttons_at_student(pagename: str, header_buttons: List[Dict[str, Any]]) -> int:
    """Rewrite the launch links of an exercise page in place; the number rewritten."""
    student = student_notebook(pagename)
    if student is None:
        return 0
    instructor = f"{pagename}.ipynb"
    rewritten = 0
    for link in _launch_links(header_buttons):
        if instructor in link["url"]:
            link["url"] = link["url"].replace(instructor, student)
            link["tooltip"] = f"{TOOLTIP} {link.get('text', 'a notebook')}"
            rewritten += 1
    return rewritten


def _on_page(app: Sphinx, pagename: str, templatename: str, context: Dict[str, Any], doctree) -> None:
    if student_notebook(pagename) is None:
        return
    if point_launch_buttons_at_student(pagename, context.get("header_buttons", [])) == 0:
        logger.warning(f"{pagename}: no launch button opens {pagename}.ipynb, so none could be pointed at its "
                       "student version; check launch_buttons in _config.yml (student_colab extension).")


def setup(app: Sphinx) -> Dict[str, Any]:
    # sphinx-book-theme adds its launch buttons at priority 501; run after it.
    app.connect("html-page-context", _on_page, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

"""On an exercise page of the book, the Colab (launch) button opens the STUDENT notebook
(exercises/student/<name>.ipynb), not the instructor notebook the page is built from.

book/_ext/student_colab.py rewrites the launch links sphinx-book-theme makes; these tests
run it on the theme's own button structure, check that its folders are the generator's,
and (marker ``book``) read the built HTML: every exercise page's Colab link names an
existing student notebook on the configured repository and branch, other pages keep
theirs. The HTML is _build/html (after `bash ci/build_book.sh`), or $BOOK_HTML.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from repo_scripts import load_script

REPO = Path(__file__).resolve().parent.parent


pytest.importorskip("sphinx")
ext = load_script(REPO / "book" / "_ext" / "student_colab.py")
msn = load_script(REPO / "ci" / "make_student_notebooks.py")
COLAB = "https://colab.research.google.com/github/channel-distillation/channel-distillation/blob/main/"


def _theme_buttons(pagename: str) -> list:
    """Header buttons as sphinx-book-theme 1.x makes them for a notebook page (launch group first)."""
    return [
        {"type": "group", "label": "launch-buttons", "icon": "fas fa-rocket", "buttons": [
            {"type": "link", "text": "Colab", "tooltip": "Launch on Colab", "url": f"{COLAB}{pagename}.ipynb"},
            {"type": "link", "text": "Binder", "tooltip": "Launch on Binder",
             "url": f"https://mybinder.org/v2/gh/channel-distillation/channel-distillation/main?urlpath=tree/{pagename}.ipynb"},
            {"type": "javascript", "text": "Live Code", "javascript": "initThebeSBT()"},
        ]},
        {"type": "group", "label": "download-buttons", "buttons": [
            {"type": "link", "text": ".ipynb", "url": f"../../_sources/{pagename}.ipynb"}]},
    ]


def test_the_extension_uses_the_generators_folders():
    assert ext.INSTRUCTOR_DIR == msn.INSTRUCTOR_DIR and ext.STUDENT_DIR == msn.STUDENT_DIR


def test_launch_links_of_an_exercise_page_open_the_student_notebook():
    page = "notebooks/exercises/exercise4_kd_loss"
    buttons = _theme_buttons(page)
    assert ext.point_launch_buttons_at_student(page, buttons) == 2
    colab, binder, thebe = buttons[0]["buttons"]
    assert colab["url"] == COLAB + "exercises/student/exercise4_kd_loss.ipynb"
    assert colab["tooltip"] == "Open the student version (no solutions) in Colab"
    assert binder["url"].endswith("urlpath=tree/exercises/student/exercise4_kd_loss.ipynb")
    assert thebe == _theme_buttons(page)[0]["buttons"][2]
    assert buttons[1] == _theme_buttons(page)[1], "the download button is not a launch button"


@pytest.mark.parametrize("page", ["notebooks/01_channel_attention", "book/instructor_guide",
                                  "notebooks/exercises_extra/x", "exercises/student/exercise1_cd_loss"])
def test_other_pages_keep_their_launch_links(page):
    buttons = _theme_buttons(page)
    assert ext.student_notebook(page) is None
    assert ext.point_launch_buttons_at_student(page, buttons) == 0
    assert buttons == _theme_buttons(page)


def test_an_exercise_page_without_launch_links_is_reported(monkeypatch):
    warned = []
    monkeypatch.setattr(ext.logger, "warning", warned.append)
    ext._on_page(None, "notebooks/exercises/exercise1_cd_loss", "page.html", {"header_buttons": []}, None)
    assert warned and "no launch button" in warned[0] and "student version" in warned[0]
    warned.clear()
    ext._on_page(None, "notebooks/exercises/exercise1_cd_loss", "page.html",
                 {"header_buttons": _theme_buttons("notebooks/exercises/exercise1_cd_loss")}, None)
    assert not warned


def test_the_book_config_loads_the_extension():
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf8"))
    assert config["sphinx"]["local_extensions"].get("student_colab") == "book/_ext"
    assert config["launch_buttons"].get("colab_url")


# ============================================================================ the built book


def _html() -> Path:
    html = Path(os.environ.get("BOOK_HTML", REPO / "_build" / "html"))
    if not (html / "index.html").is_file():
        pytest.skip(f"the book is not built at {html}: run `bash ci/build_book.sh`")
    return html


_COLAB_LINK = re.compile(r'href="(https://colab\.research\.google\.com/github/[^"]+)"')


@pytest.mark.book
@pytest.mark.parametrize("instructor", msn.instructor_notebooks(REPO), ids=lambda p: p.stem)
def test_built_exercise_page_colab_button_opens_the_student_notebook(instructor):
    page = _html() / msn.INSTRUCTOR_DIR / f"{instructor.stem}.html"
    assert page.is_file(), f"{page} is missing from the built book"
    links = _COLAB_LINK.findall(page.read_text(encoding="utf8"))
    assert links, f"{page.name} has no Colab button"
    student = f"{msn.STUDENT_DIR}/{instructor.name}"
    assert (REPO / student).is_file()
    assert links == [COLAB + student], f"{page.name}: Colab links {links}, expected only {COLAB + student}"


@pytest.mark.book
def test_built_chapter_pages_keep_their_own_colab_button():
    html = _html()
    for page in sorted((html / "notebooks").glob("*.html")):
        links = _COLAB_LINK.findall(page.read_text(encoding="utf8"))
        assert links == [f"{COLAB}notebooks/{page.stem}.ipynb"], f"{page.name}: {links}"

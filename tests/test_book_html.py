"""The built book, as a reader's browser sees it (run `bash ci/build_book.sh` first).

_build/html is served on a localhost port and every page of _toc.yml is opened in
headless Chromium (``--dump-dom`` for the rendered DOM, ``--screenshot`` for a picture
saved to _build/screenshots/<page>.png). Checks:

- every page loads, has a title and a heading, and shows no error output
  (myst-nb renders a failing cell as ``div.output.traceback``, stderr as
  ``div.output.stderr``; stderr is only an error when it reads like one — progress
  bars and warnings are written to stderr too);
- every notebook page shows at least one figure produced by an executed cell, a Colab
  launch link to notebooks/<name>.ipynb on GitHub, and a download button whose
  .ipynb is the executed notebook;
- the sidebar links every chapter.

Skipped, with the reason, when the book is not built or Chromium is missing
(Debian: ``apt-get install chromium``; or point $CHROMIUM at a binary).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytestmark = pytest.mark.book

REPO = Path(__file__).resolve().parent.parent
HTML = REPO / "_build" / "html"
SHOTS = REPO / "_build" / "screenshots"
COLAB = "https://colab.research.google.com/github/channel-distillation/channel-distillation/blob/main/"
SUFFIXES = (".ipynb", ".md", ".rst")
ERROR_TEXT = re.compile(r"Traceback|Error\b|Exception\b|\w+Error:")


# ----------------------------------------------------------------------------- the TOC
def _toc_pages() -> list[tuple[str, bool]]:
    """(toc entry, is it a notebook) for every page of _toc.yml, in order."""
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML comes with the book extras
        return []
    toc = yaml.safe_load((REPO / "_toc.yml").read_text(encoding="utf8"))
    entries = [toc["root"]] if toc.get("root") else []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                entries.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key) or []:
                    walk(child)

    walk(toc)
    pages = []
    for entry in entries:
        entry = re.sub(r"\.(ipynb|md|rst)$", "", entry)
        pages.append((entry, (REPO / f"{entry}.ipynb").is_file()))
    return pages


PAGES = _toc_pages()
NOTEBOOK_PAGES = [e for e, is_nb in PAGES if is_nb]
ALL_PAGES = [e for e, _ in PAGES]


# ----------------------------------------------------------------------------- DOM reading
class _Dom(HTMLParser):
    """Collects what the checks need from a rendered page."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, set]] = []
        self.title = ""
        self.h1 = 0
        self.tables = 0
        self.maths = 0
        self.links: list[dict] = []
        self.output_imgs: list[str] = []
        self.error_blocks: list[tuple[str, str]] = []  # (kind, text)
        self.classes_seen: set[str] = set()
        self._capture: list[list] = []  # open error blocks: [kind, depth, text parts]

    def _in(self, cls: str) -> bool:
        return any(cls in classes for _, classes in self.stack)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = set((a.get("class") or "").split())
        self.classes_seen |= classes
        if tag == "a":
            self.links.append(a)
        if tag == "h1":
            self.h1 += 1
        if tag == "table":
            self.tables += 1
        if "math" in classes:
            self.maths += 1
        if tag == "img" and self._in("cell_output"):
            self.output_imgs.append(a.get("src", ""))
        if tag in self.VOID:
            return
        self.stack.append((tag, classes))
        kind = None
        if "output" in classes and "traceback" in classes:
            kind = "traceback"
        elif "output_error" in classes or "output-error" in classes:
            kind = "error"
        elif "output" in classes and "stderr" in classes:
            kind = "stderr"
        if kind:
            self._capture.append([kind, len(self.stack), []])

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        while self.stack:
            t, _ = self.stack.pop()
            while self._capture and self._capture[-1][1] > len(self.stack):
                kind, _, parts = self._capture.pop()
                self.error_blocks.append((kind, "".join(parts)))
            if t == tag:
                break

    def handle_data(self, data):
        if self.stack and self.stack[-1][0] == "title":
            self.title += data
        for block in self._capture:
            block[2].append(data)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def site():
    """Base URL of _build/html served on a free localhost port."""
    if not (HTML / "index.html").is_file():
        pytest.skip(f"the book is not built ({HTML.relative_to(REPO)}/index.html missing): run `bash ci/build_book.sh`")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(HTML)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser():
    """A function running headless Chromium with extra arguments on a URL."""
    exe = os.environ.get("CHROMIUM")
    if exe and not shutil.which(exe):
        pytest.skip(f"$CHROMIUM={exe} is not an executable")
    exe = exe or shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe and Path("/usr/bin/chromium").is_file():
        exe = "/usr/bin/chromium"
    if not exe:
        pytest.skip("headless Chromium not found (Debian: `apt-get install chromium`, or set $CHROMIUM)")
    profile = tempfile.mkdtemp(prefix="cd-chromium-")
    base = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-extensions",
        "--hide-scrollbars", f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",  # let the theme's scripts run before the DOM is taken
    ]

    def run(url: str, *args: str) -> str:
        proc = subprocess.run([*base, *args, url], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"chromium failed on {url} (rc {proc.returncode}):\n{proc.stderr[-2000:]}"
        return proc.stdout

    yield run
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def dom(site, browser):
    """Rendered DOM of a TOC page, parsed once per page."""
    cache: dict = {}

    def get(entry: str) -> _Dom:
        if entry not in cache:
            url = f"{site}/{entry}.html"
            with urllib.request.urlopen(url, timeout=30) as r:  # the page is served at all
                assert r.status == 200, f"{url}: HTTP {r.status}"
            parser = _Dom()
            parser.feed(browser(url, "--dump-dom"))
            parser.close()
            cache[entry] = parser
        return cache[entry]

    return get


# ----------------------------------------------------------------------------- tests
def test_toc_has_pages():
    assert PAGES, "no pages found in _toc.yml (or PyYAML missing)"


@pytest.mark.parametrize("entry", ALL_PAGES)
def test_page_loads_with_title_and_heading(dom, entry):
    d = dom(entry)
    assert d.title.strip(), f"{entry}.html has an empty <title>"
    assert d.h1 >= 1, f"{entry}.html has no <h1> heading"
    assert "bd-sidebar-primary" in d.classes_seen, f"{entry}.html has no navigation sidebar"


@pytest.mark.parametrize("entry", ALL_PAGES)
def test_page_has_no_error_output(dom, entry):
    d = dom(entry)
    errors = [(k, " ".join(t.split())[:300]) for k, t in d.error_blocks if k != "stderr" or ERROR_TEXT.search(t)]
    assert not errors, f"{entry}.html shows error output: {errors}"
    assert "problematic" not in d.classes_seen, f"{entry}.html contains unresolved markup (class 'problematic')"


@pytest.mark.parametrize("entry", ALL_PAGES)
def test_page_screenshot(site, browser, entry):
    SHOTS.mkdir(parents=True, exist_ok=True)
    png = SHOTS / (entry.replace("/", "__") + ".png")
    png.unlink(missing_ok=True)
    browser(f"{site}/{entry}.html", f"--screenshot={png}", "--window-size=1280,2000")
    assert png.is_file(), f"no screenshot written for {entry}"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, f"{png} does not look like a rendered page"


@pytest.mark.parametrize("entry", NOTEBOOK_PAGES)
def test_notebook_page_shows_an_executed_figure(dom, entry):
    imgs = dom(entry).output_imgs
    assert imgs, (
        f"{entry}.html has no figure in any cell output: was the notebook executed "
        "(ci/execute_notebooks.py) and does it draw with matplotlib's inline backend?"
    )


@pytest.mark.parametrize("entry", NOTEBOOK_PAGES)
def test_notebook_page_has_colab_link(dom, entry):
    want = f"{COLAB}{entry}.ipynb"
    hrefs = [a.get("href", "") for a in dom(entry).links]
    assert want in hrefs, f"{entry}.html has no Colab launch link {want}; Colab links found: " + str(
        [h for h in hrefs if "colab" in h]
    )


@pytest.mark.parametrize("entry", NOTEBOOK_PAGES)
def test_notebook_page_has_download_button(site, dom, entry):
    d = dom(entry)
    assert "dropdown-download-buttons" in d.classes_seen, f"{entry}.html has no download button"
    ipynb = [a["href"] for a in d.links if a.get("href", "").endswith(f"_sources/{entry}.ipynb")]
    assert ipynb, f"{entry}.html offers no .ipynb download"
    url = urllib.parse.urljoin(f"{site}/{entry}.html", ipynb[0])
    with urllib.request.urlopen(url, timeout=30) as r:
        nb = json.loads(r.read())
    outputs = sum(len(c.get("outputs", [])) for c in nb["cells"] if c["cell_type"] == "code")
    assert outputs, f"the downloadable {entry}.ipynb has no outputs (not the executed copy?)"


def test_root_page_has_maths_and_tables(dom):
    """The introduction's formulas reach MathJax and its result tables are tables."""
    d = dom(ALL_PAGES[0])
    assert d.maths >= 5, f"{ALL_PAGES[0]}.html: only {d.maths} maths elements (dollarmath/amsmath off?)"
    assert d.tables >= 2, f"{ALL_PAGES[0]}.html: expected the paper's two result tables, found {d.tables}"


def test_sidebar_links_every_chapter(dom):
    d = dom(ALL_PAGES[0])
    hrefs = " ".join(a.get("href", "") for a in d.links)
    missing = [e for e in ALL_PAGES[1:] if f"{Path(e).name}.html" not in hrefs]
    assert not missing, f"the sidebar of {ALL_PAGES[0]}.html does not link {missing}"

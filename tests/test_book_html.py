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
- the sidebar links every chapter;
- with the network off (Chromium resolves no host but 127.0.0.1), every formula is
  typeset by the book's own copy of MathJax (_static/mathjax/, see
  book/_ext/offline_mathjax.py): each ``.math`` element holds an ``mjx-container``, no
  raw TeX delimiter is left in the page text, MathJax reports no TeX error and none of
  its files is missing;
- no page shows a Python warning or traceback, and no table in a cell output shows
  ``NaN`` for a missing value;
- in a 1280x800 window no code block (``pre``: cell inputs, printed outputs, code in
  prose) scrolls sideways: ``scrollWidth <= clientWidth`` for every visible one, as
  measured by OVERFLOW_CHECKER (JavaScript the test server adds to the page; a block
  folded away is not visible and not measured). A planted code cell shows that the
  check can fail (a 100-character line is reported) and that the column is wide enough
  (a 79-character line fits; book/_static/book.css);
- the plumbing is folded: the setup cell (``# Setup: installs cdlib``) and papermill's
  ``injected-parameters`` cell sit behind a closed toggle (ci/execute_notebooks.py tags
  them ``hide-cell``) and the page's title and first paragraph come before them.

Skipped, with the reason, when the book is not built or Chromium is missing
(Debian: ``apt-get install chromium``; or point $CHROMIUM at a binary). The formula
checks are skipped when the book was built without the MathJax package
(django-static-mathjax) and it is not installed here either; they fail when it is
installed but the pages still load MathJax from the CDN.
$CD_BOOK_HTML checks another built copy (e.g. one with a planted defect) instead of
_build/html.
"""

from __future__ import annotations

import functools
import html
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
from repo_scripts import load_script

pytestmark = pytest.mark.book

REPO = Path(__file__).resolve().parent.parent
HTML = Path(os.environ.get("CD_BOOK_HTML") or REPO / "_build" / "html").resolve()
SHOTS = REPO / "_build" / "screenshots"
COLAB = "https://colab.research.google.com/github/channel-distillation/channel-distillation/blob/main/"
SUFFIXES = (".ipynb", ".md", ".rst")
ERROR_TEXT = re.compile(r"Traceback|Error\b|Exception\b|\w+Error:")
# A formatted Python warning ("file.py:12: UserWarning: ...") or traceback, anywhere on a page.
WARNING_ANYWHERE = re.compile(r"\.py:\d+: \w*Warning\b|Traceback \(most recent call last\)")
# Inside printed cell output (stdout, stderr, text/plain) also the bare forms.
WARNING_IN_OUTPUT = re.compile(r"\b\w*Warning: |warnings\.warn\(")
# TeX that MathJax should have consumed: delimiters, environments and common commands.
RAW_TEX = re.compile(
    r"\\\(|\\\)|\\\[|\\\]|\$\$|\\begin\{|\\end\{"
    r"|\\(?:frac|sum|mathcal|mathrm|mathbb|operatorname|left|right|lambda|alpha|beta)(?![a-zA-Z])"
)
# Run in the page (the test server adds it to a page requested with ?cd-check-overflow)
# once it has loaded and its fonts are ready. cdCodeOverflow: the code blocks that scroll
# sideways; cdPlumbing: where the setup, parameters and injected-parameters cells are and
# whether their code shows. The reports land in the <html> element's data-cd-overflow and
# data-cd-plumbing attributes, which Chromium's --dump-dom prints. A block that is not
# rendered (a folded cell) has no client rects.
OVERFLOW_CHECKER = """
function cdShown(el) {
  // Closed <details> hide their content with content-visibility, which keeps layout boxes.
  if (!el) return false;
  if (el.checkVisibility) return el.checkVisibility({visibilityProperty: true});
  return el.getClientRects().length > 0;
}
function cdCodeOverflow(root) {
  const blocks = Array.from(root.querySelectorAll("pre"));
  const report = {blocks: blocks.length, measured: 0, hidden: 0, overflowing: []};
  blocks.forEach((pre, index) => {
    if (!cdShown(pre)) { report.hidden += 1; return; }
    report.measured += 1;
    if (pre.scrollWidth <= pre.clientWidth) return;
    const lines = pre.textContent.split("\\n");
    const longest = lines.reduce((a, b) => (b.length > a.length ? b : a), "");
    const kind = pre.closest(".cell_input") ? "cell input"
      : pre.closest(".cell_output") ? "cell output" : "code block";
    const where = pre.closest("div.cell[id], section[id]");
    report.overflowing.push({index: index, kind: kind, id: where ? where.id : "",
      scrollWidth: pre.scrollWidth, clientWidth: pre.clientWidth,
      chars: longest.length, line: longest.slice(0, 100)});
  });
  return report;
}
function cdPlumbing(root) {
  const shown = cdShown;
  const before = (a, b) => !!a && !!(a.compareDocumentPosition(b) & Node.DOCUMENT_POSITION_FOLLOWING);
  const title = root.querySelector("h1");
  const prose = Array.from(root.querySelectorAll("p")).find((p) => !p.closest(".cell, details"));
  const describe = (cell) => {
    const pre = cell.querySelector(".cell_input pre");
    return {codeShown: shown(pre), toggle: shown(cell.querySelector("details > summary")),
            afterTitle: before(title, cell), afterProse: before(prose, cell)};
  };
  const cells = Array.from(root.querySelectorAll("div.cell"));
  const setup = cells.filter((c) => {
    const pre = c.querySelector(".cell_input pre");
    return pre && pre.textContent.startsWith("# Setup: installs cdlib");
  });
  return {setup: setup.map(describe),
          injected: cells.filter((c) => c.classList.contains("tag_injected-parameters")).map(describe),
          parameters: cells.filter((c) => c.classList.contains("tag_parameters")).map(describe)};
}
window.addEventListener("load", () => {
  document.fonts.ready.then(() => setTimeout(() => {
    const root = document.querySelector(".bd-article") || document.body;
    document.documentElement.setAttribute("data-cd-overflow", JSON.stringify(cdCodeOverflow(root)));
    document.documentElement.setAttribute("data-cd-plumbing", JSON.stringify(cdPlumbing(root)));
  }, 200));
});
"""
OVERFLOW_WINDOW = "--window-size=1280,800"
# A code cell as myst-nb renders one, planted after the page's <h1> (?cd-plant): one
# 100-character line that must be reported and one of 79 characters that must fit.
PLANT_LONG, PLANT_FIT = "cd-planted-long", "cd-planted-fit"


def _planted_cell(cell_id: str, chars: int) -> str:
    line = "x = " + repr("y" * (chars - 6))
    assert len(line) == chars
    return (
        f'<div class="cell docutils container" id="{cell_id}"><div class="cell_input docutils container">'
        '<div class="highlight-ipython3 notranslate"><div class="highlight"><pre><span></span>'
        f"{html.escape(line)}\n</pre></div></div></div></div>"
    )


def _instrument(page: str, plant: bool) -> str:
    """The page with OVERFLOW_CHECKER (and with ?cd-plant, the two planted cells) added."""
    if plant:  # after the article's title (the print-only header has an <h1> too)
        at = page.index("</h1>", page.index('<article class="bd-article"')) + len("</h1>")
        page = page[:at] + _planted_cell(PLANT_LONG, 100) + _planted_cell(PLANT_FIT, 79) + page[at:]
    at = page.rindex("</body>")
    return page[:at] + f"<script>{OVERFLOW_CHECKER}</script>" + page[at:]


# Tables whose subject IS a NaN result (named by one of their header cells): the reference
# code's GKD on a batch where the teacher is always wrong, and the model after that step.
DELIBERATE_NAN = {"notebooks/02_gkd_vs_kd": {"NaN gradients", "after one SGD step"}}


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
    HIDDEN_TEXT = {"script", "style", "pre", "code", "textarea", "title"}  # not prose: no raw-TeX check
    PRINTED = {"stream", "stderr", "text_plain", "traceback"}  # myst-nb classes of printed outputs

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, set, int | None]] = []  # (tag, classes, index into math_typeset)
        self.title = ""
        self.h1 = 0
        self.tables = 0
        self.maths = 0
        self.links: list[dict] = []
        self.output_imgs: list[str] = []
        self.error_blocks: list[tuple[str, str]] = []  # (kind, text)
        self.classes_seen: set[str] = set()
        self._capture: list[list] = []  # open error blocks: [kind, depth, text parts]
        self.math_typeset: list[bool] = []  # per .math element: does it hold an mjx-container?
        self.mathjax_errors = 0  # mjx-merror elements: TeX that MathJax could not typeset
        self.mathjax_scripts: list[str] = []  # src of every <script> that loads MathJax
        self.text_parts: list[str] = []  # text outside HIDDEN_TEXT and MathJax's output
        self.all_text_parts: list[str] = []  # every text outside <script> and <style>
        self.printed_outputs: list[str] = []  # text of each stdout/stderr/text-plain cell output
        self._printed: list[list] = []  # open printed outputs: [depth, text parts]
        self.output_tables: list[list[list[list]]] = []  # cell-output tables: rows of [th|td, text]
        self.missing: list[str] = []  # paths the page asked the server for in vain (set by the fixture)

    def _in(self, cls: str) -> bool:
        return any(cls in classes for _, classes, _ in self.stack)

    def _in_tag(self, tags) -> bool:
        return any(t in tags for t, _, _ in self.stack)

    def _in_mathjax_output(self) -> bool:
        return any(t.startswith("mjx-") for t, _, _ in self.stack)

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
        if tag == "mjx-container":
            owner = next((i for _, _, i in reversed(self.stack) if i is not None), None)
            if owner is not None:
                self.math_typeset[owner] = True
        if tag == "mjx-merror":
            self.mathjax_errors += 1
        if tag == "script" and "mathjax" in (a.get("src") or "").lower():
            self.mathjax_scripts.append(a["src"])
        if self._in("cell_output"):
            if tag == "table":
                self.output_tables.append([])
            elif tag == "tr" and self.output_tables:
                self.output_tables[-1].append([])
            elif tag in ("th", "td") and self.output_tables and self.output_tables[-1]:
                self.output_tables[-1][-1].append([tag, ""])
        if tag == "img" and self._in("cell_output"):
            self.output_imgs.append(a.get("src", ""))
        math_index = None
        if "math" in classes:
            self.maths += 1
            math_index = len(self.math_typeset)
            self.math_typeset.append(False)
        if tag in self.VOID:
            return
        self.stack.append((tag, classes, math_index))
        if "output" in classes and classes & self.PRINTED:
            self._printed.append([len(self.stack), []])
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
            t, _, _ = self.stack.pop()
            while self._capture and self._capture[-1][1] > len(self.stack):
                kind, _, parts = self._capture.pop()
                self.error_blocks.append((kind, "".join(parts)))
            while self._printed and self._printed[-1][0] > len(self.stack):
                self.printed_outputs.append("".join(self._printed.pop()[1]))
            if t == tag:
                break

    def handle_data(self, data):
        if self.stack and self.stack[-1][0] == "title":
            self.title += data
        for block in self._capture:
            block[2].append(data)
        for block in self._printed:
            block[1].append(data)
        if not self._in_tag({"script", "style"}):
            self.all_text_parts.append(data)
        if not self._in_tag(self.HIDDEN_TEXT) and not self._in_mathjax_output():
            self.text_parts.append(data)
        if self.output_tables and self.output_tables[-1] and self.output_tables[-1][-1] and self._in_tag({"th", "td"}):
            self.output_tables[-1][-1][-1][1] += data

    @property
    def text(self) -> str:
        """The page's prose text (whitespace collapsed), as a reader sees it outside code and formulas."""
        return " ".join("".join(self.text_parts).split())

    @property
    def all_text(self) -> str:
        """All of the page's text, code and cell outputs included (whitespace collapsed)."""
        return " ".join("".join(self.all_text_parts).split())


# ----------------------------------------------------------------------------- fixtures
MISSING: list[str] = []  # paths the browser asked the book's server for and did not get


@pytest.fixture(scope="module")
def site():
    """Base URL of _build/html served on a free localhost port."""
    if not (HTML / "index.html").is_file():
        pytest.skip(f"the book is not built ({HTML}/index.html missing): run `bash ci/build_book.sh`")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def send_error(self, code, *args, **kwargs):
            if code == 404:
                MISSING.append(urllib.parse.urlsplit(self.path).path)
            super().send_error(code, *args, **kwargs)

        def do_GET(self):  # noqa: N802 - the http.server name
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
            file = HTML / urllib.parse.unquote(url.path).lstrip("/")
            if "cd-check-overflow" not in query or file.suffix != ".html" or not file.is_file():
                return super().do_GET()
            body = _instrument(file.read_text(encoding="utf8"), plant="cd-plant" in query).encode("utf8")
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

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
        # The network is off: no host name resolves except the book's own server, so a
        # page that needs a CDN (for MathJax, say) shows what an offline reader sees.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
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
            already_missing = len(MISSING)
            parser.feed(browser(url, "--dump-dom"))
            parser.close()
            parser.missing = MISSING[already_missing:]  # what this page asked for in vain
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
    # An exercise page's Colab button opens the student copy (book/_ext/student_colab.py).
    exercise = entry.startswith("notebooks/exercises/")
    want = f"{COLAB}exercises/student/{entry.rsplit('/', 1)[1]}.ipynb" if exercise else f"{COLAB}{entry}.ipynb"
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


# ----------------------------------------------------------------------------- formulas, warnings, NaN
def _offline_mathjax_extension():
    """book/_ext/offline_mathjax.py as a module, or None without Sphinx (no book extras)."""
    try:
        return load_script(REPO / "book" / "_ext" / "offline_mathjax.py")
    except ImportError:
        return None


def _local_mathjax_installed() -> bool:
    """Is the MathJax package that book/_ext/offline_mathjax.py copies into the book installed?"""
    ext = _offline_mathjax_extension()
    return ext is not None and ext.mathjax_es5_dir() is not None


def test_offline_mathjax_extension_chooses_local_copy_or_cdn(monkeypatch, tmp_path, caplog):
    """The build-side half, without a browser: which MathJax the pages name, and what is copied."""
    ext = _offline_mathjax_extension()
    if ext is None:
        pytest.skip("Sphinx is not installed (pip install -e '.[book]')")
    from types import SimpleNamespace

    def configured(es5, mathjax_path=ext.MATHJAX_URL):
        monkeypatch.setattr(ext, "mathjax_es5_dir", lambda: es5)
        app, config = SimpleNamespace(), SimpleNamespace(mathjax_path=mathjax_path)
        ext._use_local_copy(app, config)
        return app, config

    with caplog.at_level("INFO"):
        app, config = configured(None)
    assert config.mathjax_path == ext.MATHJAX_URL and not hasattr(app, "offline_mathjax_source")
    assert "django-static-mathjax is not installed" in caplog.text, "no note says why the CDN is used"
    assert configured(tmp_path, "https://example.org/m.js")[1].mathjax_path == "https://example.org/m.js"

    es5 = tmp_path / "es5"
    (es5 / ext.FONTS).mkdir(parents=True)
    (es5 / ext.BUNDLE).write_text("bundle")
    (es5 / ext.FONTS / "MathJax_Main-Regular.woff").write_bytes(b"font")
    (es5 / "tex-svg.js").write_text("another bundle, not needed")
    app, config = configured(es5)
    assert config.mathjax_path == f"mathjax/{ext.BUNDLE}"
    app.outdir, app.builder = str(tmp_path / "html"), SimpleNamespace(format="html")
    ext._copy_files(app, None)
    copied = sorted(p.relative_to(tmp_path / "html").as_posix() for p in (tmp_path / "html").rglob("*") if p.is_file())
    assert copied == sorted([f"_static/mathjax/{ext.BUNDLE}", f"_static/mathjax/{ext.FONTS.as_posix()}/MathJax_Main-Regular.woff"])


def _around(text: str, match: re.Match, width: int = 60) -> str:
    return "..." + text[max(0, match.start() - width) : match.end() + width] + "..."


@pytest.mark.parametrize("entry", ALL_PAGES)
def test_page_formulas_render_offline(dom, entry):
    """With the network off, MathJax from _static/mathjax/ typesets every formula of the page."""
    d = dom(entry)
    if d.maths:
        if not [src for src in d.mathjax_scripts if "://" not in src]:
            if not _local_mathjax_installed():
                pytest.skip(
                    f"{entry}.html loads MathJax from the CDN and django-static-mathjax is not installed "
                    "(pip install -e '.[book]', then rebuild): formulas offline are not checked"
                )
            pytest.fail(
                f"{entry}.html loads MathJax from {d.mathjax_scripts}, not from the book's _static/mathjax/, "
                "although django-static-mathjax is installed: rebuild the book (bash ci/build_book.sh)"
            )
        untypeset = d.math_typeset.count(False)
        assert not untypeset, (
            f"{entry}.html: {untypeset} of {d.maths} formulas were not typeset by MathJax with the network off "
            "(no mjx-container inside their .math element)"
        )
        assert not d.mathjax_errors, f"{entry}.html: MathJax could not typeset {d.mathjax_errors} formula(s) (mjx-merror)"
        missing = sorted({path for path in d.missing if "/mathjax/" in path})
        assert not missing, f"{entry}.html: MathJax asked for files the book does not contain: {missing}"
    raw = [_around(d.text, m) for m in RAW_TEX.finditer(d.text)]
    assert not raw, f"{entry}.html shows raw TeX in its text: {raw[:5]}"


@pytest.mark.parametrize("entry", ALL_PAGES)
def test_page_shows_no_warning_or_traceback(dom, entry):
    d = dom(entry)
    found = [_around(d.all_text, m) for m in WARNING_ANYWHERE.finditer(d.all_text)]
    for output in d.printed_outputs:
        output = " ".join(output.split())
        found += [_around(output, m) for m in WARNING_IN_OUTPUT.finditer(output)]
    assert not found, f"{entry}.html shows Python warning or traceback text: {found[:5]}"


@pytest.mark.parametrize("entry", NOTEBOOK_PAGES)
def test_output_tables_show_no_nan(dom, entry):
    """A missing value is an empty cell or a dash, never pandas' NaN (except where NaN is the result shown)."""
    deliberate = DELIBERATE_NAN.get(entry, set())
    rows_with_nan = []
    for table in dom(entry).output_tables:
        rows = [[(kind, " ".join(text.split())) for kind, text in row] for row in table]
        if deliberate & {text for row in rows for kind, text in row if kind == "th"}:
            continue
        rows_with_nan += [
            " | ".join(text for _, text in row) for row in rows if any(k == "td" and t.lower() == "nan" for k, t in row)
        ]
    assert not rows_with_nan, f"{entry}.html: table rows show NaN (write an empty cell or a dash): {rows_with_nan[:5]}"


# ----------------------------------------------------------------------------- code width, folded plumbing
PROBED: dict = {}


def _probe(browser, url: str) -> dict:
    """The page at ``url`` (which carries ?cd-check-overflow) in a 1280x800 window: OVERFLOW_CHECKER's reports."""
    if url not in PROBED:
        dumped = browser(url, OVERFLOW_WINDOW, "--dump-dom")
        reports = {}
        for name in ("overflow", "plumbing"):
            m = re.search(rf'\sdata-cd-{name}="([^"]*)"', dumped)
            assert m, f"{url}: the page probe left no {name} report (did the page run its scripts?)"
            reports[name] = json.loads(html.unescape(m.group(1)))
        PROBED[url] = reports
    return PROBED[url]


def code_overflow(browser, url: str) -> dict:
    """cdCodeOverflow's report: {blocks, measured, hidden, overflowing: [{kind, chars, line, ...}]}."""
    return _probe(browser, url)["overflow"]


def _describe_overflow(report: dict) -> str:
    return "; ".join(
        f"{w['kind']} (pre #{w['index']}{' in #' + w['id'] if w['id'] else ''}): a {w['chars']}-character line, "
        f"{w['scrollWidth']} px in {w['clientWidth']} px: {w['line']!r}"
        for w in report["overflowing"]
    )


@pytest.mark.parametrize("entry", ALL_PAGES)
def test_no_code_block_scrolls_sideways(site, browser, entry):
    """At 1280x800 every visible code block is as wide as its text: scrollWidth <= clientWidth."""
    report = code_overflow(browser, f"{site}/{entry}.html?cd-check-overflow")
    wide = report["overflowing"]
    assert not wide, (
        f"{entry}.html at 1280x800: {len(wide)} of {report['measured']} visible code blocks scroll sideways "
        f"(code lines must be <= 79 characters): {_describe_overflow(report)}"
    )


def test_overflow_check_reports_a_planted_long_line(site, browser):
    """The same checker on a page with two planted code cells: 100 characters scroll, 79 fit."""
    entry = NOTEBOOK_PAGES[0] if NOTEBOOK_PAGES else ALL_PAGES[0]
    report = code_overflow(browser, f"{site}/{entry}.html?cd-check-overflow&cd-plant")
    ids = [w["id"] for w in report["overflowing"]]
    assert PLANT_LONG in ids, f"the checker missed the planted 100-character line on {entry}.html: {report}"
    assert PLANT_FIT not in ids, (
        f"{entry}.html at 1280x800: a 79-character code line does not fit its cell "
        f"({_describe_overflow(report)}); widen the content column in book/_static/book.css"
    )


def _notebook_params() -> dict:
    return json.loads((REPO / "ci" / "notebook_params.json").read_text(encoding="utf8"))


@pytest.mark.parametrize("entry", ALL_PAGES)
def test_plumbing_is_folded(site, browser, entry):
    """The setup cell and papermill's injected parameters sit behind a closed toggle, after the
    page's title and first paragraph; the parameters cell, what a reader may change, shows."""
    plumbing = _probe(browser, f"{site}/{entry}.html?cd-check-overflow")["plumbing"]
    notebook = (REPO / f"{entry}.ipynb").is_file()
    if notebook:
        assert len(plumbing["setup"]) == 1, f"{entry}.html: expected one setup cell, found {len(plumbing['setup'])}"
    if notebook and _notebook_params().get(f"{entry}.ipynb"):
        assert plumbing["injected"], f"{entry}.html: papermill's injected-parameters cell is missing"
    for kind in ("setup", "injected"):
        for i, cell in enumerate(plumbing[kind]):
            where = f"{entry}.html: the {kind} cell" + (f" #{i}" if i else "")
            assert not cell["codeShown"], f"{where} shows its code; it must be folded (ci/execute_notebooks.py)"
            assert cell["toggle"], f"{where} has no toggle to unfold it"
            assert cell["afterTitle"] and cell["afterProse"], f"{where} comes before the page's title and prose"
    for cell in plumbing["parameters"]:
        assert cell["codeShown"], f"{entry}.html: the parameters cell is hidden; a reader must see what to change"


@pytest.mark.parametrize("entry", NOTEBOOK_PAGES)
def test_repository_notebooks_keep_the_setup_cell_unfolded(entry):
    """Colab opens the repository's notebook: folding is added to the book's executed copy only."""
    nb = json.loads((REPO / f"{entry}.ipynb").read_text(encoding="utf8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    tags = set(code[0].get("metadata", {}).get("tags", [])) if code else set()
    assert not tags & {"hide-input", "hide-cell", "remove-input", "remove-cell"}, (
        f"{entry}.ipynb: the setup cell is tagged {sorted(tags)} in the repository; Colab must show it"
    )


def test_fold_plumbing_tags_the_executed_copy_only():
    """ci/execute_notebooks.py's fold_plumbing, without a build: the setup and injected-parameters
    cells get hide-cell, the parameters cell does not, and a title below the setup cell moves up."""
    ex = load_script(REPO / "ci" / "execute_notebooks.py")

    def cell(kind, source, *tags):
        return {"cell_type": kind, "source": source, "metadata": {"tags": list(tags)} if tags else {}}

    nb = {"cells": [
        cell("code", "# Setup: installs cdlib where it is missing\nimport os"),
        cell("markdown", "# Title\n\nProse."),
        cell("code", "EPOCHS = None", "parameters"),
        cell("code", "# Parameters\nEPOCHS = 1\n", "injected-parameters"),
        cell("code", "print(EPOCHS)"),
    ]}
    cells = ex.fold_plumbing(nb)["cells"]
    assert [c["source"][:7] for c in cells] == ["# Title", "# Setup", "EPOCHS ", "# Param", "print(E"]
    tags = [c["metadata"].get("tags", []) for c in cells]
    assert tags == [[], ["hide-cell"], ["parameters"], ["injected-parameters", "hide-cell"], []]
    assert "setup cell" in cells[1]["metadata"]["mystnb"]["code_prompt_show"]
    # A notebook whose first code cell is not the setup cell keeps it visible and in place.
    other = {"cells": [cell("code", "import os"), cell("markdown", "# Title")]}
    assert ex.fold_plumbing(other)["cells"][0]["metadata"] == {}

"""The exercises: instructor notebooks (notebooks/exercises/, in the book) and the student
notebooks generated from them (exercises/student/, by ci/make_student_notebooks.py).

- the committed student notebooks equal what the generator makes from the instructor
  notebooks (the script's check function; `--check` exits 1 naming the notebook);
- the generator's rules: placeholders at the marker's indentation, book-only tags
  dropped, malformed markers rejected with the notebook and cell named;
- every notebook is valid, clean and wired in: TOC, CI parameters, the setup cell, a
  check call, the device helper;
- a student notebook's placeholder really raises NotImplementedError, and the check
  then says "not implemented yet";
- in the built book (marker ``book``, after `bash ci/build_book.sh`) every solution is
  collapsed behind a "Show the solution" dropdown, and opens when clicked: measured in
  headless Chromium on the rendered page; a screenshot goes to _build/screenshots/.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from repo_scripts import load_script

nbformat = pytest.importorskip("nbformat")

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "ci" / "make_student_notebooks.py"


def _load_script():
    return load_script(SCRIPT)


msn = _load_script()
INSTRUCTOR = msn.instructor_notebooks(REPO)
STUDENT = [msn.student_path(p, REPO) for p in INSTRUCTOR]
CHECK_FOR = {"exercise1_cd_loss": "check_cd_loss", "exercise2_gkd_loss": "check_gkd_loss",
             "exercise3_edt_schedule": "check_schedule", "exercise4_kd_loss": "check_kd_loss",
             "exercise5_connector": "check_channel_attention"}


def _rel(p: Path) -> str:
    return p.relative_to(REPO).as_posix()


def _code(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


# ============================================================================ in sync


def test_there_are_three_assignments():
    assert len(INSTRUCTOR) >= 3, f"expected at least 3 instructor notebooks in {msn.INSTRUCTOR_DIR}/"
    assert {p.stem for p in INSTRUCTOR} >= set(CHECK_FOR)


def test_student_notebooks_are_generated_and_up_to_date():
    problems = msn.check(REPO)
    assert not problems, (
        "the committed student notebooks differ from what their instructor versions generate:\n  "
        + "\n  ".join(problems) + "\nrun: python ci/make_student_notebooks.py"
    )


@pytest.fixture
def repo_copy(tmp_path):
    """The exercise folders of the repository, copied: the generator runs on the copy."""
    for folder in (msn.INSTRUCTOR_DIR, msn.STUDENT_DIR):
        shutil.copytree(REPO / folder, tmp_path / folder)
    return tmp_path


def test_check_names_a_stale_missing_or_orphaned_student_notebook(repo_copy, monkeypatch, capsys):
    assert msn.check(repo_copy) == []
    stale = repo_copy / msn.STUDENT_DIR / INSTRUCTOR[0].name
    nb = nbformat.read(stale, as_version=4)
    nb.cells[0].source += "\nedited by hand"
    nbformat.write(nb, stale)
    (repo_copy / msn.STUDENT_DIR / INSTRUCTOR[1].name).unlink()
    shutil.copy(repo_copy / msn.STUDENT_DIR / INSTRUCTOR[2].name, repo_copy / msn.STUDENT_DIR / "old_exercise.ipynb")
    problems = "\n".join(msn.check(repo_copy))
    assert f"{INSTRUCTOR[0].name} differs" in problems
    assert f"{INSTRUCTOR[1].name} is missing" in problems
    assert "old_exercise.ipynb has no instructor version" in problems

    monkeypatch.setattr(msn, "REPO", repo_copy)
    assert msn.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert INSTRUCTOR[0].name in err and "python ci/make_student_notebooks.py" in err
    assert msn.main([]) == 0  # regenerates; the orphan is only warned about
    (repo_copy / msn.STUDENT_DIR / "old_exercise.ipynb").unlink()
    assert msn.main(["--check"]) == 0


def test_check_reports_an_edited_solution_that_was_not_regenerated(repo_copy):
    path = repo_copy / msn.INSTRUCTOR_DIR / INSTRUCTOR[0].name
    nb = nbformat.read(path, as_version=4)
    task = next(c for c in nb.cells if c.cell_type == "markdown" and "## The task" in c.source)
    task.source += "\n\nA new hint."
    nbformat.write(nb, path)
    assert any(INSTRUCTOR[0].name in p for p in msn.check(repo_copy))


def test_the_script_runs_from_the_command_line():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stdout


def test_instructor_guide_links_every_student_notebook_in_colab():
    guide = (REPO / "book" / "instructor_guide.md").read_text(encoding="utf8")
    prefix = "https://colab.research.google.com/github/channel-distillation/channel-distillation/blob/main/"
    linked = set(re.findall(re.escape(prefix) + r"(\S+?\.ipynb)", guide))
    assert linked == {_rel(p) for p in STUDENT}, f"the guide's Colab links {sorted(linked)} != the student notebooks"


# ============================================================================ generator rules


def _nb(*sources, tags=("hide-input",)):
    cells = [nbformat.v4.new_code_cell(s) for s in sources]
    for c in cells:
        c.metadata["tags"] = list(tags)
    return nbformat.v4.new_notebook(cells=cells)


def test_placeholder_keeps_indentation_and_surrounding_code():
    src = "def f(x):\n    y = 1\n    ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION\n\nprint('after')"
    nb = _nb(src, tags=("hide-input", "keep-me"))
    nb.cells[0].metadata["mystnb"] = {"code_prompt_show": "Show the solution", "code_prompt_hide": "Hide", "other": 1}
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", text="old")]
    nb.cells[0].execution_count = 3
    out = msn.make_student(nb).cells[0]
    assert out.source == (
        "def f(x):\n    y = 1\n    # YOUR CODE HERE\n    raise NotImplementedError(\"write your solution here\")\n\nprint('after')"
    )
    assert out.metadata["tags"] == ["keep-me"]
    assert out.metadata["mystnb"] == {"other": 1}
    assert out.outputs == [] and out.execution_count is None
    assert nb.cells[0].source == src, "make_student must not change its input"


def test_two_blocks_in_one_cell_and_top_level_block():
    src = "### BEGIN SOLUTION\na = 1\n### END SOLUTION\nb = 2\nif b:\n    ### BEGIN SOLUTION\n    c = 3\n    ### END SOLUTION"
    out = msn.make_student(_nb(src)).cells[0]
    assert out.source.count("raise NotImplementedError") == 2
    assert "a = 1" not in out.source and "c = 3" not in out.source and "b = 2" in out.source
    assert "tags" not in out.metadata
    compile(out.source, "student", "exec")


@pytest.mark.parametrize(
    "cells, message",
    [
        (["### BEGIN SOLUTION\nx = 1"], "never closed"),
        (["x = 1\n### END SOLUTION"], "without a ### BEGIN SOLUTION"),
        (["### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION"], "inside another solution block"),
        (["x = 1  ### BEGIN SOLUTION\n### END SOLUTION"], "alone on its line"),
        (["x = 1"], "no ### BEGIN SOLUTION"),
    ],
)
def test_malformed_markers_are_rejected(cells, message):
    with pytest.raises(msn.MarkerError, match=re.escape(message)):
        msn.make_student(_nb(*cells), "demo.ipynb")


def test_a_solution_without_hide_input_is_rejected():
    with pytest.raises(msn.MarkerError, match="lacks the tag 'hide-input'"):
        msn.make_student(_nb("### BEGIN SOLUTION\nx = 1\n### END SOLUTION", tags=()), "demo.ipynb")


def test_markers_in_markdown_are_rejected():
    nb = _nb("### BEGIN SOLUTION\nx = 1\n### END SOLUTION")
    nb.cells.insert(0, nbformat.v4.new_markdown_cell("### BEGIN SOLUTION\nanswer\n### END SOLUTION"))
    with pytest.raises(msn.MarkerError, match="cell 0 is a markdown cell"):
        msn.make_student(nb, "demo.ipynb")


def test_relative_links_are_rewritten_for_the_student_folder():
    source = ("[R](../04_reproduce_cifar100.ipynb#a) [G](../../book/instructor_guide.md) [E](exercise2_gkd_loss.ipynb) "
              "[U](https://example.org/x.ipynb) [A](#top) [P](/abs/path)")
    assert msn.relink(source) == (
        "[R](../../notebooks/04_reproduce_cifar100.ipynb#a) [G](../../book/instructor_guide.md) "
        "[E](exercise2_gkd_loss.ipynb) [U](https://example.org/x.ipynb) [A](#top) [P](/abs/path)")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("see [R](../04_reproduce_cifar100.ipynb)"),
                                         *_nb("### BEGIN SOLUTION\nx = 1\n### END SOLUTION").cells])
    assert msn.make_student(nb).cells[0].source == "see [R](../../notebooks/04_reproduce_cifar100.ipynb)"


_LINK = re.compile(r"\]\((?![a-zA-Z][a-zA-Z0-9+.-]*:|#|/)([^)\s#]+)")


@pytest.mark.parametrize("path", INSTRUCTOR + STUDENT, ids=_rel)
def test_every_relative_link_in_an_exercise_resolves(path):
    nb = nbformat.read(path, as_version=4)
    links = [link for c in nb.cells if c.cell_type == "markdown" for link in _LINK.findall(c.source)]
    broken = [link for link in links if not (path.parent / link).is_file()]
    assert not broken, f"{_rel(path)}: links to missing files {broken}"


def test_exercise3_does_not_claim_to_compare_with_a_cdlib_schedule():
    nb = nbformat.read(REPO / msn.INSTRUCTOR_DIR / "exercise3_edt_schedule.ipynb", as_version=4)
    how = next(c.source for c in nb.cells if c.cell_type == "markdown" and "How to work" in c.source)
    assert "compares your function with `cdlib`'s" not in how
    assert "no single right schedule" in how


# ============================================================================ the notebooks


@pytest.mark.parametrize("path", INSTRUCTOR + STUDENT, ids=_rel)
def test_notebook_is_valid_clean_and_parameterised(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{_rel(path)}: cells {dirty} have outputs; strip them"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0].cell_type == "code", f"{_rel(path)}: need exactly one 'parameters' code cell"


@pytest.mark.parametrize("path", INSTRUCTOR, ids=_rel)
def test_instructor_notebook_is_wired_into_the_book(path):
    import yaml

    rel = _rel(path)
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    classroom = next((p for p in toc["parts"] if p.get("caption") == "Classroom"), None)
    assert classroom, "_toc.yml has no part 'Classroom'"
    files = [c["file"] for c in classroom["chapters"]]
    assert "book/instructor_guide" in files
    assert rel.removesuffix(".ipynb") in files, f"{rel} is not listed in the Classroom part of _toc.yml"
    assert rel in json.loads((REPO / "ci" / "notebook_params.json").read_text()), f"{rel}: no CI parameters"


@pytest.mark.parametrize("path", INSTRUCTOR, ids=_rel)
def test_instructor_notebook_calls_its_check_and_the_device_helper(path):
    nb = nbformat.read(path, as_version=4)
    source = "\n".join(c.source for c in _code(nb))
    assert f"checks.{CHECK_FOR[path.stem]}(" in source
    assert "describe(" in source, "use cdlib.device.describe() to report (and warn about) the device"
    solutions = [c for c in _code(nb) if msn.BEGIN in c.source]
    assert solutions and all("hide-input" in c.metadata.get("tags", []) for c in solutions)
    # The shared setup cell is generated by ci/setup_cell.py (and checked by test_colab_install.py).
    too_long = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and len(c.source.splitlines()) > 16
                and not c.source.startswith("# Setup: installs cdlib")]
    assert not too_long, f"{_rel(path)}: code cells {too_long} are longer than 16 lines: move logic into cdlib"


@pytest.mark.parametrize("path", STUDENT, ids=_rel)
def test_student_notebook_has_placeholders_not_solutions(path):
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in nb.cells)
    assert msn.BEGIN not in text and msn.END not in text
    assert 'raise NotImplementedError("write your solution here")' in text
    assert not any("hide-input" in c.metadata.get("tags", []) for c in nb.cells)
    for c in _code(nb):
        compile(c.source, f"{_rel(path)}:{c.get('id')}", "exec")  # a valid notebook a student can run


def _placeholder_function(path: Path, name: str):
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in _code(nb) if f"def {name}(" in c.source)
    namespace: dict = {}
    exec(compile(cell.source, str(path), "exec"), namespace)
    return namespace[name]


def test_student_placeholders_raise_and_checks_say_not_implemented():
    from cdlib_classroom import checks

    student = REPO / msn.STUDENT_DIR
    fn = _placeholder_function(student / "exercise1_cd_loss.ipynb", "my_cd_loss")
    with pytest.raises(NotImplementedError, match="write your solution here"):
        fn([], [])
    with pytest.raises(checks.CheckFailed, match="not implemented yet"):
        checks.check_cd_loss(fn)
    fn = _placeholder_function(student / "exercise2_gkd_loss.ipynb", "my_gkd_loss")
    with pytest.raises(checks.CheckFailed, match="not implemented yet"):
        checks.check_gkd_loss(fn)
    fn = _placeholder_function(student / "exercise3_edt_schedule.ipynb", "my_weights")
    with pytest.raises(checks.CheckFailed, match="not implemented yet"):
        checks.check_schedule(lambda epoch: fn(epoch, 10), 10)


# ============================================================================ the rendered book

PROBE = """<!doctype html><meta charset="utf-8"><title>probe</title><body><pre id="result">pending</pre>
<iframe id="page" src="/{page}.html" style="width:1280px;height:2000px"></iframe>
<script>
document.getElementById("page").addEventListener("load", function () {{
  setTimeout(function () {{
    var doc = this.contentDocument, out = {{dropdowns: [], bare: []}};
    doc.querySelectorAll("details.hide.above-input").forEach(function (d) {{
      var code = d.querySelector(".cell_input"), summary = d.querySelector("summary");
      var cell = d.closest("div.cell");
      var before = {{open: d.open, visible: code.checkVisibility(), height: d.getBoundingClientRect().height,
                    summary: summary.innerText.trim()}};
      summary.click();
      out.dropdowns.push({{before: before, after: {{open: d.open, visible: code.checkVisibility(),
                           height: d.getBoundingClientRect().height}}, text: code.textContent,
                           tags: cell ? Array.from(cell.classList).filter(function (c) {{
                             return c.indexOf("tag_") === 0; }}) : []}});
    }});
    // Code a reader sees without opening anything: a cell input outside every dropdown.
    doc.querySelectorAll(".cell_input").forEach(function (code) {{
      if (!code.closest("details")) out.bare.push(code.textContent);
    }});
    document.getElementById("result").textContent = JSON.stringify(out);
  }}.bind(this), 1500);
}});
</script>"""


@pytest.fixture(scope="module")
def served_book():
    html = REPO / "_build" / "html"
    if not (html / "index.html").is_file():
        pytest.skip("the book is not built: run `bash ci/build_book.sh`")
    exe = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("headless Chromium not found (Debian: apt-get install chromium, or set $CHROMIUM)")
    probes = Path(tempfile.mkdtemp(prefix="cd-probe-"))

    class Handler(http.server.SimpleHTTPRequestHandler):
        def translate_path(self, path):
            if path.startswith("/__probe/"):
                return str(probes / path.split("/")[-1])
            return super().translate_path(path)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(html)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    profile = tempfile.mkdtemp(prefix="cd-chromium-")
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
            "--hide-scrollbars", f"--user-data-dir={profile}", "--virtual-time-budget=8000"]

    def browse(url: str, *args: str) -> str:
        proc = subprocess.run([*base, *args, url], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    yield f"http://127.0.0.1:{server.server_address[1]}", probes, browse
    server.shutdown()
    server.server_close()
    shutil.rmtree(profile, ignore_errors=True)
    shutil.rmtree(probes, ignore_errors=True)


@pytest.mark.book
@pytest.mark.parametrize("path", INSTRUCTOR, ids=lambda p: p.stem)
def test_book_hides_each_solution_behind_a_dropdown(served_book, path):
    url, probes, browse = served_book
    page = _rel(path).removesuffix(".ipynb")
    probe = probes / f"{path.stem}.html"
    probe.write_text(PROBE.format(page=page), encoding="utf8")
    dom = browse(f"{url}/__probe/{probe.name}", "--dump-dom")
    m = re.search(r'<pre id="result">(.*?)</pre>', dom, flags=re.S)
    assert m and m.group(1) != "pending", f"the probe did not run on {page}.html"
    import html as html_lib

    found = json.loads(html_lib.unescape(m.group(1)))
    nb = nbformat.read(path, as_version=4)
    expected = sum(1 for c in _code(nb) if msn.BEGIN in c.source)
    # The page folds other cells too (the setup and injected-parameters cells, tag hide-cell:
    # ci/execute_notebooks.py fold_plumbing), so the solutions are told apart by their text,
    # not counted among all dropdowns.
    shown = [text for text in found["bare"] if msn.BEGIN in text]
    assert not shown, f"{page}.html: a solution is shown outside any dropdown: {shown[0][:200]!r}"
    solutions = [d for d in found["dropdowns"] if msn.BEGIN in d["text"]]
    assert len(solutions) == expected, (
        f"{page}.html: {len(solutions)} solutions behind a dropdown, expected {expected} "
        f"(dropdowns on the page: {[d['before']['summary'] for d in found['dropdowns']]})")
    for cell in solutions:
        assert "tag_hide-input" in cell["tags"], f"{page}.html: a solution is folded without hide-input: {cell['tags']}"
        assert cell["before"]["summary"] == "Show the solution", cell["before"]
        assert not cell["before"]["open"] and not cell["before"]["visible"], f"{page}.html: a solution is visible"
        assert cell["after"]["open"] and cell["after"]["visible"], f"{page}.html: the dropdown does not open"
        grew = cell["after"]["height"] - cell["before"]["height"]
        assert grew > 40, f"{page}.html: opening the dropdown shows only {grew:.0f} px more"
    others = [d["before"]["summary"] for d in found["dropdowns"] if msn.BEGIN not in d["text"]]
    assert "Show the solution" not in others, f"{page}.html: a dropdown labelled as a solution hides something else"

    shots = REPO / "_build" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    png = shots / f"{path.stem}-solution-collapsed.png"
    browse(f"{url}/{page}.html", f"--screenshot={png}", "--window-size=1280,3200")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

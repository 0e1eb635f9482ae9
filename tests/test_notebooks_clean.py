"""The chapter notebooks as committed: clean, parameterised, and all in the book.

- every notebooks/**/*.ipynb is valid nbformat, carries no outputs and no execution
  counts (executed copies live in _build/stage/, never in git), and has exactly one
  code cell tagged ``parameters`` (papermill injects the CI parameters after it);
- every notebook is listed in _toc.yml and every _toc.yml entry exists;
- ci/notebook_params.json names only notebooks of the TOC, and only parameters that
  the notebook's ``parameters`` cell assigns.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is needed (pip install -e '.[test]')")
yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read _toc.yml (pip install -e '.[book]')")

REPO = Path(__file__).resolve().parent.parent
NB_DIR = REPO / "notebooks"
TOC = REPO / "_toc.yml"
PARAMS = REPO / "ci" / "notebook_params.json"
SUFFIXES = (".ipynb", ".md", ".rst")


def _notebooks() -> list[Path]:
    return sorted(p for p in NB_DIR.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def _rel(p: Path) -> str:
    return p.relative_to(REPO).as_posix()


def _toc_entries() -> list[str]:
    toc = yaml.safe_load(TOC.read_text(encoding="utf8"))
    out = [toc["root"]] if toc.get("root") else []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                out.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key) or []:
                    walk(child)

    walk(toc)
    return out


def _resolve(entry: str) -> Path | None:
    p = REPO / entry
    if p.suffix in SUFFIXES and p.is_file():
        return p
    return next((c for c in (p.with_name(p.name + s) for s in SUFFIXES) if c.is_file()), None)


def _parameters_cells(nb) -> list:
    return [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]


def _assigned_names(source: str) -> set[str]:
    """Names assigned at top level of a parameters cell (``x = 1``, ``x: int = 1``, ``a, b = ...``)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # e.g. IPython magics: fall back to a line-based reading
        return set(re.findall(r"^([A-Za-z_]\w*)\s*(?::[^=]*)?=(?!=)", source, flags=re.M))
    names: set[str] = set()

    def targets(t):
        if isinstance(t, ast.Name):
            names.add(t.id)
        elif isinstance(t, (ast.Tuple, ast.List)):
            for e in t.elts:
                targets(e)

    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            for t in stmt.targets:
                targets(t)
        elif isinstance(stmt, (ast.AnnAssign, ast.AugAssign)):
            targets(stmt.target)
    return names


NOTEBOOKS = _notebooks()


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks found under {_rel(NB_DIR)}/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_rel)
def test_notebook_is_valid_nbformat(path):
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    assert nb.nbformat == 4, f"{_rel(path)}: nbformat {nb.nbformat}, expected 4"
    nbformat.validate(nb)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_rel)
def test_notebook_outputs_are_stripped(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)
    ]
    assert not dirty, (
        f"{_rel(path)}: code cells {dirty} have outputs or execution counts; strip them "
        f"(e.g. `jupyter nbconvert --clear-output --inplace {_rel(path)}`) before committing"
    )
    assert "papermill" not in nb.metadata, f"{_rel(path)} is a papermill-executed copy, not a source notebook"
    injected = [i for i, c in enumerate(nb.cells) if "injected-parameters" in c.metadata.get("tags", [])]
    assert not injected, f"{_rel(path)}: cells {injected} were injected by papermill; remove them"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_rel)
def test_notebook_has_one_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    cells = _parameters_cells(nb)
    assert len(cells) == 1, (
        f"{_rel(path)}: expected exactly one cell tagged 'parameters' (papermill injects CI "
        f"parameters after it), found {len(cells)}"
    )
    assert cells[0].cell_type == "code", f"{_rel(path)}: the 'parameters' cell must be a code cell"
    assert _assigned_names(cells[0].source), f"{_rel(path)}: the 'parameters' cell assigns no names"


def test_every_notebook_is_in_the_toc():
    listed = {_rel(p) for p in map(_resolve, _toc_entries()) if p is not None}
    missing = [_rel(p) for p in NOTEBOOKS if _rel(p) not in listed]
    assert not missing, f"notebooks not listed in _toc.yml (add a `- file:` entry): {missing}"


def test_every_toc_entry_exists():
    entries = _toc_entries()
    assert entries, "_toc.yml lists no files"
    dangling = [e for e in entries if _resolve(e) is None]
    assert not dangling, f"_toc.yml entries with no {'/'.join(SUFFIXES)} file: {dangling}"
    assert len(entries) == len(set(entries)), "_toc.yml lists a file twice"


def test_notebook_params_name_existing_notebooks_and_parameters():
    params = json.loads(PARAMS.read_text(encoding="utf8"))
    assert isinstance(params, dict), f"{_rel(PARAMS)} must be a JSON object: notebook path -> parameters"
    toc_files = {_rel(p) for p in map(_resolve, _toc_entries()) if p is not None}
    problems = []
    for nb_path, nb_params in params.items():
        path = REPO / nb_path
        if not path.is_file() or path.suffix != ".ipynb":
            problems.append(f"{nb_path}: no such notebook")
            continue
        if nb_path not in toc_files:
            problems.append(f"{nb_path}: not in _toc.yml, so it is never executed")
        if not isinstance(nb_params, dict):
            problems.append(f"{nb_path}: parameters must be a JSON object, got {type(nb_params).__name__}")
            continue
        cells = _parameters_cells(nbformat.read(path, as_version=4))
        declared = _assigned_names(cells[0].source) if cells else set()
        unknown = sorted(set(nb_params) - declared)
        if unknown:
            problems.append(
                f"{nb_path}: {unknown} are not assigned in its 'parameters' cell "
                f"(declared: {sorted(declared)}); papermill would inject them silently"
            )
    assert not problems, "ci/notebook_params.json:\n  " + "\n  ".join(problems)


def test_every_toc_notebook_has_a_params_entry():
    params = json.loads(PARAMS.read_text(encoding="utf8"))
    toc_nbs = [_rel(p) for p in map(_resolve, _toc_entries()) if p is not None and p.suffix == ".ipynb"]
    missing = [nb for nb in toc_nbs if nb not in params]
    assert not missing, (
        f"{_rel(PARAMS)} has no entry for {missing}; add one with the small CI parameters "
        "(or {} if the defaults already run in a minute on a 2-core CPU)"
    )


def test_assigned_names_reader():
    src = "QUICK = False\nEPOCHS: int = 3\na, (b, c) = 1, (2, 3)\nx += 1\nif True:\n    hidden = 1\nprint(QUICK)"
    assert _assigned_names(src) == {"QUICK", "EPOCHS", "a", "b", "c", "x"}
    assert _assigned_names("%matplotlib inline\nSTEPS = 10\n") == {"STEPS"}


# ----------------------------------------------------------------- code that fits

MAX_CODE_COLUMNS = 79  # PEP 8: a code block of the book never scrolls sideways in a 1280-px window
# The chapters and the exercises (instructor copies; the student copies are generated from them).
CHAPTERS = sorted(NB_DIR.glob("*.ipynb")) + sorted((NB_DIR / "exercises").glob("*.ipynb"))


def _long_code_lines(nb, limit: int = MAX_CODE_COLUMNS) -> list[str]:
    """``"cell <id> line <n> (<len> chars)"`` for every code line longer than ``limit``
    (the setup cell too: folded in the book, it is read when opened, and on Colab)."""
    out = []
    for cell in (c for c in nb.cells if c.cell_type == "code"):
        for n, line in enumerate(cell.source.splitlines(), start=1):
            if len(line) > limit:
                out.append(f"cell {cell.get('id', '?')} line {n} ({len(line)} chars)")
    return out


@pytest.mark.parametrize("path", CHAPTERS, ids=_rel)
def test_chapter_code_lines_fit_79_columns(path):
    long = _long_code_lines(nbformat.read(path, as_version=4))
    assert not long, (
        f"{_rel(path)}: code lines over {MAX_CODE_COLUMNS} characters scroll sideways on the page; "
        "move long comments to a line of their own and wrap calls: " + "; ".join(long)
    )


def test_long_code_line_check_catches_a_planted_line():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("# setup cell: " + "x" * 100),
                nbformat.v4.new_code_cell("a = 1\nb = '" + "y" * 80 + "'\n" + "c" * 79)]
    nb.cells[0]["id"], nb.cells[1]["id"] = "setup", "planted"
    assert _long_code_lines(nb) == ["cell setup line 1 (114 chars)", "cell planted line 2 (86 chars)"]

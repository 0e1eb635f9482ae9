"""``cdlib export-otter ASSIGNMENT OUT_DIR``: an exercise as an Otter-Grader assignment, for Gradescope.

Otter-Grader (UC Berkeley; https://otter-grader.readthedocs.io) is the usual way to put Jupyter
assignments on Gradescope: ``otter assign`` turns a master notebook into a student notebook with
``grader.check`` cells and an autograder zip that Gradescope runs on every submission. This module
writes the master notebook from the instructor notebook (``notebooks/exercises/ASSIGNMENT.ipynb``) and
the exercise record, then runs ``otter assign`` (no Docker needed):

* ``OUT_DIR/master/ASSIGNMENT.ipynb``   the Otter Assign master notebook (kept for inspection);
* ``OUT_DIR/student/ASSIGNMENT.ipynb``  what students get: the solution replaced by ``...``, a
  ``grader.check("q1")`` cell after it that runs cdlib's public check(s) and shows the named mistake;
* ``OUT_DIR/autograder/*.zip``          for Gradescope: one hidden test per hidden case of ``cdlib grade``
  (the same cases, judged by the same code), each worth its question's points divided by its number of
  cases (``cdlib grade`` gives a question all or nothing), and cdlib's implementation marked and
  watched while the answer runs (see :mod:`cdlib_classroom.grading.poison`).

The cells ``cdlib grade`` would not run — the setup cell (it installs cdlib), the public check cells,
everything after the answer (exercise 1's ResNet demo, exercise 3's training runs) — carry Otter's
``otter_ignore`` tag: Otter runs the whole notebook otherwise. What Otter does not do, and ``cdlib grade``
does: a time limit per submission with the kill of its whole process session, memory and output limits,
running the student's code in a separate process from the tests, stopping at the graded cell, and the
review flags. See book/instructor_guide.md.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import shutil
from pathlib import Path
from typing import List, Optional

from cdlib.errors import ConfigError, DataError

from .exercises import exercise, names
from .grading import notebook as nbtools
from .grading.grader import default_instructor_notebook, graded_exercise

IGNORE_TAG = "otter_ignore"
FIRST_QUESTION = "q1"


def _raw(text: str) -> dict:
    return {"cell_type": "raw", "metadata": {}, "source": text}


def _code(text: str, tags=()) -> dict:
    return {"cell_type": "code", "metadata": {"tags": list(tags)} if tags else {}, "source": text,
            "outputs": [], "execution_count": None}


def _test(points: float, hidden: bool, body: str) -> dict:
    flag = "true" if hidden else "false"
    head = f'""" # BEGIN TEST CONFIG\npoints: {points:g}\nhidden: {flag}\n""" # END TEST CONFIG\n'
    return _code(head + body)


def default_requirement(instructor: Path) -> str:
    """What the autograder installs: the notebook's setup cell's CDLIB_SPEC (cdlib from its git tag), with
    the classroom extra."""
    for cell in nbtools.read_code_cells(instructor):
        m = re.search(r'CDLIB_SPEC\s*=\s*f?"([^"]+)"', cell.source)
        if m:
            # The setup cell spells the repository once, as CDLIB_REPO (lines that fit the page).
            repo = re.search(r'CDLIB_REPO\s*=\s*"([^"]+)"', cell.source)
            spec = m.group(1).replace("{CDLIB_REPO}", repo.group(1) if repo else "{CDLIB_REPO}")
            return spec.replace("channel-distillation @", "channel-distillation[classroom] @", 1)
    return "channel-distillation[classroom]"


def master_notebook(name: str, instructor_notebook: Optional[Path] = None, requirement: Optional[str] = None) -> dict:
    """The Otter Assign master notebook of exercise ``name`` (a JSON-ready dict)."""
    task = graded_exercise(name, instructor_notebook)
    path = Path(instructor_notebook) if instructor_notebook else default_instructor_notebook(name)
    if path is None or not path.is_file():
        raise DataError(f"no instructor notebook for {name}: pass --instructor-notebook "
                        f"(notebooks/exercises/{name}.ipynb "
                        "of a source checkout).")
    nb = json.loads(path.read_text(encoding="utf8"))
    code = nbtools.read_code_cells(path)
    graded = {c.index for c in (nbtools.cells_to_run(code, task.names) or [])}
    solution_at = [i for i, c in enumerate(nb["cells"]) if c.get("cell_type") == "code"
                   and "BEGIN SOLUTION" in "".join(c.get("source", ""))]
    if not solution_at:
        raise DataError(f"{path} has no ### BEGIN SOLUTION block.")
    first, last = solution_at[0], solution_at[-1]
    cells = []
    for i, cell in enumerate(nb["cells"]):
        cell = copy.deepcopy(cell)
        cell.get("metadata", {}).pop("mystnb", None)
        tags = [t for t in cell.get("metadata", {}).get("tags", []) if t != "hide-input"]
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
            source = "".join(cell.get("source", ""))
            source = re.sub(r"^(\s*)#+ *(BEGIN|END) SOLUTION", r"\1# \2 SOLUTION", source, flags=re.MULTILINE)
            cell["source"] = source
            if i not in graded and IGNORE_TAG not in tags:
                tags.append(IGNORE_TAG)  # otter runs every cell; cdlib grade runs these only
        cell.setdefault("metadata", {})["tags"] = tags
        if not tags:
            cell["metadata"].pop("tags")
        if i == first:
            cells.append(_raw(f"# BEGIN QUESTION\nname: {FIRST_QUESTION}\nmanual: false"))
        if i in solution_at:  # Otter replaces the marked lines of a SOLUTION block's cells by "..."
            cells += [_raw("# BEGIN SOLUTION"), cell, _raw("# END SOLUTION")]
        else:
            cells.append(cell)
        if i == last:
            cells += _question_tests(task, first_question=True)
            cells.append(_raw("# END QUESTION"))
            cells += _other_questions(task)
    config = "\n".join([
        "# ASSIGNMENT CONFIG",
        f"name: {name}",
        f"requirements:\n  - {json.dumps(requirement or default_requirement(path))}",
        "overwrite_requirements: false",
        "init_cell: true",
        "check_all_cell: false",
        "export_cell: false",
        "run_tests: false",
        "solutions_pdf: false",
        "generate:",
        "  pdf: false",
        "  show_stdout: true",
        "  show_hidden: false",
    ])
    return {"cells": [_raw(config)] + cells, "metadata": nb.get("metadata", {}), "nbformat": 4,
            "nbformat_minor": nb.get("nbformat_minor", 5)}


def _case_points(points: float, n: int) -> List[float]:
    """``points`` split over ``n`` cases, rounded to hundredths, the rest on the last case."""
    each = [round(points / n, 2)] * n
    each[-1] = round(points - sum(each[:-1]), 2)
    return each


def _tests_of(task, question) -> List[dict]:
    points = _case_points(question.points, len(question.cases))
    return [_test(p, True, f"from cdlib_classroom import otter_support\n"
                           f"otter_support.hidden_case({task.name!r}, {question.name!r}, {case_id!r}, globals())\n")
            for p, case_id in zip(points, question.cases)]


def _question_tests(task, first_question: bool) -> List[dict]:
    public = _test(0, False, f"from cdlib_classroom import otter_support\n"
                             f"otter_support.public_check({task.name!r}, globals())\n")
    tests = [public] + _tests_of(task, task.questions[0])
    return [_raw("# BEGIN TESTS")] + tests + [_raw("# END TESTS")]


def _other_questions(task) -> List[dict]:
    cells = []
    for k, question in enumerate(task.questions[1:], start=2):
        cells.append(_raw(f"# BEGIN QUESTION\nname: q{k}\nmanual: false"))
        cells.append({"cell_type": "markdown", "metadata": {},
                      "source": f"**Question {k} ({question.name}, graded by hidden tests):** {question.what}."})
        cells += [_raw("# BEGIN TESTS")] + _tests_of(task, question) + [_raw("# END TESTS")]
        cells.append(_raw("# END QUESTION"))
    return cells


def question_map(name: str) -> dict:
    """Otter question name -> cdlib question name, for reading Otter's scores."""
    task = exercise(name)
    return {f"q{k}": q.name for k, q in enumerate(task.questions, start=1)}


def export(name: str, out_dir: Path, instructor_notebook: Optional[Path] = None, requirement: Optional[str] = None,
           quiet: bool = True) -> dict:
    """Write the master notebook and run ``otter assign``; returns the paths made."""
    if name not in names():
        raise ConfigError(f"unknown exercise {name!r}; choose one of {', '.join(names())}.")
    out_dir = Path(out_dir)
    master_dir = out_dir / "master"
    master_dir.mkdir(parents=True, exist_ok=True)
    master = master_dir / f"{name}.ipynb"
    master.write_text(json.dumps(master_notebook(name, instructor_notebook, requirement), indent=1), encoding="utf8")
    dist = out_dir / "dist"
    try:
        from otter.assign import main as otter_assign
    except ImportError:
        raise DataError("cdlib export-otter needs otter-grader: "
                        "pip install 'channel-distillation[classroom]'.") from None
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            otter_assign(str(master), str(dist), no_pdfs=True, no_run_tests=True)
    except Exception as exc:  # noqa: BLE001 - otter's own message, with what it printed
        raise DataError(f"otter assign failed on {master}: {exc}\n{log.getvalue()[-3000:]}") from exc
    student, autograder = out_dir / "student", out_dir / "autograder"
    for target, source in ((student, dist / "student"), (autograder, dist / "autograder")):
        if target.exists():
            shutil.rmtree(target)
        source.rename(target)
    dist.rmdir() if dist.exists() and not any(dist.iterdir()) else None
    zips = sorted(autograder.glob("*.zip"))
    if not quiet:
        print(log.getvalue())
    return {"master": master, "student": student / f"{name}.ipynb", "autograder": zips[-1] if zips else None}


def add_parser(sub) -> None:
    """``cdlib export-otter`` (the ``cdlib.commands`` entry point)."""
    p = sub.add_parser(
        "export-otter", help="export an exercise as an Otter-Grader assignment (student notebook, Gradescope zip)",
        description="Write an Otter Assign master notebook for ASSIGNMENT and run `otter assign` on it: "
                    "OUT_DIR/student/ASSIGNMENT.ipynb (with grader.check cells) and OUT_DIR/autograder/*.zip "
                    "(upload to Gradescope). Needs otter-grader: pip install 'channel-distillation[classroom]'.")
    p.add_argument("assignment", choices=names(), metavar="ASSIGNMENT", help=", ".join(names()))
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--instructor-notebook", type=Path, default=None,
                   help="the instructor notebook (default: notebooks/exercises/ASSIGNMENT.ipynb of this checkout)")
    p.add_argument("--requirement", default=None,
                   help="how the autograder installs cdlib (a pip requirement; default: the setup cell's CDLIB_SPEC "
                        "with the classroom extra)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    made = export(args.assignment, args.out_dir, args.instructor_notebook, args.requirement)
    print(f"master notebook: {made['master']}\nstudent notebook: {made['student']}\n"
          f"Gradescope autograder: {made['autograder']}")
    return 0

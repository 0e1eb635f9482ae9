"""Grading a folder of submissions: one child process per notebook, a CSV and a feedback file each."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from cdlib.errors import CDLibError, ConfigError, DataError

from ..exercises import exercise
from ..record import Exercise, Verdict
from . import notebook
from .sandbox import RunResult, run_in_sandbox

CSV_COLUMNS = ("submission", "question", "points", "max_points", "diagnosis")
SUBMISSION_NEEDS = ("IPython", "torch")  # what the child process imports besides cdlib and the classroom


class GradingError(CDLibError):
    """The grader cannot run (a missing package, an empty submissions folder)."""


@dataclass(frozen=True)
class SubmissionGrade:
    submission: str  # the file stem: the student's id
    verdicts: List[Verdict]
    public_check: str  # what the notebook's own check says ("" if it did not run)
    notes: List[str]  # how the run went, for the feedback file
    seconds: float

    @property
    def points(self) -> float:
        return sum(v.points for v in self.verdicts)

    @property
    def max_points(self) -> float:
        return sum(v.max_points for v in self.verdicts)


def require_submission_packages() -> None:
    missing = [name for name in SUBMISSION_NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        raise GradingError(
            f"cdlib grade needs {', '.join(missing)} to run notebooks, and it is not installed: "
            "pip install 'channel-distillation[classroom]'."
        )


def default_instructor_notebook(name: str) -> Optional[Path]:
    """notebooks/exercises/<name>.ipynb of the source checkout the classroom runs from, if there is one."""
    path = Path(__file__).resolve().parents[2] / "notebooks" / "exercises" / f"{name}.ipynb"
    return path if path.is_file() else None


def graded_exercise(name: str, instructor_notebook: Optional[Path] = None) -> Exercise:
    """The exercise ``name`` with its points from the instructor notebook's metadata (if any)."""
    task = exercise(name)
    path = Path(instructor_notebook) if instructor_notebook else default_instructor_notebook(name)
    if path is not None:
        points = notebook.notebook_points(path)
        if points:
            task = task.with_points(points)
    return task


# ---------------------------------------------------------------------------- one submission


def case_inputs(case: dict) -> dict:
    """What the submission's process gets of a hidden case: the inputs, never the right answers."""
    return {k: case[k] for k in ("id", "function", "kind", "args", "kwargs", "grad", "input") if k in case}


def _write_job(job: Path, task: Exercise, cells, cases) -> None:
    import torch

    spec = {
        "exercise": task.name,
        "function": task.function,
        "cells": [{"index": c.index, "source": c.source} for c in cells],
        "forbidden_modules": list(task.forbidden_modules),
    }
    (job / "job.json").write_text(json.dumps(spec), encoding="utf8")
    torch.save([case_inputs(c) for c in cases], job / "cases.pt")


def _stopped_diagnosis(task: Exercise, run: RunResult, status: Optional[dict], timeout: float) -> str:
    fn = task.function
    if run.timed_out and run.stage == "starting Python":
        return ("the grader could not start Python with torch and cdlib in time (an overloaded machine?), "
                "so this notebook was not graded: grade it again.")
    if run.timed_out:
        return f"did not finish within {timeout:g} s (killed while {run.stage}): a cell or {fn} never ends."
    if status is None:
        how = f"was killed by signal {-run.returncode}" if run.returncode < 0 else f"exited with code {run.returncode}"
        return f"the notebook's process {how} while {run.stage} (os._exit, a crash or running out of memory)."
    if status["status"] == "sys_exit":
        return f"cell {status['cell']} stops the notebook (sys.exit / exit, code {status['code']}), so {fn} was never graded."
    if status["status"] == "cell_error":
        return f"the notebook crashes: cell {status['cell']} raised {status['error']}, so {fn} was never graded."
    if status["status"] == "not_callable":
        return f"{fn} is a {status['type']}, not a function."
    return f"the notebook could not be graded ({status})."


def _cheat_diagnosis(fn: str, static: Sequence[str], seen: Sequence[str]) -> str:
    names = sorted(set(static) | set(seen))
    how = " and ".join(x for x, found in (("in its source", static), ("when it ran", seen)) if found)
    return (f"{fn} calls cdlib's own implementation ({', '.join(names)}; found {how}): the exercise is to "
            "write it yourself, so it scores 0.")


def _load_json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text(encoding="utf8")) if path.is_file() else None


def _read_results(job: Path) -> tuple:
    """(outcomes file, public check) as the submission's process wrote them; the student's code could have
    written them too, so they are loaded as data only (weights_only) and their shape is checked."""
    import torch

    saved = torch.load(job / "outcomes.pt", weights_only=True)
    public = _load_json(job / "public.json") or {"status": "none", "message": ""}
    if not (isinstance(saved, dict) and isinstance(saved.get("outcomes"), list)
            and isinstance(saved.get("forbidden_calls"), list) and all(isinstance(o, dict) for o in saved["outcomes"])
            and isinstance(public.get("message"), str)):
        raise ValueError("unexpected contents")
    return saved, public


def grade_submission(task: Exercise, path: Path, timeout: float = 60.0,
                     cases: Optional[List[dict]] = None) -> SubmissionGrade:
    """Grade one notebook: run it in its own process and folder, then judge its function."""
    start = time.perf_counter()
    name, fn = Path(path).stem, task.function
    cases = task.hidden_cases() if cases is None else cases

    def done(verdicts, public="", notes=()):
        return SubmissionGrade(name, verdicts, public, list(notes), time.perf_counter() - start)

    try:
        cells = notebook.read_code_cells(Path(path))
    except notebook.UnreadableNotebook as exc:
        return done(task.zero(f"{exc}, so {fn} cannot be graded."))
    selected = notebook.cells_to_run(cells, task.names)
    if selected is None:
        names = " or ".join(task.names)
        blank = "the notebook is empty" if not any(c.source.strip() for c in cells) else f"no cell defines {names}"
        return done(task.zero(f"{blank}: write {task.signature} in the notebook."))
    static = notebook.static_uses(selected, task.names, task.forbidden_modules)

    root = Path(tempfile.mkdtemp(prefix=f"cdlib-grade-{name}-"))
    try:
        job, work = root / "job", root / "work"
        job.mkdir()
        work.mkdir()
        _write_job(job, task, selected, cases)
        run = run_in_sandbox(job, work, timeout)
        status = _load_json(job / "status.json")
        notes = [f"cells run: {', '.join(str(c.index + 1) for c in selected)} (counting every cell from 1); "
                 f"the notebook ran for {run.seconds:.1f} s"]
        outcomes_file = job / "outcomes.pt"
        if not outcomes_file.is_file():
            if run.log_tail:
                notes.append("the notebook's last output:\n" + run.log_tail)
            return done(task.zero(_stopped_diagnosis(task, run, status, timeout)), notes=notes)
        try:
            saved, public = _read_results(job)
        except Exception as exc:  # noqa: BLE001 - whatever the student's process left there
            return done(task.zero(f"the grader could not read what the notebook's process left "
                                  f"({type(exc).__name__}): did the notebook change the grader's files?"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if run.timed_out:
        notes.append(f"the public check did not finish within the {timeout:g} s limit.")
    if static or saved["forbidden_calls"]:
        return done(task.zero(_cheat_diagnosis(fn, static, saved["forbidden_calls"])), notes=notes)
    outcomes = saved["outcomes"]
    if outcomes and all(o.get("not_implemented") for o in outcomes):
        what = " and ".join(task.names) + (" are" if task.extra_names else " is")
        return done(task.zero(f"{what} not implemented yet (raises NotImplementedError)."), notes=notes)
    public_text = "passed" if public["status"] == "passed" else public["message"]
    return done(_with_hint(task.score(cases, outcomes), public_text), public_text, notes)


def _with_hint(verdicts: List[Verdict], public: str) -> List[Verdict]:
    """The first question that lost points gets the public check's diagnosis of the usual mistake,
    when it names one (the feedback file shows the whole check)."""
    lines = [line.strip()[2:] for line in public.splitlines() if line.strip().startswith("- ")]
    lost = next((i for i, v in enumerate(verdicts) if v.points < v.max_points), None)
    if not lines or lost is None:
        return verdicts
    v = verdicts[lost]
    hinted = Verdict(v.question, v.points, v.max_points, f"{v.diagnosis} Hint from the public check: {lines[0]}")
    return verdicts[:lost] + [hinted] + verdicts[lost + 1:]


# ---------------------------------------------------------------------------- a folder


def grade(assignment: str, submissions: Path, out: Path = Path("grades.csv"), timeout: float = 60.0,
          feedback_dir: Optional[Path] = None, instructor_notebook: Optional[Path] = None,
          jobs: int = 1) -> List[SubmissionGrade]:
    """Grade every ``*.ipynb`` in ``submissions`` (file stem = student id) for ``assignment``.

    Writes ``out`` (one row per submission and question), ``<out>_totals.csv`` (one row per
    submission) and one markdown feedback file per submission into ``feedback_dir``
    (default: ``feedback/`` beside ``out``).
    """
    require_submission_packages()
    task = graded_exercise(assignment, instructor_notebook)
    folder = Path(submissions)
    if not folder.is_dir():
        raise DataError(f"the submissions folder {folder} does not exist; pass the folder holding the .ipynb files.")
    paths = sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith("."))
    if not paths:
        raise DataError(f"{folder} holds no .ipynb file; put one notebook per student there (file name = student id).")
    if not timeout > 0 or jobs < 1:
        raise ConfigError(f"--timeout must be > 0 seconds and --jobs >= 1 (got {timeout!r} and {jobs!r}).")
    cases = task.hidden_cases()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        grades = list(pool.map(lambda p: grade_submission(task, p, timeout, cases), paths))
    out = Path(out)
    write_csv(grades, out)
    write_feedback(task, grades, Path(feedback_dir) if feedback_dir else out.parent / "feedback")
    return grades


def totals_path(out: Path) -> Path:
    """Where the one-row-per-student totals go: ``grades_totals.csv`` beside ``grades.csv``."""
    return out.with_name(f"{out.stem}_totals.csv")


def write_csv(grades: Sequence[SubmissionGrade], out: Path) -> None:
    """``out``: a row per submission and question; and a row per submission in :func:`totals_path`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for g in grades:
            for v in g.verdicts:
                writer.writerow([g.submission, v.question, f"{v.points:g}", f"{v.max_points:g}", v.diagnosis])
    with open(totals_path(out), "w", newline="", encoding="utf8") as f:
        writer = csv.writer(f)
        writer.writerow(("submission", "points", "max_points"))
        for g in grades:
            writer.writerow([g.submission, f"{g.points:g}", f"{g.max_points:g}"])


def write_feedback(task: Exercise, grades: Sequence[SubmissionGrade], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    what = {q.name: q.what for q in task.questions}
    for g in grades:
        lines = [f"# {task.name}: feedback for {g.submission}", "",
                 f"**{g.points:g} / {g.max_points:g} points** for `{task.signature}`.", "",
                 "| question | what it checks | points | diagnosis |", "|---|---|---|---|"]
        for v in g.verdicts:
            cell = v.diagnosis.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {v.question} | {what[v.question]} | {v.points:g} / {v.max_points:g} | {cell} |")
        if g.public_check:
            lines += ["", "## The notebook's own check", "", "```", g.public_check, "```"]
        if g.notes:
            lines += ["", "## How the run went", ""] + [f"```\n{n}\n```" if "\n" in n else f"- {n}" for n in g.notes]
        (folder / f"{g.submission}.md").write_text("\n".join(lines) + "\n", encoding="utf8")

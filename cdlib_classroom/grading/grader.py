"""Grading a folder of submissions: one child process per notebook, a CSV and a feedback file each."""

from __future__ import annotations

import csv
import importlib.util
import json
import random
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from cdlib.errors import CDLibError, ConfigError, DataError

from ..exercises import exercise
from ..outcome import close, tensors_close
from ..record import Exercise, Verdict
from . import notebook, poison
from .sandbox import RunResult, run_in_sandbox

CSV_COLUMNS = ("submission", "question", "points", "max_points", "diagnosis")
TOTALS_COLUMNS = ("submission", "points", "max_points", "review")
DEFAULT_MAX_MEMORY_GB = 4.0  # per submission, all its processes together; a normal one needs about 0.5 GB
DEFAULT_MAX_OUTPUT_MB = 20.0  # printed by a submission; a normal one prints a few kilobytes
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
    review: List[str] = ()  # why an instructor should read this notebook ("" none): see notebook.review_flags
    file: str = ""  # the submitted file, relative to the submissions folder
    written: List[str] = ()  # the markdown cells the student added or changed (written answers)

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


def _write_job(job: Path, task: Exercise, cells, cases, factor: float) -> None:
    import torch

    spec = {
        "exercise": task.name,
        "function": task.function,
        "cells": [{"index": c.index, "source": c.source} for c in cells],
        "forbidden_modules": list(task.forbidden_modules),
        "factor": factor,
    }
    (job / "job.json").write_text(json.dumps(spec), encoding="utf8")
    torch.save([case_inputs(c) for c in cases], job / "cases.pt")


def _stopped_diagnosis(task: Exercise, run: RunResult, status: Optional[dict], timeout: float,
                       limits: tuple = (None, None)) -> str:
    fn = task.function
    if run.limit == "memory":
        return (f"used more than {limits[0] / 2**30:.3g} GB of memory (killed while {run.stage}): the exercise needs "
                "well under 1 GB; look for very large tensors or lists that keep growing.")
    if run.limit == "output":
        return (f"printed more than {limits[1] / 2**20:.3g} MB (killed while {run.stage}): a print in a loop "
                "that never ends? Only the end of the output is shown below.")
    if run.limit == "stopped":
        return "not graded: grading was stopped (Ctrl-C) while this notebook ran; grade it again."
    if run.returncode == -25:  # SIGXFSZ: a file grew past the backstop limit
        return f"wrote a file larger than the grader allows (killed while {run.stage})."
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


def _cheat_diagnosis(fn: str, static: Sequence[str], seen: Sequence[str], carried: Sequence[str] = ()) -> str:
    names = sorted(set(static) | set(seen))
    how = [x for x, found in (("in its source", static), ("when it ran", seen)) if found]
    if carried:
        how.append(f"its answers carry the mark the grader puts on cdlib's own results ({', '.join(carried[:3])})")
    what = f" ({', '.join(names)})" if names else ""
    return (f"{fn} uses cdlib's own implementation{what}; found {' and '.join(how)}: the exercise is to "
            "write it yourself, so it scores 0.")


def marked_cases(cases: Sequence[dict], outcomes: Sequence[dict], factor: float) -> List[str]:
    """Ids of the hidden cases whose returned value is the right answer times ``factor``: computed by cdlib's
    implementation inside the submission's process, where it is marked (see :mod:`.poison`). Judged here, in
    the grader's process, from the returned values."""
    by_id = {o.get("id"): o for o in outcomes}
    found = []
    for case in cases:
        out, want = by_id.get(case["id"], {}), case.get("want")
        if isinstance(want, float) and isinstance(out.get("value"), float):
            hit = poison.marked(out["value"], want, factor, lambda a, b: close(a, b, rtol=1e-4, atol=1e-9))
        elif hasattr(want, "shape") and out.get("tensor") is not None:
            hit = poison.marked(out["tensor"], want, factor, tensors_close)
        elif case.get("kind") == "module" and out.get("module") and out.get("tensor") is not None:
            from ..connector import connector_reference

            ref = connector_reference(case, out["module"])
            hit = ref is not None and poison.marked(out["tensor"], ref, factor, tensors_close)
        else:
            hit = False
        if hit:
            found.append(case["id"])
    return found


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
                     cases: Optional[List[dict]] = None, name: Optional[str] = None,
                     max_memory: Optional[int] = int(DEFAULT_MAX_MEMORY_GB * 2**30),
                     max_output: Optional[int] = int(DEFAULT_MAX_OUTPUT_MB * 2**20),
                     stop: Optional[threading.Event] = None, handed_out: Sequence[str] = ()) -> SubmissionGrade:
    """Grade one notebook: run it in its own process and folder, then judge its function in this process."""
    start = time.perf_counter()
    name, fn = name or Path(path).stem, task.function
    cases = task.hidden_cases() if cases is None else cases
    review: List[str] = []
    try:
        written = notebook.written_answers(Path(path), handed_out)
    except notebook.UnreadableNotebook:
        written = []

    def done(verdicts, public="", notes=()):
        return SubmissionGrade(name, verdicts, public, list(notes), time.perf_counter() - start, review,
                               str(path), written)

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
    review.extend(notebook.review_flags(selected))
    factor = 1.0 + random.uniform(0.01, 0.03)  # this submission's secret mark on cdlib's answers (see .poison)

    root = Path(tempfile.mkdtemp(prefix=f"cdlib-grade-{name}-"))
    try:
        job, work = root / "job", root / "work"
        job.mkdir()
        work.mkdir()
        _write_job(job, task, selected, cases, factor)
        run = run_in_sandbox(job, work, timeout, max_memory=max_memory, max_output=max_output, stop=stop)
        status = _load_json(job / "status.json")
        notes = [f"cells run: {', '.join(str(c.index + 1) for c in selected)} (counting every cell from 1); "
                 f"the notebook ran for {run.seconds:.1f} s"]
        outcomes_file = job / "outcomes.pt"
        if not outcomes_file.is_file():
            if run.log_tail:
                notes.append("the notebook's last output:\n" + run.log_tail)
            return done(task.zero(_stopped_diagnosis(task, run, status, timeout, (max_memory, max_output))),
                        notes=notes)
        try:
            saved, public = _read_results(job)
        except Exception as exc:  # noqa: BLE001 - whatever the student's process left there
            return done(task.zero(f"the grader could not read what the notebook's process left "
                                  f"({type(exc).__name__}): did the notebook change the grader's files?"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if run.timed_out:
        notes.append(f"the public check did not finish within the {timeout:g} s limit.")
    outcomes = saved["outcomes"]
    carried = marked_cases(cases, outcomes, factor)
    if static or saved["forbidden_calls"] or carried:
        return done(task.zero(_cheat_diagnosis(fn, static, saved["forbidden_calls"], carried)), notes=notes)
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


class GradingStopped(CDLibError):
    """Grading was stopped (Ctrl-C, SIGTERM); ``grades`` holds the notebooks graded before, already written."""

    def __init__(self, message: str, grades: List["SubmissionGrade"]):
        super().__init__(message)
        self.grades = grades


def find_submissions(folder: Path, id_regex: Optional[str] = None) -> List[tuple]:
    """(student id, path) of every ``.ipynb`` under ``folder`` (sub-folders included, hidden ones and
    ``.ipynb_checkpoints`` left out), sorted by id. The id is the file stem, or with ``id_regex`` the
    regex's group ``id`` (else its first group) searched in the path relative to ``folder``: an LMS's bulk
    download names files ``smithjane_12345_67890_exercise2.ipynb`` (Canvas) or ``submission_123/x.ipynb``
    (Gradescope)."""
    folder = Path(folder)
    if folder.is_file():
        raise DataError(f"{folder} is a file; cdlib grade takes a FOLDER of submitted notebooks (one .ipynb per "
                        "student): put the notebooks in a folder and pass that folder.")
    if not folder.is_dir():
        raise DataError(f"the submissions folder {folder} does not exist; pass the folder holding the .ipynb files.")
    paths = sorted(p for p in folder.rglob("*.ipynb")
                   if not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not paths:
        raise DataError(f"{folder} holds no .ipynb file; put one notebook per student there (file name = student id).")
    pattern = None
    if id_regex:
        try:
            pattern = re.compile(id_regex)
        except re.error as exc:
            raise ConfigError(f"--id-regex {id_regex!r} is not a regular expression ({exc}).") from None
    found, unmatched = [], []
    for path in paths:
        rel = path.relative_to(folder).as_posix()
        if pattern is None:
            found.append((path.stem, path))
            continue
        m = pattern.search(rel)
        if not m or not (m.groupdict().get("id") or (m.groups() and m.group(1))):
            unmatched.append(rel)
            continue
        found.append((m.groupdict().get("id") or m.group(1), path))
    if unmatched:
        raise DataError(f"--id-regex {id_regex!r} finds no student id in {len(unmatched)} file(s): "
                        f"{', '.join(unmatched[:5])}; fix the regex (its group 'id' is the student id).")
    ids = [i for i, _ in found]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise DataError(f"{len(twice)} student id(s) name more than one notebook: {', '.join(twice[:5])}; keep one "
                        "notebook per student (or pass --id-regex to read the ids from the file names).")
    return sorted(found)


def handed_out_markdown(name: str, instructor_notebook: Optional[Path] = None) -> List[str]:
    """The markdown cells of the notebook handed out (instructor and student copies), to tell the
    student's written answers from the task's text."""
    out: List[str] = []
    base = Path(__file__).resolve().parents[2]
    for path in (instructor_notebook or default_instructor_notebook(name),
                 base / "exercises" / "student" / f"{name}.ipynb"):
        if path is not None and Path(path).is_file():
            out += notebook.markdown_cells(Path(path))
    return out


def grade(assignment: str, submissions: Path, out: Path = Path("grades.csv"), timeout: float = 60.0,
          feedback_dir: Optional[Path] = None, instructor_notebook: Optional[Path] = None,
          jobs: int = 1, id_regex: Optional[str] = None, max_memory_gb: float = DEFAULT_MAX_MEMORY_GB,
          max_output_mb: float = DEFAULT_MAX_OUTPUT_MB) -> List[SubmissionGrade]:
    """Grade every ``*.ipynb`` in ``submissions`` (file stem = student id, or see ``id_regex``) for
    ``assignment``.

    Writes ``out`` (one row per submission and question), ``<out>_totals.csv`` (one row per
    submission, with the reasons to review it), one markdown feedback file per submission into
    ``<feedback_dir>/<assignment>/`` (default: ``feedback/<assignment>/`` beside ``out``) and the
    students' written answers into ``written/<assignment>.md`` beside ``out``. On Ctrl-C the running
    notebooks are killed, what was graded is written, and :class:`GradingStopped` is raised.
    """
    require_submission_packages()
    task = graded_exercise(assignment, instructor_notebook)
    if not timeout > 0 or jobs < 1 or not max_memory_gb > 0 or not max_output_mb > 0:
        raise ConfigError(f"--timeout, --max-memory-gb and --max-output-mb must be > 0 and --jobs >= 1 (got "
                          f"{timeout!r}, {max_memory_gb!r}, {max_output_mb!r} and {jobs!r}).")
    found = find_submissions(Path(submissions), id_regex)
    cases = task.hidden_cases()
    handed_out = handed_out_markdown(assignment, instructor_notebook)
    stop = threading.Event()
    limits = dict(max_memory=int(max_memory_gb * 2**30), max_output=int(max_output_mb * 2**20))
    pool = ThreadPoolExecutor(max_workers=jobs)
    futures = [pool.submit(grade_submission, task, path, timeout, cases, sid, stop=stop, handed_out=handed_out,
                           **limits) for sid, path in found]
    interrupted = False
    try:
        for future in futures:
            while not future.done():
                time.sleep(0.1)  # wakes for Ctrl-C, which a blocking wait would not
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
        for future in futures:
            future.cancel()
    finally:
        pool.shutdown(wait=True)
    grades = [f.result() for f in futures if f.done() and not f.cancelled() and f.exception() is None]
    if interrupted:
        grades = [g for g in grades if not any("grading was stopped" in v.diagnosis for v in g.verdicts)]
    out = Path(out)
    write_csv(grades, out)
    write_feedback(task, grades, feedback_folder(out, feedback_dir, task.name))
    write_written_answers(task, grades, written_path(out, task.name))
    errors = [f.exception() for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
    if errors:
        raise errors[0]
    if interrupted:
        raise GradingStopped(f"stopped by Ctrl-C: {len(grades)} of {len(found)} notebooks were graded and written to "
                             f"{out}; the running ones were killed. Run the same command again to grade them all.",
                             grades)
    return grades


def feedback_folder(out: Path, feedback_dir: Optional[Path], assignment: str) -> Path:
    """``<feedback_dir or feedback/ beside out>/<assignment>/``: one folder per assignment, so grading one
    assignment never overwrites another's feedback."""
    return (Path(feedback_dir) if feedback_dir else Path(out).parent / "feedback") / assignment


def written_path(out: Path, assignment: str) -> Path:
    return Path(out).parent / "written" / f"{assignment}.md"


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
        writer.writerow(TOTALS_COLUMNS)
        for g in grades:
            writer.writerow([g.submission, f"{g.points:g}", f"{g.max_points:g}", "; ".join(g.review)])


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
            title = "The notebook's own checks" if len(task.public_checks()) > 1 else "The notebook's own check"
            lines += ["", f"## {title}", "", "```", g.public_check, "```"]
        if g.notes:
            lines += ["", "## How the run went", ""] + [f"```\n{n}\n```" if "\n" in n else f"- {n}" for n in g.notes]
        (folder / f"{g.submission}.md").write_text("\n".join(lines) + "\n", encoding="utf8")


def write_written_answers(task: Exercise, grades: Sequence[SubmissionGrade], path: Path) -> None:
    """One markdown file with every student's written answers (the markdown cells they added or changed),
    for grading by hand."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# {task.name}: written answers", "",
             "The markdown cells each student added or changed (the handed-out text left out), for grading by "
             "hand.", ""]
    for g in grades:
        lines += [f"## {g.submission}", "", f"*{g.file}*", ""]
        lines += ["\n\n---\n\n".join(g.written) if g.written else "(no written answer)", ""]
    path.write_text("\n".join(lines), encoding="utf8")

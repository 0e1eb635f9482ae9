"""The ``cdlib grade`` sub-command. cdlib's command line finds it through the entry-point group
``cdlib.commands`` (pyproject.toml) and calls :func:`add_parser` with its sub-parsers; cdlib never
imports the classroom itself."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_parser(sub) -> None:
    """Add ``grade`` to the CLI's sub-commands (the ``cdlib.commands`` entry point)."""
    from ..exercises import names
    from .grader import DEFAULT_MAX_MEMORY_GB, DEFAULT_MAX_OUTPUT_MB

    p = sub.add_parser(
        "grade", help="grade a folder of exercise notebooks with hidden cases",
        description="Run every notebook in SUBMISSIONS (one .ipynb per student, file name = student id) in its own "
                    "process, call its answer on hidden cases, and write one row per student and question to --out, "
                    "a feedback file per student in feedback/ASSIGNMENT/ and the written answers in "
                    "written/ASSIGNMENT.md. Runs notebooks with IPython (a dependency of cdlib; "
                    "else: pip install 'channel-distillation[classroom]').")
    p.add_argument("assignment", choices=names(), metavar="ASSIGNMENT",
                   help=f"the exercise's file stem: {', '.join(names())}")
    p.add_argument("submissions", type=Path, metavar="SUBMISSIONS_DIR",
                   help="folder of submitted .ipynb files (sub-folders are searched too)")
    p.add_argument("--out", type=Path, default=Path("grades.csv"), help="the grades CSV (default grades.csv)")
    p.add_argument("--feedback-dir", type=Path, default=None,
                   help="folder for the feedback files; they go in its sub-folder ASSIGNMENT/ "
                        "(default: feedback/ beside --out)")
    p.add_argument("--id-regex", default=None, metavar="REGEX",
                   help="read the student id from each file's path (relative to SUBMISSIONS_DIR) with this regular "
                        "expression's group 'id', e.g. Canvas: '^(?P<id>[a-z]+)_' or '_(?P<id>\\d+)_\\d+_'; "
                        "Gradescope export: '^submission_(?P<id>\\d+)/' (default: the file name without .ipynb)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds each notebook may run, once Python, torch and cdlib are loaded (default 60)")
    p.add_argument("--max-memory-gb", type=float, default=DEFAULT_MAX_MEMORY_GB,
                   help=f"memory a notebook's processes may use together (default {DEFAULT_MAX_MEMORY_GB:g} GB)")
    p.add_argument("--max-output-mb", type=float, default=DEFAULT_MAX_OUTPUT_MB,
                   help=f"output a notebook may print (default {DEFAULT_MAX_OUTPUT_MB:g} MB)")
    p.add_argument("--jobs", type=int, default=1, help="notebooks graded at the same time (default 1)")
    p.add_argument("--instructor-notebook", type=Path, default=None,
                   help="the notebook whose metadata gives the points per question "
                        "(default: notebooks/exercises/ASSIGNMENT.ipynb of this checkout, else built-in points)")
    p.set_defaults(func=run)


def _summary(grades) -> None:
    if not grades:
        return
    width = max(len(g.submission) for g in grades)
    for g in grades:
        lost = next((v.diagnosis for v in g.verdicts if v.points < v.max_points), "")
        flag = "  [REVIEW]" if g.review else ""
        print(f"{g.submission:<{width}}  {g.points:>5g} / {g.max_points:g}{flag}  {lost[:100]}")


def run(args: argparse.Namespace) -> int:
    from .grader import GradingStopped, feedback_folder, grade, totals_path, written_path

    start = time.perf_counter()
    try:
        grades = grade(args.assignment, args.submissions, out=args.out, timeout=args.timeout,
                       feedback_dir=args.feedback_dir, instructor_notebook=args.instructor_notebook, jobs=args.jobs,
                       id_regex=args.id_regex, max_memory_gb=args.max_memory_gb, max_output_mb=args.max_output_mb)
    except GradingStopped as stopped:
        _summary(stopped.grades)
        print(f"cdlib grade: {stopped}", file=sys.stderr)
        return 130
    _summary(grades)
    flagged = sum(1 for g in grades if g.review)
    print(f"{len(grades)} notebook{'s' if len(grades) != 1 else ''} graded in {time.perf_counter() - start:.0f} s: "
          f"{args.out} (totals: {totals_path(args.out)}), feedback in "
          f"{feedback_folder(args.out, args.feedback_dir, args.assignment)}/, written answers in "
          f"{written_path(args.out, args.assignment)}"
          + (f"; {flagged} flagged for review (see the review column of the totals)" if flagged else "") + ".")
    return 0

"""The ``cdlib grade`` sub-command. cdlib's command line finds it through the entry-point group
``cdlib.commands`` (pyproject.toml) and calls :func:`add_parser` with its sub-parsers; cdlib never
imports the classroom itself."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_parser(sub) -> None:
    """Add ``grade`` to the CLI's sub-commands (the ``cdlib.commands`` entry point)."""
    from ..exercises import names

    p = sub.add_parser(
        "grade", help="grade a folder of exercise notebooks with hidden cases",
        description="Run every notebook in SUBMISSIONS (one .ipynb per student, file name = student id) in its own "
                    "process, call its answer on hidden cases, and write one row per student and question to --out "
                    "and a feedback file per student. Runs notebooks with IPython (a dependency of cdlib; "
                    "else: pip install 'channel-distillation[classroom]').")
    p.add_argument("assignment", choices=names(), metavar="ASSIGNMENT",
                   help=f"the exercise's file stem: {', '.join(names())}")
    p.add_argument("submissions", type=Path, metavar="SUBMISSIONS_DIR", help="folder of submitted .ipynb files")
    p.add_argument("--out", type=Path, default=Path("grades.csv"), help="the grades CSV (default grades.csv)")
    p.add_argument("--feedback-dir", type=Path, default=None,
                   help="folder for the per-student feedback files (default: feedback/ beside --out)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds each notebook may run, once Python, torch and cdlib are loaded (default 60)")
    p.add_argument("--jobs", type=int, default=1, help="notebooks graded at the same time (default 1)")
    p.add_argument("--instructor-notebook", type=Path, default=None,
                   help="the notebook whose metadata gives the points per question "
                        "(default: notebooks/exercises/ASSIGNMENT.ipynb of this checkout, else built-in points)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .grader import grade, totals_path

    start = time.perf_counter()
    grades = grade(args.assignment, args.submissions, out=args.out, timeout=args.timeout,
                   feedback_dir=args.feedback_dir, instructor_notebook=args.instructor_notebook, jobs=args.jobs)
    width = max(len(g.submission) for g in grades)
    for g in grades:
        lost = next((v.diagnosis for v in g.verdicts if v.points < v.max_points), "")
        print(f"{g.submission:<{width}}  {g.points:>5g} / {g.max_points:g}  {lost[:100]}")
    feedback = args.feedback_dir or args.out.parent / "feedback"
    print(f"{len(grades)} notebook{'s' if len(grades) != 1 else ''} graded in {time.perf_counter() - start:.0f} s: "
          f"{args.out} (totals: {totals_path(args.out)}), feedback in {feedback}/")
    return 0

#!/usr/bin/env python3
"""Generate the student versions of the exercise notebooks from the instructor versions.

One source of truth per assignment: the INSTRUCTOR notebook
``notebooks/exercises/<name>.ipynb``. It is part of the book (the solutions are
hidden behind a dropdown there) and CI executes it like every chapter, so its
solution is known to run and to pass its check. Its solution code sits between
nbgrader's markers, in code cells:

    def my_cd_loss(student_feats, teacher_feats):
        ### BEGIN SOLUTION
        ...
        ### END SOLUTION

The STUDENT notebook ``exercises/student/<name>.ipynb`` is generated from it:
every marked block becomes, at the marker's indentation,

        # YOUR CODE HERE
        raise NotImplementedError("write your solution here")

the cell loses the ``hide-input`` tag and the ``mystnb`` prompt texts (they only
matter to the book), and outputs and execution counts are cleared. Relative
links in markdown (``[Reproducing CIFAR-100](../04_reproduce_cifar100.ipynb)``)
are rewritten to point at the same file from ``exercises/student/``. Everything
else — markdown, the setup cell, the ``parameters`` cell, the checks — is
copied unchanged, so the two versions cannot drift apart.

Rules enforced on instructor notebooks (violations stop the script, naming the
notebook and cell): markers come in BEGIN/END pairs, are not nested, sit alone
on their line and only in code cells; a cell with a solution carries the tag
``hide-input`` (otherwise the book would show the solution); every instructor
notebook has at least one solution.

Why not nbgrader or otter-grader? Both are built for graded courses: they need a
course directory and config (nbgrader a database and a Jupyter server extension,
otter a grading configuration and its own assignment format), and pull in large
dependency trees. Here we need only the marker replacement and a drift check,
which fit in this file. The markers are nbgrader's, but the cells lack the
nbgrader cell metadata its ClearSolutions step needs, so these notebooks are
not nbgrader assignments as they are.

Usage:
    python ci/make_student_notebooks.py           # write exercises/student/*.ipynb
    python ci/make_student_notebooks.py --check   # exit 1, naming each notebook whose committed
                                                  # student version differs from the generated one
"""

from __future__ import annotations

import argparse
import copy
import json
import posixpath
import re
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parent.parent
INSTRUCTOR_DIR = "notebooks/exercises"
STUDENT_DIR = "exercises/student"

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
PLACEHOLDER = ("# YOUR CODE HERE", 'raise NotImplementedError("write your solution here")')
HIDE_TAG = "hide-input"
BOOK_ONLY_METADATA = ("code_prompt_show", "code_prompt_hide")
_MARKER = re.compile(r"^(?P<indent>[ \t]*)(?P<marker>### (?:BEGIN|END) SOLUTION)\s*$")
# A markdown link to a relative path: not a URL, not an anchor, not an absolute path.
_RELATIVE_LINK = re.compile(r"(\]\()(?![a-zA-Z][a-zA-Z0-9+.-]*:|#|/)([^)\s#]+)")


class MarkerError(ValueError):
    """An instructor notebook breaks the solution-marker rules."""


def _replace_solutions(source: str, where: str) -> tuple[str, int]:
    """The source with each marked block replaced by the placeholder; and the block count."""
    out: list[str] = []
    inside = False
    blocks = 0
    for number, line in enumerate(source.split("\n"), 1):
        m = _MARKER.match(line)
        if m is None and (BEGIN in line or END in line):
            raise MarkerError(f"{where}, line {number}: a solution marker must be alone on its line: {line.strip()!r}")
        if m is not None and m["marker"] == BEGIN:
            if inside:
                raise MarkerError(f"{where}, line {number}: {BEGIN} inside another solution block (missing {END}?)")
            inside = True
            blocks += 1
            out.extend(m["indent"] + p for p in PLACEHOLDER)
        elif m is not None:  # END
            if not inside:
                raise MarkerError(f"{where}, line {number}: {END} without a {BEGIN} before it")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise MarkerError(f"{where}: {BEGIN} is never closed by {END}")
    return "\n".join(out), blocks


def relink(markdown: str, source_dir: str = INSTRUCTOR_DIR, target_dir: str = STUDENT_DIR) -> str:
    """``markdown`` with each relative link written in ``source_dir`` made to point at the same
    file from ``target_dir`` (both relative to the repository root); a link to another
    exercise (a file in ``source_dir``) points at its student version."""
    def moved(m: re.Match) -> str:
        target = posixpath.normpath(posixpath.join(source_dir, m[2]))
        if posixpath.dirname(target) == source_dir:
            target = posixpath.join(target_dir, posixpath.basename(target))
        return m[1] + posixpath.relpath(target, target_dir)

    return _RELATIVE_LINK.sub(moved, markdown)


def make_student(nb: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """The student version of an instructor notebook (a new object; ``nb`` is unchanged)."""
    student = copy.deepcopy(nb)
    student.metadata.pop("papermill", None)
    student.metadata.pop("widgets", None)
    total = 0
    for index, cell in enumerate(student.cells):
        where = f"{name}: cell {index}"
        if cell.cell_type != "code":
            if BEGIN in cell.source or END in cell.source:
                raise MarkerError(f"{where} is a {cell.cell_type} cell with solution markers; put solutions in code cells")
            if cell.cell_type == "markdown":
                cell.source = relink(cell.source)
            continue
        cell.outputs = []
        cell.execution_count = None
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
        if BEGIN not in cell.source and END not in cell.source:
            continue
        tags = list(cell.metadata.get("tags", []))
        if HIDE_TAG not in tags:
            raise MarkerError(f"{where} holds a solution but lacks the tag {HIDE_TAG!r}: the book would show the solution")
        cell.source, blocks = _replace_solutions(cell.source, where)
        total += blocks
        tags.remove(HIDE_TAG)
        if tags:
            cell.metadata["tags"] = tags
        else:
            cell.metadata.pop("tags", None)
        mystnb = cell.metadata.get("mystnb")
        if isinstance(mystnb, dict):
            for key in BOOK_ONLY_METADATA:
                mystnb.pop(key, None)
            if not mystnb:
                cell.metadata.pop("mystnb")
    if total == 0:
        raise MarkerError(f"{name} has no {BEGIN} ... {END} block: an exercise notebook needs at least one solution")
    return student


def _text(nb: nbformat.NotebookNode) -> str:
    return nbformat.writes(nb) + "\n"


def instructor_notebooks(repo: Path = REPO) -> list[Path]:
    return sorted(p for p in (repo / INSTRUCTOR_DIR).glob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def student_path(instructor: Path, repo: Path = REPO) -> Path:
    return repo / STUDENT_DIR / instructor.name


def generate(repo: Path = REPO) -> dict[Path, str]:
    """Student notebook path -> its generated text, for every instructor notebook."""
    out = {}
    for path in instructor_notebooks(repo):
        nb = nbformat.read(path, as_version=4)
        student = make_student(nb, path.relative_to(repo).as_posix())
        nbformat.validate(student)
        out[student_path(path, repo)] = _text(student)
    return out


def check(repo: Path = REPO) -> list[str]:
    """Problems that make the committed student notebooks differ from the generated ones ([] = in sync)."""
    try:
        expected = generate(repo)
    except MarkerError as exc:
        return [f"instructor notebook: {exc}"]
    problems = []
    for path, text in expected.items():
        rel = path.relative_to(repo).as_posix()
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif json.loads(path.read_text(encoding="utf8")) != json.loads(text):
            problems.append(f"{rel} differs from what its instructor version generates")
    for path in sorted((repo / STUDENT_DIR).glob("*.ipynb")):
        if path not in expected:
            problems.append(
                f"{path.relative_to(repo).as_posix()} has no instructor version in {INSTRUCTOR_DIR}/ (delete it, or add one)"
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 if a student notebook is out of date")
    args = ap.parse_args(argv)
    if args.check:
        problems = check(REPO)
        if problems:
            print("student notebooks are out of date:", file=sys.stderr)
            for p in problems:
                print(f"  {p}", file=sys.stderr)
            print("regenerate them with: python ci/make_student_notebooks.py", file=sys.stderr)
            return 1
        print(f"student notebooks are up to date ({len(instructor_notebooks(REPO))} exercises)")
        return 0
    try:
        generated = generate(REPO)
    except MarkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    (REPO / STUDENT_DIR).mkdir(parents=True, exist_ok=True)
    for path, text in generated.items():
        old = path.read_text(encoding="utf8") if path.is_file() else None
        if old != text:
            path.write_text(text, encoding="utf8")
        print(f"{'unchanged' if old == text else 'wrote'}  {path.relative_to(REPO).as_posix()}")
    stale = [p for p in (REPO / STUDENT_DIR).glob("*.ipynb") if p not in generated]
    for p in stale:
        print(f"warning: {p.relative_to(REPO).as_posix()} has no instructor version; delete it", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

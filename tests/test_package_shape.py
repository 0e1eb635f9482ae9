"""The shape issue 20 asks of the package: cdlib small, the classroom and the benchmark beside it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the book teaches and a user trains with fits in this many lines (issue 20), each at most ruff's
# line-length (pyproject.toml), so that the count cannot be met by longer lines.
CDLIB_LINE_LIMIT = 6_500
CDLIB_LINE_WIDTH = 125


def _modules(package: str):
    return sorted((ROOT / package).rglob("*.py"))


def test_cdlib_stays_within_its_line_limit():
    lines = {path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines()) for path in _modules("cdlib")}
    total = sum(lines.values())
    largest = sorted(lines.items(), key=lambda item: -item[1])[:5]
    assert total <= CDLIB_LINE_LIMIT, f"cdlib has {total:,} lines (limit {CDLIB_LINE_LIMIT:,}); largest: {largest}"


def test_cdlib_lines_fit_the_line_length_the_limit_assumes():
    long = [f"{path.relative_to(ROOT)}:{number}" for path in _modules("cdlib")
            for number, line in enumerate(path.read_text().splitlines(), start=1) if len(line) > CDLIB_LINE_WIDTH]
    assert not long, f"lines over {CDLIB_LINE_WIDTH} characters: {long}"


def _imported_packages(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def test_cdlib_never_imports_the_classroom_or_the_benchmark():
    beside = {"cdlib_classroom", "cdlib_bench"}
    offenders = {path.relative_to(ROOT).as_posix(): sorted(set(_imported_packages(path)) & beside)
                 for path in _modules("cdlib")}
    assert not {k: v for k, v in offenders.items() if v}


def test_the_import_scan_sees_an_import_it_must_refuse(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    from cdlib_bench import timing\n    import cdlib_classroom.checks\n")
    assert set(_imported_packages(planted)) == {"cdlib_bench", "cdlib_classroom"}

"""cdlib.source shows what the files say now, and says clearly what it cannot show."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from cdlib import CDLibError, losses, schedules, source
from cdlib.connectors import Connector


def _lines_of(path: Path, first: int, last: int) -> str:
    return "".join(path.read_text(encoding="utf8").splitlines(keepends=True)[first - 1 : last])


def test_a_function_is_shown_as_its_file_has_it():
    src = source.source_of(losses.cd_loss)
    path = Path(losses.__file__)
    lines = path.read_text(encoding="utf8").splitlines()
    first = next(i for i, line in enumerate(lines, start=1) if line.startswith("def cd_loss("))
    assert src.first_line == first
    assert src.text == _lines_of(path, first, src.last_line)
    assert src.file == "cdlib/losses.py"
    assert src.text.startswith("def cd_loss(") and "return total" in src.text


def test_the_source_follows_the_file_when_it_changes(tmp_path, monkeypatch):
    module = tmp_path / "h2_demo_module.py"
    module.write_text("def f():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("h2_demo_module")
    assert source.source_of(mod.f).text == "def f():\n    return 1\n"
    module.write_text("X = {'a': 1,\n     'b': 2}\n\n\ndef f():\n    return 2  # changed\n")
    importlib.invalidate_caches()
    mod = importlib.reload(mod)
    src = source.source_of(mod.f)
    assert src.text == "def f():\n    return 2  # changed\n" and src.first_line == 5
    value = source.source_of("h2_demo_module.X")  # a value: the assignment that makes it
    assert value.text == "X = {'a': 1,\n     'b': 2}\n" and (value.first_line, value.last_line) == (1, 2)
    sys.modules.pop("h2_demo_module", None)


def test_classes_instances_and_module_values():
    assert source.source_of(Connector).text.startswith("class Connector(")
    assert source.source_of(Connector(2, 3)).text == source.source_of(Connector).text  # an instance: its class
    presets = source.source_of("cdlib.schedules.PRESETS")
    assert "PRESETS" in presets.text and '"paper-cifar100"' in presets.text
    assert presets.text == _lines_of(Path(schedules.__file__), presets.first_line, presets.last_line)


def test_markdown_block_and_plain_print(capsys):
    src = source.source_of(losses.channel_attention)
    md = src._repr_markdown_()
    assert md.startswith("```python\n# cdlib.losses.channel_attention: cdlib/losses.py, lines ")
    assert md.rstrip().endswith("```") and src.text.rstrip() in md
    source.show(losses.channel_attention)  # no IPython shell in pytest: printed
    assert src.text.rstrip() in capsys.readouterr().out


@pytest.mark.parametrize(
    "missing, message",
    [
        ("cdlib.losses.cd_losss", "has no attribute 'cd_losss'. Did you mean cd_loss"),
        ("no_such_package.f", "no module in 'no_such_package.f' can be imported"),
        (len, "has no Python source"),
    ],
)
def test_a_missing_object_is_one_clear_error(missing, message):
    with pytest.raises(source.SourceError, match=message) as info:
        source.source_of(missing)
    assert isinstance(info.value, CDLibError)
    with pytest.raises(source.SourceError):
        source.show(missing)


def test_lines_stay_right_when_the_file_is_edited_after_import(tmp_path, monkeypatch):
    module = tmp_path / "h2_edited_module.py"
    body = "@functools.lru_cache\ndef g():\n    return 1\n\n\nclass K:\n    def m(self):\n        return 3\n"
    module.write_text("import functools\n\n\n" + body)
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("h2_edited_module")
    module.write_text("import functools\nimport sys\nimport json\n\n\n" + body)
    src = source.source_of(mod.g)  # Python recorded line 4 for g at import; the file now has it at line 6
    assert (src.first_line, src.text) == (6, "@functools.lru_cache\ndef g():\n    return 1\n")
    assert source.source_of(mod.K.m).text == "    def m(self):\n        return 3\n"
    sys.modules.pop("h2_edited_module", None)


def test_show_refuses_private_names_so_the_book_renders_public_api_only():
    from cdlib import losses

    with pytest.raises(source.SourceError, match="public names only.*cdlib.losses._acc"):
        source.show(losses.cd_loss, losses._acc)
    with pytest.raises(source.SourceError, match="public names only"):
        source.show("cdlib.losses._acc")


# ----------------------------------------------------------------------------- what the book shows fits its column
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _shown_in_notebooks() -> list[tuple[str, str, object]]:
    """(notebook, argument as written, object) for every argument of every ``show(...)`` call
    in a notebook code cell (``source.show`` or a ``show`` imported from cdlib.source).

    The objects are found as the notebook finds them: its import statements are run in a
    fresh namespace and each argument is evaluated there."""
    import ast

    import nbformat

    found = []
    for path in sorted(NOTEBOOKS.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in path.parts:
            continue
        trees = []
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                try:
                    trees.append(ast.parse(cell.source))
                except SyntaxError:  # IPython magics: not ours to show
                    continue
        namespace: dict = {}
        for tree in trees:
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and (
                    isinstance(node, ast.Import) or (node.module or "").split(".")[0] == "cdlib"
                ):
                    exec(compile(ast.Module([node], []), str(path), "exec"), namespace)  # noqa: S102
        shows_source = namespace.get("show") is source.show
        for tree in trees:
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                is_show = (isinstance(func, ast.Attribute) and func.attr == "show"
                           and isinstance(func.value, ast.Name) and namespace.get(func.value.id) is source) or (
                    isinstance(func, ast.Name) and func.id == "show" and shows_source)
                for arg in node.args if is_show else []:
                    written = ast.unparse(arg)
                    found.append((path.relative_to(NOTEBOOKS.parent).as_posix(), written,
                                  eval(compile(ast.Expression(arg), str(path), "eval"), namespace)))  # noqa: S307
    return found


def test_the_notebooks_show_cdlib_source():
    """The collector below finds the book's show() calls (else the width check would pass vacuously)."""
    shown = {written for _, written, _ in _shown_in_notebooks()}
    assert {"losses.cd_loss", "Distiller.forward", "'cdlib.schedules.PRESETS'"} <= shown, shown


def test_every_line_the_book_shows_fits_79_characters():
    """The book's code column fits 79 characters at 1280 px (book/_static/book.css); a longer
    line in a function a notebook shows with cdlib.source.show scrolls sideways. Lists every
    offending file:line with the notebook that shows it."""
    offenders: dict[str, set] = {}
    for notebook, _written, obj in _shown_in_notebooks():
        for where in source.source_of(obj).long_lines():
            offenders.setdefault(where, set()).add(notebook)
    lines = sorted(offenders, key=lambda w: (w.split(":")[0], int(w.split(":")[1].split()[0]) if ":" in w else 0))
    assert not lines, (
        f"{len(lines)} line(s) the book shows are longer than {source.MAX_LINE} characters; wrap them:\n"
        + "\n".join(f"  {w}  (shown by {', '.join(sorted(offenders[w]))})" for w in lines)
    )


def test_long_lines_reports_file_and_line(tmp_path, monkeypatch):
    module = tmp_path / "h22_wide_module.py"
    module.write_text("def wide():\n    x = 1\n    return '" + "x" * 80 + "'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("h22_wide_module")
    src = source.source_of(mod.wide)
    wide = src.long_lines()  # the header names a long temporary path: it is reported too
    assert wide == [f"header of h22_wide_module.wide ({len(src.header)} chars)", f"{src.file}:3 (93 chars)"]
    assert src.long_lines(limit=max(93, len(src.header))) == []
    sys.modules.pop("h22_wide_module", None)

"""Show the code a chapter explains, read from cdlib's own files.

A chapter that teaches ``cd_loss`` shows ``cd_loss`` as it is in the installed
package, not a copy pasted into the notebook that could drift from it:

>>> from cdlib import losses, source
>>> source.show(losses.cd_loss)                      # a function, class or method
>>> source.show("cdlib.schedules.PRESETS")          # a module-level assignment, by name

In Jupyter, Colab and the rendered book the code appears as a highlighted Python
block headed by the file and lines it comes from; in a plain Python session it is
printed.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import inspect
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from .errors import CDLibError

__all__ = ["Source", "SourceError", "source_of", "show"]

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent
# The longest line a shown block may have: what fits the book's code column at 1280 px
# (book/_static/book.css) and PEP 8's limit.
MAX_LINE = 79


class SourceError(CDLibError, LookupError):
    """The object asked for does not exist, or has no Python source to show."""


@dataclass(frozen=True)
class Source:
    """The source text of one object and where it lives."""

    name: str
    text: str
    file: str
    first_line: int

    @property
    def last_line(self) -> int:
        return self.first_line + self.text.count("\n") - (1 if self.text.endswith("\n") else 0)

    @property
    def header(self) -> str:
        return f"# {self.name}: {self.file}, lines {self.first_line}-{self.last_line}"

    def __str__(self) -> str:
        return f"{self.header}\n{self.text.rstrip()}\n"

    def long_lines(self, limit: int = MAX_LINE) -> list[str]:
        """``file:line (N chars)`` of every shown line longer than ``limit`` characters.

        The book's code blocks fit :data:`MAX_LINE` characters without scrolling at a
        1280 px wide window; tests/test_source.py checks every object the notebooks
        show against it. The header line counts too (reported as ``header``).
        """
        found = []
        if len(self.header) > limit:
            found.append(f"header of {self.name} ({len(self.header)} chars)")
        for offset, line in enumerate(self.text.rstrip().splitlines()):
            if len(line) > limit:
                found.append(f"{self.file}:{self.first_line + offset} ({len(line)} chars)")
        return found

    def _repr_markdown_(self) -> str:
        return f"```python\n{self}```\n"

    def __repr__(self) -> str:  # the text/plain form of a notebook output
        return str(self)


def _display_path(path: str) -> str:
    try:
        return Path(path).resolve().relative_to(_PACKAGE_ROOT).as_posix()
    except ValueError:
        return path


def _resolve(name: str):
    """The object a dotted name such as ``cdlib.losses.cd_loss`` points to, and its module."""
    parts = name.split(".")
    module, i = None, len(parts)
    while i > 0 and module is None:
        try:
            module = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            i -= 1
    if module is None:
        raise SourceError(f"no module in {name!r} can be imported; write a full dotted name such as 'cdlib.losses.cd_loss'.")
    obj, owner = module, module
    for j in range(i, len(parts)):
        if not hasattr(obj, parts[j]):
            close = difflib.get_close_matches(parts[j], dir(obj), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise SourceError(f"{'.'.join(parts[:j])} has no attribute {parts[j]!r}.{hint}")
        owner, obj = obj, getattr(obj, parts[j])
    return obj, owner, parts[-1]


def _assignment(module: types.ModuleType, attr: str, name: str) -> Source:
    """The top-level statement of ``module`` that assigns ``attr`` (for values: dicts, constants)."""
    path = inspect.getsourcefile(module)
    text = Path(path).read_text(encoding="utf8")
    lines = text.splitlines(keepends=True)
    for node in ast.parse(text).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and any(isinstance(t, ast.Name) and t.id == attr for t in targets):
            start = node.lineno
            while start > 1 and lines[start - 2].lstrip().startswith("#"):
                start -= 1  # the comment above an assignment belongs to it
            return Source(name, "".join(lines[start - 1 : node.end_lineno]), _display_path(path), start)
    raise SourceError(f"{name} is a value, not code, and no assignment to it was found at the top level of {module.__name__}.")


def source_of(obj: Union[object, str]) -> Source:
    """The current source of a function, class, method or module, or of a dotted name.

    A name may also point at a module-level value (``"cdlib.schedules.PRESETS"``):
    the assignment that defines it is returned. An instance of a class defined
    in Python stands for its class. Raises :class:`SourceError` for a name that
    does not exist or an object without Python source (a builtin, a C function).
    """
    owner = attr = None
    if isinstance(obj, str):
        name = obj
        obj, owner, attr = _resolve(obj)
    else:
        name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__qualname__
        mod = getattr(obj, "__module__", None) or getattr(type(obj), "__module__", None)
        name = f"{mod}.{name}" if mod and not isinstance(obj, types.ModuleType) else getattr(obj, "__name__", name)
    target = inspect.unwrap(obj) if callable(obj) else obj  # functools.wraps decorators: the function inside
    if not (inspect.isfunction(target) or inspect.isclass(target) or inspect.ismethod(target) or inspect.ismodule(target)):
        if isinstance(owner, types.ModuleType):
            return _assignment(owner, attr, name)
        target = type(target)
    found = _definition(target)
    if found is not None:
        path, text, first = found
        return Source(name, text, _display_path(path), first)
    try:
        lines, first = inspect.getsourcelines(target)
        path = inspect.getsourcefile(target)
    except (OSError, TypeError):
        raise SourceError(
            f"{name} has no Python source to show (a builtin or compiled object); show a function or class defined in Python."
        ) from None
    return Source(name, "".join(lines), _display_path(path or "?"), max(first, 1))


def _definition(obj):
    """``(file, text, first line)`` of the ``def``/``class`` named like ``obj`` in its file as it is now.

    Looked up by qualified name in the file's syntax tree, so the lines are right
    even when the file was edited after the module was imported (where the line
    numbers Python recorded at import would point at the wrong lines). None when
    the lookup does not apply (modules, functions defined inside functions).
    """
    qualname = getattr(obj, "__qualname__", "")
    try:
        path = inspect.getsourcefile(obj)
    except TypeError:
        return None
    if not qualname or "<" in qualname or not path or not Path(path).is_file():
        return None
    text = Path(path).read_text(encoding="utf8")
    nodes = ast.parse(text).body
    node = None
    for part in qualname.split("."):
        node = next((n for n in nodes if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                     and n.name == part), None)
        if node is None:
            return None
        nodes = node.body
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    lines = text.splitlines(keepends=True)[first - 1 : node.end_lineno]
    return path, "".join(lines), first


def show(*objects: Union[object, str]) -> None:
    """Display the source of each object (see :func:`source_of`) as a highlighted Python block (printed
    outside IPython). Only public names are shown (no part of the dotted name starts with an underscore):
    the book must not break on a rename of a private helper."""
    if not objects:
        raise SourceError("show() needs at least one function, class or dotted name to show.")
    sources = [source_of(o) for o in objects]  # all found before anything is shown
    private = [s.name for s in sources if any(part.startswith("_") for part in s.name.split("."))]
    if private:
        raise SourceError(f"show() renders public names only, got {', '.join(private)}; make the name public "
                          "(no leading underscore) or show the public function that uses it.")
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    for src in sources:
        if shell is not None:
            from IPython.display import display

            display(src)
        else:
            print(src)

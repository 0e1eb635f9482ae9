"""Show the code a chapter explains, read from cdlib's own files, not from a copy that could drift.

``source.show(losses.cd_loss)`` shows a function, class or method; ``source.show("cdlib.schedules.PRESETS")``
a module-level assignment, by name. Jupyter, Colab and the book render it as a highlighted Python block
headed by the file and lines it comes from; a plain Python session prints it.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import inspect
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from .errors import CDLibError

__all__ = ["Source", "SourceError", "source_of", "show"]

# The longest line a shown block may have: PEP 8's limit, and what the book's code column fits at 1280 px (book.css).
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
        return self.first_line + len(self.text.splitlines()) - 1

    @property
    def header(self) -> str:
        return f"# {self.name}: {self.file}, lines {self.first_line}-{self.last_line}"

    def __str__(self) -> str:
        return f"{self.header}\n{self.text.rstrip()}\n"

    __repr__ = __str__  # the text/plain form of a notebook output

    def long_lines(self, limit: int = MAX_LINE) -> list[str]:
        """``file:line (N chars)`` of every shown line longer than ``limit`` characters, the header included."""
        found = [f"header of {self.name} ({len(self.header)} chars)"] if len(self.header) > limit else []
        return found + [f"{self.file}:{self.first_line + offset} ({len(line)} chars)"
                        for offset, line in enumerate(self.text.rstrip().splitlines()) if len(line) > limit]

    def _repr_markdown_(self) -> str:
        return f"```python\n{self}```\n"


def _resolve(name: str):
    """The object a dotted name such as ``cdlib.losses.cd_loss`` points to, and the object that holds it."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):  # the longest importable module, then attributes
        try:
            obj = holder = importlib.import_module(".".join(parts[:i]))
            break
        except ModuleNotFoundError:
            pass
    else:
        raise SourceError(f"no module in {name!r} can be imported; write a full dotted name such as 'cdlib.losses.cd_loss'.")
    for j in range(i, len(parts)):
        if not hasattr(obj, parts[j]):
            close = difflib.get_close_matches(parts[j], dir(obj), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise SourceError(f"{'.'.join(parts[:j])} has no attribute {parts[j]!r}.{hint}")
        holder, obj = obj, getattr(obj, parts[j])
    return obj, holder


def _defines(node: ast.stmt, name: str) -> bool:
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return any(isinstance(t, ast.Name) and t.id == name for t in targets)
    return isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name


def _lookup(owner, qualname: str, name: str, missing: str) -> Source:
    """The ``def``, ``class`` or assignment ``qualname`` in the file that defines ``owner``, as the file is now.

    Looked up in the file's syntax tree, so the lines are right even when the file was edited after the
    module was imported (the line numbers Python recorded at import would then point at the wrong lines).
    Raises ``SourceError(missing)`` where there is no such file or statement (a builtin, a nested function).
    """
    try:
        path = inspect.getsourcefile(owner)
        text = Path(path).read_text(encoding="utf8")
    except (TypeError, OSError):  # a builtin (or no file: Path(None) is a TypeError)
        raise SourceError(missing) from None
    nodes, node = ast.parse(text).body, None
    for part in qualname.split("."):
        node = next((n for n in nodes if _defines(n, part)), None)
        if node is None:
            raise SourceError(missing)
        nodes = getattr(node, "body", [])
    lines = text.splitlines(keepends=True)
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    while isinstance(node, (ast.Assign, ast.AnnAssign)) and first > 1 and lines[first - 2].lstrip().startswith("#"):
        first -= 1  # the comment above an assignment belongs to it
    resolved, root = Path(path).resolve(), Path(__file__).resolve().parents[1]  # cdlib's files: from the repository
    shown = resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else path
    return Source(name, "".join(lines[first - 1 : node.end_lineno]), shown, first)


def source_of(obj: Union[object, str]) -> Source:
    """The current source of a function, class or method (an instance stands for its class), or of a dotted
    name, which may also point at a module-level value (``"cdlib.schedules.PRESETS"``: the assignment that
    defines it). Raises :class:`SourceError` for a name that does not exist or an object without Python source.
    """
    holder = None
    if isinstance(obj, str):
        name, (obj, holder) = obj, _resolve(obj)
    else:
        name = f"{getattr(obj, '__module__', None) or type(obj).__module__}."
        name += getattr(obj, "__qualname__", None) or type(obj).__qualname__
    target = inspect.unwrap(obj) if callable(obj) else obj  # functools.wraps decorators: the function inside
    is_code = inspect.isfunction(target) or inspect.isclass(target) or inspect.ismethod(target)
    if not is_code and isinstance(holder, types.ModuleType):  # a value: the assignment that makes it
        return _lookup(holder, name.rpartition(".")[2], name, f"{name} is a value, not code, and no assignment "
                       f"to it was found at the top level of {holder.__name__}.")
    target = target if is_code else type(target)
    return _lookup(target, target.__qualname__, name, f"{name} has no Python source to show (a builtin or "
                   "compiled object); show a function or class defined in Python.")


def show(*objects: Union[object, str]) -> None:
    """Display the source of each object (see :func:`source_of`) as a highlighted Python block (printed outside
    IPython). Only public names (no part starting with ``_``): the book must not break on a private helper's rename."""
    if not objects:
        raise SourceError("show() needs at least one function, class or dotted name to show.")
    sources = [source_of(o) for o in objects]  # all found before anything is shown
    private = [s.name for s in sources if any(part.startswith("_") for part in s.name.split("."))]
    if private:
        raise SourceError(f"show() renders public names only, got {', '.join(private)}; make the name public "
                          "(no leading underscore) or show the public function that uses it.")
    from IPython.display import display  # outside an IPython shell, display() prints

    for src in sources:
        display(src)

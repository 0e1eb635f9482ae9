"""Reading notebooks: which cells of a submission the grader runs, what its answer calls, and the points
per question an instructor notebook gives.

A submission is graded the way "Run all" would run it, up to the cell that
(last) defines the graded function: the cells after it (the public check, the
experiments) are not run, so a failing public check or a long training run does
not decide the grade. Before it, the Colab setup cell is skipped (a submission is
graded against the cdlib doing the grading, never one it would install) and so
are cells that only call public checks (exercise 5 has one between its two
answers).

The static check reads the graded function, and the notebook functions it calls,
for names that resolve to cdlib's own implementation or the classroom's
(``L.cd_loss`` after ``from cdlib import losses as L``, ``cdlib.losses.gkd_loss``,
an imported ``cd_loss as ref``). It sees what the source says, not what runs: a
name built at run time (``getattr(L, "cd" + "_loss")``) escapes it, which is why
the submission's process also watches the calls (see :mod:`.run_submission`).

Points per question come from the instructor notebook's metadata when it has them::

    "metadata": {"cdlib": {"grading": {"points": {"value_same_size": 3, ...}}}}

and from the exercise record's defaults otherwise.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from cdlib.errors import ConfigError

SETUP_CELL_MARK = "# Setup: installs cdlib"


class UnreadableNotebook(ValueError):
    """The file is not a Jupyter notebook (not JSON, or no list of cells)."""


@dataclass(frozen=True)
class Cell:
    index: int  # position among all the notebook's cells, as Jupyter counts them (from 0)
    source: str


def read_code_cells(path: Path) -> List[Cell]:
    """The notebook's code cells, in order (any nbformat 4 notebook; no nbformat needed)."""
    try:
        nb = json.loads(Path(path).read_text(encoding="utf8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableNotebook(f"not a readable notebook ({type(exc).__name__}: {exc})") from None
    cells = nb.get("cells") if isinstance(nb, dict) else None
    if not isinstance(cells, list):
        raise UnreadableNotebook("not a Jupyter notebook: the file has no list of cells")
    out = []
    for index, cell in enumerate(cells):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        out.append(Cell(index, "".join(source) if isinstance(source, list) else str(source)))
    return out


def _cells_of(path: Path) -> list:
    try:
        nb = json.loads(Path(path).read_text(encoding="utf8"))
    except (UnicodeDecodeError, json.JSONDecodeError, OSError) as exc:
        raise UnreadableNotebook(f"not a readable notebook ({type(exc).__name__}: {exc})") from None
    cells = nb.get("cells") if isinstance(nb, dict) else None
    return [c for c in cells if isinstance(c, dict)] if isinstance(cells, list) else []


def markdown_cells(path: Path) -> List[str]:
    """The sources of a notebook's markdown cells, stripped."""
    out = []
    for cell in _cells_of(path):
        if cell.get("cell_type") == "markdown":
            source = cell.get("source", "")
            out.append(("".join(source) if isinstance(source, list) else str(source)).strip())
    return out


def written_answers(path: Path, handed_out: Sequence[str]) -> List[str]:
    """The markdown cells of a submission that are not in the handed-out notebook: the student's written
    answers (a new cell, or a handed-out cell the student wrote into)."""
    given = {" ".join(text.split()) for text in handed_out}
    return [text for text in markdown_cells(path) if text and " ".join(text.split()) not in given]


def notebook_points(path: Path) -> Optional[Dict[str, float]]:
    """The points per question in an instructor notebook's metadata, or None if it gives none."""
    try:
        nb = json.loads(Path(path).read_text(encoding="utf8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the instructor notebook {path} ({exc}); pass an existing .ipynb.") from None
    grading = (nb.get("metadata", {}).get("cdlib") or {}).get("grading") or {}
    points = grading.get("points")
    if points is None:
        return None
    if not isinstance(points, dict):
        raise ConfigError(f'{path}: the metadata "cdlib" > "grading" > "points" must map question names to numbers.')
    return points


def python_source(source: str) -> str:
    """A cell's source as plain Python (IPython magics and ! commands turned into calls)."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


def _parse(source: str) -> Optional[ast.Module]:
    try:
        return ast.parse(python_source(source))
    except (SyntaxError, ValueError):
        return None


def _defines(tree: ast.Module, name: str) -> bool:
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            return True
    return False


def cells_to_run(cells: Sequence[Cell], names: Sequence[str]) -> Optional[List[Cell]]:
    """The cells to run: every code cell up to the last one defining one of ``names`` (the graded
    functions or classes), the setup cell left out; None when no cell defines any."""
    names = (names,) if isinstance(names, str) else tuple(names)
    last = None
    for position, cell in enumerate(cells):
        tree = _parse(cell.source)
        if tree is not None and any(_defines(tree, name) for name in names):
            last = position
    if last is None:
        return None
    return [c for c in cells[: last + 1]
            if not c.source.lstrip().startswith(SETUP_CELL_MARK) and not _only_public_checks(c.source)]


def _only_public_checks(source: str) -> bool:
    """Whether a cell does nothing but call public checks (``checks.check_cd_loss(my_cd_loss)``): the
    grader runs its own cases, and a failing check between two graded answers must not stop the run."""
    tree = _parse(source)
    if tree is None or not tree.body:
        return False
    for node in tree.body:
        call = node.value if isinstance(node, ast.Expr) else None
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                and call.func.attr.startswith("check_")):
            return False
    return True


# ---------------------------------------------------------------------------- static check


def _dotted(node: ast.AST) -> Optional[List[str]]:
    """``a.b.c`` -> ["a", "b", "c"]; None for anything that is not a plain name chain."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def _aliases(trees: Sequence[ast.Module], packages: Sequence[str]) -> Dict[str, str]:
    """Names the cells bind to objects of ``packages`` (top-level names) -> their dotted path (imports
    anywhere, plain assignments)."""
    aliases: Dict[str, str] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    top = a.name.split(".")[0]
                    if top in packages:
                        aliases[a.asname or top] = a.name if a.asname else top
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in packages:
                for a in node.names:
                    if a.name == "*":  # from cdlib.losses import *: every public name of the module
                        module = _lookup(node.module)
                        names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
                        aliases.update({n: f"{node.module}.{n}" for n in names})
                    else:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    for tree in trees:  # x = L.cd_loss (after the imports are known)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                path = _resolve(node.value, aliases)
                if path:
                    aliases[node.targets[0].id] = path
    return aliases


def _resolve(node: ast.AST, aliases: Dict[str, str]) -> Optional[str]:
    parts = _dotted(node)
    if not parts or parts[0] not in aliases:
        return None
    return ".".join([aliases[parts[0]]] + parts[1:])


def _lookup(path: str):
    """The object a dotted path names, or None."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                return None
        return obj
    return None


def is_forbidden(obj, forbidden_modules: Sequence[str]) -> bool:
    """Whether ``obj`` is a function or class defined in one of ``forbidden_modules`` (or a submodule)."""
    if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
        return False
    module = getattr(obj, "__module__", "") or ""
    return any(module == m or module.startswith(m + ".") for m in forbidden_modules)


def _functions(trees: Sequence[ast.Module]) -> Dict[str, ast.AST]:
    defs: Dict[str, ast.AST] = {}
    for tree in trees:
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defs[node.name] = node
            elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Lambda):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        defs[target.id] = node.value
    return defs


def static_uses(cells: Sequence[Cell], names: Sequence[str], forbidden_modules: Sequence[str]) -> List[str]:
    """Dotted names of functions and classes of ``forbidden_modules`` that the graded functions or classes
    ``names`` (or notebook functions they use, transitively) refer to in their source, sorted; [] when none."""
    trees = [t for t in (_parse(c.source) for c in cells) if t is not None]
    aliases = _aliases(trees, {m.split(".")[0] for m in forbidden_modules})
    defs = _functions(trees)
    found = set()
    todo: List[str] = [names] if isinstance(names, str) else list(names)
    seen = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        for node in ast.walk(defs[name]):
            if isinstance(node, ast.Name) and node.id in defs:
                todo.append(node.id)
            if isinstance(node, (ast.Name, ast.Attribute)):
                path = _resolve(node, aliases)
                if path and is_forbidden(_lookup(path), forbidden_modules):
                    found.add(path)
    return sorted(_outermost(found))


def _outermost(paths: set) -> set:
    """Drop ``a.b`` when ``a.b.c`` is also there (an attribute chain is seen once per prefix)."""
    return {p for p in paths if not any(q != p and q.startswith(p + ".") for q in paths)}



# ---------------------------------------------------------------------------- flags for review

# Names that reach around the grader: running text as code, reading code objects or source, another thread,
# the profile hook, the garbage collector's list of objects, the interpreter's module table, other processes.
# Legitimate answers to these exercises need none of them; a notebook that uses one is graded as usual and
# FLAGGED, so that the instructor reads it.
REVIEW_NAMES = {
    "exec": "runs text as code", "eval": "runs text as code", "compile": "compiles text as code",
    "__import__": "imports by name at run time", "importlib": "imports by name at run time",
    "getsource": "reads source code", "inspect": "reads code and frames", "linecache": "reads source code",
    "gc": "walks the interpreter's objects", "setprofile": "changes the profile hook",
    "settrace": "changes the trace hook", "threading": "starts threads", "_thread": "starts threads",
    "ctypes": "calls C directly", "__code__": "reads or swaps code objects", "__globals__": "reads module globals",
    "__closure__": "reads closures", "f_back": "reads the caller's frame", "f_globals": "reads frames",
    "f_locals": "reads frames", "modules": "reads the module table (sys.modules)", "marshal": "loads code objects",
    "multiprocessing": "starts processes", "subprocess": "starts processes", "system": "starts processes",
    "__file__": "reads a module's file",
}


def review_flags(cells: Sequence[Cell]) -> List[str]:
    """What in the run cells an instructor should look at (``"cell 5, line 3: exec (runs text as code)"``),
    in order; [] when nothing. Read from the source, in the grader's process."""
    flags: List[str] = []
    for cell in cells:
        tree = _parse(cell.source)
        if tree is None:
            continue
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Name):
                names = [node.id]
            elif isinstance(node, ast.Attribute):
                names = [node.attr]
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name.split(".")[0] for a in node.names] + ([(node.module or "").split(".")[0]]
                                                                     if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name in REVIEW_NAMES:
                    flag = f"cell {cell.index + 1}, line {getattr(node, 'lineno', '?')}: {name} " \
                           f"({REVIEW_NAMES[name]})"
                    if flag not in flags:
                        flags.append(flag)
    return flags

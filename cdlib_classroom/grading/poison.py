"""Marking cdlib's implementations inside a graded notebook's process, so that using them shows in the VALUES.

Before any cell of a submission runs, every function and method of the modules that implement the
exercise's formulas (:data:`FORMULA_MODULES`: cdlib's losses, connectors and schedules, the benchmark's
reference-style step, the classroom's reference answers) is replaced, in place, by a trampoline that
calls the original and multiplies the floating-point numbers it returns by a secret factor the grader
chose for this submission (about 1 + 1-3 %). The function OBJECTS stay the same, so every route to
them is marked: an alias, ``getattr``, a table, a bound method, a ``copy.deepcopy`` of a
:class:`cdlib.connectors.Connector` built at cell time, a worker thread started before the watch, a
function that turned the profile hook off, a replaced ``call_case``. Nested calls (``cd_loss`` calling
``channel_attention``) are marked once. ``inspect.getsource`` of a marked function gives no usable code.

The grader, in its own process, compares each returned value both with the right answer and with the
right answer times the factor (:func:`marked`): a submission whose answers carry the factor used cdlib's
implementation, however it got there. The marks are taken off (:func:`Marks.remove`) after the hidden
cases ran and before the public check runs, which needs cdlib's real answers.

What this does not catch: the formula copied as text (by hand, or read from cdlib's files and ``exec``-ed
— the grader flags ``exec``, ``inspect`` and friends for review, see :mod:`.notebook`), and a submission
written to find and undo these marks.
"""

from __future__ import annotations

import importlib
import inspect
import threading
import types
from typing import Dict, Iterable, List, Tuple

# Every implementation of the exercises' formulas in this repository (the classroom's wrong answers are
# wrong on purpose and are not listed: using them costs the points by itself).
FORMULA_MODULES = ("cdlib.losses", "cdlib.connectors", "cdlib.schedules", "cdlib_bench.steps",
                   "cdlib_classroom.references")
GLOBAL = "__cdlib_grading__"
FILENAME = "<cdlib's implementation: not available while a notebook is graded>"


def _scaled(value, factor: float):
    import torch

    if isinstance(value, torch.Tensor):
        return value * factor if value.is_floating_point() else value
    if isinstance(value, float):
        return value * factor
    if isinstance(value, dict):
        return {k: _scaled(v, factor) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_scaled(v, factor) for v in value)
    return value


def _trampoline_code(name: str, key: str) -> types.CodeType:
    namespace: dict = {}
    source = f"def {name}(*args, **kwargs):\n    return {GLOBAL}[{key!r}](args, kwargs)\n"
    exec(compile(source, FILENAME, "exec"), {}, namespace)  # noqa: S102 - our own two lines
    return namespace[name].__code__


class Marks:
    """The marks put on the formula modules of one process; :meth:`remove` takes them off."""

    def __init__(self, factor: float, modules: Iterable[str] = FORMULA_MODULES):
        self.factor = float(factor)
        self.entered: set = set()  # dotted names of marked functions the graded code entered (while grading)
        self.grading = False
        self._local = threading.local()
        self._undo: List[Tuple] = []
        for name in modules:
            try:
                module = importlib.import_module(name)
            except Exception:  # noqa: BLE001 - a module this install lacks cannot be used either
                continue
            self._mark_module(module)

    # ------------------------------------------------------------------ putting marks on
    def _mark_module(self, module) -> None:
        table: Dict[str, object] = module.__dict__.setdefault(GLOBAL, {})
        for attr, obj in list(vars(module).items()):
            if inspect.isfunction(obj) and obj.__module__ == module.__name__:
                self._mark_function(obj, f"{module.__name__}.{attr}", table)
            elif inspect.isclass(obj) and obj.__module__ == module.__name__:
                self._mark_class(obj, module, table)

    def _mark_class(self, cls, module, table) -> None:
        for attr, obj in list(vars(cls).items()):
            if inspect.isfunction(obj) and attr != "__init__":
                self._mark_function(obj, f"{module.__name__}.{cls.__qualname__}.{attr}", table)
        try:
            from torch import nn
        except ImportError:  # pragma: no cover
            return
        if issubclass(cls, nn.Module) and "forward" not in vars(cls):  # Connector: nn.Sequential's forward
            inherited = cls.forward
            key = f"{module.__name__}.{cls.__qualname__}.forward"
            table[key] = self._entry(key, inherited)
            forward = types.FunctionType(_trampoline_code("forward", key), module.__dict__, "forward")
            cls.forward = forward
            self._undo.append(("delattr", cls, "forward"))

    def _mark_function(self, fn, key: str, table) -> None:
        fn = inspect.unwrap(fn)
        if fn.__code__.co_freevars or fn.__code__.co_filename == FILENAME:
            return  # a closure's code cannot be swapped; already marked
        original = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
        original.__kwdefaults__ = fn.__kwdefaults__
        table[key] = self._entry(key, original)
        self._undo.append(("code", fn, fn.__code__, fn.__defaults__, fn.__kwdefaults__))
        fn.__code__ = _trampoline_code(fn.__name__, key)
        fn.__defaults__, fn.__kwdefaults__ = None, None

    def _entry(self, key: str, original):
        local, factor = self._local, self.factor

        def call(args, kwargs):
            if getattr(local, "inside", False):
                return original(*args, **kwargs)
            if self.grading:
                self.entered.add(key)
            local.inside = True
            try:
                result = original(*args, **kwargs)
            finally:
                local.inside = False
            return _scaled(result, factor)

        return call

    # ------------------------------------------------------------------ taking them off
    def remove(self) -> None:
        for item in reversed(self._undo):
            if item[0] == "code":
                _, fn, code, defaults, kwdefaults = item
                fn.__code__, fn.__defaults__, fn.__kwdefaults__ = code, defaults, kwdefaults
            else:
                _, cls, attr = item
                if attr in vars(cls):
                    delattr(cls, attr)
        self._undo.clear()


def marked(got, want, factor: float, close) -> bool:
    """Whether ``got`` is ``want`` times the marking factor (and not ``want`` itself): cdlib's own answer,
    as a graded notebook's process computes it. ``close(a, b)`` compares two values."""
    try:
        return close(got, want * factor) and not close(got, want)
    except Exception:  # noqa: BLE001 - shapes or types that do not compare: not cdlib's answer
        return False

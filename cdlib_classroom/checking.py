"""Running an instant check: calling the student's function safely, matching a wrong answer against a
catalogue of named mistakes, and failing with one plain message (:class:`CheckFailed`)."""

from __future__ import annotations

import functools
import os
import traceback
from typing import Callable, List, Optional, Sequence

import torch

import cdlib

from .outcome import close, describe_result, error_text, fmt, grads_off, output_problem
from .record import Mistake

__all__ = ["CheckFailed", "function_name", "fail", "run_check", "value", "generator", "Call", "call",
           "crash_report", "student_line", "grad_of", "grads_close", "match", "snapshot", "modified"]


class CheckFailed(AssertionError):
    """A check found a problem; the message says what it is, in plain words."""


class _Found(Exception):
    """Internal: carries a check's diagnosis up to the public function, which raises CheckFailed
    from there (so a student's traceback is one frame deep into the classroom, not five)."""


def function_name(fn, fallback: str = "your function") -> str:
    """The name of the student's function, or ``fallback`` for a lambda or a callable without one."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__name__", None)
    return fallback if not name or name.startswith("<") else name


def fail(check: str, name: str, problems: List[str]) -> None:
    head = f"{check} found {'a problem' if len(problems) == 1 else f'{len(problems)} problems'} in {name}:"
    body = "\n".join("  - " + p.replace("\n", "\n    ") for p in problems)
    raise _Found(f"{head}\n{body}")


def run_check(check: str, name: str, body: Callable[[], None]) -> None:
    try:
        body()
    except NotImplementedError:
        message = (
            f"{check}: {name} is not implemented yet (it raised NotImplementedError). Write your solution in place "
            "of the `raise NotImplementedError(...)` line, run that cell, then run this check again."
        )
    except _Found as found:
        message = str(found)
    else:
        return
    raise CheckFailed(message)


def value(t: torch.Tensor) -> float:
    return float(t.detach().double())


def generator(seed: int) -> torch.Generator:
    """The checks' own random numbers: the global torch random state is never touched."""
    return torch.Generator().manual_seed(seed)


class Call:
    """The outcome of calling the student's function once."""

    def __init__(self, value=None, error: Optional[BaseException] = None):
        self.value, self.error = value, error

    @property
    def ok(self) -> bool:
        return self.error is None

    def is_scalar_tensor(self) -> bool:
        return self.ok and isinstance(self.value, torch.Tensor) and self.value.numel() == 1

    def number(self) -> float:
        v = self.value
        if isinstance(v, torch.Tensor):
            return float(v.detach().double().reshape(-1)[0]) if v.numel() == 1 else float("nan")
        return float(v)

    def output_problem(self, reduce_over: str) -> Optional[str]:
        """What is wrong with the returned value as a loss (see :func:`cdlib_classroom.outcome.output_problem`)."""
        return output_problem(describe_result(self.value), reduce_over)

    def shown(self) -> str:
        """What the call gave, for a message: the error, the number, or the object."""
        if not self.ok:
            return error_text(self.error)
        return fmt(self.number()) if self.is_scalar_tensor() else repr(self.value)


def call(fn, *args, **kwargs) -> Call:
    try:
        return Call(fn(*args, **kwargs))
    except NotImplementedError:
        raise
    except Exception as exc:  # noqa: BLE001 - every error is reported to the student
        return Call(error=exc)


_LIBRARY = tuple(os.path.dirname(m.__file__) + os.sep for m in (torch, cdlib)) + (os.path.dirname(__file__) + os.sep,)


def student_line(exc: BaseException) -> str:
    """' (line N: `source`)' of the last frame outside torch, cdlib and the classroom, where the error arose; or ''."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_LIBRARY)]
    if not frames or not frames[-1].line:
        return ""
    return f" (line {frames[-1].lineno}: `{frames[-1].line.strip()}`)"


def crash_report(exc: BaseException, where: str) -> str:
    """An error that is no known mistake, reported as what it is."""
    return (f"raised {error_text(exc)} on {where}{student_line(exc)}. That is an error in the code, not a wrong "
            "formula: fix the error first, then run the check again.")


def grad_of(fn_out: torch.Tensor, inputs: Sequence[torch.Tensor]) -> Optional[List[torch.Tensor]]:
    try:
        grads = torch.autograd.grad(fn_out.reshape(()), list(inputs), allow_unused=True)
    except Exception:  # noqa: BLE001
        return None
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]


def grads_close(got: Optional[Sequence[torch.Tensor]], want: Sequence[torch.Tensor]) -> bool:
    """Whether the student's gradients (None: none could be computed) are the right ones."""
    return got is not None and grads_off(got, want) is None


def match(got: float, mistakes: Sequence[Mistake], inputs: Sequence, rtol: float = 1e-3) -> Optional[Mistake]:
    """The first catalogued mistake whose wrong implementation gives ``got`` on ``inputs``."""
    for mistake in mistakes:
        try:
            expected = float(mistake.wrong(*inputs))
        except Exception:  # noqa: BLE001 - a mistake that does not apply to these inputs
            continue
        if close(got, expected, rtol=rtol, atol=1e-7):
            return mistake
    return None


def snapshot(tensors: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    return [t.detach().clone() for t in tensors]


def modified(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor]) -> bool:
    return any(not torch.equal(b, a.detach()) for b, a in zip(before, after))

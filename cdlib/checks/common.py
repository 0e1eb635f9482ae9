"""What every exercise check shares: the failure type, calling the student's function safely,
comparing numbers and gradients, and the record a catalogue of named mistakes is made of."""

from __future__ import annotations

import functools
import math
import numbers
import os
import traceback
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

__all__ = ["CheckFailed", "Mistake", "Exercise", "function_name", "fail", "run_check", "fmt", "close", "value",
           "generator", "Call", "call", "error_text", "crash_report", "student_line", "output_problem", "grad_of", "grads_close",
           "match", "snapshot", "modified"]


class CheckFailed(AssertionError):
    """A check found a problem; the message says what it is, in plain words."""


@dataclass(frozen=True)
class Mistake:
    """One usual wrong answer: a short ``name``, the ``diagnosis`` a student reads, and ``wrong``,
    a wrong implementation with the student's signature (run in float64 on the case's inputs)."""

    name: str
    diagnosis: str
    wrong: Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Exercise:
    """An assignment as data: the function the student writes, its public check, the check's
    cases and its catalogues of named mistakes (by the case kind they are matched on)."""

    name: str
    function: str
    signature: str
    check: Callable
    cases: Tuple
    mistakes: dict


class _Found(Exception):
    """Internal: carries a check's diagnosis up to the public function, which raises CheckFailed
    from there (so a student's traceback is one frame deep into cdlib, not five)."""


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


def fmt(x: float) -> str:
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return str(x)
    return f"{x:.6g}"


def close(a: float, b: float, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= atol + rtol * abs(b)


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


def error_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def student_line(exc: BaseException) -> str:
    """' (line N: `source`)' of the last frame outside torch and cdlib, where the error arose; or ''."""
    library = (os.path.dirname(torch.__file__), os.path.dirname(os.path.dirname(__file__)))
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(library)]
    if not frames or not frames[-1].line:
        return ""
    return f" (line {frames[-1].lineno}: `{frames[-1].line.strip()}`)"


def crash_report(exc: BaseException, where: str) -> str:
    """An error that is no known mistake, reported as what it is."""
    return (f"raised {error_text(exc)} on {where}{student_line(exc)}. That is an error in the code, not a wrong "
            "formula: fix the error first, then run the check again.")


def output_problem(result: Call, what: str, inputs_need_grad: bool = True) -> Optional[str]:
    """Problems with the type/shape/graph of a returned loss, or None."""
    v = result.value
    if isinstance(v, numbers.Number) or (type(v).__module__ == "numpy" and getattr(v, "ndim", 1) == 0):
        return (
            f"returned a Python float ({type(v).__name__} {v!r}), not a tensor: gradients don't flow through a "
            "plain number, so training could not learn from this loss. Return the torch tensor itself "
            "(no .item(), float(...) or .tolist())."
        )
    if not isinstance(v, torch.Tensor):
        return f"returned a {type(v).__name__}, expected a scalar torch tensor (one number: the loss)."
    if v.numel() != 1:
        return (f"returned a tensor of shape {tuple(v.shape)}, expected a single number (a 0-d tensor): "
                f"reduce the {what} to one value.")
    if not v.is_floating_point():
        return f"returned an integer tensor ({v.dtype}); the loss must be a floating-point tensor."
    if inputs_need_grad and v.grad_fn is None and not v.requires_grad:
        return (
            "gradients don't flow: the result is not connected to the student's inputs (did you call .item(), "
            ".detach(), .numpy(), torch.tensor(...) on an intermediate result, or compute it under torch.no_grad()?). "
            "Training needs the gradient of this loss with respect to the student."
        )
    return None


def grad_of(fn_out: torch.Tensor, inputs: Sequence[torch.Tensor]) -> Optional[List[torch.Tensor]]:
    try:
        grads = torch.autograd.grad(fn_out.reshape(()), list(inputs), allow_unused=True)
    except Exception:  # noqa: BLE001
        return None
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]


def grads_close(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], rtol=1e-3, atol=1e-7) -> bool:
    for x, y in zip(a, b):
        x, y = x.double(), y.double()
        if not torch.isfinite(x).all():
            return False
        scale = y.abs().max().item()
        if (x - y).abs().max().item() > atol + rtol * max(scale, 1e-12):
            return False
    return True


def match(got: float, mistakes: Sequence[Mistake], inputs: Sequence, rtol: float = 1e-3) -> Optional[Mistake]:
    """The first catalogued mistake whose wrong implementation gives ``got`` on ``inputs``."""
    for mistake in mistakes:
        try:
            expected = float(mistake.wrong(*inputs))
        except Exception:  # noqa: BLE001 - a mistake that does not apply to these inputs
            continue
        if math.isfinite(expected) and abs(got - expected) <= 1e-7 + rtol * abs(expected):
            return mistake
    return None


def snapshot(tensors: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    return [t.detach().clone() for t in tensors]


def modified(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor]) -> bool:
    return any(not torch.equal(b, a.detach()) for b, a in zip(before, after))

"""What a student's function returned, as plain data, and what is wrong with it.

The instant checks and the grader judge answers the same way: a call's result
is first described as plain data (:func:`describe_result`: type, shape, dtype,
whether it is connected to the inputs, its values and gradients) — the grader's
child process sends exactly this back — and then judged from that description
(:func:`output_problem`, :func:`value_problem`, :func:`grads_problem`), with one
tolerance (:func:`close`, :func:`grads_off`, :func:`tensors_close`). The
question checks at the end serve the hidden cases of the three loss exercises.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import List, Optional, Sequence, Tuple

import torch

__all__ = ["MAX_RECORDED", "error_text", "fmt", "close", "describe_result", "output_problem", "value_problem",
           "grads_off", "grads_problem", "tensors_close", "tensor_problem", "loss_value", "loss_grads", "loss_stable"]

MAX_RECORDED = 100_000  # elements of a returned tensor kept in its description


def error_text(exc: BaseException) -> str:
    """An exception in one line: its type and (the start of) its message."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def fmt(x: float) -> str:
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return str(x)
    return f"{x:.6g}"


def close(got: float, want: float, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    """Whether a returned number is the right one: both finite, within ``atol + rtol * |want|``."""
    return math.isfinite(got) and math.isfinite(want) and abs(got - want) <= atol + rtol * abs(want)


def _is_plain_number(value) -> bool:
    """A Python or NumPy number (a 0-d NumPy array included), not a bool."""
    if isinstance(value, bool):
        return False
    return isinstance(value, numbers.Number) or (type(value).__module__ == "numpy" and getattr(value, "ndim", 1) == 0)


def _number(value) -> Optional[float]:
    """A mapping's value as a float, or None where it is not a number."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, bytes)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return None


def describe_result(value, grad_inputs: Sequence[torch.Tensor] = ()) -> dict:
    """What a call returned, as plain data (numbers, strings, tensors) that can be saved and loaded safely.

    For a connected floating-point tensor, ``grads`` holds the gradients of its sum with respect to
    ``grad_inputs`` (for a loss, its gradient; for an (N, C) map, every output's at once).
    """
    out = {"type": type(value).__name__}
    if isinstance(value, torch.Tensor):
        out.update(is_tensor=True, shape=list(value.shape), dtype=str(value.dtype).replace("torch.", ""),
                   is_float=bool(value.is_floating_point()),
                   connected=bool(value.requires_grad or value.grad_fn is not None))
        if value.is_floating_point() and value.numel() <= MAX_RECORDED:
            out["tensor"] = value.detach().double().clone()
        if value.numel() == 1 and value.is_floating_point():
            out["value"] = float(value.detach().double().reshape(-1)[0])
        if value.is_floating_point() and 0 < value.numel() <= MAX_RECORDED and out["connected"] and grad_inputs:
            try:
                grads = torch.autograd.grad(value.sum(), list(grad_inputs), allow_unused=True)
                out["grads"] = [torch.zeros_like(x, dtype=torch.float64) if g is None else g.detach().double()
                                for g, x in zip(grads, grad_inputs)]
            except Exception as exc:  # noqa: BLE001 - reported to the student
                out["grad_error"] = error_text(exc)
    elif _is_plain_number(value):
        out.update(number=True, value=float(value), repr=repr(value)[:80])
    elif isinstance(value, Mapping):
        out["mapping"] = {str(k): _number(v) for k, v in value.items()}
        out["mapping_repr"] = {str(k): repr(v)[:80] for k, v in value.items()}
    return out


def raised_problem(outcome: dict, subject: str = "the function") -> str:
    """The diagnosis of an answer that raised: not written yet (NotImplementedError), or which error."""
    if outcome.get("not_implemented"):
        return f"not implemented yet ({subject} raises NotImplementedError)."
    return f"{subject} raised {outcome['error']}."


def output_problem(outcome: dict, reduce_over: str = "batch", need_graph: bool = True) -> Optional[str]:
    """What is wrong with a described result as a loss (a 0-d float tensor in the graph), or None."""
    if "error" in outcome:
        return raised_problem(outcome)
    kind = outcome["type"]
    if outcome.get("number"):
        return (f"returned a Python {kind} ({outcome['repr']}), not a tensor: gradients don't flow through a plain "
                "number, so training could not learn from this loss. Return the torch tensor itself (no .item(), "
                "float(...) or .tolist()).")
    if not outcome.get("is_tensor"):
        return f"returned a {kind}, expected a scalar torch tensor (one number: the loss)."
    if math.prod(outcome["shape"]) != 1:
        return (f"returned a tensor of shape {tuple(outcome['shape'])}, expected a single number (a 0-d tensor): "
                f"reduce the {reduce_over} to one value.")
    if not outcome["is_float"]:
        return f"returned an integer tensor ({outcome['dtype']}); the loss must be a floating-point tensor."
    if need_graph and not outcome["connected"]:
        return ("gradients don't flow: the result is not connected to the student's inputs (did you call .item(), "
                ".detach(), .numpy(), torch.tensor(...) on an intermediate result, or compute it under "
                "torch.no_grad()?). Training needs the gradient of this loss with respect to the student.")
    return None


def value_problem(outcome: dict, want: float, rtol: float = 1e-4) -> Optional[str]:
    """Whether the returned number is the loss; a plain float counts here (its type costs elsewhere)."""
    if "error" in outcome or "value" not in outcome:
        return output_problem(outcome, need_graph=False) or "returned no number."
    got = outcome["value"]
    if not close(got, want, rtol=rtol):
        return f"returned {got:.6g}, the loss is {want:.6g}."
    return None


def grads_off(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor], rtol: float = 1e-3,
              atol: float = 1e-7) -> Optional[Tuple[float, float]]:
    """(largest error, size) of the first gradient in ``got`` that is not ``want``'s; None when all agree."""
    for g, w in zip(got, want):
        g, w = g.detach().double(), w.detach().double()
        if w.numel() == 0:
            continue
        scale, err = float(w.abs().max()), float((g - w).abs().max())
        if not math.isfinite(err) or err > atol + rtol * max(scale, 1e-12):
            return err, scale
    return None


def grads_problem(outcome: dict, want: Sequence[torch.Tensor], scalar: bool = True) -> Optional[str]:
    """Compare the recorded gradients (of the result's sum) with the right ones (float64 tensors)."""
    if scalar or "error" in outcome:
        problem = output_problem(outcome)
        if problem:
            return problem
    elif not outcome.get("connected"):
        return "the result is not connected to the input (detached, .numpy(), torch.tensor(...) or no_grad)."
    if "grad_error" in outcome:
        return f"backpropagating through the result failed ({outcome['grad_error']})."
    got: Optional[List[torch.Tensor]] = outcome.get("grads")
    if got is None or len(got) != len(want):
        return "no gradient with respect to the student's inputs."
    if any(tuple(g.shape) != tuple(w.shape) for g, w in zip(got, want)):
        return "the gradient has the wrong shape."
    off = grads_off(got, want)
    if off is not None:
        return (f"the gradient with respect to the student's input is off by up to {off[0]:.3g} (its size is "
                f"{off[1]:.3g}): part of the computation is detached, or the loss itself is wrong.")
    return None


def tensors_close(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """Same shape and, element by element, the same values (compared in float64)."""
    return tuple(got.shape) == tuple(want.shape) and torch.allclose(got.detach().double(), want.double(),
                                                                    rtol=rtol, atol=atol)


def tensor_problem(outcome: dict, want: torch.Tensor) -> Optional[str]:
    """What is wrong with a described result that should be the tensor ``want``, or None."""
    if "error" in outcome:
        return raised_problem(outcome, "it")
    got = outcome.get("tensor")
    if got is None:
        return f"returned a {outcome.get('type')}, not a floating-point torch tensor."
    if tuple(got.shape) != tuple(want.shape):
        return f"returned shape {tuple(got.shape)}, expected {tuple(want.shape)}."
    if not tensors_close(got, want):
        return f"the values are off by up to {float((got - want).abs().max()):.3g}."
    return None


# ---------------------------------------------------------------------------- question checks of the loss exercises


def loss_value(case: dict, outcome: dict, _all=None) -> Optional[str]:
    return value_problem(outcome, case["want"])


def loss_grads(case: dict, outcome: dict, _all=None) -> Optional[str]:
    return grads_problem(outcome, case["want_grads"])


def loss_stable(case: dict, outcome: dict, answers=None) -> Optional[str]:
    """Right (to 1e-3) and with finite gradients on very large logits.

    A mistake in the formula costs the questions about the formula, not this one: when the answer is wrong
    on the ordinary hidden cases too (``answers``: every case and outcome), only finiteness is judged here,
    and the diagnosis names log(softmax) only when the result is not finite."""
    if "error" in outcome or "value" not in outcome:
        return output_problem(outcome, need_graph=False) or "returned no number."
    finite = math.isfinite(outcome["value"]) and all(bool(torch.isfinite(g).all()) for g in outcome.get("grads", []))
    if not finite:
        return (f"returned {fmt(outcome['value'])} (or a gradient that is not finite) for large logits: "
                "log(softmax(x)) underflows to log(0) = -inf there; use F.log_softmax(x, dim=1).")
    ordinary = [c for c in (answers.cases if answers is not None else ())
                if c["id"] != case["id"] and isinstance(c.get("want"), float)]
    if any(value_problem(answers.outcomes.get(c["id"], {"error": "no outcome"}), c["want"]) for c in ordinary):
        return None  # wrong on ordinary logits too: the formula's questions say so; it is finite here
    problem = value_problem(outcome, case["want"], rtol=1e-3)
    if problem:
        return problem + " It is right on ordinary logits, so the computation loses precision on large ones: " \
                         "compute in float32 or higher, with F.log_softmax rather than log(softmax)."
    return None

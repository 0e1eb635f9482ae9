"""The right answers the checks and the grader compare with, each formula once.

The losses and the channel attention are cdlib's own (:mod:`cdlib.losses`).
They are not written out again here: cdlib's tests check them against
hand-computed examples and plain loops (tests/test_losses.py), and a second
copy would only be a second place to get a formula wrong. The grader may call
them: it computes the right answers in its own process, on float64 copies of the
hidden inputs (:func:`answer`), before a submission runs; what it forbids is the
*submission* calling them (see :mod:`cdlib_classroom.grading.notebook` and the
watch in :mod:`cdlib_classroom.grading.run_submission`).

The connector's output is written here (:func:`connector_output`): cdlib has it
only as a module with its own random weights (:class:`cdlib.connectors.Connector`),
and a student's connector must be judged with the student's own weights.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["answer", "connector_output", "BATCHNORM_EPS"]

BATCHNORM_EPS = 1e-5  # nn.BatchNorm2d's default


def _float64(value, grad: bool):
    """``value`` with every floating-point tensor as a float64 copy (a leaf requiring grad if ``grad``)."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            return value
        out = value.detach().double()
        return out.requires_grad_(True) if grad else out
    if isinstance(value, (list, tuple)):
        return [_float64(v, grad) for v in value]
    return value


def _leaves(value) -> List[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value] if value.requires_grad else []
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    return []


def answer(fn: Callable, args: Sequence, kwargs: Optional[dict] = None,
           grad: Sequence[int] = (0,)) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """``fn(*args, **kwargs)`` in float64, detached, and the gradients of its sum with respect to the
    tensors of ``args[i]`` for ``i`` in ``grad`` (float64, in order)."""
    inputs = [_float64(a, i in grad) for i, a in enumerate(args)]
    result = fn(*inputs, **(kwargs or {}))
    leaves = [x for i in sorted(grad) for x in _leaves(inputs[i])]
    grads = torch.autograd.grad(result.sum(), leaves)
    return result.detach(), [g.detach() for g in grads]


def connector_output(x: torch.Tensor, weight: torch.Tensor, eps: float = BATCHNORM_EPS) -> torch.Tensor:
    """A connector's output in training mode from its 1x1 convolution ``weight``: conv -> BatchNorm with
    the batch's statistics (initial scale 1, shift 0) -> ReLU."""
    return F.relu(F.batch_norm(F.conv2d(x, weight), None, None, training=True, eps=eps))

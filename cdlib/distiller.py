"""The distiller: one module holding the student, its connectors and a frozen teacher.

``distiller(images, targets, weights)`` returns ``(student_logits, losses)``
where ``losses`` maps each loss term to its *weighted* value; the training
loss is their sum. :meth:`Distiller.forward` is the paper's equation in code,
one named call per term. A term whose weight is 0 is not computed at all, and
the teacher does not run when no term needs it; ``keep_zero_weight_terms=True``
computes them and multiplies them by 0, as the reference code does, so their
parameters get zero gradients (which SGD's weight decay and momentum act on)
instead of none. Which terms exist, which need the teacher and their default
weights are in :mod:`cdlib.terms`.
"""

from __future__ import annotations

from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from . import losses
from . import terms as term_table
from .connectors import build_connectors
from .errors import ConfigError, is_finite

__all__ = ["Distiller", "FITNETS_HINT_STAGE"]

# FitNets regresses a single middle hint; stage 3 of 4 plays the role of the
# "middle layer" in the original paper's guided layer choice.
FITNETS_HINT_STAGE = 2


class Distiller(nn.Module):
    def __init__(
        self,
        student: nn.Module,
        teacher: Optional[nn.Module] = None,
        terms: Sequence[str] = ("ce",),
        kd_temperature: float = 4.0,
        gkd_temperature: float = 1.0,
        teacher_bn_train: bool = False,
        keep_zero_weight_terms: bool = False,
        gkd_nan_on_all_wrong: bool = False,
    ) -> None:
        super().__init__()
        terms = terms if isinstance(terms, str) or not isinstance(terms, Iterable) else tuple(terms)
        self._check_arguments(student, teacher, terms, kd_temperature=kd_temperature,
                              gkd_temperature=gkd_temperature)
        known = term_table.loss_terms()
        unknown = [t for t in terms if t not in known]
        if unknown:
            raise ConfigError(f"unknown loss term(s) {unknown}; choose from {', '.join(known)}.")
        self.terms = tuple(terms)
        self.student = student
        needs_teacher = term_table.needs_teacher(self.terms)
        if needs_teacher and teacher is None:
            named = [t for t in self.terms if term_table.needs_teacher([t])]
            raise ConfigError(f"loss terms {named} need a teacher; pass one (e.g. cdlib.models.create(...) with trained "
                              "weights).")
        self.teacher = teacher if needs_teacher else None
        if self.teacher is not None:
            self._check_pair(student, self.teacher)
            self.teacher.requires_grad_(False)
            self.teacher.eval()
        # Trained with the student, thrown away after training (the paper's connectors).
        self.connectors = (build_connectors(student.stage_channels, self.teacher.stage_channels)
                           if "cd" in self.terms else None)
        hint = slice(FITNETS_HINT_STAGE, FITNETS_HINT_STAGE + 1)
        self.hint_regressor = (build_connectors(student.stage_channels[hint], self.teacher.stage_channels[hint])
                               if "fitnets" in self.terms else None)
        self.kd_temperature = kd_temperature
        self.gkd_temperature = gkd_temperature
        self.teacher_bn_train = teacher_bn_train
        self.keep_zero_weight_terms = keep_zero_weight_terms
        self.gkd_nan_on_all_wrong = gkd_nan_on_all_wrong

    @staticmethod
    def _check_arguments(student, teacher, terms, **temperatures) -> None:
        """Types and values a Distiller is made of, checked here rather than at its first step."""
        for name, model in (("student", student), ("teacher", teacher)):
            if not isinstance(model, nn.Module) and not (name == "teacher" and model is None):
                raise ConfigError(f"the {name} must be a model (an nn.Module, e.g. cdlib.models.create(...)), "
                                  f"got {type(model).__name__}.")
        if not isinstance(terms, tuple) or not all(isinstance(t, str) for t in terms):
            raise ConfigError(f"terms must be a list of loss term names such as ('ce', 'kd'), got {terms!r}.")
        for name, value in temperatures.items():
            if not (is_finite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive, finite number, got {value!r}; e.g. 4 "
                                  "(KD) or 1 (GKD).")

    @staticmethod
    def _check_pair(student: nn.Module, teacher: nn.Module) -> None:
        for name, model in (("student", student), ("teacher", teacher)):
            if not hasattr(model, "stage_channels"):
                raise ConfigError(f"the {name} has no stage_channels; build it with cdlib.models.create().")
        if len(student.stage_channels) != len(teacher.stage_channels):
            raise ConfigError(f"student has {len(student.stage_channels)} stages but teacher has "
                              f"{len(teacher.stage_channels)}; pick models with the same number of stages.")
        s_classes, t_classes = getattr(student, "num_classes", None), getattr(teacher, "num_classes", None)
        if s_classes is not None and t_classes is not None and s_classes != t_classes:
            raise ConfigError(f"student predicts {s_classes} classes but teacher predicts {t_classes}; both must be "
                              "built for the same data set.")

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        if self.teacher is not None:
            # The reference code's net.train() also put the frozen teacher's
            # BatchNorm in train mode (batch statistics, drifting running stats);
            # teacher_bn_train=True reproduces that for the ablation.
            self.teacher.train(mode and self.teacher_bn_train)
        return self

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """Student and connector parameters: what the optimizer updates."""
        return (p for name, p in self.named_parameters() if not name.startswith("teacher.") and p.requires_grad)

    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        """Student and connectors: the teacher is saved once, in its own checkpoint."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load what :meth:`trainable_state_dict` saved; the teacher keeps its own weights."""
        try:
            missing, unexpected = self.load_state_dict(dict(state), strict=False)
        except RuntimeError as exc:  # tensors of the wrong shape: another model or connector layout
            reason = str(exc).strip().splitlines()[-1][:200]
            raise ConfigError(f"checkpoint does not match this distiller: {reason}") from None
        missing = [k for k in missing if not k.startswith("teacher.")]
        if missing or unexpected:
            raise ConfigError(f"checkpoint does not match this distiller: missing {missing[:3]}, "
                              f"unexpected {list(unexpected)[:3]}.")

    def active_terms(self, weights: Optional[Mapping[str, float]]) -> Dict[str, float]:
        """The terms this step computes, with their weights: those of ``self.terms`` whose weight
        is not 0 (all of them with ``keep_zero_weight_terms``). ``weights=None``: every term at 1."""
        if weights is None:
            return {t: 1.0 for t in self.terms}
        if not isinstance(weights, Mapping):
            raise ConfigError(f"weights must be a dict of loss term -> weight, e.g. {{'ce': 1.0}}, "
                              f"got {type(weights).__name__}.")
        try:
            w = {t: float(weights.get(t, 0.0)) for t in self.terms}
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"each loss weight must be a number, got {dict(weights)!r}.") from None
        return w if self.keep_zero_weight_terms else {t: v for t, v in w.items() if v != 0.0}

    def forward(
        self,
        images: torch.Tensor,
        targets: Optional[torch.Tensor] = None,
        weights: Optional[Mapping[str, float]] = None,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        if targets is None:
            return self.student(images), {}
        w = self.active_terms(weights)
        if term_table.needs_features(w):
            logits, feats = self.student(images, return_features=True)
        else:
            logits = self.student(images)
        if term_table.needs_teacher(w):
            with torch.no_grad():  # frozen, in eval mode (see train())
                t_logits, t_feats = self.teacher(images, return_features=True)

        out: Dict[str, torch.Tensor] = {}
        if "ce" in w:
            out["ce"] = w["ce"] * losses.ce_loss(logits, targets)
        if "kd" in w:
            out["kd"] = w["kd"] * losses.kd_loss(
                logits, t_logits, self.kd_temperature)
        if "gkd" in w:
            out["gkd"] = w["gkd"] * losses.gkd_loss(
                logits, t_logits, targets, self.gkd_temperature,
                nan_on_all_wrong=self.gkd_nan_on_all_wrong)
        if "cd" in w:
            connected = [g(f) for g, f in zip(self.connectors, feats)]
            out["cd"] = w["cd"] * losses.cd_loss(connected, t_feats)
        if "at" in w:
            out["at"] = w["at"] * losses.at_loss(feats, t_feats)
        if "fitnets" in w:
            k = FITNETS_HINT_STAGE
            hint = self.hint_regressor[0](feats[k])
            out["fitnets"] = w["fitnets"] * losses.fitnets_loss(
                [hint], [t_feats[k]])
        return logits, out

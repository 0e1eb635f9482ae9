"""The distiller: one module holding the student, its connectors and a frozen teacher.

``distiller(images, targets, weights)`` returns ``(student_logits, losses)``
where ``losses`` maps each loss term to its *weighted* value; the training
loss is their sum. Terms whose weight is 0 are not computed at all (the
reference code computes and multiplies them by 0), and the teacher does not
run when no term needs it.
"""

from __future__ import annotations

from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import losses
from .connectors import build_connectors
from .errors import ConfigError
from .recipes import LOSS_TERMS

__all__ = ["Distiller", "FITNETS_HINT_STAGE"]

# FitNets regresses a single middle hint; stage 3 of 4 plays the role of the
# "middle layer" in the original paper's guided layer choice.
FITNETS_HINT_STAGE = 2
_FEATURE_TERMS = ("cd", "at", "fitnets")
_TEACHER_TERMS = ("kd", "gkd", "cd", "at", "fitnets")


class Distiller(nn.Module):
    def __init__(
        self,
        student: nn.Module,
        teacher: Optional[nn.Module] = None,
        terms: Sequence[str] = ("ce",),
        kd_temperature: float = 4.0,
        gkd_temperature: float = 1.0,
        teacher_bn_train: bool = False,
    ) -> None:
        super().__init__()
        unknown = [t for t in terms if t not in LOSS_TERMS]
        if unknown:
            raise ConfigError(f"unknown loss term(s) {unknown}; choose from {', '.join(LOSS_TERMS)}.")
        self.terms = tuple(terms)
        self.student = student
        needs_teacher = any(t in _TEACHER_TERMS for t in self.terms)
        if needs_teacher and teacher is None:
            raise ConfigError(f"loss terms {[t for t in self.terms if t in _TEACHER_TERMS]} need a teacher; pass one.")
        self.teacher = teacher if needs_teacher else None
        if self.teacher is not None:
            self._check_pair(student, self.teacher)
            self.teacher.requires_grad_(False)
            self.teacher.eval()
        self.connectors = (
            build_connectors(student.stage_channels, self.teacher.stage_channels) if "cd" in self.terms else None
        )
        self.hint_regressor = (
            build_connectors(
                student.stage_channels[FITNETS_HINT_STAGE : FITNETS_HINT_STAGE + 1],
                self.teacher.stage_channels[FITNETS_HINT_STAGE : FITNETS_HINT_STAGE + 1],
            )
            if "fitnets" in self.terms
            else None
        )
        self.kd_temperature = kd_temperature
        self.gkd_temperature = gkd_temperature
        self.teacher_bn_train = teacher_bn_train

    @staticmethod
    def _check_pair(student: nn.Module, teacher: nn.Module) -> None:
        for name, model in (("student", student), ("teacher", teacher)):
            if not hasattr(model, "stage_channels"):
                raise ConfigError(f"the {name} has no stage_channels; build it with cdlib.models.create().")
        if len(student.stage_channels) != len(teacher.stage_channels):
            raise ConfigError(
                f"student has {len(student.stage_channels)} stages but teacher has {len(teacher.stage_channels)}; "
                "pick models with the same number of stages."
            )
        s_classes, t_classes = getattr(student, "num_classes", None), getattr(teacher, "num_classes", None)
        if s_classes is not None and t_classes is not None and s_classes != t_classes:
            raise ConfigError(
                f"student predicts {s_classes} classes but teacher predicts {t_classes}; both must be built for the same data set."
            )

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
            raise ConfigError(f"checkpoint does not match this distiller: {str(exc).strip().splitlines()[-1][:200]}") from None
        missing = [k for k in missing if not k.startswith("teacher.")]
        if missing or unexpected:
            raise ConfigError(
                f"checkpoint does not match this distiller: missing {missing[:3]}, unexpected {list(unexpected)[:3]}."
            )

    def forward(
        self,
        images: torch.Tensor,
        targets: Optional[torch.Tensor] = None,
        weights: Optional[Mapping[str, float]] = None,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        if targets is None:
            return self.student(images), {}
        weights = {t: float(weights.get(t, 0.0)) if weights is not None else 1.0 for t in self.terms}
        active = [t for t in self.terms if weights[t] != 0.0]
        need_features = any(t in _FEATURE_TERMS for t in active)
        need_teacher = any(t in _TEACHER_TERMS for t in active)

        if need_features:
            logits, feats = self.student(images, return_features=True)
        else:
            logits, feats = self.student(images), None
        if need_teacher:
            with torch.no_grad():
                t_logits, t_feats = self.teacher(images, return_features=True)
        else:
            t_logits = t_feats = None

        out: Dict[str, torch.Tensor] = {}
        for term in active:
            if term == "ce":
                value = F.cross_entropy(logits.float(), targets)
            elif term == "kd":
                value = losses.kd_loss(logits, t_logits, self.kd_temperature)
            elif term == "gkd":
                value = losses.gkd_loss(logits, t_logits, targets, self.gkd_temperature)
            elif term == "cd":
                value = losses.cd_loss([c(f) for c, f in zip(self.connectors, feats)], t_feats)
            elif term == "at":
                value = losses.at_loss(feats, t_feats)
            else:  # fitnets
                hint = self.hint_regressor[0](feats[FITNETS_HINT_STAGE])
                value = losses.fitnets_loss([hint], [t_feats[FITNETS_HINT_STAGE]])
            out[term] = weights[term] * value
        return logits, out

"""The distiller: one module holding the student, its connectors and a frozen teacher.

``distiller(images, targets, weights)`` returns ``(student_logits, losses)``
where ``losses`` maps each loss term to its *weighted* value; the training
loss is their sum. Terms whose weight is 0 are not computed at all, and the
teacher does not run when no term needs it; ``keep_zero_weight_terms=True``
computes them and multiplies them by 0, as the reference code does, so their
parameters get zero gradients (which SGD's weight decay and momentum act on)
instead of none. Which terms need the teacher or the stage features,
and which inputs each loss function takes, come from :mod:`cdlib.terms`.
"""

from __future__ import annotations

from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from . import losses
from . import terms as term_table
from .connectors import build_connectors
from .errors import ConfigError

__all__ = ["Distiller", "FITNETS_HINT_STAGE"]

# FitNets regresses a single middle hint; stage 3 of 4 plays the role of the
# "middle layer" in the original paper's guided layer choice.
FITNETS_HINT_STAGE = 2


def _uses(rows, name: str) -> bool:
    return any(name in row.inputs for row in rows)


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
        known = term_table.loss_terms()
        unknown = [t for t in terms if t not in known]
        if unknown:
            raise ConfigError(f"unknown loss term(s) {unknown}; choose from {', '.join(known)}.")
        self.terms = tuple(terms)
        self._rows = {t: term_table.get(t) for t in self.terms}
        self.student = student
        needs_teacher = term_table.needs_teacher(self.terms)
        if needs_teacher and teacher is None:
            named = [t for t in self.terms if self._rows[t].needs_teacher]
            raise ConfigError(f"loss terms {named} need a teacher; pass one (e.g. cdlib.models.create(...) with trained weights).")
        self.teacher = teacher if needs_teacher else None
        if self.teacher is not None:
            self._check_pair(student, self.teacher)
            self.teacher.requires_grad_(False)
            self.teacher.eval()
        rows = self._rows.values()
        self.connectors = (
            build_connectors(student.stage_channels, self.teacher.stage_channels)
            if _uses(rows, "connected_features") else None
        )
        self.hint_regressor = (
            build_connectors(
                student.stage_channels[FITNETS_HINT_STAGE : FITNETS_HINT_STAGE + 1],
                self.teacher.stage_channels[FITNETS_HINT_STAGE : FITNETS_HINT_STAGE + 1],
            )
            if _uses(rows, "hint")
            else None
        )
        self.kd_temperature = kd_temperature
        self.gkd_temperature = gkd_temperature
        self.teacher_bn_train = teacher_bn_train
        self.keep_zero_weight_terms = keep_zero_weight_terms
        # Keyword arguments a term's loss function gets besides its inputs (the reference behaviours).
        self.loss_options: Dict[str, Dict[str, object]] = {"gkd": {"nan_on_all_wrong": True}} if gkd_nan_on_all_wrong else {}

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
        active = list(self.terms) if self.keep_zero_weight_terms else [t for t in self.terms if weights[t] != 0.0]
        need_features = term_table.needs_features(active)
        need_teacher = term_table.needs_teacher(active)

        if need_features:
            logits, feats = self.student(images, return_features=True)
        else:
            logits, feats = self.student(images), None
        if need_teacher:
            with torch.no_grad():
                t_logits, t_feats = self.teacher(images, return_features=True)
        else:
            t_logits = t_feats = None

        inputs = _Inputs(self, logits=logits, teacher_logits=t_logits, targets=targets, features=feats,
                         teacher_features=t_feats)
        out: Dict[str, torch.Tensor] = {}
        for term in active:
            row = self._rows[term]
            # Looked up at every call, so a replaced loss function (a test, an exercise) takes effect.
            loss_function = getattr(losses, row.function)
            options = self.loss_options.get(term, {})
            out[term] = weights[term] * loss_function(*(inputs[name] for name in row.inputs), **options)
        return logits, out


class _Inputs:
    """The arguments a loss function can ask for (see :data:`cdlib.terms.INPUTS`), each computed
    on first use: the connectors run only when a CD-like term is active."""

    def __init__(self, distiller: Distiller, **given) -> None:
        self._distiller, self._values = distiller, given

    def __getitem__(self, name: str):
        if name not in self._values:
            self._values[name] = self._derive(name)
        return self._values[name]

    def _derive(self, name: str):
        d = self._distiller
        if name == "connected_features":
            return [connector(f) for connector, f in zip(d.connectors, self["features"])]
        if name == "hint":
            return [d.hint_regressor[0](self["features"][FITNETS_HINT_STAGE])]
        if name == "teacher_hint":
            return [self["teacher_features"][FITNETS_HINT_STAGE]]
        if name in ("kd_temperature", "gkd_temperature"):
            return getattr(d, name)
        raise ConfigError(f"a loss term asks for input {name!r}, which the distiller does not provide; "
                          f"use the names in cdlib.terms.INPUTS ({', '.join(term_table.INPUTS)}).")

"""Distillation losses as pure functions: tensors in, a scalar tensor out.

Every loss is computed in the input's dtype promoted to at least float32:
float16 / bfloat16 activations from autocast neither overflow nor lose the
small differences distillation losses are made of, and float64 inputs (used
by gradient checks) stay float64. The result lives on the inputs' device.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .errors import ConfigError, is_finite, shown


def _acc(t: torch.Tensor) -> torch.Tensor:
    """The tensor in its accumulation dtype: at least float32."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


__all__ = ["ce_loss", "channel_attention", "cd_loss", "per_sample_kl", "kd_loss", "gkd_loss", "teacher_correct_mask",
           "at_loss", "fitnets_loss"]


# --------------------------------------------------------------------------- input checks
# Every loss checks its inputs first, so a wrong type, shape or dtype is one ConfigError sentence instead
# of a torch traceback, and an empty batch is refused instead of becoming a NaN steps later. The checks
# read shapes, dtypes and devices only: no value, so they never make a GPU step wait.

_EMPTY_BATCH = "the batch is empty (0 samples); pass at least one sample (check the data loader)."

# What must agree between a student stage and its teacher's, per loss (given the two shapes), and what to
# say when it does not; fitnets_loss takes hints of any shape, the others (N, C, H, W) maps.
_STAGE_SHAPES = {
    "cd_loss": (lambda s, t: s[:2] == t[:2],
                "student (N, C) = ({s[0]}, {s[1]}) differs from teacher's ({t[0]}, {t[1]}); pass the student's "
                "features through connectors so channel counts match."),
    "at_loss": (lambda s, t: s[0] == t[0] and s[2:] == t[2:],
                "attention transfer needs equal batch and spatial sizes, got student {s} and teacher {t}."),
    "fitnets_loss": (lambda s, t: s == t,
                     "FitNets hint needs equal shapes, got student {s} and teacher {t}; regress the student's "
                     "feature with a connector first."),
}


def _check_tensor(value, what: str, floating: bool = True) -> None:
    if not isinstance(value, torch.Tensor):
        raise ConfigError(f"{what} must be a torch tensor, got {type(value).__name__}; "
                          "convert it with torch.as_tensor(...).")
    if floating and not value.is_floating_point():
        raise ConfigError(f"{what} must be a floating-point tensor (activations or logits), got {value.dtype}; "
                          "convert it with .float().")


def _check_map(feature_map, what: str) -> None:
    """A (N, C, H, W) floating feature map with at least one pixel."""
    _check_tensor(feature_map, what)
    if feature_map.dim() != 4:
        raise ConfigError(f"{what} expects a 4-D (N, C, H, W) feature map, got shape {tuple(feature_map.shape)}.")
    if feature_map.shape[2] * feature_map.shape[3] == 0:
        raise ConfigError(f"{what}: a feature map of 0x0 pixels has no mean, got shape {tuple(feature_map.shape)}; "
                          "pass maps with at least one pixel (is the input image too small for the model?).")


def _check_stages(student_feats, teacher_feats, who: str) -> None:
    """Two equally long, non-empty lists of stage maps on one device, for a batch of at least one, whose
    shapes agree as loss ``who`` needs (:data:`_STAGE_SHAPES`)."""
    for name, feats in (("student", student_feats), ("teacher", teacher_feats)):
        if isinstance(feats, (torch.Tensor, str)) or not isinstance(feats, Sequence):
            raise ConfigError(f"{who} takes a list of feature maps, one per stage, for the {name}, got "
                              f"{type(feats).__name__}; wrap a single map as [feature_map].")
    if len(student_feats) != len(teacher_feats):
        raise ConfigError(f"{who}: student has {len(student_feats)} feature stages but teacher has {len(teacher_feats)}; "
                          "pass one feature map per stage for both.")
    if len(student_feats) == 0:
        raise ConfigError(f"{who} needs at least one feature stage, got empty lists.")
    shapes_agree, mismatch = _STAGE_SHAPES[who]
    for stage, (s, t) in enumerate(zip(student_feats, teacher_feats), start=1):
        for name, f in (("student", s), ("teacher", t)):
            what = f"{who}: stage {stage} of the {name}"
            if who == "fitnets_loss":
                _check_tensor(f, what)
            else:
                _check_map(f, what)
            if f.dim() == 0 or f.shape[0] == 0:
                raise ConfigError(_EMPTY_BATCH)
        if s.device != t.device:
            raise ConfigError(f"{who}: stage {stage} of the student is on {s.device} but the teacher's is on "
                              f"{t.device}; move both to the same device.")
        if not shapes_agree(s.shape, t.shape):
            raise ConfigError(f"stage {stage}: " + mismatch.format(s=tuple(s.shape), t=tuple(t.shape)))


def _is_positive_finite(value) -> bool:
    """Whether ``value`` is a real number (or one-element tensor) above 0 and below infinity."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return is_finite(value) and value > 0


def _check_temperature(temperature) -> None:
    if not _is_positive_finite(temperature):
        raise ConfigError(f"temperature must be a positive, finite number, got {shown(temperature)}; e.g. 4 (a common "
                          "choice for KD, cdlib's default) or 1 (GKD in the authors' code).")


def _check_logits(student_logits, teacher_logits, temperature) -> None:
    """Two (batch, classes) logit tensors of one shape and device, and a valid temperature."""
    _check_tensor(student_logits, "student logits")
    _check_tensor(teacher_logits, "teacher logits")
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ConfigError(f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
                          "must both be (batch, classes) with the same number of classes.")
    if student_logits.shape[0] == 0:
        # The batch mean of nothing is NaN: a silent NaN loss would only surface steps later.
        raise ConfigError(_EMPTY_BATCH)
    if student_logits.device != teacher_logits.device:
        raise ConfigError(f"student logits are on {student_logits.device} but teacher logits on "
                          f"{teacher_logits.device}; move both to the same device.")
    _check_temperature(temperature)


def _check_targets(logits: torch.Tensor, targets) -> None:
    """(batch,) integer labels beside (batch, classes) ``logits`` that index a class. Their values are
    checked on the CPU only: on a GPU the check would make every training step wait for the device
    (cross-entropy there fails on such labels by itself)."""
    _check_tensor(targets, "targets", floating=False)
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ConfigError(f"targets must be integer class indices (torch.long), got {targets.dtype}; "
                          "convert them with .long().")
    if targets.shape != logits.shape[:1]:
        raise ConfigError(f"targets must be a (batch,) tensor of class indices, got shape {tuple(targets.shape)} "
                          f"for {logits.shape[0]} logits.")
    if targets.device != logits.device:
        raise ConfigError(f"targets are on {targets.device} but the logits on {logits.device}; "
                          "move both to the same device.")
    num_classes = logits.shape[1]
    if targets.device.type != "cpu" or targets.numel() == 0:
        return
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or high >= num_classes:
        raise ConfigError(f"targets must be class indices from 0 to {num_classes - 1}, got values from {low} to {high}; "
                          "check that the labels and the model's number of classes belong to the same data set.")


def channel_attention(feature_map: torch.Tensor) -> torch.Tensor:
    """Channel attention of a (N, C, H, W) map: its spatial mean, (N, C)."""
    _check_map(feature_map, "channel_attention")
    return _acc(feature_map).mean(dim=(2, 3))


def cd_loss(
    student_feats: Sequence[torch.Tensor],
    teacher_feats: Sequence[torch.Tensor],
) -> torch.Tensor:
    """Channel Distillation loss (Zhou et al. 2020, eq. 2).

    For every stage: mean over batch x channels of the squared difference of
    channel attentions (spatial means); the stage losses are summed. Spatial
    sizes may differ because attention averages them away.
    """
    _check_stages(student_feats, teacher_feats, "cd_loss")
    total = _acc(student_feats[0]).new_zeros(())
    for s, t in zip(student_feats, teacher_feats):
        gap = channel_attention(s) - channel_attention(t)
        total = total + gap.pow(2).mean()
    return total


def ce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with the labels, batch mean, in at least float32."""
    _check_tensor(logits, "logits")
    if logits.dim() != 2 or logits.shape[0] == 0:
        raise ConfigError(_EMPTY_BATCH if logits.dim() == 2 else
                          f"logits must be (batch, classes), got shape {tuple(logits.shape)}.")
    _check_targets(logits, targets)
    return F.cross_entropy(_acc(logits), targets)


def per_sample_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) for each sample, in float32."""
    _check_logits(student_logits, teacher_logits, temperature)
    log_p_student = F.log_softmax(_acc(student_logits) / temperature, dim=1)
    log_p_teacher = F.log_softmax(_acc(teacher_logits) / temperature, dim=1)
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 4.0,
) -> torch.Tensor:
    """Hinton knowledge distillation: T^2 * KL(teacher || student).

    Averaged over the batch.
    """
    kl = per_sample_kl(student_logits, teacher_logits, temperature)
    return kl.mean() * temperature**2


def teacher_correct_mask(
    teacher_logits: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Boolean (N,) mask: the samples whose teacher argmax is the label."""
    _check_targets(teacher_logits, targets)
    return teacher_logits.argmax(dim=1) == targets


def gkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    *,
    nan_on_all_wrong: bool = False,
) -> torch.Tensor:
    """Guided KD: KD over the samples the teacher classifies correctly.

    The summed KL of the kept samples is divided by their number. A batch where
    the teacher is wrong on every sample contributes exactly 0 (with zero,
    finite gradients), where the reference code divides by zero and gets NaN;
    ``nan_on_all_wrong=True`` reproduces that NaN (for demonstration).
    """
    _check_logits(student_logits, teacher_logits, temperature)
    _check_targets(student_logits, targets)
    kept = teacher_correct_mask(teacher_logits, targets)
    per_sample = per_sample_kl(student_logits, teacher_logits, temperature)
    # Multiplying by the mask (instead of indexing) keeps the graph shape
    # fixed, which torch.compile and CUDA graphs like; clamp avoids 0/0.
    kept_f = kept.to(per_sample.dtype)
    count = (kept_f.sum() if nan_on_all_wrong
             else kept_f.sum().clamp_min(1.0))
    return (per_sample * kept_f).sum() / count * temperature**2


def _attention_map(feature_map: torch.Tensor, p: float) -> torch.Tensor:
    """Zagoruyko & Komodakis spatial attention: L2-normalised mean_c |F_c|^p, (N, H*W)."""
    am = _acc(feature_map).abs().pow(p).mean(dim=1).flatten(1)
    return F.normalize(am, dim=1)


def at_loss(student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor], p: float = 2.0) -> torch.Tensor:
    """Attention Transfer (Zagoruyko & Komodakis 2017) summed over stages.

    Per stage: mean over batch and positions of the squared difference of the
    normalised spatial attention maps. Spatial sizes must match per stage;
    channel counts may differ (attention averages channels away).
    """
    _check_stages(student_feats, teacher_feats, "at_loss")
    if not _is_positive_finite(p):
        raise ConfigError(f"at_loss: p must be a positive, finite number (the power of |F|; 2 in the paper), "
                          f"got {p!r:.40}.")
    total = _acc(student_feats[0]).new_zeros(())
    for s, t in zip(student_feats, teacher_feats):
        total = total + (_attention_map(s, p) - _attention_map(t, p)).pow(2).mean()
    return total


def fitnets_loss(student_hints: Sequence[torch.Tensor], teacher_hints: Sequence[torch.Tensor]) -> torch.Tensor:
    """FitNets hint loss (Romero et al. 2015): mean squared error of regressed features.

    The student's features must already pass through a regressor (a connector)
    so shapes match the teacher's. Summed over the given stages.
    """
    _check_stages(student_hints, teacher_hints, "fitnets_loss")
    total = _acc(student_hints[0]).new_zeros(())
    for s, t in zip(student_hints, teacher_hints):
        total = total + F.mse_loss(_acc(s), _acc(t))
    return total

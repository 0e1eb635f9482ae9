"""What one run is built from: data, loaders, the distiller, optimizer (SGD), LR scheduler, grad scaler.

:func:`build` makes them from a :class:`~cdlib.recipes.RunConfig` in a fixed
order (the order matters: the seeded RNG initialises the models and the
connectors one after the other, and a resumed run must draw the same numbers).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional, Tuple

import torch
from torch import nn

from . import checkpoint as ckpt
from . import data as data_mod
from . import models, schedules
from . import terms as term_table
from .device import amp_dtype, pick_device
from .distiller import Distiller
from .distributed import Placement, main_first
from .errors import CDLibError, ConfigError
from .interrupt import workers_ignore_sigint
from .recipes import RunConfig
from .step import DetachedLogits, evaluate

__all__ = ["Parts", "build", "make_sgd", "load_data", "evaluate_model_file", "build_teacher", "warn_if_useless_teacher",
           "weights_for", "model_for_step"]


# The single-kernel ("fused") SGD update arrived in torch 2.4; cdlib supports torch from 2.1.
SGD_HAS_FUSED = "fused" in inspect.signature(torch.optim.SGD.__init__).parameters


def make_sgd(parameters: Iterable[nn.Parameter], lr: float, momentum: float, weight_decay: float,
             device: torch.device, fused: bool = True) -> torch.optim.SGD:
    """The optimizer every training step in cdlib uses: SGD with momentum over ``parameters``; on CUDA
    (and when ``fused``) one kernel updates every parameter instead of several launches per tensor."""
    kwargs = dict(lr=lr, momentum=momentum, weight_decay=weight_decay)
    if fused and device.type == "cuda" and SGD_HAS_FUSED:
        kwargs["fused"] = True
    return torch.optim.SGD(list(parameters), **kwargs)


def load_data(cfg: RunConfig, download: Optional[bool] = None) -> data_mod.DataBundle:
    """The data set ``cfg`` names, with its ``data_options``; an option value of the wrong kind is a
    :class:`ConfigError`, not a ``TypeError`` from inside the loader."""
    try:
        return data_mod.load(
            cfg.data,
            root=cfg.data_root,
            download=cfg.download if download is None else download,
            image_size=cfg.image_size,
            **cfg.data_options,
        )
    except CDLibError:
        raise
    except (TypeError, ValueError) as exc:
        if not cfg.data_options:
            raise  # not caused by the user's options: a bug, keep its traceback
        raise ConfigError(
            f"data options {cfg.data_options} do not fit data set {cfg.data!r} ({exc}); "
            "see help(cdlib.data.load) for the options each set takes."
        ) from None


def evaluate_model_file(path, cfg: RunConfig, name: Optional[str] = None, channels_last: bool = False):
    """The model file ``path`` evaluated on ``cfg``'s test set as the trainer evaluates (same batch size and
    precision; channels-last on a GPU if asked): its metrics, and the data bundle."""
    bundle = load_data(cfg)
    model = ckpt.load_model(path, name=name, num_classes=bundle.num_classes)
    device = pick_device(cfg.device)
    channels_last = channels_last and device.type == "cuda"
    model = model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
    loader = _loader(cfg, bundle.test, train=False, device=device)
    return evaluate(model, loader, device, amp_dtype(device, cfg.amp), 1, channels_last), bundle


def build_teacher(cfg: RunConfig, num_classes: int, place: Placement) -> nn.Module:
    """The frozen teacher: from ``cfg.teacher_checkpoint``, or torchvision's pretrained weights."""
    # A given checkpoint replaces pretrained weights, so they are not downloaded for nothing.
    pretrained = cfg.teacher_pretrained and not cfg.teacher_checkpoint
    if not pretrained and not cfg.teacher_checkpoint:
        raise ConfigError(
            f"method {cfg.method!r} needs a trained teacher: pass teacher_checkpoint (CLI: --teacher-checkpoint), "
            "or use cdlib.train.run / `cdlib distill`, which train one first."
        )
    if pretrained and num_classes != 1000:
        raise ConfigError(
            f"pretrained {cfg.teacher} weights predict ImageNet's 1000 classes, but {cfg.data} has {num_classes}; "
            "pass --teacher-checkpoint, or --no-teacher-pretrained to train a teacher first."
        )

    def build() -> nn.Module:
        try:
            return models.create(cfg.teacher, num_classes=num_classes, pretrained=pretrained)
        except OSError as exc:  # no network, or a broken download
            raise ConfigError(
                f"could not get the pretrained {cfg.teacher} weights ({exc}); pass --teacher-checkpoint, "
                "or --no-teacher-pretrained to train a teacher first."
            ) from None

    teacher = main_first(place, build) if pretrained else build()
    if cfg.teacher_checkpoint:
        ckpt.load_model_weights(teacher, cfg.teacher_checkpoint, cfg.teacher, what="teacher checkpoint")
    return teacher


def warn_if_useless_teacher(metrics: Dict[str, float], num_classes: int) -> None:
    """Say so when the teacher predicts worse than a uniform guess: distilling from it cannot help."""
    guess = math.log(num_classes)
    if math.isfinite(metrics["loss"]) and metrics["loss"] <= guess:
        return
    print(
        f"warning: the teacher's test loss is {metrics['loss']:.3g} (top-1 {metrics['top1']:.2f}%), worse than guessing "
        f"uniformly among {num_classes} classes ({guess:.2f}): it looks untrained, or its BatchNorm statistics never "
        "settled (a teacher trained for only a few steps); distilling from it will not help and may diverge.",
        flush=True,
    )


def weights_for(cfg: RunConfig, terms: tuple, epoch: float, schedule) -> Dict[str, float]:
    """The loss weights at (fractional) ``epoch``: the config's, with the EDT schedule's where it sets them."""
    weights = {t: float(cfg.weights.get(t, 0.0)) for t in terms if t in term_table.loss_terms()}
    if schedule is not None:
        weights.update({t: float(value) for t, value in schedule(epoch).items() if t in weights})
    return weights


@dataclass
class Parts:
    """The objects one run trains with."""

    bundle: data_mod.DataBundle
    train_loader: object
    test_loader: object
    steps_per_epoch: int
    distiller: Distiller
    teacher: Optional[nn.Module]
    schedule: Optional[Callable[[float], Dict[str, float]]]
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.MultiStepLR
    scaler: torch.amp.GradScaler
    autocast_dtype: Optional[torch.dtype]
    channels_last: bool


def _loader(cfg: RunConfig, dataset, train: bool, **placement) -> object:
    """The trainer's loader of ``dataset``; test batches are at least 256 images (no gradients to hold)."""
    loader = data_mod.make_loader(dataset, cfg.batch_size if train else max(cfg.batch_size, 256), train=train,
                                  num_workers=cfg.num_workers, seed=cfg.seed, on_device=cfg.data_on_device, **placement)
    if isinstance(loader, torch.utils.data.DataLoader) and loader.num_workers > 0 and loader.worker_init_fn is None:
        loader.worker_init_fn = workers_ignore_sigint
    return loader


def build(cfg: RunConfig, place: Placement, terms: Tuple[str, ...]) -> Parts:
    """Data, loaders, student, teacher, distiller, EDT schedule, optimizer, LR scheduler and scaler for ``cfg``."""
    device = place.device
    if device.type == "cuda":
        # Fixed input shapes: let cuDNN time its algorithms once and keep the fastest.
        torch.backends.cudnn.benchmark = True
    autocast_dtype = amp_dtype(device, cfg.amp)
    channels_last = cfg.channels_last and device.type == "cuda"

    bundle = main_first(place, lambda: load_data(cfg, download=place.is_main)) if cfg.download else load_data(cfg)
    placement = dict(device=device, rank=place.rank, world_size=place.world_size)
    train_loader = _loader(cfg, bundle.train, train=True, **placement)
    test_loader = _loader(cfg, bundle.test, train=False, **placement)
    steps_per_epoch = min(len(train_loader), cfg.max_steps_per_epoch or len(train_loader))

    student = models.create(cfg.student, num_classes=bundle.num_classes)
    teacher = build_teacher(cfg, bundle.num_classes, place) if term_table.needs_teacher(terms) else None
    distiller = Distiller(
        student,
        teacher,
        terms=[t for t in terms if t != term_table.EDT],
        kd_temperature=cfg.kd_temperature,
        gkd_temperature=cfg.gkd_temperature,
        teacher_bn_train=cfg.teacher_bn_train,
        keep_zero_weight_terms=cfg.keep_zero_weight_terms,
        gkd_nan_on_all_wrong=cfg.gkd_nan_on_all_wrong,
    ).to(device)
    if channels_last:
        distiller = distiller.to(memory_format=torch.channels_last)
    schedule = schedules.get(cfg.schedule, epochs=cfg.epochs) if term_table.EDT in terms else None
    optimizer = make_sgd(distiller.trainable_parameters(), cfg.lr, cfg.momentum, cfg.weight_decay, device)
    lr_scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.lr_milestones), gamma=cfg.lr_gamma)
    # Loss scaling guards fp16 gradients against underflow; bf16 has fp32's range and needs none.
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    return Parts(bundle, train_loader, test_loader, steps_per_epoch, distiller, teacher, schedule, optimizer,
                 lr_scheduler, scaler, autocast_dtype, channels_last)


def model_for_step(parts: Parts, cfg: RunConfig, place: Placement) -> nn.Module:
    """The distiller alone; under torchrun, wrapped in DistributedDataParallel."""
    if place.world_size == 1:
        return parts.distiller
    # With EDT, or a loss weight of 0, some trainable parameters get no gradient in
    # some steps (the classifier in the CD-only warm-up, the connectors when the CD
    # weight is 0); DDP must then look for them every step, which costs a graph walk.
    terms = parts.distiller.terms
    weights_vary = parts.schedule is not None or any(cfg.weights.get(t, 0.0) == 0 for t in terms)
    device = place.device
    return nn.parallel.DistributedDataParallel(
        DetachedLogits(parts.distiller),
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=weights_vary,
        gradient_as_bucket_view=True,
    )

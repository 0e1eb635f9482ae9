"""The trainer: one code path for a CPU, one GPU or many (``torchrun``).

``fit(cfg)`` trains one model (``cfg.method == "student"`` for plain
cross-entropy, e.g. a teacher) or distils one student; ``run(cfg)`` adds what
a user expects around it: it trains the teacher first when no checkpoint is
given, runs a ','-separated list of methods and returns their results.

A run folder holds ``config.json``, ``metrics.jsonl`` (one line per epoch),
``checkpoint.pt`` (written atomically every epoch and on Ctrl-C, with the
optimizer, scaler, schedule position and RNG state) and, when finished,
``model.pt`` (the trained student, reusable as a teacher).

Resuming is exact: an interrupted and resumed run ends with the same weights
and metrics as an uninterrupted one. In-memory data sets (CIFAR-100, digits,
synthetic) replay the interrupted epoch's batches up to where it stopped, which
costs little; a DataLoader with workers (ImageNet) skips them in its sampler and
gives every image its own augmentation seed (:class:`cdlib.data.EpochSampler`),
so the next images look exactly as they would have.

Under ``torchrun`` every process runs this same code: rank 0 alone writes
files; decisions that stop a run (a non-finite loss, Ctrl-C) are agreed by
all processes at log points, so no process is left waiting in a collective.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import itertools
import json
import math
import os
import random
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt
from . import data as data_mod
from . import models, schedules
from .device import amp_dtype, pick_device
from .distiller import Distiller
from .errors import CDLibError, CheckpointError, ConfigError
from .recipes import LOSS_TERMS, RunConfig, parse_method, validate

__all__ = [
    "fit",
    "run",
    "ensure_teacher",
    "teacher_dir",
    "is_main_process",
    "evaluate",
    "load_data",
    "TrainStep",
    "RunResult",
    "TrainingDiverged",
    "read_metrics",
    "comparison_table",
]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"
_LOG_EVERY = 20  # steps between log points: the only places the loop waits for the device

# Whether this torch's SGD has the single-kernel ("fused") CUDA update (torch >= 2.3).
_SGD_HAS_FUSED = "fused" in inspect.signature(torch.optim.SGD).parameters


class TrainingDiverged(CDLibError):
    """A loss became NaN or infinite."""


@dataclass
class RunResult:
    run_dir: Path
    method: str
    metrics: List[dict]
    final: Dict[str, float]
    model: nn.Module = field(repr=False)
    teacher_metrics: Optional[Dict[str, float]] = None

    @property
    def model_path(self) -> Path:
        return self.run_dir / MODEL_FILE


# ------------------------------------------------------------------ Ctrl-C


class _DeferredInterrupt:
    """Ctrl-C (SIGINT) during training.

    The first Ctrl-C is held until the current optimizer step is complete, so
    the checkpoint written on interrupt is a consistent state, never half a
    step. A second Ctrl-C stops at once, without saving (for a user who will
    not wait); the last checkpoint on disk is then the one to resume from.
    """

    def __init__(self) -> None:
        self.requested = False
        self.forced = False
        self._installed = False
        self._previous = None

    def _handler(self, signum, frame) -> None:
        if self.requested:
            self.forced = True
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "_DeferredInterrupt":
        # Python delivers signals to the main thread only; elsewhere Ctrl-C keeps its default behaviour.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            # A handler installed outside Python reads back as None; the default is the best stand-in.
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.default_int_handler)
            self._installed = False

    def raise_if_requested(self) -> None:
        if self.requested:
            raise KeyboardInterrupt


def _workers_ignore_sigint(worker_id: int) -> None:
    # Ctrl-C in a terminal reaches every process of the group. A DataLoader worker
    # that died of it would crash the main process before it could save; the main
    # process alone decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ------------------------------------------------------------- distributed


@dataclass(frozen=True)
class _Placement:
    """Where this process trains: its rank among ``world_size`` processes, and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _placement(device_preference: str) -> _Placement:
    """This process's place; under torchrun (WORLD_SIZE > 1) joins the process group."""
    device = pick_device(device_preference)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return _Placement(0, 1, device)
    if device.type not in ("cuda", "cpu"):
        raise ConfigError(f"multi-process training runs on CUDA GPUs or CPUs, not {device.type}; pass --device cpu or cuda.")
    if device.type == "cuda":
        # One GPU per process, chosen before the process group starts so NCCL binds to it.
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return _Placement(dist.get_rank(), dist.get_world_size(), device)


def _all_reduce(tensor: torch.Tensor, world_size: int, op=None) -> torch.Tensor:
    if world_size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op is None else op)
    return tensor


def _barrier(placement: _Placement) -> None:
    if placement.world_size > 1:
        dist.barrier()


def _main_first(placement: _Placement, make: Callable[[], object]):
    """``make()`` on rank 0 first, then on the others: a download (data set,
    pretrained weights) happens once and the others find it done. Should rank 0
    fail, it exits and torchrun stops the processes waiting here."""
    if placement.world_size == 1:
        return make()
    if placement.is_main:
        result = make()
        dist.barrier()
        return result
    dist.barrier()
    return make()


# -------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    device: torch.device,
    autocast_dtype: Optional[torch.dtype] = None,
    world_size: int = 1,
    channels_last: bool = False,
) -> Dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy of ``model`` over ``loader``.

    With ``world_size > 1`` each process evaluates its shard and the sums are
    combined, so every process returns the same numbers.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss, top-1 hits, top-5 hits, count
    try:
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with _autocast(device, autocast_dtype):
                logits = model(images)
            logits = logits.float()
            hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]
            # Accumulated on the device: no host sync until the end of the pass.
            sums[0] += F.cross_entropy(logits, labels, reduction="sum").double()
            sums[1] += hits[:, 0].sum()
            sums[2] += hits.any(dim=1).sum()
            sums[3] += labels.numel()
    finally:
        model.train(was_training)
    _all_reduce(sums, world_size)
    loss, top1, top5, count = sums.tolist()
    if count == 0:
        raise ConfigError("the evaluation set is empty; check the data folder.")
    return {"loss": loss / count, "top1": 100 * top1 / count, "top5": 100 * top5 / count}


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ------------------------------------------------------------------- data


def load_data(cfg: RunConfig, download: Optional[bool] = None) -> data_mod.DataBundle:
    """The data set ``cfg`` names, with its ``data_options``.

    An option the data set does not take (or a value of the wrong kind) is a
    :class:`ConfigError` naming the options, not a ``TypeError`` from inside
    the loader.
    """
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


# ---------------------------------------------------------------- helpers


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_version": random.getstate()[0]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _config_dict(cfg: RunConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["lr_milestones"] = list(cfg.lr_milestones)
    return d


def _uses_teacher(terms: Tuple[str, ...]) -> bool:
    return any(t not in ("ce", "edt") for t in terms)


# Settings that shape a run's result: a resumed run must share them with the
# checkpoint. Machinery (device, amp, workers, progress, folders) may change.
_RESULT_SETTINGS = (
    "data", "data_options", "image_size", "student", "method", "epochs", "batch_size", "lr", "momentum",
    "weight_decay", "lr_milestones", "lr_gamma", "seed", "max_steps_per_epoch",
)  # fmt: skip


def _result_settings(config: dict, terms: Tuple[str, ...]) -> dict:
    """The settings of ``config`` (a saved or current config dict) that matter for a method of ``terms``."""
    keys = list(_RESULT_SETTINGS)
    if _uses_teacher(terms):
        keys += ["teacher", "teacher_bn_train"]
    if "edt" in terms:
        keys.append("schedule")
    keys += [f"{t}_temperature" for t in ("kd", "gkd") if t in terms]
    settings = {k: config.get(k) for k in keys}
    scheduled = ("ce", "cd", "gkd") if "edt" in terms else ()  # weights the EDT schedule sets, whatever cfg says
    saved_weights = config.get("weights") or {}
    settings["weights"] = {t: float(saved_weights.get(t, 0.0)) for t in terms if t in LOSS_TERMS and t not in scheduled}
    # Milestones at or after the last epoch never change the LR (and older versions kept a
    # recipe's 60/120/160 in shortened runs), so only those that take effect must agree.
    settings["lr_milestones"] = sorted(int(m) for m in settings["lr_milestones"] or () if int(m) < int(config["epochs"]))
    return settings


def _check_resumable(saved_config: dict, cfg: RunConfig, path: Path) -> None:
    terms = parse_method(cfg.method)
    before, now = _result_settings(saved_config, terms), _result_settings(_config_dict(cfg), terms)
    diffs = [f"{k}: {before[k]!r} -> {now[k]!r}" for k in now if before[k] != now[k]]
    if diffs:
        raise ConfigError(
            f"cannot resume {path}: it was started with different settings ({'; '.join(diffs)}); "
            "use the original settings or another --run-dir."
        )


_CHECKPOINT_KEYS = ("config", "epoch", "step", "trainable", "optimizer", "lr_scheduler", "scaler", "rng", "metrics")


def _checkpoint_to_resume(cfg: RunConfig, checkpoint_path: Path, world_size: int) -> Optional[dict]:
    """The run folder's training checkpoint, checked against ``cfg``; None for a fresh folder."""
    if not checkpoint_path.exists():
        return None
    if not cfg.resume:
        raise ConfigError(
            f"{checkpoint_path.parent} already holds a checkpoint from an earlier run; pass resume=True (CLI: --resume) "
            "to continue it, or choose another run folder."
        )
    saved = ckpt.safe_load(checkpoint_path, "training checkpoint")
    if (saved.get("format") != ckpt.TRAINING_FORMAT or any(k not in saved for k in _CHECKPOINT_KEYS)
            or not isinstance(saved["config"], dict)):
        raise CheckpointError(
            f"{checkpoint_path} is not a complete cdlib training checkpoint; move it away or pick another run folder."
        )
    _check_resumable(saved["config"], cfg, checkpoint_path)
    saved_world_size = saved.get("world_size", 1)
    if saved["step"] and saved_world_size != world_size:
        # Mid-epoch, the position counts steps of one process's shard, which depends on the process count.
        raise ConfigError(
            f"{checkpoint_path} was saved mid-epoch by {saved_world_size} process(es); resume it with "
            f"{saved_world_size} (this run has {world_size})."
        )
    return saved


def read_metrics(run_dir: str | os.PathLike) -> List[dict]:
    """The per-epoch metrics a run wrote (one dict per epoch)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_metrics(run_dir: Path, rows: List[dict]) -> None:
    tmp = run_dir / (METRICS_FILE + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, run_dir / METRICS_FILE)


def _weights_for(cfg: RunConfig, terms: tuple, epoch: float, schedule) -> Dict[str, float]:
    weights = {t: float(cfg.weights.get(t, 0.0)) for t in terms if t in LOSS_TERMS}
    if schedule is not None:
        for term, value in schedule(epoch).items():
            if term in weights:
                weights[term] = float(value)
    return weights


def _build_teacher(cfg: RunConfig, num_classes: int, placement: _Placement) -> nn.Module:
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

    teacher = _main_first(placement, build) if pretrained else build()
    if cfg.teacher_checkpoint:
        ckpt.load_model_weights(teacher, cfg.teacher_checkpoint, cfg.teacher, what="teacher checkpoint")
    return teacher


def _warn_if_useless_teacher(metrics: Dict[str, float], num_classes: int) -> None:
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


def _sgd(cfg: RunConfig, parameters, device: torch.device) -> torch.optim.SGD:
    kwargs = dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if device.type == "cuda" and _SGD_HAS_FUSED:
        # One kernel updates every parameter, instead of several launches per tensor.
        kwargs["fused"] = True
    return torch.optim.SGD(list(parameters), **kwargs)


# -------------------------------------------------------------- the step


class TrainStep:
    """One optimizer step: the hot path, shared by the trainer and the benchmark.

    Returns the step's statistics as a float64 tensor on the device —
    (weighted loss of each term..., correct predictions, samples, 1) — so the
    caller can accumulate them without a host-device sync per step.

    A step whose loss weights are all 0 has nothing to learn: it only counts
    (forward without gradients) and leaves weights and optimizer state alone.
    """

    def __init__(self, model: nn.Module, terms: tuple, optimizer, scaler, device: torch.device,
                 autocast_dtype: Optional[torch.dtype], channels_last: bool = True) -> None:
        self.model, self.terms, self.optimizer, self.scaler = model, terms, optimizer, scaler
        self.device, self.autocast_dtype = device, autocast_dtype
        self.channels_last = channels_last and device.type == "cuda"

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, weights: Dict[str, float]) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        learns = any(weights.get(t, 0.0) != 0.0 for t in self.terms)
        with torch.set_grad_enabled(learns), _autocast(self.device, self.autocast_dtype):
            logits, loss_terms = self.model(images, labels, weights)
        if learns:
            total = sum(loss_terms.values())
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        with torch.no_grad():
            # torch.full and torch.zeros launch fill kernels; building these from Python
            # numbers with torch.tensor would copy from the host and wait for the device.
            stat = dict(device=self.device, dtype=torch.float64)
            values = [loss_terms[t].detach().double() if t in loss_terms else torch.zeros((), **stat) for t in self.terms]
            correct = (logits.detach().argmax(1) == labels).sum().double()
            return torch.stack(values + [correct, torch.full((), float(len(labels)), **stat), torch.ones((), **stat)])


class _DetachedLogits(nn.Module):
    """What DDP wraps: the distiller, returning its logits detached.

    DDP's search for parameters without a gradient (find_unused_parameters)
    starts from the forward's outputs; with the logits among them it would
    count the classifier as used during EDT's CD-only warm-up (cross-entropy
    weight 0), wait for a gradient that never comes, and fail the next step.
    The loss terms, computed inside the distiller, are unaffected.
    """

    def __init__(self, distiller: Distiller) -> None:
        super().__init__()
        self.distiller = distiller

    def forward(self, images, targets, weights):
        logits, loss_terms = self.distiller(images, targets, weights)
        return logits.detach(), loss_terms


# -------------------------------------------------------------------- fit


def fit(cfg: RunConfig, on_step: Optional[Callable[[int, int], None]] = None) -> RunResult:
    """Train ``cfg.student`` with ``cfg.method`` (a single method) and return the result.

    ``on_step(epoch, step)`` is called after every optimizer step, ``step``
    counting from 1 within the epoch (tests use it to interrupt a run).
    Raises :class:`TrainingDiverged` when a loss becomes non-finite (the bad
    state is not saved) and ``KeyboardInterrupt`` after saving on Ctrl-C.
    """
    validate(cfg)
    if "," in cfg.method:
        raise ConfigError(f"fit() runs one method; use run() for the list {cfg.method!r}.")
    placement = _placement(cfg.device)
    saved = _checkpoint_to_resume(cfg, Path(cfg.run_dir) / CHECKPOINT_FILE, placement.world_size)
    _seed_everything(cfg.seed)
    with _DeferredInterrupt() as interrupt:
        training = _Training(cfg, placement, saved)
        training.write_run_files()
        for epoch in range(training.start_epoch, cfg.epochs + 1):
            if training.agree(interrupt.requested):
                training.stop_between_epochs(epoch)
            sums, steps_trained, seconds = training.train_epoch(epoch, interrupt, on_step)
            training.end_epoch(epoch, sums, steps_trained, seconds)
        result = training.finish()
        # A Ctrl-C during the last evaluation: the run is complete and saved; stop what called us (run()'s next method).
        if training.agree(interrupt.requested):
            raise KeyboardInterrupt
    return result


class _Training:
    """The state of one :func:`fit` call and the steps fit() is made of."""

    def __init__(self, cfg: RunConfig, placement: _Placement, saved: Optional[dict]) -> None:
        self.cfg, self.placement = cfg, placement
        self.terms = parse_method(cfg.method)
        device = placement.device
        if device.type == "cuda":
            # Fixed input shapes: let cuDNN time its algorithms once and keep the fastest.
            torch.backends.cudnn.benchmark = True
        self.autocast_dtype = amp_dtype(device, cfg.amp)
        self.channels_last = cfg.channels_last and device.type == "cuda"
        self.run_dir = Path(cfg.run_dir)
        self.checkpoint_path = self.run_dir / CHECKPOINT_FILE

        def load() -> data_mod.DataBundle:
            return load_data(cfg, download=cfg.download and placement.is_main)

        self.bundle = _main_first(placement, load) if cfg.download else load()
        loader_args = dict(device=device, num_workers=cfg.num_workers, seed=cfg.seed, rank=placement.rank,
                           world_size=placement.world_size, on_device=cfg.data_on_device)
        self.train_loader = data_mod.make_loader(self.bundle.train, cfg.batch_size, train=True, **loader_args)
        self.test_loader = data_mod.make_loader(self.bundle.test, max(cfg.batch_size, 256), train=False, **loader_args)
        for loader in (self.train_loader, self.test_loader):
            if isinstance(loader, torch.utils.data.DataLoader) and loader.num_workers > 0 and loader.worker_init_fn is None:
                loader.worker_init_fn = _workers_ignore_sigint
        self.steps_per_epoch = min(len(self.train_loader), cfg.max_steps_per_epoch or len(self.train_loader))

        student = models.create(cfg.student, num_classes=self.bundle.num_classes)
        self.teacher = _build_teacher(cfg, self.bundle.num_classes, placement) if _uses_teacher(self.terms) else None
        self.distiller = Distiller(
            student,
            self.teacher,
            terms=[t for t in self.terms if t != "edt"],
            kd_temperature=cfg.kd_temperature,
            gkd_temperature=cfg.gkd_temperature,
            teacher_bn_train=cfg.teacher_bn_train,
        ).to(device)
        if self.channels_last:
            self.distiller = self.distiller.to(memory_format=torch.channels_last)
        self.schedule = schedules.get(cfg.schedule, epochs=cfg.epochs) if "edt" in self.terms else None
        self.optimizer = _sgd(cfg, self.distiller.trainable_parameters(), device)
        self.lr_scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=list(cfg.lr_milestones), gamma=cfg.lr_gamma)
        # Loss scaling guards fp16 gradients against underflow; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.autocast_dtype == torch.float16)

        self.metrics: List[dict] = []
        self.start_epoch, self.start_step, self.partial_sums = 1, 0, None
        self.teacher_metrics: Optional[Dict[str, float]] = None
        self.last_saved: Optional[str] = None
        self.resume_rng: Optional[dict] = None
        self.first_bad_step: Optional[torch.Tensor] = None  # set per epoch by train_epoch
        if saved is not None:
            self._restore(saved)
        if self.teacher is not None and self.teacher_metrics is None:
            self.teacher_metrics = evaluate(self.teacher, self.test_loader, device, self.autocast_dtype,
                                            placement.world_size, self.channels_last)
            if placement.is_main:
                _warn_if_useless_teacher(self.teacher_metrics, self.bundle.num_classes)
        if cfg.compile:
            self.distiller.student.compile()
            if self.teacher is not None:
                self.teacher.compile()
        self.train_step = TrainStep(self._model_for_step(), self.distiller.terms, self.optimizer, self.scaler, device,
                                    self.autocast_dtype, cfg.channels_last)

    # -- setup

    def _restore(self, saved: dict) -> None:
        try:
            self.distiller.load_trainable_state_dict(saved["trainable"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.lr_scheduler.load_state_dict(saved["lr_scheduler"])
            self.scaler.load_state_dict(saved["scaler"])
            _set_rng_state(saved["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"{self.checkpoint_path} does not fit this run ({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}); "
                "move it away or pick another run folder."
            ) from None
        self.metrics = list(saved["metrics"])
        self.start_epoch, self.start_step, self.partial_sums = saved["epoch"], saved["step"], saved.get("partial")
        self.teacher_metrics = saved.get("teacher_metrics")
        self.resume_rng = saved["rng"]
        self.last_saved = self._position(saved["epoch"], saved["step"])

    def _model_for_step(self) -> nn.Module:
        if self.placement.world_size == 1:
            return self.distiller
        # With EDT, or a loss weight of 0, some trainable parameters get no gradient in
        # some steps (the classifier in the CD-only warm-up, the connectors when the CD
        # weight is 0); DDP must then look for them every step, which costs a graph walk.
        weights_vary = self.schedule is not None or any(self.cfg.weights.get(t, 0.0) == 0 for t in self.distiller.terms)
        device = self.placement.device
        return nn.parallel.DistributedDataParallel(
            _DetachedLogits(self.distiller),
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=weights_vary,
            gradient_as_bucket_view=True,
        )

    def write_run_files(self) -> None:
        if self.placement.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / CONFIG_FILE).write_text(json.dumps(_config_dict(self.cfg), indent=2))
            _write_metrics(self.run_dir, self.metrics)

    # -- one epoch

    def _set_data_epoch(self, epoch: int) -> None:
        loader = self.train_loader
        if hasattr(loader, "set_epoch"):  # DeviceLoader: its permutation and augmentation are seeded by the epoch
            loader.set_epoch(epoch)
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # EpochSampler: order and augmentation seeds follow the epoch
            sampler.set_epoch(epoch)

    def train_epoch(self, epoch: int, interrupt: _DeferredInterrupt, on_step) -> Tuple[torch.Tensor, int, float]:
        """Train one epoch; returns this process's running sums, steps trained and seconds."""
        cfg, world_size, device = self.cfg, self.placement.world_size, self.placement.device
        self._set_data_epoch(epoch)
        first_step = self.start_step if epoch == self.start_epoch else 0
        # Running sums on the device, read at log points only: weighted terms..., correct, samples, steps.
        sums = torch.zeros(len(self.distiller.terms) + 3, device=device, dtype=torch.float64)
        if first_step and self.partial_sums is not None and self.placement.is_main:
            # Saved sums are already totals over all processes: added once, on rank 0.
            sums += torch.tensor(self.partial_sums["sums"], dtype=torch.float64, device=device)
        # Per loss term, the first step of this epoch whose value was non-finite (inf: none yet),
        # kept on the device so that watching costs no sync; read at log points.
        self.first_bad_step = torch.full((len(self.distiller.terms),), math.inf, device=device, dtype=torch.float64)
        self.distiller.train()
        bar = self._progress_bar(epoch, first_step)
        started = time.perf_counter()
        step = first_step
        # A sampler that can start part-way skips the steps already trained; other loaders replay them.
        skipped = first_step if isinstance(getattr(self.train_loader, "sampler", None), data_mod.EpochSampler) else 0
        if skipped:
            if skipped < self.steps_per_epoch:  # else the epoch was complete: nothing left to draw
                self.train_loader.sampler.start_at(skipped * cfg.batch_size)
            if self.resume_rng is not None:
                _set_rng_state(self.resume_rng)
        try:
            batches = itertools.islice(self.train_loader, self.steps_per_epoch - skipped)
            for step_index, (images, labels) in enumerate(batches, start=skipped):
                if step_index < first_step:
                    # Replaying the epoch's data stream (and its augmentation RNG) up to where the run stopped.
                    if step_index == first_step - 1 and self.resume_rng is not None:
                        # A loader may augment with the global RNG, which the replay just drew
                        # from; the next batch must see it as the interrupted run left it.
                        _set_rng_state(self.resume_rng)
                    continue
                weights = _weights_for(cfg, self.terms, epoch + step_index / self.steps_per_epoch, self.schedule)
                stats = self.train_step(images, labels, weights)
                sums += stats
                step = step_index + 1
                went_bad = ~torch.isfinite(stats[: len(self.distiller.terms)]) & torch.isinf(self.first_bad_step)
                self.first_bad_step = torch.where(went_bad, float(step), self.first_bad_step)
                if bar is not None:
                    bar.update(len(labels) * world_size)
                if step % _LOG_EVERY == 0 or step == self.steps_per_epoch:
                    self._check_health(epoch, interrupt)
                    if bar is not None:
                        bar.set_postfix(loss=f"{sums[:-3].sum().item() / max(sums[-1].item(), 1):.3f}")
                if on_step is not None:
                    on_step(epoch, step)
                if world_size == 1:
                    interrupt.raise_if_requested()  # alone, a process can stop after any step; together, at log points
        except KeyboardInterrupt:
            if bar is not None:
                bar.close()
            self._save_on_interrupt(epoch, step, sums, interrupt)
            raise
        if bar is not None:
            bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the epoch's time includes its queued kernels
        return sums, step - first_step, time.perf_counter() - started

    def _progress_bar(self, epoch: int, first_step: int):
        if not (self.cfg.progress and self.placement.is_main):
            return None
        from tqdm.auto import tqdm

        per_step = self.cfg.batch_size * self.placement.world_size
        return tqdm(total=self.steps_per_epoch * per_step, initial=first_step * per_step, desc=f"epoch {epoch}/{self.cfg.epochs}",
                    unit="img", unit_scale=True, leave=False, dynamic_ncols=True, mininterval=1.0)

    def _check_health(self, epoch: int, interrupt: _DeferredInterrupt) -> None:
        """At a log point: stop on a non-finite loss or a Ctrl-C, every process alike.

        Under torchrun one small all-reduce (a minimum) makes a loss that went bad
        on one process, or a Ctrl-C that reached one process, stop all of them at
        this same step, so none is left waiting in a collective.
        """
        requested = torch.full((1,), -float(interrupt.requested), device=self.placement.device, dtype=torch.float64)
        status = _all_reduce(torch.cat([self.first_bad_step, requested]), self.placement.world_size, dist.ReduceOp.MIN)
        *first_bad, stop = status.tolist()
        self._raise_if_diverged(first_bad, epoch)
        if stop < 0:
            interrupt.requested = True
            raise KeyboardInterrupt

    def _check_finite(self, epoch: int) -> None:
        """Raise TrainingDiverged if any process saw a non-finite loss this epoch."""
        first_bad = _all_reduce(self.first_bad_step.clone(), self.placement.world_size, dist.ReduceOp.MIN)
        self._raise_if_diverged(first_bad.tolist(), epoch)

    def _raise_if_diverged(self, first_bad: List[float], epoch: int) -> None:
        bad = sorted((step, term) for term, step in zip(self.distiller.terms, first_bad) if math.isfinite(step))
        if not bad:
            return
        (step, term), others = bad[0], [t for _, t in bad[1:]]
        also = f" (then also {', '.join(map(repr, others))})" if others else ""
        where = (f"the last good checkpoint is {self.checkpoint_path} ({self.last_saved})" if self.last_saved
                 else "no checkpoint had been written yet")
        raise TrainingDiverged(
            f"loss term {term!r} became non-finite (NaN or infinite) at step {int(step)} of epoch {epoch}{also}, so "
            f"training stopped and the bad state was not saved; {where} — start again with a lower learning rate or "
            f"a lower weight for {term!r}, in a new run folder."
        )

    def stop_between_epochs(self, epoch: int) -> None:
        """Ctrl-C during setup or an evaluation: nothing has changed since the last save, so just stop."""
        if self.placement.is_main:
            where = (f"the last checkpoint is {self.checkpoint_path} ({self.last_saved})" if self.last_saved
                     else "nothing had been trained yet")
            print(f"interrupted before epoch {epoch}: {where}; resume with --resume (resume=True).", flush=True)
        raise KeyboardInterrupt

    def _save_on_interrupt(self, epoch: int, step: int, sums: torch.Tensor, interrupt: _DeferredInterrupt) -> None:
        if interrupt.forced:
            # A second Ctrl-C can land mid-step, so this state may be half an update: not saved.
            if self.placement.is_main:
                where = f"{self.checkpoint_path} ({self.last_saved})" if self.last_saved else "none was written yet"
                print(f"stopped at once without saving; the last checkpoint is {where}.", flush=True)
            return
        # Every process reaches this point at the same step (the stop was agreed at a log
        # point), so the sums can be combined: the checkpoint holds totals over all processes.
        self._check_finite(epoch)
        totals = _all_reduce(sums.clone(), self.placement.world_size)
        self._save(epoch, step, {"sums": totals.tolist()})
        # The others wait for rank 0's write: torchrun stops every process once one exits.
        _barrier(self.placement)
        if self.placement.is_main:
            print(f"interrupted in epoch {epoch} at step {step}: state saved to {self.checkpoint_path}; "
                  "resume with --resume (resume=True).", flush=True)

    # -- end of an epoch

    def _share_rank0_buffers(self) -> None:
        """DDP keeps parameters identical, but each process's last forward updated its own
        BatchNorm statistics: take rank 0's everywhere, so every process evaluates the model that is saved."""
        if self.placement.world_size > 1:
            for buffer in self.distiller.buffers():
                dist.broadcast(buffer, src=0)

    def end_epoch(self, epoch: int, sums: torch.Tensor, steps_trained: int, seconds: float) -> None:
        world_size = self.placement.world_size
        self._check_finite(epoch)
        _all_reduce(sums, world_size)
        lr_now = self.optimizer.param_groups[0]["lr"]
        with warnings.catch_warnings():
            # Resumed at an epoch's end, this process made no optimizer step before this scheduler
            # step and torch warns; the run that made the epoch's steps had the order right.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.lr_scheduler.step()
        self._share_rank0_buffers()
        test = evaluate(self.distiller.student, self.test_loader, self.placement.device, self.autocast_dtype,
                        world_size, self.channels_last)
        *term_sums, correct, samples, steps_done = sums.tolist()
        steps_done = max(steps_done, 1.0)
        row = {
            "epoch": epoch,
            "lr": lr_now,
            **{f"w_{t}": v for t, v in _weights_for(self.cfg, self.terms, epoch, self.schedule).items()},
            # weighted loss terms, averaged over the epoch's steps (and processes)
            **{f"loss_{t}": v / steps_done for t, v in zip(self.distiller.terms, term_sums)},
            "train_top1": 100 * correct / max(samples, 1.0),
            "test_top1": test["top1"],
            "test_top5": test["top5"],
            "test_loss": test["loss"],
            "images_per_s": steps_trained * self.cfg.batch_size * world_size / max(seconds, 1e-9),
            "epoch_seconds": seconds,
        }
        row["train_loss"] = sum(row[f"loss_{t}"] for t in self.distiller.terms)
        self.metrics.append(row)
        self._save(epoch + 1, 0, None)
        if self.placement.is_main:
            _write_metrics(self.run_dir, self.metrics)
            print(_summary_line(row, self.cfg.epochs, self.cfg.method), flush=True)

    def _position(self, epoch: int, step: int) -> str:
        return f"end of epoch {epoch - 1}" if step == 0 else f"epoch {epoch}, step {step}"

    def _save(self, epoch: int, step: int, partial_sums: Optional[dict]) -> None:
        """The state to resume from at (epoch, step): rank 0 writes it for everyone."""
        self.last_saved = self._position(epoch, step)
        if not self.placement.is_main:
            return
        ckpt.atomic_save(
            {
                "format": ckpt.TRAINING_FORMAT,
                "config": _config_dict(self.cfg),
                "num_classes": self.bundle.num_classes,
                "world_size": self.placement.world_size,
                "epoch": epoch,
                "step": step,
                "partial": partial_sums,
                "trainable": self.distiller.trainable_state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": _rng_state(),
                "metrics": self.metrics,
                "teacher_metrics": self.teacher_metrics,
            },
            self.checkpoint_path,
        )

    # -- the end

    def agree(self, flag: bool) -> bool:
        """True on every process if ``flag`` is True on any (one collective under torchrun)."""
        if self.placement.world_size == 1:
            return flag
        value = torch.full((1,), float(flag), device=self.placement.device)
        return bool(_all_reduce(value, self.placement.world_size, dist.ReduceOp.MAX).item())

    def finish(self) -> RunResult:
        metrics = self.metrics
        final = {"top1": metrics[-1]["test_top1"], "top5": metrics[-1]["test_top5"], "loss": metrics[-1]["test_loss"]} if metrics else {}
        if self.placement.is_main:
            ckpt.save_model(self.distiller.student, self.run_dir / MODEL_FILE, self.cfg.student, self.bundle.num_classes,
                            method=self.cfg.method, final=final)
        # Nobody reads model.pt (e.g. as the next method's teacher) before rank 0 has written it.
        _barrier(self.placement)
        return RunResult(run_dir=self.run_dir, method=self.cfg.method, metrics=metrics, final=final,
                         model=self.distiller.student, teacher_metrics=self.teacher_metrics)


def _summary_line(row: dict, epochs: int, method: str) -> str:
    terms = " ".join(f"{k[5:]}={v:.3f}" for k, v in row.items() if k.startswith("loss_"))
    return (
        f"[{method}] epoch {row['epoch']:>3}/{epochs}  lr {row['lr']:.4g}  loss {row['train_loss']:.3f} ({terms})  "
        f"train {row['train_top1']:.1f}%  test top-1 {row['test_top1']:.2f}% top-5 {row['test_top5']:.2f}%  "
        f"{row['images_per_s']:.0f} img/s  {row['epoch_seconds']:.1f}s"
    )


# -------------------------------------------------------------------- run


def _slug(method: str) -> str:
    """The sub-folder name of a method: 'cd+gkd+edt' -> 'cd_gkd_edt', 'student' -> 'student'."""
    return method.strip().replace("+", "_")


# What a reused teacher must share with the run that reuses it.
_TEACHER_SETTINGS = ("student", "data", "data_options", "image_size")


def _check_reusable_teacher(teacher_dir: Path, teacher_cfg: RunConfig) -> None:
    config_path = teacher_dir / CONFIG_FILE
    try:
        trained = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return  # no record of how it was trained: the model file's own name and class count are still checked
    wanted = _config_dict(teacher_cfg)
    diffs = [f"{k}: {trained.get(k)!r} (wanted {wanted[k]!r})" for k in _TEACHER_SETTINGS if trained.get(k) != wanted[k]]
    if diffs:
        raise ConfigError(
            f"the teacher in {teacher_dir} was trained with other settings ({'; '.join(diffs)}); use another --run-dir, "
            f"or pass --teacher-checkpoint {teacher_dir / MODEL_FILE} to use it anyway."
        )


def is_main_process() -> bool:
    """True alone, and on rank 0 under torchrun: the process that prints reports."""
    return int(os.environ.get("RANK", "0")) == 0


def teacher_dir(run_dir: str | os.PathLike) -> Path:
    """Where :func:`ensure_teacher` (and `cdlib train`) keep the teacher of an experiment folder."""
    return Path(run_dir) / "teacher"


def ensure_teacher(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``teacher_checkpoint`` set, training the teacher first if there is none.

    A config that names a checkpoint or pretrained weights comes back unchanged.
    Otherwise the teacher lives in ``<run_dir>/teacher``: reused when its
    ``model.pt`` exists (and was trained on the same data), resumed when a
    previous attempt was interrupted, trained from scratch otherwise — so every
    notebook and command sharing a run folder shares one teacher. Under torchrun
    all processes train it together; rank 0 writes it.
    """
    validate(cfg)
    if cfg.teacher_checkpoint or cfg.teacher_pretrained:
        return cfg
    folder = teacher_dir(cfg.run_dir)
    # The teacher folder belongs to this run folder, so an unfinished one is resumed, never overwritten.
    teacher_cfg = cfg.replace(student=cfg.teacher, method="student", run_dir=str(folder), resume=True)
    if (folder / MODEL_FILE).exists():
        _check_reusable_teacher(folder, teacher_cfg)
    else:
        if is_main_process():
            print(f"no teacher checkpoint given: training the teacher {cfg.teacher} first into {folder}", flush=True)
        fit(teacher_cfg)
    return cfg.replace(teacher_checkpoint=str(folder / MODEL_FILE))


def run(cfg: RunConfig) -> Dict[str, RunResult]:
    """Train the teacher if needed (:func:`ensure_teacher`), then every method in ``cfg.method`` (','-separated).

    ``cfg.run_dir`` is an experiment folder: each method trains in its own
    sub-folder ``<run_dir>/<method>`` (``cd+gkd+edt`` -> ``cd_gkd_edt``).
    """
    validate(cfg)
    methods = [m.strip() for m in cfg.method.split(",") if m.strip()]
    if any(_uses_teacher(parse_method(m)) for m in methods):
        cfg = ensure_teacher(cfg)
    results: Dict[str, RunResult] = {}
    for method in methods:
        results[method] = fit(cfg.replace(method=method, run_dir=str(Path(cfg.run_dir) / _slug(method))))
    if is_main_process() and len(methods) > 1:
        print(comparison_table(results, cfg), flush=True)
    return results


def comparison_table(results: Dict[str, RunResult], cfg: Optional[RunConfig] = None) -> str:
    """A plain-text table of the final test accuracy of each run (and the teacher)."""
    rows = []
    teacher = next((r.teacher_metrics for r in results.values() if r.teacher_metrics), None)
    if teacher:
        rows.append((f"teacher {cfg.teacher if cfg else ''}".strip(), teacher["top1"], teacher["top5"], float("nan")))
    for method, r in results.items():
        label = "student alone" if parse_method(method) == ("ce",) else method
        seconds = sum(m["epoch_seconds"] for m in r.metrics)
        rows.append((label, r.final.get("top1", float("nan")), r.final.get("top5", float("nan")), seconds))
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{'method':<{width}}{'top-1 %':>9}{'top-5 %':>9}{'train s':>9}", "-" * (width + 27)]
    for label, top1, top5, seconds in rows:
        secs = "" if math.isnan(seconds) else f"{seconds:.1f}"
        lines.append(f"{label:<{width}}{top1:>9.2f}{top5:>9.2f}{secs:>9}")
    return "\n".join(lines)

"""The trainer: one code path for a CPU, one GPU or many (``torchrun``).

``fit(cfg)`` trains one model (``cfg.method == "student"`` for plain
cross-entropy, e.g. a teacher) or distils one student; ``run(cfg)`` adds what
a user expects around it: it trains the teacher first when no checkpoint is
given, runs a ','-separated list of methods and returns their results.

A run folder holds ``config.json``, ``metrics.jsonl`` (one line per epoch),
``checkpoint.pt`` (written atomically every epoch and on Ctrl-C, with the
optimizer, scaler, schedule position and RNG state) and, when finished,
``model.pt`` (the trained student, reusable as a teacher).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt
from . import data as data_mod
from . import models, schedules
from .device import amp_dtype, pick_device
from .distiller import Distiller
from .errors import CDLibError, ConfigError
from .recipes import LOSS_TERMS, RunConfig, parse_method, validate

__all__ = ["fit", "run", "evaluate", "RunResult", "TrainingDiverged", "read_metrics", "comparison_table"]

METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"
_LOG_EVERY = 20  # steps between progress-bar updates (each one syncs with the device)


class TrainingDiverged(CDLibError):
    """A loss became NaN or infinite."""


class _DeferredInterrupt:
    """Holds Ctrl-C until the current optimizer step is complete, so the
    checkpoint written on interrupt is a consistent state, never half a step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame) -> None:
        self.requested = True

    def __enter__(self) -> "_DeferredInterrupt":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def raise_if_requested(self) -> None:
        if self.requested:
            self.requested = False
            raise KeyboardInterrupt


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


# ------------------------------------------------------------ distributed


def _distributed_context() -> tuple:
    """(rank, world_size, local_rank); initialises the process group under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def _all_reduce_sum(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


# -------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, autocast_dtype: Optional[torch.dtype] = None, world_size: int = 1) -> Dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy of ``model`` over ``loader``."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss, top1, top5, count
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with _autocast(device, autocast_dtype):
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        hits = topk == labels[:, None]
        sums += torch.stack(
            [F.cross_entropy(logits, labels, reduction="sum"), hits[:, 0].sum(), hits.any(dim=1).sum(), torch.tensor(len(labels), device=device)]
        ).to(sums.dtype)
    _all_reduce_sum(sums, world_size)
    model.train(was_training)
    loss, top1, top5, count = sums.tolist()
    if count == 0:
        raise ConfigError("the evaluation set is empty; check the data folder.")
    return {"loss": loss / count, "top1": 100 * top1 / count, "top5": 100 * top5 / count}


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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


# Settings that must agree between a run and the checkpoint it resumes.
_RESUME_KEYS = ("data", "data_options", "student", "teacher", "method", "schedule", "epochs", "batch_size", "seed", "image_size")


def _check_resumable(saved: dict, cfg: RunConfig, path: Path) -> None:
    current = _config_dict(cfg)
    needs_teacher = any(t != "ce" and t != "edt" for t in parse_method(cfg.method))
    keys = [k for k in _RESUME_KEYS if k != "teacher" or needs_teacher]
    diffs = [f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in keys if saved.get(k) != current[k]]
    if diffs:
        raise ConfigError(
            f"cannot resume {path}: it was started with different settings ({'; '.join(diffs)}); "
            "use the original settings or another --run-dir."
        )


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


def _build_teacher(cfg: RunConfig, num_classes: int) -> nn.Module:
    teacher = models.create(cfg.teacher, num_classes=num_classes, pretrained=cfg.teacher_pretrained)
    if cfg.teacher_checkpoint:
        ckpt.load_model_weights(teacher, cfg.teacher_checkpoint, cfg.teacher, what="teacher checkpoint")
    elif not cfg.teacher_pretrained:
        raise ConfigError(
            f"method {cfg.method!r} needs a trained teacher: pass teacher_checkpoint (CLI: --teacher-checkpoint), "
            "or use cdlib.train.run / `cdlib distill`, which train one first."
        )
    return teacher


# -------------------------------------------------------------------- fit


class TrainStep:
    """One optimizer step: the hot path, shared by the trainer and the benchmark.

    Returns the step's statistics as a float64 tensor on the device —
    (weighted loss of each term..., correct predictions, samples, 1) — so the
    caller can accumulate them without a host-device sync per step.
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
        with _autocast(self.device, self.autocast_dtype):
            logits, loss_terms = self.model(images, labels, weights)
        # With every weight at 0 nothing is learned, but the step stays well-defined.
        total = sum(loss_terms.values()) if loss_terms else logits.sum() * 0.0
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with torch.no_grad():
            zero = torch.zeros((), device=self.device, dtype=torch.float64)
            values = [loss_terms[t].detach().double() if t in loss_terms else zero for t in self.terms]
            correct = (logits.detach().argmax(1) == labels).sum().double()
            return torch.stack(values + [correct, correct.new_tensor(float(len(labels))), correct.new_tensor(1.0)])


def fit(cfg: RunConfig, on_step: Optional[Callable[[int, int], None]] = None) -> RunResult:
    """Train ``cfg.student`` with ``cfg.method`` (a single method) and return the result.

    ``on_step(epoch, step)`` is called after every optimizer step (tests use it
    to interrupt a run).
    """
    validate(cfg)
    if "," in cfg.method:
        raise ConfigError(f"fit() runs one method; use run() for the list {cfg.method!r}.")
    terms = parse_method(cfg.method)
    rank, world_size, local_rank = _distributed_context()
    is_main = rank == 0
    device = pick_device(cfg.device)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    autocast_dtype = amp_dtype(device, cfg.amp)
    run_dir = Path(cfg.run_dir)
    checkpoint_path = run_dir / CHECKPOINT_FILE

    saved = None
    if checkpoint_path.exists():
        if not cfg.resume:
            raise ConfigError(
                f"{run_dir} already holds a checkpoint from an earlier run; pass resume=True (CLI: --resume) "
                "to continue it, or choose another run folder."
            )
        saved = ckpt.safe_load(checkpoint_path, "training checkpoint")
        if saved.get("format") != ckpt.TRAINING_FORMAT:
            raise ConfigError(f"{checkpoint_path} is not a cdlib training checkpoint; move it away or pick another run folder.")
        _check_resumable(saved["config"], cfg, checkpoint_path)

    _seed_everything(cfg.seed)
    bundle = data_mod.load(cfg.data, root=cfg.data_root, download=cfg.download and is_main, image_size=cfg.image_size, **cfg.data_options)
    loader_args = dict(device=device, num_workers=cfg.num_workers, seed=cfg.seed, rank=rank, world_size=world_size, on_device=cfg.data_on_device)
    train_loader = data_mod.make_loader(bundle.train, cfg.batch_size, train=True, **loader_args)
    test_loader = data_mod.make_loader(bundle.test, max(cfg.batch_size, 256), train=False, **loader_args)

    student = models.create(cfg.student, num_classes=bundle.num_classes)
    needs_teacher = any(t not in ("ce", "edt") for t in terms)
    teacher = _build_teacher(cfg, bundle.num_classes) if needs_teacher else None
    distiller = Distiller(
        student,
        teacher,
        terms=[t for t in terms if t != "edt"],
        kd_temperature=cfg.kd_temperature,
        gkd_temperature=cfg.gkd_temperature,
        teacher_bn_train=cfg.teacher_bn_train,
    ).to(device)
    if device.type == "cuda" and cfg.channels_last:
        distiller = distiller.to(memory_format=torch.channels_last)
    schedule = schedules.get(cfg.schedule, epochs=cfg.epochs) if "edt" in terms else None

    optimizer_kwargs = dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if device.type == "cuda":
        optimizer_kwargs["fused"] = True
    optimizer = torch.optim.SGD(list(distiller.trainable_parameters()), **optimizer_kwargs)
    lr_scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.lr_milestones), gamma=cfg.lr_gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)

    metrics: List[dict] = []
    start_epoch, start_step = 1, 0
    partial: Optional[dict] = None
    if saved is not None:
        distiller.load_trainable_state_dict(saved["trainable"])
        optimizer.load_state_dict(saved["optimizer"])
        lr_scheduler.load_state_dict(saved["lr_scheduler"])
        scaler.load_state_dict(saved["scaler"])
        _set_rng_state(saved["rng"])
        metrics = list(saved["metrics"])
        start_epoch, start_step, partial = saved["epoch"], saved["step"], saved.get("partial")

    teacher_metrics = None
    if teacher is not None:
        teacher_metrics = saved.get("teacher_metrics") if saved is not None else None
        if teacher_metrics is None:
            teacher_metrics = evaluate(teacher, test_loader, device, autocast_dtype, world_size)

    model_for_step: nn.Module = distiller
    if world_size > 1:
        model_for_step = nn.parallel.DistributedDataParallel(
            distiller, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        distiller.student.compile()
        if teacher is not None:
            teacher.compile()

    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(_config_dict(cfg), indent=2))
        _write_metrics(run_dir, metrics)

    def save_state(epoch: int, step: int, partial_sums: Optional[dict]) -> None:
        if not is_main:
            return
        ckpt.atomic_save(
            {
                "format": ckpt.TRAINING_FORMAT,
                "config": _config_dict(cfg),
                "epoch": epoch,
                "step": step,
                "partial": partial_sums,
                "trainable": distiller.trainable_state_dict(),
                "optimizer": optimizer.state_dict(),
                "lr_scheduler": lr_scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": _rng_state(),
                "metrics": metrics,
                "teacher_metrics": teacher_metrics,
            },
            checkpoint_path,
        )

    train_step = TrainStep(model_for_step, distiller.terms, optimizer, scaler, device, autocast_dtype, cfg.channels_last)
    steps_per_epoch = len(train_loader)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    progress_enabled = cfg.progress and is_main
    if progress_enabled:
        from tqdm.auto import tqdm

    with _DeferredInterrupt() as interrupt:
        for epoch in range(start_epoch, cfg.epochs + 1):
            if hasattr(train_loader, "set_epoch"):
                train_loader.set_epoch(epoch)
            if getattr(train_loader, "sampler", None) is not None and hasattr(train_loader.sampler, "set_epoch"):
                train_loader.sampler.set_epoch(epoch)
            if getattr(train_loader, "generator", None) is not None:
                train_loader.generator.manual_seed(cfg.seed * 100_003 + epoch)
            first_step = start_step if epoch == start_epoch else 0
            # Running sums on the device (read at log points only): terms..., correct, samples, steps.
            sums = torch.zeros(len(distiller.terms) + 3, device=device, dtype=torch.float64)
            if first_step and partial is not None:
                sums += torch.tensor(partial["sums"], dtype=torch.float64, device=device)
            distiller.train()
            bar = tqdm(total=steps_per_epoch * cfg.batch_size * world_size, initial=first_step * cfg.batch_size * world_size,
                       desc=f"epoch {epoch}/{cfg.epochs}", unit="img", unit_scale=True, leave=False, dynamic_ncols=True, mininterval=1.0) if progress_enabled else None
            epoch_start = time.perf_counter()
            step = first_step
            try:
                for step_index, (images, labels) in enumerate(train_loader):
                    if step_index >= steps_per_epoch:
                        break
                    if step_index < first_step:
                        continue  # replaying the epoch's data stream up to where the run stopped
                    weights = _weights_for(cfg, terms, epoch + step_index / steps_per_epoch, schedule)
                    sums += train_step(images, labels, weights)
                    step = step_index + 1
                    if bar is not None:
                        bar.update(len(labels) * world_size)
                    if step % _LOG_EVERY == 0 or step == steps_per_epoch:
                        _check_finite(sums, distiller.terms, epoch, step, checkpoint_path)
                        if bar is not None:
                            bar.set_postfix(loss=f"{sums[:-3].sum().item() / max(sums[-1].item(), 1):.3f}")
                    if on_step is not None:
                        on_step(epoch, step)
                    interrupt.raise_if_requested()
            except KeyboardInterrupt:
                if bar is not None:
                    bar.close()
                _check_finite(sums, distiller.terms, epoch, step, checkpoint_path)
                save_state(epoch, step, {"sums": sums.tolist()})
                if is_main:
                    print(f"interrupted in epoch {epoch} at step {step}: state saved to {checkpoint_path}; resume with --resume (resume=True).")
                raise
            if bar is not None:
                bar.close()
            _check_finite(sums, distiller.terms, epoch, step, checkpoint_path)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_seconds = time.perf_counter() - epoch_start
            _all_reduce_sum(sums, world_size)
            lr_now = optimizer.param_groups[0]["lr"]
            lr_scheduler.step()
            test = evaluate(distiller.student, test_loader, device, autocast_dtype, world_size)
            *term_sums, correct, samples, steps_done = sums.tolist()
            steps_done = max(steps_done, 1.0)
            row = {
                "epoch": epoch,
                "lr": lr_now,
                **{f"w_{t}": v for t, v in _weights_for(cfg, terms, epoch, schedule).items()},
                # weighted loss terms, averaged over the epoch's steps (and ranks)
                **{f"loss_{t}": v / steps_done for t, v in zip(distiller.terms, term_sums)},
                "train_top1": 100 * correct / max(samples, 1.0),
                "test_top1": test["top1"],
                "test_top5": test["top5"],
                "test_loss": test["loss"],
                "images_per_s": (step - first_step) * cfg.batch_size * world_size / max(train_seconds, 1e-9),
                "epoch_seconds": train_seconds,
            }
            row["train_loss"] = sum(row[f"loss_{t}"] for t in distiller.terms)
            metrics.append(row)
            save_state(epoch + 1, 0, None)
            if is_main:
                _write_metrics(run_dir, metrics)
                print(_summary_line(row, cfg.epochs, cfg.method), flush=True)

    final = {"top1": metrics[-1]["test_top1"], "top5": metrics[-1]["test_top5"], "loss": metrics[-1]["test_loss"]} if metrics else {}
    if is_main:
        ckpt.save_model(student, run_dir / MODEL_FILE, cfg.student, bundle.num_classes, method=cfg.method, final=final)
    if world_size > 1:
        dist.barrier()
    return RunResult(run_dir=run_dir, method=cfg.method, metrics=metrics, final=final, model=student, teacher_metrics=teacher_metrics)


def _check_finite(sums: torch.Tensor, terms: tuple, epoch: int, step: int, checkpoint_path: Path) -> None:
    values = sums[: len(terms)]
    if bool(torch.isfinite(values).all()):
        return
    bad = [t for t, v in zip(terms, values.tolist()) if not math.isfinite(v)]
    where = f"the last good checkpoint is {checkpoint_path}" if checkpoint_path.exists() else "no checkpoint had been written yet"
    raise TrainingDiverged(
        f"loss term {bad[0]!r} became non-finite in epoch {epoch} (by step {step}); training stopped and {where} — "
        "lower the learning rate or that term's weight, then rerun with resume."
    )


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


def _needs_teacher(method: str) -> bool:
    return any(t not in ("ce", "edt") for t in parse_method(method))


def run(cfg: RunConfig) -> Dict[str, RunResult]:
    """Train the teacher if needed, then every method in ``cfg.method`` (','-separated).

    ``cfg.run_dir`` is an experiment folder: each method trains in its own
    sub-folder ``<run_dir>/<method>`` (``cd+gkd+edt`` -> ``cd_gkd_edt``).
    Without a teacher checkpoint (and without pretrained weights) the teacher
    is trained first into ``<run_dir>/teacher`` and reused by every later
    call with the same run folder — across notebooks too.
    """
    validate(cfg)
    methods = [m.strip() for m in cfg.method.split(",") if m.strip()]
    is_main = int(os.environ.get("RANK", "0")) == 0
    if any(_needs_teacher(m) for m in methods) and not cfg.teacher_checkpoint and not cfg.teacher_pretrained:
        teacher_dir = Path(cfg.run_dir) / "teacher"
        if not (teacher_dir / MODEL_FILE).exists():
            if is_main:
                print(f"no teacher checkpoint given: training the teacher {cfg.teacher} first into {teacher_dir}", flush=True)
            # The teacher folder belongs to this run folder, so an unfinished one is resumed, never overwritten.
            fit(cfg.replace(student=cfg.teacher, method="student", run_dir=str(teacher_dir), resume=True))
        cfg = cfg.replace(teacher_checkpoint=str(teacher_dir / MODEL_FILE))
    results: Dict[str, RunResult] = {}
    for method in methods:
        results[method] = fit(cfg.replace(method=method, run_dir=str(Path(cfg.run_dir) / _slug(method))))
    if is_main and len(methods) > 1:
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

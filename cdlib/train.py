"""The trainer: one code path for a CPU, one GPU or many (``torchrun``).

``fit(cfg)`` trains one model (``cfg.method == "student"``: plain cross-entropy, e.g. a teacher) or
distils one student; ``run(cfg)`` also trains the teacher first when no checkpoint is given and runs a
','-separated list of methods. ``fit`` holds its run folder's lock (:mod:`cdlib.runlock`), clears the
temporary files of saves cut short, and writes ``checkpoint.pt`` atomically every epoch and on Ctrl-C or
SIGTERM.

Resuming is exact (:mod:`cdlib.resume`): a resumed run ends with the same weights and metrics as an
uninterrupted one. In-memory data sets replay the interrupted epoch's batches up to where it stopped (cheap);
a DataLoader with workers (ImageNet) skips them in its sampler (:class:`cdlib.data.EpochSampler`). Under
``torchrun`` rank 0 alone writes files, and what stops a run (a non-finite loss, Ctrl-C) is agreed by all
processes at log points (:class:`cdlib.step.LossWatch`), so none is left waiting.
"""

from __future__ import annotations

import contextlib
import itertools
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from . import checkpoint as ckpt
from . import data as data_mod
from . import distributed, resume, runfolder, runlock
from . import parts as parts_mod
from . import terms as term_table
from .distributed import Placement, is_main_process
from .errors import CDLibError, CheckpointError, ConfigError, from_os_error
from .interrupt import DeferredInterrupt
from .parts import weights_for
from .recipes import RunConfig, parse_method, validate
from .runfolder import CHECKPOINT_FILE, MODEL_FILE, RunResult
from .step import LossWatch, TrainStep, evaluate

__all__ = ["fit", "run", "ensure_teacher", "run_eta", "clock", "resume_message"]

_LOG_EVERY = 20  # steps between log points: the only places the loop waits for the device


def fit(cfg: RunConfig, on_step: Optional[Callable[[int, int], None]] = None) -> RunResult:
    """Train ``cfg.student`` with ``cfg.method`` (a single method) and return the result.

    ``on_step(epoch, step)`` is called after every optimizer step, ``step`` counting from 1 within the epoch
    (tests use it to interrupt a run). Raises :class:`TrainingDiverged` when a loss becomes non-finite (the
    bad state is not saved) and ``KeyboardInterrupt`` after saving on Ctrl-C.
    """
    validate(cfg)
    if "," in cfg.method:
        raise ConfigError(f"fit() runs one method; use run() for the list {cfg.method!r}.")
    place = distributed.placement(cfg.device)
    # Signals are held from here: a Ctrl-C or SIGTERM while the run starts is a one-line stop, not a traceback.
    with DeferredInterrupt() as interrupt:
        # A signal held between two phases of run() (the teacher's and this one): stop before starting.
        if distributed.agree(place, interrupt.requested):
            raise KeyboardInterrupt
        # The loaders' workers end with the run however it ends: left to Python's exit they can hang it.
        with _run_folder(cfg, place), data_mod.workers_ended(), _worker_deaths_said(cfg):
            training = _Training(cfg, place)
            training.write_run_files()
            for epoch in range(training.start_epoch, cfg.epochs + 1):
                if distributed.agree(place, interrupt.requested):
                    training.stop_between_epochs(epoch)
                sums, steps_trained, seconds = training.train_epoch(epoch, interrupt, on_step)
                training.end_epoch(epoch, sums, steps_trained, seconds)
            result = training.finish()
            # A Ctrl-C during the last evaluation: the run is complete and saved; stop what called us (the next method).
            if distributed.agree(place, interrupt.requested):
                raise KeyboardInterrupt
    return result


@contextlib.contextmanager
def _run_folder(cfg: RunConfig, place: Placement) -> Iterator[None]:
    """Hold the run folder's lock (rank 0 for all processes) and clear what interrupted saves left in it."""
    folder = Path(cfg.run_dir)
    with contextlib.ExitStack() as stack:
        refusal: Optional[ConfigError] = None
        try:
            stack.enter_context(runlock.held(folder, take=place.is_main))
        except ConfigError as exc:
            refusal = exc
        if distributed.agree(place, refusal is not None):
            raise refusal or ConfigError(f"rank 0 could not lock the run folder {folder}; see its message.")
        if place.is_main:
            freed = runlock.clean_interrupted_saves(folder)
            if freed:
                print(f"note: removed the temporary files ({freed / 2**20:.1f} MB) of saves cut short in {folder}.",
                      flush=True)
        yield


@contextlib.contextmanager
def _worker_deaths_said(cfg: RunConfig) -> Iterator[None]:
    """A DataLoader worker that died (the kernel's out-of-memory killer, a kill) as one sentence, not torch's
    traceback: what happened, what to change, and where the run can resume from."""
    try:
        yield
    except RuntimeError as exc:
        message = (str(exc).strip().splitlines() or [""])[0]
        if not message.startswith("DataLoader worker"):
            raise
        checkpoint = Path(cfg.run_dir) / CHECKPOINT_FILE
        where = (f"resume from {checkpoint} with --resume (resume=True)" if checkpoint.is_file()
                 else "start it again (no checkpoint had been written yet)")
        raise CDLibError(f"{message.rstrip('.')}: a data-loading process died (often the system running out of "
                         f"memory); lower --num-workers or --batch-size and {where}.") from None


class _Training:
    """The state of one :func:`fit` call and the steps fit() is made of."""

    def __init__(self, cfg: RunConfig, place: Placement) -> None:
        self.cfg, self.place = cfg, place
        self.terms = parse_method(cfg.method)
        self.run_dir = Path(cfg.run_dir)
        self.checkpoint_path = self.run_dir / CHECKPOINT_FILE
        saved = resume.checkpoint_to_resume(cfg, self.checkpoint_path, place.world_size) or {}  # {}: a fresh start
        resume.seed_everything(cfg.seed)
        self.parts = parts = parts_mod.build(cfg, place, self.terms)
        self.facts = resume.run_facts(cfg, parts)
        if saved:
            resume.check_facts(saved, self.facts, self.checkpoint_path)
            resume.restore(parts, saved, self.checkpoint_path)
            if place.is_main:
                print(resume_message(saved["epoch"], saved["step"], parts.steps_per_epoch, cfg.epochs), flush=True)
        self.metrics: List[dict] = list(saved.get("metrics", []))
        self.start_epoch, self.start_step = saved.get("epoch", 1), saved.get("step", 0)
        self.partial_sums, self.resume_rng = saved.get("partial"), saved.get("rng")
        self.teacher_metrics: Optional[Dict[str, float]] = saved.get("teacher_metrics")
        self.last_saved = resume.position(self.start_epoch, self.start_step) if saved else None
        # Wall time of each epoch this process trained (evaluation and saving included), for the run's ETA.
        self.epoch_walls: List[float] = []
        self._epoch_began: Optional[float] = None
        if parts.teacher is not None and self.teacher_metrics is None:
            self.teacher_metrics = evaluate(parts.teacher, parts.test_loader, place.device, parts.autocast_dtype,
                                            place.world_size, parts.channels_last)
            if place.is_main:
                parts_mod.warn_if_useless_teacher(self.teacher_metrics, parts.bundle.num_classes)
        if cfg.compile:
            parts.distiller.student.compile()
            if parts.teacher is not None:
                parts.teacher.compile()
        self.train_step = TrainStep(parts_mod.model_for_step(parts, cfg, place), parts.distiller.terms,
                                    parts.optimizer, parts.scaler, place.device, parts.autocast_dtype, cfg.channels_last)
        self.watch = LossWatch(parts.distiller.terms, place.device, place.world_size)

    def write_run_files(self) -> None:
        if self.place.is_main:
            try:
                runfolder.write_run_files(self.run_dir, self.cfg, self.metrics)
            except OSError as exc:
                raise from_os_error(exc, "write the run files into", self.run_dir) from None

    def _last_checkpoint(self) -> str:
        """Where the run can resume from, for a message."""
        return (f"the last good checkpoint is {self.checkpoint_path} ({self.last_saved})" if self.last_saved
                else "no checkpoint had been written yet")

    def _resume_note(self) -> str:
        """What the user can do after a failed save: resume only where a checkpoint exists."""
        return self._last_checkpoint() + (", resume from it with --resume" if self.last_saved else
                                          ", so there is nothing to resume; rerun the same command once fixed")

    # -- one epoch

    def train_epoch(self, epoch: int, interrupt: DeferredInterrupt, on_step) -> Tuple[torch.Tensor, int, float]:
        """Train one epoch; returns this process's running sums, steps trained and seconds."""
        first_step = self.start_step if epoch == self.start_epoch else 0
        sums = self._start_sums(first_step)
        self.watch.start_epoch()
        self.parts.distiller.train()
        bar = self._progress_bar(epoch, first_step)
        started = time.perf_counter()
        if self._epoch_began is not None:
            self.epoch_walls.append(started - self._epoch_began)
        self._epoch_began = started if first_step == 0 else None  # a resumed epoch's rest is no epoch's time
        step = first_step
        try:
            for step_index, images, labels in self._batches(epoch, first_step):
                weights = weights_for(self.cfg, self.terms, epoch + step_index / self.parts.steps_per_epoch,
                                      self.parts.schedule)
                stats = self.train_step(images, labels, weights)
                sums += stats
                step = step_index + 1
                self.watch.record(stats, step)
                bar.update(len(labels) * self.place.world_size)
                if step % _LOG_EVERY == 0 or step == self.parts.steps_per_epoch:
                    self.watch.check(epoch, interrupt, self._last_checkpoint())
                    if not bar.disable:
                        bar.set_postfix_str(self._postfix(sums, epoch, first_step, step, time.perf_counter() - started))
                if on_step is not None:
                    on_step(epoch, step)
                if self.place.world_size == 1 and interrupt.requested:
                    raise KeyboardInterrupt  # alone, a process can stop after any step; together, at log points
        except KeyboardInterrupt:
            bar.close()
            self._save_on_interrupt(epoch, step, sums, interrupt)
            raise
        bar.close()
        if self.place.device.type == "cuda":
            torch.cuda.synchronize(self.place.device)  # the epoch's time includes its queued kernels
        return sums, step - first_step, time.perf_counter() - started

    def _start_sums(self, first_step: int) -> torch.Tensor:
        """Running sums on the device, read at log points only: weighted terms..., correct, samples, steps."""
        device = self.place.device
        sums = torch.zeros(len(self.parts.distiller.terms) + 3, device=device, dtype=torch.float64)
        if first_step and self.partial_sums is not None and self.place.is_main:
            # Saved sums are already totals over all processes: added once, on rank 0.
            sums += torch.tensor(self.partial_sums["sums"], dtype=torch.float64, device=device)
        return sums

    def _batches(self, epoch: int, first_step: int) -> Iterator[Tuple[int, torch.Tensor, torch.Tensor]]:
        """(step index, images, labels) of the epoch's steps still to train, the data and RNG as an uninterrupted
        run would see them: a sampler that can start part-way skips the steps already trained; other loaders replay."""
        loader = self.parts.train_loader
        if hasattr(loader, "set_epoch"):  # DeviceLoader: its permutation and augmentation are seeded by the epoch
            loader.set_epoch(epoch)
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # EpochSampler: order and augmentation seeds follow the epoch
            sampler.set_epoch(epoch)
        skipped = first_step if isinstance(sampler, data_mod.EpochSampler) else 0
        if skipped:
            if skipped < self.parts.steps_per_epoch:  # else the epoch was complete: nothing left to draw
                sampler.start_at(skipped * self.cfg.batch_size)
            if self.resume_rng is not None:
                resume.set_rng_state(self.resume_rng)
        batches = itertools.islice(loader, self.parts.steps_per_epoch - skipped)
        for step_index, (images, labels) in enumerate(batches, start=skipped):
            if step_index < first_step:
                # Replaying the epoch's data stream (and its augmentation RNG) up to where the run stopped.
                if step_index == first_step - 1 and self.resume_rng is not None:
                    # A loader may augment with the global RNG, which the replay just drew from; the next batch
                    # must see it as the interrupted run left it.
                    resume.set_rng_state(self.resume_rng)
                continue
            yield step_index, images, labels

    def _progress_bar(self, epoch: int, first_step: int):
        """The epoch's progress bar; a disabled one (drawing nothing) without ``cfg.progress`` and on ranks > 0."""
        from tqdm.auto import tqdm

        per_step = self.cfg.batch_size * self.place.world_size
        return tqdm(total=self.parts.steps_per_epoch * per_step, initial=first_step * per_step,
                    desc=f"epoch {epoch}/{self.cfg.epochs}", unit="img", unit_scale=True, leave=False,
                    dynamic_ncols=True, mininterval=1.0, disable=not (self.cfg.progress and self.place.is_main))

    def _postfix(self, sums: torch.Tensor, epoch: int, first_step: int, step: int, elapsed: float) -> str:
        """The bar's tail: the epoch's mean loss and the time left for the whole run."""
        steps = self.parts.steps_per_epoch
        # Epochs timed before a resume come from the metrics (their training loops only).
        finished = self.epoch_walls or [row["epoch_seconds"] for row in self.metrics]
        eta = run_eta(self.cfg.epochs - epoch + 1 - step / steps, finished, elapsed, (step - first_step) / steps)
        loss = f"loss {sums[:-3].sum().item() / max(sums[-1].item(), 1):.3f}"
        return loss if eta is None else f"{loss}, run ETA {clock(eta)}"

    def stop_between_epochs(self, epoch: int) -> None:
        """Ctrl-C during setup or an evaluation: nothing has changed since the last save, so just stop."""
        if self.place.is_main:
            where = self._last_checkpoint() if self.last_saved else "nothing had been trained yet"
            print(f"interrupted before epoch {epoch}: {where}; resume with --resume (resume=True).", flush=True)
        raise KeyboardInterrupt

    def _save_on_interrupt(self, epoch: int, step: int, sums: torch.Tensor, interrupt: DeferredInterrupt) -> None:
        if interrupt.forced:
            # A second Ctrl-C can land mid-step, so this state may be half an update: not saved.
            if self.place.is_main:
                print(f"stopped at once without saving; {self._last_checkpoint()}.", flush=True)
            return
        # Every process reaches this point at the same step (the stop was agreed at a log point), so the sums
        # can be combined: the checkpoint holds totals over all processes.
        self.watch.check_finite(epoch, self._last_checkpoint())
        totals = distributed.all_reduce(sums.clone(), self.place.world_size)
        self._save(epoch, step, {"sums": totals.tolist()})
        # The others wait for rank 0's write: torchrun stops every process once one exits.
        distributed.barrier(self.place)
        if self.place.is_main:
            print(f"interrupted in epoch {epoch} at step {step}: state saved to {self.checkpoint_path}; "
                  "resume with --resume (resume=True).", flush=True)

    # -- end of an epoch

    def end_epoch(self, epoch: int, sums: torch.Tensor, steps_trained: int, seconds: float) -> None:
        parts, world_size = self.parts, self.place.world_size
        self.watch.check_finite(epoch, self._last_checkpoint())
        distributed.all_reduce(sums, world_size)
        lr_now = parts.optimizer.param_groups[0]["lr"]
        with warnings.catch_warnings():
            # Resumed at an epoch's end, this process made no optimizer step before this scheduler
            # step and torch warns; the run that made the epoch's steps had the order right.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            parts.lr_scheduler.step()
        distributed.share_rank0_buffers(self.place, parts.distiller)
        test = evaluate(parts.distiller.student, parts.test_loader, self.place.device, parts.autocast_dtype,
                        world_size, parts.channels_last)
        row = self._metrics_row(epoch, sums, lr_now, test, steps_trained * self.cfg.batch_size * world_size, seconds)
        self.metrics.append(row)
        # A run folder deleted (or moved) while the run trains: its lock and config.json are written again beside
        # the checkpoint and metrics that follow, so the folder is whole, and no second run can take it meanwhile.
        if self.place.is_main and runlock.lost(self.run_dir):
            print(f"note: the run folder {self.run_dir} was deleted or moved while this run trained; its files are "
                  "written again there.", flush=True)
            self.write_run_files()
        self._save(epoch + 1, 0, None)
        if self.place.is_main:
            try:
                runfolder.write_metrics(self.run_dir, self.metrics)
            except OSError as exc:
                raise from_os_error(exc, "write the metrics", self.run_dir / runfolder.METRICS_FILE, CheckpointError,
                               self._resume_note()) from None
            print(runfolder.summary_line(row, self.cfg.epochs, self.cfg.method), flush=True)

    def _metrics_row(self, epoch: int, sums: torch.Tensor, lr: float, test: Dict[str, float], images: int,
                     seconds: float) -> dict:
        """One line of metrics.jsonl."""
        terms = self.parts.distiller.terms
        *term_sums, correct, samples, steps_done = sums.tolist()
        row = {
            "epoch": epoch,
            "lr": lr,
            **{f"w_{t}": v for t, v in weights_for(self.cfg, self.terms, epoch, self.parts.schedule).items()},
            # weighted loss terms, averaged over the epoch's steps (and processes)
            **{f"loss_{t}": v / max(steps_done, 1.0) for t, v in zip(terms, term_sums)},
            "train_top1": 100 * correct / max(samples, 1.0),
            "test_top1": test["top1"],
            "test_top5": test["top5"],
            "test_loss": test["loss"],
            "images_per_s": images / max(seconds, 1e-9),
            "epoch_seconds": seconds,
        }
        row["train_loss"] = sum(row[f"loss_{t}"] for t in terms)
        return row

    def _save(self, epoch: int, step: int, partial_sums: Optional[dict]) -> None:
        """The state to resume from at (epoch, step): rank 0 writes it for everyone."""
        if self.place.is_main:
            state = resume.training_state(self.parts, self.cfg, self.place.world_size, epoch, step, partial_sums,
                                          self.metrics, self.teacher_metrics, self.facts)
            try:
                ckpt.atomic_save(state, self.checkpoint_path)
            except OSError as exc:
                raise from_os_error(exc, "save the checkpoint", self.checkpoint_path, CheckpointError,
                               self._resume_note()) from None
        self.last_saved = resume.position(epoch, step)

    # -- the end

    def finish(self) -> RunResult:
        metrics, student = self.metrics, self.parts.distiller.student
        last = _final(metrics[-1]) if metrics else {}
        # report_best_epoch: the reference's "best acc", the best epoch by test top-1 (the first of equals); model.pt
        # keeps the last epoch's weights, and the numbers of those weights.
        final = _final(max(metrics, key=lambda m: m["test_top1"])) if metrics and self.cfg.report_best_epoch else last
        # A run resumed at its end (to rewrite its files) trained nothing: its model.pt stays byte for byte, so the
        # SHA-256 that students of this teacher recorded still matches.
        finished_before = self.start_epoch > self.cfg.epochs and (self.run_dir / MODEL_FILE).is_file()
        if self.place.is_main and not finished_before:
            ckpt.save_model(student, self.run_dir / MODEL_FILE, self.cfg.student, self.parts.bundle.num_classes,
                            method=self.cfg.method, final=last)
        # Nobody reads model.pt (e.g. as the next method's teacher) before rank 0 has written it.
        distributed.barrier(self.place)
        return RunResult(run_dir=self.run_dir, method=self.cfg.method, metrics=metrics, final=final,
                         model=student, teacher_metrics=self.teacher_metrics)


def _final(row: dict) -> Dict[str, float]:
    return {"top1": row["test_top1"], "top5": row["test_top5"], "loss": row["test_loss"], "epoch": row["epoch"]}


# -------------------------------------------------------------------- what a run in progress says


def run_eta(epochs_left: float, finished_epoch_seconds: Sequence[float], elapsed: float = 0.0,
            fraction_timed: float = 0.0) -> Optional[float]:
    """Seconds left in a whole run with ``epochs_left`` epochs (fractional) to go: the mean of the finished epochs'
    wall times x the epochs left; before any epoch has finished, the current one's ``elapsed`` seconds over the
    ``fraction_timed`` of an epoch they trained, extrapolated. None while there is nothing to go on."""
    if finished_epoch_seconds:
        per_epoch = sum(finished_epoch_seconds) / len(finished_epoch_seconds)
    elif fraction_timed > 0:
        per_epoch = elapsed / fraction_timed
    else:
        return None
    return per_epoch * max(epochs_left, 0.0)


def clock(seconds: float) -> str:
    """'12:34' (minutes:seconds) or '1:02:03' (hours, as tqdm shows its per-epoch ETA)."""
    minutes, secs = divmod(max(0, round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def resume_message(epoch: int, step: int, steps_per_epoch: int, epochs: int) -> str:
    """What a resumed run says about the work a checkpoint saved: it resumes at ``step`` (0 = the start) of
    ``epoch`` (1-indexed) of ``epochs``."""
    if epoch > epochs:
        return f"resuming a finished run: all {epochs} epochs were already trained."
    if step == 0:
        done = epoch - 1
        return (f"resuming at the start of epoch {epoch} of {epochs}: "
                f"{done} epoch{' was' if done == 1 else 's were'} already trained.")
    trained = epoch - 1 + step / steps_per_epoch
    return f"resuming at epoch {epoch} step {step} of {epochs} epochs: {trained:.1f} epochs were already trained."


# -------------------------------------------------------------------- run


def check_teacher_checkpoint(cfg: RunConfig) -> None:
    """A named teacher checkpoint must be a file. Checked before any method trains (by :func:`run` and the seed
    study): otherwise a student would train, then the first method needing the teacher fail, the comparison lost."""
    if cfg.teacher_checkpoint and not Path(cfg.teacher_checkpoint).is_file():
        kind = "is a folder, not a file" if Path(cfg.teacher_checkpoint).is_dir() else "does not exist"
        raise ConfigError(f"teacher checkpoint {cfg.teacher_checkpoint} {kind}; pass the teacher's model.pt (e.g. "
                          f"{runfolder.teacher_dir(cfg.run_dir) / MODEL_FILE}), or leave --teacher-checkpoint out to train "
                          "one first.")


def ensure_teacher(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``teacher_checkpoint`` set, training the teacher first if there is none.

    A config that names a checkpoint or pretrained weights comes back unchanged. Otherwise the teacher lives in
    ``<run_dir>/teacher``: reused when its ``model.pt`` exists (and was trained on the same data), resumed when a
    previous attempt was interrupted, trained from scratch otherwise — so every notebook and command sharing a run
    folder shares one teacher. Under torchrun all processes train it together; rank 0 writes it.
    """
    validate(cfg)
    check_teacher_checkpoint(cfg)
    if cfg.teacher_checkpoint or cfg.teacher_pretrained:
        return cfg
    folder = runfolder.teacher_dir(cfg.run_dir)
    # The teacher folder belongs to this run folder, so an unfinished one is resumed, never overwritten.
    teacher_cfg = cfg.replace(student=cfg.teacher, method="student", run_dir=str(folder), resume=True)
    # Held across training and recording: a second run sharing the experiment folder waits for neither half,
    # and a signal after the teacher's fit stops the run once the teacher is recorded, its folder unlocked.
    with DeferredInterrupt(), runlock.held(folder, take=is_main_process()):
        if (folder / MODEL_FILE).exists():
            runfolder.check_reusable_teacher(folder, teacher_cfg)
            if is_main_process():
                runfolder.verify_teacher(folder, teacher_cfg)  # warns if its file, data or accuracy changed
        else:
            if is_main_process():
                print(f"no teacher checkpoint given: training the teacher {cfg.teacher} first into {folder}", flush=True)
            fit(teacher_cfg)
            if is_main_process():
                runfolder.record_teacher(folder, teacher_cfg)
    return cfg.replace(teacher_checkpoint=str(folder / MODEL_FILE))


def run(cfg: RunConfig) -> Dict[str, RunResult]:
    """Train the teacher if needed (:func:`ensure_teacher`), then every method in ``cfg.method`` (','-separated).

    ``cfg.run_dir`` is an experiment folder: each method trains in ``<run_dir>/<method>`` (``cd+gkd+edt`` -> ``cd_gkd_edt``).
    """
    validate(cfg)
    methods = [m.strip() for m in cfg.method.split(",") if m.strip()]
    results: Dict[str, RunResult] = {}
    # One set of handlers for all the phases: a signal between two of them stops the next before it starts.
    with DeferredInterrupt():
        if any(term_table.needs_teacher(parse_method(m)) for m in methods):
            cfg = ensure_teacher(cfg)
        for method in methods:
            results[method] = fit(cfg.replace(method=method, run_dir=str(Path(cfg.run_dir) / runfolder.slug(method))))
        if is_main_process() and len(methods) > 1:
            print(runfolder.comparison_table(results, cfg), flush=True)
    return results

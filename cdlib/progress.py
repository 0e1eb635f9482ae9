"""What a run in progress tells its user: the time left for the whole run, and how much
a checkpoint saved when a run resumes. Pure arithmetic on wall times, used by the trainer."""

from __future__ import annotations

from typing import Optional, Sequence

__all__ = ["run_eta", "clock", "resume_message"]


def run_eta(epochs_left: float, finished_epoch_seconds: Sequence[float], elapsed: float = 0.0,
            fraction_timed: float = 0.0) -> Optional[float]:
    """Seconds left in a whole run with ``epochs_left`` epochs (fractional) to go: the mean
    of the finished epochs' wall times x the epochs left; before any epoch has finished,
    the current one's ``elapsed`` seconds over the ``fraction_timed`` of an epoch they
    trained, extrapolated. None while there is nothing to go on."""
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
    """What a resumed run says about the work a checkpoint saved: it resumes at ``step``
    (0 = the start) of ``epoch`` (1-indexed) of ``epochs``."""
    if epoch > epochs:
        return f"resuming a finished run: all {epochs} epochs were already trained."
    if step == 0:
        done = epoch - 1
        return (f"resuming at the start of epoch {epoch} of {epochs}: "
                f"{done} epoch{' was' if done == 1 else 's were'} already trained.")
    trained = epoch - 1 + step / steps_per_epoch
    return f"resuming at epoch {epoch} step {step} of {epochs} epochs: {trained:.1f} epochs were already trained."

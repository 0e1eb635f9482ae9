"""Ctrl-C and SIGTERM during training: held until the optimizer step is complete, then a clean stop.

SIGTERM is how Slurm, Kubernetes and notebook hosts ask a job to stop (a
SIGKILL follows after a grace period), so it is treated like Ctrl-C: the
trainer saves a checkpoint at the next step boundary. A further signal while
the run is stopping is held too, so the checkpoint being written is finished
(or, should the process be killed, the previous one stays: saves are atomic).
Only a third Ctrl-C stops at once, without saving.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Optional

__all__ = ["DeferredInterrupt", "workers_ignore_sigint", "last_signal", "exit_status", "STOP_SIGNALS"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_FORCE_AFTER = 3  # Ctrl-Cs: the third one stops at once
_last_signal: Optional[int] = None


def last_signal() -> Optional[int]:
    """The signal that stopped the latest interrupted run in this process (None: none did)."""
    return _last_signal


def exit_status() -> int:
    """The shell's status for a run stopped by :func:`last_signal`: 128 + the signal (130 Ctrl-C, 143 SIGTERM)."""
    return 128 + int(_last_signal or signal.SIGINT)


class DeferredInterrupt:
    """Ctrl-C (SIGINT) and SIGTERM during training, held as the module says: the checkpoint written on
    interrupt is never half a step, and a third Ctrl-C (a user who will not wait) stops without saving."""

    def __init__(self) -> None:
        self.requested = False
        self.forced = False
        self.signum: Optional[int] = None
        self._count = 0
        self._installed = False
        self._previous: dict = {}

    def _handler(self, signum, frame) -> None:
        global _last_signal
        self._count += 1
        if self.signum is None:
            self.signum = _last_signal = signum
        if self.requested and signum == signal.SIGINT and self._count >= _FORCE_AFTER:
            self.forced = True
            raise KeyboardInterrupt
        if self.requested:
            print(f"cdlib: already stopping: the state is saved after the current step; "
                  f"{'Ctrl-C once more stops at once, without saving' if signum == signal.SIGINT else 'please wait'}.",
                  file=sys.stderr, flush=True)
        self.requested = True

    def __enter__(self) -> "DeferredInterrupt":
        global _last_signal
        _last_signal = None
        # Python delivers signals to the main thread only; elsewhere the signals keep their default behaviour.
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            for signum, previous in self._previous.items():
                # A handler installed outside Python reads back as None; the default is the best stand-in.
                if previous is None:
                    previous = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
                signal.signal(signum, previous)
            self._installed = False

    def raise_if_requested(self) -> None:
        if self.requested:
            raise KeyboardInterrupt


def workers_ignore_sigint(worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``: Ctrl-C in a terminal (and a job scheduler's SIGTERM) reaches every
    process of the group, and a worker that died of it would crash the main process before it could save;
    the main process alone decides when to stop."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)

"""Ctrl-C during training: held until the optimizer step is complete, then a clean stop.

The trainer saves a checkpoint when it stops this way; a second Ctrl-C stops
at once without saving. DataLoader workers ignore Ctrl-C so that only the main
process decides when to stop.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["DeferredInterrupt", "workers_ignore_sigint"]


class DeferredInterrupt:
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

    def __enter__(self) -> "DeferredInterrupt":
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


def workers_ignore_sigint(worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``.

    Ctrl-C in a terminal reaches every process of the group. A DataLoader worker
    that died of it would crash the main process before it could save; the main
    process alone decides when to stop.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)

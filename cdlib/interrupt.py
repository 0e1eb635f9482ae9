"""Ctrl-C and SIGTERM during training: held until the optimizer step is complete, then a clean stop.

SIGTERM is how Slurm, Kubernetes and notebook hosts ask a job to stop (a SIGKILL follows after a grace period), so
it is treated like Ctrl-C: the trainer saves a checkpoint at the next step boundary. A further signal while the run
is stopping is held too, so the checkpoint being written is finished (or, should the process be killed, the previous
one stays: saves are atomic). Only a third Ctrl-C stops at once, without saving.

Blocks nest (``run`` around ``ensure_teacher`` around the teacher's ``fit``): one set of handlers serves them all,
so a signal between two phases is held too and stops the next one before it starts. Outside any block the ``cdlib``
command stops at once, with one line (:func:`raise_on_stop_signals`, and :func:`stop_quietly_while_starting` while
the package imports torch).
"""

from __future__ import annotations

import atexit
import mmap
import multiprocessing.util  # noqa: F401  (imported first, so that the atexit hook below runs before its own)
import os
import signal
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

__all__ = ["DeferredInterrupt", "workers_ignore_sigint", "last_signal", "exit_status", "STOP_SIGNALS",
           "raise_on_stop_signals", "stop_quietly_while_starting"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_FORCE_AFTER = 3  # Ctrl-Cs: the third one stops at once
_last_signal: Optional[int] = None
_active: Optional["DeferredInterrupt"] = None  # the outermost block holding signals in this process


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
        # What the signals asked, shared by the blocks nested in the outermost one: what one receives the others see.
        self._held = SimpleNamespace(requested=False, forced=False, signum=None, count=0)
        self._installed = False
        self._previous: dict = {}

    requested = property(lambda self: self._held.requested, lambda self, v: setattr(self._held, "requested", v))
    forced = property(lambda self: self._held.forced)

    def _handler(self, signum, frame) -> None:
        global _last_signal
        held = self._held
        held.count += 1
        if held.signum is None:
            held.signum = _last_signal = signum
        if held.requested and signum == signal.SIGINT and held.count >= _FORCE_AFTER:
            held.forced = True
            raise KeyboardInterrupt
        if held.requested:
            print(f"cdlib: already stopping: the state is saved after the current step; "
                  f"{'Ctrl-C once more stops at once, without saving' if signum == signal.SIGINT else 'please wait'}.",
                  file=sys.stderr, flush=True)
        held.requested = True

    def __enter__(self) -> "DeferredInterrupt":
        global _last_signal, _active
        if _active is not None and _active._installed:
            self._held = _active._held
            return self
        _last_signal = None
        # Python delivers signals to the main thread only; elsewhere the signals keep their default behaviour.
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handler)
            self._installed = True
            _active = self
        return self

    def __exit__(self, exc_type, *exc) -> None:
        global _active
        if self._installed:
            for signum, previous in self._previous.items():
                # A handler installed outside Python reads back as None; the default is the best stand-in.
                if previous is None:
                    previous = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
                signal.signal(signum, previous)
            self._installed = False
            _active = None
            if exc_type is None and self._held.requested:
                # Held past the last point that could act on it (between two phases): a stop asked is a stop.
                raise KeyboardInterrupt


# ------------------------------------------------------------------ the command, outside training


def _raise_now(signum, frame) -> None:
    global _last_signal
    _last_signal = signum
    raise KeyboardInterrupt


def raise_on_stop_signals() -> None:
    """For the ``cdlib`` command: outside training, Ctrl-C and SIGTERM stop at once as a KeyboardInterrupt
    (which the command reports in one line, 130 or 143), so a SIGTERM between two phases still unwinds
    the run folders' locks instead of killing the process where it stands. A signal the parent process
    asked to be ignored (a background job's SIGINT) stays ignored."""
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _raise_now)


def _is_the_command() -> bool:
    """True when this process is the ``cdlib`` command (its script or ``python -m cdlib``), not a notebook."""
    if sys.argv and Path(sys.argv[0]).stem in ("cdlib", "cdlib-script"):
        return True
    argv = list(getattr(sys, "orig_argv", ()))
    return any(a == "-m" and b in ("cdlib", "cdlib.__main__") for a, b in zip(argv, argv[1:]))


def _stop_while_starting(signum, frame) -> None:
    # Nothing has been read or written yet: stopping at once loses nothing, and the import's traceback helps nobody.
    name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    os.write(2, f"cdlib: stopped by {name} while starting; nothing was done.\n".encode())
    os._exit(128 + signum)


def stop_quietly_while_starting() -> None:
    """Called first thing by ``cdlib/__init__``: while the ``cdlib`` command imports torch (a second or more),
    Ctrl-C and SIGTERM print one line and exit with 130 or 143. Does nothing when cdlib is imported by
    other programs (notebooks keep their own Ctrl-C); :func:`raise_on_stop_signals` takes over in ``main``."""
    if not _is_the_command() or threading.current_thread() is not threading.main_thread():
        return
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _stop_while_starting)


# ------------------------------------------------------------------ DataLoader workers

# One shared byte, set when this process exits: its forked DataLoader workers then end on the SIGTERM
# that multiprocessing sends them at exit, and ignore one that reaches them while it still needs them.
_exiting = mmap.mmap(-1, 1)
_exiting_owner = os.getpid()


def _parent_exits() -> None:
    if os.getpid() == _exiting_owner:
        _exiting[0] = 1


# Registered after multiprocessing.util's own hook (imported above), so it runs before that hook's
# terminate-and-join of the daemonic workers.
atexit.register(_parent_exits)
_WORKER_GRACE = 60.0  # seconds a signalled worker keeps serving a parent that is still saving


def _worker_sigterm(signum, frame) -> None:
    # Shared only with a parent that forked this worker; a spawned one cannot be told, and ends now.
    if _exiting[0] or _exiting_owner != os.getppid():
        os._exit(0)
    # The parent got the same SIGTERM (a job scheduler signals the whole group): it finishes its step,
    # saves and ends its workers; this worker serves it until then, and no longer than the grace.
    if not getattr(_worker_sigterm, "armed", False):
        _worker_sigterm.armed = True
        timer = threading.Timer(_WORKER_GRACE, os._exit, (0,))
        timer.daemon = True
        timer.start()


def workers_ignore_sigint(worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``: Ctrl-C in a terminal reaches every process of the group, and a worker
    that died of it would crash the main process before it could save; the main process alone decides when
    to stop. SIGTERM ends a worker (exit status 0, which torch does not report as a crash) once its parent
    exits, and at the latest a grace period after it arrived, so that exit never waits on a worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_sigterm)

"""Running one submission in a child process with a time limit.

The child (:mod:`.run_submission`) starts in a new session, so it leads its
own process group; whatever it starts (a ``!`` command, a DataLoader worker,
``multiprocessing``) joins that group unless it deliberately leaves it. When the
time is up the whole group is killed with SIGKILL, and after a normal exit the
group is killed too, so nothing a submission left running outlives its grading.
This isolates processes and time, not files or the network: the submission runs
as the grading user, in a temporary working folder of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

LOG_TAIL_LINES = 30
READY = "ready"  # the submission process's first stage: the submission's time limit starts here


@dataclass(frozen=True)
class RunResult:
    returncode: int  # negative: killed by that signal
    timed_out: bool
    seconds: float  # the submission's own time, from its process being ready
    stage: str  # what the child was doing last (from its stage file)
    log_tail: str  # the last lines of what it printed


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _child_env() -> dict:
    env = dict(os.environ)
    env.setdefault("MPLBACKEND", "Agg")  # plots need no display
    env.setdefault("OMP_NUM_THREADS", "1")  # several submissions share the cores
    env["PYTHONUNBUFFERED"] = "1"
    env["CDLIB_GRADING"] = "1"
    return env


def _wait(child: subprocess.Popen, stage_file: Path, timeout: float, startup_limit: float) -> tuple:
    """Wait for the child: at most ``startup_limit`` s until it is ready, then ``timeout`` s.
    Returns (timed out, seconds the submission's own code ran)."""
    start = time.monotonic()
    ready_at = None
    while child.poll() is None:
        now = time.monotonic()
        if ready_at is None and stage_file.is_file():
            ready_at = now
        limit = start + startup_limit if ready_at is None else ready_at + timeout
        if now > limit:
            return True, now - (ready_at or start)
        time.sleep(0.05)
    return False, time.monotonic() - (ready_at or start)


def run_in_sandbox(job_dir: Path, work_dir: Path, timeout: float, startup_limit: float = 120.0) -> RunResult:
    """Run one submission's process on ``job_dir`` with ``work_dir`` as its current folder. The submission
    gets ``timeout`` seconds from the moment that process is ready (Python started, torch and cdlib
    imported: at most ``startup_limit`` s, as that depends on the machine's load, not on the student)."""
    log_path = job_dir / "log.txt"
    with open(log_path, "wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "cdlib_classroom.grading.run_submission", str(job_dir)],
            cwd=work_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=_child_env(), start_new_session=True,
        )
        try:
            timed_out, seconds = _wait(child, job_dir / "stage.txt", timeout, max(startup_limit, timeout))
        finally:
            _kill_group(child.pid)  # the child's pid is its group's id (new session)
            child.wait()
    stage_file = job_dir / "stage.txt"
    stage = stage_file.read_text(encoding="utf8") if stage_file.is_file() else "starting Python"
    if stage == READY:
        stage = "starting to run the first cell"
    text = log_path.read_text(encoding="utf8", errors="replace").splitlines()
    return RunResult(child.returncode, timed_out, seconds, stage, "\n".join(text[-LOG_TAIL_LINES:]))

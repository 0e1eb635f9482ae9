"""Running one submission in a child process with limits on time, memory and output.

The child (:mod:`.run_submission`) starts in a new session, so it leads its own
process group; whatever it starts (a ``!`` command, a DataLoader worker,
``multiprocessing``) joins that group. Every process it starts also inherits a
per-submission token in its environment (``CDLIB_GRADING_JOB``), so a
descendant that left the session (``setsid``, a daemon's double fork) is still
found: when the time is up, when the submission's processes together use more
than ``max_memory`` bytes or print more than ``max_output`` bytes, when grading
is stopped (Ctrl-C), and after a normal exit, every process of the session,
of the group or carrying the token is killed with SIGKILL. What escapes: a
descendant that both leaves the session and clears its environment. This
isolates processes, time, memory and output, not files or the network: the
submission runs as the grading user, in a temporary working folder of its own.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional

LOG_TAIL_BYTES = 8192  # only the end of a submission's output is read back
LOG_TAIL_LINES = 30
READY = "ready"  # the submission process's first stage: the submission's time limit starts here
TOKEN_VARIABLE = "CDLIB_GRADING_JOB"
MEMORY_POLL_S = 0.25


@dataclass(frozen=True)
class RunResult:
    returncode: int  # negative: killed by that signal
    timed_out: bool
    seconds: float  # the submission's own time, from its process being ready
    stage: str  # what the child was doing last (from its stage file)
    log_tail: str  # the last lines of what it printed
    limit: str = ""  # "memory", "output" or "stopped" when the grader killed it for that reason
    peak_memory: int = 0  # the largest total resident memory seen (bytes)


def _stat_fields(pid: int) -> Optional[List[str]]:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()  # [state, ppid, pgrp, session, ...]


def _pids() -> Iterable[int]:
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    return [int(n) for n in names if n.isdigit()]


def _carries(pid: int, token: bytes) -> bool:
    try:
        return token in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def session_processes(sid: int, token: str) -> List[int]:
    """Every live process of session ``sid`` or carrying ``token`` in its environment (not this process)."""
    me, marker, out = os.getpid(), f"{TOKEN_VARIABLE}={token}".encode(), []
    for pid in _pids():
        if pid == me:
            continue
        fields = _stat_fields(pid)
        if fields is None or fields[0] in ("Z", "X"):
            continue
        if int(fields[3]) == sid or int(fields[2]) == sid or _carries(pid, marker):
            out.append(pid)
    return out


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def kill_all(sid: int, token: str) -> None:
    """SIGKILL the session's group and every process of the session or carrying the token (twice over: a
    process may fork while the first sweep runs)."""
    try:
        os.killpg(sid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for _ in range(3):
        pids = session_processes(sid, token)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.05)


def _child_env(token: str) -> dict:
    env = dict(os.environ)
    env.setdefault("MPLBACKEND", "Agg")  # plots need no display
    env.setdefault("OMP_NUM_THREADS", "1")  # several submissions share the cores
    env["PYTHONUNBUFFERED"] = "1"
    env["CDLIB_GRADING"] = "1"
    env[TOKEN_VARIABLE] = token
    return env


def run_in_sandbox(job_dir: Path, work_dir: Path, timeout: float, startup_limit: float = 120.0,
                   max_memory: Optional[int] = None, max_output: Optional[int] = None,
                   stop: Optional[threading.Event] = None) -> RunResult:
    """Run one submission's process on ``job_dir`` with ``work_dir`` as its current folder. The submission
    gets ``timeout`` seconds from the moment that process is ready (Python started, torch and cdlib
    imported: at most ``startup_limit`` s, as that depends on the machine's load, not on the student), at
    most ``max_memory`` bytes of resident memory (all its processes together) and ``max_output`` bytes of
    printed output; ``stop`` set (Ctrl-C) ends it at once."""
    log_path, stage_file = job_dir / "log.txt", job_dir / "stage.txt"
    token = uuid.uuid4().hex
    file_cap = max(4 * max_output, 256 * 2**20) if max_output else None
    with open(log_path, "wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "cdlib_classroom.grading.run_submission", str(job_dir)],
            cwd=work_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=_child_env(token), start_new_session=True,
        )
        if file_cap and hasattr(resource, "prlimit"):  # a backstop to the output limit: SIGXFSZ past it
            try:
                resource.prlimit(child.pid, resource.RLIMIT_FSIZE, (file_cap, file_cap))
            except OSError:
                pass
        start = time.monotonic()
        ready_at, limit, peak, next_memory = None, "", 0, start
        try:
            while child.poll() is None:
                now = time.monotonic()
                if ready_at is None and stage_file.is_file():
                    ready_at = now
                deadline = start + max(startup_limit, timeout) if ready_at is None else ready_at + timeout
                if now > deadline:
                    limit = "time"
                    break
                if stop is not None and stop.is_set():
                    limit = "stopped"
                    break
                if max_output and log_path.stat().st_size > max_output:
                    limit = "output"
                    break
                if max_memory and now >= next_memory:
                    next_memory = now + MEMORY_POLL_S
                    used = sum(_rss(pid) for pid in session_processes(child.pid, token))
                    peak = max(peak, used)
                    if used > max_memory:
                        limit = "memory"
                        break
                time.sleep(0.05)
            seconds = time.monotonic() - (ready_at or start)
        finally:
            kill_all(child.pid, token)  # the child's pid is its session's and group's id
            child.wait()
    stage = stage_file.read_text(encoding="utf8") if stage_file.is_file() else "starting Python"
    if stage == READY:
        stage = "starting to run the first cell"
    return RunResult(child.returncode, limit == "time", seconds, stage, read_tail(log_path),
                     "" if limit == "time" else limit, peak)


def read_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log, reading at most its last few kilobytes."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - LOG_TAIL_BYTES))
        text = f.read().decode("utf8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])

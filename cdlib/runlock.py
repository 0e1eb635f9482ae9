"""One writer per run folder: a lock file holding the writer's PID and host.

Two runs writing one folder overwrite each other's checkpoint and model (and a ``--resume`` started beside a live
run trains the same epochs twice), so :func:`cdlib.train.fit` holds ``<run_dir>/.lock`` while it runs. The lock is
an ``fcntl.flock`` on that file: the kernel drops it when the process dies, even by SIGKILL. The PID and host written
in the file are checked too, flock or not (a shared file system's locks can be per host): a dead PID on this host is
stale and taken over (with a note); a live one, or any other host's, is in use, and the refusal says how to clear a
lock whose run is truly gone.

Locks are re-entrant within a process (``ensure_teacher`` holds the teacher folder across the ``fit`` that trains
it); under ``torchrun`` only rank 0 takes them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Dict, Iterator, Optional

from .errors import ConfigError, from_os_error

try:
    import fcntl
except ImportError:  # Windows: the PID check alone
    fcntl = None

__all__ = ["LOCK_FILE", "held", "holder", "lost", "clean_interrupted_saves"]

LOCK_FILE = ".lock"
# The temporary files of saves cut short (checkpoint.atomic_save, runfolder.write_metrics).
_TEMP_PATTERNS = (".*.pt.*.tmp", "*.jsonl.tmp", ".*.json.*.tmp")
_held: Dict[str, int] = {}  # folder -> file descriptor of its lock


def holder(folder: str | os.PathLike) -> Optional[dict]:
    """What the lock file of ``folder`` says about its holder (pid, host, since), or None."""
    try:
        info = json.loads((Path(folder) / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _holder_once_written(folder: Path) -> Optional[dict]:
    """The holder of a lock taken a moment ago (it locks the file before it writes its PID), waiting 2 s at most."""
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        time.sleep(0.02)
        info = holder(folder)
        if info:
            return info
    return None


def _describe_holder(info: Optional[dict]) -> str:
    if not info:
        return "another process"
    since = info.get("since")
    when = f", since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if isinstance(since, (int, float)) else ""
    return f"process {info.get('pid')} on host {info.get('host')}{when}"


def _in_use(folder: Path, info: Optional[dict]) -> ConfigError:
    return ConfigError(f"run folder {folder} is in use by {_describe_holder(info)} (lock file {folder / LOCK_FILE}); "
                       "wait for that run to finish or stop it, or use another --run-dir (run_dir=).")


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path``: not removed (the folder deleted or moved) or replaced."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except OSError:
        return False


def _try_flock(fd: int) -> Optional[bool]:
    """True: locked; False: someone holds it; None: this file system cannot flock."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:  # EAGAIN (BlockingIOError): held
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        return None  # ENOLCK, EOPNOTSUPP, EINVAL: no flock here


def _alive_since(pid: int, since: object) -> bool:
    """Whether process ``pid`` is running and did not begin after ``since`` (then it would be a new process under
    a reused PID, which only Linux's /proc can tell)."""
    try:
        os.kill(pid, 0)
    except PermissionError:  # alive, another user's
        pass
    except OSError:  # ProcessLookupError: gone
        return False
    if not isinstance(since, (int, float)):
        return True
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK") <= since + 1.0  # a second for the clocks' rounding
    except (OSError, ValueError, IndexError, StopIteration):
        return True


def _stale_lock(folder: Path, previous: Optional[dict], me: dict) -> bool:
    """Whether the lock file's holder (not this process) is gone, so the folder may be taken over; raises
    ConfigError when it may still be running. Even when the flock was granted: locks of a shared file system
    can be per host, and a process that holds no lock may still be writing."""
    if not previous or not previous.get("pid"):
        return False
    if (previous.get("pid"), previous.get("host")) == (me["pid"], me["host"]):
        return False
    lock_file = folder / LOCK_FILE
    if previous.get("host") != me["host"]:
        raise ConfigError(f"run folder {folder} is locked by {_describe_holder(previous)}, which this host cannot check "
                          f"(lock file {lock_file}); wait for that run, or, if it is truly gone, delete {lock_file} and "
                          "rerun.")
    try:
        pid = int(previous["pid"])
    except (TypeError, ValueError):
        return True
    if _alive_since(pid, previous.get("since")):
        raise ConfigError(f"run folder {folder} is in use by {_describe_holder(previous)}, which is still running (lock "
                          f"file {lock_file}); wait for that run or stop it, or, if that process is not a cdlib run, delete "
                          f"{lock_file} and rerun.")
    return True


def _acquire(folder: Path) -> int:
    path = folder / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    for _ in range(20):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            locked, previous = _try_flock(fd), holder(folder)
            if locked is False:
                raise _in_use(folder, previous or _holder_once_written(folder))
            stale = _stale_lock(folder, previous, me)
        except ConfigError:
            os.close(fd)
            raise
        if not _same_file(fd, path):  # the previous holder removed the file as we opened it: lock the new one
            os.close(fd)
            continue
        if stale:
            print(f"note: {folder} was locked by {_describe_holder(previous)}, which is no longer running; "
                  "taking the folder over.", flush=True)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(me).encode())
        return fd
    raise _in_use(folder, holder(folder))


@contextlib.contextmanager
def held(folder: str | os.PathLike, take: bool = True) -> Iterator[None]:
    """Hold the lock of run folder ``folder`` (created if missing) for the ``with`` block; ``take=False`` (ranks
    other than 0) holds nothing. Raises :class:`ConfigError` naming the holder when another live process has it."""
    if not take:
        yield
        return
    folder = Path(folder)
    key = os.path.realpath(folder)
    if key in _held:  # held already by this process: the outermost hold releases it
        yield
        return
    _held[key] = _lock_folder(folder)
    try:
        yield
    finally:
        # Removed before unlocking: a process that opened the old file sees it is gone and retries.
        with contextlib.suppress(OSError):
            (folder / LOCK_FILE).unlink()
        os.close(_held.pop(key))


def _lock_folder(folder: Path) -> int:
    """Create ``folder`` if missing and take its lock; the lock file's descriptor."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return _acquire(folder)
    except OSError as exc:
        raise from_os_error(exc, "create the run folder", folder) from None


def lost(folder: str | os.PathLike) -> bool:
    """Whether the lock file this process holds for ``folder`` is gone (the folder deleted or moved while the run
    trains); if so the lock is taken again, on a new file, and True is returned. Raises ConfigError when another
    process took the folder meanwhile. False for a folder this process does not hold."""
    folder = Path(folder)
    key = os.path.realpath(folder)
    fd = _held.get(key)
    if fd is None or _same_file(fd, folder / LOCK_FILE):
        return False
    _held[key] = _lock_folder(folder)
    os.close(fd)
    return True


def clean_interrupted_saves(folder: str | os.PathLike) -> int:
    """Delete the temporary files that saves cut short (a kill, a full disk) left in ``folder``; their bytes.
    Called with the folder's lock held, so no save of a live run is in progress."""
    freed = 0
    for pattern in _TEMP_PATTERNS:
        for path in Path(folder).glob(pattern):
            with contextlib.suppress(OSError):
                size = path.stat().st_size
                path.unlink()
                freed += size
    return freed

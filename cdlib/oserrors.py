"""Errors of the operating system (permissions, full disks, files where folders should be) as one sentence.

An ``OSError`` a user can cause — a read-only run folder, a run folder that is
a file, an unreadable data folder, a full disk, no network for a download —
becomes a :class:`~cdlib.errors.CDLibError` that names the path, what cdlib was
doing and how to fix it, instead of a traceback.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Optional, Type

from .errors import CDLibError, ConfigError

__all__ = ["describe", "remedy"]

_REMEDIES = {
    errno.EACCES: "permission denied: check its permissions and owner (ls -ld), or use another folder",
    errno.EPERM: "operation not permitted: check its permissions and owner (ls -ld), or use another folder",
    errno.EROFS: "the file system is read-only: use a folder on a writable disk",
    errno.ENOSPC: "the disk is full: free some space (or use a folder on another disk)",
    errno.EDQUOT: "the disk quota is exceeded: free some space (or use a folder on another disk)",
    errno.ENOTDIR: "a part of that path is a file, not a folder: choose another path",
    errno.EEXIST: "a file of that name exists where a folder is needed: choose another path",
    errno.EISDIR: "it is a folder where a file is needed: choose another path",
    errno.ENOENT: "it does not exist: check the path",
    errno.ENAMETOOLONG: "the path is too long: choose a shorter one",
    errno.EMFILE: "too many files are open: lower --num-workers",
}


def remedy(exc: OSError) -> str:
    """What went wrong and what to do, for an OSError's errno."""
    return _REMEDIES.get(exc.errno) or exc.strerror or type(exc).__name__


def describe(exc: OSError, doing: str, path: Optional[str | os.PathLike] = None,
             kind: Type[CDLibError] = ConfigError, note: str = "") -> CDLibError:
    """``exc`` as a one-sentence error: 'could not <doing> <path>: <what> and <fix>[; note].'"""
    where = exc.filename if exc.filename is not None else path
    if exc.filename2 is not None and exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.ENOSPC):
        where = exc.filename2
    if where is not None and path is not None and Path(str(where)) != Path(path):
        where = f"{path} ({where})"
    return kind(f"could not {doing} {where}: {remedy(exc)}{'; ' + note if note else ''}.")


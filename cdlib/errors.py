"""User-facing errors: each carries one sentence saying what is wrong and how to fix it.

The CLI prints these without a traceback; anything else is a bug and keeps its
traceback. An ``OSError`` a user can cause (a read-only or full disk, a run folder
that is a file, no network for a download) becomes one too, naming the path, what
cdlib was doing and how to fix it (:func:`from_os_error`). Also the tests of a value
that every module's checks share.
"""

from __future__ import annotations

import errno
import math
import numbers
import os
from pathlib import Path
from typing import Optional, Type

# The longest run any check accepts: past it a value is a typo (an extra zero), and failing at once beats
# an OverflowError in the LR arithmetic later (the paper trains 200 epochs).
MAX_EPOCHS = 100_000


class CDLibError(Exception):
    """Base class for errors caused by input (config, data, checkpoints), not by bugs."""


class ConfigError(CDLibError, ValueError):
    """A wrong recipe, method, model name or hyper-parameter."""


class DataError(CDLibError, FileNotFoundError):
    """A missing or malformed data folder."""


class CheckpointError(CDLibError, ValueError):
    """A corrupt checkpoint, or one that does not fit the model."""


class TrainingDiverged(CDLibError):
    """A loss became NaN or infinite: the learning rate or a loss weight is too high for this run."""


def is_whole(value) -> bool:
    """An integer that is not a bool (NumPy integers count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A real number a float can hold: 10**400 is an int, but float arithmetic on it overflows."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def is_finite(value) -> bool:
    """A real number that is neither infinite nor NaN."""
    return is_number(value) and math.isfinite(value)


def shown(value) -> str:
    """``repr(value)``, shortened for a one-line message (10**400 would print 401 digits)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:16]}...{text[-8:]} ({len(text)} characters)"


_OS_REMEDIES = {
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


def os_remedy(exc: OSError) -> str:
    """What went wrong and what to do, for an OSError's errno."""
    return _OS_REMEDIES.get(exc.errno) or exc.strerror or type(exc).__name__


def from_os_error(exc: OSError, doing: str, path: Optional[str | os.PathLike] = None,
                  kind: Type[CDLibError] = ConfigError, note: str = "") -> CDLibError:
    """``exc`` as a one-sentence error: 'could not <doing> <path>: <what> and <fix>[; note].'"""
    where = exc.filename if exc.filename is not None else path
    if exc.filename2 is not None and exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.ENOSPC):
        where = exc.filename2
    if where is not None and path is not None and Path(str(where)) != Path(path):
        where = f"{path} ({where})"
    return kind(f"could not {doing} {where}: {os_remedy(exc)}{'; ' + note if note else ''}.")

"""Checkpoints: written atomically, read with ``weights_only=True`` (a file never runs code).

Two kinds of file: a *model file* (``save_model`` / ``load_model``), one model's weights plus its name and class
count, so a trained teacher can be reused by name; a *training checkpoint* (written by :func:`cdlib.train.fit`),
everything a run needs to resume (:mod:`cdlib.resume`).

Every way a file can be wrong (missing, truncated, random bytes, a pickle that would run code, weights of another
model) raises :class:`~cdlib.errors.CheckpointError` with one sentence, never a traceback from inside ``torch.load``.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Mapping, Optional

import torch
from torch import nn

from . import models
from .errors import CheckpointError, from_os_error

__all__ = ["atomic_write", "atomic_save", "safe_load", "save_model", "load_model", "load_model_weights", "MODEL_FORMAT",
           "TRAINING_FORMAT"]

MODEL_FORMAT = "cdlib-model-v1"
TRAINING_FORMAT = "cdlib-training-v1"


def _umask() -> int:
    """The process's umask, read from /proc where it says (setting it, even for a moment, races other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """``write(file)`` into a temporary file in the same folder, then rename: a crash, a kill or a full disk
    mid-write never leaves a half-written file behind (the previous one stays), and a reader never sees half a
    file. The file gets the permissions of any file the user creates (their umask), not the private 0600 of a
    temporary file. Every file cdlib writes into a run folder goes through here.

    Raises ``OSError`` (with the path) when the file cannot be written; torch's own write failures are turned into
    one (ENOSPC when the disk is full).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, RuntimeError):  # torch's zip writer: "[enforce fail at inline_container.cc] ... write failed"
            raise _write_failure(path, exc) from None
        raise


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def _write_failure(path: Path, exc: RuntimeError) -> OSError:
    try:
        full = shutil.disk_usage(path.parent).free < (64 << 20)
    except OSError:
        full = False
    if full:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return OSError(errno.EIO, f"writing failed ({str(exc).splitlines()[0][:120]})", str(path))


def _failed_checksum(path: Path) -> Optional[str]:
    """The first part of torch's zip file whose CRC-32 does not match its bytes (None: all match, or the file is
    not a zip Python can read, which torch.load then reports)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError):
        return None


def safe_load(path: str | os.PathLike, what: str = "checkpoint") -> Dict[str, Any]:
    """The dictionary in a cdlib (or plain PyTorch) checkpoint, loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist or is not a file; check the path or train one first.")
    head = b""  # the first bytes: b"PK" starts torch's zip format, b"\x80" a raw pickle or torch's legacy format
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        damaged = _failed_checksum(path) if head.startswith(b"PK") else None
        if damaged:
            # torch.load does not check the zip's CRC-32s: flipped bits in a tensor would load as wrong weights.
            raise CheckpointError(f"{what} {path} is corrupt: its part {damaged!r} fails its checksum (damaged on "
                                  "disk or in a copy); copy it again, or point to another file written by cdlib.")
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of foreign files before refusing them;
            # the refusal below says everything the user needs.
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except PermissionError:
        raise CheckpointError(f"cannot read {what} {path}: permission denied ({_owner_and_mode(path)}); the file may "
                              "well be fine: ask its owner to make it readable (chmod a+r), or copy it somewhere you can "
                              "read it.") from None
    except Exception as exc:  # unreadable; damaged, not a checkpoint, or holds objects that would run code
        if isinstance(exc, OSError) and exc.errno in _ACCESS_ERRORS:
            raise from_os_error(exc, f"read {what}", path, CheckpointError) from None
        # torch's zip reader reports a truncated file as an OSError (EINVAL) too: a damaged file, not an access error.
        raise CheckpointError(f"{what} {path} {_why_unreadable(str(exc), head)}.") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} {path} holds a {type(obj).__name__}, not a cdlib checkpoint dictionary.")
    return obj


# OS errors that say the file could not be read at all (rather than that its bytes are wrong).
_ACCESS_ERRORS = (errno.EISDIR, errno.ENOENT, errno.EIO, errno.ELOOP, errno.ENAMETOOLONG, errno.EMFILE, errno.ENFILE,
                  errno.ENXIO, errno.EPERM)


def _owner_and_mode(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return "its permissions could not be read"
    return f"owner uid {st.st_uid}, mode {stat.filemode(st.st_mode)}"


def _why_unreadable(message: str, head: bytes) -> str:
    if "GLOBAL" in message or "Unsupported global" in message:
        return ("holds Python objects other than tensors, and loading them could run code, so it was refused; "
                "point to a model.pt or checkpoint.pt written by cdlib")
    if head[:1] == b"\x80":
        return ("is a plain Python pickle (or PyTorch's legacy format) that holds Python objects; loading it could run "
                "code, so it was refused; re-save its tensors with torch.save(state_dict), or point to a file written by "
                "cdlib")
    if head.startswith(b"PK"):
        return ("looks like a PyTorch checkpoint but is truncated or corrupt (an interrupted copy or download?); copy it "
                "again, or point to another file written by cdlib")
    return ("is not a PyTorch checkpoint (its first bytes are those of another kind of file, or it is truncated or "
            "corrupt); point to a model.pt or checkpoint.pt written by cdlib")


def save_model(model: nn.Module, path: str | os.PathLike, name: str, num_classes: int, **meta: Any) -> None:
    """Write a model file: ``model``'s weights with its ``name``, class count and ``meta``, atomically."""
    atomic_save({"format": MODEL_FORMAT, "model": name, "num_classes": num_classes, "state_dict": model.state_dict(),
                 **meta}, path)


def load_model_weights(model: nn.Module, path: str | os.PathLike, name: str, what: str = "checkpoint") -> nn.Module:
    """Load a model file into ``model`` (built as ``name``), with a clear error on any mismatch; a training
    checkpoint (its student) and a plain state dict (e.g. torchvision's) are accepted too."""
    path = Path(path)
    return _load_into(model, safe_load(path, what), path, name, what)


def _load_into(model: nn.Module, obj: Mapping[str, Any], path: Path, name: str, what: str) -> nn.Module:
    expected_classes = getattr(model, "num_classes", None)
    if obj.get("format") == MODEL_FORMAT:
        saved_name, saved_classes = obj.get("model"), obj.get("num_classes")
        if saved_name != name or (expected_classes is not None and saved_classes != expected_classes):
            raise CheckpointError(f"{what} {path} holds a {saved_name} with {saved_classes} classes, but a {name} with "
                                  f"{expected_classes if expected_classes is not None else '?'} classes was asked for; "
                                  "pass the matching model name or checkpoint.")
        state = obj.get("state_dict")
    elif obj.get("format") == TRAINING_FORMAT:
        saved_name = (obj.get("config") or {}).get("student")
        if saved_name is not None and saved_name != name:
            raise CheckpointError(f"{what} {path} is a training checkpoint of a {saved_name}, but a {name} was asked "
                                  "for; pass the matching model name or checkpoint.")
        trainable = obj.get("trainable")
        if not isinstance(trainable, Mapping):
            raise CheckpointError(f"{what} {path} is a training checkpoint without its weights; it is damaged, train again.")
        # The student's weights: its keys carry a "student." prefix.
        state = {k[len("student."):]: v for k, v in trainable.items() if isinstance(k, str) and k.startswith("student.")}
    else:
        state = obj.get("state_dict", obj)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what} {path} holds no tensor weights (state_dict); it is not a model checkpoint.")
    try:
        model.load_state_dict(dict(state))
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{what} {path} does not fit a {name}: {first}; pass the checkpoint of a {name}.") from None
    return model


def load_model(path: str | os.PathLike, name: Optional[str] = None, num_classes: Optional[int] = None) -> nn.Module:
    """Build and load the model a model file describes (name and classes from the file; ``name`` and ``num_classes``
    are needed only for files that do not say, a plain state dict); a training checkpoint's student loads too."""
    obj = safe_load(path, "model file")
    student = (obj.get("config") or {}).get("student") if obj.get("format") == TRAINING_FORMAT else None
    name = name or student or obj.get("model")
    num_classes = num_classes or obj.get("num_classes")
    if name is None or num_classes is None:
        raise CheckpointError(f"{path} does not say which model it holds; pass name= and num_classes= (CLI: --model).")
    model = models.create(name, num_classes=num_classes)
    return _load_into(model, obj, Path(path), name, "model file")

"""Checkpoints: written atomically, read with ``weights_only=True`` (a file never runs code).

Two kinds of file:

* a *model file* (``save_model`` / ``load_model``): one model's weights plus
  its name and class count, so a trained teacher can be reused by name;
* a *training checkpoint* (``save_training_state`` / ``load_training_state``):
  everything a run needs to resume — trainable weights, optimizer, LR
  scheduler, grad scaler, position in the epoch and RNG state.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from . import models
from .errors import CheckpointError

__all__ = ["atomic_save", "safe_load", "save_model", "load_model", "load_model_weights", "MODEL_FORMAT"]

MODEL_FORMAT = "cdlib-model-v1"
TRAINING_FORMAT = "cdlib-training-v1"


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, then rename: a crash
    or Ctrl-C mid-write never leaves a half-written checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safe_load(path: str | os.PathLike, what: str = "checkpoint") -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist; check the path or train one first.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, or holds objects that would run code
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text:
            reason = "it holds Python objects other than tensors, and loading them could run code"
        else:
            reason = "the file is truncated or is not a PyTorch checkpoint"
        raise CheckpointError(
            f"{what} {path} is not a readable cdlib checkpoint ({reason}); delete it or point to a file written by cdlib."
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} {path} holds a {type(obj).__name__}, not a cdlib checkpoint dictionary.")
    return obj


def save_model(model: nn.Module, path: str | os.PathLike, name: str, num_classes: int, **meta: Any) -> None:
    atomic_save({"format": MODEL_FORMAT, "model": name, "num_classes": num_classes, "state_dict": model.state_dict(), **meta}, path)


def load_model_weights(model: nn.Module, path: str | os.PathLike, name: str, what: str = "checkpoint") -> nn.Module:
    """Load a model file into ``model`` (built as ``name``), with a clear error on any mismatch.

    A plain state dict (e.g. torchvision's) is accepted too.
    """
    obj = safe_load(path, what)
    if obj.get("format") == MODEL_FORMAT:
        saved_name, saved_classes = obj.get("model"), obj.get("num_classes")
        if saved_name != name or saved_classes != getattr(model, "num_classes", saved_classes):
            raise CheckpointError(
                f"{what} {path} holds a {saved_name} with {saved_classes} classes, but a {name} with "
                f"{getattr(model, 'num_classes', '?')} classes was asked for; pass the matching model name or checkpoint."
            )
        state = obj["state_dict"]
    elif obj.get("format") == TRAINING_FORMAT:
        state = {k[len("student."):]: v for k, v in obj["trainable"].items() if k.startswith("student.")}
    else:
        state = obj.get("state_dict", obj)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:200]
        raise CheckpointError(f"{what} {path} does not fit a {name}: {first}; pass the checkpoint of a {name}.") from None
    return model


def load_model(path: str | os.PathLike, name: Optional[str] = None, num_classes: Optional[int] = None) -> nn.Module:
    """Build and load the model a model file describes (name and classes from the file)."""
    obj = safe_load(path, "model file")
    if obj.get("format") == TRAINING_FORMAT:
        name = name or obj.get("config", {}).get("student")
    name = name or obj.get("model")
    num_classes = num_classes or obj.get("num_classes")
    if name is None or num_classes is None:
        raise CheckpointError(f"{path} does not say which model it holds; pass name= and num_classes=.")
    model = models.create(name, num_classes=num_classes)
    return load_model_weights(model, path, name, "model file")

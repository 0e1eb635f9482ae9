"""Data sets by name, with one interface for all of them.

``load(name, root=...)`` returns a :class:`DataBundle` (train and test sets plus
what a model needs to know: classes, image size, normalisation), and
``make_loader(dataset, ...)`` turns a set into batches of normalised float
images and integer labels. Small sets are kept in memory as uint8 tensors; their
loader can keep them on the GPU and augment whole batches there
(:class:`DeviceLoader`), which is what keeps a GPU fed on a 2-core Colab VM.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import ConfigError
from ..registry import Registry
from .loaders import DeviceLoader, EpochSampler, SeededAugmentation, make_loader, workers_ended
from .sets import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PAD_MODES,
    DataBundle,
    TensorImageSet,
    augment_batch,
    crop_batch,
    normalize,
)
from .sources import UnreadableImage, _load_cifar100, _load_digits, _load_imagenet, _load_synthetic

__all__ = [
    "DataBundle", "TensorImageSet", "DeviceLoader", "EpochSampler", "SeededAugmentation", "augment_batch",
    "crop_batch", "normalize", "fingerprint", "load", "options", "check_options", "names", "make_loader", "PAD_MODES",
    "DATA_SETS", "CIFAR100_MEAN", "CIFAR100_STD", "IMAGENET_MEAN", "IMAGENET_STD", "workers_ended", "UnreadableImage",
]

DATA_SETS: Registry = Registry("data set")
for _name, _loader in (("cifar100", _load_cifar100), ("imagenet", _load_imagenet), ("digits", _load_digits),
                       ("synthetic", _load_synthetic)):
    DATA_SETS.register(_name, _loader, locked=True)
# Parameters every loader call gets from load() itself rather than from **options.
_FIXED = ("root", "download", "image_size")


def names() -> list:
    return DATA_SETS.names()


def options(name: str) -> list:
    """The keyword options data set ``name`` takes besides root / download / image_size."""
    own = [p for p in inspect.signature(DATA_SETS.get(name)).parameters if p not in _FIXED]
    # ImageNet's augmentation (random resized crop) pads nothing; the in-memory sets pad-and-crop.
    return own if name == "imagenet" else own + ["pad_mode"]



def check_options(name: str, options_: dict) -> None:
    """Refuse an option data set ``name`` does not take and a ``pad_mode`` it does not know, before any image
    is read (:func:`cdlib.recipes.validate` calls it too)."""
    valid = options(name)
    unknown = sorted(set(options_) - set(valid))
    if unknown:
        raise ConfigError(f"data set {name!r} does not take the option(s) {', '.join(unknown)}; "
                          f"its options are {', '.join(valid) if valid else 'none (besides root, download, image_size)'}.")
    if options_.get("pad_mode", "reflect") not in PAD_MODES:
        raise ConfigError(f"pad_mode must be one of {', '.join(PAD_MODES)}, got {options_['pad_mode']!r}; "
                          "reflect is the reference code's padding, zeros torchvision's RandomCrop default.")

def load(
    name: str,
    root: Optional[str | os.PathLike] = None,
    download: bool = False,
    image_size: Optional[int] = None,
    **options_,
) -> DataBundle:
    """A data set by name, with the options it takes (any other is a :class:`ConfigError` listing them).

    * ``cifar100``: the CIFAR-100 "python version" archive, read directly from
      ``root`` (the folder holding ``cifar-100-python``; ``download=True``
      fetches it), so a small archive in the same format loads through the same
      code; the reference code's augmentation: pad 4, random crop, flip.
    * ``imagenet``: ImageFolder trees ``root/train`` and ``root/val`` with the
      paper's PIL transforms; ``image_size`` sets the crop (default 224).
    * ``digits``: scikit-learn's 1,797 real 8x8 handwritten digits (shipped in
      its wheel, so offline), resized to ``image_size`` (default 16); the
      bundled default. ``train_per_class`` (a low-data regime: that many
      training images per class, all others for testing) or ``test_fraction``
      (default 0.2), ``seed`` (of the split and the clutter). Cluttered as the
      cluttered MNIST of the Spatial Transformer paper (Jaderberg et al. 2015):
      ``canvas`` (side of the canvas the digit is placed on), ``clutter``
      (fragments of other digits per image), ``clutter_size`` (their side,
      default half a digit), ``test_draws`` (each test digit under that many
      fixed placements and clutter draws; default 1).
    * ``synthetic``: class prototypes plus noise, of any ``image_size``
      (default 16), for tests: ``num_classes``, ``train_per_class``,
      ``test_per_class``, ``seed``.

    Every set but ImageNet also takes ``pad_mode``: ``"reflect"`` (the default,
    as the reference code) or ``"zeros"`` padding before the random crop.
    """
    check_options(name, options_)
    root = None if root is None else str(root)
    if name == "cifar100":
        return _with_pad_mode(_load_cifar100(root, download), options_.get("pad_mode"))
    if name == "imagenet":
        return _load_imagenet(root, image_size)
    pad_mode = options_.pop("pad_mode", None)
    return _with_pad_mode(DATA_SETS.get(name)(image_size, **options_), pad_mode)


def _with_pad_mode(bundle: DataBundle, pad_mode: Optional[str]) -> DataBundle:
    """``bundle`` with its training set padded by ``pad_mode`` (None: the set's own, reflect)."""
    if pad_mode is not None:
        bundle.train.pad_mode = pad_mode
    return bundle


def fingerprint(bundle: DataBundle) -> str:
    """A SHA-256 (hex) of what a model trained on ``bundle`` saw and is tested on.

    In-memory sets hash their uint8 images and labels (train and test), so a
    changed split, clutter or resize changes it; folder sets (ImageNet) hash
    their file paths, relative to the split folder, and labels (reading every
    image would take as long as an epoch).
    """
    digest = hashlib.sha256(f"{bundle.name}|{bundle.num_classes}|{bundle.image_size}".encode())
    for split in (bundle.train, bundle.test):
        if isinstance(split, TensorImageSet):
            digest.update(split.images.contiguous().numpy().tobytes())
            digest.update(split.labels.numpy().astype(np.int64).tobytes())
        elif hasattr(split, "samples"):
            root = Path(getattr(split, "root", "."))
            for path, label in split.samples:
                shown_path = Path(path).relative_to(root) if Path(path).is_relative_to(root) else path
                digest.update(f"{shown_path}|{label}\n".encode())
        else:
            digest.update(f"{type(split).__name__}|{len(split)}".encode())
    return digest.hexdigest()

"""A small CIFAR-100 archive in the real on-disk format, for tests that load it the way readers do.

torchvision's download extracts ``cifar-100-python.tar.gz`` into ``<root>/cifar-100-python/``
with three files, each a pickled dict (written by Python 2, protocol 2):

- ``train`` and ``test``: ``data`` (uint8 array, N x 3072: the 1024 red, then green, then
  blue values of a 32x32 image, row by row), ``fine_labels`` and ``coarse_labels``
  (lists of ints), ``filenames`` and ``batch_label``;
- ``meta``: ``fine_label_names`` (100 names) and ``coarse_label_names`` (20).

:func:`write_cifar100` writes exactly that, with random pixels and every class present
in both splits, so ``cdlib.data.load("cifar100", root=...)`` reads it as it reads the
real archive.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

FOLDER = "cifar-100-python"
NUM_CLASSES = 100


def _split(per_class: int, seed: int, name: str) -> dict:
    rng = np.random.default_rng(seed)
    fine = np.repeat(np.arange(NUM_CLASSES), per_class)
    rng.shuffle(fine)
    n = len(fine)
    return {
        "filenames": [f"{name}_{i:05d}.png" for i in range(n)],
        "batch_label": f"{name} batch 1 of 1",
        "fine_labels": [int(v) for v in fine],
        "coarse_labels": [int(v) // 5 for v in fine],
        "data": rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8),
    }


def write_cifar100(root: Path, train_per_class: int = 2, test_per_class: int = 1, seed: int = 0) -> Path:
    """Write ``root/cifar-100-python/{train,test,meta}``; returns ``root`` (the DATA_ROOT to pass)."""
    folder = Path(root) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "train": _split(train_per_class, seed, "train"),
        "test": _split(test_per_class, seed + 1, "test"),
        "meta": {
            "fine_label_names": [f"class_{i:02d}" for i in range(NUM_CLASSES)],
            "coarse_label_names": [f"superclass_{i:02d}" for i in range(NUM_CLASSES // 5)],
        },
    }
    for name, obj in files.items():
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)  # the real archive's protocol
    return Path(root)

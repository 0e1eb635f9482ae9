"""Data sets by name, with one interface for all of them.

``load(name, root=...)`` returns a :class:`DataBundle` (train and test sets plus
what a model needs to know: classes, image size, normalisation), and
``make_loader(dataset, ...)`` turns a set into batches of normalised float
images and integer labels.

* ``cifar100``: the CIFAR-100 "python version" archive, read directly (so a
  small archive in the same format loads through the same code); the reference
  code's augmentation: reflect-pad 4, random 32x32 crop, horizontal flip.
* ``imagenet``: an ImageFolder tree ``root/train/<class>/*.JPEG`` and
  ``root/val/<class>/*.JPEG`` with the paper's PIL transforms.
* ``digits``: scikit-learn's 1,797 real 8x8 handwritten digits (shipped inside
  the scikit-learn wheel, so it works offline), upscaled; the bundled default.
  ``canvas=`` and ``clutter=`` make a harder version: each digit placed at a
  random spot of a larger dark canvas strewn with fragments of other digits, as
  in the cluttered MNIST of the Spatial Transformer paper (Jaderberg et al. 2015).
* ``synthetic``: a class-structured random set (class prototypes plus noise
  and shifts) of any size, for tests and quick experiments.

Small sets (CIFAR-100, digits, synthetic) are kept in memory as uint8 tensors;
their loader can keep them on the GPU and augment whole batches there
(:class:`DeviceLoader`), which is what keeps a GPU fed on a 2-core Colab VM.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .errors import ConfigError, DataError

__all__ = [
    "DataBundle",
    "TensorImageSet",
    "DeviceLoader",
    "augment_batch",
    "crop_batch",
    "fingerprint",
    "load",
    "options",
    "names",
    "make_loader",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

CIFAR100_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR100_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAD_MODES = ("reflect", "zeros")


@dataclass
class DataBundle:
    """A data set's train and test splits and the facts a model needs."""

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    image_size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    class_names: List[str] = field(default_factory=list)

    def __repr__(self) -> str:
        return (
            f"DataBundle({self.name!r}, train={len(self.train)}, test={len(self.test)}, "
            f"classes={self.num_classes}, image_size={self.image_size})"
        )


class TensorImageSet(Dataset):
    """uint8 images (N, C, H, W) in memory, with pad-crop / flip augmentation.

    ``pad_mode`` is ``"reflect"`` (the reference code's ``Pad(4, padding_mode='reflect')``)
    or ``"zeros"`` (torchvision's ``RandomCrop(padding=...)`` default).

    Indexing returns one normalised float image, so a standard DataLoader (and
    DistributedSampler) works; :class:`DeviceLoader` does the same work a
    batch at a time on any device.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool = False,
        pad: int = 4,
        flip: bool = True,
        pad_mode: str = "reflect",
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}.")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"{len(labels)} labels for {len(images)} images.")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {', '.join(PAD_MODES)}, got {pad_mode!r}.")
        if pad_mode == "reflect" and augment and pad >= min(images.shape[2:]):
            raise ValueError(f"reflect padding by {pad} needs images larger than {pad} pixels, got {tuple(images.shape[2:])}.")
        self.images = images
        self.labels = labels.long()
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.augment = augment
        self.pad = pad
        self.flip = flip
        self.pad_mode = pad_mode

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        batch = augment_batch(self.images[index : index + 1], self, generator=None) if self.augment else self.images[index : index + 1]
        return normalize(batch, self.mean, self.std)[0], int(self.labels[index])


def normalize(images_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 normalised with per-channel mean / std (in [0, 1] units)."""
    m = torch.tensor(mean, device=images_uint8.device).view(1, -1, 1, 1) * 255.0
    s = torch.tensor(std, device=images_uint8.device).view(1, -1, 1, 1) * 255.0
    return (images_uint8.float() - m) / s


def _source_index(size: int, pad: int, mode: str, device) -> torch.Tensor:
    """For each position -pad..size+pad-1 of a padded axis, the source position it copies
    (reflect: mirrored about the edge pixel, as ``numpy.pad(mode='reflect')``); -1 for a zero."""
    j = torch.arange(-pad, size + pad, device=device)
    if mode == "zeros":
        return torch.where((j >= 0) & (j < size), j, torch.full_like(j, -1))
    j = j.abs()
    return torch.where(j >= size, 2 * (size - 1) - j, j)


def crop_batch(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int, mode: str = "reflect") -> torch.Tensor:
    """Image i padded by ``pad`` (``mode``) and cropped back to size at offset (dy[i], dx[i]) of the padded image.

    Two gathers, no padded copy: the same pixels as torchvision's
    ``F.crop(F.pad(img, pad, padding_mode=mode), dy, dx, h, w)``.
    """
    n, c, h, w = images.shape
    device = images.device
    rows = _source_index(h, pad, mode, device)[dy.to(device)[:, None] + torch.arange(h, device=device)]  # (n, h)
    cols = _source_index(w, pad, mode, device)[dx.to(device)[:, None] + torch.arange(w, device=device)]  # (n, w)
    out = images.gather(2, rows.clamp(min=0).view(n, 1, h, 1).expand(n, c, h, w))
    out = out.gather(3, cols.clamp(min=0).view(n, 1, 1, w).expand(n, c, h, w))
    if mode == "zeros":
        inside = (rows >= 0).view(n, 1, h, 1) & (cols >= 0).view(n, 1, 1, w)
        out = torch.where(inside, out, torch.zeros((), dtype=out.dtype, device=device))
    return out


def augment_batch(images: torch.Tensor, spec: TensorImageSet, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Pad by ``spec.pad`` (``spec.pad_mode``), crop back to size at a random offset per image, flip half.

    The same distribution as torchvision's ``RandomCrop(size, padding=pad,
    padding_mode=...)`` + ``RandomHorizontalFlip()``, computed for a whole batch.
    """
    n = images.shape[0]
    device = images.device
    rng_device = generator.device if generator else "cpu"
    out = images
    if spec.pad > 0:
        span = 2 * spec.pad + 1
        dy = torch.randint(0, span, (n,), generator=generator, device=rng_device).to(device)
        dx = torch.randint(0, span, (n,), generator=generator, device=rng_device).to(device)
        out = crop_batch(images, dy, dx, spec.pad, getattr(spec, "pad_mode", "reflect"))
    if spec.flip:
        flip = torch.rand(n, generator=generator, device=rng_device).to(device) < 0.5
        out = torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)
    return out


class DeviceLoader:
    """Batches of a :class:`TensorImageSet` made on ``device``: no workers, no PIL.

    The uint8 images move to the device once; each epoch draws a permutation
    (seeded by ``seed`` and the epoch, so runs and resumes are reproducible),
    augments a batch at a time and normalises in float32. With
    ``world_size > 1`` every rank takes an equal, disjoint shard, as
    DistributedSampler does.
    """

    def __init__(
        self,
        dataset: TensorImageSet,
        batch_size: int,
        train: bool,
        device: torch.device | str = "cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: Optional[bool] = None,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.train = train
        self.device = torch.device(device)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = train if drop_last is None else drop_last
        self.epoch = 0
        self.images = dataset.images.to(self.device, non_blocking=True)
        self.labels = dataset.labels.to(self.device, non_blocking=True)
        self.mean = torch.tensor(dataset.mean, device=self.device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(dataset.std, device=self.device).view(1, -1, 1, 1) * 255.0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.dataset)
        if self.train:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            per_rank = n // self.world_size if self.train else math.ceil(n / self.world_size)
            order = order[self.rank :: self.world_size][:per_rank]
        return order.to(self.device)

    def __len__(self) -> int:
        n = len(self.dataset)
        if self.world_size > 1:
            n = n // self.world_size if self.train else math.ceil(n / self.world_size)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_samples(self) -> int:
        return min(len(self) * self.batch_size, len(self._indices()))

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        order = self._indices()
        g = torch.Generator(device=self.device).manual_seed(self.seed * 7919 + self.epoch + 1) if self.train else None
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            images = self.images.index_select(0, idx)
            if self.train and self.dataset.augment:
                images = augment_batch(images, self.dataset, g)
            yield (images.float() - self.mean) / self.std, self.labels.index_select(0, idx)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    device: torch.device | str = "cpu",
    num_workers: int = 4,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    on_device: bool = True,
):
    """The fastest loader for ``dataset``: a :class:`DeviceLoader` for in-memory
    sets (unless ``on_device=False``), else a DataLoader with workers and
    pinned memory (and a DistributedSampler when ``world_size > 1``)."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}.")
    if train and batch_size > len(dataset) // max(world_size, 1):
        raise ConfigError(
            f"batch size {batch_size} is larger than the {len(dataset) // max(world_size, 1)} training images "
            f"each of {world_size} process(es) gets; use a batch size of at most that."
        )
    if isinstance(dataset, TensorImageSet) and on_device:
        return DeviceLoader(dataset, batch_size, train, device=device, seed=seed, rank=rank, world_size=world_size)
    sampler = None
    if train:
        sampler = EpochSampler(len(dataset), seed=seed, rank=rank, world_size=world_size)
        dataset = SeededAugmentation(dataset, seed)
    elif world_size > 1:
        # Evaluation: disjoint shards, none padded with repeats (DistributedSampler's
        # padding would count some test images twice in the combined accuracy).
        sampler = range(rank, len(dataset), world_size)
    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train,
        num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",
        persistent_workers=num_workers > 0,
        generator=g,
    )


class EpochSampler(torch.utils.data.Sampler):
    """The training order of one process: a permutation seeded by ``seed`` and the
    epoch, this rank's equal share of it (as DistributedSampler with
    ``drop_last=True``), optionally starting part-way through.

    It yields ``(epoch, index)`` keys, so that :class:`SeededAugmentation` can give
    every image of every epoch its own augmentation seed. That is what makes a
    resumed ImageNet run cheap and exact: :meth:`start_at` skips the images already
    trained on instead of loading and augmenting them again, and the images after
    them are augmented exactly as in the uninterrupted run, whatever the number of
    DataLoader workers.
    """

    def __init__(self, num_images: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.num_images, self.seed, self.rank, self.world_size = num_images, seed, rank, world_size
        self.per_rank = num_images // world_size
        self.epoch = 0
        self._start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        # A start position belongs to the epoch it was set for, even if that pass drew nothing.
        self._start = 0

    def start_at(self, position: int) -> None:
        """Begin the next pass at ``position`` (images into this rank's share of the epoch); one pass only."""
        if not 0 <= position <= self.per_rank:
            raise ValueError(f"position {position} is outside this rank's {self.per_rank} images per epoch.")
        self._start = position

    def __len__(self) -> int:
        return self.per_rank - self._start

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.num_images, generator=g)[self.rank :: self.world_size][: self.per_rank]
        start, self._start = self._start, 0
        epoch = self.epoch
        for index in order[start:].tolist():
            yield epoch, index


class SeededAugmentation(Dataset):
    """``dataset[index]`` with torch's RNG seeded by (seed, epoch, index) for that one image.

    Keys come from :class:`EpochSampler`. The caller's RNG is left as it was, so
    loading without workers draws nothing from the training process's random stream.
    Transforms that draw from numpy or ``random`` instead of torch are not covered.
    """

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]):
        epoch, index = key
        # The CPU generator alone: torch.manual_seed would also visit every accelerator
        # backend, 60x slower, and transforms draw from the CPU generator only.
        cpu_rng = torch.random.default_generator
        saved = cpu_rng.get_state()
        cpu_rng.manual_seed(((self.seed * 1_000_003 + epoch) * 2_654_435_761 + index) % (2**63))
        try:
            return self.dataset[index]
        finally:
            cpu_rng.set_state(saved)


# ---------------------------------------------------------------- CIFAR-100


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only: a data file must never run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        # Pickle protocol 5 (Python 3.14's default) stores arrays via _frombuffer.
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_batch(path: Path) -> dict:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as exc:  # corrupt bytes raise anything from UnpicklingError to OverflowError / MemoryError
        raise DataError(f"{path} is not a readable CIFAR-100 batch file ({exc}); delete it and download the archive again.") from None
    if not isinstance(batch, dict):
        raise DataError(
            f"{path} holds a {type(batch).__name__}, not the dict of a CIFAR-100 batch file; delete it and download the archive again."
        )
    return batch


def _cifar100_split(folder: Path, split: str) -> Tuple[torch.Tensor, torch.Tensor]:
    batch = _read_cifar_batch(folder / split)
    try:
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["fine_labels"], dtype=np.int64)
    except KeyError as exc:
        raise DataError(f"{folder / split} has no {exc} entry; it is not a CIFAR-100 (python version) batch file.") from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise DataError(
            f"{folder / split}: 'data' must be uint8 rows and 'fine_labels' integers ({exc}); "
            "it is not a CIFAR-100 (python version) batch file."
        ) from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.ndim != 1 or len(labels) != len(data):
        raise DataError(
            f"{folder / split} holds data of shape {data.shape} with {labels.size} labels; "
            "CIFAR-100 expects (N, 3072) uint8 rows and N fine labels."
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= 100):
        bad = labels[(labels < 0) | (labels >= 100)]
        raise DataError(
            f"{folder / split} has {len(bad)} fine label(s) outside 0..99 (e.g. {int(bad[0])}); CIFAR-100 has 100 "
            "classes, so the file is damaged or from another data set: download the archive again."
        )
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def _load_cifar100(root: Optional[str], download: bool) -> DataBundle:
    root_path = Path(root if root is not None else "data").expanduser()
    folder = root_path / "cifar-100-python"
    if download and not (folder / "train").exists():
        import torchvision

        try:
            torchvision.datasets.CIFAR100(str(root_path), train=True, download=True)
        except OSError as exc:  # no network (URLError), a refused connection, an unwritable or full root
            from .oserrors import remedy

            reason = getattr(exc, "reason", None) or (remedy(exc) if exc.errno else exc)
            raise DataError(
                f"could not download CIFAR-100 into {root_path} ({reason}); without a network, fetch "
                "cifar-100-python.tar.gz elsewhere, extract it into that folder, and run without --download."
            ) from None
    missing = [f for f in ("train", "test", "meta") if not (folder / f).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-100 not found: {folder} lacks {', '.join(missing)}; expected the extracted python version "
            "(cifar-100-python/train, test, meta) under the data root — pass download=True (CLI: --download) "
            "or point root at the folder that contains cifar-100-python."
        )
    meta = _read_cifar_batch(folder / "meta")
    class_names = list(meta.get("fine_label_names", [])) if isinstance(meta, dict) else []
    train_x, train_y = _cifar100_split(folder, "train")
    test_x, test_y = _cifar100_split(folder, "test")
    return DataBundle(
        name="cifar100",
        train=TensorImageSet(train_x, train_y, CIFAR100_MEAN, CIFAR100_STD, augment=True, pad=4, flip=True),
        test=TensorImageSet(test_x, test_y, CIFAR100_MEAN, CIFAR100_STD),
        num_classes=100,
        image_size=32,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        class_names=class_names or [str(i) for i in range(100)],
    )


# ----------------------------------------------------------------- ImageNet


def _load_imagenet(root: Optional[str], image_size: Optional[int]) -> DataBundle:
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    if root is None:
        raise DataError("ImageNet needs a data root: pass root= (CLI: --data-root) pointing at a folder with train/ and val/ ImageFolder trees.")
    root_path = Path(root).expanduser()
    size = image_size or 224
    resize = int(round(size * 256 / 224))
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    transforms = {
        "train": T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm]),
        "val": T.Compose([T.Resize(resize), T.CenterCrop(size), T.ToTensor(), norm]),
    }
    sets = {}
    for split, tf in transforms.items():
        folder = root_path / split
        if not folder.is_dir():
            raise DataError(
                f"ImageNet split folder {folder} does not exist; expected {root_path}/train/<class>/<image> and "
                f"{root_path}/val/<class>/<image> (ImageFolder layout)."
            )
        try:
            sets[split] = ImageFolder(str(folder), transform=tf)
        except (FileNotFoundError, RuntimeError) as exc:
            raise DataError(f"{folder} is not an ImageFolder tree of <class>/<image> files: {exc}") from None
    if sets["train"].classes != sets["val"].classes:
        raise DataError(
            f"{root_path}/train has {len(sets['train'].classes)} classes but {root_path}/val has "
            f"{len(sets['val'].classes)} (or different names); both splits need the same class folders."
        )
    return DataBundle(
        name="imagenet",
        train=sets["train"],
        test=sets["val"],
        num_classes=len(sets["train"].classes),
        image_size=size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        class_names=list(sets["train"].classes),
    )


# ------------------------------------------------------------------- digits

def _load_digits(
    image_size: Optional[int],
    test_fraction: float = 0.2,
    train_per_class: Optional[int] = None,
    seed: int = 0,
    canvas: Optional[int] = None,
    clutter: int = 0,
    clutter_size: Optional[int] = None,
) -> DataBundle:
    from sklearn.datasets import load_digits

    size = image_size or 16
    digits = load_digits()
    labels = torch.from_numpy(digits.target).long()
    _check_digits_options(labels, size, test_fraction, train_per_class, canvas, clutter, clutter_size)
    images = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0  # 8x8 grey levels 0..16
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    train_idx, test_idx = _stratified_split(labels, test_fraction, seed, train_per_class)
    splits = {"train": images[train_idx], "test": images[test_idx]}
    if canvas is not None:
        # Each split's clutter comes from its own digits, so no test pixels reach the training images.
        frag = clutter_size or max(1, size // 2)
        splits = {k: _cluttered(v, canvas, clutter, frag, torch.Generator().manual_seed(seed * 1_000_003 + i + 1))
                  for i, (k, v) in enumerate(splits.items())}
    side = canvas or size
    train_x, test_x = ((v * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous() for v in splits.values())
    pad = max(1, side // 8)
    # Normalisation statistics of the training split itself, grey replicated to RGB.
    mean = (train_x.float().mean().item() / 255,) * 3
    std = (train_x.float().std().item() / 255,) * 3
    return DataBundle(
        name="digits",
        # Flipping a digit changes what it is, so only the pad-and-crop jitter applies.
        train=TensorImageSet(train_x, labels[train_idx], mean, std, augment=True, pad=pad, flip=False),
        test=TensorImageSet(test_x, labels[test_idx], mean, std),
        num_classes=10,
        image_size=side,
        mean=mean,
        std=std,
        class_names=[str(d) for d in range(10)],
    )


def _check_digits_options(labels, size, test_fraction, train_per_class, canvas, clutter, clutter_size) -> None:
    smallest = int(labels.bincount().min())
    if train_per_class is not None:
        if not isinstance(train_per_class, int) or not 1 <= train_per_class < smallest:
            raise ConfigError(f"digits: train_per_class must be a whole number from 1 to {smallest - 1} (the smallest "
                              f"class has {smallest} images and each class keeps one for testing), got {train_per_class!r}.")
    elif not isinstance(test_fraction, (int, float)) or not (
        round(smallest * test_fraction) >= 1 and round(smallest * (1 - test_fraction)) >= 1
    ):
        raise ConfigError(f"digits: test_fraction must leave every class training and test images (between about "
                          f"{1 / smallest:.3f} and {1 - 1 / smallest:.3f}), got {test_fraction!r}.")
    if canvas is not None and (not isinstance(canvas, int) or canvas < size):
        raise ConfigError(f"digits: canvas must be a whole number of pixels at least the digit size {size}, got {canvas!r}.")
    if not isinstance(clutter, int) or clutter < 0:
        raise ConfigError(f"digits: clutter must be a whole number of fragments (0 or more), got {clutter!r}.")
    if clutter and canvas is None:
        raise ConfigError("digits: clutter needs a canvas to strew it on; pass canvas= (e.g. canvas=32) as well.")
    if clutter_size is not None and (not isinstance(clutter_size, int) or not 1 <= clutter_size <= size):
        raise ConfigError(f"digits: clutter_size must be from 1 to the digit size {size}, got {clutter_size!r}.")


def _cluttered(digits: torch.Tensor, canvas: int, clutter: int, frag: int, g: torch.Generator) -> torch.Tensor:
    """(N, 1, s, s) digits in [0, 1] -> (N, 1, canvas, canvas): each digit at a random spot,
    over ``clutter`` random ``frag``-pixel squares cut from random other digits of the same set
    (pixel-wise maximum, as cluttered MNIST overlays its fragments)."""
    n, _, s, _ = digits.shape
    out = torch.zeros(n, 1, canvas, canvas)
    if clutter:
        sources = torch.randint(0, n, (n, clutter), generator=g)
        sources = torch.where(sources == torch.arange(n)[:, None], (sources + 1) % n, sources)  # never itself
        cut = torch.randint(0, s - frag + 1, (n, clutter, 2), generator=g)
        put = torch.randint(0, canvas - frag + 1, (n, clutter, 2), generator=g)
        for i in range(n):
            for k in range(clutter):
                (cy, cx), (py, px) = cut[i, k].tolist(), put[i, k].tolist()
                piece = digits[sources[i, k], 0, cy : cy + frag, cx : cx + frag]
                region = out[i, 0, py : py + frag, px : px + frag]
                torch.maximum(region, piece, out=region)
    at = torch.randint(0, canvas - s + 1, (n, 2), generator=g)
    for i in range(n):
        y, x = at[i].tolist()
        region = out[i, 0, y : y + s, x : x + s]
        torch.maximum(region, digits[i, 0], out=region)
    return out


def _stratified_split(
    labels: torch.Tensor, test_fraction: float, seed: int, train_per_class: Optional[int] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per class: ``train_per_class`` training images (the rest test), or a ``test_fraction`` split."""
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = len(idx) - train_per_class if train_per_class else int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


# ---------------------------------------------------------------- synthetic


def _load_synthetic(
    image_size: Optional[int], num_classes: int = 10, train_per_class: int = 100, test_per_class: int = 20, seed: int = 0
) -> DataBundle:
    for option, value, least in (("num_classes", num_classes, 2), ("train_per_class", train_per_class, 1),
                                 ("test_per_class", test_per_class, 1)):
        if not isinstance(value, int) or value < least:
            raise ConfigError(f"synthetic: {option} must be a whole number of at least {least}, got {value!r}.")
    size = image_size or 16
    g = torch.Generator().manual_seed(seed)
    # Smooth class prototypes: low-resolution noise upsampled, so classes differ in
    # coarse colour/shape structure that convolutions can pick up.
    prototypes = F.interpolate(torch.rand(num_classes, 3, 4, 4, generator=g), size=(size, size), mode="bilinear", align_corners=False)

    def sample(per_class: int) -> Tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        noise = 0.25 * torch.randn(len(labels), 3, size, size, generator=g)
        images = (prototypes[labels] + noise).clamp(0, 1)
        return (images * 255).round().to(torch.uint8), labels

    train_x, train_y = sample(train_per_class)
    test_x, test_y = sample(test_per_class)
    mean, std = (0.5, 0.5, 0.5), (0.3, 0.3, 0.3)
    return DataBundle(
        name="synthetic",
        train=TensorImageSet(train_x, train_y, mean, std, augment=True, pad=max(1, size // 8), flip=True),
        test=TensorImageSet(test_x, test_y, mean, std),
        num_classes=num_classes,
        image_size=size,
        mean=mean,
        std=std,
        class_names=[f"class {i}" for i in range(num_classes)],
    )


_LOADERS = {"cifar100": _load_cifar100, "imagenet": _load_imagenet, "digits": _load_digits, "synthetic": _load_synthetic}
# Parameters every loader call gets from load() itself rather than from **options.
_FIXED = ("root", "download", "image_size")


def names() -> list:
    return list(_LOADERS)


def options(name: str) -> list:
    """The keyword options data set ``name`` takes besides root / download / image_size."""
    if name not in _LOADERS:
        raise ConfigError(f"unknown data set {name!r}; choose one of {', '.join(_LOADERS)}.")
    own = [p for p in inspect.signature(_LOADERS[name]).parameters if p not in _FIXED]
    # ImageNet's augmentation (random resized crop) pads nothing; the in-memory sets pad-and-crop.
    return own if name == "imagenet" else own + ["pad_mode"]


def load(
    name: str,
    root: Optional[str | os.PathLike] = None,
    download: bool = False,
    image_size: Optional[int] = None,
    **options_,
) -> DataBundle:
    """A data set by name: ``cifar100``, ``imagenet``, ``digits`` or ``synthetic``.

    ``root`` is the data folder (CIFAR-100: the folder holding
    ``cifar-100-python``; ImageNet: the folder holding ``train/`` and ``val/``).
    ``image_size`` resizes digits / synthetic images (default 16) and sets the
    ImageNet crop (default 224). ``digits`` takes ``train_per_class`` (a
    low-data regime: that many training images per class, all others for
    testing) or ``test_fraction`` (default 0.2), ``seed`` (of the split and the
    clutter), and for the cluttered version ``canvas`` (side of the canvas the
    ``image_size`` digit is placed on), ``clutter`` (fragments of other digits
    per image) and ``clutter_size`` (their side, default half a digit).
    ``synthetic`` takes ``num_classes``, ``train_per_class``,
    ``test_per_class`` and ``seed``. Every set but ImageNet also takes
    ``pad_mode``: ``"reflect"`` (the default, as the reference code) or
    ``"zeros"`` padding before the random crop. An option the set does not take is a
    :class:`ConfigError` listing those it does.
    """
    valid = options(name)
    unknown = sorted(set(options_) - set(valid))
    if unknown:
        raise ConfigError(
            f"data set {name!r} does not take the option(s) {', '.join(unknown)}; "
            f"its options are {', '.join(valid) if valid else 'none (besides root, download, image_size)'}."
        )
    root = None if root is None else str(root)
    if name == "cifar100":
        return _with_pad_mode(_load_cifar100(root, download), options_.get("pad_mode"))
    if name == "imagenet":
        return _load_imagenet(root, image_size)
    pad_mode = options_.pop("pad_mode", None)
    return _with_pad_mode(_LOADERS[name](image_size, **options_), pad_mode)


def _with_pad_mode(bundle: DataBundle, pad_mode: Optional[str]) -> DataBundle:
    """``bundle`` with its training set padded by ``pad_mode`` (None: the set's own, reflect)."""
    if pad_mode is None:
        return bundle
    if pad_mode not in PAD_MODES:
        raise ConfigError(f"pad_mode must be one of {', '.join(PAD_MODES)}, got {pad_mode!r}; "
                          "reflect is the reference code's padding, zeros torchvision's RandomCrop default.")
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
                digest.update(f"{Path(path).relative_to(root) if Path(path).is_relative_to(root) else path}|{label}\n".encode())
        else:
            digest.update(f"{type(split).__name__}|{len(split)}".encode())
    return digest.hexdigest()

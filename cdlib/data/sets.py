"""What a data set is in cdlib: a bundle of train and test sets, in-memory uint8
images, their normalisation, and the pad-and-crop augmentation applied to whole batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

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
            raise ValueError(f"reflect padding by {pad} needs images larger than {pad} pixels, "
                             f"got {tuple(images.shape[2:])}.")
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
        batch = self.images[index : index + 1]
        batch = augment_batch(batch, self, generator=None) if self.augment else batch
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



"""Batches from a data set: on the device for in-memory sets, a DataLoader for folders,
and the sampler that lets a resumed epoch skip the images it already trained on."""

from __future__ import annotations

import contextlib
import math
import weakref
from typing import Iterator, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError
from .sets import TensorImageSet, augment_batch


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

    def _per_rank(self) -> int:
        """Images per rank: an equal share (training), or every image in one shard (evaluation)."""
        n = len(self.dataset)
        return n // self.world_size if self.train else math.ceil(n / self.world_size)

    def _indices(self) -> torch.Tensor:
        n = len(self.dataset)
        if self.train:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        return order[self.rank :: self.world_size][: self._per_rank()].to(self.device)

    def __len__(self) -> int:
        n = self._per_rank()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

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
        raise ConfigError(f"batch size {batch_size} is larger than the {len(dataset) // max(world_size, 1)} training images "
                          f"each of {world_size} process(es) gets; use a batch size of at most that.")
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
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train,
        num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",
        persistent_workers=num_workers > 0,
        generator=g,
    )
    if num_workers > 0:
        _with_workers.add(loader)
    return loader


# The loaders make_loader gave worker processes, for workers_ended() to stop.
_with_workers: "weakref.WeakSet[DataLoader]" = weakref.WeakSet()


@contextlib.contextmanager
def workers_ended() -> Iterator[None]:
    """Stop the worker processes of the loaders made inside the block when it ends, however it ends.

    Persistent workers otherwise live as long as their loader, which an exception's traceback can keep
    until Python exits, and an exit that waits on workers is an exit that may hang.
    """
    before = set(map(id, _with_workers))
    try:
        yield
    finally:
        for loader in list(_with_workers):
            iterator = getattr(loader, "_iterator", None)
            if id(loader) not in before and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()  # torch's own orderly shutdown: a sentinel to each worker, then join
                loader._iterator = None


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



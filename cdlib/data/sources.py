"""Where the images come from: CIFAR-100 archives, ImageNet folders, the bundled digits
(plain or cluttered) and a synthetic set; each returns a :class:`~cdlib.data.DataBundle`."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError, is_whole
from .sets import CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD, DataBundle, TensorImageSet

Split = Tuple[torch.Tensor, torch.Tensor]  # uint8 images (N, C, H, W), labels (N,)


def _in_memory(name: str, train: Split, test: Split, mean: Sequence[float], std: Sequence[float], num_classes: int,
               pad: int, flip: bool, class_names: List[str]) -> DataBundle:
    """A bundle of two in-memory splits normalised alike; the training split is augmented (pad-and-crop, ``flip``)."""
    return DataBundle(name=name, train=TensorImageSet(*train, mean, std, augment=True, pad=pad, flip=flip),
                      test=TensorImageSet(*test, mean, std), num_classes=num_classes, image_size=train[0].shape[-1],
                      mean=mean, std=std, class_names=class_names)


# ---------------------------------------------------------------- CIFAR-100


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only: a data file must never run code."""

    # numpy 2 renamed numpy.core to numpy._core; pickle protocol 5 (Python 3.14's default) stores arrays via
    # _frombuffer.
    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
        (f"{core}.{module}", name) for core in ("numpy.core", "numpy._core")
        for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_batch(path: Path) -> dict:
    raw = path.read_bytes()
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as exc:  # corrupt bytes raise anything from UnpicklingError to OverflowError / MemoryError
        raise DataError(f"{path} is not a readable CIFAR-100 batch file ({exc}); delete it and download the archive "
                        "again.") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} holds a {type(batch).__name__}, not the dict of a CIFAR-100 batch file; delete it "
                        "and download the archive again.")
    return batch


def _cifar100_split(folder: Path, split: str) -> Tuple[torch.Tensor, torch.Tensor]:
    batch = _read_cifar_batch(folder / split)
    try:
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["fine_labels"], dtype=np.int64)
    except KeyError as exc:
        raise DataError(f"{folder / split} has no {exc} entry; it is not a CIFAR-100 (python version) batch file.") from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise DataError(f"{folder / split}: 'data' must be uint8 rows and 'fine_labels' integers ({exc}); "
                        "it is not a CIFAR-100 (python version) batch file.") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.ndim != 1 or len(labels) != len(data):
        raise DataError(f"{folder / split} holds data of shape {data.shape} with {labels.size} labels; "
                        "CIFAR-100 expects (N, 3072) uint8 rows and N fine labels.")
    if len(labels) and (labels.min() < 0 or labels.max() >= 100):
        bad = labels[(labels < 0) | (labels >= 100)]
        raise DataError(f"{folder / split} has {len(bad)} fine label(s) outside 0..99 (e.g. {int(bad[0])}); "
                        "CIFAR-100 has 100 classes, so the file is damaged or from another data set: download the "
                        "archive again.")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def _load_cifar100(root: Optional[str], download: bool) -> DataBundle:
    root_path = Path(root if root is not None else "data").expanduser()
    folder = root_path / "cifar-100-python"
    if download and not (folder / "train").exists():
        import torchvision

        try:
            torchvision.datasets.CIFAR100(str(root_path), train=True, download=True)
        except OSError as exc:  # no network (URLError), a refused connection, an unwritable or full root
            from ..errors import os_remedy

            reason = getattr(exc, "reason", None) or (os_remedy(exc) if exc.errno else exc)
            raise DataError(f"could not download CIFAR-100 into {root_path} ({reason}); without a network, fetch "
                            "cifar-100-python.tar.gz elsewhere, extract it into that folder, and run without "
                            "--download.") from None
    missing = [f for f in ("train", "test", "meta") if not (folder / f).is_file()]
    if missing:
        raise DataError(f"CIFAR-100 not found: {folder} lacks {', '.join(missing)}; expected the extracted python version "
                        "(cifar-100-python/train, test, meta) under the data root — pass download=True (CLI: --download) "
                        "or point root at the folder that contains cifar-100-python.")
    class_names = list(_read_cifar_batch(folder / "meta").get("fine_label_names", []))
    return _in_memory("cifar100", _cifar100_split(folder, "train"), _cifar100_split(folder, "test"), CIFAR100_MEAN,
                      CIFAR100_STD, 100, pad=4, flip=True, class_names=class_names or [str(i) for i in range(100)])


class UnreadableImage(DataError):
    """An image file of an ImageFolder tree that cannot be decoded (named, with what to do)."""

    def __init__(self, message: str) -> None:
        # Raised in a DataLoader worker, it reaches the main process rebuilt from the worker's whole
        # traceback; its last line is the sentence said here, and the one the user needs.
        marker = f"{type(self).__name__}: "
        if "Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


def _read_image(path: str):
    """torchvision's image loader, with a damaged file named in one sentence instead of PIL's traceback."""
    from PIL import Image
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        if type(exc).__name__ == "UnidentifiedImageError":
            why = "it is not an image file PIL can identify (damaged, or another kind of file)"
        else:
            why = (str(exc).splitlines() or [""])[0][:160] or "it could not be decoded"
        # Replacing keeps the file list, which a resumed run checks (cdlib.data.fingerprint); removing changes it.
        raise UnreadableImage(f"cannot read image {path} ({type(exc).__name__}): {why}; replace it with a good copy "
                              "(a run can then --resume), or remove it and start the run again.") from None


def _load_imagenet(root: Optional[str], image_size: Optional[int]) -> DataBundle:
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    if root is None:
        raise DataError("ImageNet needs a data root: pass root= (CLI: --data-root) pointing at a folder with train/ and "
                        "val/ ImageFolder trees.")
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
            raise DataError(f"ImageNet split folder {folder} does not exist; expected {root_path}/train/<class>/<image> and "
                            f"{root_path}/val/<class>/<image> (ImageFolder layout).")
        try:
            sets[split] = ImageFolder(str(folder), transform=tf, loader=_read_image)
        except (FileNotFoundError, RuntimeError) as exc:
            raise DataError(f"{folder} is not an ImageFolder tree of <class>/<image> files: {exc}") from None
    if sets["train"].classes != sets["val"].classes:
        raise DataError(f"{root_path}/train has {len(sets['train'].classes)} classes but {root_path}/val has "
                        f"{len(sets['val'].classes)} (or different names); both splits need the same class folders.")
    return DataBundle(name="imagenet", train=sets["train"], test=sets["val"], num_classes=len(sets["train"].classes),
                      image_size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD, class_names=list(sets["train"].classes))


# ------------------------------------------------------------------- digits

def _load_digits(
    image_size: Optional[int],
    test_fraction: float = 0.2,
    train_per_class: Optional[int] = None,
    seed: int = 0,
    canvas: Optional[int] = None,
    clutter: int = 0,
    clutter_size: Optional[int] = None,
    test_draws: int = 1,
) -> DataBundle:
    from sklearn.datasets import load_digits

    size = image_size or 16
    digits = load_digits()
    labels = torch.from_numpy(digits.target).long()
    _check_digits_options(labels, size, test_fraction, train_per_class, canvas, clutter, clutter_size, test_draws)
    images = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0  # 8x8 grey levels 0..16
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    train_idx, test_idx = _stratified_split(labels, test_fraction, seed, train_per_class)
    splits = {"train": images[train_idx], "test": images[test_idx]}
    if canvas is not None:
        # Each split's clutter comes from its own digits, so no test pixels reach the training images.
        frag = clutter_size or max(1, size // 2)
        splits = {k: _cluttered(v, canvas, clutter, frag, torch.Generator().manual_seed(seed * 1_000_003 + i + 1))
                  for i, (k, v) in enumerate(splits.items())}
        # More test images without more digits: every held-out digit again under other fixed
        # placements and clutter. Draw 1 is the set above, so test_draws=1 changes nothing.
        extra = [_cluttered(images[test_idx], canvas, clutter, frag,
                            torch.Generator().manual_seed(seed * 1_000_003 + 100 + d)) for d in range(1, test_draws)]
        splits["test"] = torch.cat([splits["test"], *extra])
    train_x, test_x = ((v * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous() for v in splits.values())
    # Normalisation statistics of the training split itself, grey replicated to RGB.
    mean = (train_x.float().mean().item() / 255,) * 3
    std = (train_x.float().std().item() / 255,) * 3
    # Flipping a digit changes what it is, so only the pad-and-crop jitter applies.
    return _in_memory("digits", (train_x, labels[train_idx]), (test_x, labels[test_idx].repeat(test_draws)), mean, std,
                      10, pad=max(1, (canvas or size) // 8), flip=False, class_names=[str(d) for d in range(10)])


def _check_digits_options(labels, size, test_fraction, train_per_class, canvas, clutter, clutter_size,
                          test_draws) -> None:
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
    if not is_whole(test_draws) or not 1 <= test_draws <= 100:
        raise ConfigError(f"digits: test_draws must be a whole number from 1 to 100 (clutter draws of each test "
                          f"digit), got {test_draws!r}.")
    if test_draws > 1 and canvas is None:
        raise ConfigError("digits: test_draws needs a canvas (each draw places the digit and its clutter anew); "
                          "pass canvas= as well.")


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
    prototypes = F.interpolate(torch.rand(num_classes, 3, 4, 4, generator=g), size=(size, size), mode="bilinear",
                               align_corners=False)

    def sample(per_class: int) -> Tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        noise = 0.25 * torch.randn(len(labels), 3, size, size, generator=g)
        images = (prototypes[labels] + noise).clamp(0, 1)
        return (images * 255).round().to(torch.uint8), labels

    return _in_memory("synthetic", sample(train_per_class), sample(test_per_class), (0.5,) * 3, (0.3,) * 3, num_classes,
                      pad=max(1, size // 8), flip=True, class_names=[f"class {i}" for i in range(num_classes)])



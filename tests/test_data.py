"""cdlib.data: CIFAR-100 archive reading (and its safety), ImageFolder, digits, synthetic,
loaders and the batch augmentation.

Every data set here is built on disk in tmp_path in the real format, so the real code paths
run; nothing is downloaded.
"""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import cdlib
from cdlib import data

CIFAR_MEAN_255 = (125.3, 123.0, 113.9)
CIFAR_STD_255 = (63.0, 62.1, 66.7)


# --------------------------------------------------------------------------- a tiny CIFAR-100 archive


def _cifar_split(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        "fine_labels": [int(v) for v in rng.integers(0, 100, size=n)],
        "coarse_labels": [int(v) for v in rng.integers(0, 20, size=n)],
        "filenames": [f"img_{seed}_{i}.png" for i in range(n)],
        "batch_label": "tiny",
    }


def write_tiny_cifar100(root: Path, protocol: int | None = None, n_train: int = 6, n_test: int = 4) -> dict:
    """cifar-100-python/{train,test,meta} as pickled dicts, like the real archive."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    splits = {"train": _cifar_split(n_train, 1), "test": _cifar_split(n_test, 2)}
    meta = {
        "fine_label_names": [f"fine_{i}" for i in range(100)],
        "coarse_label_names": [f"coarse_{i}" for i in range(20)],
    }
    for name, obj in (*splits.items(), ("meta", meta)):
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f, protocol=protocol)
    return splits


@pytest.fixture
def cifar_root(tmp_path):
    splits = write_tiny_cifar100(tmp_path)
    return tmp_path, splits


@pytest.mark.parametrize("protocol", [2, 4, 5, None])  # 2: the real archive's; None: this Python's default
def test_cifar100_loads_tiny_archive(tmp_path, protocol):
    splits = write_tiny_cifar100(tmp_path, protocol=protocol)
    bundle = data.load("cifar100", root=tmp_path)
    assert bundle.name == "cifar100"
    assert bundle.num_classes == 100 and bundle.image_size == 32
    assert bundle.class_names == [f"fine_{i}" for i in range(100)]
    assert len(bundle.train) == 6 and len(bundle.test) == 4
    for split, ds in (("train", bundle.train), ("test", bundle.test)):
        assert isinstance(ds, data.TensorImageSet)
        assert ds.images.dtype == torch.uint8
        assert tuple(ds.images.shape) == (len(splits[split]["data"]), 3, 32, 32)
        assert ds.labels.tolist() == splits[split]["fine_labels"]
    assert bundle.train.augment and not bundle.test.augment
    assert (bundle.train.pad, bundle.train.flip) == (4, True)


def test_cifar100_pixel_layout_round_trips(cifar_root):
    root, splits = cifar_root
    bundle = data.load("cifar100", root=root)
    rows = splits["test"]["data"]
    images = bundle.test.images
    # A CIFAR row is 1024 red, then 1024 green, then 1024 blue values, each 32 rows of 32.
    for i, c, y, x in [(0, 0, 0, 0), (0, 2, 31, 31), (1, 1, 5, 17), (3, 0, 31, 0), (2, 2, 0, 31)]:
        assert int(images[i, c, y, x]) == int(rows[i][c * 1024 + y * 32 + x])
    for i in range(len(rows)):
        assert np.array_equal(images[i].numpy(), rows[i].reshape(3, 32, 32))


def test_cifar100_normalization_uses_paper_statistics(cifar_root):
    root, splits = cifar_root
    bundle = data.load("cifar100", root=root)
    for got, want in zip(bundle.mean, CIFAR_MEAN_255):
        assert got == pytest.approx(want / 255)
    for got, want in zip(bundle.std, CIFAR_STD_255):
        assert got == pytest.approx(want / 255)
    # (v / 255 - m / 255) / (s / 255) = (v - m) / s for a pixel value v in 0..255.
    rows = splits["test"]["data"]
    image, label = bundle.test[1]
    assert image.dtype == torch.float32 and tuple(image.shape) == (3, 32, 32)
    assert label == splits["test"]["fine_labels"][1]
    for c, y, x in [(0, 0, 0), (1, 10, 20), (2, 31, 31)]:
        v = float(rows[1][c * 1024 + y * 32 + x])
        assert float(image[c, y, x]) == pytest.approx((v - CIFAR_MEAN_255[c]) / CIFAR_STD_255[c], abs=1e-5)
    # The on-device loader normalises the same way (test split: no augmentation, in order).
    loader = data.make_loader(bundle.test, batch_size=4, train=False)
    images, labels = next(iter(loader))
    assert labels.tolist() == splits["test"]["fine_labels"]
    torch.testing.assert_close(images[1], image)


def test_cifar100_missing_folder_names_path(tmp_path):
    with pytest.raises(cdlib.DataError) as info:
        data.load("cifar100", root=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "cifar-100-python") in str(info.value)


def test_cifar100_missing_file_names_it(cifar_root):
    root, _ = cifar_root
    (root / "cifar-100-python" / "meta").unlink()
    with pytest.raises(cdlib.DataError, match="meta"):
        data.load("cifar100", root=root)


GARBAGE = [
    b"",  # empty file
    b"this is not a pickle at all",
    b"\x80\x02}q\x00(X\x04\x00\x00\x00data",  # a dict cut off half-way
    bytes(range(256)),
    b"\x8e" + b"\xff" * 8 + b"junk",  # BINBYTES8 claiming ~2^64 bytes -> OverflowError inside pickle
    b"\x95" + b"\xb2@\xaa|\xcf\xc6:\xec" + b"(",  # FRAME with an absurd length
    b"\x80\x02\x96\xb4c\xa8\x01}\x89M_x",  # BYTEARRAY8 with an absurd length -> MemoryError inside pickle
    b"\x80\x02\x88.",  # a valid pickle of True: not a dict
]


@pytest.mark.parametrize("garbage", GARBAGE, ids=range(len(GARBAGE)))
def test_cifar100_malformed_pickle_is_data_error(cifar_root, garbage):
    root, _ = cifar_root
    (root / "cifar-100-python" / "train").write_bytes(garbage)
    with pytest.raises(cdlib.DataError, match="train"):
        data.load("cifar100", root=root)


@pytest.mark.parametrize(
    "bad_split",
    [
        [1, 2, 3],  # a list, not a dict
        {"fine_labels": [1]},  # no data
        {"data": np.zeros((2, 100), np.uint8), "fine_labels": [0, 1]},  # wrong row length
        {"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0]},  # label count
        {"data": "not pixels", "fine_labels": [0]},
        {"data": np.zeros((1, 3072), np.uint8), "fine_labels": 7},  # labels not a list
    ],
    ids=["list", "no-data", "row-length", "label-count", "string-data", "scalar-labels"],
)
def test_cifar100_wrong_contents_is_data_error(cifar_root, bad_split):
    root, _ = cifar_root
    with open(root / "cifar-100-python" / "test", "wb") as f:
        pickle.dump(bad_split, f, protocol=2)
    with pytest.raises(cdlib.DataError, match="test"):
        data.load("cifar100", root=root)


class _Evil:
    """Unpickling this runs a shell command (the classic pickle exploit)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("where", ["train", "meta"])
def test_cifar100_malicious_pickle_is_refused_and_not_run(cifar_root, tmp_path, where):
    root, _ = cifar_root
    marker = tmp_path / f"pwned_{where}"
    payload = {"data": _Evil(marker), "fine_labels": [0]} if where == "train" else {"fine_label_names": _Evil(marker)}
    with open(root / "cifar-100-python" / where, "wb") as f:
        pickle.dump(payload, f, protocol=2)
    with pytest.raises(cdlib.DataError, match="system|refus"):
        data.load("cifar100", root=root)
    assert not marker.exists(), "the pickled command ran"


# --------------------------------------------------------------------------- a tiny ImageFolder tree


CLASSES = ("ant", "bee", "cat")


@pytest.fixture
def imagenet_root(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in (("train", 3), ("val", 2)):
        for cls in CLASSES:
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                h, w = int(rng.integers(36, 60)), int(rng.integers(36, 60))
                pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                ext = "png" if i % 2 == 0 else "jpg"
                Image.fromarray(pixels).save(folder / f"{cls}_{i}.{ext}")
    return tmp_path


def test_imagenet_fingerprint_follows_the_file_list_not_the_location(imagenet_root, tmp_path_factory):
    import shutil

    first = data.fingerprint(data.load("imagenet", root=imagenet_root, image_size=32))
    assert first == data.fingerprint(data.load("imagenet", root=imagenet_root, image_size=32))
    moved = tmp_path_factory.mktemp("moved") / "imagenet"
    shutil.copytree(imagenet_root, moved)
    assert data.fingerprint(data.load("imagenet", root=moved, image_size=32)) == first  # paths relative to the split
    shutil.copy(moved / "val" / CLASSES[0] / f"{CLASSES[0]}_0.png", moved / "val" / CLASSES[1] / "extra.png")
    assert data.fingerprint(data.load("imagenet", root=moved, image_size=32)) != first


def test_imagenet_folder_loads_and_batches(imagenet_root):
    bundle = data.load("imagenet", root=imagenet_root, image_size=32)
    assert bundle.num_classes == 3 and bundle.class_names == list(CLASSES)
    assert bundle.image_size == 32
    assert len(bundle.train) == 9 and len(bundle.test) == 6
    train_loader = data.make_loader(bundle.train, batch_size=4, train=True, num_workers=0)
    batches = list(train_loader)
    assert len(batches) == 2  # 9 images, batch 4, drop_last for training
    for images, labels in batches:
        assert tuple(images.shape) == (4, 3, 32, 32) and images.dtype == torch.float32
        assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1, 2}
    val_loader = data.make_loader(bundle.test, batch_size=4, train=False, num_workers=0)
    val = list(val_loader)
    assert [tuple(x.shape) for x, _ in val] == [(4, 3, 32, 32), (2, 3, 32, 32)]
    assert torch.cat([y for _, y in val]).tolist() == [0, 0, 1, 1, 2, 2]


def test_imagenet_val_normalisation_of_a_flat_image(tmp_path):
    from PIL import Image

    colour = (255, 0, 128)
    for split in ("train", "val"):
        (tmp_path / split / "only").mkdir(parents=True)
        Image.new("RGB", (50, 40), colour).save(tmp_path / split / "only" / "flat.png")
    bundle = data.load("imagenet", root=tmp_path, image_size=32)
    image, label = bundle.test[0]
    assert tuple(image.shape) == (3, 32, 32) and label == 0
    imagenet_mean, imagenet_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for c in range(3):
        expected = (colour[c] / 255 - imagenet_mean[c]) / imagenet_std[c]
        torch.testing.assert_close(image[c], torch.full((32, 32), expected), atol=1e-5, rtol=0)


@pytest.mark.parametrize("missing", ["train", "val"])
def test_imagenet_missing_split_names_folder(imagenet_root, missing):
    import shutil

    shutil.rmtree(imagenet_root / missing)
    with pytest.raises(cdlib.DataError) as info:
        data.load("imagenet", root=imagenet_root, image_size=32)
    assert str(imagenet_root / missing) in str(info.value)


def test_imagenet_needs_a_root():
    with pytest.raises(cdlib.DataError):
        data.load("imagenet")


def test_imagenet_class_mismatch(imagenet_root):
    import shutil

    shutil.rmtree(imagenet_root / "val" / "cat")
    with pytest.raises(cdlib.DataError, match="classes"):
        data.load("imagenet", root=imagenet_root, image_size=32)


# --------------------------------------------------------------------------- digits and synthetic


def test_digits_split_is_complete_and_stratified():
    from sklearn.datasets import load_digits

    bundle = data.load("digits")
    assert bundle.num_classes == 10 and bundle.image_size == 16
    assert len(bundle.train) + len(bundle.test) == 1797
    for ds in (bundle.train, bundle.test):
        assert ds.images.dtype == torch.uint8
        assert tuple(ds.images.shape[1:]) == (3, 16, 16)
        # Grey digits replicated to three channels.
        assert torch.equal(ds.images[:, 0], ds.images[:, 1]) and torch.equal(ds.images[:, 0], ds.images[:, 2])
    per_class = np.bincount(load_digits().target, minlength=10)
    train_counts = np.bincount(bundle.train.labels.numpy(), minlength=10)
    test_counts = np.bincount(bundle.test.labels.numpy(), minlength=10)
    assert (train_counts > 0).all() and (test_counts > 0).all()  # every class in both splits
    assert np.array_equal(train_counts + test_counts, per_class)
    # Stratified 80/20: each class's test share is its own 20 % (rounded).
    assert np.array_equal(test_counts, np.round(per_class * 0.2).astype(int))


def test_digits_images_match_sklearn():
    from sklearn.datasets import load_digits

    bundle = data.load("digits", image_size=8)
    # At 8x8 the bilinear resize is the identity: pixels are round(v / 16 * 255).
    digits = load_digits()
    expected = np.round(digits.images / 16.0 * 255).astype(np.uint8)
    got = torch.cat([bundle.train.images, bundle.test.images])[:, 0].numpy()
    got_sorted = sorted(map(bytes, got.reshape(len(got), -1)))
    want_sorted = sorted(map(bytes, expected.reshape(len(expected), -1)))
    assert got_sorted == want_sorted


def test_cluttered_digits_place_each_digit_whole_on_the_canvas():
    plain = data.load("digits", train_per_class=20)
    canvas = data.load("digits", train_per_class=20, canvas=28)
    assert canvas.image_size == 28 and tuple(canvas.train.images.shape[1:]) == (3, 28, 28)
    assert torch.equal(canvas.train.labels, plain.train.labels) and torch.equal(canvas.test.labels, plain.test.labels)
    offsets = set()
    for split in ("train", "test"):
        digits, placed = getattr(plain, split).images[:, 0], getattr(canvas, split).images[:, 0]
        for i in range(0, len(digits), 37):
            # Without clutter the canvas is the digit at one offset and 0 elsewhere.
            hits = [(y, x) for y in range(13) for x in range(13)
                    if torch.equal(placed[i, y : y + 16, x : x + 16], digits[i])
                    and placed[i].sum() == digits[i].sum()]
            assert hits, (split, i)
            offsets.add(hits[0])
    assert len(offsets) > 20  # the spot varies from image to image


def test_cluttered_digits_are_deterministic_and_cluttered():
    a = data.load("digits", train_per_class=20, canvas=28, clutter=4, clutter_size=6)
    b = data.load("digits", train_per_class=20, canvas=28, clutter=4, clutter_size=6)
    c = data.load("digits", train_per_class=20, canvas=28, clutter=4, clutter_size=6, seed=1)
    bare = data.load("digits", train_per_class=20, canvas=28)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.images, b.test.images)
    assert not torch.equal(a.train.images, c.train.images)
    # Clutter only adds ink (pixel-wise maximum), and adds it to most images.
    lit = lambda images: (images[:, 0] > 40).flatten(1).sum(1).float()
    more = lit(a.test.images) - lit(bare.test.images)
    assert (more > 0).float().mean() > 0.9
    # Each digit is still there whole: some 16x16 window dominates it pixel by pixel.
    digits = data.load("digits", train_per_class=20).test.images[:, 0]
    for i in range(0, len(digits), 101):
        img = a.test.images[i, 0]
        assert any((img[y : y + 16, x : x + 16] >= digits[i]).all() for y in range(13) for x in range(13))
    assert a.mean != bare.mean  # statistics of the cluttered training split


@pytest.mark.parametrize("options, message", [
    ({"test_fraction": 2}, "test_fraction"),
    ({"test_fraction": 0.0}, "test_fraction"),
    ({"test_fraction": 1.0}, "test_fraction"),
    ({"train_per_class": 0}, "train_per_class"),
    ({"train_per_class": 174}, "train_per_class"),
    ({"train_per_class": 2.5}, "train_per_class"),
    ({"canvas": 10}, "canvas"),
    ({"clutter": 3}, "needs a canvas"),
    ({"canvas": 24, "clutter": -1}, "clutter"),
    ({"canvas": 24, "clutter": 2, "clutter_size": 17}, "clutter_size"),
])
def test_digits_refuse_nonsense_options(options, message):
    with pytest.raises(cdlib.ConfigError, match=message) as info:
        data.load("digits", **options)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name, options, listed", [
    ("digits", {"num_classes": 3}, "test_fraction, train_per_class, seed, canvas, clutter, clutter_size, test_draws, pad_mode"),
    ("synthetic", {"test_fraction": 0.5}, "num_classes, train_per_class, test_per_class, seed, pad_mode"),
    ("cifar100", {"train_per_class": 5}, "pad_mode"),
    ("imagenet", {"pad_mode": "zeros"}, "none"),
])
def test_load_refuses_options_a_loader_does_not_use(name, options, listed):
    with pytest.raises(cdlib.ConfigError) as info:
        data.load(name, **options)
    text = str(info.value)
    assert f"does not take the option(s) {next(iter(options))}" in text and listed in text and "\n" not in text
    assert data.options(name) == ([] if listed == "none" else listed.split(", "))


@pytest.mark.parametrize("options", [{"num_classes": 1}, {"train_per_class": 0}, {"test_per_class": 0}])
def test_synthetic_refuses_empty_sets(options):
    with pytest.raises(cdlib.ConfigError, match=next(iter(options))):
        data.load("synthetic", **options)


@pytest.mark.parametrize("bad_label", [100, -1, 255])
def test_cifar100_labels_out_of_range_are_refused(tmp_path, bad_label):
    write_tiny_cifar100(tmp_path)
    path = tmp_path / "cifar-100-python" / "test"
    with open(path, "rb") as f:
        split = pickle.load(f)
    split["fine_labels"][2] = bad_label
    with open(path, "wb") as f:
        pickle.dump(split, f)
    with pytest.raises(cdlib.DataError) as info:
        data.load("cifar100", root=tmp_path)
    assert str(path) in str(info.value) and "outside 0..99" in str(info.value)


def test_synthetic_sizes():
    bundle = data.load("synthetic", image_size=8, num_classes=3, train_per_class=5, test_per_class=2)
    assert bundle.num_classes == 3 and bundle.image_size == 8
    assert tuple(bundle.train.images.shape) == (15, 3, 8, 8)
    assert tuple(bundle.test.images.shape) == (6, 3, 8, 8)
    assert bundle.train.images.dtype == torch.uint8
    assert bundle.train.labels.bincount().tolist() == [5, 5, 5]
    assert bundle.test.labels.bincount().tolist() == [2, 2, 2]
    again = data.load("synthetic", image_size=8, num_classes=3, train_per_class=5, test_per_class=2)
    assert torch.equal(again.train.images, bundle.train.images)  # seeded


def test_unknown_data_set():
    with pytest.raises(cdlib.ConfigError, match="cifar100"):
        data.load("mnist")


# --------------------------------------------------------------------------- loaders


def _indexed_set(n: int, augment: bool = False, size: int = 4) -> data.TensorImageSet:
    """Image i is filled with the value i (mod 256) and labelled i, so batches reveal indices."""
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, size, size).contiguous()
    return data.TensorImageSet(images, torch.arange(n), (0.0,) * 3, (1 / 255,) * 3, augment=augment, pad=1)


def _epoch_indices(loader) -> list:
    out = []
    for images, labels in loader:
        # Normalisation with mean 0, std 1/255 leaves pixel values as they were.
        assert torch.equal(images[:, 0, 0, 0], (labels % 256).float())
        out.extend(labels.tolist())
    return out


def test_make_loader_batch_size_errors():
    ds = _indexed_set(10)
    with pytest.raises(cdlib.ConfigError, match="batch size"):
        data.make_loader(ds, batch_size=11, train=True)
    with pytest.raises(cdlib.ConfigError):
        data.make_loader(ds, batch_size=0, train=True)
    with pytest.raises(cdlib.ConfigError):
        data.make_loader(ds, batch_size=6, train=True, world_size=2)  # 5 images per process
    assert isinstance(data.make_loader(ds, batch_size=10, train=True), data.DeviceLoader)


def test_device_loader_covers_every_index_once():
    ds = _indexed_set(50)
    loader = data.DeviceLoader(ds, batch_size=8, train=True, drop_last=False)
    seen = _epoch_indices(loader)
    assert sorted(seen) == list(range(50))
    assert seen != list(range(50))  # shuffled
    # drop_last (the training default): 6 full batches, 48 distinct indices.
    dropping = data.DeviceLoader(ds, batch_size=8, train=True)
    assert len(dropping) == 6
    seen = _epoch_indices(dropping)
    assert len(seen) == 48 and len(set(seen)) == 48 and set(seen) <= set(range(50))
    # Evaluation: in order, nothing dropped.
    assert _epoch_indices(data.DeviceLoader(ds, batch_size=8, train=False)) == list(range(50))


def test_device_loader_epochs_and_seeds():
    ds = _indexed_set(40)

    def order(seed, epoch):
        loader = data.DeviceLoader(ds, batch_size=5, train=True, seed=seed)
        loader.set_epoch(epoch)
        return _epoch_indices(loader)

    assert order(0, 1) == order(0, 1)  # reproducible
    assert order(0, 1) != order(0, 2)  # a new order every epoch
    assert order(0, 1) != order(1, 1)  # and for every seed
    assert sorted(order(3, 7)) == list(range(40))


def test_device_loader_augmentation_is_reproducible():
    bundle = data.load("synthetic", image_size=8, num_classes=2, train_per_class=8, test_per_class=2)
    first = [x for x, _ in data.DeviceLoader(bundle.train, batch_size=4, train=True, seed=5)]
    second = [x for x, _ in data.DeviceLoader(bundle.train, batch_size=4, train=True, seed=5)]
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("train", [True, False])
def test_device_loader_shards_are_disjoint(train):
    ds = _indexed_set(40)
    shards = []
    for rank in range(2):
        loader = data.DeviceLoader(ds, batch_size=4, train=train, rank=rank, world_size=2, drop_last=False)
        loader.set_epoch(3)
        shards.append(_epoch_indices(loader))
    assert len(shards[0]) == len(shards[1]) == 20
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(40))


def test_tensor_image_set_validation():
    with pytest.raises(ValueError):
        data.TensorImageSet(torch.zeros(2, 3, 4, 4), torch.zeros(2), (0,) * 3, (1,) * 3)  # float images
    with pytest.raises(ValueError):
        data.TensorImageSet(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3), (0,) * 3, (1,) * 3)


# --------------------------------------------------------------------------- batch augmentation


def _position_coded_image(h: int, w: int) -> torch.Tensor:
    """(3, h, w) uint8 whose every pixel is a distinct non-zero value (so zero = padding)."""
    values = 1 + torch.arange(3 * h * w)
    assert values.max() < 256
    return values.view(3, h, w).to(torch.uint8)


def _padded(image: torch.Tensor, pad: int, mode: str) -> torch.Tensor:
    """``image`` (C, H, W) padded by explicit indexing: reflect mirrors about the edge pixel (edge not repeated)."""
    c, h, w = image.shape
    out = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=image.dtype)
    for y in range(-pad, h + pad):
        for x in range(-pad, w + pad):
            if mode == "reflect":
                sy = -y if y < 0 else (2 * (h - 1) - y if y >= h else y)
                sx = -x if x < 0 else (2 * (w - 1) - x if x >= w else x)
                out[:, y + pad, x + pad] = image[:, sy, sx]
            elif 0 <= y < h and 0 <= x < w:
                out[:, y + pad, x + pad] = image[:, y, x]
    return out


@pytest.mark.parametrize("mode", ["reflect", "zeros"])
def test_augment_batch_outputs_are_sub_windows_of_padded_image(mode):
    h, w, pad, n = 6, 10, 4, 2000
    image = _position_coded_image(h, w)
    spec = data.TensorImageSet(image.expand(n, 3, h, w).contiguous(), torch.zeros(n), (0,) * 3, (1,) * 3, augment=True,
                               pad=pad, pad_mode=mode)
    out = data.augment_batch(spec.images, spec, generator=torch.Generator().manual_seed(0))
    assert out.shape == (n, 3, h, w) and out.dtype == torch.uint8

    # Every candidate by explicit slicing of the padded image: offsets (dy, dx), flipped or not.
    padded = _padded(image, pad, mode)
    keys, candidates = [], []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            window = padded[:, dy : dy + h, dx : dx + w]
            for flip in (False, True):
                keys.append((dy, dx, flip))
                candidates.append(window.flip(2) if flip else window)
    candidates = torch.stack(candidates)  # (162, 3, h, w)
    matches = (out[:, None] == candidates[None]).flatten(2).all(dim=2)  # (n, 162)
    assert matches.any(dim=1).all(), "an output is not a (flipped) window of the padded image"
    distinct = (candidates[:, None] == candidates[None]).flatten(2).all(dim=2).sum(dim=1) == 1
    # Reflection makes some windows equal (e.g. a mirrored edge); the offset test below uses the distinct ones.
    which = matches.float().argmax(dim=1).tolist()
    drawn = [keys[i] for i in which]

    # The first few by hand: recompute from the recovered offsets with plain slicing.
    for k in range(5):
        dy, dx, flip = drawn[k]
        expected = padded[:, dy : dy + h, dx : dx + w]
        assert torch.equal(out[k], expected.flip(2) if flip else expected)

    if mode == "zeros":
        assert distinct.all()
        # Offsets uniform over the 81 positions: chi-square with 80 degrees of freedom has mean 80,
        # sd 12.6; 140 is beyond its 99.99th percentile. Flips: n * 0.5 +- 5 sd (sd = sqrt(n) / 2 = 22).
        counts = {}
        for dy, dx, _ in drawn:
            counts[(dy, dx)] = counts.get((dy, dx), 0) + 1
        assert len(counts) == 81
        expected_count = n / 81
        chi2 = sum((c - expected_count) ** 2 / expected_count for c in counts.values())
        assert chi2 < 140
        flips = sum(flip for _, _, flip in drawn)
        assert abs(flips - n / 2) < 5 * math.sqrt(n) / 2


def test_both_loader_paths_pad_by_reflection(device):
    """DeviceLoader (batches on the device) and TensorImageSet[i] (DataLoader workers) crop windows of the
    reflect-padded image: a window that reaches past the border shows mirrored pixels, never zeros."""
    h = w = 8
    pad, n = 3, 64
    image = _position_coded_image(h, w)
    spec = data.TensorImageSet(image.expand(n, 3, h, w).contiguous(), torch.arange(n), (0.0,) * 3, (1 / 255,) * 3,
                               augment=True, pad=pad, flip=False)
    padded = _padded(image, pad, "reflect")
    windows = torch.stack([padded[:, dy : dy + h, dx : dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)])
    loader = data.make_loader(spec, batch_size=16, train=True, device=device)
    device_images = torch.cat([x.cpu() for x, _ in loader]).round().to(torch.uint8)
    item_images = torch.stack([spec[i][0] for i in range(16)]).round().to(torch.uint8)
    for images in (device_images, item_images):
        assert (images > 0).all()  # position codes start at 1: a zero would be zero padding
        matches = (images[:, None] == windows[None]).flatten(2).all(dim=2)
        assert matches.any(dim=1).all()
        assert (matches.float().argmax(dim=1) != pad * (2 * pad + 1) + pad).any()  # not all uncropped


@pytest.mark.parametrize("mode", ["reflect", "zeros"])
def test_crop_batch_equals_torchvision_at_the_same_offsets(mode, device):
    """Pad by 4 and crop at a given offset: the reference code's Pad(4, padding_mode='reflect')
    followed by a 32x32 crop, pixel for pixel, on uint8 and on float images."""
    import torchvision.transforms.functional as TF

    n, size, pad = 64, 32, 4
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    ours = data.crop_batch(images.to(device), dy.to(device), dx.to(device), pad, mode).cpu()
    tv_mode = "reflect" if mode == "reflect" else "constant"
    for i in range(n):
        padded = TF.pad(images[i], [pad], padding_mode=tv_mode)
        theirs = TF.crop(padded, int(dy[i]), int(dx[i]), size, size)
        assert torch.equal(ours[i], theirs), i
        # torch's own reflection padding agrees too.
        if mode == "reflect":
            ref = torch.nn.functional.pad(images[i : i + 1].float(), (pad,) * 4, mode="reflect")[0]
            assert torch.equal(ours[i].float(), ref[:, dy[i] : dy[i] + size, dx[i] : dx[i] + size])


def test_reflect_is_the_default_and_needs_room():
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    assert data.TensorImageSet(images, torch.zeros(2), (0,) * 3, (1,) * 3, augment=True, pad=3).pad_mode == "reflect"
    with pytest.raises(ValueError, match="reflect padding by 4"):
        data.TensorImageSet(images, torch.zeros(2), (0,) * 3, (1,) * 3, augment=True, pad=4)
    with pytest.raises(ValueError, match="pad_mode"):
        data.TensorImageSet(images, torch.zeros(2), (0,) * 3, (1,) * 3, pad_mode="edge")


def test_augment_batch_without_pad_or_flip_is_identity():
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    spec = data.TensorImageSet(images, torch.zeros(4), (0,) * 3, (1,) * 3, augment=True, pad=0, flip=False)
    assert torch.equal(data.augment_batch(images, spec, generator=None), images)


def test_augment_batch_statistics_match_torchvision():
    import torchvision.transforms as T

    n, size, pad = 1500, 32, 4
    g = torch.Generator().manual_seed(0)
    # Channel 0 noisy, channel 1 a left-to-right ramp (sensitive to flips), channel 2 a
    # top-to-bottom ramp (reflection at its edges shows in the profile).
    ramp = torch.linspace(20, 250, size)
    base = torch.stack(
        [
            torch.randint(1, 256, (n, size, size), generator=g).float(),
            ramp.view(1, 1, size).expand(n, size, size) + 5 * torch.rand(n, size, size, generator=g),
            ramp.view(1, size, 1).expand(n, size, size) + 5 * torch.rand(n, size, size, generator=g),
        ],
        dim=1,
    )
    images = base.round().clamp(1, 255).to(torch.uint8)
    spec = data.TensorImageSet(images, torch.zeros(n), (0,) * 3, (1,) * 3, augment=True, pad=pad, flip=True)
    ours = data.augment_batch(images, spec, generator=torch.Generator().manual_seed(1)).double()
    torch.manual_seed(2)
    reference_tf = T.Compose([T.RandomCrop(size, padding=pad, padding_mode="reflect"), T.RandomHorizontalFlip()])
    theirs = torch.stack([reference_tf(img) for img in images]).double()

    # Each statistic is an average over n independent images of a per-image quantity q_i;
    # its standard error is sd(q_i) / sqrt(n). The two methods are independent, so their
    # difference has standard error sqrt(se_ours^2 + se_theirs^2); we allow 5 of them
    # (a false alarm has probability ~6e-7 per comparison).
    def per_image(stat, a, b):
        qa, qb = stat(a), stat(b)  # (n, ...) per-image values
        diff = qa.mean(0) - qb.mean(0)
        se = torch.sqrt(qa.var(0) / n + qb.var(0) / n)
        return diff, se

    checks = {
        "channel mean": lambda x: x.mean(dim=(2, 3)),
        "channel second moment": lambda x: (x**2).mean(dim=(2, 3)),
        "column profile of the left-right ramp": lambda x: x[:, 1].mean(dim=1),
        "row profile of the top-bottom ramp": lambda x: x[:, 2].mean(dim=2),
    }
    for name, stat in checks.items():
        diff, se = per_image(stat, ours, theirs)
        assert (diff.abs() <= 5 * se + 1e-9).all(), (name, diff, se)

    # A flip rate of 1/2 makes the left-right ramp's expected column profile symmetric:
    # per image q_i = profile - mirrored profile has mean 0 (same 5-standard-error rule).
    q = ours[:, 1].mean(dim=1)
    q = q - q.flip(1)
    assert (q.mean(0).abs() <= 5 * q.std(0) / math.sqrt(n)).all()


# ---------------------------------------------------------------- EpochSampler / SeededAugmentation


def test_epoch_sampler_shards_like_distributed_sampler_with_drop_last():
    shards = [list(data.EpochSampler(10, seed=3, rank=r, world_size=3)) for r in range(3)]
    indices = [i for shard in shards for _, i in shard]
    assert [len(s) for s in shards] == [3, 3, 3]  # 10 // 3 each, nothing padded
    assert len(set(indices)) == 9 and set(indices) <= set(range(10))
    assert {e for shard in shards for e, _ in shard} == {0}


def test_epoch_sampler_order_follows_seed_and_epoch_and_can_start_part_way():
    sampler = data.EpochSampler(20, seed=1)
    first = list(sampler)
    assert sorted(i for _, i in first) == list(range(20))
    assert list(sampler) == first  # same epoch, same order
    sampler.set_epoch(1)
    second = list(sampler)
    assert [i for _, i in second] != [i for _, i in first] and {e for e, _ in second} == {1}
    assert [i for _, i in data.EpochSampler(20, seed=2)] != [i for _, i in first]
    sampler.start_at(7)
    assert len(sampler) == 13
    assert list(sampler) == second[7:]
    assert list(sampler) == second and len(sampler) == 20  # start_at applies to one pass only
    with pytest.raises(ValueError, match="outside"):
        sampler.start_at(21)


def test_seeded_augmentation_depends_on_epoch_and_index_only():
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    base = data.TensorImageSet(images, torch.arange(6), (0.5,) * 3, (0.25,) * 3, augment=True, pad=2)
    seeded = data.SeededAugmentation(base, seed=5)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = seeded[(1, 4)][0]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random stream is untouched
    for key in [(1, 0), (2, 4), (1, 3)]:
        seeded[key]  # other images in between change nothing
    assert torch.equal(seeded[(1, 4)][0], a)
    later_epochs = [seeded[(e, 4)][0] for e in range(2, 12)]
    assert any(not torch.equal(x, a) for x in later_epochs)  # 25 crops x 2 flips: ten epochs cannot all repeat one
    assert any(not torch.equal(data.SeededAugmentation(base, seed=s)[(1, 4)][0], a) for s in range(6, 16))


@pytest.mark.parametrize("source", ["synthetic", "imagenet"])
def test_make_loader_batches_do_not_depend_on_the_number_of_workers(source, imagenet_root):
    if source == "imagenet":  # PIL RandomResizedCrop + flip in the workers
        bundle, batch, steps = data.load("imagenet", root=imagenet_root, image_size=16), 3, 3
    else:
        bundle, batch, steps = data.load("synthetic", num_classes=4, train_per_class=8, test_per_class=2, image_size=8), 8, 4
    batches = {}
    for workers in (0, 2):
        loader = data.make_loader(bundle.train, batch, train=True, num_workers=workers, seed=4, on_device=False)
        loader.sampler.set_epoch(3)
        batches[workers] = list(loader)
    assert len(batches[0]) == steps
    for (x0, y0), (x2, y2) in zip(batches[0], batches[2]):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)


def test_digits_test_draws_repeat_each_test_digit_under_new_clutter():
    one = data.load("digits", image_size=12, canvas=20, clutter=3, test_fraction=0.5)
    three = data.load("digits", image_size=12, canvas=20, clutter=3, test_fraction=0.5, test_draws=3)
    n = len(one.test)
    assert len(three.test) == 3 * n and len(three.train) == len(one.train)
    assert torch.equal(three.test.images[:n], one.test.images)  # draw 1 is the set test_draws=1 gives
    assert torch.equal(three.train.images, one.train.images)  # training images untouched
    assert torch.equal(three.test.labels, one.test.labels.repeat(3))
    # Other placements and clutter of the same digits: not a copy of draw 1.
    assert not torch.equal(three.test.images[n:2 * n], one.test.images)
    assert not torch.equal(three.test.images[n:2 * n], three.test.images[2 * n:])
    for bad in (0, 1.5, True, 101):
        with pytest.raises(cdlib.ConfigError, match="test_draws must be a whole number from 1 to 100"):
            data.load("digits", canvas=20, test_draws=bad)
    with pytest.raises(cdlib.ConfigError, match="test_draws needs a canvas"):
        data.load("digits", test_draws=2)

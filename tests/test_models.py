"""cdlib.models: shapes, stage features, parameter counts, errors."""

from __future__ import annotations

import pytest
import torch
import torchvision

import cdlib
from cdlib import models

# Hand-typed stage channels: BasicBlock expansion 1, Bottleneck expansion 4, widths w, 2w, 4w, 8w.
EXPECTED_CHANNELS = {
    "cifar_resnet18": (64, 128, 256, 512),
    "cifar_resnet34": (64, 128, 256, 512),
    "cifar_resnet50": (256, 512, 1024, 2048),
    "cifar_resnet101": (256, 512, 1024, 2048),
    "cifar_resnet152": (256, 512, 1024, 2048),
    "cifar_resnet10_w4": (4, 8, 16, 32),
    "cifar_resnet10_w8": (8, 16, 32, 64),
    "cifar_resnet10_w16": (16, 32, 64, 128),
    "cifar_resnet18_w16": (16, 32, 64, 128),
    "cifar_resnet18_w32": (32, 64, 128, 256),
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
}
CIFAR_NAMES = sorted(n for n in EXPECTED_CHANNELS if n.startswith("cifar_"))
BIG = {"cifar_resnet101", "cifar_resnet152"}


@pytest.fixture(scope="module", autouse=True)
def _free_big_models():
    yield
    _BUILT.clear()  # free the big models' memory for the rest of the session


_BUILT = {}


def _eval_model(name: str) -> torch.nn.Module:
    """Each model is built once per test session (building the big ones is most of their cost)."""
    if name not in _BUILT:
        _BUILT[name] = models.create(name, num_classes=100).eval()
    return _BUILT[name]


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    """The tests never fetch weights: any download attempt fails loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to download model weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_names_cover_the_expected_models():
    assert set(models.names()) == set(EXPECTED_CHANNELS)


@pytest.mark.parametrize("name", sorted(EXPECTED_CHANNELS))
def test_stage_channels_without_building(name):
    assert models.stage_channels(name) == EXPECTED_CHANNELS[name]


@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_cifar_models_shapes_and_features(name):
    batch = 1 if name in BIG else 2
    net = _eval_model(name)
    x = torch.randn(batch, 3, 32, 32)
    with torch.no_grad():
        logits, feats = net(x, return_features=True)
        plain = net(x)
    assert logits.shape == (batch, 100)
    torch.testing.assert_close(plain, logits)
    assert len(feats) == 4
    assert tuple(net.stage_channels) == EXPECTED_CHANNELS[name] == models.stage_channels(name)
    assert tuple(f.shape[1] for f in feats) == EXPECTED_CHANNELS[name]
    assert [tuple(f.shape[2:]) for f in feats] == [(32, 32), (16, 16), (8, 8), (4, 4)]
    assert all(f.shape[0] == batch for f in feats)
    # Stage outputs are post-ReLU (the paper's CD uses them).
    assert all((f >= 0).all() for f in feats)


def test_cifar_features_are_the_stage_outputs():
    net = models.create("cifar_resnet18_w16", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, feats = net(x, return_features=True)
        out = net.stem(x)
        for layer, feat in zip((net.layer1, net.layer2, net.layer3, net.layer4), feats):
            out = layer(out)
            torch.testing.assert_close(feat, out)
        # The classifier reads the global average of the last stage feature.
        torch.testing.assert_close(logits, net.fc(feats[3].mean(dim=(2, 3))))


def test_small_cifar_model_train_mode_and_backward():
    net = models.create("cifar_resnet10_w8", num_classes=7)
    logits, feats = net(torch.randn(2, 3, 32, 32), return_features=True)
    assert logits.shape == (2, 7)
    (logits.sum() + sum(f.mean() for f in feats)).backward()
    assert all(p.grad is not None for p in net.parameters())


def test_cifar_models_other_sizes_and_channels():
    net = models.create("cifar_resnet10_w8", num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        logits, feats = net(torch.randn(3, 1, 16, 16), return_features=True)
    assert logits.shape == (3, 10)
    assert [tuple(f.shape[2:]) for f in feats] == [(16, 16), (8, 8), (4, 4), (2, 2)]


def test_cifar_resnet50_parameter_count():
    # The CIFAR-stem ResNet50 with 100 classes has 23,705,252 parameters (the standard
    # number for this architecture); within 1 % of 23.7M.
    n = _count_parameters(_eval_model("cifar_resnet50"))
    assert abs(n - 23.7e6) <= 0.01 * 23.7e6


def test_cifar_resnet18_parameter_count():
    # CIFAR ResNet18: 11,173,962 parameters with 10 classes; 100 classes add 90 * 513 -> 11,220,132.
    n = _count_parameters(_eval_model("cifar_resnet18"))
    assert abs(n - 11_220_132) <= 0.01 * 11_220_132


def _count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_count_parameters_hand_example():
    # Linear(3, 2): 3 * 2 weights + 2 biases = 8; Conv2d(2, 4, 3, bias=False): 4 * 2 * 3 * 3 = 72.
    assert _count_parameters(torch.nn.Linear(3, 2)) == 8
    assert _count_parameters(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Conv2d(2, 4, 3, bias=False))) == 80


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_torchvision_resnet_stage_features(name):
    net = models.create(name, num_classes=1000, pretrained=False).eval()
    with torch.no_grad():
        logits, feats = net(torch.randn(1, 3, 64, 64), return_features=True)
    assert logits.shape == (1, 1000)
    assert tuple(f.shape[1] for f in feats) == (64, 128, 256, 512) == tuple(net.stage_channels)
    # ImageNet stem: stride-2 conv + max-pool -> 64 / 4 = 16, then 8, 4, 2.
    assert [tuple(f.shape[2:]) for f in feats] == [(16, 16), (8, 8), (4, 4), (2, 2)]


def test_resnet18_matches_torchvision():
    ours = models.create("resnet18", num_classes=1000).eval()
    reference = torchvision.models.resnet18(weights=None).eval()
    assert _count_parameters(ours) == sum(p.numel() for p in reference.parameters())
    # Same weights -> same logits: the wrapper is torchvision's graph, unmodified.
    state = {k.removeprefix("body."): v for k, v in ours.state_dict().items()}
    reference.load_state_dict(state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))
        # Stage features are the outputs of layer1..layer4, computed here step by step.
        out = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        expected = []
        for layer in (reference.layer1, reference.layer2, reference.layer3, reference.layer4):
            out = layer(out)
            expected.append(out)
        _, feats = ours(x, return_features=True)
        assert len(feats) == 4
        for got, want in zip(feats, expected):
            torch.testing.assert_close(got, want)


def test_torchvision_num_classes():
    net = models.create("resnet18", num_classes=5).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_unknown_model_raises_config_error_listing_names():
    with pytest.raises(cdlib.ConfigError) as info:
        models.create("resnet9000")
    message = str(info.value)
    assert "resnet9000" in message
    for name in EXPECTED_CHANNELS:
        assert name in message
    with pytest.raises(cdlib.ConfigError):
        models.stage_channels("resnet9000")


def test_config_errors_for_bad_options():
    with pytest.raises(cdlib.ConfigError):
        models.create("cifar_resnet10_w8", pretrained=True)
    with pytest.raises(cdlib.ConfigError):
        models.create("resnet18", in_channels=1)
    with pytest.raises(ValueError):
        models.create("cifar_resnet10_w8", num_classes=0)

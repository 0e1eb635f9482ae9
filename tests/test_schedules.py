"""cdlib.schedules (EDT) against tables typed from /work/shared/paper.md.

paper-cifar100 (200 epochs): lambda_CD = 6 * 0.9^k, k = 0 before epoch 60, 1 from 60,
2 from 160; CE and GKD weights 0 for e <= 60, then CE 1 and GKD 0.1.
paper-imagenet (100 epochs): lambda_CD = 6 * 0.9^floor(e / 30); CE / GKD 0 for e <= 30,
then 1 and 1.
6 * 0.9 = 5.4, 6 * 0.9^2 = 4.86, 6 * 0.9^3 = 4.374.
"""

from __future__ import annotations

import math

import pytest

from cdlib import schedules

# epoch: (ce, cd, gkd)
CIFAR100_TABLE = {
    1: (0.0, 6.0, 0.0),
    29: (0.0, 6.0, 0.0),
    30: (0.0, 6.0, 0.0),
    31: (0.0, 6.0, 0.0),
    59: (0.0, 6.0, 0.0),
    60: (0.0, 5.4, 0.0),  # CD decays at 60, but e <= 60 is still the CD-only warm-up
    61: (1.0, 5.4, 0.1),
    89: (1.0, 5.4, 0.1),
    90: (1.0, 5.4, 0.1),
    100: (1.0, 5.4, 0.1),
    159: (1.0, 5.4, 0.1),
    160: (1.0, 4.86, 0.1),
    200: (1.0, 4.86, 0.1),
}

# The ImageNet recipe has 100 epochs; floor(e / 30) is only defined by the paper up to there.
IMAGENET_TABLE = {
    1: (0.0, 6.0, 0.0),
    29: (0.0, 6.0, 0.0),
    30: (0.0, 5.4, 0.0),  # floor(30/30) = 1, still warm-up (e <= 30)
    31: (1.0, 5.4, 1.0),
    59: (1.0, 5.4, 1.0),
    60: (1.0, 4.86, 1.0),
    61: (1.0, 4.86, 1.0),
    89: (1.0, 4.86, 1.0),
    90: (1.0, 4.374, 1.0),
    100: (1.0, 4.374, 1.0),
}


def _check(weights: dict, expected: tuple) -> None:
    assert set(weights) == {"ce", "cd", "gkd"}
    ce, cd, gkd = expected
    assert weights["ce"] == pytest.approx(ce, abs=1e-12)
    assert weights["cd"] == pytest.approx(cd, rel=1e-12)
    assert weights["gkd"] == pytest.approx(gkd, abs=1e-12)


@pytest.mark.parametrize("epoch, expected", sorted(CIFAR100_TABLE.items()))
def test_paper_cifar100_table(epoch, expected):
    _check(schedules.get("paper-cifar100")(epoch), expected)


@pytest.mark.parametrize("epoch, expected", sorted(IMAGENET_TABLE.items()))
def test_paper_imagenet_table(epoch, expected):
    _check(schedules.get("paper-imagenet")(epoch), expected)


def test_paper_imagenet_matches_floor_formula_every_epoch():
    sched = schedules.get("paper-imagenet")
    for epoch in range(1, 101):
        w = sched(epoch)
        assert w["cd"] == pytest.approx(6 * 0.9 ** (epoch // 30), rel=1e-12), epoch
        assert (w["ce"], w["gkd"]) == ((0.0, 0.0) if epoch <= 30 else (1.0, 1.0)), epoch


def test_paper_cifar100_every_epoch():
    sched = schedules.get("paper-cifar100")
    for epoch in range(1, 201):
        k = 0 if epoch < 60 else (1 if epoch < 160 else 2)
        w = sched(epoch)
        assert w["cd"] == pytest.approx(6 * 0.9**k, rel=1e-12), epoch
        assert (w["ce"], w["gkd"]) == ((0.0, 0.0) if epoch <= 60 else (1.0, 0.1)), epoch


def test_constant_stays_at_six():
    sched = schedules.get("constant")
    for epoch in (1, 2, 50, 100.5, 199, 200):
        assert sched(epoch)["cd"] == 6.0
        assert sched(epoch)["ce"] == 1.0


SMOOTH = ("exponential", "cosine", "linear")


@pytest.mark.parametrize("name", SMOOTH)
@pytest.mark.parametrize("epochs", [200, 30])
def test_smooth_end_points_and_monotone(name, epochs):
    sched = schedules.get(name, epochs=epochs)
    assert sched(1)["cd"] == pytest.approx(6.0, rel=1e-12)
    assert sched(epochs)["cd"] == pytest.approx(6 * 0.9**2, rel=1e-12)
    # Per-step (fractional) epochs, never increasing.
    steps = [1 + i * (epochs - 1) / 997 for i in range(998)]
    values = [sched(e)["cd"] for e in steps]
    assert all(b <= a + 1e-12 for a, b in zip(values, values[1:]))
    assert values[0] > values[-1]
    # No warm-up: CE from the start, GKD at the CIFAR weight.
    assert sched(1)["ce"] == 1.0 and sched(1)["gkd"] == pytest.approx(0.1)


def test_smooth_shapes_values_and_differences():
    # At progress q = (e - 1) / (E - 1) with E = 200, start 6, end 4.86:
    #   linear 6 + (4.86 - 6) q ; cosine 4.86 + 1.14 * (1 + cos(pi q)) / 2 ; exponential 6 * 0.81^q.
    # At e = 50.75, q = 0.25: linear 5.715, cosine 4.86 + 0.57 * 1.7071068 = 5.8330508,
    # exponential 6 * 0.81^0.25 = 6 * 0.9486833 = 5.6921000.
    e = 50.75
    got = {name: schedules.get(name)(e)["cd"] for name in SMOOTH}
    assert got["linear"] == pytest.approx(5.715, rel=1e-9)
    assert got["cosine"] == pytest.approx(5.8330508, rel=1e-7)
    assert got["exponential"] == pytest.approx(5.6921000, rel=1e-7)
    for epoch in (50, 150):
        values = [schedules.get(name)(epoch)["cd"] for name in SMOOTH]
        assert len({round(v, 6) for v in values}) == 3, (epoch, values)


def test_fractional_epochs():
    cosine = schedules.get("cosine")
    a, mid, b = cosine(10)["cd"], cosine(10.5)["cd"], cosine(11)["cd"]
    assert a > mid > b  # smooth schedules move within an epoch (per step)
    stair = schedules.get("paper-cifar100")
    # Staircases change only at whole epochs: e + f (0 <= f < 1) is epoch e.
    assert stair(59.999)["cd"] == pytest.approx(6.0)
    assert stair(60.0)["cd"] == pytest.approx(5.4)
    assert stair(60.5)["cd"] == pytest.approx(5.4)
    assert stair(60.5)["ce"] == 0.0  # still epoch 60: warm-up
    assert stair(61.0)["ce"] == 1.0
    assert stair(159.99)["cd"] == pytest.approx(5.4)
    assert stair(160.01)["cd"] == pytest.approx(4.86)
    # Epoch 0 + step fraction (0-indexed callers) counts as epoch 1.
    assert stair(0.5)["cd"] == pytest.approx(6.0)


def test_scaled_paper_cifar100():
    # 20 epochs = 200 / 10: milestones 60, 160 -> 6, 16; warm-up 60 -> 6.
    sched = schedules.get("paper-cifar100", epochs=20)
    table = {
        1: (0.0, 6.0, 0.0),
        5: (0.0, 6.0, 0.0),
        6: (0.0, 5.4, 0.0),
        7: (1.0, 5.4, 0.1),
        15: (1.0, 5.4, 0.1),
        16: (1.0, 4.86, 0.1),
        20: (1.0, 4.86, 0.1),
    }
    for epoch, expected in table.items():
        _check(sched(epoch), expected)


def test_scaled_paper_imagenet():
    # 10 epochs = 100 / 10: milestones 3, 6, 9; warm-up 3.
    sched = schedules.get("paper-imagenet", epochs=10)
    table = {2: (0.0, 6.0, 0.0), 3: (0.0, 5.4, 0.0), 4: (1.0, 5.4, 1.0), 6: (1.0, 4.86, 1.0), 9: (1.0, 4.374, 1.0)}
    for epoch, expected in table.items():
        _check(sched(epoch), expected)


def test_overrides():
    sched = schedules.get("paper-cifar100", cd0=3.0, gkd=0.5)
    _check(sched(1), (0.0, 3.0, 0.0))
    _check(sched(200), (1.0, 3.0 * 0.81, 0.5))
    with pytest.raises(ValueError):
        schedules.get("paper-cifar100", no_such_weight=1.0)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        schedules.get("no-such-schedule")
    message = str(info.value)
    assert "no-such-schedule" in message
    for name in ("paper-cifar100", "paper-imagenet", "constant", "exponential", "cosine", "linear"):
        assert name in message
    assert set(schedules.names()) >= {"paper-cifar100", "paper-imagenet", "constant", "exponential", "cosine", "linear"}


@pytest.mark.parametrize("name", ["paper-cifar100", "paper-imagenet", "constant", "cosine", "exponential", "linear"])
@pytest.mark.parametrize("bad", [-1, -0.5, float("nan")])
def test_negative_or_nan_epoch_raises(name, bad):
    with pytest.raises(ValueError, match="epoch"):
        schedules.get(name)(bad)


def test_smooth_schedule_validation():
    with pytest.raises(ValueError):
        schedules.smooth("zigzag", 10)
    with pytest.raises(ValueError):
        schedules.smooth("linear", 0)
    assert math.isfinite(schedules.smooth("linear", 1)(1)["cd"])


def test_edt_parts_split_the_cifar100_staircase():
    """Warm-up only: the staircase's warm-up with a constant CD weight; decay only: its CD decay
    with cross-entropy and GKD from epoch 1. Together they are the staircase, epoch by epoch."""
    epochs = 60
    whole = schedules.get("paper-cifar100", epochs=epochs)
    warm = schedules.get("paper-cifar100-warmup-only", epochs=epochs)
    decay = schedules.get("paper-cifar100-decay-only", epochs=epochs)
    for e in range(1, epochs + 1):
        w, a, d = whole(e), warm(e), decay(e)
        assert a["ce"] == w["ce"] and a["gkd"] == w["gkd"] and a["cd"] == 6.0, e  # warm-up as the staircase
        assert d["cd"] == w["cd"] and d["ce"] == 1.0 and d["gkd"] == 0.1, e  # decay as the staircase
    # The miniature's warm-up ends where its LR first drops (18 of 60, as 60 of 200), and the decay is at 18 and 48.
    assert [e for e in range(1, epochs + 1) if whole(e)["ce"] == 0] == list(range(1, 19))
    assert [e for e in range(2, epochs + 1) if whole(e)["cd"] != whole(e - 1)["cd"]] == [18, 48]


def test_imagenet_decay_only_is_the_authors_cd_gkd_setting():
    """lambda_CD = 6 * 0.9^floor(e/30) from epoch 1 with CE and GKD at 1 (their lrdv1 with CD's factor 0.9):
    the staircase's decay without its warm-up."""
    decay = schedules.get("paper-imagenet-decay-only")
    whole = schedules.get("paper-imagenet")
    for e in range(1, 101):
        assert decay(e)["cd"] == pytest.approx(6 * 0.9 ** (e // 30)), e
        assert decay(e)["ce"] == 1.0 and decay(e)["gkd"] == 1.0, e
        assert decay(e)["cd"] == whole(e)["cd"], e


def test_a_misspelt_name_gets_a_suggestion():
    with pytest.raises(ValueError, match=r"unknown schedule 'cosin'; known: .*; did you mean 'cosine'\?"):
        schedules.get("cosin")

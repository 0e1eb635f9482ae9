"""Recipes: a shortened run keeps its learning-rate decay, on the API and on the command line."""

import shlex

import pytest

from cdlib import analysis, cli, recipes
from cdlib.errors import ConfigError


@pytest.mark.parametrize("name, epochs, expected", [
    ("cifar100", 50, (15, 30, 40)),   # 60, 120, 160 of 200 epochs, times 1/4
    ("cifar100", 200, (60, 120, 160)),
    ("cifar100", 300, (90, 180, 240)),
    ("imagenet", 10, (3, 6, 9)),      # 30, 60, 90 of 100
    ("demo", 12, (8, 10)),            # 20 * 0.4 = 8, 26 * 0.4 = 10.4
    ("cifar100", 1, (1, 1, 1)),       # never before epoch 1
])
def test_epochs_move_the_milestones(name, epochs, expected):
    cfg = recipes.get(name, epochs=epochs)
    assert cfg.epochs == epochs and cfg.lr_milestones == expected


def test_explicit_milestones_win_and_replace_is_literal():
    assert recipes.get("cifar100", epochs=50, lr_milestones=[10]).lr_milestones == (10,)
    assert recipes.get("cifar100", epochs=50, lr_milestones=[]).lr_milestones == ()  # no decay at all
    assert recipes.get("cifar100", lr_milestones=[5, 7]).lr_milestones == (5, 7)
    # RunConfig.replace changes exactly what it is told (only a recipe knows its milestones' epoch budget),
    # so milestones left beyond the end of the run are refused rather than silently never reached.
    assert recipes.get("cifar100").replace(epochs=160).lr_milestones == (60, 120, 160)
    with pytest.raises(ConfigError, match=r"lr_milestones \[160\] lie after the last of 150 epochs"):
        recipes.get("cifar100").replace(epochs=150)


@pytest.mark.parametrize("milestones, message", [((0, 5), "from 1 on"), ((-3,), "from 1 on"),
                                                 ((10, 60), r"\[60\] lie after the last of 50 epochs")])
def test_milestones_outside_the_run_are_refused(milestones, message):
    with pytest.raises(ConfigError, match=message):
        recipes.get("cifar100", epochs=50, lr_milestones=milestones)


def test_bad_epochs_are_still_a_config_error():
    with pytest.raises(ConfigError, match="epochs must be at least 1"):
        recipes.get("cifar100", epochs=0)


def _parsed(command: str) -> recipes.RunConfig:
    args = cli.build_parser().parse_args(shlex.split(command)[1:])
    return cli._config_from_args(args)


def test_the_cli_scales_milestones_like_the_api():
    assert _parsed("cdlib distill --recipe cifar100 --epochs 50").lr_milestones == (15, 30, 40)
    assert _parsed("cdlib distill --recipe cifar100 --epochs 50 --lr-milestones 10 20").lr_milestones == (10, 20)
    assert _parsed("cdlib train --recipe imagenet --epochs 10").lr_milestones == (3, 6, 9)


@pytest.mark.parametrize("overrides", [
    {"epochs": 50},
    {"epochs": 50, "lr_milestones": (10, 20)},
    {"epochs": 20, "lr_milestones": (6, 12, 16), "method": "kd"},  # scaled milestones need not be written
    {"lr_milestones": (5,)},
])
def test_cli_command_round_trips(overrides):
    cfg = recipes.get("cifar100", **overrides)
    command = analysis.cli_command(cfg, "cifar100")
    assert _parsed(command) == cfg, command


def test_cli_command_writes_only_epochs_when_the_milestones_follow_them():
    assert analysis.cli_command(recipes.get("cifar100", epochs=50), "cifar100") == "cdlib distill --recipe cifar100 --epochs 50"

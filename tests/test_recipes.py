"""Recipes: a shortened run keeps its learning-rate decay, on the API and on the command line."""

import dataclasses
import math
import shlex

import pytest

from cdlib import analysis, cli, recipes, schedules
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
    return recipes.get(args.recipe, **cli.changes_from_args(args))


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


@pytest.mark.parametrize("overrides, message", [
    ({"batch_size": 2.5}, r"^batch_size must be a whole number, got 2\.5 \(float\)"),
    ({"epochs": True}, r"^epochs must be a whole number, got True \(bool\)"),
    ({"epochs": "3"}, r"^epochs must be a whole number, got '3' \(str\)"),
    ({"lr_gamma": float("inf")}, r"^lr_gamma must be a positive, finite number, got inf"),
    ({"kd_temperature": float("inf")}, r"^kd_temperature must be a positive, finite number, got inf"),
    ({"gkd_temperature": float("nan")}, r"^gkd_temperature must be a positive, finite number, got nan"),
    ({"momentum": -0.1}, r"^momentum must be a non-negative, finite number"),
    ({"progress": "no"}, r"^progress must be True or False"),
    ({"lr_milestones": [1.5]}, r"^lr_milestones must be a list of whole epoch numbers"),
    ({"lr_milestones": "12"}, r"^lr_milestones must be a list of whole epoch numbers"),
    ({"weights": {"cd": True}}, r"^loss weights must be finite numbers >= 0"),
    ({"method": 5}, r"^method must be a string"),
    ({"weights": "x"}, r"^weights must be a dict of loss term -> weight, got 'x' \(str\)"),
    ({"lr_milestones": 5}, r"^lr_milestones must be a list of whole epoch numbers, got 5 \(int\)"),
])
def test_wrong_kinds_of_values_are_one_sentence_naming_the_setting(overrides, message):
    with pytest.raises(ConfigError, match=message) as caught:
        recipes.get("demo", **overrides)
    assert "\n" not in str(caught.value) and str(caught.value).endswith(".")


def test_the_combination_from_the_issue_fails_on_its_first_bad_setting():
    with pytest.raises(ConfigError, match="must be"):
        recipes.get("demo", batch_size=2.5, epochs=True, lr_gamma=float("inf"), kd_temperature=float("inf"))


def test_right_kinds_still_pass_and_paths_become_text(tmp_path):
    import numpy as np

    cfg = recipes.get("demo", epochs=np.int64(4), lr=1, run_dir=tmp_path / "x", lr_milestones=(np.int32(2),))
    assert cfg.epochs == 4 and cfg.lr == 1 and cfg.run_dir == str(tmp_path / "x") and cfg.lr_milestones == (2,)
    # The run builds its EDT schedule from these epochs: a NumPy integer is a whole number there too.
    assert schedules.get(cfg.schedule, epochs=cfg.epochs)(4)["ce"] == 1.0


def test_another_data_set_drops_the_recipes_data_options():
    assert recipes.get("demo").data_options == {"test_fraction": 0.5}
    assert recipes.get("demo", data="synthetic").data_options == {}
    assert recipes.get("demo", data="synthetic", data_options={"num_classes": 3}).data_options == {"num_classes": 3}


def test_every_term_list_comes_from_the_table():
    from cdlib import terms

    assert recipes.RunConfig().weights == terms.default_weights()
    assert set(recipes.get("imagenet").weights) == set(terms.loss_terms())
    meaning = {f.name: f.metadata["meaning"] for f in dataclasses.fields(recipes.RunConfig)}["method"]
    assert meaning.count(",") >= len(terms.methods()) - 1
    for name in terms.methods():
        assert name in meaning


def test_data_options_merge_like_weights_while_the_data_set_stays():
    """`--data-options pad_mode=zeros` on cpu-study changes the padding only: canvas, clutter, the
    split and the test draws stay (they used to vanish: plain digits, another split)."""
    base = recipes.get("cpu-study")
    cfg = recipes.get("cpu-study", data_options={"pad_mode": "zeros"})
    assert cfg.data_options == {**base.data_options, "pad_mode": "zeros"}
    assert cfg.replace(data_options={"clutter": 2}).data_options == {**cfg.data_options, "clutter": 2}
    # Another data set: the recipe's options are its own data set's and do not carry over.
    assert recipes.get("cpu-study", data="synthetic", data_options={"num_classes": 3}).data_options == {"num_classes": 3}
    assert recipes.get("cpu-study", data="synthetic").data_options == {}


def test_a_method_has_one_spelling_so_one_run_folder():
    """Issue 24 item 11: 'KD' and 'kd' trained into two folders; 'cd + gkd' into 'cd _ gkd'."""
    assert recipes.get("demo", method="KD, cd + gkd").method == "kd,cd+gkd"
    assert recipes.get("demo", method="Student,CD+GKD+EDT,").method == "student,cd+gkd+edt"
    # The same method twice, however spelt or ordered, is refused before anything trains.
    for twice in ("kd,KD", "student,student", "student,baseline", "kd+cd,cd+kd"):
        with pytest.raises(ConfigError, match="more than once"):
            recipes.get("demo", method=twice)


@pytest.mark.parametrize("method", ["edt", "gkd+edt", "kd+edt", "ce+edt"])
def test_edt_needs_cd_to_schedule(method):
    """EDT weights ce, cd and gkd; without cd its warm-up switches cross-entropy off and the loss is 0."""
    with pytest.raises(ConfigError, match=r"^EDT is a schedule .* e\.g\. 'cd\+edt' or 'cd\+gkd\+edt'\.$"):
        recipes.get("demo", method=method)
    assert recipes.parse_method("cd+edt") == ("ce", "cd", "edt")


@pytest.mark.parametrize("overrides, message", [
    ({"epochs": 10**400}, r"^epochs must be at most 100000, got 1000000000000000\.\.\..*\(401 characters\)"),
    ({"lr": 10**400}, r"^lr must be a number a float can hold"),
    ({"image_size": 1025}, r"^image_size must be at most 1024"),
    ({"image_size": 0}, r"^image_size must be at least 1, got 0; e\.g\. image_size=32\.$"),
    ({"num_workers": -1}, r"^num_workers must be at least 0, got -1; e\.g\. num_workers=4\.$"),
    ({"batch_size": 0}, r"^batch size must be at least 1, got 0; e\.g\. batch_size=128\.$"),
    ({"max_steps_per_epoch": 0}, r"^max_steps_per_epoch must be at least 1, got 0; e\.g\. max_steps_per_epoch=None"),
    ({"run_dir": ""}, r"^run_dir must name a folder"),
    ({"seed": -1}, r"^seed -1 is not a whole number from 0"),
    ({"device": "cuda:x"}, r"^unknown device 'cuda:x'"),
    ({"data_options": {"seed": 1.5}}, r"^data_options seed must be a whole number from 0 to 4294967295, got 1\.5"),
    ({"data_options": {"test_fraction": math.inf}}, r"^data_options test_fraction must be a number from 0\.0 to 1\.0"),
    ({"data_options": {"canvas": 1000}}, r"^digits with .* about 33 GiB \(at most 16 GiB\)"),
    ({"data": "synthetic", "data_options": {"num_classes": 10**6}}, r"^data_options num_classes must be a whole number "
                                                                      r"from 2 to 100000"),
])
def test_numbers_are_bounded_before_anything_is_allocated(overrides, message):
    with pytest.raises(ConfigError, match=message) as caught:
        recipes.get("demo", **overrides)
    assert "\n" not in str(caught.value)


def test_sizes_within_the_bounds_pass():
    assert recipes.get("demo", data_options={"canvas": 256, "clutter": 3}).data_options["canvas"] == 256
    assert recipes.get("imagenet", epochs=100_000, image_size=1024, device="cuda:1").epochs == 100_000

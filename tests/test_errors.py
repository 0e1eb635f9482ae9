"""One error story: every mistake a user can make through a public function or the CLI is a
CDLibError subclass carrying one sentence that says what is wrong and what to do.

Each case calls a public entry point with a bad name or value and checks the class, that the
message is one line ending in a full stop, and a phrase that names the mistake.
"""

from __future__ import annotations

import math

import pytest
import torch

from cdlib import checkpoint, cli, connectors, data, losses, models, recipes, schedules, train
from cdlib.distiller import Distiller
from cdlib.errors import CDLibError, CheckpointError, ConfigError, DataError
from cdlib.models import imagenet

_logits = torch.randn(4, 10)


def _stages(*channels, size=4):
    return [torch.randn(2, c, size, size) for c in channels]


def _pair(student_classes=5, teacher_classes=5):
    return (models.create("cifar_resnet10_w4", num_classes=student_classes),
            models.create("cifar_resnet10_w8", num_classes=teacher_classes))


CASES = {
    # losses
    "cd_loss stage count": (ConfigError, "feature stages", lambda: losses.cd_loss(_stages(4, 8), _stages(4))),
    "cd_loss channels": (ConfigError, "connectors", lambda: losses.cd_loss(_stages(4), _stages(8))),
    "cd_loss no stages": (ConfigError, "at least one", lambda: losses.cd_loss([], [])),
    "channel_attention 3-D": (ConfigError, "4-D", lambda: losses.channel_attention(torch.randn(2, 3, 4))),
    "kd_loss shapes": (ConfigError, "same number of classes", lambda: losses.kd_loss(_logits, torch.randn(4, 9))),
    "kd_loss empty batch": (ConfigError, "batch is empty", lambda: losses.kd_loss(torch.zeros(0, 3), torch.zeros(0, 3))),
    "kd_loss temperature": (ConfigError, "temperature", lambda: losses.kd_loss(_logits, _logits, -1.0)),
    "gkd_loss target shape": (ConfigError, "targets", lambda: losses.gkd_loss(_logits, _logits, torch.zeros(3, dtype=torch.long))),
    "gkd_loss target range": (ConfigError, "0 to 9", lambda: losses.gkd_loss(_logits, _logits, torch.tensor([0, 1, 2, 10]))),
    "at_loss spatial": (ConfigError, "spatial", lambda: losses.at_loss(_stages(4), _stages(4, size=8))),
    "fitnets_loss shape": (ConfigError, "connector", lambda: losses.fitnets_loss(_stages(4), _stages(8))),
    # connectors
    "build_connectors stages": (ConfigError, "same number of stages", lambda: connectors.build_connectors([1, 2], [1])),
    "build_connectors channels": (ConfigError, "positive whole numbers", lambda: connectors.build_connectors([0], [1])),
    # schedules
    "schedules.get name": (ConfigError, "unknown schedule .nope.; known:", lambda: schedules.get("nope")),
    "schedules.get override": (ConfigError, "does not accept", lambda: schedules.get("paper-cifar100", bogus=1)),
    "schedules.get epochs": (ConfigError, "whole number from 1 to", lambda: schedules.get("cosine", epochs=0)),
    "schedule epoch": (ConfigError, "non-negative", lambda: schedules.get("cosine")(-1)),
    "smooth shape": (ConfigError, "decay shape", lambda: schedules.smooth("zigzag", 10)),
    "register name": (ConfigError, "non-empty string", lambda: schedules.register(3, lambda epochs=1: None)),
    "register shipped": (ConfigError, "cannot be replaced", lambda: schedules.register("paper-cifar100", lambda epochs=1: None)),
    "register factory": (ConfigError, "needs a factory", lambda: schedules.register("mine", 5)),
    # models
    "models.create name": (ConfigError, "unknown model .nope.; known:", lambda: models.create("nope")),
    "models.create classes": (ConfigError, "num_classes", lambda: models.create("cifar_resnet10_w4", num_classes=0)),
    "models.create pretrained": (ConfigError, "no pretrained weights", lambda: models.create("cifar_resnet10_w4", pretrained=True)),
    "models.create channels": (ConfigError, "3-channel", lambda: models.create("resnet18", in_channels=1)),
    "models.stage_channels": (ConfigError, "unknown model .nope.; known:", lambda: models.stage_channels("nope")),
    "imagenet.build classes": (ConfigError, "1000 ImageNet classes",
                               lambda: imagenet.build("resnet18", num_classes=10, pretrained=True)),
    "imagenet.build name": (ConfigError, "unknown ImageNet model", lambda: imagenet.build("resnet1")),
    # recipes
    "recipes.get name": (ConfigError, "unknown recipe", lambda: recipes.get("nope")),
    "recipes.get setting": (ConfigError, "unknown setting", lambda: recipes.get("demo", bogus=1)),
    "recipes.get kind": (ConfigError, "epochs must be a whole number", lambda: recipes.get("demo", epochs="3")),
    "recipes.get infinite": (ConfigError, "lr_gamma must be a positive, finite", lambda: recipes.get("demo", lr_gamma=math.inf)),
    "recipes.get model": (ConfigError, "unknown student model", lambda: recipes.get("demo", student="resnet9000")),
    "recipes.get weight": (ConfigError, "unknown loss weight", lambda: recipes.get("demo", weights={"cdd": 1.0})),
    "parse_method": (ConfigError, "unknown method term", lambda: recipes.parse_method("kd+nope")),
    # distiller
    "Distiller term": (ConfigError, "unknown loss term", lambda: Distiller(_pair()[0], None, terms=("nope",))),
    "Distiller teacher": (ConfigError, "need a teacher", lambda: Distiller(_pair()[0], None, terms=("ce", "kd"))),
    "Distiller classes": (ConfigError, "same data set", lambda: Distiller(*_pair(5, 7), terms=("ce", "kd"))),
    "Distiller state": (ConfigError, "does not match",
                        lambda: Distiller(_pair()[0], terms=("ce",)).load_trainable_state_dict({"bogus": torch.zeros(1)})),
    # train
    "fit kind": (ConfigError, "batch_size must be a whole number", lambda: train.fit(recipes.RunConfig(batch_size=2.5))),
    "fit list": (ConfigError, "use run\\(\\)", lambda: train.fit(recipes.get("demo"))),
    "fit method": (ConfigError, "unknown method term", lambda: train.run(recipes.RunConfig(method="kd+nope"))),
    "ensure_teacher kind": (ConfigError, "must be True or False",
                            lambda: train.ensure_teacher(recipes.RunConfig(resume="yes"))),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_mistake_is_one_sentence_of_the_right_class(name):
    cls, phrase, call = CASES[name]
    with pytest.raises(CDLibError) as caught:
        call()
    _assert_one_sentence(caught.value, cls, phrase)


def _assert_one_sentence(exc: BaseException, cls, phrase: str) -> None:
    message = str(exc)
    assert isinstance(exc, cls), f"{type(exc).__name__}: {message}"
    assert "\n" not in message and message.strip() == message, repr(message)
    assert message.endswith((".", "?")), repr(message)  # a sentence, or the registry's "did you mean ...?"
    assert __import__("re").search(phrase, message), message


def test_input_errors_still_are_value_errors():
    """ConfigError subclasses ValueError, so code written against `except ValueError` keeps working."""
    with pytest.raises(ValueError):
        schedules.get("nope")
    with pytest.raises(ValueError):
        connectors.build_connectors([1, 2], [1])


# --------------------------------------------------------------------------- checkpoints


class _RunsCode:
    def __reduce__(self):
        return (print, ("this ran",))


@pytest.fixture
def bad_files(tmp_path) -> dict:
    files = {"missing": tmp_path / "missing.pt", "random": tmp_path / "random.pt", "evil": tmp_path / "evil.pt",
             "list": tmp_path / "list.pt", "plain": tmp_path / "plain.pt", "other": tmp_path / "other.pt"}
    files["random"].write_bytes(bytes(range(256)) * 8)
    torch.save({"state_dict": _RunsCode()}, files["evil"])
    torch.save([1, 2, 3], files["list"])
    torch.save(models.create("cifar_resnet10_w4", num_classes=3).state_dict(), files["plain"])
    checkpoint.save_model(models.create("cifar_resnet10_w8", num_classes=3), files["other"], "cifar_resnet10_w8", 3)
    return files


@pytest.mark.parametrize("kind, phrase", [("missing", "does not exist"), ("random", "truncated or corrupt"),
                                          ("evil", "could run code"), ("list", "holds a list"),
                                          ("plain", "does not say which model"), ("other", "holds a cifar_resnet10_w8")])
def test_a_bad_checkpoint_is_one_sentence(bad_files, kind, phrase, capsys):
    with pytest.raises(CDLibError) as caught:
        if kind == "other":
            checkpoint.load_model_weights(models.create("cifar_resnet10_w4", num_classes=3), bad_files[kind],
                                          "cifar_resnet10_w4")
        else:
            checkpoint.load_model(bad_files[kind])
    _assert_one_sentence(caught.value, CheckpointError, phrase)
    assert "this ran" not in capsys.readouterr().out


# --------------------------------------------------------------------------- data (H5's checks)


@pytest.mark.parametrize("call, cls, phrase", [
    (lambda: data.load("nope"), ConfigError, "nope"),
    (lambda: data.load("digits", bogus=1), ConfigError, "bogus"),
    (lambda: data.load("cifar100", root="/nonexistent/cifar"), DataError, "/nonexistent/cifar"),
])
def test_a_bad_data_request_is_one_sentence(call, cls, phrase):
    with pytest.raises(CDLibError) as caught:
        call()
    message = str(caught.value)
    assert isinstance(caught.value, cls) and "\n" not in message and phrase in message, message


# --------------------------------------------------------------------------- the command line


@pytest.mark.parametrize("argv, phrase", [
    (["distill", "--bogus"], "unrecognized arguments: --bogus"),
    (["distill", "--epochs", "abc"], "invalid int value"),
    (["distill", "--recipe", "nope"], "unknown recipe 'nope'"),
    (["distill", "--recipe", "demo", "--method", "kd+nope"], "unknown method term"),
    (["distill", "--recipe", "demo", "--lr-gamma", "inf"], "lr_gamma must be a positive, finite number"),
    (["distill", "--recipe", "demo", "--weights", "cd"], "--weights takes key=value pairs"),
    (["distill", "--recipe", "demo", "--student", "nope"], "unknown student model"),
    (["evaluate", "/nonexistent/model.pt", "--recipe", "demo"], "does not exist"),
    (["frobnicate"], "invalid choice"),
])
def test_the_cli_answers_bad_arguments_with_one_line_and_status_2(argv, phrase, capsys, tmp_path):
    try:
        code = cli.main(argv + (["--run-dir", str(tmp_path / "r")] if argv[0] == "distill" and "--bogus" not in argv else []))
    except SystemExit as exc:  # argparse's own errors exit from inside parse_args
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("cdlib: error: ") and "Traceback" not in err, err
    assert phrase in err, err
    assert not (tmp_path / "r").exists(), "a refused command must not start a run"

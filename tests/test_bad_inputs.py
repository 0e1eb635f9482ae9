"""Bad inputs, round 2 (issue 24): every one must end in ONE sentence through cdlib's error classes.

Each row is a bad input (a Python API call or a command line) and a phrase the sentence must contain.
A Python call must raise a :class:`~cdlib.errors.CDLibError` whose message is one line; a command line
must exit with status 2, print one ``cdlib: error:`` line and write nothing into its run folder (a
refused command must not leave half a run behind, nor train before it refuses).

Run this file as a script to replay the round and count the outcomes (it does not stop at the first
failure, and also classifies inputs that are accepted or lose work)::

    .venv/bin/python tests/test_bad_inputs.py            # totals
    .venv/bin/python tests/test_bad_inputs.py -v         # one line per input
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Union

import pytest
import torch

from cdlib import cli, connectors, losses, models, recipes, schedules, stats
from cdlib.distiller import Distiller
from cdlib.errors import CDLibError

HUGE = 10**400  # overflows a float: OverflowError wherever it meets float arithmetic
_L = torch.randn(4, 10)
_T = torch.tensor([0, 1, 2, 3])
# Keeps an accepted command line short (one step of one epoch): the round must not train for minutes.
SMALL = ["--epochs", "1", "--max-steps-per-epoch", "1", "--image-size", "8", "--no-progress", "--device", "cpu"]


def _maps(n=2, c=4, h=4):
    return [torch.randn(n, c, h, h)]


def _net(**kw):
    return models.create("cifar_resnet10_w4", num_classes=4, **kw)


def _distiller_step(weights):
    return Distiller(_net(), terms=("ce",))(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]), weights=weights)


def _register_then_get():
    schedules.register("test-returns-a-number", lambda epochs=200, **kw: 5)
    return schedules.get("test-returns-a-number")


@dataclass(frozen=True)
class Api:
    """A Python call that must raise a one-sentence CDLibError containing ``phrase`` (a regex)."""

    name: str
    call: Callable[[], object]
    phrase: str
    origin: str = "new"  # "issue" for the inputs issue 24 lists, "new" for this round's own


@dataclass(frozen=True)
class Cli:
    """A command line (``argv`` or a function of the fixture folder) that must exit 2 with one line."""

    name: str
    argv: Union[List[str], Callable[[Path], List[str]]]
    phrase: str
    origin: str = "new"


DEMO = ["distill", "--recipe", "demo", *SMALL]

CASES = [
    # ---------------------------------------------------------------- issue 24, item 7 (CLI tracebacks)
    Cli("distill --epochs 10**400", [*DEMO, "--epochs", str(HUGE)], "epochs must be", "issue"),
    Cli("estimate --epochs 10**400", ["estimate", "--recipe", "demo", "--epochs", str(HUGE)], "epochs must be", "issue"),
    Cli("--data-options test_fraction=Infinity", [*DEMO, "--data-options", "test_fraction=Infinity"], "test_fraction",
        "issue"),
    Cli("--data-options seed=1.5", [*DEMO, "--data-options", "seed=1.5"], "seed", "issue"),
    Cli("--data-options seed=abc", [*DEMO, "--data-options", "seed=abc"], "seed", "issue"),
    Cli("--image-size 100000", [*DEMO, "--image-size", "100000"], "image_size must be", "issue"),
    Cli("--data-options canvas=100000", [*DEMO, "--data-options", "canvas=100000"], "canvas", "issue"),
    Cli("evaluate, config.json holds []", lambda f: ["evaluate", str(f / "list_config" / "model.pt")],
        "holds a list, not the settings", "issue"),
    Cli("evaluate, config.json holds a string", lambda f: ["evaluate", str(f / "str_config" / "model.pt")],
        "holds a str, not the settings", "issue"),
    # ---------------------------------------------------------------- item 10 (wrong one-liners)
    Cli("evaluate RUN_FOLDER", lambda f: ["evaluate", str(f / "run")], "is a folder; pass the model file", "issue"),
    # ---------------------------------------------------------------- item 11 (accepted though meaningless)
    Cli("--method edt", [*DEMO, "--method", "edt"], "EDT is a schedule", "issue"),
    Cli("--method student,student", [*DEMO, "--method", "student,student"], "more than once", "issue"),
    Cli("--method kd,KD", [*DEMO, "--method", "kd,KD"], "more than once", "issue"),
    Cli("--run-dir ''", [*DEMO, "--run-dir", ""], "run_dir", "issue"),
    Cli("--weights kd=true", [*DEMO, "--weights", "kd=true"], "must be a number", "issue"),
    Api("cd_loss on an empty batch", lambda: losses.cd_loss([torch.zeros(0, 4, 2, 2)], [torch.zeros(0, 4, 2, 2)]),
        "batch is empty", "issue"),
    # ---------------------------------------------------------------- item 13 (API: not a CDLibError)
    Api("recipes.get(['demo'])", lambda: recipes.get(["demo"]), "recipe name", "issue"),
    Api("recipes.get lr=10**400", lambda: recipes.get("demo", lr=HUGE), "lr must be a number", "issue"),
    Api("recipes.get epochs=10**400", lambda: recipes.get("demo", epochs=HUGE), "epochs must be", "issue"),
    Api("cd_loss([None])", lambda: losses.cd_loss([None], [None]), "tensor", "issue"),
    Api("kd_loss temperature='4'", lambda: losses.kd_loss(_L, _L, temperature="4"), "temperature", "issue"),
    Api("schedule('3')", lambda: schedules.get("paper-cifar100")("3"), "epoch must be a number", "issue"),
    Api("models.create num_classes=10**12", lambda: models.create("cifar_resnet10_w4", num_classes=10**12), "num_classes", "issue"),
    Api("stats.mean_interval([])", lambda: stats.mean_interval([]), "no values", "issue"),
    # ---------------------------------------------------------------- this round: recipes / RunConfig
    Api("recipes.get momentum=10**400", lambda: recipes.get("demo", momentum=HUGE), "momentum must be a number"),
    Api("recipes.get weights kd=10**400", lambda: recipes.get("demo", weights={"kd": HUGE}), "loss weights"),
    Api("recipes.get data_options {1: 2}", lambda: recipes.get("demo", data_options={1: 2}), "option names"),
    Api("recipes.get seed=-1", lambda: recipes.get("demo", seed=-1), "seed"),
    Api("recipes.get seed=2**70", lambda: recipes.get("demo", seed=2**70), "seed"),
    Api("recipes.get device='gpu'", lambda: recipes.get("demo", device="gpu"), "unknown device"),
    Api("recipes.get batch_size=10**12", lambda: recipes.get("demo", batch_size=10**12), "batch_size must be"),
    Api("recipes.get num_workers=10**6", lambda: recipes.get("demo", num_workers=10**6), "num_workers must be"),
    Api("RunConfig.replace({'epochs': 3})", lambda: recipes.get("demo").replace({"epochs": 3}), "keywords"),
    Api("recipes.get method kd+cd,cd+kd", lambda: recipes.get("demo", method="kd+cd,cd+kd"), "more than once"),
    Api("recipes.get method gkd+edt", lambda: recipes.get("demo", method="gkd+edt"), "EDT is a schedule"),
    Api("recipes.get run_dir='   '", lambda: recipes.get("demo", run_dir="   "), "run_dir"),
    Api("recipes.get synthetic num_classes=10**9",
        lambda: recipes.get("demo", data="synthetic", data_options={"num_classes": 10**9}), "num_classes"),
    Api("recipes.get digits seed=True", lambda: recipes.get("demo", data_options={"seed": True}), "seed"),
    Api("recipes.scale_milestones from 0 epochs", lambda: recipes.scale_milestones((60,), 0, 10), "from_epochs"),
    Api("recipes.parse_method('edt')", lambda: recipes.parse_method("edt"), "EDT is a schedule"),
    # ---------------------------------------------------------------- losses
    Api("cd_loss integer maps", lambda: losses.cd_loss([torch.ones(2, 4, 2, 2, dtype=torch.long)] * 1,
                                                       [torch.ones(2, 4, 2, 2, dtype=torch.long)]), "floating"),
    Api("cd_loss 0x0 maps", lambda: losses.cd_loss([torch.randn(2, 4, 0, 0)], [torch.randn(2, 4, 0, 0)]), "0x0"),
    Api("cd_loss a tensor, not a list", lambda: losses.cd_loss(torch.randn(1, 2, 2, 2), torch.randn(1, 2, 2, 2)),
        "list of"),
    Api("kd_loss temperature=None", lambda: losses.kd_loss(_L, _L, temperature=None), "temperature"),
    Api("kd_loss temperature=10**400", lambda: losses.kd_loss(_L, _L, temperature=HUGE), "temperature"),
    Api("kd_loss numpy arrays", lambda: losses.kd_loss(_L.numpy(), _L.numpy()), "torch tensor"),
    Api("kd_loss integer logits", lambda: losses.kd_loss(torch.ones(4, 10, dtype=torch.long),
                                                         torch.ones(4, 10, dtype=torch.long)), "floating"),
    Api("kd_loss on two devices", lambda: losses.kd_loss(_L, _L.to("meta")), "same device"),
    Api("gkd_loss float targets", lambda: losses.gkd_loss(_L, _L, _T.float()), "integer class indices"),
    Api("gkd_loss targets a list", lambda: losses.gkd_loss(_L, _L, [0, 1, 2, 3]), "torch tensor"),
    Api("ce_loss target 99 of 10", lambda: losses.ce_loss(_L, torch.tensor([0, 1, 2, 99])), "0 to 9"),
    Api("ce_loss 4 logits, 2 targets", lambda: losses.ce_loss(_L, torch.tensor([0, 1])), "targets must be"),
    Api("ce_loss empty batch", lambda: losses.ce_loss(torch.zeros(0, 10), torch.zeros(0, dtype=torch.long)),
        "batch is empty"),
    Api("ce_loss float targets", lambda: losses.ce_loss(_L, _T.float()), "integer class indices"),
    Api("per_sample_kl 10 vs 9 classes", lambda: losses.per_sample_kl(_L, torch.randn(4, 9), 4.0),
        "same number of classes"),
    Api("channel_attention(None)", lambda: losses.channel_attention(None), "torch tensor"),
    Api("teacher_correct_mask 2 targets for 4", lambda: losses.teacher_correct_mask(_L, torch.tensor([1, 2])),
        "targets must be"),
    Api("at_loss p='2'", lambda: losses.at_loss(_maps(), _maps(), p="2"), "p must be"),
    Api("at_loss p=0", lambda: losses.at_loss(_maps(), _maps(), p=0), "p must be"),
    Api("at_loss empty batch", lambda: losses.at_loss([torch.zeros(0, 4, 2, 2)], [torch.zeros(0, 4, 2, 2)]),
        "batch is empty"),
    Api("at_loss 3-D maps", lambda: losses.at_loss([torch.randn(2, 4, 2)], [torch.randn(2, 4, 2)]), "4-D"),
    Api("fitnets_loss([None])", lambda: losses.fitnets_loss([None], [None]), "tensor"),
    Api("fitnets_loss empty batch", lambda: losses.fitnets_loss([torch.zeros(0, 4, 2, 2)], [torch.zeros(0, 4, 2, 2)]),
        "batch is empty"),
    # ---------------------------------------------------------------- schedules
    Api("schedule(None)", lambda: schedules.get("paper-cifar100")(None), "epoch must be a number"),
    Api("staircase schedule(inf)", lambda: schedules.get("paper-cifar100")(math.inf), "finite"),
    Api("cosine schedule(inf)", lambda: schedules.get("cosine")(math.inf), "finite"),
    Api("schedules.get cd0='6'", lambda: schedules.get("cosine", cd0="6"), "cd0 must be"),
    Api("schedules.get cd0=nan", lambda: schedules.get("cosine", cd0=math.nan), "cd0 must be"),
    Api("schedules.get cd0=-6", lambda: schedules.get("paper-cifar100", cd0=-6), "cd0 must be"),
    Api("schedules.get gkd='x'", lambda: schedules.get("paper-cifar100", gkd="x"), "gkd must be"),
    Api("schedules.get epochs=10**400", lambda: schedules.get("paper-cifar100", epochs=HUGE), "epochs must be"),
    Api("smooth epochs='10'", lambda: schedules.smooth("linear", "10"), "epochs must be"),
    Api("smooth epochs=nan", lambda: schedules.smooth("linear", math.nan), "epochs must be"),
    Api("staircase milestones=None", lambda: schedules.staircase(None, 0), "milestones must be"),
    Api("a registered factory returns a number", _register_then_get, "not a schedule"),
    # ---------------------------------------------------------------- models, connectors, distiller
    Api("models.create in_channels=10**9", lambda: models.create("cifar_resnet10_w4", in_channels=10**9), "in_channels"),
    Api("models.create pretrained='no'", lambda: _net(pretrained="no"), "pretrained must be True or False"),
    Api("a model given 1-channel images", lambda: _net()(torch.randn(1, 1, 8, 8)), "3-channel"),
    Api("build_connectors(None, None)", lambda: connectors.build_connectors(None, None), "lists of"),
    Api("build_connectors 10**6 channels", lambda: connectors.build_connectors([10**6], [10**6]), "at most"),
    Api("Distiller(None)", lambda: Distiller(None), "student must be"),
    Api("Distiller kd_temperature=-1", lambda: Distiller(_net(), _net(), terms=("ce", "kd"), kd_temperature=-1),
        "kd_temperature"),
    Api("Distiller weights='x'", lambda: _distiller_step("x"), "weights must be"),
    Api("Distiller weight 'a'", lambda: _distiller_step({"ce": "a"}), "weight"),
    # ---------------------------------------------------------------- stats
    Api("stats.mean_interval(['a'])", lambda: stats.mean_interval(["a"]), "numbers"),
    Api("stats.mean_interval(None)", lambda: stats.mean_interval(None), "numbers"),
    Api("stats.mean_interval level=2", lambda: stats.mean_interval([1, 2, 3], level=2), "level"),
    Api("stats.paired_difference lengths", lambda: stats.paired_difference([1, 2], [1]), "equal lengths"),
    Api("stats.t_cdf df=0", lambda: stats.t_cdf(1.0, 0), "degrees of freedom"),
    Api("stats.t_quantile p=1", lambda: stats.t_quantile(1.0, 3), "between 0 and 1"),
    Api("stats.t_quantile df=nan", lambda: stats.t_quantile(0.9, math.nan), "degrees of freedom"),
    Api("stats.holm(['a'])", lambda: stats.holm(["a"]), "p-values"),
    Api("stats.holm([2.0])", lambda: stats.holm([2.0, 0.1]), "p-values"),
    Api("stats.minimum_detectable_effect alpha=2", lambda: stats.minimum_detectable_effect(1.0, 5, alpha=2), "alpha"),
    Api("stats.t_test_p('x')", lambda: stats.t_test_p("x"), "Interval"),
    # ---------------------------------------------------------------- this round: command lines
    Cli("distill --batch-size 0", [*DEMO, "--batch-size", "0"], "batch size must be at least 1"),
    Cli("distill --lr nan", [*DEMO, "--lr", "nan"], "lr must be a positive, finite number"),
    Cli("distill --device gpu", [*DEMO, "--device", "gpu"], "unknown device"),
    Cli("distill --schedule cosin", [*DEMO, "--schedule", "cosin"], "did you mean 'cosine'"),
    Cli("distill --data-options canvas=-5", [*DEMO, "--data-options", "canvas=-5"], "canvas"),
    Cli("distill --data-options clutter=3 (no canvas)", [*DEMO, "--data-options", "clutter=3"], "canvas"),
    Cli("distill --amp fp32", [*DEMO, "--amp", "fp32"], "amp must be one of"),
    Cli("distill --weights cd=-1", [*DEMO, "--weights", "cd=-1"], "finite numbers >= 0"),
    Cli("distill --weights kd=nan", [*DEMO, "--weights", "kd=nan"], "finite numbers >= 0"),
    Cli("distill --weights kd=[1]", [*DEMO, "--weights", "kd=[1]"], "must be a number"),
    Cli("distill --method 'cd + gkd,cd+gkd'", [*DEMO, "--method", "cd + gkd,cd+gkd"], "more than once"),
    Cli("distill --seeds abc", [*DEMO, "--seeds", "abc"], "cannot read seeds"),
    Cli("distill --epochs 0", [*DEMO, "--epochs", "0"], "epochs must be at least 1"),
    Cli("distill --epochs -5", [*DEMO, "--epochs", "-5"], "epochs must be at least 1"),
    Cli("distill --image-size 0", [*DEMO, "--image-size", "0"], "image_size must be"),
    Cli("distill --num-workers -1", [*DEMO, "--num-workers", "-1"], "num_workers must be"),
    Cli("distill --data-options pad_mode=circular", [*DEMO, "--data-options", "pad_mode=circular"], "pad_mode"),
    Cli("distill --reference-compat --no-teacher-bn-train", [*DEMO, "--reference-compat", "--no-teacher-bn-train"],
        "asks for the opposite"),
    Cli("distill --max-steps-per-epoch 0", [*DEMO, "--max-steps-per-epoch", "0"], "max_steps_per_epoch"),
    Cli("distill --kd-temperature 0", [*DEMO, "--kd-temperature", "0"], "kd_temperature"),
    Cli("distill --gkd-temperature inf", [*DEMO, "--gkd-temperature", "inf"], "gkd_temperature"),
    Cli("distill --momentum -1", [*DEMO, "--momentum", "-1"], "momentum"),
    Cli("distill --lr-milestones 0", [*DEMO, "--lr-milestones", "0"], "lr_milestones"),
    Cli("distill --lr-milestones 500", [*DEMO, "--lr-milestones", "500"], "lr_milestones"),
    Cli("distill --method ''", [*DEMO, "--method", ""], "names no method"),
    Cli("distill --data-options =5", [*DEMO, "--data-options", "=5"], "key=value"),
    Cli("distill --data-options test_fraction=nan", [*DEMO, "--data-options", "test_fraction=nan"], "test_fraction"),
    Cli("distill --data-options seed=-1", [*DEMO, "--data-options", "seed=-1"], "seed"),
    Cli("distill --data-options bogus=1", [*DEMO, "--data-options", "bogus=1"], "does not take the option"),
    Cli("distill synthetic num_classes=10**9", [*DEMO, "--data", "synthetic", "--data-options", "num_classes=1000000000"],
        "num_classes"),
    Cli("distill --teacher-checkpoint missing.pt", lambda f: [*DEMO, "--teacher-checkpoint", str(f / "missing.pt")],
        "does not exist"),
    Cli("distill --teacher-checkpoint a folder", lambda f: [*DEMO, "--teacher-checkpoint", str(f / "empty")],
        "folder"),
    Cli("distill --run-dir a file", lambda f: [*DEMO, "--run-dir", str(f / "notes.txt")], "notes.txt"),
    Cli("distill --recipe cifar100 --data-root missing", lambda f: ["distill", *SMALL, "--data-root", str(f / "nodata")],
        "CIFAR-100 not found"),
    Cli("train --model nope", ["train", "--recipe", "demo", *SMALL, "--model", "nope"], "unknown student model"),
    Cli("evaluate a text file", lambda f: ["evaluate", str(f / "notes.txt"), "--recipe", "demo"], "notes.txt"),
    Cli("evaluate an empty folder", lambda f: ["evaluate", str(f / "empty")], "is a folder"),
    Cli("evaluate a missing file, no recipe", lambda f: ["evaluate", str(f / "missing.pt")], "does not exist"),
    Cli("evaluate --model nope", lambda f: ["evaluate", str(f / "run" / "model.pt"), "--model", "nope"],
        "unknown model"),
    Cli("evaluate --data-options seed=abc", lambda f: ["evaluate", str(f / "run" / "model.pt"), "--data-options",
                                                       "seed=abc"], "seed"),
    Cli("evaluate, config.json with epochs 'x'", lambda f: ["evaluate", str(f / "bad_config" / "model.pt")],
        "epochs must be a whole number"),
    Cli("estimate --gpu V100", ["estimate", "--recipe", "demo", "--gpu", "V100"], "unknown GPU"),
    Cli("estimate --batch-size 10**12", ["estimate", "--recipe", "demo", "--batch-size", str(10**12)],
        "batch_size must be"),
    Cli("list --bogus", ["list", "--bogus"], "unrecognized arguments"),
]

# Where the wrong message was the fault (not a traceback): these must NOT say what the old message said.
NOT_SAID = {
    "evaluate RUN_FOLDER": "CIFAR-100 not found",
    "evaluate an empty folder": "CIFAR-100 not found",
}


# --------------------------------------------------------------------------- fixtures for command lines


def make_files(root: Path) -> Path:
    """The folders and files the command lines above point at."""
    from cdlib import train

    run = root / "run"
    cfg = recipes.get("demo", data="synthetic", data_options={"num_classes": 4, "train_per_class": 8, "test_per_class": 2},
                      image_size=8, student="cifar_resnet10_w4", method="student", epochs=1, batch_size=8,
                      max_steps_per_epoch=1, device="cpu", progress=False, run_dir=str(run))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        model = train.fit(cfg).model_path
    for name, config in (("list_config", []), ("str_config", "hello"), ("bad_config", {"epochs": "x"})):
        (root / name).mkdir()
        (root / name / "model.pt").write_bytes(model.read_bytes())
        (root / name / "config.json").write_text(json.dumps(config))
    (root / "empty").mkdir()
    (root / "notes.txt").write_text("not a checkpoint\n")
    return root


def run_cli(case: Cli, files: Path, run_dir: Path):
    """(exit status, stderr) of ``case`` in this process; distill and train get a run folder of their own."""
    argv = case.argv(files) if callable(case.argv) else list(case.argv)
    if argv[0] in ("distill", "train") and "--run-dir" not in argv:
        argv += ["--run-dir", str(run_dir)]
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse exits from inside parse_args
            code = exc.code
    return code, err.getvalue()


# --------------------------------------------------------------------------- the tests


def _assert_one_sentence(message: str, phrase: str) -> None:
    import re

    assert "\n" not in message.strip(), repr(message)
    assert re.search(phrase, message), message


@pytest.mark.parametrize("case", [c for c in CASES if isinstance(c, Api)], ids=lambda c: c.name)
def test_a_bad_call_is_one_sentence(case):
    with pytest.raises(CDLibError) as caught:
        case.call()
    _assert_one_sentence(str(caught.value), case.phrase)
    assert str(caught.value).endswith((".", "?")), str(caught.value)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    return make_files(tmp_path_factory.mktemp("bad_inputs"))


@pytest.mark.parametrize("case", [c for c in CASES if isinstance(c, Cli)], ids=lambda c: c.name)
def test_a_bad_command_line_is_one_line_and_status_2(case, files, tmp_path):
    run_dir = tmp_path / "r"
    code, err = run_cli(case, files, run_dir)
    assert code == 2, err
    assert err.startswith("cdlib: error: ") and "Traceback" not in err, err
    _assert_one_sentence(err, case.phrase)
    assert NOT_SAID.get(case.name, "\0") not in err, err
    assert not run_dir.exists() or not any(run_dir.rglob("*.pt")), "a refused command must not train first"


# --------------------------------------------------------------------------- the round as a script


def classify(case, files: Path, scratch: Path) -> str:
    """one-line | wrong-message (one line, but not saying what is wrong) | multi-line | traceback | accepted |
    lost-work (a command that trained, then refused), and the message."""
    import re
    import traceback

    if isinstance(case, Api):
        try:
            case.call()
        except CDLibError as exc:
            if "\n" in str(exc):
                return "multi-line", str(exc)
            return ("one-line" if re.search(case.phrase, str(exc)) else "wrong-message"), str(exc)
        except Exception as exc:  # noqa: BLE001 - the round counts what escapes
            return "traceback", f"{type(exc).__name__}: {exc}".splitlines()[0]
        return "accepted", ""
    run_dir = scratch / case.name.replace("/", "_").replace(" ", "_")
    try:
        code, err = run_cli(case, files, run_dir)
    except BaseException as exc:  # noqa: BLE001
        return "traceback", "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1]
    if code == 0:
        return "accepted", ""
    if run_dir.exists() and any(run_dir.rglob("*.pt")):
        return "lost-work", err.strip()
    lines = err.strip().splitlines()
    if code == 2 and len(lines) == 1 and lines[0].startswith("cdlib: error: "):
        right = re.search(case.phrase, lines[0]) and NOT_SAID.get(case.name, "\0") not in lines[0]
        return ("one-line" if right else "wrong-message"), lines[0]
    return "traceback", (lines[-1] if lines else f"exit {code}")


def main(argv: List[str]) -> int:
    verbose = "-v" in argv
    totals: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = make_files(Path(tmp) / "files")
        for case in CASES:
            outcome, message = classify(case, files, Path(tmp) / "scratch")
            kind = "cli" if isinstance(case, Cli) else "api"
            for key in ((case.origin, outcome), ("all", outcome)):
                totals[key] = totals.get(key, 0) + 1
            if verbose or outcome != "one-line":
                print(f"{outcome:<10} {case.origin:<5} {kind:<3} {case.name}: {message[:160]}", flush=True)
    for origin in ("issue", "new", "all"):
        counts = {k[1]: v for k, v in totals.items() if k[0] == origin}
        print(f"{origin:<5} tried {sum(counts.values())}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

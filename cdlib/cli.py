"""Command line: ``cdlib train | distill | evaluate | list`` (also ``python -m cdlib``), and the
commands other packages register (``grade``, ``export-otter``; ``estimate``, ``measure``).

Every field of a recipe (:class:`cdlib.recipes.RunConfig`) is an option, so
``cdlib distill --recipe cifar100 --epochs 50 --method kd`` overrides just
those two values. Errors caused by input print one sentence and exit with
status 2; Ctrl-C saves a checkpoint and exits with status 130, SIGTERM (a
job scheduler's stop) likewise with 143. ``cdlib evaluate`` on a file from a
run folder uses that run's settings (its ``config.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Dict, List, Optional

from . import __version__, recipes, terms
from .errors import CDLibError, ConfigError, from_os_error


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in the same one line as every other input error."""

    def error(self, message: str):
        self.exit(2, f"cdlib: error: {message} (see `{self.prog} --help`)\n")


def _key_values(items: List[str], option: str) -> Dict[str, object]:
    """KEY=VALUE words -> dict; values are read as JSON (numbers, true/false) where they parse; a --weights
    value must be a number."""
    out: Dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise ConfigError(f"{option} takes key=value pairs, got {item!r}.")
        try:
            out[key] = value = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
        if option == "--weights":
            try:
                # float(True) is 1.0 and float([1]) a TypeError: only a number (or text that reads as one) is a weight.
                if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                    raise TypeError
                out[key] = float(value)
            except (TypeError, ValueError, OverflowError):
                raise ConfigError(f"--weights {key}={value!r}: a weight must be a number, e.g. {key}=0.5.") from None
    return out


# How a setting of each kind (its RunConfig annotation, a string) is read; other kinds are plain strings.
_OPTION_KINDS = {
    "bool": dict(action=argparse.BooleanOptionalAction), "int": dict(type=int), "Optional[int]": dict(type=int),
    "float": dict(type=float), "Tuple[int, ...]": dict(nargs="*", type=int),
    "Dict[str, float]": dict(nargs="+", metavar="KEY=VALUE"), "Dict[str, Any]": dict(nargs="+", metavar="KEY=VALUE"),
}


def add_recipe_options(parser: argparse.ArgumentParser, skip: tuple = ()) -> None:
    """``--recipe`` and an option for every RunConfig field but ``skip``, each None unless given."""
    parser.add_argument("--recipe", default="cifar100",
                        help=f"named recipe: {', '.join(recipes.names())} (default: cifar100)")
    for f in dataclasses.fields(recipes.RunConfig):
        if f.name not in skip:
            parser.add_argument("--" + f.name.replace("_", "-"), default=None, **_OPTION_KINDS.get(f.type, {}),
                                help=f.metadata["meaning"] + " (default: the recipe's)")


def _config_from_args(args: argparse.Namespace) -> recipes.RunConfig:
    return recipes.get(args.recipe, **changes_from_args(args))


def changes_from_args(args: argparse.Namespace) -> dict:
    """The RunConfig fields given on the command line (None: not given)."""
    changes = {}
    for f in dataclasses.fields(recipes.RunConfig):
        value = getattr(args, f.name, None)
        if value is not None:  # a Dict field's option takes KEY=VALUE words (_OPTION_KINDS)
            changes[f.name] = _key_values(value, "--" + f.name.replace("_", "-")) if f.type.startswith("Dict") else value
    return changes


def _cmd_train(args: argparse.Namespace) -> int:
    from . import runfolder, train
    from .distributed import is_main_process

    cfg = _config_from_args(args)
    model = args.model or cfg.teacher
    # The recipe's teacher goes where `cdlib distill` looks for it; any other model beside it.
    run_dir = runfolder.teacher_dir(cfg.run_dir) if model == cfg.teacher else Path(cfg.run_dir) / model
    result = train.fit(cfg.replace(student=model, method="student", run_dir=str(run_dir)))
    if is_main_process():  # under torchrun every process runs the command; one reports
        print(f"trained {model}: test top-1 {result.final['top1']:.2f}%, top-5 {result.final['top5']:.2f}%; "
              f"model saved to {result.model_path}")
    return 0


def _cmd_distill(args: argparse.Namespace) -> int:
    from . import train
    from .distributed import is_main_process

    cfg = _config_from_args(args)
    if args.seeds is not None:
        from . import seeds

        # The table, per_seed.csv and summary.csv are the report; seeds.run prints the table.
        seeds.run(cfg, seeds.parse_seeds(args.seeds), baseline=args.baseline)
        return 0
    results = train.run(cfg)
    if is_main_process():
        for method, result in results.items():
            print(f"{method}: test top-1 {result.final['top1']:.2f}%, top-5 {result.final['top5']:.2f}%; "
                  f"model saved to {result.model_path}")
    return 0


def _run_config_of(path: Path) -> tuple:
    """The config of the run that wrote ``path``: its run folder's config.json, else the
    one a training checkpoint carries; (None, None) for a file outside a run folder. A path that is
    not a file is refused first (a run folder with the file inside it to pass)."""
    from . import checkpoint
    from .runfolder import CHECKPOINT_FILE, CONFIG_FILE, MODEL_FILE

    if path.is_dir():
        inside = [path / name for name in (MODEL_FILE, CHECKPOINT_FILE) if (path / name).is_file()]
        raise ConfigError(f"{path} is a folder; pass the model file " + (
            f"inside it: cdlib evaluate {inside[0]}." if inside else
            f"(a {MODEL_FILE} or {CHECKPOINT_FILE} written by cdlib), e.g. cdlib evaluate runs/demo/kd/{MODEL_FILE}."))
    if not path.exists():
        raise ConfigError(f"checkpoint {path} does not exist; check the path (cdlib evaluate takes a "
                          f"{MODEL_FILE} or {CHECKPOINT_FILE} written by cdlib).")
    beside = path.parent / CONFIG_FILE
    if beside.is_file():
        try:
            saved = json.loads(beside.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{beside} (the settings of the run that wrote {path}) cannot be read ({exc}); "
                              "pass --recipe and the run's data options instead.") from None
        if not isinstance(saved, dict):
            raise ConfigError(f"{beside} holds a {type(saved).__name__}, not the settings of the run that wrote "
                              f"{path} (a JSON object of them); pass --recipe and the run's data options "
                              "instead, or restore the file.")
        return saved, beside
    saved = checkpoint.safe_load(path, "checkpoint") if path.is_file() else {}
    if saved.get("format") == checkpoint.TRAINING_FORMAT and isinstance(saved.get("config"), dict):
        return saved["config"], path
    return None, None


def _evaluation_config(args: argparse.Namespace) -> tuple:
    """What to evaluate on: the run's own settings (data set, options, split seed, image size, batch size)
    when the file comes from a run folder (a --recipe is then ignored), with any option given on the command
    line on top; else the recipe's. The file is checked first, before the defaults look for CIFAR-100."""
    saved, source = _run_config_of(Path(args.checkpoint))
    changes = changes_from_args(args)
    if saved is None:
        return recipes.get(args.recipe or "cifar100", **changes), None
    known = {f.name for f in dataclasses.fields(recipes.RunConfig)}
    fields = {k: v for k, v in saved.items() if k in known}
    if "lr_milestones" in fields:
        fields["lr_milestones"] = tuple(fields["lr_milestones"])
    # The run's own machinery does not matter here, and its teacher need not be found again.
    fields.update(teacher_checkpoint=None, resume=False)
    try:
        base = recipes.RunConfig(**fields)
        return base.replace(**changes), source
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"the settings in {source} do not make a valid configuration ({exc}); pass --recipe and "
                          "the run's data options instead.") from None


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .parts import evaluate_model_file

    cfg, source = _evaluation_config(args)
    metrics, _ = evaluate_model_file(args.checkpoint, cfg, args.model, channels_last=cfg.channels_last)
    report = {"checkpoint": args.checkpoint, "data": cfg.data, "data_options": cfg.data_options,
              "settings_from": str(source) if source else f"recipe {args.recipe or 'cifar100'}", **metrics}
    print(json.dumps(report, indent=2))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from . import data, models, schedules

    print("recipes:   " + ", ".join(recipes.names()))
    print("models:    " + ", ".join(models.names()))
    print("data sets: " + ", ".join(data.names()))
    print("schedules: " + ", ".join(schedules.names()))
    print("methods:   '+'-joined terms of " + ", ".join(terms.methods()))
    for term in terms.TERMS:
        print(f"  {term.name:<8} {term.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cdlib",
        description="Channel Distillation (CD + GKD + EDT): train teachers, distil students, evaluate checkpoints.",
    )
    parser.add_argument("--version", action="version", version=f"cdlib {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a model (a teacher) with cross-entropy")
    p.add_argument("--model", default=None,
                   help="model to train (default: the recipe's teacher, into <run-dir>/teacher; another model goes "
                        "into <run-dir>/<model>)")
    add_recipe_options(p, skip=("student", "method", "teacher_checkpoint", "teacher_pretrained"))
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("distill", help="distil a student from a teacher (trains the teacher first if needed)")
    add_recipe_options(p)
    p.add_argument("--seeds", default=None,
                   help="run every method once per seed, e.g. 0-4 or 0,2,5, into <run-dir>/<method>/seed<k> (a teacher "
                        "per seed), and compare: mean, 95%% t-interval, paired difference to --baseline")
    p.add_argument("--baseline", default="student",
                   help="with --seeds: the method the others are compared with, paired by seed (default: student)")
    p.set_defaults(func=_cmd_distill)
    p = sub.add_parser("evaluate", help="top-1 / top-5 accuracy and loss of a checkpoint on a test set")
    p.add_argument("checkpoint", help="a model.pt or checkpoint.pt written by cdlib")
    p.add_argument("--model", default=None, help="model name, if the file does not say")
    add_recipe_options(p)
    p.set_defaults(func=_cmd_evaluate, recipe=None)  # without --recipe, the run's own settings (_evaluation_config)
    # Commands of other packages (`cdlib grade`: cdlib_classroom; `cdlib estimate`, `cdlib measure`: cdlib_bench),
    # registered as entry points in group cdlib.commands.
    for command in entry_points(group="cdlib.commands"):
        command.load()(sub)
    p = sub.add_parser("list", help="list recipes, models, data sets and schedules")
    p.set_defaults(func=_cmd_list)
    return parser


# Options that take several words; a word after them that is not one of theirs is the positional argument.
_MULTI_WORD = {"--weights": "=", "--data-options": "=", "--lr-milestones": "int"}


def _positionals_first(argv: List[str]) -> List[str]:
    """`evaluate --data-options k=v CHECKPOINT`: argparse would give CHECKPOINT to --data-options; move it first."""
    if not argv or argv[0] != "evaluate":
        return argv
    out, moved, kind = [], [], None
    for word in argv[1:]:
        if word.startswith("-"):
            kind = _MULTI_WORD.get(word.split("=")[0])
        elif kind is not None and not (("=" in word) if kind == "=" else word.isdigit()):
            moved.append(word)
            kind = None
            continue
        out.append(word)
    return [argv[0], *moved, *out]


def main(argv: Optional[List[str]] = None) -> int:
    from . import interrupt

    args = build_parser().parse_args(_positionals_first(list(sys.argv[1:] if argv is None else argv)))
    if argv is None:  # the command itself: a SIGTERM outside training is a one-line stop too, not a silent kill
        interrupt.raise_on_stop_signals()
    try:
        return args.func(args)
    except (CDLibError, OSError) as exc:  # an OSError not foreseen where it happened: still the path and the fix
        print(f"cdlib: error: {exc if isinstance(exc, CDLibError) else from_os_error(exc, 'use')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        import signal

        name = "SIGTERM" if interrupt.last_signal() == signal.SIGTERM else "Ctrl-C"
        if argv is None:  # the command itself: a further Ctrl-C while Python exits would print a traceback
            for signum in interrupt.STOP_SIGNALS:
                signal.signal(signum, signal.SIG_IGN)
        # Only training saves a state to continue from; evaluate, estimate, measure and list have nothing to resume.
        advice = ("rerun the same command with --resume to continue" if args.command in ("train", "distill")
                  else "nothing was saved or changed; rerun the same command to start it again")
        print(f"cdlib: stopped by {name}; {advice}.", file=sys.stderr)
        return interrupt.exit_status()
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():  # under torchrun: leave cleanly, or torch warns at exit
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())

"""The ``cdlib estimate`` and ``cdlib measure`` sub-commands. cdlib's command line finds it through the entry-point group
``cdlib.commands`` (pyproject.toml) and calls :func:`add_parser` with its sub-parsers; cdlib never
imports the benchmark itself."""

from __future__ import annotations

import argparse

from cdlib import cli, recipes
from cdlib.errors import ConfigError

from . import estimate
from .timing import measured_report


def _gpus(args: argparse.Namespace) -> list:
    return [g.strip() for g in args.gpu.split(",") if g.strip()] or ["T4"]


def add_estimate_parser(sub) -> None:
    """Add ``estimate`` to the CLI's sub-commands (the ``cdlib.commands`` entry point)."""
    p = sub.add_parser("estimate", help="projected wall time of a recipe's teacher and students on a GPU, from counted "
                                        "FLOPs (`cdlib measure` times real steps here instead)")
    cli.add_recipe_options(p)
    p.add_argument("--gpu", default="T4", help="T4, L4, A100 or H100; several with commas, e.g. T4,H100 (default: T4)")
    p.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # its spelling before `cdlib measure`
    p.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=run_estimate)


def run_estimate(args: argparse.Namespace) -> int:
    """Print the FLOP-based projection on each ``--gpu``; 0 when done."""
    if args.measure or args.steps is not None:
        raise ConfigError("timing real steps is its own command now: run `cdlib measure` with the same options "
                          "(--recipe, --steps, --gpu ...).")
    cfg = recipes.get(args.recipe, **cli.changes_from_args(args))
    for gpu in _gpus(args):
        print(estimate.format_estimate(estimate.recipe_time(cfg, gpu), args.recipe))
    return 0


def add_measure_parser(sub) -> None:
    """Add ``measure`` to the CLI's sub-commands (the ``cdlib.commands`` entry point)."""
    p = sub.add_parser("measure", help="time real training steps of a recipe's teacher and students on this machine's "
                                       "--device (CPU or GPU) and project their wall time from them")
    cli.add_recipe_options(p)
    p.add_argument("--gpu", default="T4", help="T4, L4, A100 or H100, the FLOP-based estimates printed beside the "
                                               "measurement; several with commas, e.g. T4,H100 (default: T4)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps timed per teacher and method (default: 10 on a GPU, 3 on a CPU)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the measured projection (:func:`cdlib_bench.timing.measured_report`); 0 when done."""
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps must be at least 1 (steps timed per teacher and method), got {args.steps}.")
    cfg = recipes.get(args.recipe, **cli.changes_from_args(args))
    print(measured_report(cfg, args.recipe, args.steps, [estimate.recipe_time(cfg, gpu) for gpu in _gpus(args)]))
    return 0

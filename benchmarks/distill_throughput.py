#!/usr/bin/env python3
"""Images/s of a distillation step: cdlib ("ours") against the reference code's way.

Both configurations run in the same process, in alternating timed windows, on
the same models, batch and images; the result (throughput, step time, peak
memory, FLOPs, the FLOP-based projection of the paper's CIFAR-100 recipe) is
printed and written as JSON to benchmarks/results/. The logic lives in the
cdlib_bench package (beside cdlib in this repository; `pip install -e .`
installs both); see benchmarks/README.md.

Examples:
    # this CPU, small models
    python benchmarks/distill_throughput.py --teacher cifar_resnet18_w16 --student cifar_resnet10_w8 --batch-size 64
    # one GPU, the paper's pair (the defaults)
    python benchmarks/distill_throughput.py --device cuda
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cdlib_bench as bench

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(argv=None) -> argparse.Namespace:
    defaults = bench.BenchConfig()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default=defaults.teacher)
    ap.add_argument("--student", default=defaults.student)
    ap.add_argument("--batch-size", type=int, default=defaults.batch_size)
    ap.add_argument("--device", default=defaults.device, help="auto, cpu, cuda, cuda:N or mps")
    ap.add_argument("--data", choices=("synthetic", "cifar100"), default=defaults.data,
                    help="synthetic CIFAR-shaped images (default) or the real CIFAR-100 under --data-root")
    ap.add_argument("--data-root", default=defaults.data_root, help="folder holding cifar-100-python/")
    ap.add_argument("--dataset-size", type=int, default=defaults.dataset_size, help="synthetic images to make")
    ap.add_argument("--epoch", type=float, default=defaults.epoch,
                    help="EDT epoch whose loss weights are used (<= 60: CE and GKD weigh 0)")
    ap.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    ap.add_argument("--rounds", type=int, default=defaults.rounds)
    ap.add_argument("--steps", type=int, default=defaults.steps_per_round, help="timed steps per window")
    ap.add_argument("--settle-steps", type=int, default=defaults.settle_steps, help="untimed steps opening each window")
    ap.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default=defaults.amp, help="ours' autocast")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                    help="channels_last for ours (default: cdlib's choice, CUDA only)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the student and teacher in ours")
    ap.add_argument("--reference-workers", type=int, default=None, help="default: min(4, cpu count)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    ap.add_argument("--ablations", action="store_true",
                    help="also time ours' step with the PIL DataLoader and the reference step with DeviceLoader")
    ap.add_argument("--utilisation", type=float, default=defaults.assumed_utilisation,
                    help="share of dense peak assumed by the FLOP-based projection")
    ap.add_argument("--seed", type=int, default=defaults.seed)
    ap.add_argument("--output", type=Path, default=None,
                    help=f"JSON file (default: {RESULTS_DIR.name}/<device>-<date>-<teacher>-to-<student>-b<batch>.json)")
    ap.add_argument("--no-save", action="store_true", help="print only")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = bench.BenchConfig(
        teacher=args.teacher, student=args.student, batch_size=args.batch_size, device=args.device,
        data=args.data, data_root=args.data_root, dataset_size=args.dataset_size, epoch=args.epoch,
        warmup_steps=args.warmup_steps, rounds=args.rounds, steps_per_round=args.steps,
        settle_steps=args.settle_steps, amp=args.amp, channels_last=args.channels_last, compile=args.compile,
        reference_workers=args.reference_workers, threads=args.threads, measure_memory=not args.no_memory,
        ablations=args.ablations, assumed_utilisation=args.utilisation, seed=args.seed,
    )
    result = bench.run_benchmark(cfg)
    print(bench.format_projection(result["projection"]))
    if not args.no_save:
        path = bench.save_result(result, args.output or bench.default_result_path(result, RESULTS_DIR))
        print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

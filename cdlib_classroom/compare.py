"""Exercise 3's comparison: schedules trained with the same seeds, against a baseline, with the noise said."""

from __future__ import annotations

import math
import numbers
import statistics
from typing import Dict, Mapping, Optional, Sequence

__all__ = ["compare_schedules"]


def _top1(x) -> float:
    if isinstance(x, numbers.Number):
        return float(x)
    final = getattr(x, "final", None)
    if isinstance(final, Mapping) and "top1" in final:
        return float(final["top1"])
    raise TypeError(f"expected a test accuracy (%) or a cdlib.runfolder.RunResult, got {type(x).__name__}.")


def compare_schedules(results: Mapping[str, Sequence], baseline: str = "constant", n_test: Optional[int] = None,
                      verbose: bool = True) -> Dict[str, dict]:
    """Compare final test top-1 of schedules trained with the same seeds, against ``baseline``.

    ``results`` maps a schedule name to its runs, one per seed in the same seed
    order for every schedule (test accuracies in % or ``RunResult`` objects).
    The difference to the baseline is judged against two kinds of noise:

    * test-set noise: with ``n_test`` test images, an accuracy p is only known to
      about sqrt(p (1 - p) / n_test); for two models on the same images the
      difference is known to at most sqrt(2) times that;
    * training noise: with several seeds, the spread of the per-seed (paired)
      differences, as a standard error of their mean.

    A schedule "beats" the baseline when the mean difference exceeds twice the
    larger of the two; "is worse" when it is below minus that; otherwise the
    difference is "within noise". Prints a table and returns, per schedule,
    ``{"mean", "std", "diff", "noise", "verdict", "top1"}``. It reports; it never fails.
    """
    if baseline not in results:
        raise ValueError(f"no results for the baseline {baseline!r}; got {sorted(results)}.")
    acc = {name: [_top1(r) for r in runs] for name, runs in results.items()}
    k = len(acc[baseline])
    if any(len(v) != k for v in acc.values()):
        raise ValueError("every schedule needs one run per seed, in the same seed order.")
    out: Dict[str, dict] = {}
    lines = []
    width = max(len(n) for n in acc) + 2
    lines.append(f"{'schedule':<{width}}{'seeds':>6}{'test top-1 %':>16}   per seed")
    for name, v in acc.items():
        mean = statistics.fmean(v)
        std = statistics.stdev(v) if len(v) > 1 else float("nan")
        spread = f"{mean:.2f} ± {std:.2f}" if len(v) > 1 else f"{mean:.2f}"
        lines.append(f"{name:<{width}}{len(v):>6}{spread:>16}   " + ", ".join(f"{x:.2f}" for x in v))
        out[name] = {"top1": v, "mean": mean, "std": std}
    base_mean = out[baseline]["mean"]
    p = min(max(base_mean / 100, 0.0), 1.0)
    test_noise = 100 * math.sqrt(2 * p * (1 - p) / n_test) if n_test else float("nan")
    for name, v in acc.items():
        if name == baseline:
            continue
        diffs = [a - b for a, b in zip(v, acc[baseline])]
        diff = statistics.fmean(diffs)
        seed_noise = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
        noise = max(x for x in (test_noise, seed_noise, 0.0) if not math.isnan(x))
        if noise == 0.0:
            verdict = "unknown (no noise estimate: pass n_test, or run several seeds)"
        elif diff > 2 * noise:
            verdict = f"beats {baseline}"
        elif diff < -2 * noise:
            verdict = f"is worse than {baseline}"
        else:
            verdict = "within noise"
        out[name].update(diff=diff, noise=noise, verdict=verdict)
        images = f" (about {abs(diff) * n_test / 100:.0f} of {n_test} test images)" if n_test else ""
        lines.append("")
        lines.append(f"{name} - {baseline}: {diff:+.2f} points{images}, averaged over {len(diffs)} seed(s).")
        parts = []
        if n_test:
            parts.append(f"test-set noise ±{test_noise:.2f}")
        if len(diffs) > 1:
            parts.append(f"seed-to-seed noise ±{seed_noise:.2f} (standard error of the paired differences)")
        lines.append("noise: " + ", ".join(parts) + f" -> {name} {verdict}"
                     + (" (|difference| < 2 x noise)." if verdict == "within noise" else "."))
        if len(diffs) == 1:
            lines.append("With one seed the training noise is not measured at all: run several seeds before "
                         "claiming a win.")
    out[baseline].update(diff=0.0, noise=test_noise, verdict="baseline")
    if verbose:
        print("\n".join(lines))
    return out

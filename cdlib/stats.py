"""Statistics for comparing runs over seeds: mean, sd, Student-t intervals, paired differences.

The t distribution is scipy's (scipy comes with scikit-learn, a dependency).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Sequence

from .errors import ConfigError, is_whole

__all__ = ["t_cdf", "t_quantile", "Interval", "mean_interval", "paired_difference", "t_test_p", "holm",
           "minimum_detectable_effect"]


# Input checks: a wrong argument is one ConfigError sentence (a ValueError too), not a TypeError from
# deep inside the arithmetic.


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _floats(values, what: str = "values") -> list:
    """``values`` as a list of floats: a sequence of real numbers (NaN and infinity pass through)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ConfigError(f"{what} must be a list of numbers, e.g. each seed's accuracy, got {type(values).__name__}.")
    values = list(values)
    odd = [v for v in values if not _is_real(v)]
    if odd:
        raise ConfigError(f"{what} must be numbers, got {odd[0]!r} ({type(odd[0]).__name__}) among them.")
    try:
        return [float(v) for v in values]
    except OverflowError:
        raise ConfigError(f"{what} must be numbers a float can hold; one has {max(len(str(v)) for v in values)} "
                          "digits.") from None


def _check_probability(value, name: str) -> None:
    if not (_is_real(value) and 0.0 < value < 1.0):
        raise ConfigError(f"{name} must lie strictly between 0 and 1, got {value!r}.")


def _check_df(df) -> None:
    if not (_is_real(df) and 0 < df < math.inf):
        raise ConfigError(f"degrees of freedom must be a positive, finite number, got {df!r}.")


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    _check_df(df)
    if not _is_real(t):
        raise ConfigError(f"t must be a number, got {t!r}.")
    from scipy.stats import t as student_t

    return float(student_t.cdf(t, df))


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (e.g. p=0.975: the 95 % two-sided value)."""
    _check_probability(p, "p")
    _check_df(df)
    from scipy.stats import t as student_t

    return float(student_t.ppf(p, df))


@dataclass(frozen=True)
class Interval:
    """A sample's mean, standard deviation (n - 1 in the denominator) and t-interval for the mean."""

    n: int
    mean: float
    sd: float
    low: float
    high: float
    level: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies wholly above or below 0 (NaN bounds: False)."""
        return self.low > 0 or self.high < 0


def mean_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """The mean of ``values`` with its two-sided ``level`` t-interval (NaN bounds for fewer than 2 values)."""
    xs = _floats(values)
    _check_probability(level, "level")
    n = len(xs)
    if n == 0:
        raise ConfigError("no values to summarise; pass at least one number (e.g. each seed's accuracy).")
    mean = math.fsum(xs) / n
    if n < 2:
        return Interval(n, mean, math.nan, math.nan, math.nan, level)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    return Interval(n, mean, sd, mean - half, mean + half, level)


def paired_difference(values: Sequence[float], baseline: Sequence[float], level: float = 0.95) -> Interval:
    """The mean of ``values[i] - baseline[i]`` (pairs, e.g. by seed) with its t-interval."""
    values, baseline = _floats(values), _floats(baseline, "baseline values")
    if len(values) != len(baseline):
        raise ConfigError(f"paired values need equal lengths (one pair per seed), got {len(values)} and "
                          f"{len(baseline)}.")
    return mean_interval([a - b for a, b in zip(values, baseline)], level)


def t_test_p(interval: Interval) -> float:
    """Two-sided p of the one-sample t-test that the mean of ``interval``'s sample is 0
    (for a :func:`paired_difference`: the paired t-test). NaN for fewer than 2 values."""
    if not isinstance(interval, Interval):
        raise ConfigError(f"t_test_p takes an Interval (from mean_interval or paired_difference), "
                          f"got {type(interval).__name__}.")
    if interval.n < 2 or not math.isfinite(interval.sd):
        return math.nan
    if interval.sd == 0:
        return 1.0 if interval.mean == 0 else 0.0
    t = interval.mean / (interval.sd / math.sqrt(interval.n))
    return min(1.0, 2.0 * (1.0 - t_cdf(abs(t), interval.n - 1)))


def holm(p_values: Sequence[float]) -> list:
    """Holm's step-down adjustment of a family of p-values (same order as given): the smallest p is
    multiplied by m, the next by m - 1, ..., each kept at least as large as the one before, at most 1.
    Rejecting where the adjusted p < alpha keeps the chance of any false "resolved" in the family <= alpha."""
    ps = _floats(p_values, "p-values")
    outside = [p for p in ps if not (0.0 <= p <= 1.0 or math.isnan(p))]  # NaN: t_test_p's "too few values"
    if outside:
        raise ConfigError(f"p-values lie between 0 and 1 (or are NaN), got {outside[0]!r}.")
    m = len(ps)
    adjusted = [math.nan] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda k: ps[k])):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def minimum_detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference a paired t-test on ``n`` pairs with difference sd ``sd`` detects
    with probability ``power`` at two-sided level ``alpha``: (t_{1-alpha/2} + t_{power}) * sd / sqrt(n),
    both quantiles with n - 1 degrees of freedom (the usual approximation to the noncentral t)."""
    _check_probability(alpha, "alpha")
    _check_probability(power, "power")
    if not is_whole(n) or not _is_real(sd):
        raise ConfigError(f"n must be a whole number of pairs and sd a number, got n={n!r}, sd={sd!r}.")
    if n < 2 or not math.isfinite(sd):
        return math.nan
    return (t_quantile(1.0 - alpha / 2.0, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)

"""cdlib.stats: the t quantile against published table values, intervals worked by hand."""

from __future__ import annotations

import math

import pytest

from cdlib import stats

# Two-sided 95 % (p = 0.975) and 99 % (p = 0.995) critical values of Student's t, as printed in
# standard tables (e.g. NIST/SEMATECH e-Handbook of Statistical Methods, section 1.3.6.7.2).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042, 60: 2.000, 100: 1.984}
T_995 = {1: 63.657, 2: 9.925, 4: 4.604, 5: 4.032, 10: 3.169, 30: 2.750}


@pytest.mark.parametrize("df", sorted(T_975))
def test_t_quantile_975_matches_table(df):
    assert stats.t_quantile(0.975, df) == pytest.approx(T_975[df], abs=6e-4)


@pytest.mark.parametrize("df", sorted(T_995))
def test_t_quantile_995_matches_table(df):
    assert stats.t_quantile(0.995, df) == pytest.approx(T_995[df], abs=6e-4)


def test_t_closed_forms():
    # df = 1 is the Cauchy distribution: quantile tan(pi (p - 1/2)); df = 2 has
    # quantile (2p - 1) sqrt(2 / (4 p (1 - p))).
    for p in (0.6, 0.9, 0.975, 0.999):
        assert stats.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
        assert stats.t_quantile(p, 2) == pytest.approx((2 * p - 1) * math.sqrt(2 / (4 * p * (1 - p))), rel=1e-9)
    assert stats.t_cdf(0.0, 7) == pytest.approx(0.5)
    assert stats.t_quantile(0.025, 4) == pytest.approx(-stats.t_quantile(0.975, 4))
    # Many degrees of freedom: the normal's 1.959964.
    assert stats.t_quantile(0.975, 100000) == pytest.approx(1.959964, abs=1e-4)
    with pytest.raises(ValueError):
        stats.t_quantile(1.0, 3)


def test_mean_interval_of_three_seeds_by_hand():
    # 70, 72, 74: mean 72; sd sqrt((4 + 0 + 4) / 2) = 2; se 2 / sqrt(3) = 1.1547;
    # t(0.975, 2) = 4.3027, half-width 4.9683 -> [67.032, 76.968].
    iv = stats.mean_interval([70, 72, 74])
    assert (iv.n, iv.mean, iv.sd) == (3, 72.0, pytest.approx(2.0))
    assert iv.low == pytest.approx(67.032, abs=1e-3) and iv.high == pytest.approx(76.968, abs=1e-3)
    assert iv.excludes_zero


def test_paired_difference_by_hand():
    # Method 72, 75, 74 vs baseline 70, 72, 74 on seeds 0..2: differences 2, 3, 0; mean 5/3;
    # sd sqrt(((1/3)^2 + (4/3)^2 + (5/3)^2) / 2) = sqrt(7/3) = 1.5275; se 0.8819;
    # half-width 4.3027 * 0.8819 = 3.7946 -> [-2.128, 5.461]: contains 0.
    iv = stats.paired_difference([72, 75, 74], [70, 72, 74])
    assert iv.mean == pytest.approx(5 / 3)
    assert iv.sd == pytest.approx(math.sqrt(7 / 3))
    assert iv.low == pytest.approx(-2.128, abs=1e-3) and iv.high == pytest.approx(5.461, abs=1e-3)
    assert not iv.excludes_zero
    # Unpaired, the same numbers give a wider interval than paired would for correlated runs;
    # here a constant shift of +1 on every seed has sd 0: an interval of width 0 that excludes 0.
    shifted = stats.paired_difference([71, 73, 75], [70, 72, 74])
    assert (shifted.mean, shifted.low, shifted.high) == (pytest.approx(1.0),) * 3 and shifted.excludes_zero


def test_one_value_has_no_interval_and_lengths_must_match():
    iv = stats.mean_interval([80.0])
    assert iv.mean == 80.0 and math.isnan(iv.sd) and math.isnan(iv.low) and not iv.excludes_zero
    with pytest.raises(ValueError):
        stats.paired_difference([1, 2], [1])
    with pytest.raises(ValueError):
        stats.mean_interval([])


# ------------------------------------------------------------------ tests and the family guard


def test_paired_t_test_p_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    a = [71.2, 73.5, 70.1, 74.0, 72.2, 69.8, 73.1, 72.9, 70.5, 71.7]
    b = [70.0, 72.9, 70.4, 72.1, 71.0, 69.9, 71.5, 72.0, 70.9, 70.3]
    ours = stats.t_test_p(stats.paired_difference(a, b))
    assert ours == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue, rel=1e-9)
    assert stats.t_test_p(stats.paired_difference([1.0, 2.0], [1.0, 2.0])) == 1.0  # no difference at all
    assert math.isnan(stats.t_test_p(stats.mean_interval([3.0])))


def test_holm_by_hand_and_against_statsmodels_definition():
    # m = 4: sorted 0.01, 0.02, 0.03, 0.2 -> 4*0.01, max(.04, 3*.02), max(.06, 2*.03), max(.06, .2)
    assert stats.holm([0.03, 0.01, 0.2, 0.02]) == pytest.approx([0.06, 0.04, 0.2, 0.06])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert stats.holm([]) == []
    # Monotone in the sorted order, never below the raw p.
    ps = [0.001, 0.04, 0.012, 0.3, 0.049, 0.0004, 0.2]
    adjusted = stats.holm(ps)
    order = sorted(range(len(ps)), key=ps.__getitem__)
    assert all(adjusted[i] >= ps[i] for i in range(len(ps)))
    assert all(adjusted[order[k]] <= adjusted[order[k + 1]] for k in range(len(ps) - 1))


def test_minimum_detectable_effect_against_a_simulation():
    """At the MDE, a paired t-test at alpha 0.05 rejects in about 80 % of simulated studies."""
    import random

    sd, n = 1.5, 10
    mde = stats.minimum_detectable_effect(sd, n)
    assert mde == pytest.approx((2.2621571628 + 0.8834038) * sd / math.sqrt(n), rel=1e-6)
    rng = random.Random(0)
    trials = 1500
    hits = sum(stats.t_test_p(stats.mean_interval([rng.gauss(mde, sd) for _ in range(n)])) < 0.05
               for _ in range(trials))
    assert 0.74 <= hits / trials <= 0.84  # the noncentral-t power at the MDE is ~0.79 for n = 10 (4 sd band)

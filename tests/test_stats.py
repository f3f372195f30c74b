"""nas.stats against textbook values and independent computations (never against its own output)."""
import math

import numpy as np
import pytest
from scipy.stats import kendalltau, spearmanr

from nas.errors import NasError
from nas.stats import bootstrap_band, difference, icc1, paired_difference, rank_correlation

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges; their ICC(1,1) is .17 (BMS 11.24, WMS 6.26).
SHROUT_FLEISS = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]


def test_icc1_shrout_fleiss_table():
    r = icc1(SHROUT_FLEISS)
    assert (r.n, r.k, r.df1, r.df2) == (6, 4, 5, 18)
    assert r.f == pytest.approx(11.24 / 6.26, rel=2e-3)          # the paper's mean squares, rounded there
    assert r.icc == pytest.approx((11.24 - 6.26) / (11.24 + 3 * 6.26), abs=1e-3)
    assert round(r.icc, 2) == 0.17
    assert r.p == pytest.approx(0.1648, abs=1e-3)
    assert r.ci.low == pytest.approx(-0.133, abs=2e-3) and r.ci.high == pytest.approx(0.723, abs=2e-3)
    assert r.icc_mean == pytest.approx(1 - 6.26 / 11.24, abs=2e-3)  # ICC(1,k) = (BMS - WMS) / BMS
    assert not r.rankable


def test_icc1_lower_bound_above_zero_exactly_when_f_test_rejects():
    """The CI's lower end is > 0 exactly when the one-sided F-test rejects at alpha/2 (one property, two paths)."""
    rng = np.random.default_rng(0)
    for spread in (0.0, 0.3, 1.0, 3.0):
        m = rng.normal(size=(8, 3)) + spread * rng.normal(size=(8, 1))
        r = icc1(m)
        assert (r.ci.low > 0) == (r.p < 0.025)
        assert r.ci.low <= r.icc <= r.ci.high


def test_icc1_perfect_and_refusals():
    r = icc1([[1, 1, 1], [2, 2, 2], [3, 3, 3]])
    assert r.icc == 1 and r.p == 0 and r.rankable
    with pytest.raises(NasError, match="2 subjects x >= 2"):
        icc1([[1, 2, 3]])
    with pytest.raises(NasError, match="finite"):
        icc1([[1, math.nan], [2, 3]])


def test_rank_correlation_values_and_exact_p():
    x, y = [1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5]
    r = rank_correlation(x, y)
    assert r.tau.value == pytest.approx(0.6)                        # 12 concordant, 3 discordant of 15 pairs
    assert r.rho.value == pytest.approx(1 - 6 * 6 / (6 * 35))       # 1 - 6 sum d^2 / (n (n^2 - 1)), sum d^2 = 6
    # 6! = 720 pairings <= the resamples: the permutation test is exact, equal to Kendall's exact null
    assert r.tau.p == pytest.approx(kendalltau(x, y, method="exact").pvalue, abs=1e-12)
    assert r.tau.ci.low <= r.tau.value <= r.tau.ci.high <= 1


def test_rank_correlation_scipy_examples_with_ties():
    x, y = [12, 2, 1, 12, 2], [1, 4, 7, 1, 0]
    r = rank_correlation(x, y)
    assert r.tau.value == pytest.approx(-0.47140452079103173)        # scipy.stats.kendalltau's documented example
    assert r.rho.value == pytest.approx(spearmanr(x, y).statistic)


def test_rank_correlation_ci_narrows_with_more_subnets():
    rng = np.random.default_rng(1)
    widths = []
    for n in (8, 60):
        truth = rng.normal(size=n)
        r = rank_correlation(truth, truth + 0.5 * rng.normal(size=n), resamples=999)
        widths.append(r.tau.ci.high - r.tau.ci.low)
        assert r.tau.ci.covers(r.tau.value)
    assert widths[1] < widths[0] / 2


def test_rank_correlation_constant_list_is_nan_not_an_error():
    r = rank_correlation([1, 1, 1, 1], [1, 2, 3, 4])
    assert math.isnan(r.tau.value) and math.isnan(r.tau.ci.low)
    with pytest.raises(NasError, match="equal length >= 3"):
        rank_correlation([1, 2], [1, 2])


def test_paired_top1_mcnemar_hand_computed():
    # 10 images only a gets right, 2 only b, 88 both: McNemar exact p = 2 P(Bin(12, 1/2) <= 2) = 2 * 79 / 4096
    a = np.array([1] * 10 + [0] * 2 + [1] * 88)
    b = np.array([0] * 10 + [1] * 2 + [1] * 88)
    d = paired_difference(a, b, "top1")
    assert d.estimate == pytest.approx(0.08)
    assert d.p == pytest.approx(2 * 79 / 4096)
    assert d.n == 100
    assert not d.within_noise and d.ci.low > 0


def test_paired_difference_ci_matches_normal_theory_on_many_images():
    rng = np.random.default_rng(2)
    a = rng.normal(0.30, 0.2, size=4000)
    b = a + rng.normal(0.01, 0.05, size=4000)
    d = paired_difference(a, b, "loss", resamples=1999)
    se = np.std(a - b, ddof=1) / math.sqrt(4000)
    assert d.ci.low == pytest.approx(np.mean(a - b) - 1.96 * se, abs=0.2 * se)
    assert d.ci.high == pytest.approx(np.mean(a - b) + 1.96 * se, abs=0.2 * se)
    assert d.p < 0.01 and not d.within_noise
    same = paired_difference(a, a, "loss")
    assert same.estimate == 0 and same.within_noise and same.p == 1


def test_paired_difference_within_noise_and_refusals():
    rng = np.random.default_rng(3)
    a = (rng.random(1000) < 0.93).astype(float)
    b = np.where(rng.random(1000) < 0.05, 1 - a, a)               # 5% of the images flipped at random
    d = paired_difference(a, b, "top1")
    assert d.within_noise == d.ci.covers(0)
    assert "within noise" in d.describe(100, " points") or "beyond noise" in d.describe(100, " points")
    with pytest.raises(NasError, match="0 or 1"):
        paired_difference([0.5, 1, 0], [1, 0, 0], "top1")
    with pytest.raises(NasError, match="same images"):
        paired_difference([1, 0], [1, 0, 1], "loss")
    with pytest.raises(NasError, match="'top1' or 'loss'"):
        paired_difference([1, 0], [1, 0], "accuracy")


def test_difference_of_independent_groups_exact_permutation():
    d = difference([1, 2, 3], [10, 11, 12])
    assert d.estimate == -9
    assert d.p == pytest.approx(2 / 20)            # C(6, 3) = 20 labelings; only the two extremes are as far apart
    assert d.ci.high < 0 and d.within_noise        # p 0.1: 3 runs a side cannot show a difference at 5%
    far = difference([1, 2, 3, 4, 5], [10, 11, 12, 13, 14])
    assert far.p == pytest.approx(2 / 252) and not far.within_noise
    m = difference([1, 2, 3, 100], [1, 2, 3, 4], statistic="median")
    assert m.estimate == 0
    # two runs a side: the percentile bootstrap CI excludes 0, but only 6 labelings exist and the exact p is
    # 2/6; that is no evidence, and within_noise says so
    few = difference([1.0, 1.1], [2.0, 2.1])
    assert few.ci.high < 0 and few.p == pytest.approx(1 / 3) and few.within_noise


def test_bootstrap_band_contains_the_mean_and_narrows_with_runs():
    rng = np.random.default_rng(4)
    curves = np.cumsum(rng.normal(size=(10, 5)), axis=1)
    mean, lo, hi = bootstrap_band(curves, resamples=999)
    assert np.allclose(mean, curves.mean(axis=0))
    assert np.all(lo <= mean) and np.all(mean <= hi)


def test_batched_rank_statistics_equal_scipy_with_ties():
    """The batched Kendall tau-b and Spearman rho behind the bootstrap equal scipy's, ties included."""
    from nas.stats import _kendall, _spearman

    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 4, size=(50, 9)), rng.integers(0, 5, size=(50, 9))  # many ties
    tau, rho = _kendall(a, b), _spearman(a, b)
    for i in range(50):
        want_tau, want_rho = kendalltau(a[i], b[i]).statistic, spearmanr(a[i], b[i]).statistic
        assert tau[i] == pytest.approx(want_tau, nan_ok=True) and rho[i] == pytest.approx(want_rho, nan_ok=True)

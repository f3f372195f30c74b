"""The statistics behind every comparison ``nas`` prints: intervals, tests and reliabilities, on ``scipy.stats``.

Four questions, one function each:

- ``rank_correlation(a, b)``: do two score lists order the same subnets alike? Kendall tau-b and Spearman rho,
  each with a bootstrap CI over the subnets and a permutation p-value (exact when n! is small).
- ``icc1(scores)``: does training a subnet alone give it a reproducible score at all? ICC(1), the one-way
  random-effects intraclass correlation of one training (Shrout & Fleiss 1979, "ICC(1,1)"), from k seeds per
  subnet, with its F-test and exact F-based CI; ``icc_mean`` is the reliability of the mean of the k seeds.
- ``paired_difference(a, b)``: do two models differ on the same images? The mean per-image difference (top-1 or
  loss) with a paired bootstrap CI, and McNemar's exact test (top-1) or a sign-flip permutation test (loss).
- ``difference(x, y)``: do two sets of independent runs (seeds of two searchers) differ? The difference of
  means with a bootstrap CI (each group resampled on its own) and a permutation p-value.

Every difference has ``within_noise`` (its CI covers 0, or its p is not below 0.05: both must agree to call a
difference real) and ``describe()`` (one line for tables).

How to read them (docs/benchmarks.md has worked examples):

- ICC(1) near 0 (or negative) with a large p: the k trainings of one subnet disagree as much as different
  subnets do, so no ranking of those subnets (by a supernet, by size, by anything) can be measured against
  standalone training; a tau measured there is noise.
- A predictor that knew each subnet's true quality would correlate with the mean of k seeds at about
  ``sqrt(icc_mean)`` (Pearson scale; the classical attenuation bound): that, not the tau between two seeds, is
  the most any ranking can reach against the seed mean.

Decisions where the papers are silent:

- 95% intervals, 9,999 resamples, percentile bootstrap, seeded (the same data give the same interval). The
  percentile method rather than BCa: BCa's jackknife fails on rank statistics of a handful of subnets.
- Bootstrap resamples in which a rank correlation is undefined (one list constant, e.g. all draws of one
  subnet) are left out of its interval; if more than a tenth are, the interval is NaN (too few subnets).
- Permutation p-values are two-sided. For rank correlations the pairing of the two lists is permuted; for the
  loss the signs of the per-image differences are flipped; for independent runs the group labels are
  permuted. scipy runs them exactly when the number of distinct permutations is at most the resamples.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from nas.errors import NasError

CONFIDENCE = 0.95
RESAMPLES = 9_999
MAX_UNDEFINED = 0.1   # fraction of bootstrap resamples that may be undefined before an interval is NaN


class Interval(NamedTuple):
    low: float
    high: float

    def covers(self, value: float = 0.0) -> bool:
        return self.low <= value <= self.high

    def __str__(self) -> str:
        return f"[{self.low:.3g}, {self.high:.3g}]"


def _interval(x: float, y: float) -> Interval:
    return Interval(float(x), float(y))


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _kendall(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Kendall tau-b along the last axis, for a whole batch of resamples at once (scipy's ``kendalltau`` takes
    one pair of lists per call: 10,000 bootstrap resamples cost seconds; tests check this against it).
    tau-b = (concordant - discordant) / sqrt((pairs - ties in a) (pairs - ties in b)); NaN when a list is
    constant."""
    a, b = np.moveaxis(np.asarray(a, dtype=float), axis, -1), np.moveaxis(np.asarray(b, dtype=float), axis, -1)
    n = a.shape[-1]
    iu = np.triu_indices(n, 1)
    da = np.sign(a[..., :, None] - a[..., None, :])[..., iu[0], iu[1]]  # (..., pairs)
    db = np.sign(b[..., :, None] - b[..., None, :])[..., iu[0], iu[1]]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (da * db).sum(-1) / np.sqrt((da != 0).sum(-1) * (db != 0).sum(-1))


def _spearman(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman rho along the last axis for a batch (the Pearson correlation of average ranks,
    ``scipy.stats.rankdata``); NaN when a list is constant."""
    from scipy.stats import rankdata

    ra = rankdata(np.moveaxis(np.asarray(a, dtype=float), axis, -1), axis=-1)
    rb = rankdata(np.moveaxis(np.asarray(b, dtype=float), axis, -1), axis=-1)
    ra, rb = ra - ra.mean(-1, keepdims=True), rb - rb.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ra * rb).sum(-1) / np.sqrt((ra ** 2).sum(-1) * (rb ** 2).sum(-1))


@dataclass(frozen=True)
class Correlation:
    """One rank correlation with its bootstrap CI over the paired items and its permutation p-value."""
    value: float
    ci: Interval
    p: float

    def describe(self) -> str:
        return f"{_num(self.value)} {_ci(self.ci)}, p {_p(self.p)}"

    def to_json(self) -> dict:
        return {"value": _j(self.value), "ci": [_j(self.ci.low), _j(self.ci.high)], "p": _j(self.p)}


@dataclass(frozen=True)
class RankCorrelation:
    """Kendall tau-b and Spearman rho of n paired scores."""
    n: int
    tau: Correlation
    rho: Correlation

    def describe(self) -> str:
        return f"tau {self.tau.describe()}; rho {self.rho.describe()}"

    def to_json(self) -> dict:
        return {"n": self.n, "tau": self.tau.to_json(), "rho": self.rho.to_json()}


def rank_correlation(a: Sequence[float], b: Sequence[float], *, confidence: float = CONFIDENCE,
                     resamples: int = RESAMPLES, seed: int = 0) -> RankCorrelation:
    """Kendall tau-b and Spearman rho (ties as scipy counts them) of the paired values ``a[i]``, ``b[i]``, each
    with a percentile bootstrap CI over the pairs and a two-sided permutation p-value."""
    from scipy.stats import bootstrap, permutation_test

    x, y = _vector(a, "a"), _vector(b, "b")
    if len(x) != len(y) or len(x) < 3:
        raise NasError(f"rank correlation: expected two lists of equal length >= 3, got {len(x)} and {len(y)}")
    out = []
    for fn in (_kendall, _spearman):
        value = float(fn(x, y))
        if math.isnan(value):  # one list constant: no order to compare
            out.append(Correlation(math.nan, Interval(math.nan, math.nan), math.nan))
            continue
        with warnings.catch_warnings():  # scipy warns of the undefined resamples that _percentile leaves out
            warnings.simplefilter("ignore")
            boot = bootstrap((x, y), fn, paired=True, vectorized=True, method="percentile",
                             n_resamples=resamples, confidence_level=confidence, rng=_rng(seed))
            perm = permutation_test((x,), lambda u, axis=-1: fn(u, y, axis=axis), permutation_type="pairings",
                                    vectorized=True, n_resamples=resamples, rng=_rng(seed))
        out.append(Correlation(value, _percentile(boot.bootstrap_distribution, confidence), float(perm.pvalue)))
    return RankCorrelation(len(x), *out)


@dataclass(frozen=True)
class ICC:
    """ICC(1) of n subjects (subnets) measured k times (seeds) each, with its F-test and CI."""
    n: int
    k: int
    icc: float            # reliability of one measurement: ICC(1), Shrout & Fleiss's ICC(1,1)
    ci: Interval          # exact F-based CI of icc
    f: float              # F = MSB / MSW
    df1: int              # n - 1
    df2: int              # n (k - 1)
    p: float              # P(F' >= f) under "no differences between subjects"
    icc_mean: float       # reliability of the mean of the k measurements: ICC(1,k) = 1 - 1 / F
    sd_within: float      # sqrt(MSW): the spread of one subject's measurements (seed-to-seed sd)
    sd_between: float     # sd of the subjects' means

    @property
    def rankable(self) -> bool:
        """Whether the subjects differ beyond their measurement noise at the 1% level."""
        return self.p < 0.01

    def describe(self) -> str:
        return (f"ICC(1) {_num(self.icc)} {_ci(self.ci)}, F({self.df1}, {self.df2}) = {self.f:.3g}, p {_p(self.p)}; "
                f"seed sd {self.sd_within:.3g}, sd of subnet means {self.sd_between:.3g}")

    def to_json(self) -> dict:
        return {"n": self.n, "k": self.k, "icc": _j(self.icc), "icc_ci": [_j(self.ci.low), _j(self.ci.high)],
                "f": _j(self.f), "df1": self.df1, "df2": self.df2, "p": _j(self.p), "icc_mean": _j(self.icc_mean),
                "sd_within": _j(self.sd_within), "sd_between": _j(self.sd_between)}


def icc1(scores: Sequence[Sequence[float]], *, confidence: float = CONFIDENCE) -> ICC:
    """ICC(1) of ``scores[i][j]``, subject i measured the j-th time (n >= 2 subjects, k >= 2 measurements each).

    One-way random effects: ``(MSB - MSW) / (MSB + (k - 1) MSW)`` with MSB, MSW the between- and within-subject
    mean squares; ``F = MSB / MSW`` on (n - 1, n(k - 1)) degrees of freedom tests "the subjects do not differ";
    the CI is the exact one from the F distribution (Shrout & Fleiss 1979, Table 4)."""
    from scipy.stats import f as fdist

    m = np.asarray(scores, dtype=float)
    if m.ndim != 2 or m.shape[0] < 2 or m.shape[1] < 2:
        raise NasError(f"ICC: expected scores of >= 2 subjects x >= 2 measurements, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise NasError("ICC: every score must be a finite number")
    n, k = m.shape
    means = m.mean(axis=1)
    msb = k * ((means - m.mean()) ** 2).sum() / (n - 1)
    msw = ((m - means[:, None]) ** 2).sum() / (n * (k - 1))
    df1, df2 = n - 1, n * (k - 1)
    if msw == 0:
        f = math.inf if msb > 0 else math.nan
    else:
        f = msb / msw
    icc = (msb - msw) / (msb + (k - 1) * msw) if msb + (k - 1) * msw > 0 else math.nan
    p = float(fdist.sf(f, df1, df2)) if math.isfinite(f) else (0.0 if f == math.inf else math.nan)
    alpha = 1 - confidence
    if math.isfinite(f) and f > 0:
        fl = f / fdist.ppf(1 - alpha / 2, df1, df2)
        fu = f * fdist.ppf(1 - alpha / 2, df2, df1)
        ci = _interval((fl - 1) / (fl + k - 1), (fu - 1) / (fu + k - 1))
    else:
        ci = Interval(math.nan, math.nan)
    icc_mean = 1 - 1 / f if math.isfinite(f) and f > 0 else (1.0 if f == math.inf else math.nan)
    return ICC(n, k, float(icc), ci, float(f), df1, df2, p, float(icc_mean), float(math.sqrt(msw)),
               float(means.std(ddof=1)))


@dataclass(frozen=True)
class Difference:
    """An estimated difference (a minus b) with its CI and a two-sided p-value."""
    estimate: float
    ci: Interval
    p: float
    n: int | tuple[int, int]   # images (paired) or runs per group (independent)
    method: str

    @property
    def within_noise(self) -> bool:
        """No evidence of a difference either way: the CI covers 0, or the test's p is at least 1 - CONFIDENCE.
        Both must agree before a difference is called real: with a handful of runs per group a percentile
        bootstrap CI is too narrow (two seeds a side can exclude 0 at p 0.33), and the exact test is not."""
        return self.ci.covers(0.0) or math.isnan(self.ci.low) or not self.p < 1 - CONFIDENCE

    def describe(self, scale: float = 1.0, unit: str = "") -> str:
        """``+0.4 [-1.2, 2.0] points, p 0.62: within noise`` with values times ``scale``."""
        e, lo, hi = self.estimate * scale, self.ci.low * scale, self.ci.high * scale
        verdict = "within noise" if self.within_noise else "beyond noise"
        return f"{e:+.3g} [{lo:+.3g}, {hi:+.3g}]{unit}, p {_p(self.p)}: {verdict}"

    def to_json(self) -> dict:
        return {"difference": _j(self.estimate), "ci": [_j(self.ci.low), _j(self.ci.high)], "p": _j(self.p),
                "n": list(self.n) if isinstance(self.n, tuple) else self.n, "method": self.method,
                "within_noise": self.within_noise}


def paired_difference(a: Sequence[float], b: Sequence[float], kind: str, *, confidence: float = CONFIDENCE,
                      resamples: int = RESAMPLES, seed: int = 0) -> Difference:
    """Mean of ``a[i] - b[i]`` over the same images: ``kind`` ``"top1"`` (a, b per-image correctness, 0/1; the
    difference of the two top-1s, McNemar's exact test) or ``"loss"`` (per-image losses; a sign-flip
    permutation test). The CI is a paired percentile bootstrap over the images."""
    from scipy.stats import binomtest, bootstrap, permutation_test

    if kind not in ("top1", "loss"):
        raise NasError(f"paired difference: kind must be 'top1' or 'loss', got {kind!r}")
    x, y = _vector(a, "a"), _vector(b, "b")
    if len(x) != len(y) or len(x) < 2:
        raise NasError(f"paired difference: expected per-image outcomes of the same images (equal length >= 2), "
                       f"got {len(x)} and {len(y)}")
    d = x - y
    estimate = float(d.mean())
    if np.all(d == d[0]):  # identical predictions (or a constant shift): no spread to resample
        ci, p = _interval(estimate, estimate), (1.0 if estimate == 0 else 0.0)
    else:
        boot = bootstrap((d,), np.mean, vectorized=True, method="percentile", n_resamples=resamples,
                         confidence_level=confidence, rng=_rng(seed))
        ci = _interval(boot.confidence_interval.low, boot.confidence_interval.high)
        if kind == "top1":
            if not np.isin(x, (0, 1)).all() or not np.isin(y, (0, 1)).all():
                raise NasError("paired difference: top-1 outcomes must be 0 or 1 per image")
            only_a, only_b = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
            p = float(binomtest(only_a, only_a + only_b, 0.5).pvalue) if only_a + only_b else 1.0
        else:
            perm = permutation_test((d,), np.mean, permutation_type="samples", vectorized=True,
                                    n_resamples=resamples, rng=_rng(seed))
            p = float(perm.pvalue)
    method = ("paired bootstrap CI, McNemar exact p" if kind == "top1"
              else "paired bootstrap CI, sign-flip permutation p")
    return Difference(estimate, ci, p, len(d), method)


def difference(a: Sequence[float], b: Sequence[float], *, statistic: str = "mean", confidence: float = CONFIDENCE,
               resamples: int = RESAMPLES, seed: int = 0) -> Difference:
    """``statistic(a) - statistic(b)`` of two independent samples (e.g. one result per seed of two searchers),
    ``statistic`` ``"mean"`` or ``"median"``, with a percentile bootstrap CI (each sample resampled on its own)
    and a two-sided permutation p-value (group labels permuted)."""
    from scipy.stats import bootstrap, permutation_test

    fns = {"mean": np.mean, "median": np.median}
    if statistic not in fns:
        raise NasError(f"difference: statistic must be one of {sorted(fns)}, got {statistic!r}")
    fn = fns[statistic]
    x, y = _vector(a, "a"), _vector(b, "b")
    if len(x) < 2 or len(y) < 2:
        raise NasError(f"difference: expected at least 2 values per group, got {len(x)} and {len(y)}")

    def stat(u: np.ndarray, v: np.ndarray, axis: int = -1) -> np.ndarray:
        return fn(u, axis=axis) - fn(v, axis=axis)

    estimate = float(stat(x, y))
    if np.all(np.concatenate([x, y]) == x[0]):
        return Difference(estimate, _interval(0.0, 0.0), 1.0, (len(x), len(y)), f"{statistic}s, all values equal")
    boot = bootstrap((x, y), stat, vectorized=True, method="percentile", n_resamples=resamples,
                     confidence_level=confidence, rng=_rng(seed))
    perm = permutation_test((x, y), stat, permutation_type="independent", vectorized=True, n_resamples=resamples,
                            rng=_rng(seed))
    return Difference(estimate, _interval(boot.confidence_interval.low, boot.confidence_interval.high),
                      float(perm.pvalue), (len(x), len(y)),
                      f"difference of {statistic}s, bootstrap CI, permutation p")


def bootstrap_band(curves: np.ndarray, *, confidence: float = CONFIDENCE, resamples: int = 2_000,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over runs of ``curves[run, t]`` and its percentile bootstrap band (runs resampled) at every t:
    (mean, low, high), each of shape (T,)."""
    from scipy.stats import bootstrap

    c = np.asarray(curves, dtype=float)
    if c.ndim != 2 or c.shape[0] < 2:
        raise NasError(f"bootstrap band: expected curves of >= 2 runs x T steps, got shape {c.shape}")
    boot = bootstrap((c,), np.mean, axis=0, vectorized=True, method="percentile", n_resamples=resamples,
                     confidence_level=confidence, rng=_rng(seed))
    return c.mean(axis=0), np.asarray(boot.confidence_interval.low), np.asarray(boot.confidence_interval.high)


# --- helpers ------------------------------------------------------------------------------------------------
def _vector(v: Sequence[float], name: str) -> np.ndarray:
    x = np.asarray(v, dtype=float).reshape(-1)
    if not np.isfinite(x).all():
        raise NasError(f"statistics: {name} holds a value that is not a finite number")
    return x


def _percentile(dist: np.ndarray, confidence: float) -> Interval:
    dist = np.asarray(dist, dtype=float)
    ok = dist[~np.isnan(dist)]
    if len(ok) < (1 - MAX_UNDEFINED) * len(dist):
        return Interval(math.nan, math.nan)
    alpha = 1 - confidence
    return _interval(np.quantile(ok, alpha / 2), np.quantile(ok, 1 - alpha / 2))


def _num(v: float) -> str:
    return "nan" if math.isnan(v) else f"{v:.2f}"


def _ci(ci: Interval) -> str:
    return "[nan]" if math.isnan(ci.low) else f"[{ci.low:.2f}, {ci.high:.2f}]"


def _p(p: float) -> str:
    if math.isnan(p):
        return "nan"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def _j(v: float) -> float | None:
    """JSON-safe float (NaN and infinities as null)."""
    return float(v) if math.isfinite(v) else None


__all__ = ["Interval", "Correlation", "RankCorrelation", "rank_correlation", "ICC", "icc1", "Difference",
           "paired_difference", "difference", "bootstrap_band", "CONFIDENCE", "RESAMPLES"]

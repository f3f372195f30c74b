"""Budgets: parsing, bands, the reachable-range check, run-directory labels."""
from __future__ import annotations

import pytest

from nas.errors import NasError
from nas.search.budget import Budget, parse_range


def test_parse_upper_bound_and_band():
    assert parse_range("1.3G", "--flops") == (0, 1_300_000_000)
    assert parse_range("1.15G:1.3G", "--flops") == (1_150_000_000, 1_300_000_000)
    assert parse_range("6M", "--params") == (0, 6_000_000)
    for bad in ("1.3X", "2G:1G", ":1G", "-1G", "abc:1G"):
        with pytest.raises(NasError, match="--flops"):
            parse_range(bad, "--flops")


def test_space_budget_is_the_default_and_flags_win():
    b = Budget.resolve(None, None, {"macs": 1_300_000_000})
    assert b.macs == (0, 1_300_000_000) and b.params is None
    assert Budget.resolve("1.15G:1.3G", "6M", {"macs": 1}).label() == "1.15G-1.3G_p6M"
    assert b.label() == Budget.resolve("1.3G", None, {}).label() == "1.3G"  # same run directory
    with pytest.raises(NasError, match="no budget"):
        Budget.resolve(None, None, {})


def test_bands_are_inclusive_and_violation_is_zero_inside():
    b = Budget((100, 200), (10, 20))
    assert b.admits(100, 10) and b.admits(200, 20)
    assert not b.admits(99, 15) and not b.admits(201, 15) and not b.admits(150, 21)
    assert b.violation(150, 15) == 0 and b.violation(300, 15) == pytest.approx(0.5)


def test_mean_budget_precheck_uses_the_macs_interval():
    worst, mean = Budget((0, 100), on="worst"), Budget((0, 100), on="mean")
    # an arch whose per-image MACs range over [60, 140]: its worst case breaks the bound, its mean may not
    assert not worst.may_admit(60, 140, 1) and mean.may_admit(60, 140, 1)
    assert not mean.may_admit(120, 140, 1)


def test_unreachable_budget_names_the_range():
    bounds = {"min_macs": 12_448, "max_macs": 839_264, "min_params": 1_274, "max_params": 47_466}
    with pytest.raises(NasError, match=r"--flops 1K is outside the space's reachable MACs range 12.4K \.\. 839.3K"):
        Budget((0, 1000)).check_reachable(bounds)
    with pytest.raises(NasError, match=r"--params 1M:2M .* 1.27K \.\. 47.5K"):
        Budget(None, (1_000_000, 2_000_000)).check_reachable(bounds)
    with pytest.raises(NasError, match="reachable MACs range"):
        Budget((900_000, 1_000_000), on="mean").check_reachable(bounds)
    Budget((0, 1000), on="mean").check_reachable(bounds)  # a mean can lie below the smallest worst case
    Budget((10_000, 20_000)).check_reachable(bounds)

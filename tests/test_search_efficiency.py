"""benchmarks/search_efficiency.py: the pure functions behind its figures, against hand-computed values."""
import importlib.util
import math
from pathlib import Path

import pytest

from nas.errors import NasError

_FILE = Path(__file__).resolve().parents[1] / "benchmarks" / "search_efficiency.py"
_spec = importlib.util.spec_from_file_location("search_efficiency", _FILE)
se = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(se)


def test_best_so_far_skips_infeasible_and_carries_to_n():
    evals = [["a", -0.5, 0.90, 0.5, 1, 1], ["b", -0.2, 0.95, 0.2, 1, 0], ["c", -0.4, 0.80, 0.4, 1, 1]]
    obj, top1 = se.best_so_far(evals, 4)
    assert obj == [-0.5, -0.5, -0.4, -0.4]      # b is outside the budget: never the best
    assert top1 == [0.90, 0.90, 0.80, 0.80]


def test_hitting_time_counts_evaluations_and_censors():
    curve = [-3.0, -2.5, -2.0, -2.0, -1.0]
    assert se.hitting_time(curve, -2.0) == 3     # reached exactly at the third evaluation (>= target)
    assert se.hitting_time(curve, -3.0) == 1
    assert se.hitting_time(curve, -0.5) is None  # never within the 5: censored
    assert se.censored([3, None, 1], 5) == [3, 6, 1]


def test_median_hitting_time_is_the_time_half_the_runs_reached():
    assert se.median_hitting_time([5, None, 3]) == 5            # odd: the middle one, None sorts last
    assert se.median_hitting_time([4, 1, 3, 2]) == 2            # even: the lower median (2 of 4 reached by 2)
    assert se.median_hitting_time([1, None, None, 2]) == 2      # half reached by 2
    assert se.median_hitting_time([1, None, None, None]) is None  # fewer than half: censored
    assert se.median_hitting_time([None, 7, None]) is None
    assert se.median_hitting_time([]) is None


def test_target_objective_is_the_best_fraction_of_the_sample():
    objectives = [-float(k) for k in range(1, 101)]   # losses 1..100
    # 99th percentile of the objective: sorted -100..-1, position 99 * 0.99 = 98.01 -> -2 + 0.01 * 1
    assert se.target_objective(objectives, 0.01) == pytest.approx(-1.99)
    # the best half of 5 losses 1..5: the median, loss 3
    assert se.target_objective([-1, -2, -3, -4, -5], 0.5) == pytest.approx(-3.0)
    with pytest.raises(NasError):
        se.target_objective([-1.0, -2.0], 1.0)
    with pytest.raises(NasError):
        se.target_objective([], 0.01)


def test_ratio_to_random_and_its_bounds():
    assert se.ratio_to_random(50, 100, 150) == (0.5, "=")
    assert se.ratio_to_random(100, 100, 150) == (1.0, "=")
    v, kind = se.ratio_to_random(50, None, 150)       # random's median > 150: ratio < 50 / 150
    assert kind == "<" and v == pytest.approx(1 / 3)
    assert se.format_ratio(v, kind) == "<0.33"
    v, kind = se.ratio_to_random(None, 100, 150)      # the searcher's median > 150: ratio > 150 / 100
    assert (v, kind) == (1.5, ">") and se.format_ratio(v, kind) == ">1.50"
    assert se.ratio_to_random(None, None, 150) == (None, "-")
    assert se.format_ratio(None, "-") == "-"
    assert se.format_ratio(0.47, "=") == "0.47"
    assert se.format_time(None, 150) == ">150" and se.format_time(12, 150) == "12"


def test_hitting_time_test_ranks_censored_runs_last():
    # all of a before all of b (b censored): ranks 1..4 vs the tied 5..8 (mid-rank 6.5 each),
    # the most extreme split of 8
    d = se.hitting_time_test([1, 2, 3, 4], [None, None, None, None], 10)
    assert d.estimate == pytest.approx(2.5 - 6.5)
    assert d.p == pytest.approx(2 / math.comb(8, 4))  # exact: 70 splits, two as extreme (either direction)
    same = se.hitting_time_test([None, None], [None, None], 10)
    assert same.p == 1.0 and same.within_noise
    assert se.hitting_time_test([1], [2, 3], 10) is None


def test_draw_sample_is_seeded_distinct_and_in_budget():
    from nas.cost import cost
    from nas.search.budget import Budget
    from nas.space import load_space

    space = load_space(Path(__file__).resolve().parents[1] / "spaces" / "psvit_tiny.yaml")
    budget = Budget.resolve("1.3G", None, space.budget)
    a = se.draw_sample(space, budget, 20)
    assert a == se.draw_sample(space, budget, 20)           # its own fixed seed stream
    assert a != se.draw_sample(space, budget, 20, seed="other")
    assert len({tuple(v) for v in a}) == 20
    assert all(cost(space.decode(v)).macs <= 1.3e9 for v in a)

"""benchmarks/search_vs_random.py: the pure aggregation behind its table and verdict, against hand-computed values."""
import importlib.util
import json
import math
from pathlib import Path

import pytest

from nas.errors import NasError

_FILE = Path(__file__).resolve().parents[1] / "benchmarks" / "search_vs_random.py"
_spec = importlib.util.spec_from_file_location("search_vs_random", _FILE)
svr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(svr)


def winner(seed, arch, top1, loss):
    return {"seed": seed, "arch_hash": arch, "target_macs": 2_800_000, "search_loss": 1.0,
            "retrained_top1": list(top1), "retrained_loss": list(loss)}


# evolution's three winners retrain better than random search's three, on every seed (two retrain seeds each)
EVOLUTION = [winner(0, "e0", [0.80, 0.82], [0.50, 0.52]),    # means 0.81, 0.51
             winner(1, "e1", [0.84, 0.86], [0.40, 0.42]),    # 0.85, 0.41 (the best of all)
             winner(2, "e2", [0.82, 0.84], [0.45, 0.47])]    # 0.83, 0.46
RANDOM = [winner(0, "r0", [0.70, 0.72], [0.60, 0.62]),       # 0.71, 0.61
          winner(1, "r1", [0.72, 0.74], [0.55, 0.57]),       # 0.73, 0.56
          winner(2, "r2", [0.74, 0.76], [0.52, 0.54])]       # 0.75, 0.53


def test_differences_regret_and_verdict_by_hand():
    r = svr.aggregate({"evolution": EVOLUTION, "random": RANDOM})
    ev, rnd = r["searchers"]["evolution"], r["searchers"]["random"]
    assert [w["mean_top1"] for w in ev["winners"]] == pytest.approx([0.81, 0.85, 0.83])
    assert ev["mean_top1"] == pytest.approx(0.83) and rnd["mean_top1"] == pytest.approx(0.73)
    assert ev["mean_loss"] == pytest.approx(0.46) and rnd["mean_loss"] == pytest.approx(1.70 / 3)
    t, loss = ev["difference"]["top1"], ev["difference"]["loss"]
    assert t["difference"] == pytest.approx(0.10) and loss["difference"] == pytest.approx(0.46 - 1.70 / 3)
    # every resampled mean lies between its group's extremes: the CI of top-1 within [0.81 - 0.75, 0.85 - 0.71]
    assert 0.06 - 1e-9 <= t["ci"][0] <= t["difference"] <= t["ci"][1] <= 0.14 + 1e-9
    assert -0.20 - 1e-9 <= loss["ci"][0] <= loss["ci"][1] <= 0.51 - 0.53 + 1e-9
    # 20 relabellings of 3 + 3 runs, the observed split the most extreme of them: two-sided p = 2 / 20
    assert t["p"] == pytest.approx(0.1) and loss["p"] == pytest.approx(0.1)
    # ... which is no evidence: with 3 seeds a side no result can be beyond noise (the CIs exclude 0, p does not)
    assert t["n"] == [3, 3] and t["ci"][0] > 0 and t["within_noise"] and loss["within_noise"]
    assert rnd["difference"] is None  # the reference
    # regret against the best mean retrained loss of any winner (0.41, evolution seed 1)
    assert r["best"] == {"mean_loss": pytest.approx(0.41), "arch_hash": ["e1"], "found_by": ["evolution-s1"]}
    assert [w["regret_loss"] for w in ev["winners"]] == pytest.approx([0.10, 0.0, 0.05])
    assert ev["regret_loss"] == pytest.approx(0.05) and rnd["regret_loss"] == pytest.approx((0.20 + 0.15 + 0.12) / 3)
    assert r["verdict"] == "within noise"


def test_five_seeds_a_side_can_show_the_search_works():
    ev = EVOLUTION + [winner(3, "e3", [0.83, 0.85], [0.43, 0.45]), winner(4, "e4", [0.82, 0.82], [0.47, 0.47])]
    rnd = RANDOM + [winner(3, "r3", [0.72, 0.72], [0.58, 0.58]), winner(4, "r4", [0.70, 0.74], [0.57, 0.59])]
    r = svr.aggregate({"evolution": ev, "random": rnd})
    t = r["searchers"]["evolution"]["difference"]["top1"]
    assert t["p"] == pytest.approx(2 / 252) and not t["within_noise"]   # C(10, 5) = 252 relabellings
    assert r["verdict"] == "the search works"
    assert "evolution top1 +" in r["verdict_detail"]


def test_random_better_and_within_noise():
    swapped = svr.aggregate({"optuna": [dict(w, seed=w["seed"]) for w in RANDOM],
                             "random": [dict(w) for w in EVOLUTION]})
    d = swapped["searchers"]["optuna"]["difference"]
    assert d["top1"]["difference"] == pytest.approx(-0.10) and d["top1"]["ci"][1] < 0 < d["loss"]["ci"][0]
    assert swapped["verdict"] == "within noise"  # 3 seeds a side: p 0.1 at best
    five = svr.aggregate({"optuna": RANDOM + [winner(3, "r3", [0.72, 0.72], [0.58, 0.58]),
                                               winner(4, "r4", [0.70, 0.74], [0.57, 0.59])],
                          "random": EVOLUTION + [winner(3, "e3", [0.83, 0.85], [0.43, 0.45]),
                                                 winner(4, "e4", [0.82, 0.82], [0.47, 0.47])]})
    assert five["verdict"] == "random search is better"
    # the same scores on both sides, in another seed order: a difference of 0, its CI covering it
    same = svr.aggregate({"evolution": EVOLUTION, "optuna": [dict(w, seed=2 - w["seed"]) for w in EVOLUTION],
                          "random": [dict(w, arch_hash="x" + w["arch_hash"]) for w in EVOLUTION]})
    for name in ("evolution", "optuna"):
        for key in ("top1", "loss"):
            d = same["searchers"][name]["difference"][key]
            assert d["difference"] == pytest.approx(0.0, abs=1e-12) and d["ci"][0] < 0 < d["ci"][1]
    assert same["verdict"] == "within noise"
    # every searcher found an arch with the best loss: regret 0 for each, ties listed in hash order
    assert same["best"]["arch_hash"] == ["e1", "xe1"]
    assert sorted(same["best"]["found_by"]) == ["evolution-s1", "optuna-s1", "random-s1"]
    assert [w["regret_loss"] for w in same["searchers"]["optuna"]["winners"]] == pytest.approx([0.05, 0.0, 0.10])


def test_shared_winners_count_once_per_run():
    r = svr.aggregate({"evolution": [winner(0, "a", [0.9], [0.3]), winner(1, "a", [0.9], [0.3])],
                       "random": [winner(0, "a", [0.9], [0.3]), winner(1, "b", [0.7], [0.5])]})
    ev, rnd = r["searchers"]["evolution"], r["searchers"]["random"]
    assert ev["distinct_winners"] == 1 and rnd["distinct_winners"] == 2
    assert ev["mean_top1"] == pytest.approx(0.9) and rnd["mean_top1"] == pytest.approx(0.8)
    assert ev["regret_loss"] == 0 and rnd["regret_loss"] == pytest.approx(0.1)
    assert r["best"]["found_by"] == ["evolution-s0", "evolution-s1", "random-s0"]


def test_not_measured_without_random_or_two_seeds():
    assert svr.aggregate({"evolution": EVOLUTION})["verdict"] == "not measured"
    one = svr.aggregate({"evolution": EVOLUTION[:1], "random": RANDOM})
    assert one["searchers"]["evolution"]["difference"] == {"top1": None, "loss": None}
    assert one["verdict"] == "not measured"
    # a diverged training (NaN loss): the loss is not compared, top-1 still is
    nan = svr.aggregate({"evolution": [*EVOLUTION[:2], winner(2, "e2", [0.83, 0.83], [math.nan, 0.46])],
                         "random": RANDOM})
    d = nan["searchers"]["evolution"]["difference"]
    assert d["loss"] is None and d["top1"]["difference"] == pytest.approx(0.10)
    assert nan["verdict"] == "within noise" and nan["best"]["mean_loss"] == pytest.approx(0.41)


def test_table_markdown_and_json_render():
    r = svr.aggregate({"evolution": EVOLUTION, "random": RANDOM})
    r.update(setting={"space": "s.yaml", "data": "d", "supernet": "sn", "flops": "2.6M:3M", "max_evals": 100,
                      "retrain_recipe": "r.yaml", "retrain_seeds": 2}, command="python x")
    r = svr._json_safe(r)
    json.dumps(r, allow_nan=False)
    text = svr.table(r)
    assert "evolution" in text and "+10.00 [" in text and "reference" in text and "within noise" in text
    md = svr.markdown(r)
    assert "| evolution | 3 | 3 | 83.00 | 0.4600 |" in md and "`e1`" in md and "Command: `python x`" in md
    assert svr._diff_text({"difference": 0.012, "ci": [None, None], "p": None}, "top1") == "+1.20 [nan] pt, p nan"


def test_search_recipe_turns_the_baseline_off_and_setting_is_checked(tmp_path):
    from nas.search.recipe import load_search_recipe

    for s in ("evolution", "optuna", "random"):
        rec = load_search_recipe(svr.search_recipe_file(tmp_path, s), s)
        assert rec.searcher == s and rec.max_evals == 1000 and rec.baseline is (s == "random")
    setting = {"space_hash": "abc", "max_evals": 100}
    svr.check_setting(tmp_path / "setting.json", setting)
    svr.check_setting(tmp_path / "setting.json", dict(setting))  # the same: accepted
    with pytest.raises(NasError, match="max_evals: 100, now 50"):
        svr.check_setting(tmp_path / "setting.json", {**setting, "max_evals": 50})

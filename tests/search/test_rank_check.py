"""nas rank-check: the rank statistics on fixed inputs, and an end-to-end run that resumes without retraining."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from nas.cli import main
from nas.cost import cost
from nas.errors import NasError
from nas.search.rank_check import band_archs, rank_check, report, statistics
from nas.stats import icc1, rank_correlation
from nas.space import load_space
from nas.train import train_supernet
from tests.helpers import EVAL_RECIPE, RANK_SPACE

DATA = "synthetic:120:3"
SPACE = RANK_SPACE
RECIPE = EVAL_RECIPE


def test_end_to_end_writes_results_and_resumes(tmp_path, monkeypatch, capsys):
    torch.set_num_threads(1)
    (tmp_path / "space.yaml").write_text(SPACE)
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    train_supernet(str(tmp_path / "space.yaml"), data=DATA, recipe=str(tmp_path / "recipe.yaml"),
                   out=tmp_path / "sn", progress=False)
    out = tmp_path / "rc"
    r = rank_check(tmp_path / "sn", 3, out=out, progress=False, seeds=1)
    rows = list(csv.DictReader((out / "rank_check.csv").open()))
    assert len(rows) == 3 and len({row["arch_hash"] for row in rows}) == 3
    macs = [int(row["macs"]) for row in rows]
    assert macs == sorted(macs) and macs[0] < macs[-1]  # spread over the MACs range, one per bin
    for row in rows:
        m = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
        assert float(row["standalone_loss"]) == pytest.approx(m["val_loss"])
    expect = rank_correlation([float(row["inherited_loss"]) for row in rows],
                              [float(row["standalone_loss"]) for row in rows])
    assert r["inherited"]["loss"] == expect.to_json()
    assert "reliability" not in r and "one standalone seed" in r["verdict"]
    png = (out / "rank_check.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    stamps = {row["run_dir"]: (Path(row["run_dir"]) / "final.safetensors").stat().st_mtime_ns for row in rows}

    import sys
    monkeypatch.setattr(sys.modules["nas.train.retrain"], "retrain", lambda *a, **k: pytest.fail("retrained a finished arch"))
    main(["rank-check", str(tmp_path / "sn"), "-n", "3", "--out", str(out), "--seeds", "1"])
    printed = capsys.readouterr().out
    assert "supernet" in printed and "MACs alone" in printed and "params alone" in printed and "tau" in printed
    assert stamps == {d: (Path(d) / "final.safetensors").stat().st_mtime_ns for d in stamps}


def _rows(target_macs=None):
    rows = []
    cols = {"macs": [1, 2, 3, 4], "params": [4, 3, 2, 1],
            "inherited_loss": [0.40, 0.30, 0.35, 0.20], "standalone_loss": [0.41, 0.31, 0.29, 0.25],
            "standalone_loss_s1": [0.39, 0.33, 0.30, 0.24],
            "inherited_top1": [0.90, 0.90, 0.92, 0.95], "standalone_top1": [0.90, 0.91, 0.92, 0.93],
            "standalone_top1_s1": [0.91, 0.90, 0.92, 0.93]}
    if target_macs is not None:
        cols["target_macs"] = target_macs
    for i in range(4):
        row = {k: v[i] for k, v in cols.items()}
        for key in ("top1", "loss"):
            row[f"standalone_{key}_mean"] = (row[f"standalone_{key}"] + row[f"standalone_{key}_s1"]) / 2
        rows.append(row)
    return rows


def test_statistics_on_fixed_rows():
    s = statistics(_rows(), seeds=2)
    tau = lambda what, key: s[what][key]["tau"]["value"]  # noqa: E731
    # the reference is the standalone mean loss [0.40, 0.32, 0.295, 0.245]; inherited [0.40, 0.30, 0.35, 0.20]
    # ranks it with 5 concordant pairs of 6: tau 2/3
    assert s["reference"] == "standalone mean of 2 seeds"
    assert tau("inherited", "loss") == pytest.approx(2 / 3)
    # the same figure, CI and p as nas.stats computes on those two lists
    assert s["inherited"]["loss"] == rank_correlation([0.40, 0.30, 0.35, 0.20], [0.40, 0.32, 0.295, 0.245]).to_json()
    # more MACs, lower standalone loss, everywhere: MACs alone rank perfectly; params here run backwards.
    # The mean top-1 [0.905, 0.905, 0.92, 0.93] ties its first two archs: tau-b 5 / sqrt(6 * 5)
    assert tau("macs", "loss") == pytest.approx(1.0) and tau("macs", "top1") == pytest.approx(5 / 30 ** 0.5)
    assert tau("params", "loss") == pytest.approx(-1.0)
    # the reliability is ICC(1) of the per-arch seeds
    want = icc1([[0.41, 0.39], [0.31, 0.33], [0.29, 0.30], [0.25, 0.24]])
    assert s["reliability"]["loss"]["icc"] == pytest.approx(want.icc)
    assert s["reliability"]["loss"]["p"] == pytest.approx(want.p)
    assert s["bound"]["loss"] == pytest.approx(want.icc_mean ** 0.5)
    assert "standalone training ranks these archs" in s["verdict"]
    # in a band the target MACs and params are the ones compared (here reversed: MACs alone rank backwards)
    rows = _rows(target_macs=[4, 3, 2, 1])
    for r in rows:
        r["target_params"] = r["params"]
    assert statistics(rows, seeds=2)["macs"]["loss"]["tau"]["value"] == pytest.approx(-1.0)
    assert "reliability" not in statistics(_rows(), seeds=1)


def test_verdict_says_when_standalone_training_cannot_rank():
    rows = _rows()
    for r, s1 in zip(rows, [0.25, 0.41, 0.31, 0.29]):  # seed 1 unrelated to seed 0: no reliability
        r["standalone_loss_s1"] = s1
        r["standalone_loss_mean"] = (r["standalone_loss"] + s1) / 2
    s = statistics(rows, seeds=2)
    assert s["reliability"]["loss"]["p"] > 0.01
    assert s["verdict"].startswith("standalone training cannot rank these archs")
    printed = report({**s, "n": 4, "seeds": 2, "band": None})
    assert printed.splitlines()[1].strip() == s["verdict"] and "ICC(1)" in printed


def _all_archs(space):
    import itertools
    return [space.decode(list(v)) for v in itertools.product(*(range(len(d.values)) for d in space.dims))]


def test_band_archs_stay_inside_the_band_spread_over_it(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    space = load_space(tmp_path / "space.yaml")
    every = {a.hash(): cost(a).macs for a in _all_archs(space)}       # brute force: 24 archs
    macs = sorted(set(every.values()))
    lo, hi = macs[2], macs[-3]
    inside = {h for h, m in every.items() if lo <= m <= hi}
    got = band_archs(space, 3, lo, hi, seed=0, draws=5000)
    assert len({a.hash() for a in got}) == 3 and {a.hash() for a in got} <= inside
    got_macs = [cost(a).macs for a in got]
    assert got_macs == sorted(got_macs)
    # 5000 uniform draws of 24 archs see all of them: the ends of the band's archs are picked
    assert got_macs[0] == min(every[h] for h in inside) and got_macs[-1] == max(every[h] for h in inside)
    with pytest.raises(NasError, match="widen the band"):
        band_archs(space, 3, macs[-1] + 1, macs[-1] + 2, seed=0, draws=100)


def test_seeds_and_band_end_to_end(tmp_path, monkeypatch, capsys):
    torch.set_num_threads(1)
    (tmp_path / "space.yaml").write_text(SPACE)
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    train_supernet(str(tmp_path / "space.yaml"), data=DATA, recipe=str(tmp_path / "recipe.yaml"),
                   out=tmp_path / "sn", progress=False)
    space = load_space(tmp_path / "space.yaml")
    macs = sorted({cost(a).macs for a in _all_archs(space)})
    lo, hi = macs[1], macs[-2]
    out = tmp_path / "rc"
    r = rank_check(tmp_path / "sn", 3, out=out, progress=False, seeds=2, band=f"{lo}:{hi}", workers=2)
    rows = list(csv.DictReader((out / "rank_check.csv").open()))
    assert len(rows) == 3 and r["band"] == [lo, hi] and r["seeds"] == 2
    for row in rows:
        assert lo <= int(row["target_macs"]) <= hi
        m1 = json.loads((Path(row["run_dir"]).parent / "run-s1" / "metrics.json").read_text())
        assert float(row["standalone_loss_s1"]) == pytest.approx(m1["val_loss"])
        assert float(row["standalone_loss_mean"]) == pytest.approx((float(row["standalone_loss"]) + m1["val_loss"]) / 2)
        assert int(row["target_params"]) > 0
    want = icc1([[float(row["standalone_loss"]), float(row["standalone_loss_s1"])] for row in rows])
    assert r["reliability"]["loss"]["icc"] == pytest.approx(want.icc, nan_ok=True)
    png = (out / "rank_check.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000

    import sys
    monkeypatch.setattr(sys.modules["nas.train.retrain"], "retrain", lambda *a, **k: pytest.fail("retrained a finished arch"))
    main(["rank-check", str(tmp_path / "sn"), "-n", "3", "--out", str(out), "--seeds", "2", "--band", f"{lo}:{hi}"])
    assert "reliability  ICC(1)" in capsys.readouterr().out
    assert main(["rank-check", str(tmp_path / "sn"), "-n", "3", "--out", str(out), "--band", "2G:1G"]) == 2
    assert "--band" in capsys.readouterr().err

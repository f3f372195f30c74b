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
from nas.search.rank_check import band_archs, correlation, noise_ceiling, rank_check, statistics
from nas.space import load_space
from nas.train import train_supernet
from tests.helpers import EVAL_RECIPE

DATA = "synthetic:120:3"
SPACE = """\
name: tiny
input: {size: 16, channels: 3}
num_classes: 3
tokenizer: {type: patch, patch_size: 4}
head: cls
stages:
  - dim: {choice: [8, 16, 24]}
    heads: 2
    mlp_ratio: {choice: [1, 2]}
    cells: {repeat: 2, choice: [basic, identity]}
"""
RECIPE = EVAL_RECIPE


def test_tau_and_rho_without_ties():
    # [1,2,3,4] vs [1,3,2,4]: 5 concordant pairs, 1 discordant -> tau = (5-1)/6; rho = 1 - 6*2/(4*15) = 0.8
    c = correlation([1, 2, 3, 4], [1, 3, 2, 4])
    assert c.tau == pytest.approx(2 / 3) and c.rho == pytest.approx(0.8)


def test_tau_b_and_rho_with_ties():
    # x = [1,2,2,3], y = [1,2,3,4]. Pairs: (1,2)C (1,3)C (1,4)C (2,3) tied in x (2,4)C (3,4)C -> C=5, D=0.
    # tau-b = (C-D) / sqrt((n0-n1)(n0-n2)), n0 = 6, n1 = 1 pair tied in x, n2 = 0 -> 5/sqrt(30).
    # Spearman on average ranks: rx = [1,2.5,2.5,4], ry = [1,2,3,4]; Pearson of those:
    # mean 2.5; dx = [-1.5,0,0,1.5], dy = [-1.5,-.5,.5,1.5]; sum dx dy = 4.5; sum dx^2 = 4.5; sum dy^2 = 5
    # -> rho = 4.5 / sqrt(4.5*5) = sqrt(0.9).
    c = correlation([1, 2, 2, 3], [1, 2, 3, 4])
    assert c.tau == pytest.approx(5 / 30 ** 0.5) and c.rho == pytest.approx(0.9 ** 0.5)
    assert correlation([4, 3, 2, 1], [1, 2, 3, 4]).tau == pytest.approx(-1.0)


def test_end_to_end_writes_results_and_resumes(tmp_path, monkeypatch, capsys):
    torch.set_num_threads(1)
    (tmp_path / "space.yaml").write_text(SPACE)
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    train_supernet(str(tmp_path / "space.yaml"), data=DATA, recipe=str(tmp_path / "recipe.yaml"),
                   out=tmp_path / "sn", progress=False)
    out = tmp_path / "rc"
    r = rank_check(tmp_path / "sn", 3, out=out, progress=False)
    rows = list(csv.DictReader((out / "rank_check.csv").open()))
    assert len(rows) == 3 and len({row["arch_hash"] for row in rows}) == 3
    macs = [int(row["macs"]) for row in rows]
    assert macs == sorted(macs) and macs[0] < macs[-1]  # spread over the MACs range, one per bin
    for row in rows:
        m = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
        assert float(row["standalone_loss"]) == pytest.approx(m["val_loss"])
    expect = correlation([float(row["inherited_loss"]) for row in rows], [float(row["standalone_loss"]) for row in rows])
    assert r["loss"]["tau"] == pytest.approx(expect.tau)
    png = (out / "rank_check.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    stamps = {row["run_dir"]: (Path(row["run_dir"]) / "final.safetensors").stat().st_mtime_ns for row in rows}

    import sys
    monkeypatch.setattr(sys.modules["nas.train.retrain"], "retrain", lambda *a, **k: pytest.fail("retrained a finished arch"))
    main(["rank-check", str(tmp_path / "sn"), "-n", "3", "--out", str(out)])
    assert "Kendall tau" in capsys.readouterr().out
    assert stamps == {d: (Path(d) / "final.safetensors").stat().st_mtime_ns for d in stamps}


def test_noise_ceiling_is_the_mean_over_seed_pairs():
    # two seeds: the correlation of the pair (values of the first test above)
    c = noise_ceiling([[1, 2, 3, 4], [1, 3, 2, 4]])
    assert c.tau == pytest.approx(2 / 3) and c.rho == pytest.approx(0.8)
    # three seeds, the third reversing the first: pairs (a,b) 2/3, (a,c) -1, (b,c) -2/3 -> mean -1/3 (rho likewise
    # 0.8, -1, -0.8)
    c = noise_ceiling([[1, 2, 3, 4], [1, 3, 2, 4], [4, 3, 2, 1]])
    assert c.tau == pytest.approx(-1 / 3) and c.rho == pytest.approx(-1 / 3)
    with pytest.raises(NasError, match="at least 2 seeds"):
        noise_ceiling([[1, 2, 3]])


def _rows(target_macs=None):
    rows = []
    cols = {"macs": [1, 2, 3, 4],
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
    # loss, inherited ranks [4,2,3,1] vs standalone [4,3,2,1]: C=5, D=1 -> tau 2/3; rho 1 - 6*2/60 = 0.8
    assert s["loss"]["tau"] == pytest.approx(2 / 3) and s["loss"]["rho"] == pytest.approx(0.8)
    # top-1 with a tie in the inherited scores: tau-b 5/sqrt(30), rho sqrt(0.9) (as in the ties test above)
    assert s["top1"]["tau"] == pytest.approx(5 / 30 ** 0.5) and s["top1"]["rho"] == pytest.approx(0.9 ** 0.5)
    # the two standalone seeds rank the loss alike (tau 1); top-1 [1,2,3,4] vs [2,1,3,4] (tau 2/3, rho 0.8)
    assert s["noise_loss"]["tau"] == pytest.approx(1.0) and s["noise_loss"]["rho"] == pytest.approx(1.0)
    assert s["noise_top1"]["tau"] == pytest.approx(2 / 3) and s["noise_top1"]["rho"] == pytest.approx(0.8)
    # the standalone mean loss [0.40, 0.32, 0.295, 0.245] ranks as seed 0 does
    assert s["vs_mean_loss"]["tau"] == pytest.approx(2 / 3)
    # more MACs, lower standalone loss, everywhere: MACs alone rank perfectly
    assert s["macs_loss"]["tau"] == pytest.approx(1.0) and s["macs_top1"]["tau"] == pytest.approx(1.0)
    # in a band the target MACs are the ones compared (here reversed: MACs alone rank backwards)
    s = statistics(_rows(target_macs=[4, 3, 2, 1]), seeds=2)
    assert s["macs_loss"]["tau"] == pytest.approx(-1.0)
    assert "noise_loss" not in statistics(_rows(), seeds=1)


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
    assert r["noise_loss"] == pytest.approx(vars(noise_ceiling([[float(row["standalone_loss"]) for row in rows],
                                                                 [float(row["standalone_loss_s1"]) for row in rows]])),
                                            nan_ok=True)
    png = (out / "rank_check.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000

    import sys
    monkeypatch.setattr(sys.modules["nas.train.retrain"], "retrain", lambda *a, **k: pytest.fail("retrained a finished arch"))
    main(["rank-check", str(tmp_path / "sn"), "-n", "3", "--out", str(out), "--seeds", "2", "--band", f"{lo}:{hi}"])
    assert "noise ceiling" in capsys.readouterr().out
    assert main(["rank-check", str(tmp_path / "sn"), "-n", "3", "--out", str(out), "--band", "2G:1G"]) == 2
    assert "--band" in capsys.readouterr().err

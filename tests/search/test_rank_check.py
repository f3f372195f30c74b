"""nas rank-check: the rank statistics on fixed inputs, and an end-to-end run that resumes without retraining."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from nas.cli import main
from nas.search.rank_check import correlation, rank_check
from nas.train import train_supernet

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
RECIPE = """\
seed: 0
epochs: 1
batch_size: 24
optimizer: {name: adamw, lr: 2e-3, weight_decay: 0.0}
label_smoothing: 0.0
data: {holdout: 0.25}
device: cpu
"""


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

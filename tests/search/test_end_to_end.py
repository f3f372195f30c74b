"""The whole job for real on a tiny space: a 1-epoch supernet on synthetic data, evolution, exports with
inherited weights that load into the standalone model, the CLI table; on the target and on a proxy."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from nas.cli import main
from nas.cost import cost
from nas.models import build_model
from nas.search.history import read_history
from nas.space import load_arch, load_space
from tests.helpers import count_macs
from tests.search.helpers import write

SPACE = """\
name: e2e
input: {size: 16, channels: 3}
num_classes: 10
tokenizer: {type: patch, patch_size: 4}
pooling: {type: 1d, kernel: 3}
head: cls
stages:
  - dim: {choice: [16, 24]}
    heads: 2
    mlp_ratio: 2
    cells: {repeat: 2, choice: [basic, shared_pair, identity]}
  - dim: 32
    heads: {choice: [2, 4]}
    mlp_ratio: {choice: [1.5, 2]}
    cells: [{choice: [basic, identity]}, basic]
"""
RECIPE = """\
epochs: 1
batch_size: 16
optimizer: {name: adamw, lr: 1e-3, weight_decay: 0.05}
schedule: {name: none}
label_smoothing: 0.0
device: cpu
"""
PROXY = RECIPE + "space_overrides:\n  input.size: 8\n  tokenizer.patch_size: 2\n  stages[1].dim: 24\n"
SEARCH = """\
searcher: evolution
max_evals: 12
batch_size: 64
evolution: {population: 6, generations: 2, parents: 3, mutations: 2, crossovers: 2, mutation_prob: 0.3}
"""


def test_end_to_end_on_the_target_and_on_a_proxy(tmp_path: Path, capsys):
    space = write(tmp_path, "e2e.yaml", SPACE)
    target = load_space(space)
    b = target.cost_bounds()
    limit = (b["min_macs"] + b["max_macs"]) // 2
    common = [str(space), "--flops", str(limit), "--data", "synthetic:96", "--search-recipe",
              str(write(tmp_path, "s.yaml", SEARCH)), "--top", "1"]

    out = tmp_path / "target"
    assert main(["search", *common, "--recipe", str(write(tmp_path, "r.yaml", RECIPE)), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "winner (evolution)" in printed and "best of 12 random" in printed and "val top-1" in printed
    assert "winner - best random, val split" in printed and "cheapest within noise of the winner" in printed
    import json
    summary = json.loads((out / "summary.json").read_text())
    v = summary["winner_vs_baseline_val"]
    # the paired difference of top-1 is the difference of the two val top-1s (computed apart, per arch)
    assert v["top1"]["difference"] == __import__("pytest").approx(summary["val_score"] - summary["baseline_val_score"])
    for d in (v["top1"], v["loss"]):
        assert d["within_noise"] == (d["ci"][0] <= 0 <= d["ci"][1]) and d["ci"][0] <= d["difference"] <= d["ci"][1]
    cheap = summary["cheapest_within_noise"]
    if cheap["arch_hash"] is not None:  # cheaper than the winner, no better on the search loss
        assert cheap["macs"] < summary["best"]["target_macs"] and cheap["loss"] >= summary["best"]["loss"]
        assert cheap["vs_winner_loss"]["ci"][0] <= 0
    best = load_arch(out / "best.yaml")
    model = build_model(best).eval()
    assert count_macs(model, torch.zeros(1, 3, 16, 16)) == cost(best).macs <= limit  # independent count
    model.load_state_dict(load_file(out / "best.safetensors"))  # the inherited weights fit the target arch
    assert (out / "supernet" / "supernet.safetensors").exists() and not (out / "best.proxy.yaml").exists()
    rows = read_history(out / "history.csv")
    assert len(rows) == 12 and all(0 <= c.score <= 1 and c.target_macs <= limit for c in rows)
    # the real evaluator ranks by its objective, the negated loss; best.yaml records the winner's top-1
    assert all(c.objective == -c.loss for c in rows)
    winner = min(rows, key=lambda c: c.loss)
    assert winner.arch_hash == best.hash() and winner.score == best.provenance.score
    for f in ("pareto.csv", "pareto.png", "summary.json", "search.log", "baseline.csv"):
        assert (out / f).stat().st_size > 0
    assert len(list((out / "top").glob("*.safetensors"))) == 1
    again = tmp_path / "again"  # --supernet: search a trained supernet, no training
    assert main([str(a) for a in ("search", space, "--flops", limit, "--supernet", out / "supernet", "--searcher",
                                  "random", "--max-evals", 4, "--out", again)]) == 0
    assert not (again / "supernet").exists() and len(read_history(again / "history.csv")) == 4
    load_arch(again / "best.yaml")

    out = tmp_path / "proxy"
    assert main(["search", *common, "--recipe", str(write(tmp_path, "p.yaml", PROXY)), "--out", str(out)]) == 0
    best, proxy = load_arch(out / "best.yaml"), load_arch(out / "best.proxy.yaml")
    assert best.img_size == 16 and proxy.img_size == 8 and best in target  # best.yaml is the target arch
    assert cost(best).macs <= limit
    build_model(proxy).load_state_dict(load_file(out / "best.proxy.safetensors"))
    assert not (out / "best.safetensors").exists()
    assert "proxy" in (out / "best.yaml").read_text().split("format:")[0]  # the header says so


def test_mean_budget_uses_the_mean_macs_measured_with_inherited_weights(tmp_path: Path):
    """CF-ViT at target scale: the default budget is on the mean; feasibility follows the measured mean."""
    from tests.search.helpers import TINY_CF
    space = write(tmp_path, "cf.yaml", TINY_CF)
    costs = sorted(cost(a).macs for a in (load_space(space).sample(i) for i in range(40)))
    limit = costs[len(costs) // 2]
    out = tmp_path / "cf"
    assert main([str(a) for a in ("search", space, "--flops", limit, "--data", "synthetic:96", "--recipe",
                                  write(tmp_path, "r.yaml", RECIPE), "--searcher", "random", "--max-evals", 6,
                                  "--out", out)]) == 0
    rows = read_history(out / "history.csv")
    assert rows and all(c.macs_mean is not None and c.macs_mean <= c.target_macs for c in rows)
    assert all(c.feasible == (c.macs_mean <= limit) for c in rows)
    assert "budget on mean MACs" in (out / "search.log").read_text()
    build_model(load_arch(out / "best.yaml")).load_state_dict(load_file(out / "best.safetensors"))

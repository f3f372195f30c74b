"""Exact cost bounds of a space: equal to brute force on small spaces whose dimensions interact (ATS blocks x
keep / k, progressive iterations x share_weights, CF-ViT alpha x depth, pooling kernels x widths), and on
every shipped space the extreme archs attain them and thousands of sampled archs lie within them."""
from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from nas.cost import cost
from nas.space import load_space

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "spaces").glob("*.yaml"))

HEAD = "name: small\ninput: {size: 32, channels: 3}\nnum_classes: 10\n"
SMALL = {
    # ATS in a searchable subset of blocks with a searchable keep ratio: the token count after a block
    # depends on both, and a shared pair's second layer samples too. (The old per-dimension search
    # reported min > max on such a space.)
    "ats_keep": HEAD + """
tokenizer: {type: patch, patch_size: 4}
stages:
  - dim: 16
    heads: 2
    mlp_ratio: {choice: [1, 4]}
    cells: [basic, {choice: [basic, identity]}, {choice: [basic, shared_pair]}, {choice: [basic, shared_pair]},
            {choice: [shared_pair, basic]}]
ats: {blocks: {subset: [0, 2, 3, 4]}, keep: {choice: [1.0, 0.5, 0.13]}}
""",
    # k above the tokens left: K = k quantiles whatever N_in is, at most N_in kept
    "ats_k": HEAD + """
tokenizer: {type: patch, patch_size: 8}
pooling: {type: 1d, kernel: {choice: [1, 3]}}
stages:
  - {dim: 16, heads: 2, mlp_ratio: 2, cells: [basic, {choice: [basic, shared_pair, identity]}]}
  - {dim: {choice: [16, 24]}, heads: 2, mlp_ratio: 2, cells: [{choice: [basic, shared_pair]}, basic, basic]}
ats: {blocks: {subset: [2, 3, 4]}, k: {choice: [2, 5, 40]}}
""",
    # fixed ATS blocks over two stages without pooling: the token count flows from stage to stage
    "reduction_stages": HEAD + """
tokenizer: {type: patch, patch_size: 4}
stages:
  - dim: 16
    heads: 2
    mlp_ratio: {choice: [1, 3]}
    cells: [{choice: [basic, shared_pair]}, {choice: [basic, identity]}]
  - {dim: 16, heads: {choice: [1, 2]}, mlp_ratio: {choice: [2, 4]}, cells: [{choice: [shared_pair, basic]}, basic]}
ats: {blocks: [0, 2], keep: {choice: [1.0, 0.6, 0.2]}}
""",
    # PS-ViT: iterations x share_weights x points x width (the old search missed the max params)
    "progressive": HEAD + """
tokenizer: {type: progressive, points: {choice: [2, 4]}, iterations: {choice: [1, 2, 3]},
            share_weights: {choice: [false, true]}}
qkv_bias: false
stages:
  - dim: {choice: [16, 32]}
    heads: {choice: [1, 2]}
    mlp_ratio: {choice: [1, 3]}
    cells: [basic, {choice: [basic, identity]}, {choice: [shared_pair, identity]}]
""",
    # progressive + 1d pooling + ATS, the combined space in miniature
    "combined": HEAD + """
tokenizer: {type: progressive, points: {choice: [3, 4]}, iterations: {choice: [1, 2]},
            share_weights: {choice: [false, true]}}
pooling: {type: 1d, kernel: 3}
stages:
  - {dim: 16, heads: 2, mlp_ratio: 2, cells: [{choice: [basic, shared_pair, identity]}]}
  - dim: {choice: [24, 32]}
    heads: 2
    mlp_ratio: {choice: [1, 2]}
    cells: [{choice: [basic, shared_pair]}, {choice: [basic, shared_pair]}]
ats: {blocks: {subset: [1, 2]}, keep: {choice: [1.0, 0.3]}}
""",
    # CF-ViT: alpha x exit threshold x depth x mlp ratio over two stages
    "coarse_fine": HEAD + """
tokenizer: {type: coarse_fine, patch_size: 4, coarse_grid: 4, alpha: {choice: [0.25, 0.5, 1.0]},
            exit_threshold: {choice: [0.5, 1.0]}}
stages:
  - {dim: 16, heads: 2, mlp_ratio: {choice: [1, 4]}, cells: [basic, {choice: [basic, shared_pair, identity]}]}
  - {dim: 16, heads: {choice: [1, 2]}, mlp_ratio: 2, cells: [{choice: [basic, identity]}, basic]}
""",
    # 2d pooling: the token grid shrinks per stage while the widths grow; kernels change the conv cost
    "pool_2d": HEAD + """
tokenizer: {type: patch, patch_size: 4}
pooling: {type: 2d, kernel: {choice: [1, 3]}}
head: gap
stages:
  - {dim: {choice: [8, 16]}, heads: 1, mlp_ratio: 2, cells: [{choice: [basic, shared_pair, identity]}]}
  - {dim: {choice: [16, 24]}, heads: 2, mlp_ratio: {choice: [1, 2]}, cells: [{choice: [basic, identity]}, basic]}
""",
}


def small_space(tmp_path: Path, name: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(SMALL[name])
    return load_space(path)


def brute_force(space) -> dict[str, int]:
    costs = [cost(space.decode(list(v))) for v in itertools.product(*(range(len(d.values)) for d in space.dims))]
    macs, params = [c.macs for c in costs], [c.params for c in costs]
    return {"min_macs": min(macs), "max_macs": max(macs), "min_params": min(params), "max_params": max(params)}


def check_extremes_attain(space) -> dict[str, int]:
    bounds, archs = space.cost_bounds(), space.extreme_archs()
    assert set(bounds) == set(archs) == {"min_macs", "max_macs", "min_params", "max_params"}
    for key, arch in archs.items():
        assert arch in space
        c = cost(arch)
        assert (c.macs if key.endswith("macs") else c.params) == bounds[key], key
    assert bounds["min_macs"] <= bounds["max_macs"] and bounds["min_params"] <= bounds["max_params"]
    return bounds


@pytest.mark.parametrize("name", sorted(SMALL))
def test_bounds_equal_brute_force(tmp_path: Path, name: str):
    space = small_space(tmp_path, name)
    assert 20 <= space.size() <= 4000
    assert space.cost_bounds() == brute_force(space)
    check_extremes_attain(space)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_space_bounds_hold_and_are_attained(path: Path):
    space = load_space(path)
    bounds = check_extremes_attain(space)
    rng = random.Random(0)
    for _ in range(3000):
        c = cost(space.sample(rng))
        assert bounds["min_macs"] <= c.macs <= bounds["max_macs"]
        assert bounds["min_params"] <= c.params <= bounds["max_params"]


def test_known_extremes_of_shipped_spaces():
    """Archs found by hand that the old per-dimension search missed lie inside the exact bounds."""
    ats = load_space(ROOT / "spaces" / "ats_deit_small.yaml").cost_bounds()
    assert ats["min_macs"] < ats["max_macs"] == 4_598_882_304           # no ATS block: plain DeiT-S
    combined = load_space(ROOT / "spaces" / "combined.yaml").cost_bounds()
    assert combined["min_macs"] <= 0.758e9 and combined["max_macs"] >= 3.895e9
    ps_vit = load_space(ROOT / "spaces" / "ps_vit.yaml").cost_bounds()
    assert ps_vit["max_params"] >= 12.88e6

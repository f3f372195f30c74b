"""Every shipped space, at a tiny input size: the analytic cost of random archs equals an independent
count of the built model (FlopCounterMode // 2; params = sum of numel), and ATS archs record per-image MACs
that equal the count of each image run alone."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

import nas
from nas.cost import cost
from nas.space import load_space
from nas.train.recipe import load_recipe
from tests.helpers import count_macs

SPACES = Path(__file__).resolve().parents[1] / "spaces"
TINY = {"input.size": 32}
PATCH4 = {**TINY, "tokenizer.patch_size": 4}
# (space, overrides for a 32x32 input, archs checked). Static spaces: 50 archs each, built on the meta
# device and materialised uninitialised (values do not matter for a MAC count; it is 3x faster).
STATIC = [("psvit_tiny", PATCH4, 50), ("psvit_2d_tiny", PATCH4, 50), ("ps_vit", TINY, 20),
          ("psvit_fmnist", {"input.channels": 3}, 50)]  # grayscale as written; RGB for the shared input below
NARROW = {"stages[0].dim": 48}  # DeiT-S width 384 -> 48 (6 heads of 8): same structure, 30x cheaper
ALL_FOUR = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "cpu_supernet_all_four.yaml").space_overrides
DYNAMIC = [("ats_deit_small", {**PATCH4, **NARROW}, 8), ("combined", TINY, 8),
           ("cf_vit", {**PATCH4, **NARROW, "tokenizer.coarse_grid": 4}, 8), ("all_four", ALL_FOUR, 12)]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_shipped_space_is_covered():
    covered = {name for name, _, _ in STATIC + DYNAMIC}
    assert {p.stem for p in SPACES.glob("*.yaml")} <= covered


@pytest.mark.parametrize("name,overrides,count", STATIC, ids=[s[0] for s in STATIC])
def test_cost_equals_independent_count_static(name: str, overrides: dict, count: int):
    space = load_space(SPACES / f"{name}.yaml", overrides)
    rng = random.Random(0)
    for _ in range(count):
        arch = space.sample(rng)
        with torch.device("meta"):
            model = nas.build_model(arch)
        model = model.to_empty(device="cpu").eval()
        c = cost(arch)
        assert c.params == n_params(model), arch
        assert c.macs == count_macs(model, torch.zeros(1, 3, 32, 32)), arch


@pytest.mark.parametrize("name,overrides,count", DYNAMIC, ids=[s[0] for s in DYNAMIC])
def test_cost_equals_independent_count_ats(name: str, overrides: dict, count: int):
    space = load_space(SPACES / f"{name}.yaml", overrides)
    rng = random.Random(0)
    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32)
    for _ in range(count):
        arch = space.sample(rng)
        model = nas.build_model(arch).eval()
        c = cost(arch)
        assert c.params == n_params(model)
        with torch.no_grad():
            batched, macs = model(x), model.last_macs.clone()
        for i in range(len(x)):
            with torch.no_grad():
                alone = model(x[i:i + 1])
            torch.testing.assert_close(alone, batched[i:i + 1], atol=1e-5, rtol=0)  # batch invariance
            assert macs[i] == count_macs(model, x[i:i + 1])                       # executed == counted
            assert c.macs_min <= macs[i] <= c.macs_max == c.macs

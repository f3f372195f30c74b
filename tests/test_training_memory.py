"""The training-memory floor: a true lower bound, and the recipe that cannot fit is refused before it starts."""
from __future__ import annotations

import random

import pytest
import torch

from nas.cli import main
from nas.cost import training_floats_floor
from nas.models import build_model
from tests.helpers import random_arch


def saved_floats(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Floats autograd keeps for backward (distinct storages), counted by hooking every saved tensor."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum()
    return sum(seen.values())


@pytest.mark.parametrize("seed", range(8))
def test_floor_is_below_what_autograd_keeps(seed):
    arch = random_arch(random.Random(seed))
    torch.manual_seed(seed)
    model = build_model(arch).train()
    for m in model.modules():  # count the unfused path: fused attention keeps less only where it is available
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    floor = training_floats_floor(arch)
    kept = saved_floats(model, torch.randn(1, arch.in_chans, arch.img_size, arch.img_size))
    assert floor <= kept, (floor, kept)
    if any(st.num_layers for st in arch.stages):
        assert floor > kept / 10  # and not a vacuous bound
    else:
        assert floor == 0  # identity cells only: no layer keeps anything


def test_paper_recipe_refused_before_it_starts(tmp_path, capsys):
    """The ImageNet recipe (batch 1024 at 224x224) on psvit_tiny needs > 50 GB of activations alone."""
    out = tmp_path / "run"
    code = main(["train-supernet", "spaces/psvit_tiny.yaml", "--data", "synthetic:64",
                 "--recipe", "recipes/spos_supernet.yaml", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "recipes/spos_supernet.yaml" in err[0] and "batch_size 1024" in err[0] and "memory" in err[0]
    assert not out.exists()

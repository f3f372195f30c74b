"""ATS inside our own ViT (``build_model`` of an arch with ``ats``): it agrees with ATS applied to the
equivalent timm ViT, records executed MACs, and its analytic bounds hold."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT

import nas
from nas.arch import Arch, Stage
from nas.mechanisms.ats import ATS
from nas.mechanisms.patch import PatchTokenizer
from nas.cost import cost
from nas.mechanisms.ats.model import apply_ats
from tests.helpers import count_macs

REFERENCE = Path(__file__).resolve().parents[2] / "spaces" / "reference"


def tiny_arch(ats: ATS | None, cells=("basic",) * 4) -> Arch:
    return Arch(32, 3, 10, PatchTokenizer(4), (Stage(32, 2, 4.0, tuple(cells)),), reduction=ats)


def as_timm(model: torch.nn.Module) -> TimmViT:
    """The same network as a timm VisionTransformer, carrying our model's weights."""
    vit = TimmViT(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, num_classes=10)
    ours = model.state_dict()
    theirs = {}
    for k in vit.state_dict():
        src = (k.replace("blocks.", "stages.0.cells.") if k.startswith("blocks.") else
               f"tokenizer.{k}" if k.split(".")[0] in ("patch_embed", "cls_token", "pos_embed") else k)
        theirs[k] = ours[src]
    vit.load_state_dict(theirs)
    return vit.eval()


@pytest.mark.parametrize("ats", [ATS((1, 2, 3), keep=0.5), ATS((2,), k=5), ATS((0, 3), keep=1.0)])
def test_matches_ats_on_the_equivalent_timm_vit(ats: ATS):
    torch.manual_seed(0)
    model = nas.build_model(tiny_arch(ats)).eval()
    reference = apply_ats(as_timm(model), list(ats.blocks), keep=ats.keep, k=ats.k).eval()
    x = torch.randn(4, 3, 32, 32) * 3
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-5)
    assert torch.equal(model.last_macs, reference.last_macs)


def test_ats_in_a_shared_pair_samples_in_the_second_layer():
    torch.manual_seed(0)
    arch = tiny_arch(ATS((1,), k=6), cells=("basic", "shared_pair", "basic"))
    model = nas.build_model(arch).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        model(x)
    kept, macs = model.last_kept[0], model.last_macs.clone()
    assert kept.shape[1] <= 7 and bool((kept[:, 0] == 0).all())  # cls + at most k tokens
    for i in range(3):
        assert macs[i] == count_macs(model, x[i:i + 1])


def test_deit_small_ats_reference():
    arch = nas.load_arch(REFERENCE / "deit_small_ats.yaml")
    c = cost(arch)
    assert c.params == 22_050_664
    assert abs(c.macs_max - 4.61e9) < 0.01 * 4.61e9 and c.macs == c.macs_max  # keep 1.0: worst = DeiT-S
    assert c.macs_min < 0.35 * c.macs_max
    lower = cost(replace(arch, reduction=ATS(arch.reduction.blocks, keep=0.72)))
    assert lower.macs_max < c.macs_max and lower.macs_min == c.macs_min

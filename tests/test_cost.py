"""The analytic cost equals the built model: params exactly, MACs exactly against FlopCounterMode."""
from __future__ import annotations

import random
import re
from dataclasses import replace
from pathlib import Path

import pytest
import timm
import torch
import yaml

from nas.space import load_arch

from nas.arch import Arch, Pooling, Stage

from nas.mechanisms.progressive import ProgressiveTokenizer
from nas.cost import Cost, cost, layer_macs, layer_params
from nas.shapes import stage_tokens
from nas.errors import NasError
from nas.models import build_model, get_arch
from nas.models.layers import Block
from tests.helpers import count_macs, random_arch

REFERENCE = Path(__file__).resolve().parents[1] / "spaces" / "reference"


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _check_equal(arch: Arch) -> Cost:
    c = cost(arch)
    model = build_model(arch).eval()
    x = torch.randn(1, arch.in_chans, arch.img_size, arch.img_size)
    assert c.params == _n_params(model)
    assert c.macs == count_macs(model, x) == c.macs_min == c.macs_max
    return c


@pytest.mark.parametrize("seed", range(24))
def test_random_tiny_archs_equal_the_model(seed):
    torch.manual_seed(seed)
    _check_equal(random_arch(random.Random(seed)))


def test_random_archs_cover_the_space():
    archs = [random_arch(random.Random(s)) for s in range(24)]
    assert {a.pooling.type for a in archs} == {"none", "1d", "2d"}
    assert {a.head for a in archs} == {"cls", "gap"}
    assert {a.has_cls_token for a in archs} == {True, False}
    assert {k for a in archs for _, _, k in a.cells()} == {"basic", "shared_pair", "identity"}


@pytest.mark.parametrize("name", ["vit_test_patch4_32", "psvit1d_test_patch4_32", "psvit2d_test_patch4_32"])
def test_registered_test_archs(name):
    _check_equal(get_arch(name))


def test_features_only_and_no_bias_variants():
    _check_equal(replace(get_arch("psvit2d_test_patch4_32"), num_classes=0))
    _check_equal(replace(get_arch("psvit1d_test_patch4_32"), qkv_bias=False, head="gap"))


def test_layer_formulas():
    N, C, H = 197, 192, 768
    assert layer_macs(N, C, H) == 12 * N * C * C + 2 * N * N * C  # the textbook ViT layer at mlp ratio 4
    assert layer_macs(N, C, H) - layer_macs(N, C, H, shared=True) == 2 * N * C * C + N * N * C
    # ATS (docs/mechanisms.md section 2): 3 N C^2 + N^2 C + K N C + K C^2 + 8 K C^2
    K = 100
    assert layer_macs(N, C, H, n_out=K) == 3 * N * C * C + N * N * C + K * N * C + K * C * C + 8 * K * C * C
    assert layer_params(C, H) == 12 * C * C + 13 * C  # timm: 4C^2+4C attn, 8C^2+5C MLP, 4C norms
    assert layer_params(C, H) - layer_params(C, H, shared=True) == 2 * C * C + 2 * C
    assert layer_params(C, H, qkv_bias=False) - layer_params(C, H, shared=True, qkv_bias=False) == 2 * C * C


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_layer_cost_equals_a_block(shared, qkv_bias):
    N, C, heads, H = 11, 24, 3, 40
    block = Block(C, heads, H, qkv_bias=qkv_bias, shared=shared).eval()
    x = torch.randn(2, N, C)
    attn = torch.softmax(torch.randn(2, heads, N, N), -1) if shared else None

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = block

        def forward(self, t):
            return self.block(t, attn=attn)[0]

    assert count_macs(Wrap(), x) == 2 * layer_macs(N, C, H, shared)
    assert _n_params(block) == layer_params(C, H, shared, qkv_bias)


def test_deit_params_equal_timm():
    for name, published in [("deit_tiny_patch16_224", 5_717_416), ("deit_small_patch16_224", 22_050_664)]:
        with torch.device("meta"):  # shapes only: no init, no memory
            ours = _n_params(build_model(name))
            theirs = _n_params(timm.create_model(name, pretrained=False))
        assert cost(get_arch(name)).params == ours == theirs == published


REFERENCE_FILES = {
    # file: (registered arch, published MACs, tolerance, tokens per stage)
    "deit_tiny": ("deit_tiny_patch16_224", 1.26e9, 0.01, [197]),
    "deit_small": ("deit_small_patch16_224", 4.61e9, 0.01, [197]),
    "psvit_t1_deit_tiny": ("psvit_t1_deit_tiny_patch16_224", 1.3e9, 0.10, [197] * 3),
    "psvit_t1_dimension1": ("psvit_t1_dimension1_patch16_224", 1.3e9, 0.10, [197, 99, 50]),
    "psvit_t1_dimension2": ("psvit_t1_dimension2_patch16_224", 1.3e9, 0.10, [197, 99, 50]),
}


@pytest.mark.parametrize("stem", sorted(REFERENCE_FILES))
def test_reference_files(stem):
    name, published, tol, tokens = REFERENCE_FILES[stem]
    text = (REFERENCE / f"{stem}.yaml").read_text()
    d = yaml.safe_load(text)
    arch = load_arch(REFERENCE / f"{stem}.yaml")  # the validating loader
    assert arch == get_arch(name) and d == arch.to_dict()  # exactly the to_dict format
    c = cost(arch)
    assert abs(c.macs - published) <= tol * published
    assert stage_tokens(arch) == tokens
    with torch.device("meta"):
        model = build_model(arch)
    assert c.params == _n_params(model)
    if arch.pooling.type == "1d":  # the poolings exist even at equal widths (Dimension1)
        for pool, a, b in zip(model.poolings, arch.stages, arch.stages[1:]):
            assert pool.cls_proj.weight.shape == (b.dim, a.dim) and pool.conv.weight.shape == (b.dim, a.dim, 3)
    # the header comment states the figures of this very file
    stated = re.search(r"nas\.cost: ([\d,]+) MACs .*?([\d,]+) params", text)
    assert [int(g.replace(",", "")) for g in stated.groups()] == [c.macs, c.params]


def test_deit_tiny_published_figure():
    # 12 layers of 12 N C^2 + 2 N^2 C at N=197, C=192, patch conv 196*768*192, head 192*1000
    assert cost(get_arch("deit_tiny_patch16_224")).macs == 12 * layer_macs(197, 192, 768) + 196 * 768 * 192 + 192_000
    assert cost(get_arch("deit_tiny_patch16_224")).macs == 1_253_683_200


def test_psvit_dimension2_at_224_equals_flop_counter():
    """The one FlopCounterMode run at 224: 1d pooling with width changes at full size (about 0.3 s)."""
    torch.manual_seed(0)
    _check_equal(get_arch("psvit_t1_dimension2_patch16_224"))


def test_pooling_token_arithmetic():
    base = get_arch("psvit1d_test_patch4_32")  # 8x8 grid + cls
    assert stage_tokens(base) == [65, 33, 17]
    # an even kernel pads k//2 on both sides: 64 patches -> 65 conv outputs -> 33 pooled (+ cls)
    assert stage_tokens(replace(base, pooling=Pooling("1d", 2))) == [65, 34, 18]
    assert stage_tokens(replace(base, pooling=Pooling("2d", 3), head="gap")) == [64, 16, 4]
    assert stage_tokens(replace(base, pooling=Pooling("2d", 3))) == [65, 17, 5]   # cls kept beside the grid
    with pytest.raises(NasError, match="kernel"):
        cost(replace(base, pooling=Pooling("2d", 0)))
    with pytest.raises(NasError, match="need token pooling"):
        cost(replace(base, pooling=Pooling("none")))


def test_progressive_tokenizer_dispatch():
    pytest.importorskip("nas.mechanisms.progressive.model")
    stages = (Stage(32, 2, 2.0, ("basic",)), Stage(48, 2, 2.0, ("shared_pair",)))
    arch = Arch(32, 3, 10, ProgressiveTokenizer(points=4, iterations=2), stages, Pooling("1d", 3),
                qkv_bias=False, norm_eps=1e-5)
    torch.manual_seed(0)
    _check_equal(arch)
    assert stage_tokens(arch) == [17, 9]

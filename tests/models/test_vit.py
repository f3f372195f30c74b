"""Static models: layout, shared pairs, identity cells, token pooling shapes, heads, determinism, errors."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nas.arch import Arch, Pooling, Stage

from nas.mechanisms.patch import PatchTokenizer
from nas.errors import NasError
from nas.models import SharedPair, build_model, get_arch, list_archs, run_cells
from nas.models.layers import Block
from nas.models.pooling import TokenPool1d, TokenPool2d
from nas.shapes import pooled_len_1d, pooled_side_2d


def _img(size: int = 32, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_registry_and_build_by_name():
    assert {"deit_tiny_patch16_224", "deit_small_patch16_224", "vit_test_patch4_32", "psvit1d_test_patch4_32",
            "psvit2d_test_patch4_32"} <= set(list_archs())
    assert list_archs("psvit*_test_*") == ["psvit1d_test_patch4_32", "psvit2d_test_patch4_32"]
    assert get_arch("vit_test_patch4_32").name == "vit_test_patch4_32"
    torch.manual_seed(0)
    model = build_model("vit_test_patch4_32")
    assert model(_img()).shape == (2, 10)
    with pytest.raises(NasError, match="did you mean vit_test_patch4_32"):
        get_arch("vit_test_patch4_23")


def test_layout_maps_onto_the_arch():
    arch = get_arch("psvit1d_test_patch4_32")
    model = build_model(arch)
    assert len(model.stages) == 3 and len(model.poolings) == 2
    for stage, module in zip(arch.stages, model.stages):
        assert len(module.cells) == len(stage.cells)
        for kind, cell in zip(stage.cells, module.cells):
            assert type(cell) is {"basic": Block, "shared_pair": SharedPair, "identity": nn.Identity}[kind]
    pair = model.stages[0].cells[1]
    assert not pair.first.attn.shared and pair.second.attn.shared
    assert hasattr(pair.first.attn, "qkv") and not hasattr(pair.second.attn, "qkv")
    assert isinstance(model.poolings[0], TokenPool1d)
    assert model.poolings[0].conv.weight.shape == (48, 32, 3) and model.poolings[0].cls_proj.weight.shape == (48, 32)
    assert model.norm.normalized_shape == (64,) and model.head.weight.shape == (10, 64)
    # DeiT: the position table covers cls + 64 patches; trunc-normal(0.02) Linear weights, zero biases
    assert model.tokenizer.pos_embed.shape == (1, 65, 32)
    assert model.head.bias.abs().sum() == 0 and 0.01 < model.head.weight.std() < 0.03


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_sharing_layer_has_no_qk(qkv_bias):
    C, hidden = 48, 96
    basic = Block(C, 4, hidden, qkv_bias=qkv_bias)
    shared = Block(C, 4, hidden, qkv_bias=qkv_bias, shared=True)
    assert _n_params(basic) - _n_params(shared) == 2 * C * C + 2 * C * qkv_bias
    pair = SharedPair(C, 4, hidden, qkv_bias=qkv_bias)
    assert _n_params(pair.first) == _n_params(basic) and _n_params(pair.second) == _n_params(shared)


def test_shared_pair_uses_the_inherited_map():
    torch.manual_seed(0)
    C, h = 16, 2
    pair = SharedPair(C, h, 32).eval()
    x = torch.randn(2, 5, C)

    def mlp(blk, t):
        return blk.mlp.fc2(F.gelu(blk.mlp.fc1(t)))

    def heads(t):  # (B, N, C) -> (B, h, N, d)
        return t.reshape(2, 5, h, C // h).transpose(1, 2)

    def merge(o):  # (B, h, N, d) -> (B, N, C)
        return o.transpose(1, 2).reshape(2, 5, C)

    a, b = pair.first, pair.second
    q, k, v = (heads(t) for t in a.attn.qkv(a.norm1(x)).chunk(3, dim=-1))
    attn = ((q @ k.transpose(-2, -1)) * (C // h) ** -0.5).softmax(-1)          # (B, h, N, N)
    x1 = x + a.attn.proj(merge(attn @ v))
    x1 = x1 + mlp(a, a.norm2(x1))
    x2 = x1 + b.attn.proj(merge(attn @ heads(b.attn.v(b.norm1(x1)))))          # the first layer's map
    x2 = x2 + mlp(b, b.norm2(x2))
    with torch.no_grad():
        out, shared_map = pair(x)
        assert torch.allclose(out, x2, atol=1e-5)
        assert torch.allclose(shared_map, attn, atol=1e-6)
        # another map gives another output: the second layer really uses the one it is handed
        uniform = torch.full_like(attn, 1 / 5)
        assert not torch.allclose(b(x1, attn=uniform)[0], out, atol=1e-3)


def test_identity_cells_change_nothing():
    arch = get_arch("psvit1d_test_patch4_32")
    no_id = replace(arch, stages=tuple(replace(s, cells=tuple(c for c in s.cells if c != "identity"))
                                       for s in arch.stages))
    assert no_id != arch
    torch.manual_seed(3)
    with_identity = build_model(arch).eval()
    torch.manual_seed(3)
    without = build_model(no_id).eval()
    img = _img()
    with torch.no_grad():
        assert torch.equal(with_identity(img), without(img))  # identity cells draw no weights, compute nothing
    x = torch.randn(2, 7, 8)
    assert run_cells(nn.ModuleList([nn.Identity(), nn.Identity()]), x) is x


def test_pool1d_tokens_197_99_50_and_values():
    torch.manual_seed(0)
    p1, p2 = TokenPool1d(8, 12, 3), TokenPool1d(12, 16, 3)
    x = torch.randn(2, 197, 8)
    with torch.no_grad():
        y = p1(x)
        z = p2(y)
    assert y.shape == (2, 99, 12) and z.shape == (2, 50, 16)
    assert [pooled_len_1d(196, 3), pooled_len_1d(98, 3), pooled_len_1d(49, 3)] == [98, 49, 25]
    # cls through the Linear; patches: conv (stride 1, same length) then max over pairs, last one alone
    conv = F.conv1d(y[:, 1:].transpose(1, 2), p2.conv.weight, p2.conv.bias, padding=1)   # (B, 16, 98)
    assert torch.allclose(z[:, 0], p2.cls_proj(y[:, 0]), atol=1e-6)
    assert torch.allclose(z[:, 1:].transpose(1, 2), conv.reshape(2, 16, 49, 2).amax(-1), atol=1e-6)
    odd = TokenPool1d(4, 4, 3)(torch.randn(1, 1 + 49, 4))
    assert odd.shape == (1, 1 + 25, 4)


def test_pool2d_grid_order():
    torch.manual_seed(0)
    pool = TokenPool2d(8, 12, 3)
    x = torch.randn(2, 28 * 28, 8)  # row-major 28x28 grid, as PatchEmbed flattens it
    with torch.no_grad():
        y = pool(x)
        ref = pool.conv(x.transpose(1, 2).reshape(2, 8, 28, 28))
    assert y.shape == (2, 14 * 14, 12)
    assert torch.allclose(y, ref.flatten(2).transpose(1, 2))
    assert [pooled_side_2d(28, 3), pooled_side_2d(14, 3), pooled_side_2d(7, 3), pooled_side_2d(7, 2)] == [14, 7, 4, 3]


def _record_stage_inputs(model):
    seen = []
    for stage in model.stages:
        first = next(c for c in stage.cells if not isinstance(c, nn.Identity))
        first.register_forward_pre_hook(lambda m, args, kw: seen.append(tuple(args[0].shape)),
                                                 with_kwargs=True)
    return seen


def test_pool2d_model_28_14_7_with_gap_head():
    stages = tuple(Stage(d, 1, 1.0, ("basic",)) for d in (8, 16, 16))
    arch = Arch(112, 3, 5, PatchTokenizer(4), stages, Pooling("2d", 3), head="gap")
    assert not arch.has_cls_token
    torch.manual_seed(0)
    model = build_model(arch).eval()
    seen = _record_stage_inputs(model)
    img = _img(112, batch=1)
    with torch.no_grad():
        logits = model(img)
        feats = model.forward_features(img)
    assert seen[:3] == [(1, 784, 8), (1, 196, 16), (1, 49, 16)]  # 28x28 -> 14x14 -> 7x7, no cls
    assert model.tokenizer.cls_token is None and model.tokenizer.pos_embed.shape == (1, 784, 8)
    assert torch.allclose(logits, model.head(feats.mean(dim=1)), atol=1e-6)


def test_1d_model_token_counts_and_gap_excludes_cls():
    arch = replace(get_arch("psvit1d_test_patch4_32"), head="gap")
    torch.manual_seed(0)
    model = build_model(arch).eval()
    seen = _record_stage_inputs(model)
    img = _img(batch=1)
    with torch.no_grad():
        logits = model(img)
        feats = model.forward_features(img)
    assert [s[1] for s in seen[:3]] == [65, 33, 17]
    assert torch.allclose(logits, model.head(feats[:, 1:].mean(dim=1)), atol=1e-6)
    assert not torch.allclose(logits, model.head(feats.mean(dim=1)), atol=1e-4)


def test_2d_pooling_with_cls_head_keeps_cls():
    arch = replace(get_arch("psvit2d_test_patch4_32"), head="cls")
    assert arch.has_cls_token
    model = build_model(arch)
    assert model.poolings[0].cls_proj is not None
    assert model(_img()).shape == (2, 10)


def test_equal_widths_keep_pooling_weights_and_reload():
    """PSViT 'Dimension1': equal widths, the 1d poolings still have a conv and a cls Linear that round-trip."""
    stages = tuple(Stage(16, 2, 2.0, ("basic",)) for _ in range(3))
    arch = Arch(32, 3, 10, PatchTokenizer(8), stages, Pooling("1d", 3))
    torch.manual_seed(0)
    a = build_model(arch).eval()
    torch.manual_seed(1)
    b = build_model(arch).eval()
    keys = [k for k in a.state_dict() if k.startswith("poolings.")]
    assert sorted(keys) == sorted(f"poolings.{i}.{n}" for i in (0, 1)
                                  for n in ("cls_proj.weight", "cls_proj.bias", "conv.weight", "conv.bias"))
    img = _img()
    with torch.no_grad():
        assert not torch.allclose(a(img), b(img))
        b.load_state_dict(a.state_dict(), strict=True)
        assert torch.equal(a(img), b(img))


def test_determinism():
    img = _img()
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        model = build_model("psvit2d_test_patch4_32").eval()
        with torch.no_grad():
            outs += [model(img), model(img)]
    assert all(torch.equal(outs[0], o) for o in outs[1:])


def test_features_only_without_classes():
    model = build_model(replace(get_arch("vit_test_patch4_32"), num_classes=0))
    assert isinstance(model.head, nn.Identity) and model(_img()).shape == (2, 32)


@pytest.mark.parametrize("change, key", [
    (dict(stages=(Stage(30, 4, 2.0, ("basic",)),)), "stages[0].heads"),
    (dict(stages=(Stage(32, 2, 2.0, ("basic",)), Stage(48, 2, 2.0, ("basic",)))), "pooling.type"),
    (dict(stages=(Stage(32, 2, 2.0, ("bassic",)),)), "stages[0].cells[0]"),
    (dict(tokenizer=PatchTokenizer(5)), "tokenizer.patch_size"),
    (dict(head="max"), "head"),
    (dict(stages=()), "stages"),
])
def test_user_errors_are_nas_errors(change, key):
    with pytest.raises(NasError) as err:
        build_model(replace(get_arch("vit_test_patch4_32"), **change))
    assert err.value.key == key

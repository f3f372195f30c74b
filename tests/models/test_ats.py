"""ATS (arXiv 2111.15667): sampling rule, block forward, batch invariance, per-image MACs, weight sharing."""
from __future__ import annotations

import math

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch.utils.flop_counter import FlopCounterMode

from nas.cost import layer_macs, reduced_layers_bounds
from nas.errors import NasError
from nas.mechanisms.ats.model import (
    apply_ats, ats_block, inverse_transform_sample, kept_indices, masked_block, significance, take_rows,
    token_budget,
)
from nas.models.layers import Block
from nas.mechanisms.ats import ATS, ats_budget as budget, ats_max_kept, MECHANISM

P = 64  # patch tokens of the tiny ViT: 32x32 images, 4x4 patches


def tiny_vit(seed: int = 0, fused: bool = True, **kw) -> VisionTransformer:
    torch.manual_seed(seed)
    m = VisionTransformer(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, num_classes=10, **kw)
    set_fused(m, fused)
    return m.eval()


def set_fused(model: torch.nn.Module, fused: bool) -> None:
    for mod in model.modules():
        if hasattr(mod, "fused_attn"):
            mod.fused_attn = fused


def peaky_(model: torch.nn.Module, std: float = 0.3, seed: int = 1) -> None:
    """Large weights: sharp cls attention, so images keep different numbers of tokens."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, std)


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def flop_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    return fc.get_total_flops() // 2


def reference_inverse_cdf(scores: list[float], k: int) -> set[int]:
    """Independent loop version: ascending stable order, first token whose running sum reaches each quantile."""
    order = sorted(range(len(scores)), key=lambda j: scores[j])
    picked = set()
    for i in range(1, k + 1):
        q, c = (2 * i - 1) / (2 * k), 0.0
        for j in order:
            c += scores[j]
            if c >= q:
                picked.add(j)
                break
        else:
            picked.add(order[-1])
    return picked


# --- the budget --------------------------------------------------------------------------------------------
def test_budget_rule_and_errors():
    assert budget(196, keep=0.72) == 141 and budget(196, keep=0.87) == 171 and budget(196, keep=1.0) == 196
    assert budget(10, keep=0.5) == 8 and budget(5, keep=0.5) == 5      # floor of 8, capped at N_in
    # k is the number of quantiles drawn whatever N_in is (the ATS authors' fixed 196); kept <= min(k, N_in)
    assert budget(196, k=108) == 108 and budget(50, k=108) == 108 and budget(50, k=197) == 197
    assert ats_max_kept(50, k=197) == 50 and ats_max_kept(196, k=108) == 108 and ats_max_kept(5, keep=0.5) == 5
    n = torch.arange(0, 300)
    for keep in (0.72, 0.87, 0.5, 1.0, 0.1):
        assert token_budget(n, keep=keep).tolist() == [budget(int(i), keep=keep) for i in n]
    assert token_budget(n, k=48).tolist() == [48] * len(n)
    for bad in (dict(), dict(keep=0.5, k=3), dict(keep=0.0), dict(keep=1.5), dict(k=0), dict(k=2.5)):
        with pytest.raises(NasError):
            budget(10, **bad)


# --- scores and sampling --------------------------------------------------------------------------------------
def test_significance_formula_with_mask():
    g = torch.Generator().manual_seed(0)
    B, h, N, d = 2, 3, 7, 4
    a = torch.randn(B, h, N, N, generator=g).softmax(-1)
    v = torch.randn(B, h, N, d, generator=g)
    mask = torch.tensor([[True] * 7, [True] * 5 + [False] * 2])
    s = significance(a, v, mask)
    for b in range(B):
        raw = [sum(float(a[b, hh, 0, j]) for hh in range(h)) * math.sqrt(float((v[b, :, j] ** 2).sum()))
               for j in range(1, N)]
        raw = [r if mask[b, j + 1] else 0.0 for j, r in enumerate(raw)]
        ref = [r / sum(raw) for r in raw]
        assert s[b].tolist() == pytest.approx(ref, rel=1e-5, abs=1e-12)
    assert s[1, 4:].eq(0).all() and s.sum(-1).tolist() == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("n", [1, 2, 7, 64, 196])
def test_uniform_scores_keep_exactly_K(n):
    s = torch.full((1, n), 1.0 / n, dtype=torch.float64)
    for k in range(1, n + 1):
        sel = inverse_transform_sample(s, torch.tensor([k]))
        assert int(sel.sum()) == k


def test_exact_tie_takes_the_first_token_reaching_the_quantile():
    s = torch.full((1, 4), 0.25, dtype=torch.float64)        # CDF 1/4, 1/2, 3/4, 1; quantiles 1/4, 3/4
    assert inverse_transform_sample(s, torch.tensor([2]))[0].tolist() == [True, False, True, False]


def test_dominant_token_gives_one():
    s = torch.full((1, 64), 0.001 / 63, dtype=torch.float64)
    s[0, 17] = 0.999
    for k in range(1, 64):
        sel = inverse_transform_sample(s, torch.tensor([k]))
        assert sel[0].nonzero().flatten().tolist() == [17]


def test_sampling_matches_reference_and_paper_bounds():
    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        n = int(torch.randint(2, 40, (1,), generator=g))
        s = torch.rand(n, generator=g, dtype=torch.float64) ** float(torch.randint(1, 8, (1,), generator=g))
        s = s / s.sum()
        for k in (1, max(1, n // 3), n - 1, n):
            sel = inverse_transform_sample(s[None], torch.tensor([k]))[0]
            assert set(sel.nonzero().flatten().tolist()) == reference_inverse_cdf(s.tolist(), k)
            kp = int(sel.sum())
            assert 1 <= kp <= k
            if float(s.max()) >= 2 / k:       # the paper: K' < K whenever one token has score >= 2/K
                assert kp < k


def test_sampling_per_image_budget_and_padding():
    g = torch.Generator().manual_seed(1)
    s = torch.rand(3, 20, generator=g, dtype=torch.float64) ** 4
    s[2, 12:] = 0                                           # image 2: 12 real tokens, 8 padded
    s = s / s.sum(-1, keepdim=True)
    k = torch.tensor([5, 20, 9])
    sel = inverse_transform_sample(s, k)
    for b in range(3):
        alone = inverse_transform_sample(s[b:b + 1, : 12 if b == 2 else 20], k[b:b + 1])[0]
        assert sel[b, : alone.numel()].tolist() == alone.tolist()
    assert not sel[2, 12:].any()


def test_kept_indices_order_and_padding():
    sel = torch.tensor([[False, True, False, True], [False, False, True, False]])
    index, mask = kept_indices(sel)
    assert index.tolist() == [[0, 2, 4], [0, 3, -1]]
    assert mask.tolist() == [[True, True, True], [True, True, False]]


# --- the block forward ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 2, 7, 7), (3, 7, 5), (2, 2, 3, 6, 4)])
def test_take_rows_equals_gather_values_and_gradients(shape):
    g = torch.Generator().manual_seed(0)
    t = torch.randn(*shape, dtype=torch.float64, generator=g, requires_grad=True)
    B, N, D = shape[0], shape[-2], shape[-1]
    rows = torch.randint(0, N, (B, 5), generator=g)            # duplicates included, as padding rows are
    index = rows.view(B, *[1] * (len(shape) - 3), 5, 1).expand(*shape[:-2], 5, D)
    ref, out = t.gather(-2, index), take_rows(t, rows)
    assert torch.equal(out, ref)
    w = torch.randn(out.shape, dtype=torch.float64, generator=g)
    assert torch.equal(torch.autograd.grad(out, t, w)[0], torch.autograd.grad(ref, t, w)[0])
    tt = t.detach().transpose(-1, -2)                           # a non-contiguous input
    rows = rows.clamp(max=D - 1)
    idx = rows.view(B, *[1] * (len(shape) - 3), 5, 1).expand(*tt.shape[:-2], 5, N)
    assert torch.equal(take_rows(tt, rows), tt.gather(-2, idx))


@pytest.mark.parametrize("kind", ["timm", "nas"])
def test_kept_rows_equal_plain_block_rows(kind):
    """An ATS block computes each kept row exactly as the plain block does: attention over all keys."""
    torch.manual_seed(0)
    block = tiny_vit().blocks[0] if kind == "timm" else Block(32, 2, 128).eval()
    peaky_(block)
    x = torch.randn(3, P + 1, 32)
    with torch.no_grad():
        plain = masked_block(block, x)
        out = ats_block(block, x, keep=0.5)
    assert out.mask.sum(1).le(1 + budget(P, keep=0.5)).all()
    for b in range(3):
        rows = out.index[b][out.mask[b]]
        assert rows[0] == 0 and rows.diff().gt(0).all()                # cls first, original order
        torch.testing.assert_close(out.x[b][out.mask[b]], plain[b, rows], rtol=1e-5, atol=1e-5)
        assert out.x[b][~out.mask[b]].eq(0).all()


def uniform_score_vit() -> VisionTransformer:
    """A tiny ViT whose blocks give exactly balanced cls scores: Q = 0 (uniform attention) and an orthogonal
    V with no bias (||v_j|| = ||norm1(x_j)||, the same for every token up to LayerNorm's eps)."""
    m = tiny_vit(seed=3, fused=False)
    peaky_(m, std=0.2, seed=3)
    with torch.no_grad():
        for blk in m.blocks:
            C = blk.attn.proj.in_features
            blk.attn.qkv.weight[:C].zero_()
            blk.attn.qkv.bias[:C].zero_()
            blk.attn.qkv.weight[2 * C:] = torch.linalg.qr(torch.randn(C, C))[0]
            blk.attn.qkv.bias[2 * C:].zero_()
            blk.norm1.weight.fill_(1.0)
            blk.norm1.bias.zero_()
    return m


def test_full_K_with_uniform_scores_is_the_plain_vit():
    m = uniform_score_vit()
    ats = apply_ats(m, [1, 2, 3], k=P)                      # K = N - 1
    x = images(3)
    with torch.no_grad():
        torch.testing.assert_close(ats(x), m(x), rtol=1e-5, atol=1e-5)
    assert all(p.ge(0).all() and p.shape[1] == P + 1 for p in ats.last_kept)
    assert ats.last_macs.tolist() == [ats.macs_bounds()[1]] * 3  # worst case = plain ViT cost
    peaky_(m)                                               # the same check fails once scores are not balanced
    with torch.no_grad():
        y_ats, y = ats(x), m(x)
    assert any(p.shape[1] < P + 1 for p in ats.last_kept) and not torch.allclose(y_ats, y, atol=1e-3)


def test_any_K_runs():
    m = tiny_vit()
    peaky_(m)
    x = images(2)
    for k in range(1, P + 1):
        ats = apply_ats(m, [1, 3], k=k)
        with torch.no_grad():
            y = ats(x)
        assert y.shape == (2, 10) and torch.isfinite(y).all()
        n1 = ats.last_kept[0].ge(0).sum(1) - 1
        assert n1.le(k).all() and n1.ge(1).all()


@pytest.mark.parametrize("fused", [True, False])
def test_batch_invariance(fused):
    m = tiny_vit(fused=fused)
    peaky_(m)
    ats = apply_ats(m, [1, 2, 3], keep=0.72)
    x = images(4, seed=5)
    with torch.no_grad():
        y = ats(x)
        kept = [p.clone() for p in ats.last_kept]
        macs = ats.last_macs.clone()
        assert len(set(kept[0].ge(0).sum(1).tolist())) > 1      # images keep different K'
        for b in range(4):
            yb = ats(x[b:b + 1])
            torch.testing.assert_close(yb[0], y[b], rtol=0, atol=1e-5)
            assert int(ats.last_macs[0]) == int(macs[b])
            for p_alone, p_batch in zip(ats.last_kept, kept):
                assert p_alone[0].tolist() == p_batch[b][p_batch[b] >= 0].tolist()


def test_nas_block_batch_invariance_with_padding():
    torch.manual_seed(0)
    blocks = [Block(32, 2, 64).eval() for _ in range(3)]
    for blk in blocks:
        peaky_(blk)
    x = torch.randn(3, 17, 32)

    def run(x):
        x, mask, _ = ats_block(blocks[0], x, keep=0.5)
        x = masked_block(blocks[1], x, mask)
        x, mask, _ = ats_block(blocks[2], x, mask, k=4)
        return x[:, 0], mask.sum(1)

    with torch.no_grad():
        cls, n = run(x)
        assert len(set(n.tolist())) > 1
        for b in range(3):
            cb, nb = run(x[b:b + 1])
            torch.testing.assert_close(cb[0], cls[b], rtol=0, atol=1e-5)
            assert int(nb[0]) == int(n[b])


@pytest.mark.parametrize("fused", [True, False])
def test_masked_timm_block_on_padding(fused):
    block = tiny_vit(fused=fused).blocks[0]
    peaky_(block)
    x = torch.randn(2, 9, 32)
    mask = torch.tensor([[True] * 9, [True] * 6 + [False] * 3])
    x[1, 6:] = 0
    with torch.no_grad():
        y = masked_block(block, x, mask)
        torch.testing.assert_close(y[1, :6], block(x[1:2, :6])[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(y[0], block(x[:1])[0], rtol=0, atol=1e-5)
    assert y[1, 6:].eq(0).all()


# --- MACs -------------------------------------------------------------------------------------------------
def test_block_formulas():
    for n in (1, 5, 65, 197):
        assert layer_macs(n, 384, 1536, n_out=n) == layer_macs(n, 384, 1536)
    # the paper's form of the ATS block cost
    n, kk, C, H = 197, 109, 384, 1536
    assert layer_macs(n, C, H, n_out=kk) == 3 * n * C * C + n * n * C + kk * n * C + kk * C * C + 2 * kk * C * H
    # sharing block: V, AV, proj, MLP only
    assert layer_macs(10, 8, 32, shared=True) == 10 * 64 + 100 * 8 + 10 * 64 + 2 * 10 * 8 * 32


def test_plain_formula_matches_flop_counter():
    m = tiny_vit(fused=False)
    fixed = m.patch_embed.proj.weight.numel() * P + m.head.weight.numel()
    assert flop_macs(m, images(1)) == fixed + 4 * layer_macs(P + 1, 32, 128)


@pytest.mark.parametrize("blocks,kw", [([1, 2, 3], dict(keep=0.72)), ([1], dict(k=20)), ([0, 2], dict(keep=0.3))])
def test_recorded_macs_equal_flop_counter_alone(blocks, kw):
    m = tiny_vit(fused=False)
    peaky_(m)
    ats = apply_ats(m, blocks, **kw)
    x = images(4, seed=2)
    with torch.no_grad():
        ats(x)
    macs = ats.last_macs.clone()
    lo, hi = ats.macs_bounds()
    for b in range(4):
        assert flop_macs(ats, x[b:b + 1]) == int(macs[b])
        assert lo <= int(macs[b]) <= hi


def test_deit_s_bounds_match_published_figures():
    fixed = 768 * 384 * 196 + 384 * 1000                    # patch embedding + head

    def bounds(blocks, **kw):
        layers = [(384, 1536, False, i in blocks) for i in range(12)]
        lo, hi = reduced_layers_bounds(197, layers, MECHANISM, ATS((), kw.get("keep"), kw.get("k")))
        return fixed + lo, fixed + hi

    deit = bounds([3], keep=1.0)
    assert deit == (deit[0], 4_598_882_304)                 # DeiT-S 4.61G (docs/mechanisms.md), no token removed
    # single-stage DeiT-S+ATS at block 3: the paper reports about 3, 2.5 and 2 GFLOPs on average for
    # K = 108, 78, 48; the worst case (K' = K) lies just above each
    for k, paper in ((108, 3.0e9), (78, 2.5e9), (48, 2.0e9)):
        lo, hi = bounds([3], k=k)
        assert paper <= hi <= 1.04 * paper and lo < hi
    # multi-stage worst case shrinks with rho; best case: one patch token left after block 3
    his = [bounds(range(3, 12), keep=r)[1] for r in (1.0, 0.87, 0.72)]
    assert his[0] == 4_598_882_304 and his[0] > his[1] > his[2]
    # the paper's multi-stage averages (about 3, 2.5, 2 GFLOPs for rho = 1, 0.87, 0.72) sit below them
    assert all(avg < hi < avg * 1.6 for avg, hi in zip((3.0e9, 2.5e9, 2.0e9), his))
    lo = bounds(range(3, 12), keep=0.72)[0]
    assert lo == fixed + 3 * layer_macs(197, 384, 1536) + layer_macs(197, 384, 1536, n_out=2) + 8 * layer_macs(
        2, 384, 1536, n_out=2)
    # the authors' 196 draws in every block: the worst case keeps every token, i.e. plain DeiT-S
    assert bounds(range(3, 12), k=196)[1] == bounds(range(3, 12), k=500)[1] == 4_598_882_304


# --- the wrapper: weights, training, errors ---------------------------------------------------------------------
def test_weights_are_shared_not_copied():
    m = tiny_vit()
    ats = apply_ats(m, [1, 2, 3], keep=0.72)
    ours = dict(ats.vit.named_parameters())
    for name, p in m.named_parameters():
        assert ours[name] is p and ours[name].data_ptr() == p.data_ptr()
    assert sum(1 for _ in ats.parameters()) == sum(1 for _ in m.parameters())
    with torch.no_grad():
        m.head.weight.add_(1.0)                             # a change to the original shows in the ATS model
    assert torch.equal(ats.vit.head.weight, m.head.weight)


def test_backward_reaches_weights():
    m = tiny_vit(drop_path_rate=0.1).train()
    peaky_(m, std=0.1)
    ats = apply_ats(m, [1, 2, 3], keep=0.72)
    y = ats(images(2))
    torch.nn.functional.cross_entropy(y, torch.tensor([1, 2])).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert ats.last_macs.shape == (2,)


def test_avg_pool_ignores_padding():
    m = tiny_vit(global_pool="avg", class_token=True)
    peaky_(m)
    ats = apply_ats(m, [1, 2], keep=0.5)
    x = images(3, seed=4)
    with torch.no_grad():
        y = ats(x)
        for b in range(3):
            torch.testing.assert_close(ats(x[b:b + 1])[0], y[b], rtol=0, atol=1e-5)


def test_apply_errors():
    m = tiny_vit()
    for bad in ([], [4], [1, 1], [-1]):
        with pytest.raises(NasError):
            apply_ats(m, bad, keep=0.5)
    with pytest.raises(NasError):
        apply_ats(m, [1])
    with pytest.raises(NasError):
        apply_ats(tiny_vit(class_token=False, global_pool="avg"), [1], keep=0.5)
    with pytest.raises(NasError):
        apply_ats(torch.nn.Linear(2, 2), [0], keep=0.5)


def test_deit_small():  # about 1 s: one 224x224 image
    import timm
    m = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
    set_fused(m, False)
    ats = apply_ats(m, range(3, 12), keep=0.72)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    assert flop_macs(m, x) == 4_598_882_304
    assert flop_macs(ats, x) == int(ats.last_macs[0])
    lo, hi = ats.macs_bounds()
    assert lo <= int(ats.last_macs[0]) <= hi < 4_598_882_304
    assert next(ats.parameters()) is next(m.parameters())


# --- k above the tokens left (the authors' fixed number of draws) ------------------------------------------------
def test_k_above_the_tokens_left_draws_k_quantiles(monkeypatch):
    """The ATS authors' DeiT-S draws the same number of quantiles (196, one per input patch) in every ATS block,
    also after earlier blocks dropped tokens. A k above the tokens left means the same here: every block draws
    k quantiles over its real tokens and keeps each token hit, so K' = the distinct tokens of k draws."""
    import nas.mechanisms.ats.model as ats_mod

    m = tiny_vit(fused=False)
    peaky_(m, std=0.15)
    calls = []
    real = ats_mod.inverse_transform_sample

    def spy(scores, k):
        selected = real(scores, k)
        calls.append((scores.clone(), k.clone(), selected.clone()))
        return selected

    monkeypatch.setattr(ats_mod, "inverse_transform_sample", spy)
    x = images(4, seed=3)
    K = P  # the authors' rule at this size: as many draws as input patches, in every block
    with torch.no_grad():
        ats = apply_ats(m, [1, 2, 3], k=K)
        ats(x)
    assert len(calls) == 3
    more_than_capped = 0
    for b, (scores, k, selected) in enumerate(calls):
        assert k.tolist() == [K] * 4                      # K draws whatever is left
        for i in range(4):
            real_tokens = int((scores[i] > 0).sum())
            picked = reference_inverse_cdf(scores[i].tolist(), K)   # K quantiles, inverse CDF, unique
            assert set(selected[i].nonzero().flatten().tolist()) == picked
            assert int((ats.last_kept[b][i] > 0).sum()) == len(picked) <= real_tokens
            # the capped rule (K = N_in draws) keeps at most as many, and fewer once tokens were dropped
            capped = len(reference_inverse_cdf(scores[i].tolist(), real_tokens))
            assert capped <= len(picked)
            more_than_capped += capped < len(picked)
    assert more_than_capped > 0                           # the two rules differ on this model


def test_k_above_tokens_is_a_valid_space(tmp_path):
    from dataclasses import replace

    from nas.cost import cost
    from nas.models import build_model
    from nas.space import load_space

    path = tmp_path / "k.yaml"
    path.write_text("name: k\ninput: {size: 32, channels: 3}\nnum_classes: 10\n"
                    "tokenizer: {type: patch, patch_size: 8}\n"
                    "stages:\n  - {dim: 16, heads: 2, mlp_ratio: 2, cells: [basic, basic, basic]}\n"
                    "ats: {blocks: [1, 2], k: {choice: [4, 196]}}\n")
    space = load_space(path)
    archs = [space.decode([0]), space.decode([1])]
    plain = cost(replace(archs[1], reduction=None))
    assert cost(archs[1]).macs_max == plain.macs                # 196 draws over 16 tokens: all may stay
    assert cost(archs[0]).macs_max < plain.macs
    assert space.cost_bounds()["max_macs"] == plain.macs
    model = build_model(archs[1]).eval()
    with torch.no_grad():
        model(images(2))
    assert all(int(n) <= plain.macs for n in model.last_macs)


def test_hybrid_vit_is_refused():
    """A CNN stem before the patch projection (timm's HybridEmbed) would be left out of the recorded MACs."""
    import timm

    m = timm.create_model("vit_tiny_r_s16_p8_224", pretrained=False, img_size=64).eval()
    with pytest.raises(NasError, match="hybrid"):
        apply_ats(m, [1], keep=0.5)

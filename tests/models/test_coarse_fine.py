"""CF-ViT (arXiv 2203.03821; docs/mechanisms.md section 4): sequence construction, region choice, early exit, batch invariance,
per-image MACs against FlopCounterMode, loss, warm-up, and the published DeiT-S figures (analytic)."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from nas.arch import Arch, Pooling, Stage

from nas.mechanisms.coarse_fine import coarse_fine_macs, CoarseFineTokenizer, CoarseFineTraining, num_regions
from nas.cost import cost
from nas.errors import NasError
from nas.models import build_model
from nas.mechanisms.coarse_fine.model import CoarseFineViT, coarse_fine_loss, region_fine_index, select_regions
from nas.models.layers import Attention, Block
from nas.space import load_arch, load_space
from tests.helpers import count_macs

SPACES = Path(__file__).resolve().parents[2] / "spaces"
REFERENCE = SPACES / "reference"
C, G, P = 32, 7, 4  # width, coarse grid, patch: 56x56 input, 28x28 coarse image, 14x14 fine grid


def tiny_arch(cells: tuple[str, ...] = ("basic", "basic", "shared_pair"), eta: float = 1.0, alpha: float = 0.5,
              stages: int = 1) -> Arch:
    """56x56 input, patch 4, c = 7, dim 32: 50 coarse tokens, 125 fine tokens (alpha 0.5)."""
    st = tuple(Stage(C, 2, 2.0, cells) for _ in range(stages))
    return Arch(2 * G * P, 3, 10, CoarseFineTokenizer(P, G, alpha, eta), st)


def tiny_model(seed: int = 0, **kw) -> CoarseFineViT:
    torch.manual_seed(seed)
    return build_model(tiny_arch(**kw)).eval()


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 2 * G * P, 2 * G * P, generator=torch.Generator().manual_seed(seed))


def confidences(model: CoarseFineViT, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([model.forward_coarse(x[i:i + 1]).logits.softmax(-1).amax() for i in range(len(x))])


def mixed_eta(conf: torch.Tensor) -> float:
    """A threshold halfway between two middle confidences: about half the images exit, half go fine."""
    s = conf.sort().values
    i = len(s) // 2
    return float(s[i - 1] + s[i]) / 2


# --- shapes -----------------------------------------------------------------------------------------------
def test_fine_sequence_length_and_warmup():
    m, x = tiny_model(), images(2)
    with torch.no_grad():
        co = m.forward_coarse(x)
        assert co.embed.shape == (2, 1 + G * G, C) and co.gca.shape == (2, G * G)
        assert m.fine_sequence(x, co).shape == (2, 125, C)                    # 1 + 4*25 + 24
        assert m.fine_sequence(x, co, warmup=True).shape == (2, 1 + (2 * G) ** 2, C)
    assert num_regions(7, 0.5) == 25 and num_regions(9, 0.5) == 41 and num_regions(10, 0.7) == 70


def test_build_model_and_cost_dispatch():
    arch = tiny_arch()
    m = build_model(arch)
    assert isinstance(m, CoarseFineViT)
    coarse, fine = coarse_fine_macs(arch)
    assert (cost(arch).macs_min, cost(arch).macs_max, cost(arch).macs) == (coarse, coarse + fine, coarse + fine)
    assert cost(arch).params == sum(p.numel() for p in m.parameters())
    # two position tables, one patch embedding
    assert m.tokenizer.pos_embed.shape == (1, 1 + (2 * G) ** 2, C)
    assert m.tokenizer.pos_embed_coarse.shape == (1, 1 + G * G, C)


@pytest.mark.parametrize("cells,stages", [(("basic",), 1), (("shared_pair", "identity"), 2),
                                          (("basic", "basic", "shared_pair"), 1)])
def test_params_exact(cells, stages):
    arch = tiny_arch(cells=cells, stages=stages)
    assert cost(arch).params == sum(p.numel() for p in build_model(arch).parameters())


# --- region selection and the fine sequence ---------------------------------------------------------------
def test_select_regions_ties_by_index():
    g = torch.tensor([[0.5, 0.1, 0.5, 0.5, 0.2], [0.0, 0.0, 0.0, 0.0, 0.0]])
    top, rest = select_regions(g, 2)
    assert top.tolist() == [[0, 2], [0, 1]] and rest.tolist() == [[1, 3, 4], [2, 3, 4]]
    assert region_fine_index(2).tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]


def capture_maps(model: torch.nn.Module) -> list[torch.Tensor]:
    """The attention maps every layer uses, in order, appended on each forward (hooks, fused attention off)."""
    maps = []
    for mod in model.modules():
        if isinstance(mod, Attention):
            mod.fused_attn = False
            mod.register_forward_hook(lambda mod, inp, out: maps.append(out[1]))
    return maps


def test_global_class_attention_layers_3_to_last():
    """GCA = EMA over the maps layers 3..L-1 use (a sharing layer contributes its inherited map), counted by
    hooks on every attention module, independently of the model's own loop."""
    m, x = tiny_model(cells=("basic", "shared_pair", "basic", "shared_pair")), images(2)  # 6 layers
    maps = capture_maps(m)
    with torch.no_grad():
        gca = m.forward_coarse(x).gca
    assert len(maps) == 6
    g = torch.zeros(2, 2, G * G)
    for a in maps[3:]:
        g = 0.99 * g + 0.01 * a[:, :, 0, 1:]
    torch.testing.assert_close(gca, g.mean(dim=1), rtol=1e-5, atol=1e-9)


def test_few_layers_use_the_last_layer():
    m = tiny_model(cells=("basic", "shared_pair"))  # 3 layers: GCA from layer 2 only
    assert m.gca_start == 2
    maps = capture_maps(m)
    with torch.no_grad():
        gca = m.forward_coarse(images(1)).gca
    torch.testing.assert_close(gca, 0.01 * maps[-1][:, :, 0, 1:].mean(dim=1))


def test_fine_sequence_content():
    """Informative regions: their 4 fine patches (conv on the full image crop) + fine positions + reuse;
    the others: coarse embedding of the bilinear (align_corners) resized image + coarse positions."""
    m, x = tiny_model(), images(1, seed=3)
    with torch.no_grad():
        co = m.forward_coarse(x)
        seq = m.fine_sequence(x, co)
        top, rest = select_regions(co.gca, 25)
        # independent expectations
        conv = m.tokenizer.patch_embed.proj
        reuse = m.reuse.mlp(m.reuse.norm(co.tokens[0, 1:]))                         # (49, C)
        pos_f, pos_c = m.tokenizer.pos_embed[0], m.tokenizer.pos_embed_coarse[0]
        small = F.interpolate(x, size=(G * P, G * P), mode="bilinear", align_corners=True)
        t = 1
        for r in top[0].tolist():
            i, j = divmod(r, G)
            for a, b in ((0, 0), (0, 1), (1, 0), (1, 1)):
                y0, x0 = (2 * i + a) * P, (2 * j + b) * P
                emb = conv(x[:, :, y0:y0 + P, x0:x0 + P]).flatten()
                f = (2 * i + a) * 2 * G + (2 * j + b)
                torch.testing.assert_close(seq[0, t], emb + pos_f[1 + f] + reuse[r], rtol=1e-5, atol=1e-6)
                t += 1
        for r in rest[0].tolist():
            i, j = divmod(r, G)
            emb = conv(small[:, :, i * P:(i + 1) * P, j * P:(j + 1) * P]).flatten()
            torch.testing.assert_close(seq[0, t], emb + pos_c[1 + r], rtol=1e-5, atol=1e-6)
            t += 1
        assert t == 125
        torch.testing.assert_close(seq[0, 0], m.tokenizer.cls_token[0, 0] + pos_f[0])
        # the chosen regions are the top 25 by GCA
        assert co.gca[0, top[0]].min() >= co.gca[0, rest[0]].max()


def test_feature_reuse_reaches_informative_tokens_only():
    m, x = tiny_model(), images(2, seed=1)
    with torch.no_grad():
        co = m.forward_coarse(x)
        before = m.fine_sequence(x, co)
        for p in m.reuse.mlp.parameters():
            p.add_(0.1 * torch.randn_like(p))
        after = m.fine_sequence(x, co)
    k = 4 * 25
    diff = (after - before).abs().amax(dim=-1)   # (B, 125)
    assert (diff[:, 1:1 + k] > 1e-4).all()        # every informative fine token changed
    assert (diff[:, 0] == 0).all() and (diff[:, 1 + k:] == 0).all()  # cls and coarse tokens did not


# --- inference: early exit, batch invariance, per-image MACs ------------------------------------------------
def test_eta_extremes_and_batch_size_one():
    m, x = tiny_model(), images(3)
    c = cost(m.arch)
    with torch.no_grad():
        coarse_logits, fine_logits = m.forward_train(x)
        m.exit_threshold = 0.0
        y0 = m(x)
        assert m.last_macs.dtype == torch.int64 and m.last_macs.tolist() == [c.macs_min] * 3
        torch.testing.assert_close(y0, coarse_logits)
        m.exit_threshold = 1.5
        y1 = m(x)
        assert m.last_macs.tolist() == [c.macs_max] * 3
        torch.testing.assert_close(y1, fine_logits)
        for eta in (0.0, 1.5):
            m.exit_threshold = eta
            assert m(x[:1]).shape == (1, 10) and m.last_macs.shape == (1,)


def test_analytic_macs_equal_counted_runs():
    m, x = tiny_model(), images(1)
    c = cost(m.arch)
    m.exit_threshold = 0.0
    assert count_macs(m, x) == c.macs_min
    m.exit_threshold = 2.0
    assert count_macs(m, x) == c.macs_max
    # independent formula for the tiny arch: layers (basic, basic, shared) with hidden 64, head 32x10
    def layers(n):
        full = 4 * n * C * C + 2 * n * n * C + 2 * n * C * 64
        return 4 * full - (2 * n * C * C + n * n * C)  # 4 layers, the last shares (no Q, K, Q K^T)
    coarse = 49 * 48 * C + layers(50) + C * 10
    fine = 196 * 48 * C + 2 * 49 * C * 4 * C + layers(125) + C * 10
    assert (c.macs_min, c.macs_max) == (coarse, coarse + fine)


def test_batch_invariance_and_per_image_macs():
    m, x = tiny_model(seed=2, cells=("basic", "shared_pair", "basic", "basic")), images(6, seed=5)
    m.exit_threshold = mixed_eta(confidences(m, x))
    c = cost(m.arch)
    with torch.no_grad():
        batched = m(x)
        macs = m.last_macs.clone()
    assert set(macs.tolist()) == {c.macs_min, c.macs_max}  # a mix of exiting and non-exiting images
    # only the images that need it run the fine pass: the whole batch executes exactly the recorded sum
    assert count_macs(m, x) == int(macs.sum())
    for i in range(len(x)):
        with torch.no_grad():
            alone = m(x[i:i + 1])
        assert m.last_macs.tolist() == [int(macs[i])]
        assert count_macs(m, x[i:i + 1]) == int(macs[i])           # recorded == counted, image alone
        torch.testing.assert_close(alone[0], batched[i], rtol=0, atol=1e-5)
    # a different batch composition (reversed, with repeats) gives the same logits per image
    perm = torch.tensor([5, 4, 3, 2, 1, 0, 0])
    with torch.no_grad():
        torch.testing.assert_close(m(x[perm]), batched[perm], rtol=0, atol=1e-5)


def test_exit_rule_matches_coarse_confidence():
    m, x = tiny_model(seed=2), images(6, seed=5)
    conf = confidences(m, x)
    m.exit_threshold = mixed_eta(conf)
    with torch.no_grad():
        coarse_logits, fine_logits = m.forward_train(x)
        y = m(x)
    exits = conf >= m.exit_threshold
    assert 0 < exits.sum() < len(x)
    torch.testing.assert_close(y[exits], coarse_logits[exits], rtol=0, atol=1e-5)
    torch.testing.assert_close(y[~exits], fine_logits[~exits], rtol=0, atol=1e-5)


# --- training -----------------------------------------------------------------------------------------------
def test_loss_formula_and_kl_direction():
    torch.manual_seed(0)
    cl, fl, y = torch.randn(4, 10, requires_grad=True), torch.randn(4, 10, requires_grad=True), torch.arange(4)
    loss = coarse_fine_loss(cl, fl, y)
    pf, pc = fl.softmax(-1), cl.softmax(-1)
    expected = F.cross_entropy(fl, y) + (pf * (pf.log() - pc.log())).sum() / 4
    torch.testing.assert_close(loss, expected)
    loss.backward()
    ce_grad = torch.autograd.grad(F.cross_entropy(fl, y), fl)[0]
    torch.testing.assert_close(fl.grad, ce_grad)          # the fine distribution is detached in the KL term
    torch.testing.assert_close(cl.grad, (pc - pf).detach() / 4)  # d KL / d coarse logits


def test_gradients_reach_both_passes():
    m = tiny_model().train()
    x, y = images(2), torch.tensor([1, 7])
    coarse_logits, fine_logits = m.forward_train(x)
    coarse_fine_loss(coarse_logits, fine_logits, y).backward()
    tok = m.tokenizer
    for p in (tok.pos_embed_coarse, tok.pos_embed, tok.cls_token, tok.patch_embed.proj.weight,
              m.reuse.mlp.fc1.weight, m.head.weight, m.stages[0].cells[0].attn.qkv.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # only the used fine positions get gradient: cls + the informative fine patches of either image
    with torch.no_grad():
        top, _ = select_regions(m.forward_coarse(x).gca, 25)
    used = {0} | {1 + f for f in region_fine_index(G)[top].flatten().tolist()}
    assert set(torch.nonzero(tok.pos_embed.grad[0].abs().sum(-1) > 0).flatten().tolist()) == used
    assert m.last_macs.tolist() == [cost(m.arch).macs_max] * 2


def test_warmup_uses_all_fine_tokens():
    m, x = tiny_model(), images(1)
    m.warmup = True
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, Attention):
                mod.fused_attn = False
        m.forward_train(x)
    assert fc.get_total_flops() // 2 == int(m.last_macs[0])
    assert int(m.last_macs[0]) > cost(m.arch).macs_max
    # every position of the fine table is used
    m.train().zero_grad()
    cl, fl = m.forward_train(x)
    coarse_fine_loss(cl, fl, torch.tensor([3])).backward()
    assert bool((m.tokenizer.pos_embed.grad[0].abs().sum(-1) > 0).all())


@pytest.mark.parametrize("warmup", [0.0, 0.5, 2 / 3, 1.0])
def test_training_loss_is_the_paper_objective_with_its_warm_up(warmup):
    """``training_loss(x, y, criterion, progress)``: criterion(fine) + KL(fine || coarse), both passes on every
    image (eta = 0 would exit them all in inference), the fine pass on all fine tokens while progress < warmup."""
    from nas.models.objective import training_loss

    torch.manual_seed(0)
    options = {} if warmup == 2 / 3 else {"coarse_fine": CoarseFineTraining(warmup)}  # absent: the paper's 2/3
    m = build_model(tiny_arch(eta=0.0), options=options).train()
    assert m.warmup_fraction == warmup
    x, y = images(3), torch.tensor([2, 0, 9])

    def criterion(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # any criterion: 2 x CE
        return 2 * F.cross_entropy(logits, target)

    for progress in (0.0, 0.4, 0.5, 0.6, 2 / 3, 0.9):
        loss, logits = training_loss(m, x, y, criterion, progress)
        with torch.no_grad():
            coarse, fine = m.forward_train(x, warmup=progress < warmup)
            pf, pc = fine.softmax(-1), coarse.softmax(-1)
            expected = 2 * F.cross_entropy(fine, y) + (pf * (pf.log() - pc.log())).sum(-1).mean()
        torch.testing.assert_close(loss.detach(), expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(logits.detach(), fine, rtol=0, atol=1e-6)
        tokens = 1 + 4 * G * G if progress < warmup else 1 + 4 * 25 + G * G - 25
        assert int(m.last_macs[0]) == cost(m.arch).macs_min + coarse_fine_macs(m.arch, (tokens - 1 - G * G) // 3)[1]


def test_drop_path_and_weight_decay_exclusions():
    torch.manual_seed(0)
    plain = build_model(tiny_arch()).eval()
    torch.manual_seed(0)
    dropping = build_model(tiny_arch(), drop_path=0.2).eval()
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in dropping.modules() if isinstance(b, Block)]
    assert rates == pytest.approx([0.0, 0.2 / 3, 0.4 / 3, 0.2])  # basic, basic, shared pair (2 layers)
    x = images(2)
    with torch.no_grad():
        assert torch.equal(plain(x), dropping(x))                 # eval: no stochastic depth
    assert plain.no_weight_decay() == {"tokenizer.cls_token", "tokenizer.pos_embed", "tokenizer.pos_embed_coarse"}


def test_shipped_cf_vit_space_cost_equals_count():
    """spaces/cf_vit.yaml at 32x32 (c = 4, patch 4, dim 32): for sampled archs the analytic cost equals the
    counted coarse-only and coarse + fine runs and the parameter count; per-image MACs at the arch's eta."""
    import random
    space = load_space(SPACES / "cf_vit.yaml", {"input.size": 32, "tokenizer.patch_size": 4,
                                                "tokenizer.coarse_grid": 4, "stages[0].dim": 32,
                                                "stages[0].heads": 2})
    rng, x = random.Random(0), torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for _ in range(4):
        arch = space.sample(rng)
        torch.manual_seed(0)
        m, c = build_model(arch).eval(), cost(arch)
        assert c.params == sum(p.numel() for p in m.parameters()), arch
        with torch.no_grad():
            m(x)
        macs = m.last_macs.clone()
        assert set(macs.tolist()) <= {c.macs_min, c.macs_max}
        for i in range(2):
            assert count_macs(m, x[i:i + 1]) == int(macs[i]), arch
        m.exit_threshold = 0.0
        assert count_macs(m, x[:1]) == c.macs_min, arch
        m.exit_threshold = 2.0
        assert count_macs(m, x[:1]) == c.macs_max, arch


# --- errors -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change,key", [
    ({"img_size": 64}, "tokenizer.coarse_grid"),
    ({"pooling": Pooling("1d", 3)}, "pooling.type"),
    ({"head": "gap"}, "head"),
    ({"num_classes": 0}, "num_classes"),
    ({"stages": (Stage(C, 2, 2.0, ("basic",)), Stage(48, 2, 2.0, ("basic",)))}, "stages"),
    ({"stages": (Stage(C, 2, 2.0, ("identity",)),)}, "stages"),
])
def test_user_errors_are_nas_errors(change, key):
    arch = replace(tiny_arch(), **change)
    with pytest.raises(NasError) as err:
        build_model(arch)
    assert err.value.key == key
    with pytest.raises(NasError):
        cost(arch)


def test_wrong_image_size_is_nas_error():
    with pytest.raises(NasError, match="input must be"):
        tiny_model()(torch.zeros(1, 3, 32, 32))


# --- published figures (analytic, no 224 model built) --------------------------------------------------------
def test_published_deit_s_figures():
    arch = load_arch(REFERENCE / "cf_vit_deit_s_7x7.yaml")
    assert isinstance(arch.tokenizer, CoarseFineTokenizer) and arch.stages[0].num_layers == 12
    c = cost(arch)
    assert c.params == pytest.approx(23.25e6, rel=0.01)
    assert c.macs_min == pytest.approx(1.10e9, rel=0.01)
    assert c.macs_max == pytest.approx(4.02e9, rel=0.01) and c.macs == c.macs_max
    # DeiT-S (22,050,664) + coarse position table (50 x 384) + reuse LayerNorm + Mlp(384, 1536)
    assert c.params == 22_050_664 + 50 * 384 + (2 * 384 + 2 * 384 * 1536 + 1536 + 384)
    # 9x9 at 288: k = 41, 205 fine tokens
    tok9 = replace(arch.tokenizer, coarse_grid=9)
    assert num_regions(9, tok9.alpha) == 41
    c9 = cost(replace(arch, img_size=288, tokenizer=tok9))
    assert c9.macs_min == pytest.approx(1.83e9, rel=0.01)
    assert c9.macs_max == pytest.approx(6.77e9, rel=0.01)
    assert math.isclose(c9.macs_max / c9.macs_min, 6.77 / 1.83, rel_tol=0.01)

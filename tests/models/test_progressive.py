"""PS-ViT progressive sampling (docs/mechanisms.md section 1): sampling geometry, gradients, weight sharing, and the
analytic cost against FlopCounterMode, parameter counts and the published figures."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nas.arch import Arch, Stage


from nas.mechanisms.progressive import ProgressiveTokenizer
from nas.errors import NasError
from nas.models.layers import Attention, Block
from nas.cost import cost, tokenizer_part
from nas.mechanisms.progressive.model import ProgressiveSampling, bilinear_sample, initial_points

REFERENCE = Path(__file__).resolve().parents[2] / "spaces" / "reference"


def progressive_cost(arch: Arch) -> tuple[int, int]:
    """(MACs, params) of the arch's tokenizer module alone."""
    macs, params = tokenizer_part(arch)
    return sum(macs), params


def tiny_arch(points: int = 4, iterations: int = 2, share: bool = False, img: int = 32, dim: int = 32,
              heads: int = 2, mlp_ratio: float = 3.0, depth: int = 1, qkv_bias: bool = False,
              num_classes: int = 10) -> Arch:
    """32x32 input -> 8x8 feature map; ``depth`` plain layers after the sampling module."""
    return Arch(img, 3, num_classes, ProgressiveTokenizer(points, iterations, share),
                (Stage(dim, heads, mlp_ratio, ("basic",) * depth),), qkv_bias=qkv_bias, norm_eps=1e-5)


def unfused(model: nn.Module) -> nn.Module:
    """FlopCounterMode counts CPU fused attention as 0: use the explicit matmuls."""
    for m in model.modules():
        if isinstance(m, Attention):
            m.fused_attn = False
    return model


def counted_macs(model: nn.Module, *args) -> int:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(*args)
    return fc.get_total_flops() // 2


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Independent formulas for the parts after the tokenizer (and one encoder layer), written from the paper.
def layer_params(C: int, hidden: int, qkv_bias: bool = False) -> int:
    return 3 * C * C + (3 * C if qkv_bias else 0) + (C * C + C) + (C * hidden + hidden) + (hidden * C + C) + 4 * C


def layer_macs(T: int, C: int, hidden: int) -> int:
    return 3 * T * C * C + T * T * C + T * T * C + T * C * C + 2 * T * C * hidden


def rest_cost(arch: Arch) -> tuple[int, int]:
    """(MACs, params) of the ``depth - N`` plain layers on 1 + n*n tokens, the final norm and the cls head."""
    st = arch.stages[0]
    T, C, L, K = arch.tokenizer.points ** 2 + 1, st.dim, len(st.cells), arch.num_classes
    return L * layer_macs(T, C, st.hidden) + C * K, L * layer_params(C, st.hidden, arch.qkv_bias) + 2 * C + C * K + K


class Composed(nn.Module):
    """Tokenizer + plain Blocks + norm + cls head: the full PS-ViT, independent of nas.models.vit."""

    def __init__(self, arch: Arch) -> None:
        super().__init__()
        st = arch.stages[0]
        self.tokenizer = ProgressiveSampling(arch)
        self.blocks = nn.ModuleList(Block(st.dim, st.heads, st.hidden, qkv_bias=arch.qkv_bias, norm_eps=1e-5)
                                    for _ in st.cells)
        self.norm = nn.LayerNorm(st.dim, eps=1e-5)
        self.head = nn.Linear(st.dim, arch.num_classes)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.tokenizer(img)
        for blk in self.blocks:
            x, _ = blk(x)
        return self.head(self.norm(x)[:, 0])


# --- sampling geometry ----------------------------------------------------------------------------------
def test_initial_grid_matches_paper():
    pts = initial_points(14, 56, 56)                                         # (196, 2) (y, x), raster order
    centres = torch.arange(2.0, 56.0, 4.0)                                   # {2, 6, ..., 54}
    assert centres.tolist() == [2.0 + 4 * i for i in range(14)] and centres[-1] == 54
    assert torch.equal(pts[:, 0], centres.repeat_interleave(14))
    assert torch.equal(pts[:, 1], centres.repeat(14))
    assert torch.allclose(initial_points(10, 56, 56)[:10, 1], torch.arange(10) * 5.6 + 2.8)  # PS-ViT-B/10


def test_zero_offsets_sample_the_same_points_every_round():
    torch.manual_seed(0)
    model = ProgressiveSampling(tiny_arch(points=4, iterations=3))
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 1 + 16, 32)
    grid = torch.tensor([1.0, 3.0, 5.0, 7.0])                                # 8x8 map, cell 2
    expected = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(16, 2)
    assert model.last_trajectory.shape == (2, 3, 16, 2)
    assert torch.equal(model.last_trajectory, expected.expand(2, 3, 16, 2))
    assert torch.equal(model.last_points, expected.expand(2, 16, 2))


def test_offsets_accumulate_in_pixels():
    model = ProgressiveSampling(tiny_arch(points=4, iterations=3))
    with torch.no_grad():
        for head in model.offsets:
            head.bias.copy_(torch.tensor([0.5, -1.25]))                     # o_t = (0.5, -1.25) everywhere
    model(torch.randn(1, 3, 32, 32))
    traj = model.last_trajectory[0]                                          # (N, P, 2)
    for t in range(3):
        assert torch.allclose(traj[t], traj[0] + t * torch.tensor([0.5, -1.25]))


def test_bilinear_sample_equals_hand_formula():
    torch.manual_seed(0)
    H, W = 5, 7                                                              # non-square: catches a y/x swap
    feat = torch.randn(2, 3, H, W, dtype=torch.float64)
    points = torch.tensor([[0.0, 0.0], [2.3, 4.6], [4.0, 6.0], [1.75, 0.2], [-0.5, 3.0], [2.0, 6.5],
                           [4.6, 6.9], [-3.0, 2.0], [1.0, 20.0], [-1.2, -0.7]], dtype=torch.float64)
    points = torch.stack((points, points.flip(0) * 0.9))                      # (2, P, 2), different per image
    got = bilinear_sample(feat, points)                                      # (2, P, 3)

    def pixel(b: int, y: int, x: int) -> torch.Tensor:
        inside = 0 <= y < H and 0 <= x < W
        return feat[b, :, y, x] if inside else torch.zeros(3, dtype=feat.dtype)   # zero padding

    for b in range(2):
        for i, (y, x) in enumerate(points[b].tolist()):
            y0, x0 = math.floor(y), math.floor(x)
            dy, dx = y - y0, x - x0
            want = ((1 - dy) * (1 - dx) * pixel(b, y0, x0) + (1 - dy) * dx * pixel(b, y0, x0 + 1)
                    + dy * (1 - dx) * pixel(b, y0 + 1, x0) + dy * dx * pixel(b, y0 + 1, x0 + 1))
            assert torch.allclose(got[b, i], want, atol=1e-12), (b, y, x)
    assert torch.equal(got[0, 7], torch.zeros(3, dtype=feat.dtype))          # far outside: exactly zero


def _spy_grid_sample(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Records (input, grid) of every grid_sample call."""
    calls, real = [], torch.nn.functional.grid_sample

    def spy(inp, grid, *args, **kwargs):
        calls.append((inp, grid))
        return real(inp, grid, *args, **kwargs)
    monkeypatch.setattr(torch.nn.functional, "grid_sample", spy)
    return calls


def test_bfloat16_autocast_keeps_points_and_grid_in_float32(monkeypatch):
    """Under bf16 autocast the feature map is bf16; in bf16 the initial grid of PS-ViT (56x56 map, 14x14 points)
    would move by up to 0.1 px. Points, the grid and the interpolation stay float32; values come back in bf16."""
    calls = _spy_grid_sample(monkeypatch)
    feat = torch.randn(2, 4, 56, 56).to(torch.bfloat16)
    points = initial_points(14, 56, 56).expand(2, -1, -1) + torch.tensor([0.3, -0.7])  # (2, 196, 2) float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = bilinear_sample(feat, points)
    (inp, grid), = calls
    assert grid.dtype == torch.float32 and inp.dtype == torch.float32 and got.dtype == torch.bfloat16
    y, x = points.double().unbind(-1)
    exact = torch.stack(((2 * x + 1) / 56 - 1, (2 * y + 1) / 56 - 1), dim=-1)       # float64
    assert (grid[:, 0].double() - exact).abs().max() * 28 < 1e-5                      # in pixels
    yb, xb = points.to(torch.bfloat16).unbind(-1)                                    # the grid computed in bf16
    in_bf16 = torch.stack(((2 * xb + 1) / 56 - 1, (2 * yb + 1) / 56 - 1), dim=-1).double()
    assert (in_bf16 - exact).abs().max() * 28 > 0.1                                   # what it would lose, px
    assert torch.equal(got, bilinear_sample(feat.float(), points).to(torch.bfloat16))  # sampled in float32

    calls.clear()
    torch.manual_seed(0)
    model = ProgressiveSampling(tiny_arch(points=3, iterations=2))     # 8x8 map: points at 4/3 + 8/3 i
    with torch.no_grad():
        model.offsets[0].bias.copy_(torch.tensor([0.1, -0.2]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 32, 32))
    assert model.last_trajectory.dtype == torch.float32 and torch.isfinite(out).all()
    start = initial_points(3, 8, 8)
    assert torch.equal(model.last_trajectory[:, 0], start.expand(2, -1, -1))
    shift = torch.tensor([0.1, -0.2]).to(torch.bfloat16).float()       # the offset head's output is bf16
    assert torch.equal(model.last_trajectory[:, 1], (start + shift).expand(2, -1, -1))
    assert [g.dtype for _, g in calls] == [torch.float32] * 2


def test_drop_path_rates_start_with_the_sampling_rounds():
    """The authors' rule: linspace(0, rate, rounds + layers), the first rates to the sampling layers."""
    from nas.models import build_model

    rates = [0.0, 0.1, 0.2, 0.3, 0.4]                                  # 3 rounds, then 2 layers
    model = build_model(tiny_arch(iterations=3, depth=2), drop_path=0.4)
    got = [getattr(b.drop_path, "drop_prob", 0.0) for b in [*model.tokenizer.layers, *model.stages[0].cells]]
    assert got == pytest.approx(rates)
    shared = build_model(tiny_arch(iterations=3, depth=2, share=True), drop_path=0.4)
    assert shared.tokenizer.layers[0].drop_path.drop_prob == pytest.approx(0.1)  # mean of its rounds' rates
    assert [c.drop_path.drop_prob for c in shared.stages[0].cells] == pytest.approx(rates[3:])
    assert isinstance(build_model(tiny_arch(iterations=3)).tokenizer.layers[2].drop_path, nn.Identity)


# --- gradients ------------------------------------------------------------------------------------------
def test_gradients_reach_every_offset_head():
    torch.manual_seed(0)
    model = ProgressiveSampling(tiny_arch(points=4, iterations=3))
    model(torch.randn(2, 3, 32, 32)).square().mean().backward()
    assert len(model.offsets) == 2
    for head in model.offsets:
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
        assert head.bias.grad.abs().sum() > 0


class ConstantMap(nn.Module):
    """A stem whose feature map is flat: the sampled values do not depend on the points."""

    def __init__(self, dim: int, side: int) -> None:
        super().__init__()
        self.dim, self.side = dim, side

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return torch.ones(img.shape[0], self.dim, self.side, self.side)


def test_position_branch_is_detached():
    """On a flat map only the position embedding depends on the points; it must not feed the offsets."""
    torch.manual_seed(0)
    model = ProgressiveSampling(tiny_arch(points=4, iterations=3))
    model.stem = ConstantMap(32, 16)                                         # points {2, 6, 10, 14}: inside
    model(torch.randn(2, 3, 32, 32)).square().mean().backward()
    assert model.pos.weight.grad.abs().sum() > 0                             # the branch itself is trained
    for head in model.offsets:
        assert torch.count_nonzero(head.weight.grad) == 0 and torch.count_nonzero(head.bias.grad) == 0


# --- weight sharing -------------------------------------------------------------------------------------
def test_share_weights_shares_one_layer_and_one_head():
    torch.manual_seed(0)
    N, C, hidden = 4, 32, 96
    plain = ProgressiveSampling(tiny_arch(iterations=N))
    shared = ProgressiveSampling(tiny_arch(iterations=N, share=True))
    assert len(plain.layers) == N and len(plain.offsets) == N - 1
    assert len(shared.layers) == 1 and len(shared.offsets) == 1
    calls = {"layer": 0, "head": 0}
    shared.layers[0].register_forward_hook(lambda *_: calls.__setitem__("layer", calls["layer"] + 1))
    shared.offsets[0].register_forward_hook(lambda *_: calls.__setitem__("head", calls["head"] + 1))
    shared(torch.randn(1, 3, 32, 32))
    assert calls == {"layer": N, "head": N - 1}
    saved = (N - 1) * layer_params(C, hidden) + (N - 2) * (2 * C + 2)
    assert n_params(plain) - n_params(shared) == saved
    x = torch.randn(1, 3, 32, 32)
    assert counted_macs(unfused(plain), x) == counted_macs(unfused(shared), x)  # same MACs


# --- analytic cost --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [
    {},
    {"share": True, "iterations": 3},
    {"iterations": 1},
    {"iterations": 1, "share": True},
    {"points": 3, "qkv_bias": True, "img": 28},       # 7x7 map, fractional points, qkv bias
    {"points": 2, "img": 16, "dim": 264, "heads": 2, "mlp_ratio": 1.0},  # C > 256: stem 64->256->C
])
def test_cost_equals_flop_counter_and_param_count(kw):
    arch = tiny_arch(**kw)
    model = unfused(ProgressiveSampling(arch)).eval()
    macs, params = progressive_cost(arch)
    assert counted_macs(model, torch.randn(1, 3, arch.img_size, arch.img_size)) == macs
    assert n_params(model) == params


def test_composed_model_totals():
    torch.manual_seed(0)
    arch = tiny_arch(points=4, iterations=2, depth=2)
    model = unfused(Composed(arch)).eval()
    x = torch.randn(1, 3, 32, 32)
    assert model(x).shape == (1, 10)
    tok_macs, tok_params = progressive_cost(arch)
    rest_macs, rest_params = rest_cost(arch)
    assert counted_macs(model, x) == tok_macs + rest_macs
    assert n_params(model) == tok_params + rest_params


PUBLISHED = {  # docs/mechanisms.md section 1: (params, params precision, MACs), 224x224, 1000 classes
    "ps_vit_ti_14": (4.78e6, 1e4, 1.58e9),
    "ps_vit_b_10": (21.34e6, 1e4, 3.11e9),
    "ps_vit_b_14": (21.34e6, 1e4, 5.40e9),
    "ps_vit_b_16": (21.34e6, 1e4, 6.94e9),
    "ps_vit_b_18": (21.34e6, 1e4, 8.77e9),
    "ps_vit_ti_14_shared": (3.6e6, 1e5, 1.58e9),     # the paper truncates: 3.666M (and 4.7M for Ti's 4.778M)
    "ps_vit_b_14_shared": (16.9e6, 1e5, 5.40e9),
}


def load_reference(name: str) -> Arch:
    raw = (REFERENCE / f"{name}.yaml").read_text()
    d = yaml.safe_load(raw)
    arch = Arch.from_dict(d)
    assert arch.to_dict() == d                                              # exactly the to_dict format
    return arch


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_figures(name):
    arch = load_reference(name)
    params_pub, precision, macs_pub = PUBLISHED[name]
    (tm, tp), (rm, rp) = progressive_cost(arch), rest_cost(arch)
    assert arch.tokenizer.iterations + len(arch.stages[0].cells) == (12 if "ti" in name else 14)
    assert abs((tm + rm) / macs_pub - 1) < 0.01
    params = tp + rp
    if "shared" in name:
        assert math.floor(params / precision) * precision == pytest.approx(params_pub)
    else:
        assert round(params / precision) * precision == pytest.approx(params_pub)


def test_shared_saves_three_layers():
    """Sharing saves N-1 = 3 encoder layers and 2 offset heads: 23.2% of Ti, 20.8% of B (the paper says
    "about 21%~23%"; its own Table 8, 21.3M -> 16.9M, is 20.7%)."""
    for plain, shared, C in (("ps_vit_ti_14", "ps_vit_ti_14_shared", 192), ("ps_vit_b_14", "ps_vit_b_14_shared", 384)):
        p, s = progressive_cost(load_reference(plain))[1], progressive_cost(load_reference(shared))[1]
        assert p - s == 3 * layer_params(C, 3 * C) + 2 * (2 * C + 2)
        total = p + rest_cost(load_reference(plain))[1]
        assert 0.205 < (p - s) / total < 0.235


# --- errors ---------------------------------------------------------------------------------------------
def test_bad_input_raises_nas_error():
    with pytest.raises(NasError, match="points"):
        ProgressiveSampling(tiny_arch(points=0))
    with pytest.raises(NasError, match="iterations"):
        cost(tiny_arch(iterations=0))
    with pytest.raises(NasError, match="heads"):
        ProgressiveSampling(tiny_arch(dim=30, heads=4))
    with pytest.raises(NasError, match="expected images"):
        ProgressiveSampling(tiny_arch())(torch.randn(1, 1, 32, 32))


# --- full size and integration --------------------------------------------------------------------------
@pytest.mark.slow
def test_ps_vit_ti_full_size_counts():
    arch = load_reference("ps_vit_ti_14")
    model = unfused(Composed(arch)).eval()
    assert counted_macs(model, torch.randn(1, 3, 224, 224)) == 1_565_148_160   # 1.58G published, -0.94%
    assert n_params(model) == 4_777_902                                        # 4.78M published


def test_build_model_uses_the_tokenizer():
    from nas.models import build_model
    arch = tiny_arch(points=4, iterations=2, depth=2)
    model = unfused(build_model(arch)).eval()
    assert isinstance(model.tokenizer, ProgressiveSampling)
    x = torch.randn(1, 3, 32, 32)
    assert model(x).shape == (1, 10)
    (tm, tp), (rm, rp) = progressive_cost(arch), rest_cost(arch)
    assert n_params(model) == tp + rp                                       # no extra position table
    assert counted_macs(model, x) == tm + rm
    assert all(torch.count_nonzero(h.weight) == 0 for h in model.tokenizer.offsets)  # own init kept


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_nas_cost_agrees(name):
    cost_mod = pytest.importorskip("nas.cost")
    if not hasattr(cost_mod, "cost"):
        pytest.skip("nas.cost.cost not there yet")
    arch = load_reference(name)
    (tm, tp), (rm, rp) = progressive_cost(arch), rest_cost(arch)
    c = cost_mod.cost(arch)
    assert (c.macs, c.params) == (tm + rm, tp + rp)

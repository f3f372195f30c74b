"""PS-ViT progressive sampling tokenizer (arXiv 2108.01684; docs/mechanisms.md section 1): the model.

Its config, rules and cost are the torch-free ``nas.mechanisms.progressive`` (``progressive_cost``).

A ResNet stem turns the image into a stride-4 feature map F (B, C, H, W). Then ``iterations`` rounds of:
sample n*n tokens of F bilinearly at the points p_t, add a position embedding of the (detached) points and
the previous round's tokens, run one encoder layer, and (except after the last round) predict offsets that
move the points. The last round's tokens, with a cls token prepended, are the model's tokens.

Decisions where the paper is silent (or disagree with the authors' code):

- Stem widths. The paper takes "the first two residual blocks of ResNet-50's first stage", whose output width
  is 256; the authors' published models use 64 -> 256 -> C for PS-ViT-B (C = 384) and 64 -> 192 -> 192 for
  PS-ViT-Ti (C = 192). Both are ``min(C, 256)`` for the first block's output width
  (``stem_widths``). With the literal "64 -> C" for both blocks PS-ViT-B has 21.27M params and
  2.86G MACs for B/10 (published 21.34M, 3.11G: -8%); with the authors' widths every published figure is met
  (see spaces/reference/ps_vit_*.yaml).
- The bottleneck is written here: timm's and torchvision's ``Bottleneck`` derive the output width as
  4 x planes and the inner width by a floor formula, which cannot express 64 -> 64 -> 192 exactly.
- MACs of the bilinear sampling (``grid_sample``) are counted as 0. It is neither a matmul nor a conv (the
  project convention), ``FlopCounterMode`` counts it 0, and the authors' counter saw their custom CUDA op as 0.
  It would add only 4*n*n*C per round (0.04% of PS-ViT-Ti). Both choices land within 1% of the published
  MACs; the remaining 0.3-0.9% gap is the norms, which the convention counts 0: adding fvcore's eval-mode
  norm counts (BatchNorm 2, LayerNorm 5 per element) reproduces all five published MACs to three digits.
- Gradient paths follow the authors' code and the paper's eq. 9: the point p_t enters the position
  embedding and the next points detached; the newest offset o_{t-1} is differentiable through the sampling
  only, so the gradient of round t's sampling reaches o_{t-1} and no earlier offset.
- Token order is raster (row-major, x fastest): token r*n + c sits at cell (r, c), so the tokens reshape to
  an n x n grid. The authors' code orders y fastest; with no absolute position table the output of the model
  does not depend on the order.
- The initial points are computed from the actual feature map size at every forward (pixel i centred at i,
  cell size H/n), so any input size works; ``progressive_cost`` uses ``arch.img_size``.
- The cls token is prepended only when ``arch.has_cls_token`` (2d pooling with a gap head has none).
- Sampling points, offsets added to them and the grid_sample grid stay in float32 (float64 for a float64
  feature map) whatever the feature dtype: in bfloat16 a point near pixel 54 of a 56-pixel map moves by 0.1 px.
  The map is sampled in that precision and the tokens come back in the feature dtype.
- Stochastic depth: round t's layer takes the t-th rate of the model's linear rule (the rounds come first, as
  in the authors' code); the one shared layer (``share_weights``) takes the mean of its rounds' rates.
- Init as in the authors' code: Linear layers trunc-normal(0.02) with zero bias, LayerNorm ones/zeros, the
  cls token trunc-normal(0.02), offset heads all zero, convolutions and BatchNorm at PyTorch's default.
  ``init_weights()`` redoes it; a model-wide re-init must leave this module alone or call it again.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from nas.arch import Arch
from nas.errors import NasError
from nas.models.layers import Block
from nas.shapes import check_arch
from nas.mechanisms.progressive import STEM_STRIDE, STEM_WIDTH, progressive_modules, stem_widths


def image_points(points: torch.Tensor) -> torch.Tensor:
    """Points (..., 2) in feature-map pixels -> input-image pixels, (y, x) both, pixel centres at integers.

    Stem pixel i (conv 7x7/2 with padding 3, then max-pool 3x3/2 with padding 1) has its receptive field
    centred on image pixel ``STEM_STRIDE * i``, so the map is a plain scaling, at any input size.
    """
    return points * STEM_STRIDE


class Bottleneck(nn.Module):
    """ResNet bottleneck, stride 1: 1x1 in->mid, 3x3 mid->mid, 1x1 mid->out, each with BN; ReLU after the add.

    The shortcut is a 1x1 conv + BN projection when ``in_chs != out_chs``, the identity otherwise.
    """

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, mid_chs, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_chs)
        self.conv2 = nn.Conv2d(mid_chs, mid_chs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_chs)
        self.conv3 = nn.Conv2d(mid_chs, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity() if in_chs == out_chs else nn.Sequential(
            nn.Conv2d(in_chs, out_chs, 1, bias=False), nn.BatchNorm2d(out_chs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + self.shortcut(x))


def make_stem(in_chans: int, dim: int) -> nn.Sequential:
    """ResNet-50 stem + two first-stage bottlenecks: (B, in_chans, H, W) -> (B, dim, ~H/4, ~W/4)."""
    w1, w2 = stem_widths(dim)
    return nn.Sequential(
        nn.Conv2d(in_chans, STEM_WIDTH, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(STEM_WIDTH),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
        Bottleneck(STEM_WIDTH, STEM_WIDTH, w1),
        Bottleneck(w1, STEM_WIDTH, w2),
    )


def initial_points(n: int, height: int, width: int, device: torch.device | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Regular n x n grid (paper eq. 2): (n*n, 2) as (y, x) in feature-map pixels, raster order.

    Cell size s = H/n; point (r, c) is (r*s_h + s_h/2, c*s_w + s_w/2): {2, 6, ..., 54} for n=14 on 56x56.
    """
    idx = torch.arange(n, device=device, dtype=dtype) + 0.5
    ys, xs = torch.meshgrid(idx * (height / n), idx * (width / n), indexing="ij")  # (n, n) each
    return torch.stack((ys, xs), dim=-1).reshape(n * n, 2)


def point_dtype(feat_dtype: torch.dtype) -> torch.dtype:
    """Dtype of sampling points and grids: float32, or the feature dtype when it is wider (float64)."""
    return torch.promote_types(feat_dtype, torch.float32)


def bilinear_sample(feat: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear values of feat (B, C, H, W) at points (B, P, 2) given as (y, x) pixels -> (B, P, C).

    Pixel i is centred at coordinate i; outside the map the feature is zero (padding_mode 'zeros'). The
    pixel -> grid mapping (2x+1)/W - 1 is exact for align_corners=False. Points, grid and the interpolation
    run in ``point_dtype`` (float32 at least, autocast or not); the values come back in feat's dtype.
    """
    H, W = feat.shape[-2:]
    dtype = point_dtype(feat.dtype)
    y, x = points.to(dtype).unbind(-1)                                      # (B, P) each
    grid = torch.stack(((2 * x + 1) / W - 1, (2 * y + 1) / H - 1), dim=-1)  # (B, P, 2) in grid_sample's (x, y)
    with torch.autocast(feat.device.type, enabled=False):                  # keep the grid's precision
        out = F.grid_sample(feat.to(dtype), grid[:, None], mode="bilinear", padding_mode="zeros",
                            align_corners=False)
    return out[:, :, 0].transpose(1, 2).to(feat.dtype)                      # (B, C, 1, P) -> (B, P, C)


class ProgressiveSampling(nn.Module):
    """PS-ViT tokenizer: img (B, in_chans, H, W) -> tokens (B, 1 + n*n, C), cls first.

    Submodules: ``stem`` (stride 4), ``pos`` (one Linear(2, C) for every round), ``layers`` (N encoder
    ``Block``s, or one when ``share_weights``), ``offsets`` (N-1 zero-initialised Linear(C, 2), or one shared),
    ``cls_token``. After a forward, ``last_points`` (B, n*n, 2) holds the points of the last round and
    ``last_trajectory`` (B, N, n*n, 2) those of every round, (y, x) in feature-map pixels, detached.
    """

    def __init__(self, arch: Arch, drop_path: list[float] | None = None) -> None:
        super().__init__()
        check_arch(arch)
        tok = arch.tokenizer
        st = arch.stages[0]
        self.points, self.iterations, self.share_weights = tok.points, tok.iterations, tok.share_weights
        self.in_chans, self.dim = arch.in_chans, st.dim
        self.stem = make_stem(arch.in_chans, st.dim)
        self.pos = nn.Linear(2, st.dim)
        n_heads = progressive_modules(tok)[1]  # layers: one per rate below (one when share_weights)
        rates = list(drop_path) if drop_path else [0.0] * tok.iterations  # one per round
        if tok.share_weights:
            rates = [sum(rates) / len(rates)]
        self.layers = nn.ModuleList(
            Block(st.dim, st.heads, st.hidden, qkv_bias=arch.qkv_bias, norm_eps=arch.norm_eps, drop_path=r)
            for r in rates)
        self.offsets = nn.ModuleList(nn.Linear(st.dim, 2) for _ in range(n_heads))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, st.dim)) if arch.has_cls_token else None
        self.last_points: torch.Tensor | None = None
        self.last_trajectory: torch.Tensor | None = None
        self.init_weights()

    def init_weights(self) -> None:
        """The authors' init; offset heads zero so that every round starts on the regular grid."""
        for m in [self.pos, *self.layers.modules()]:
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for head in self.offsets:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """The cls token and the position layer (timm's convention for position embeddings)."""
        return {"cls_token", "pos.weight", "pos.bias"}

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.ndim != 4 or img.shape[1] != self.in_chans:
            raise NasError(f"expected images (B, {self.in_chans}, H, W), got shape {tuple(img.shape)}")
        feat = self.stem(img)                                      # (B, C, H, W)
        B, _, H, W = feat.shape
        dtype = point_dtype(feat.dtype)                            # points never in bfloat16 / float16
        p = initial_points(self.points, H, W, feat.device, dtype).expand(B, -1, -1)  # (B, P, 2)
        size = torch.tensor([H, W], device=feat.device, dtype=dtype)
        tokens, offset, trajectory = None, None, []
        for t in range(self.iterations):
            q = p if offset is None else p + offset.to(dtype)      # p_t; differentiable in o_{t-1} only
            x = bilinear_sample(feat, q)                           # T'_t (B, P, C)
            p = q.detach()
            x = x + self.pos((p / size).to(self.pos.weight.dtype))  # + P_t: no gradient into the offsets
            if tokens is not None:
                x = x + tokens                                     # + T_{t-1}
            tokens, _ = self.layers[0 if self.share_weights else t](x)  # T_t (B, P, C)
            trajectory.append(p)
            if t < self.iterations - 1:
                offset = self.offsets[0 if self.share_weights else t](tokens)  # o_t (B, P, 2), pixels
        self.last_points, self.last_trajectory = p, torch.stack(trajectory, dim=1)
        if self.cls_token is None:
            return tokens
        return torch.cat((self.cls_token.expand(B, -1, -1), tokens), dim=1)  # (B, 1 + P, C)


def build(arch: Arch, drop_path: list[float] | None = None) -> nn.Module:
    """The tokenizer module of ``arch`` (``nas.mechanisms.Tokenizer``'s hook); ``drop_path``: its rounds' rates."""
    return ProgressiveSampling(arch, drop_path)

"""PS-ViT progressive sampling (arXiv 2108.01684; docs/mechanisms.md section 1): the torch-free half.

A ResNet stem (stride 4, output width = stage 0's dim), then ``iterations`` rounds of sampling ``points`` x
``points`` tokens and refining the points with an encoder layer. The model is
``nas.mechanisms.progressive.model.ProgressiveSampling``; its decisions are written there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from nas.cost import layer_macs, layer_params
from nas.errors import NasError
from nas.mechanisms import Tokenizer, default, register
from nas.shapes import check_stage_width, conv_out
from nas.space.schema import Reader, boolean, integer

STEM_WIDTH = 64
"""Channels of the 7x7 stem conv and inner width of both bottlenecks (ResNet-50's first stage)."""
STAGE1_WIDTH = 256
"""Output width of ResNet-50's first-stage blocks; the first bottleneck outputs ``min(C, STAGE1_WIDTH)``."""
STEM_STRIDE = 4
"""Stride of the stem: the 7x7/2 conv, then the 3x3/2 max-pool."""


@dataclass(frozen=True)
class ProgressiveTokenizer:
    """PS-ViT progressive sampling: ``iterations`` rounds of sampling ``points`` x ``points`` tokens from the stem's
    feature map, each refined by an encoder layer (one shared layer when ``share_weights``). The encoder layers
    use stage 0's dim, heads and mlp ratio."""
    points: int = 14
    iterations: int = 4
    share_weights: bool = False
    type: str = field(default="progressive", init=False)


def progressive_modules(tok: ProgressiveTokenizer) -> tuple[int, int]:
    """(encoder layers, offset heads) of the sampling module: one of each when ``share_weights`` (the paper's
    dagger variant), else one layer per round; no offset head after the last round."""
    n_layers = 1 if tok.share_weights else tok.iterations
    return n_layers, min(n_layers, tok.iterations - 1)


def stem_widths(dim: int) -> tuple[int, int]:
    """Output widths of the stem's two bottlenecks, (min(C, 256), C), as in the authors' models."""
    return min(dim, STAGE1_WIDTH), dim


def feature_size(img_size: int) -> int:
    """The stem's feature map side: conv 7x7/2 (pad 3) then maxpool 3x3/2 (pad 1); 224 -> 56, 32 -> 8."""
    return conv_out(conv_out(img_size, 7, 2, 3), 3, 2, 1)


def _bottleneck_cost(in_chs: int, mid: int, out: int, pixels: int) -> tuple[int, int]:
    """(MACs, params) of the stem's bottleneck: three convs (+ projection shortcut), BN affine."""
    weights = in_chs * mid + 9 * mid * mid + mid * out + (in_chs * out if in_chs != out else 0)
    bn = 2 * (2 * mid + out + (out if in_chs != out else 0))
    return pixels * weights, weights + bn


def progressive_cost(img_size: int, in_chans: int, tok: ProgressiveTokenizer, dim: int, hidden: int,
                     qkv_bias: bool, cls: bool) -> tuple[int, int]:
    """(MACs, params) of progressive sampling (stem, N rounds of sampling, cls token).

    Stem: conv 7x7/2 + two bottlenecks at stride 4. Every round: the position Linear(2, C) and an encoder
    layer on n*n tokens; every round but the last an offset Linear(C, 2). Bilinear sampling counts 0.
    """
    C, P, N = dim, tok.points ** 2, tok.iterations
    half, side = conv_out(img_size, 7, 2, 3), feature_size(img_size)
    w1, w2 = stem_widths(C)
    conv1 = 49 * in_chans * STEM_WIDTH
    b1 = _bottleneck_cost(STEM_WIDTH, STEM_WIDTH, w1, side * side)
    b2 = _bottleneck_cost(w1, STEM_WIDTH, w2, side * side)
    macs = half * half * conv1 + b1[0] + b2[0]
    params = conv1 + 2 * STEM_WIDTH + b1[1] + b2[1]
    n_layers, n_heads = progressive_modules(tok)
    macs += N * layer_macs(P, C, hidden) + N * P * 2 * C + (N - 1) * P * C * 2  # layers, position, offsets
    params += n_layers * layer_params(C, hidden, False, qkv_bias) + 3 * C + n_heads * (2 * C + 2)
    return macs, params + cls * C


_SHARED = (("tokenizer.layers.0.", "tokenizer.shared_layer."), ("tokenizer.offsets.0.", "tokenizer.shared_offset."))


class Progressive(Tokenizer):
    name, config = "progressive", ProgressiveTokenizer
    model, picture = "nas.mechanisms.progressive.model", "nas.mechanisms.progressive.picture"

    def read(self, r: Reader, choosable: Callable) -> dict[str, Any]:
        r.allow("type", "points", "iterations", "share_weights")
        d = lambda key: default(ProgressiveTokenizer, key)  # noqa: E731
        return {"type": self.name, "points": r.take("points", choosable(integer(1, 64)), d("points")),
                "iterations": r.take("iterations", choosable(integer(1, 32)), d("iterations")),
                "share_weights": r.take("share_weights", choosable(boolean), d("share_weights"))}

    def check(self, arch: Any) -> None:
        tok = arch.tokenizer
        if tok.points < 1:
            raise NasError(f"points must be >= 1, got {tok.points}", key="tokenizer.points")
        if tok.iterations < 1:
            raise NasError(f"iterations must be >= 1, got {tok.iterations}", key="tokenizer.iterations")
        if not arch.stages:
            raise NasError("the progressive tokenizer takes its width from stage 0; the arch has no stage",
                           key="stages")
        check_stage_width(arch.stages[0], 0)
        if arch.img_size < 1 or arch.in_chans < 1:
            raise NasError(f"input size {arch.img_size} and channels {arch.in_chans} must be >= 1", key="input")

    def side(self, img_size: int, tok: ProgressiveTokenizer) -> int:
        return tok.points

    def cost(self, img_size: int, in_chans: int, tok: ProgressiveTokenizer, st: Any, qkv_bias: bool,
             cls: bool) -> tuple[tuple[int, ...], int]:
        macs, params = progressive_cost(img_size, in_chans, tok, st.dim, st.hidden, qkv_bias, cls)
        return (macs,), params

    def layers(self, tok: ProgressiveTokenizer) -> int:
        return tok.iterations

    def supernet_name(self, tok: ProgressiveTokenizer, name: str) -> str:
        """The shared sampling layer (``share_weights``) is its own choice block: ``tokenizer.layers.0.*`` ->
        ``tokenizer.shared_layer.*``, ``tokenizer.offsets.0.*`` -> ``tokenizer.shared_offset.*``."""
        if tok.share_weights:
            for old, new in _SHARED:
                if name.startswith(old):
                    return new + name[len(old):]
        return name


register(Progressive())

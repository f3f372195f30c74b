"""CF-ViT coarse-to-fine inference (arXiv 2203.03821; docs/mechanisms.md section 4): the torch-free half.

The coarse pass sees the image resized to ``coarse_grid * patch_size`` pixels (1 + c^2 tokens); the top
k = ceil(alpha c^2) regions by global class attention are re-split 2x2 in the fine pass (1 + 4k + c^2 - k
tokens); inference stops after the coarse pass when the max softmax is at least ``exit_threshold``. The model
(``nas.mechanisms.coarse_fine.model.CoarseFineViT``) runs the body twice and trains on both passes (CE + KL).

k = ceil(alpha c^2 - 1e-9): the tolerance keeps float noise (0.7 * 100 = 70.00000000000001) from adding a region.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from nas.cost import head_cost, stage_cost
from nas.errors import NasError
from nas.mechanisms import Fail, Tokenizer, default, reduction_of, reductions, register
from nas.space.schema import Reader, integer, number, options

REUSE_RATIO = 4
"""Hidden width of the feature-reuse MLP, in multiples of the token width C."""
WARMUP_FRACTION = 2 / 3
"""Share of training with all fine tokens (paper, Implementation Details: 200 of 300 epochs); here, in the
torch-free half, so that the torch-free recipe (``nas.train.recipe``) defaults to it."""


@dataclass(frozen=True)
class CoarseFineTokenizer:
    """CF-ViT: a coarse pass on a ``coarse_grid`` x ``coarse_grid`` grid of ``patch_size`` patches of the resized
    image, then a fine pass with the top ``ceil(alpha * coarse_grid**2)`` regions re-split 2x2; inference stops
    after the coarse pass when the max softmax is at least ``exit_threshold``."""
    patch_size: int = 16
    coarse_grid: int = 7
    alpha: float = 0.5
    exit_threshold: float = 1.0
    type: str = field(default="coarse_fine", init=False)


def num_regions(coarse_grid: int, alpha: float) -> int:
    """k = ceil(alpha * c^2) informative regions, within [0, c^2] (see the module docstring for the tolerance)."""
    n = coarse_grid * coarse_grid
    return min(max(math.ceil(alpha * n - 1e-9), 0), n)


def fine_len(coarse_grid: int, k: int) -> int:
    """Tokens of the fine sequence, cls included: 1 + 4k + (c^2 - k)."""
    return 1 + 4 * k + coarse_grid * coarse_grid - k


def coarse_fine_fixed(img_size: int, in_chans: int, tok: CoarseFineTokenizer, dim: int) -> tuple[int, int, int]:
    """(coarse pass, fine pass, params) of the parts outside the layers and the head: the patch conv (c^2
    coarse, (2c)^2 fine positions), cls, both position tables and the feature-reuse LayerNorm + MLP.

    The fine pass embeds all (2c)^2 fine patches and runs the reuse MLP on all c^2 coarse tokens, then keeps
    the informative ones (what the published figures count).
    """
    c, C, H = tok.coarse_grid, dim, REUSE_RATIO * dim
    conv = tok.patch_size ** 2 * in_chans * C
    params = conv + C + C + (1 + 4 * c * c) * C + (1 + c * c) * C  # conv + bias, cls, fine and coarse tables
    params += 2 * C + C * H + H + H * C + C                          # reuse: LayerNorm + Mlp(C, 4C)
    return c * c * conv, 4 * c * c * conv + 2 * c * c * C * H, params


def coarse_fine_macs(arch: Any, k: int | None = None) -> tuple[int, int]:
    """(coarse pass, fine pass) MACs of one image with ``k`` informative regions (default ceil(alpha c^2)).

    coarse: c^2 patch convs + layers on 1 + c^2 tokens + head.
    fine:   (2c)^2 patch convs + reuse MLP on c^2 tokens + layers on 1 + 4k + c^2 - k tokens + head.
    """
    tok = arch.tokenizer
    c = tok.coarse_grid
    k = num_regions(c, tok.alpha) if k is None else k
    coarse, fine, _ = coarse_fine_fixed(arch.img_size, arch.in_chans, tok, arch.stages[0].dim)
    head = head_cost(arch.stages[-1].dim, arch.num_classes)[0]
    for st in arch.stages:
        coarse += stage_cost(st, 1 + c * c, arch.qkv_bias)[0]
        fine += stage_cost(st, fine_len(c, k), arch.qkv_bias)[0]
    return coarse + head, fine + head


@dataclass(frozen=True)
class CoarseFineTraining:
    """The ``coarse_fine`` section of a training recipe: the share of optimiser steps, from the start, in which
    the fine pass runs on all fine tokens (the paper's warm-up)."""
    warmup_fraction: float = WARMUP_FRACTION


class CoarseFine(Tokenizer):
    name, config, model = "coarse_fine", CoarseFineTokenizer, "nas.mechanisms.coarse_fine.model"
    training = CoarseFineTraining
    data_dependent, builds_model, picture = True, True, "nas.mechanisms.coarse_fine.picture"
    reducible = False  # its model runs the body twice without a token reduction

    def read(self, r: Reader, choosable: Callable) -> dict[str, Any]:
        r.allow("type", "patch_size", "coarse_grid", "alpha", "exit_threshold")
        d = lambda key: default(CoarseFineTokenizer, key)  # noqa: E731
        return {"type": self.name, "patch_size": r.take("patch_size", integer(1), d("patch_size")),
                "coarse_grid": r.take("coarse_grid", choosable(integer(1)), d("coarse_grid")),
                "alpha": r.take("alpha", choosable(number(0.0, 1.0, lo_open=True)), d("alpha")),
                "exit_threshold": r.take("exit_threshold", choosable(number(0.0)), d("exit_threshold"))}

    def check_space(self, t: dict[str, Any], fail: Fail) -> None:
        size, tok = t["input"]["size"], t["tokenizer"]
        p = tok["patch_size"]
        if size % p:
            fail("tokenizer.patch_size", f"input size {size} is not divisible by patch_size {p}")
        for g in options(tok["coarse_grid"]):
            if 2 * g * p != size:
                fail("tokenizer.coarse_grid", f"coarse_grid {g} needs input size 2 * {g} * patch_size = "
                     f"{2 * g * p}, got {size} (each coarse region splits into 2x2 patches); "
                     f"allowed here: {size // p // 2 if size % (2 * p) == 0 else 'none'}")
        if t["pooling"]["type"] != "none":
            fail("pooling.type", f"coarse_fine needs pooling type none (its fine sequence is not a grid), got "
                 f"{t['pooling']['type']}")
        if t["head"] != "cls":
            fail("head", "coarse_fine needs head cls (regions are chosen by class attention)")
        for key in reductions():
            if t.get(key) is not None:
                fail(key, f"{key} cannot be combined with the coarse_fine tokenizer")

    def check(self, arch: Any) -> None:
        tok = arch.tokenizer
        c, p = tok.coarse_grid, tok.patch_size
        if c < 1 or p < 1:
            raise NasError(f"coarse_grid and patch_size must be >= 1, got {c} and {p}", key="tokenizer.coarse_grid")
        if 2 * c * p != arch.img_size:
            raise NasError(f"coarse_grid {c} needs input size 2 * {c} * patch_size = {2 * c * p}, got "
                           f"{arch.img_size} (each coarse region splits into 2x2 patches)", key="tokenizer.coarse_grid")
        if not 0 < tok.alpha <= 1:
            raise NasError(f"alpha must be a number in (0.0, 1.0], got {tok.alpha}", key="tokenizer.alpha")
        if tok.exit_threshold < 0:
            raise NasError(f"exit_threshold must be >= 0, got {tok.exit_threshold}", key="tokenizer.exit_threshold")
        if arch.pooling.type != "none":
            raise NasError(f"coarse_fine needs pooling type none (its fine sequence is not a grid), got "
                           f"{arch.pooling.type}", key="pooling.type")
        if arch.head != "cls":
            raise NasError(f"coarse_fine needs head cls (regions are chosen by class attention), got {arch.head}",
                           key="head")
        if arch.reduction is not None:
            raise NasError("a token reduction cannot be combined with the coarse_fine tokenizer",
                           key=reduction_of(arch.reduction).name)
        if arch.num_classes < 1:
            raise NasError(f"coarse_fine needs num_classes >= 1 (the exit rule reads the softmax), got "
                           f"{arch.num_classes}", key="num_classes")
        dims = [st.dim for st in arch.stages]
        if len(set(dims)) > 1:
            raise NasError(f"stages without token pooling between them must share one dim, got {dims}", key="stages")
        if sum(st.num_layers for st in arch.stages) < 1:
            raise NasError("coarse_fine needs at least one transformer layer (class attention picks the regions)",
                           key="stages")

    def read_training(self, r: Reader) -> CoarseFineTraining:
        r.allow("warmup_fraction")
        return CoarseFineTraining(r.take("warmup_fraction", number(0.0, 1.0), WARMUP_FRACTION))

    def side(self, img_size: int, tok: CoarseFineTokenizer) -> int:
        return 2 * tok.coarse_grid  # the fine grid (the coarse pass sees half of it per side)

    def passes(self, tok: CoarseFineTokenizer, tokens: int) -> tuple[int, ...]:
        c = tok.coarse_grid
        return 1 + c * c, fine_len(c, num_regions(c, tok.alpha))

    def cost(self, img_size: int, in_chans: int, tok: CoarseFineTokenizer, st: Any, qkv_bias: bool,
             cls: bool) -> tuple[tuple[int, ...], int]:
        coarse, fine, params = coarse_fine_fixed(img_size, in_chans, tok, st.dim)
        return (coarse, fine), params


register(CoarseFine())

"""Analytic cost of an Arch: MACs and parameters, from the Arch alone (no model built, integer arithmetic).

This module owns every MACs and parameter formula of the toolkit; the models import it to record the
MACs they execute (ATS, CF-ViT), never the other way round, and it imports neither torch nor a model.

Convention (fvcore; docs/mechanisms.md, "Cost"): MACs = multiply-accumulates of one image at ``arch.img_size``,
counting only matmul / linear / conv / bmm, i.e. what ``torch.utils.flop_counter.FlopCounterMode`` reports
divided by 2 (with fused attention off). Counted: patch-embedding conv, the PS-ViT stem convs, position and
offset Linears of progressive sampling, Q/K/V projections, Q K^T, A V, output projection, both MLP layers,
pooling convs and the cls Linear of token pooling, CF-ViT's feature-reuse MLP, the head Linear. Not counted
(0): biases, norms, activations, softmax, the attention scale, residual and position adds, max pooling,
bilinear sampling, the mean of the gap head. Parameters count every tensor in ``model.parameters()`` exactly.

Layer MACs with N tokens, width C, MLP hidden H (``layer_macs``):
    basic:  3 N C^2 (qkv) + N^2 C (Q K^T) + N^2 C (A V) + N C^2 (proj) + 2 N C H (MLP)
    shared: no Q, K and no Q K^T: N C^2 (v) + N^2 C (A V) + N C^2 (proj) + 2 N C H
    ATS (N in, M = K'+1 out): Q, K, V and Q K^T on N rows; A V, proj and the MLP on M rows.

Structure: ``cost`` dispatches; ``static_cost`` sums ``tokenizer_cost`` + stages (``layer_macs`` /
``layer_params``) + ``pooling_cost`` + ``head_cost``. The data-dependent methods (ATS: ``ats_macs_bounds``;
CF-ViT: ``coarse_fine_cost``) each add one function and one line in ``cost``. The parts take plain numbers
so that ``nas.space.bounds`` can optimise over a space with the same formulas.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from nas.arch import CELL_LAYERS, Arch, CoarseFineTokenizer, PatchTokenizer, ProgressiveTokenizer, Stage, Tokenizer
from nas import shapes
from nas.errors import NasError
from nas.shapes import (
    REUSE_RATIO,
    STEM_WIDTH,
    ats_max_kept,
    ats_stage,
    check_coarse_fine,
    check_pooling,
    check_progressive,
    conv_out,
    feature_size,
    fine_len,
    grid_side,
    num_regions,
    pooled,
    pooled_len_1d,
    progressive_modules,
    stage_tokens,
    stem_widths,
)


@dataclass(frozen=True)
class Cost:
    """MACs of one image and parameter count. For static archs ``macs == macs_min == macs_max``; for
    data-dependent ones ``macs`` is the worst case (``macs_max``)."""
    macs: int
    params: int
    macs_min: int
    macs_max: int


# --- one layer, one cell --------------------------------------------------------------------------------
def layer_macs(n_tokens, dim: int, hidden: int, shared: bool = False, n_out=None):
    """MACs of one pre-norm transformer layer on ``n_tokens`` tokens of width ``dim`` (ints or tensors).

    ``shared``: the layer reuses an inherited attention map (no Q, K projections, no Q K^T).
    ``n_out``: output rows when the layer keeps only some of them (ATS: cls + K' kept tokens); Q, K, V and
    the attention map still cover all ``n_tokens`` tokens, A V, proj and the MLP only ``n_out`` rows.
    """
    n = n_tokens
    m = n if n_out is None else n_out
    qk = 0 if shared else 2 * n * dim * dim + n * n * dim   # Q, K projections + Q K^T
    return qk + n * dim * dim + m * n * dim + m * dim * dim + 2 * m * dim * hidden  # + V, A V, proj, MLP


def layer_params(dim: int, hidden: int, shared: bool = False, qkv_bias: bool = True) -> int:
    """Parameters of one layer: 2 LayerNorms, qkv (v only when shared), proj, MLP."""
    proj = (1 if shared else 3) * (dim * dim + dim * qkv_bias)
    return 4 * dim + proj + dim * dim + dim + dim * hidden + hidden + hidden * dim + dim


CELL_SHARING = {kind: tuple(i > 0 for i in range(n)) for kind, n in CELL_LAYERS.items()}
"""The layers of each cell kind as their ``shared`` flags: in a pair, the second reuses the first's map."""


def cell_macs(kind: str, n_tokens: int, dim: int, hidden: int, n_out: int | None = None) -> int:
    """MACs of one cell; ``n_out`` (ATS) applies to the cell's last layer, where ATS acts."""
    layers = CELL_SHARING[kind]
    return sum(layer_macs(n_tokens, dim, hidden, shared, n_out if i == len(layers) - 1 else None)
               for i, shared in enumerate(layers))


def cell_params(kind: str, dim: int, hidden: int, qkv_bias: bool = True) -> int:
    return sum(layer_params(dim, hidden, shared, qkv_bias) for shared in CELL_SHARING[kind])


def stage_cost(st: Stage, n_tokens: int, qkv_bias: bool, stage: int = 0) -> tuple[int, int]:
    """(MACs, params) of a stage's cells on ``n_tokens`` tokens: one own-map layer per basic cell and per
    shared pair, plus one sharing layer per pair. (The hot path of ``cost``: counts, not a loop over cells.)"""
    cells = st.cells
    pairs = cells.count("shared_pair")
    full = cells.count("basic") + pairs  # layers computing their own attention map
    if full + cells.count("identity") != len(cells):
        raise NasError(f"unknown cell kind in {list(cells)}; allowed: basic, shared_pair, identity",
                       key=f"stages[{stage}].cells")
    if not full:
        return 0, 0
    d, h = st.dim, st.hidden
    macs, params = full * layer_macs(n_tokens, d, h), full * layer_params(d, h, False, qkv_bias)
    if pairs:
        macs += pairs * layer_macs(n_tokens, d, h, True)
        params += pairs * layer_params(d, h, True, qkv_bias)
    return macs, params


# --- tokenizers, pooling, head --------------------------------------------------------------------------
def patch_embed_cost(img_size: int, patch: int, in_chans: int, dim: int) -> tuple[int, int]:
    """(MACs, params) of the patch-embedding conv (with bias) on an ``img_size`` image."""
    side, conv = img_size // patch, patch * patch * in_chans * dim
    return side * side * conv, conv + dim


def _bottleneck_cost(in_chs: int, mid: int, out: int, pixels: int) -> tuple[int, int]:
    """(MACs, params) of PS-ViT's stem bottleneck: three convs (+ projection shortcut), BN affine."""
    weights = in_chs * mid + 9 * mid * mid + mid * out + (in_chs * out if in_chs != out else 0)
    bn = 2 * (2 * mid + out + (out if in_chs != out else 0))
    return pixels * weights, weights + bn


def progressive_cost(img_size: int, in_chans: int, tok: ProgressiveTokenizer, dim: int, hidden: int,
                     qkv_bias: bool, cls: bool) -> tuple[int, int]:
    """(MACs, params) of PS-ViT's progressive sampling (stem, N rounds of sampling, cls token).

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


def tokenizer_cost(arch: Arch) -> tuple[int, int]:
    """(MACs, params) of the tokenizer module of a static arch."""
    return tokenizer_part(arch.img_size, arch.in_chans, arch.tokenizer, arch.stages[0], arch.qkv_bias,
                          arch.has_cls_token, arch)


def tokenizer_part(img_size: int, in_chans: int, tok: Tokenizer, st: Stage, qkv_bias: bool, cls: bool,
                   arch: Arch | None = None) -> tuple[int, int]:
    """(MACs, params) of a patch or progressive tokenizer feeding stage ``st`` (cls and positions included).

    ``arch``, when given, is checked by the progressive tokenizer's rules first.
    """
    if isinstance(tok, PatchTokenizer):
        macs, params = patch_embed_cost(img_size, tok.patch_size, in_chans, st.dim)
        n = (img_size // tok.patch_size) ** 2 + cls  # position table, cls position included
        return macs, params + cls * st.dim + n * st.dim
    if isinstance(tok, ProgressiveTokenizer):
        if arch is not None:
            check_progressive(arch)
        return progressive_cost(img_size, in_chans, tok, st.dim, st.hidden, qkv_bias, cls)
    raise NasError(f"no static cost for tokenizer {tok.type!r}", key="tokenizer.type")


def pooling_cost(pooling_type: str, kernel: int, n_patch: int, side: int, dim_in: int, dim_out: int,
                 cls: bool) -> tuple[int, int, int, int]:
    """(MACs, params, patch tokens after, grid side after) of the pooling between two stages, entered by
    ``n_patch`` patch tokens (a ``side`` x ``side`` grid for 2d)."""
    check_pooling(pooling_type, dim_in, dim_out)
    if pooling_type == "none":
        return 0, 0, n_patch, side
    cls_macs, cls_params = dim_in * dim_out * cls, (dim_in * dim_out + dim_out) * cls
    if pooling_type == "1d":  # stride-1 Conv1d, then max pooling
        n_out, side_out = pooled_len_1d(n_patch, kernel), side
        positions, conv = conv_out(n_patch, kernel, 1, kernel // 2), kernel * dim_in * dim_out
    else:                     # stride-2 Conv2d
        n_out, side_out = pooled(pooling_type, kernel, n_patch, side)
        positions, conv = n_out, kernel * kernel * dim_in * dim_out
    return positions * conv + cls_macs, conv + dim_out + cls_params, n_out, side_out


def head_cost(dim: int, num_classes: int) -> tuple[int, int]:
    """(MACs, params) of the final LayerNorm and the classifier (none when num_classes == 0)."""
    return dim * num_classes, 2 * dim + dim * num_classes + num_classes


# --- static archs ---------------------------------------------------------------------------------------
def static_cost(arch: Arch) -> tuple[int, int]:
    """(MACs, params) of the static model ``nas.models.build_model(arch)`` builds."""
    macs, params = tokenizer_cost(arch)
    side, cls = grid_side(arch), arch.has_cls_token
    n_patch = side * side
    pool, kernel = arch.pooling.type, arch.pooling.kernel
    prev = None
    for s, st in enumerate(arch.stages):
        if prev is not None:
            m, p, n_patch, side = pooling_cost(pool, kernel, n_patch, side, prev.dim, st.dim, cls)
            macs, params = macs + m, params + p
        m, p = stage_cost(st, n_patch + cls, arch.qkv_bias, s)
        macs, params = macs + m, params + p
        prev = st
    m, p = head_cost(arch.stages[-1].dim, arch.num_classes)
    return macs + m, params + p


def cost(arch: Arch) -> Cost:
    """MACs (one image) and parameters of ``arch``; see the module docstring for what is counted."""
    # The data-dependent methods dispatch here, one line each.
    if isinstance(arch.tokenizer, CoarseFineTokenizer):
        return coarse_fine_cost(arch)
    macs, params = static_cost(arch)
    if arch.ats is not None:
        lo, hi = ats_macs_bounds(arch, macs)
        return Cost(hi, params, lo, hi)
    return Cost(macs, params, macs, macs)


# --- ATS ------------------------------------------------------------------------------------------------
def ats_fixed_macs(arch: Arch, static_macs: int | None = None) -> int:
    """MACs that do not depend on ATS's choices: everything except the layers of the stage(s) ATS acts in.

    The schema keeps ATS after the last token pooling, so the ATS stages are the last ones (all stages
    when there is no pooling); the tokenizer, poolings and head are fixed. ``static_macs``: the arch's
    ``static_cost`` MACs when the caller has them already.
    """
    n = stage_tokens(arch)
    fixed = static_cost(arch)[0] if static_macs is None else static_macs
    for s, st in enumerate(arch.stages):
        if ats_stage(arch.pooling.type, s, len(arch.stages)):
            fixed -= stage_cost(st, n[s], arch.qkv_bias, s)[0]
    return fixed


def ats_layers_bounds(n_tokens: int, layers: Iterable[tuple[int, int, bool, bool]], keep: float | None = None,
                      k: int | None = None) -> tuple[int, int]:
    """(macs_min, macs_max) of a chain of layers ``(dim, hidden, shared, ats)`` entered by ``n_tokens``
    tokens (cls included), per image.

    Worst case: every ATS layer keeps min(K, N) patch tokens (``nas.shapes.ats_max_kept``, from the
    worst-case tokens entering it); best case: every ATS layer keeps one patch token (K' = 1, the fewest
    inverse-transform sampling keeps).
    """
    lo = hi = 0
    n_lo = n_hi = n_tokens
    for dim, hidden, shared, ats in layers:
        if ats:
            out_hi, out_lo = 1 + ats_max_kept(n_hi - 1, keep, k), min(2, n_lo)
            hi += layer_macs(n_hi, dim, hidden, shared, n_out=out_hi)
            lo += layer_macs(n_lo, dim, hidden, shared, n_out=out_lo)
            n_hi, n_lo = out_hi, out_lo
        else:
            hi += layer_macs(n_hi, dim, hidden, shared)
            lo += layer_macs(n_lo, dim, hidden, shared)
    return lo, hi


def ats_macs_bounds(arch: Arch, static_macs: int | None = None) -> tuple[int, int]:
    """(macs_min, macs_max) of an ATS arch, per image (``ats_layers_bounds`` over the ATS stages' layers).

    ``arch.ats.blocks`` are global cell indices; ATS acts in the cell's last layer.
    """
    fixed, tokens = ats_fixed_macs(arch, static_macs), stage_tokens(arch)
    in_ats = [ats_stage(arch.pooling.type, s, len(arch.stages)) for s in range(len(arch.stages))]
    blocks = set(arch.ats.blocks)
    layers = []
    for g, (s, _, kind) in enumerate(arch.cells()):
        if in_ats[s]:
            st, shared_flags = arch.stages[s], CELL_SHARING[kind]
            layers += [(st.dim, st.hidden, shared, g in blocks and i == len(shared_flags) - 1)
                       for i, shared in enumerate(shared_flags)]
    lo, hi = ats_layers_bounds(tokens[in_ats.index(True)], layers, arch.ats.keep, arch.ats.k)
    return fixed + lo, fixed + hi


# --- CF-ViT ---------------------------------------------------------------------------------------------
def coarse_fine_fixed(img_size: int, in_chans: int, tok: CoarseFineTokenizer, dim: int) -> tuple[int, int, int]:
    """(coarse pass, fine pass, params) of CF-ViT's parts outside the layers and the head: the patch conv
    (c^2 coarse, (2c)^2 fine positions), cls, both position tables and the feature-reuse LayerNorm + MLP.

    The fine pass embeds all (2c)^2 fine patches and runs the reuse MLP on all c^2 coarse tokens, then keeps
    the informative ones (what the published figures count).
    """
    c, C, H = tok.coarse_grid, dim, REUSE_RATIO * dim
    conv = tok.patch_size ** 2 * in_chans * C
    params = conv + C + C + (1 + 4 * c * c) * C + (1 + c * c) * C  # conv + bias, cls, fine and coarse tables
    params += 2 * C + C * H + H + H * C + C                          # reuse: LayerNorm + Mlp(C, 4C)
    return c * c * conv, 4 * c * c * conv + 2 * c * c * C * H, params


def coarse_fine_macs(arch: Arch, k: int | None = None) -> tuple[int, int]:
    """(coarse pass, fine pass) MACs of one image with ``k`` informative regions (default ceil(alpha c^2)).

    coarse: c^2 patch convs + layers on 1 + c^2 tokens + head.
    fine:   (2c)^2 patch convs + reuse MLP on c^2 tokens + layers on 1 + 4k + c^2 - k tokens + head.
    """
    tok = check_coarse_fine(arch)
    c = tok.coarse_grid
    k = num_regions(c, tok.alpha) if k is None else k
    coarse, fine, _ = coarse_fine_fixed(arch.img_size, arch.in_chans, tok, arch.stages[0].dim)
    head = head_cost(arch.stages[-1].dim, arch.num_classes)[0]
    for st in arch.stages:
        coarse += stage_cost(st, 1 + c * c, arch.qkv_bias)[0]
        fine += stage_cost(st, fine_len(c, k), arch.qkv_bias)[0]
    return coarse + head, fine + head


def coarse_fine_cost(arch: Arch) -> Cost:
    """Analytic cost: ``macs_min`` = coarse pass only, ``macs_max`` = coarse + fine (+ reuse MLP),
    ``macs`` = ``macs_max``; params = every parameter of ``CoarseFineViT(arch)``."""
    coarse, fine = coarse_fine_macs(arch)
    params = coarse_fine_fixed(arch.img_size, arch.in_chans, arch.tokenizer, arch.stages[0].dim)[2]
    params += sum(stage_cost(st, 0, arch.qkv_bias)[1] for st in arch.stages)
    params += head_cost(arch.stages[-1].dim, arch.num_classes)[1]
    return Cost(macs=coarse + fine, params=params, macs_min=coarse, macs_max=coarse + fine)


def training_floats_floor(arch: Arch) -> int:
    """A lower bound on the activations one image keeps for the backward pass of a training step, in floats.

    Per layer with N tokens, width C, MLP hidden H and h heads, autograd must keep at least the attention
    probabilities (h N^2, absent in sharing layers' own softmax but kept by the map's owner), the inputs of
    the four linear maps (qkv, proj, fc1, fc2: N (2C + 2H) counting fc1's output through GELU once) and the two
    LayerNorm inputs (2 N C). Everything else (tokenizer, softmax inputs, dropout masks, optimizer state) is
    left out, so the true need is higher: this only ever refuses a recipe that certainly cannot fit.
    CF-ViT counts its fine pass (the longer one).
    """
    tok = arch.tokenizer
    tokens = ([shapes.fine_len(tok.coarse_grid, shapes.num_regions(tok.coarse_grid, tok.alpha))] * len(arch.stages)
              if isinstance(tok, CoarseFineTokenizer) else shapes.stage_tokens(arch))
    floats = 0
    for n, st in zip(tokens, arch.stages):
        c, h = st.dim, st.hidden
        per_layer = n * (4 * c + 2 * h)
        layers = st.num_layers
        owners = sum(1 for kind in st.cells if kind != "identity")  # one map per basic cell or shared pair
        floats += layers * per_layer + owners * st.heads * n * n
    return floats

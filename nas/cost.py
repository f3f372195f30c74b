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

Structure: ``cost`` sums the tokenizer's own modules (its ``Tokenizer.cost``, in the mechanism's package) +
stages (``layer_macs`` / ``layer_params``) + ``pooling_cost`` + ``head_cost``, the body and head once per pass of
the tokenizer (CF-ViT's coarse and fine pass); a token reduction (ATS) bounds the MACs of the stages it acts in
(``reduced_macs_bounds``). A mechanism's own formulas (the PS-ViT stem, CF-ViT's feature reuse, the ATS budget)
live in the torch-free half of its package. The parts take plain numbers so that ``nas.space.bounds`` can
optimise over a space with the same formulas.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from nas.arch import CELL_LAYERS, Arch, Stage
from nas.errors import NasError
from nas.mechanisms import Reduction, reduction_of, tokenizer
from nas.shapes import check_pooling, conv_out, grid_side, passes, pooled, pooled_len_1d, reduction_stage, stage_tokens


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


# --- pooling, head --------------------------------------------------------------------------------------
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


# --- whole archs ----------------------------------------------------------------------------------------
def tokenizer_part(arch: Arch) -> tuple[tuple[int, ...], int]:
    """(MACs in each pass, params) of the arch's tokenizer modules (its ``Tokenizer.cost``)."""
    return tokenizer(arch.tokenizer).cost(arch.img_size, arch.in_chans, arch.tokenizer, arch.stages[0],
                                          arch.qkv_bias, arch.has_cls_token)


def body_cost(arch: Arch, n_tokens: int | None = None) -> tuple[int, int]:
    """(MACs, params) of the stages and the poolings between them, entered by the tokenizer's grid (or by
    ``n_tokens`` tokens, cls included, which needs pooling ``none``)."""
    side, cls = grid_side(arch), arch.has_cls_token
    n_patch = side * side if n_tokens is None else n_tokens - cls
    pool, kernel = arch.pooling.type, arch.pooling.kernel
    if n_tokens is not None and pool != "none" and len(arch.stages) > 1:
        raise NasError("a tokenizer that runs the body on its own token counts needs pooling type none",
                       key="pooling.type")
    macs = params = 0
    prev = None
    for s, st in enumerate(arch.stages):
        if prev is not None:
            m, p, n_patch, side = pooling_cost(pool, kernel, n_patch, side, prev.dim, st.dim, cls)
            macs, params = macs + m, params + p
        m, p = stage_cost(st, n_patch + cls, arch.qkv_bias, s)
        macs, params = macs + m, params + p
        prev = st
    return macs, params


def pass_macs(arch: Arch) -> tuple[list[int], int]:
    """(MACs of each pass of the tokenizer: its modules + body + head, params of the whole model), no reduction."""
    tok_macs, params = tokenizer_part(arch)
    runs = passes(arch)
    one = len(runs) == 1
    head_m, head_p = head_cost(arch.stages[-1].dim, arch.num_classes)
    out = []
    for t, n in zip(tok_macs, runs):
        m, p = body_cost(arch, None if one else n)
        out.append(t + m + head_m)
    return out, params + p + head_p


def static_cost(arch: Arch) -> tuple[int, int]:
    """(MACs, params) of a one-pass arch without its token reduction (what the reduction cannot change is part)."""
    macs, params = pass_macs(arch)
    return sum(macs), params


def cost(arch: Arch) -> Cost:
    """MACs (one image) and parameters of ``arch``; see the module docstring for what is counted.

    A tokenizer with several passes that may stop early (CF-ViT): ``macs_min`` is the first pass alone,
    ``macs_max`` = ``macs`` all of them.
    """
    mech = tokenizer(arch.tokenizer)
    mech.check(arch)
    macs, params = pass_macs(arch)
    total = sum(macs)
    if arch.reduction is not None:
        lo, hi = reduced_macs_bounds(arch, total)
        return Cost(hi, params, lo, hi)
    return Cost(total, params, macs[0] if mech.data_dependent else total, total)


# --- token reductions (ATS) -----------------------------------------------------------------------------
def reduced_fixed_macs(arch: Arch, static_macs: int | None = None) -> int:
    """MACs that a token reduction cannot change: everything except the layers of the stage(s) it acts in.

    The schema keeps reductions after the last token pooling, so those stages are the last ones (all stages
    when there is no pooling); the tokenizer, poolings and head are fixed. ``static_macs``: the arch's
    ``static_cost`` MACs when the caller has them already.
    """
    n = stage_tokens(arch)
    fixed = static_cost(arch)[0] if static_macs is None else static_macs
    for s, st in enumerate(arch.stages):
        if reduction_stage(arch.pooling.type, s, len(arch.stages)):
            fixed -= stage_cost(st, n[s], arch.qkv_bias, s)[0]
    return fixed


def reduced_layers_bounds(n_tokens: int, layers: Iterable[tuple[int, int, bool, bool]], reduction: Reduction,
                          cfg: object) -> tuple[int, int]:
    """(macs_min, macs_max) of a chain of layers ``(dim, hidden, shared, reduces)`` entered by ``n_tokens``
    tokens (cls included), per image.

    Worst case: every reducing layer keeps ``reduction.max_kept`` patch tokens of the worst-case tokens entering
    it; best case: ``reduction.min_kept`` of the fewest.
    """
    lo = hi = 0
    n_lo = n_hi = n_tokens
    for dim, hidden, shared, reduces in layers:
        if reduces:
            out_hi, out_lo = 1 + reduction.max_kept(cfg, n_hi - 1), 1 + reduction.min_kept(cfg, n_lo - 1)
            hi += layer_macs(n_hi, dim, hidden, shared, n_out=out_hi)
            lo += layer_macs(n_lo, dim, hidden, shared, n_out=out_lo)
            n_hi, n_lo = out_hi, out_lo
        else:
            hi += layer_macs(n_hi, dim, hidden, shared)
            lo += layer_macs(n_lo, dim, hidden, shared)
    return lo, hi


def reduced_macs_bounds(arch: Arch, static_macs: int | None = None) -> tuple[int, int]:
    """(macs_min, macs_max) of an arch with a token reduction, per image (``reduced_layers_bounds`` over the
    layers of the stages it acts in). Its ``blocks`` are global cell indices; it acts in the cell's last layer."""
    fixed, tokens = reduced_fixed_macs(arch, static_macs), stage_tokens(arch)
    in_red = [reduction_stage(arch.pooling.type, s, len(arch.stages)) for s in range(len(arch.stages))]
    blocks = set(arch.reduction.blocks)
    layers = []
    for g, (s, _, kind) in enumerate(arch.cells()):
        if in_red[s]:
            st, shared_flags = arch.stages[s], CELL_SHARING[kind]
            layers += [(st.dim, st.hidden, shared, g in blocks and i == len(shared_flags) - 1)
                       for i, shared in enumerate(shared_flags)]
    lo, hi = reduced_layers_bounds(tokens[in_red.index(True)], layers, reduction_of(arch.reduction), arch.reduction)
    return fixed + lo, fixed + hi


def training_floats_floor(arch: Arch) -> int:
    """A lower bound on the activations one image keeps for the backward pass of a training step, in floats.

    Per layer with N tokens, width C, MLP hidden H and h heads, autograd must keep at least the attention
    probabilities (h N^2, absent in sharing layers' own softmax but kept by the map's owner), the inputs of
    the four linear maps (qkv, proj, fc1, fc2: N (2C + 2H) counting fc1's output through GELU once) and the two
    LayerNorm inputs (2 N C). Everything else (tokenizer, softmax inputs, dropout masks, optimizer state) is
    left out, so the true need is higher: this only ever refuses a recipe that certainly cannot fit.
    A tokenizer with several passes counts its longest.
    """
    runs = passes(arch)
    tokens = stage_tokens(arch) if len(runs) == 1 else [max(runs)] * len(arch.stages)
    floats = 0
    for n, st in zip(tokens, arch.stages):
        c, h = st.dim, st.hidden
        per_layer = n * (4 * c + 2 * h)
        layers = st.num_layers
        owners = sum(1 for kind in st.cells if kind != "identity")  # one map per basic cell or shared pair
        floats += layers * per_layer + owners * st.heads * n * n
    return floats

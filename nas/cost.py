"""Analytic cost of an Arch: MACs and parameters, from the Arch alone (no model built, integer arithmetic).

Convention (methods.md, fvcore): MACs = multiply-accumulates of one image at ``arch.img_size``, counting only
matmul / linear / conv / bmm, i.e. what ``torch.utils.flop_counter.FlopCounterMode`` reports divided by 2 (with
fused attention off). Counted: patch-embedding conv, Q/K/V projections, Q K^T, A V, output projection, both
MLP layers, pooling convs and the cls Linear of token pooling, the head Linear. Not counted (0): biases,
LayerNorm, GELU, softmax, the attention scale, residual and position adds, max pooling, the mean of the gap
head. Parameters count every tensor in ``model.parameters()`` exactly (biases, norms, cls and position tables).

Layer MACs with N tokens, width C, MLP hidden H (``layer_macs``):
    basic:  3 N C^2 (qkv) + N^2 C (Q K^T) + N^2 C (A V) + N C^2 (proj) + 2 N C H (MLP)
    shared: no Q, K and no Q K^T: N C^2 (v) + N^2 C (A V) + N C^2 (proj) + 2 N C H

Structure: ``cost`` dispatches; ``static_cost`` sums ``tokenizer_cost`` + stages (``layer_macs`` /
``layer_params``) + ``pooling_cost`` + ``head_cost``. The data-dependent methods (ATS: ``macs_min`` /
``macs_max``; CF-ViT) each add one function and one line in ``cost``.
"""
from __future__ import annotations

from dataclasses import dataclass

from nas.arch import Arch, CoarseFineTokenizer, PatchTokenizer, Pooling, ProgressiveTokenizer
from nas.errors import NasError
from nas.models.pooling import pooled_len_1d, pooled_side_2d


@dataclass(frozen=True)
class Cost:
    """MACs of one image and parameter count. For static archs ``macs == macs_min == macs_max``; for
    data-dependent ones ``macs`` is the worst case (``macs_max``)."""
    macs: int
    params: int
    macs_min: int
    macs_max: int


def layer_macs(n_tokens: int, dim: int, hidden: int, shared: bool = False, n_out: int | None = None) -> int:
    """MACs of one pre-norm transformer layer on ``n_tokens`` tokens of width ``dim``.

    ``shared``: the layer reuses an inherited attention map (no Q, K projections, no Q K^T).
    ``n_out``: output rows when the layer keeps only some of them (ATS: cls + K kept tokens); Q, K, V and
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


def patch_tokenizer_cost(arch: Arch, tok: PatchTokenizer) -> tuple[int, int]:
    """(MACs, params) of the DeiT tokenizer: patch conv, cls token, position table (cls position included)."""
    c, p, side = arch.stages[0].dim, tok.patch_size, arch.img_size // tok.patch_size
    n, conv = side * side, p * p * arch.in_chans * c
    cls = int(arch.has_cls_token)
    return n * conv, conv + c + cls * c + (n + cls) * c


def grid_side(arch: Arch) -> int:
    """Side of the square grid of patch tokens the tokenizer emits (side * side tokens, plus cls)."""
    tok = arch.tokenizer
    if isinstance(tok, PatchTokenizer):
        return arch.img_size // tok.patch_size
    if isinstance(tok, ProgressiveTokenizer):
        return tok.points
    raise NasError(f"no static token grid for tokenizer {tok.type!r}", key="tokenizer.type")


def tokenizer_cost(arch: Arch) -> tuple[int, int]:
    """(MACs, params) of the tokenizer module."""
    tok = arch.tokenizer
    if isinstance(tok, PatchTokenizer):
        return patch_tokenizer_cost(arch, tok)
    if isinstance(tok, ProgressiveTokenizer):
        from nas.models.progressive import progressive_cost  # lazy: written alongside the model
        return progressive_cost(arch)
    raise NasError(f"no static cost for tokenizer {tok.type!r}", key="tokenizer.type")


def pooling_cost(pooling: Pooling, n_patch: int, side: int, dim_in: int, dim_out: int,
                 cls_token: bool) -> tuple[int, int, int, int]:
    """(MACs, params, patch tokens after, grid side after) of the pooling between two stages."""
    if pooling.type == "none":
        if dim_in != dim_out:
            raise NasError(f"stages of widths {dim_in} and {dim_out} need token pooling between them "
                           "(pooling.type 1d or 2d) to change the width; got 'none'", key="pooling.type")
        return 0, 0, n_patch, side
    cls_macs = dim_in * dim_out * cls_token
    cls_params = (dim_in * dim_out + dim_out) * cls_token
    if pooling.type == "1d":
        k = pooling.kernel
        n_conv = n_patch + 2 * (k // 2) - k + 1  # Conv1d output length (stride 1)
        n_out = pooled_len_1d(n_patch, k)
        return (n_conv * k * dim_in * dim_out + cls_macs, k * dim_in * dim_out + dim_out + cls_params,
                n_out, side)
    if pooling.type == "2d":
        k = pooling.kernel
        s = pooled_side_2d(side, k)
        return s * s * k * k * dim_in * dim_out + cls_macs, k * k * dim_in * dim_out + dim_out + cls_params, s * s, s
    raise NasError(f"unknown pooling type {pooling.type!r}; allowed: none, 1d, 2d", key="pooling.type")


def head_cost(arch: Arch) -> tuple[int, int]:
    """(MACs, params) of the final LayerNorm and the classifier (none when num_classes == 0)."""
    c, k = arch.stages[-1].dim, arch.num_classes
    return c * k, 2 * c + c * k + k


def stage_layers_macs(n_tokens: int, dim: int, hidden: int, full: int, pairs: int) -> int:
    """MACs of a stage's layers on ``n_tokens`` tokens: ``full`` layers computing their own attention map
    (basic cells and the first layer of each pair) and ``pairs`` sharing second layers."""
    return full * layer_macs(n_tokens, dim, hidden) + pairs * layer_macs(n_tokens, dim, hidden, shared=True)


def static_cost(arch: Arch) -> tuple[int, int]:
    """(MACs, params) of the static model ``nas.models.build_model(arch)`` builds."""
    macs, params = tokenizer_cost(arch)
    side, cls = grid_side(arch), arch.has_cls_token
    n_patch = side * side
    prev = None
    for s, st in enumerate(arch.stages):
        if prev is not None:
            m, p, n_patch, side = pooling_cost(arch.pooling, n_patch, side, prev.dim, st.dim, cls)
            macs, params = macs + m, params + p
        cells = st.cells
        basic, pairs = cells.count("basic"), cells.count("shared_pair")
        if basic + pairs + cells.count("identity") != len(cells):
            raise NasError(f"unknown cell kind in {list(cells)}; allowed: basic, shared_pair, identity",
                           key=f"stages[{s}].cells")
        d, h, full = st.dim, st.hidden, basic + pairs  # full: layers computing their own map
        macs += stage_layers_macs(n_patch + cls, d, h, full, pairs)
        params += full * layer_params(d, h, False, arch.qkv_bias) + pairs * layer_params(d, h, True, arch.qkv_bias)
        prev = st
    m, p = head_cost(arch)
    return macs + m, params + p


def stage_tokens(arch: Arch) -> list[int]:
    """Tokens (cls included) seen by the layers of each stage, e.g. [197, 99, 50] for 1d pooling at 224/16."""
    side = grid_side(arch)
    n_patch, cls, out = side * side, int(arch.has_cls_token), []
    for s, st in enumerate(arch.stages):
        if s:
            _, _, n_patch, side = pooling_cost(arch.pooling, n_patch, side, arch.stages[s - 1].dim, st.dim, bool(cls))
        out.append(n_patch + cls)
    return out


def cost(arch: Arch) -> Cost:
    """MACs (one image) and parameters of ``arch``; see the module docstring for what is counted."""
    # The data-dependent methods dispatch here, one line each.
    if isinstance(arch.tokenizer, CoarseFineTokenizer):
        from nas.models.coarse_fine import coarse_fine_cost  # lazy: written alongside the model
        return coarse_fine_cost(arch)
    macs, params = static_cost(arch)
    if arch.ats is not None:
        lo, hi = ats_macs_bounds(arch, macs)
        return Cost(hi, params, lo, hi)
    return Cost(macs, params, macs, macs)


def ats_stage(arch: Arch, s: int) -> bool:
    """Whether stage ``s`` can hold ATS cells (after the last pooling; every stage without pooling)."""
    return arch.pooling.type == "none" or s == len(arch.stages) - 1


def ats_fixed_macs(arch: Arch, static_macs: int | None = None) -> int:
    """MACs that do not depend on ATS's choices: everything except the layers of the stage(s) ATS acts in.

    The schema keeps ATS after the last token pooling, so the ATS stages are the last ones (all stages
    when there is no pooling); the tokenizer, poolings and head are fixed. ``static_macs``: the arch's
    ``static_cost`` MACs when the caller has them already.
    """
    n = stage_tokens(arch)
    fixed = static_cost(arch)[0] if static_macs is None else static_macs
    for s, st in enumerate(arch.stages):
        if ats_stage(arch, s):
            pairs = st.cells.count("shared_pair")
            fixed -= stage_layers_macs(n[s], st.dim, st.hidden, st.cells.count("basic") + pairs, pairs)
    return fixed


def ats_macs_bounds(arch: Arch, static_macs: int | None = None) -> tuple[int, int]:
    """(macs_min, macs_max) of an ATS arch, per image.

    Worst case: every ATS layer keeps its full budget K (from the worst-case tokens entering it); best
    case: every ATS layer keeps one patch token (K' = 1, the fewest inverse-transform sampling keeps).
    ATS layer MACs (methods.md section 2): ``layer_macs(n_in, ..., n_out=K'+1)``.
    """
    from nas.models.ats import budget

    lo = hi = ats_fixed_macs(arch, static_macs)
    tokens = stage_tokens(arch)
    n_lo = n_hi = tokens[next(s for s in range(len(arch.stages)) if ats_stage(arch, s))]
    first = 0  # global index of the stage's first cell (``arch.ats.blocks`` counts cells over all stages)
    for s, st in enumerate(arch.stages):
        first, cells = first + len(st.cells), enumerate(st.cells, start=first)
        if not ats_stage(arch, s):
            continue
        for g, kind in cells:
            # the cell's layers as (shared, is the cell's last layer): ATS acts in the last one
            layers = {"basic": [(False, True)], "shared_pair": [(False, False), (True, True)], "identity": []}[kind]
            for shared, last in layers:
                if last and g in arch.ats.blocks:
                    out_hi, out_lo = 1 + budget(n_hi - 1, arch.ats.keep, arch.ats.k), min(2, n_lo)
                    hi += layer_macs(n_hi, st.dim, st.hidden, shared, n_out=out_hi)
                    lo += layer_macs(n_lo, st.dim, st.hidden, shared, n_out=out_lo)
                    n_hi, n_lo = out_hi, out_lo
                else:
                    hi += layer_macs(n_hi, st.dim, st.hidden, shared)
                    lo += layer_macs(n_lo, st.dim, st.hidden, shared)
    return lo, hi

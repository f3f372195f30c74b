"""Shapes and validity rules of an Arch: token counts, grids, widths, ATS budgets. Integers only, no torch.

Every rule that more than one module needs is written here once: the models build their layers from it,
``nas.cost`` counts with it, and the space schema checks every reachable choice with it. Nothing here
imports a model (the import order is arch -> shapes -> cost -> models).

Decisions where the papers are silent (each is repeated where it is implemented):
- 1d token pooling pads ``kernel // 2`` on both sides, so an even kernel gives one extra position before
  max pooling (``pooled_len_1d``); 2d pooling pads ``(kernel - 1) // 2`` (``pooled_side_2d``).
- ATS budget (``ats_budget``): with ``keep`` (ratio rho) the paper's K = max(round(rho N), 8), capped at N;
  with ``k`` the number of quantiles drawn is ``k`` whatever N is, as in the ATS authors' code: their DeiT-S
  (NUM_TOKENS = 197, cls included) draws 196 quantiles in every ATS block, also after earlier blocks dropped
  tokens, i.e. ``k: 196``. Duplicates merge, so the tokens kept are K' <= min(K, N) (``ats_max_kept``).
- CF-ViT's k = ceil(alpha c^2 - 1e-9) informative regions: the tolerance keeps float noise
  (0.7 * 100 = 70.00000000000001) from adding a region.
"""
from __future__ import annotations

import math

from nas.arch import CELL_KINDS, Arch, CoarseFineTokenizer, PatchTokenizer, ProgressiveTokenizer, Stage, Tokenizer
from nas.errors import NasError

# --- widths ---------------------------------------------------------------------------------------------
STEM_WIDTH = 64
"""PS-ViT stem: channels of the 7x7 stem conv and inner width of both bottlenecks (ResNet-50's first stage)."""
STAGE1_WIDTH = 256
"""Output width of ResNet-50's first-stage blocks; PS-ViT's first bottleneck outputs ``min(C, STAGE1_WIDTH)``."""
REUSE_RATIO = 4
"""CF-ViT: hidden width of the feature-reuse MLP, in multiples of the token width C."""
WARMUP_FRACTION = 2 / 3
"""CF-ViT: share of training with all fine tokens (paper, Implementation Details: 200 of 300 epochs); here, not in
``nas.models.coarse_fine``, so that the torch-free recipe (``nas.train.recipe``) defaults to it."""
MIN_TOKENS = 8
"""ATS: the paper's floor on K_n in the ratio rule K_n = max(round(rho * N_in), 8)."""


def heads_error(dim: int, heads: int) -> str | None:
    """None when ``heads`` attention heads split width ``dim`` evenly, else what is wrong."""
    if dim >= 1 and heads >= 1 and dim % heads == 0:
        return None
    return f"dim {dim} is not divisible by heads {heads}"


def progressive_modules(tok: ProgressiveTokenizer) -> tuple[int, int]:
    """PS-ViT: (encoder layers, offset heads) of the sampling module: one of each when ``share_weights``
    (the paper's dagger variant), else one layer per round; no offset head after the last round."""
    n_layers = 1 if tok.share_weights else tok.iterations
    return n_layers, min(n_layers, tok.iterations - 1)


def stem_widths(dim: int) -> tuple[int, int]:
    """PS-ViT: output widths of the stem's two bottlenecks, (min(C, 256), C), as in the authors' models."""
    return min(dim, STAGE1_WIDTH), dim


# --- grids and token counts -----------------------------------------------------------------------------
def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution or pooling window along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


STEM_STRIDE = 4
"""Stride of the PS-ViT stem: the 7x7/2 conv, then the 3x3/2 max-pool."""


def feature_size(img_size: int) -> int:
    """PS-ViT stem's feature map side: conv 7x7/2 (pad 3) then maxpool 3x3/2 (pad 1); 224 -> 56, 32 -> 8."""
    return conv_out(conv_out(img_size, 7, 2, 3), 3, 2, 1)


def check_kernel(kernel: int) -> None:
    if kernel < 1:
        raise NasError(f"token pooling kernel must be at least 1, got {kernel}", key="pooling.kernel")


def pooled_len_1d(n_patch: int, kernel: int) -> int:
    """Patch tokens after Conv1d(kernel, stride 1, padding kernel//2) and MaxPool1d(2, 2, ceil_mode=True)."""
    check_kernel(kernel)
    n_conv = conv_out(n_patch, kernel, 1, kernel // 2)
    if n_conv < 1:
        raise NasError(f"1d token pooling: {n_patch} patch tokens is fewer than the kernel {kernel}",
                       key="pooling.kernel")
    return -(-n_conv // 2)  # ceil(n_conv / 2)


def pooled_side_2d(side: int, kernel: int) -> int:
    """Grid side after Conv2d(kernel, stride 2, padding (kernel-1)//2)."""
    check_kernel(kernel)
    out = conv_out(side, kernel, 2, (kernel - 1) // 2)
    if out < 1:
        raise NasError(f"2d token pooling: a {side}x{side} token grid is smaller than the kernel {kernel}",
                       key="pooling.kernel")
    return out


def check_pooling(pooling_type: str, dim_in: int, dim_out: int) -> None:
    """The pooling between two stages must exist to change the width, and be a known type."""
    if pooling_type == "none":
        if dim_in != dim_out:
            raise NasError(f"stages of widths {dim_in} and {dim_out} need token pooling between them "
                           "(pooling.type 1d or 2d) to change the width; got 'none'", key="pooling.type")
    elif pooling_type not in ("1d", "2d"):
        raise NasError(f"unknown pooling type {pooling_type!r}; allowed: none, 1d, 2d", key="pooling.type")


def pooled(pooling_type: str, kernel: int, n_patch: int, side: int) -> tuple[int, int]:
    """(patch tokens, grid side) after the pooling between two stages (unchanged for ``none``)."""
    if pooling_type == "1d":
        return pooled_len_1d(n_patch, kernel), side
    if pooling_type == "2d":
        s = pooled_side_2d(side, kernel)
        return s * s, s
    return n_patch, side


def grid_side(arch: Arch) -> int:
    """Side of the square grid of patch tokens the tokenizer emits into stage 0 (side * side tokens, + cls)."""
    return tokenizer_side(arch.img_size, arch.tokenizer)


def tokenizer_side(img_size: int, tok: Tokenizer) -> int:
    """``grid_side`` from the input size and the tokenizer alone."""
    if isinstance(tok, PatchTokenizer):
        return img_size // tok.patch_size
    if isinstance(tok, ProgressiveTokenizer):
        return tok.points
    if isinstance(tok, CoarseFineTokenizer):
        return 2 * tok.coarse_grid  # the fine grid (the coarse pass sees half of it per side)
    raise NasError(f"unknown tokenizer {tok!r}; allowed: patch, progressive, coarse_fine", key="tokenizer.type")


def token_schedule(side: int, n_stages: int, pooling_type: str, kernel: int, cls: bool) -> list[int]:
    """Tokens (cls included) that the layers of each stage see, from a ``side`` x ``side`` token grid."""
    n_patch, out = side * side, []
    for s in range(n_stages):
        if s:
            n_patch, side = pooled(pooling_type, kernel, n_patch, side)
        out.append(n_patch + cls)
    return out


def stage_tokens(arch: Arch) -> list[int]:
    """Tokens (cls included) seen by the layers of each stage, e.g. [197, 99, 50] for 1d pooling at 224/16.

    For CF-ViT these are the static counts of the full-resolution grid; its passes see ``1 + c^2`` and
    ``fine_len`` tokens.
    """
    return token_schedule(grid_side(arch), len(arch.stages), arch.pooling.type, arch.pooling.kernel,
                          arch.has_cls_token)


# --- ATS ------------------------------------------------------------------------------------------------
def check_ats_budget(keep: float | None, k: int | None) -> None:
    if (keep is None) == (k is None):
        raise NasError(f"ATS needs exactly one of keep (ratio) and k (token count); got keep={keep!r}, k={k!r}")
    if keep is not None and not (isinstance(keep, (int, float)) and not isinstance(keep, bool) and 0 < keep <= 1):
        raise NasError(f"ATS keep must be a ratio in (0, 1]; got {keep!r}")
    if k is not None and not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
        raise NasError(f"ATS k must be an integer >= 1 (quantiles drawn); got {k!r}")


def ats_budget(n_patches: int, keep: float | None = None, k: int | None = None) -> int:
    """K, the quantiles an ATS block draws for an image with ``n_patches`` real patch tokens entering.

    ``keep``: min(max(round(rho N), 8), N) (``round`` is Python's, half to even); ``k``: k, whatever N is.
    """
    check_ats_budget(keep, k)
    if k is not None:
        return k
    return min(max(round(n_patches * keep), MIN_TOKENS), n_patches)


def ats_max_kept(n_patches: int, keep: float | None = None, k: int | None = None) -> int:
    """The most patch tokens an ATS block can keep: K' <= min(K, N) (duplicate draws merge)."""
    return min(ats_budget(n_patches, keep, k), n_patches)


def ats_stage(pooling_type: str, s: int, n_stages: int) -> bool:
    """Whether stage ``s`` can hold ATS cells: after the last token pooling (every stage without pooling)."""
    return pooling_type == "none" or s == n_stages - 1


# --- CF-ViT ---------------------------------------------------------------------------------------------
def num_regions(coarse_grid: int, alpha: float) -> int:
    """k = ceil(alpha * c^2) informative regions, within [0, c^2] (see the module docstring for the tolerance)."""
    n = coarse_grid * coarse_grid
    return min(max(math.ceil(alpha * n - 1e-9), 0), n)


def fine_len(coarse_grid: int, k: int) -> int:
    """Tokens of CF-ViT's fine sequence, cls included: 1 + 4k + (c^2 - k)."""
    return 1 + 4 * k + coarse_grid * coarse_grid - k


# --- whole-arch checks (the models call these before building) --------------------------------------------
def _check_width(st: Stage, s: int) -> None:
    msg = heads_error(st.dim, st.heads)
    if msg:
        raise NasError(f"{msg}; choose heads that divide dim", key=f"stages[{s}].heads")
    if st.hidden < 1:
        raise NasError(f"mlp_ratio {st.mlp_ratio} gives an empty MLP at dim {st.dim}", key=f"stages[{s}].mlp_ratio")


def check_arch(arch: Arch) -> None:
    """The structural rules every model needs; raises NasError naming the key at fault."""
    if not arch.stages:
        raise NasError("an arch needs at least one stage", key="stages")
    if arch.head not in ("cls", "gap"):
        raise NasError(f"unknown head {arch.head!r}; allowed: cls, gap", key="head")
    if arch.num_classes < 0:
        raise NasError(f"num_classes must be >= 0, got {arch.num_classes}", key="num_classes")
    for s, st in enumerate(arch.stages):
        _check_width(st, s)
        for c, kind in enumerate(st.cells):
            if kind not in CELL_KINDS:
                raise NasError(f"unknown cell kind {kind!r}; allowed: {', '.join(CELL_KINDS)}",
                               key=f"stages[{s}].cells[{c}]")
    if isinstance(arch.tokenizer, PatchTokenizer):
        p = arch.tokenizer.patch_size
        if p < 1 or arch.img_size % p:
            raise NasError(f"input size {arch.img_size} is not a multiple of patch_size {p}",
                           key="tokenizer.patch_size")


def check_progressive(arch: Arch) -> ProgressiveTokenizer:
    """The rules PS-ViT's progressive sampling needs (its layers take stage 0's width); raises NasError."""
    tok = arch.tokenizer
    if not isinstance(tok, ProgressiveTokenizer):
        raise NasError(f"expected a progressive tokenizer, got type {tok.type!r}", key="tokenizer.type")
    if tok.points < 1:
        raise NasError(f"points must be >= 1, got {tok.points}", key="tokenizer.points")
    if tok.iterations < 1:
        raise NasError(f"iterations must be >= 1, got {tok.iterations}", key="tokenizer.iterations")
    if not arch.stages:
        raise NasError("the progressive tokenizer takes its width from stage 0; the arch has no stage",
                       key="stages")
    _check_width(arch.stages[0], 0)
    if arch.img_size < 1 or arch.in_chans < 1:
        raise NasError(f"input size {arch.img_size} and channels {arch.in_chans} must be >= 1", key="input")
    return tok


def check_coarse_fine(arch: Arch) -> CoarseFineTokenizer:
    """The rules CF-ViT needs beyond a static ViT's; raises NasError naming the key at fault."""
    tok = arch.tokenizer
    if not isinstance(tok, CoarseFineTokenizer):
        raise NasError(f"CF-ViT needs the coarse_fine tokenizer, got {tok.type!r}", key="tokenizer.type")
    c, p = tok.coarse_grid, tok.patch_size
    if c < 1 or p < 1:
        raise NasError(f"coarse_grid and patch_size must be >= 1, got {c} and {p}", key="tokenizer.coarse_grid")
    if 2 * c * p != arch.img_size:
        raise NasError(f"coarse_grid {c} needs input size 2 * {c} * patch_size = {2 * c * p}, got {arch.img_size} "
                       "(each coarse region splits into 2x2 patches)", key="tokenizer.coarse_grid")
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
    if arch.ats is not None:
        raise NasError("ats cannot be combined with the coarse_fine tokenizer", key="ats")
    if arch.num_classes < 1:
        raise NasError(f"coarse_fine needs num_classes >= 1 (the exit rule reads the softmax), got "
                       f"{arch.num_classes}", key="num_classes")
    dims = [st.dim for st in arch.stages]
    if len(set(dims)) > 1:
        raise NasError(f"stages without token pooling between them must share one dim, got {dims}", key="stages")
    if sum(st.num_layers for st in arch.stages) < 1:
        raise NasError("coarse_fine needs at least one transformer layer (class attention picks the regions)",
                       key="stages")
    return tok

"""Shapes and validity rules of an Arch's body: token counts, grids, widths, token pooling. Integers only, no torch.

Every rule that more than one module needs is written here once: the models build their layers from it,
``nas.cost`` counts with it, and the space schema checks every reachable choice with it. Nothing here
imports a model (the import order is arch -> shapes -> cost -> models). A mechanism's own rules live in its
package (``nas.mechanisms``); ``check_arch`` runs them.

Decisions where the papers are silent (each is repeated where it is implemented):
- 1d token pooling pads ``kernel // 2`` on both sides, so an even kernel gives one extra position before
  max pooling (``pooled_len_1d``); 2d pooling pads ``(kernel - 1) // 2`` (``pooled_side_2d``).
"""
from __future__ import annotations

from nas.arch import CELL_KINDS, Arch, Stage
from nas.errors import NasError
from nas.mechanisms import reduction_of, tokenizer

# --- widths ---------------------------------------------------------------------------------------------


def heads_error(dim: int, heads: int) -> str | None:
    """None when ``heads`` attention heads split width ``dim`` evenly, else what is wrong."""
    if dim >= 1 and heads >= 1 and dim % heads == 0:
        return None
    return f"dim {dim} is not divisible by heads {heads}"


# --- grids and token counts -----------------------------------------------------------------------------
def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution or pooling window along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


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


def tokenizer_side(img_size: int, tok: object) -> int:
    """``grid_side`` from the input size and the tokenizer alone (the tokenizer's ``side``)."""
    return tokenizer(tok).side(img_size, tok)


def passes(arch: Arch) -> tuple[int, ...]:
    """The tokens (cls included) stage 0 sees in each run of the body: one run, except for a tokenizer that runs
    it several times (CF-ViT's coarse and fine pass). Several passes need pooling ``none``."""
    side = grid_side(arch)
    return tokenizer(arch.tokenizer).passes(arch.tokenizer, side * side + arch.has_cls_token)


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

    For a tokenizer with several passes these are the counts of the full grid; the passes see ``passes(arch)``.
    """
    return token_schedule(grid_side(arch), len(arch.stages), arch.pooling.type, arch.pooling.kernel,
                          arch.has_cls_token)


# --- token reductions -------------------------------------------------------------------------------------
def reduction_stage(pooling_type: str, s: int, n_stages: int) -> bool:
    """Whether stage ``s`` can hold cells with a token reduction: after the last token pooling (every stage
    without pooling)."""
    return pooling_type == "none" or s == n_stages - 1


# --- whole-arch checks (the models call these before building) --------------------------------------------
def check_stage_width(st: Stage, s: int) -> None:
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
        check_stage_width(st, s)
        for c, kind in enumerate(st.cells):
            if kind not in CELL_KINDS:
                raise NasError(f"unknown cell kind {kind!r}; allowed: {', '.join(CELL_KINDS)}",
                               key=f"stages[{s}].cells[{c}]")
    tokenizer(arch.tokenizer).check(arch)
    if arch.reduction is not None:
        reduction_of(arch.reduction).check(arch)

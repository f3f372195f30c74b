"""The building blocks of a forward pass, as a latency table names them (torch-free).

A forward of an arch is a chain of blocks, each timed alone by ``nas latency-table`` and summed by the predictor:

    tokenizer  the tokenizer's own modules (image -> stage-0 tokens; CF-ViT: both passes' embeddings, feature reuse)
    layer      one transformer layer: ``attn`` own (a basic cell), map (the first layer of a shared pair: it keeps
               its attention map for the second), shared (the second layer: V only, on the inherited map)
    reduce     a layer whose output keeps only some tokens (ATS's sampling step inside it)
    pooling    the token pooling between two stages
    head       the final LayerNorm and the classifier (after every pass of the tokenizer)

A block is what its time depends on: the kind and the shape it sees (tokens, widths, heads, the mechanism's
config), nothing of where it sits. The same functions decompose one arch (``arch_blocks``) and, through
``nas.space.bounds``, a whole space (every block it can produce, the exact range of predicted latency), so the
two can never disagree.

Data-dependent archs are decomposed at their worst case, as ``nas.cost`` counts their MACs: a reduction keeps
its ``max_kept`` tokens, CF-ViT runs both passes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from nas.arch import CELL_LAYERS, Arch, Stage
from nas.mechanisms import reduction_of, tokenizer
from nas.shapes import grid_side, passes, pooled, reduction_stage, stage_tokens

KINDS = ("tokenizer", "layer", "reduce", "pooling", "head")


@dataclass(frozen=True)
class Block:
    """One timed unit: its ``kind`` (one of ``KINDS``) and the values its time depends on, as sorted pairs."""
    kind: str
    fields: tuple[tuple[str, Any], ...]

    @staticmethod
    def of(kind: str, /, **values: Any) -> "Block":
        return Block(kind, tuple(sorted((k, _frozen(v)) for k, v in values.items())))

    def get(self, name: str) -> Any:
        return dict(self.fields)[name]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **{k: _plain(v) for k, v in self.fields}}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Block":
        d = dict(d)
        return Block.of(d.pop("kind"), **d)

    def key(self) -> str:
        """Canonical JSON: the block's identity in a table file."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def __str__(self) -> str:
        def text(v: Any) -> str:
            return json.dumps(_plain(v), sort_keys=True, separators=(",", ":")) if isinstance(v, tuple) else str(v)
        shown = ", ".join(f"{k}={text(v)}" for k, v in self.fields)
        return f"{self.kind}({shown})"


def _frozen(v: Any) -> Any:
    """dicts and lists as sorted tuples, so that a Block hashes."""
    if isinstance(v, dict):
        return tuple(sorted((k, _frozen(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return ("__list__", *(_frozen(x) for x in v))
    return v


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        if v and v[0] == "__list__":
            return [_plain(x) for x in v[1:]]
        return {k: _plain(x) for k, x in v}
    return v


# --- the terms of a forward pass (shared with nas.space.bounds) ---------------------------------------------
def tokenizer_blocks(img: int, chans: int, tok: Any, st: Stage, qkv_bias: bool, cls: bool) -> list[Block]:
    """The tokenizer's own modules; they may use stage 0's width, heads and MLP (PS-ViT's sampling layers)."""
    return [Block.of("tokenizer", tokenizer=tokenizer(tok).to_dict(tok), img=img, chans=chans, dim=st.dim,
                     heads=st.heads, hidden=st.hidden, qkv_bias=qkv_bias, cls=cls)]


def pooling_blocks(pool: str, kernel: int, n: int, side: int, dim_in: int, dim_out: int, cls: bool) -> list[Block]:
    """The pooling entered by ``n`` tokens (cls included) on a ``side`` x ``side`` grid; none for ``none``."""
    if pool == "none":
        return []
    return [Block.of("pooling", type=pool, kernel=kernel, tokens=n, side=side, dim_in=dim_in, dim_out=dim_out,
                     cls=cls)]


def cell_blocks(kind: str, n: int, st: Stage, qkv_bias: bool, runs: tuple[int, ...] | None = None,
                n_out: int | None = None, reduction: Any = None) -> list[Block]:
    """The layers of one cell entered by ``n`` tokens (cls included), or once per pass at ``runs``' token
    counts; with ``reduction`` its last layer keeps ``n_out`` tokens (the worst case)."""
    out = []
    for m in (runs or (n,)):
        for i in range(CELL_LAYERS[kind]):
            attn = "shared" if i else ("map" if kind == "shared_pair" else "own")
            shape = dict(tokens=m, dim=st.dim, heads=st.heads, hidden=st.hidden, qkv_bias=qkv_bias)
            if reduction is not None and i == CELL_LAYERS[kind] - 1:
                r = reduction_of(reduction)
                out.append(Block.of("reduce", attn="shared" if i else "own", kept=n_out,
                                    reduction={"type": r.name, **r.budget(reduction)}, **shape))
            else:
                out.append(Block.of("layer", attn=attn, **shape))
    return out


def head_blocks(head: str, n: int, dim: int, classes: int, runs: tuple[int, ...] | None = None) -> list[Block]:
    """The final norm and classifier on ``n`` tokens, or after each pass at ``runs``' token counts."""
    return [Block.of("head", head=head, tokens=m, dim=dim, classes=classes) for m in (runs or (n,))]


def arch_blocks(arch: Arch) -> list[Block]:
    """Every block a forward of ``arch`` runs, in order (worst case for data-dependent archs)."""
    runs = passes(arch)
    several = runs if len(runs) > 1 else None
    cls, pool, kernel = arch.has_cls_token, arch.pooling.type, arch.pooling.kernel
    out = tokenizer_blocks(arch.img_size, arch.in_chans, arch.tokenizer, arch.stages[0], arch.qkv_bias, cls)
    red = arch.reduction
    blocks = set() if red is None else set(red.blocks)
    n, side, g = stage_tokens(arch)[0], grid_side(arch), 0
    for s, st in enumerate(arch.stages):
        if s:
            prev = arch.stages[s - 1]
            out += pooling_blocks(pool, kernel, n, side, prev.dim, st.dim, cls)
            n_patch, side = pooled(pool, kernel, n - cls, side)
            n = n_patch + cls
        acts = red is not None and reduction_stage(pool, s, len(arch.stages))
        for kind in st.cells:
            if acts and g in blocks and kind != "identity":
                n_out = 1 + reduction_of(red).max_kept(red, n - 1)
                out += cell_blocks(kind, n, st, arch.qkv_bias, several, n_out, red)
                n = n_out
            else:
                out += cell_blocks(kind, n, st, arch.qkv_bias, several)
            g += 1
    return out + head_blocks(arch.head, n, arch.stages[-1].dim, arch.num_classes, several)

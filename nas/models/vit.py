"""Static ViT built from an Arch: tokenizer, stages of cells, token pooling between stages, norm, head.

Module layout (a weight-sharing supernet maps onto it 1:1)::

    model.tokenizer          img (B, C, H, W) -> tokens (B, N, C0), cls first when the arch has one
    model.stages[s].cells[c] Block ("basic"), SharedPair ("shared_pair") or nn.Identity ("identity")
    model.poolings[s]        between stage s and s+1 (nn.Identity for pooling type "none")
    model.norm, model.head   final LayerNorm; Linear on the cls token ("cls") or on the mean patch token ("gap")

Decisions where the papers are silent:
- Patch tokenizer = timm PatchEmbed (conv, bias) + cls token + a learned absolute position table that also
  covers the cls position, added once (DeiT); with no cls token (2d pooling + gap head) the table covers the
  patch tokens only.
- Init like timm's ViT: every Linear trunc_normal_(std 0.02) with zero bias, cls and position tables
  trunc_normal_(0.02), LayerNorm ones/zeros, convolutions at PyTorch's default. A progressive tokenizer keeps
  its own init (its zero-initialised offset heads must stay zero).
- ``gap`` averages the patch tokens only (a cls token, when present, is left out, as in timm).
- ``num_classes == 0``: no head; ``forward`` returns the pooled features (B, C_last).
- Stochastic depth (``drop_path``, the rate of the last layer) follows the usual linear rule over the arch's
  layers in the order they run (``drop_path_rates``): PS-ViT's sampling rounds come first, as in the
  authors' code; a shared pair is two layers, an identity cell none. PS-ViT's shared sampling layer
  (``share_weights``), one module run every round, takes the mean of its rounds' rates.
- ``no_weight_decay()`` names the cls token, the position tables and PS-ViT's position layer (timm's
  convention; its optimizer factory reads it). Biases and norm weights are 1-d and skipped by timm anyway.
"""
from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import nn

from nas.arch import CELL_KINDS, CELL_LAYERS, Arch
from nas.cost import cost, layer_macs, reduced_fixed_macs
from nas.errors import NasError
from nas.mechanisms import reduction_of, tokenizer
from nas.models.layers import Block
from nas.models.pooling import build_pooling
from nas.shapes import check_arch, reduction_stage


def drop_path_rates(arch: Arch, drop_path: float) -> tuple[list[float], list[list[tuple[float, ...]]]]:
    """Stochastic-depth rates, linear from 0 (first layer) to ``drop_path`` (last) over every layer in the order
    they run: (rates of the tokenizer's own layers (PS-ViT's sampling rounds), per stage per cell the rates of its
    layers: () for an identity cell, one for a basic cell, two for a shared pair)."""
    rounds = tokenizer(arch.tokenizer).layers(arch.tokenizer)
    depth = rounds + sum(st.num_layers for st in arch.stages)
    rates = iter(torch.linspace(0, drop_path, depth, device="cpu").tolist())  # timm's rule; cpu: also on meta
    first = [next(rates) for _ in range(rounds)]
    cells = [[tuple(next(rates) for _ in range(CELL_LAYERS.get(k, 0))) for k in st.cells] for st in arch.stages]
    return first, cells


def init_weights(m: nn.Module) -> None:
    """timm ViT init for Linear layers (``module.apply(init_weights)``)."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class SharedPair(nn.Module):
    """PSViT's sharing cell: two layers, the second reuses the first's attention map (computes V only)."""

    def __init__(self, dim: int, heads: int, hidden: int, qkv_bias: bool = True, norm_eps: float = 1e-6,
                 drop_path: tuple[float, float] = (0.0, 0.0)) -> None:
        super().__init__()
        self.first = Block(dim, heads, hidden, qkv_bias=qkv_bias, norm_eps=norm_eps, drop_path=drop_path[0])
        self.second = Block(dim, heads, hidden, qkv_bias=qkv_bias, norm_eps=norm_eps, shared=True,
                            drop_path=drop_path[1])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, N, C) -> (x (B, N, C), the shared map (B, h, N, N))."""
        x, attn = self.first(x, mask=mask, need_map=True)  # the map is consumed by the second layer
        return self.second(x, attn=attn, mask=mask)


def build_cell(kind: str, dim: int, heads: int, hidden: int, qkv_bias: bool, norm_eps: float,
               drop_path: tuple[float, ...] = ()) -> nn.Module:
    """The module of one cell; ``drop_path`` holds the rates of its layers (``drop_path_rates``), none = 0."""
    if kind == "basic":
        return Block(dim, heads, hidden, qkv_bias=qkv_bias, norm_eps=norm_eps, drop_path=(*drop_path, 0.0)[0])
    if kind == "shared_pair":
        return SharedPair(dim, heads, hidden, qkv_bias=qkv_bias, norm_eps=norm_eps,
                          drop_path=(*drop_path, 0.0, 0.0)[:2])
    if kind == "identity":
        return nn.Identity()  # kept so that cell indices match the Arch
    raise NasError(f"unknown cell kind {kind!r}; allowed: {', '.join(CELL_KINDS)}", key="stages.cells")


def run_cells(cells: nn.ModuleList, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Run one stage's cells in order. x (B, N, C) -> (B, N, C). No map is kept across cells."""
    for cell in cells:
        if isinstance(cell, (Block, SharedPair)):
            x, _ = cell(x, mask=mask)
        # nn.Identity: nothing to do
    return x


class ViTStage(nn.Module):
    """Cells sharing one token count and width."""

    def __init__(self, cells: list[nn.Module]) -> None:
        super().__init__()
        self.cells = nn.ModuleList(cells)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return run_cells(self.cells, x, mask)


def build_tokenizer(arch: Arch, drop_path: list[float] | None = None) -> nn.Module:
    """The tokenizer module for ``arch.tokenizer`` (its mechanism's ``build`` hook): img (B, C, H, W) -> (B, N, C0),
    cls first if any. ``drop_path``: the rates of the tokenizer's own layers (``drop_path_rates``)."""
    return tokenizer(arch.tokenizer).hooks().build(arch, drop_path)


def build_stages(arch: Arch, drop_path: list[list[tuple[float, ...]]]) -> nn.ModuleList:
    """``model.stages``: one ViTStage of cells per stage; ``drop_path`` as ``drop_path_rates``' second item."""
    return nn.ModuleList(
        ViTStage([build_cell(k, st.dim, st.heads, st.hidden, arch.qkv_bias, arch.norm_eps, r)
                  for k, r in zip(st.cells, rates)])
        for st, rates in zip(arch.stages, drop_path))


def tokenizer_no_weight_decay(model: nn.Module) -> set[str]:
    """``model.no_weight_decay()`` for a model whose tokenizer names its own (cls, positions)."""
    return {f"tokenizer.{n}" for n in model.tokenizer.no_weight_decay()}


class VisionTransformer(nn.Module):
    """A static (every cell fixed) ViT for one Arch; see the module docstring for the layout.
    ``drop_path``: stochastic depth of the last layer (``drop_path_rates``)."""

    def __init__(self, arch: Arch, drop_path: float = 0.0) -> None:
        super().__init__()
        check_arch(arch)
        if tokenizer(arch.tokenizer).builds_model:
            raise ValueError(f"VisionTransformer does not run the {arch.tokenizer.type} tokenizer (it builds its "
                             "own model); use nas.models.build_model")
        self.arch = arch
        self.head_type = arch.head
        self.num_prefix = int(arch.has_cls_token)
        rounds, cells = drop_path_rates(arch, drop_path)
        self.tokenizer = build_tokenizer(arch, rounds)
        self.stages = build_stages(arch, cells)
        self.poolings = nn.ModuleList(
            build_pooling(arch.pooling, a.dim, b.dim, arch.has_cls_token)
            for a, b in zip(arch.stages[:-1], arch.stages[1:]))
        dim = arch.stages[-1].dim
        self.norm = nn.LayerNorm(dim, eps=arch.norm_eps)
        self.head = nn.Linear(dim, arch.num_classes) if arch.num_classes > 0 else nn.Identity()
        for m in (self.stages, self.poolings, self.head):
            m.apply(init_weights)
        self.macs = cost(arch).macs  # per image; with a token reduction the worst case
        if arch.reduction is not None:  # the part it cannot change; the rest is counted per image in forward
            self.fixed_macs = reduced_fixed_macs(arch)
        self.last_macs: torch.Tensor | None = None
        self.last_mask: torch.Tensor | None = None
        self.last_kept: list[torch.Tensor] = []

    no_weight_decay = tokenizer_no_weight_decay

    def forward_features(self, img: torch.Tensor) -> torch.Tensor:
        """img (B, C, H, W) -> normalised tokens of the last stage (B, N_last, C_last).

        Sets ``last_macs``, the MACs each image executes alone (the ``nas.measure`` protocol). With a token
        reduction (ATS) the token count differs per image: the batch is padded, ``last_mask`` (B, N_last) marks
        real rows, padded rows are zero and ``last_kept`` lists the kept token positions of each reducing cell.
        """
        x = self.tokenizer(img)  # (B, N0, C0)
        if self.arch.reduction is not None:
            return self._forward_reduced(x)
        for s, stage in enumerate(self.stages):
            x = run_cells(stage.cells, x)
            if s < len(self.poolings):
                x = self.poolings[s](x)  # (B, N_{s+1}, C_{s+1})
        self.last_macs, self.last_mask = torch.full((x.shape[0],), self.macs, dtype=torch.long), None
        return self.norm(x)

    def _forward_reduced(self, x: torch.Tensor) -> torch.Tensor:
        """The stages with the token reduction in the cells ``arch.reduction.blocks`` (their last layer keeps
        some tokens: the mechanism's ``reduce`` hook)."""
        a = self.arch.reduction
        reduce = reduction_of(a).hooks().reduce
        B, N, _ = x.shape
        n = torch.full((B,), N, dtype=torch.long, device=x.device)  # real tokens per image, cls included
        pos = torch.arange(N, device=x.device).expand(B, N)          # original position of every row
        macs, mask, kept, first = torch.full_like(n, self.fixed_macs), None, [], 0
        for s, (stage, st) in enumerate(zip(self.stages, self.arch.stages)):
            d, h = st.dim, st.hidden
            first, cells = first + len(stage.cells), enumerate(stage.cells, start=first)  # global cell index
            if not reduction_stage(self.arch.pooling.type, s, len(self.stages)):  # before the last pooling
                x, cells = run_cells(stage.cells, x), ()
            for g, cell in cells:
                if isinstance(cell, nn.Identity):
                    continue
                if g not in a.blocks:
                    x, _ = cell(x, mask=mask)
                    pair = isinstance(cell, SharedPair)
                    macs = macs + layer_macs(n, d, h) + (layer_macs(n, d, h, shared=True) if pair else 0)
                    continue
                # the reduction in the cell's last layer; a shared second layer reduces with the inherited map
                block, attn = cell, None
                if isinstance(cell, SharedPair):
                    x, attn = cell.first(x, mask=mask, need_map=True)
                    macs, block = macs + layer_macs(n, d, h), cell.second
                x, mask, index = reduce(block, x, mask, a, attn)
                n_out = mask.sum(dim=1)
                macs = macs + layer_macs(n, d, h, shared=block.attn.shared, n_out=n_out)
                pos = pos.gather(1, index.clamp(min=0)).masked_fill(~mask, -1)
                kept.append(pos)
                n = n_out
            if s < len(self.poolings):  # the schema keeps reductions after the last pooling: mask is None here
                x = self.poolings[s](x)
                n = torch.full_like(n, x.shape[1])
        self.last_macs, self.last_mask, self.last_kept = macs, mask, kept
        return self.norm(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> logits (B, num_classes), or pooled features (B, C) without a head."""
        if self.head_type == "cls":
            x = x[:, 0]                                                        # (B, C)
        elif self.last_mask is not None:  # a token reduction: mean over the real patch tokens only
            m = self.last_mask[:, self.num_prefix:, None].to(x.dtype)
            x = (x[:, self.num_prefix:] * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
        else:
            x = x[:, self.num_prefix:].mean(dim=1)
        return self.head(x)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(img))

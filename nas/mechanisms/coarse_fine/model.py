"""CF-ViT: coarse-to-fine inference (arXiv 2203.03821; docs/mechanisms.md section 4), batch-invariant, with per-image cost.

The model; the config, rules and cost are the torch-free ``nas.mechanisms.coarse_fine``.

One ViT runs twice with shared weights; only the two position tables differ.

1. Coarse pass: the image resized (bilinear, align_corners=True) to ``patch_size * c`` pixels goes through the
   same patch embedding: cls + c*c tokens + the coarse position table. The global class attention (GCA) is the
   EMA ``g <- 0.99 g + 0.01 A_l[cls row, patch columns]`` over layers 3..L-1. An image whose max softmax is
   >= eta exits here with the coarse logits.
2. Fine pass (only for the images that did not exit, selected, not masked): cls; the 4 fine tokens (full-
   resolution patch embedding + fine position table + feature reuse) of each of the top k = ceil(alpha c^2)
   regions by GCA; then the coarse input embeddings of the other regions: 1 + 4k + (c^2 - k) tokens
   (125 for c = 7, alpha = 0.5). Feature reuse: coarse output patch tokens (after the final LayerNorm) ->
   LayerNorm + Mlp(C, 4C) -> nearest upsample x2 on the c x c grid -> added to the informative fine tokens.

Module layout (names as in ``nas.models.vit.VisionTransformer``, so a static ViT / DeiT state dict maps onto
it; the additions are ``tokenizer.pos_embed_coarse`` and ``reuse``)::

    model.tokenizer   CoarseFineTokens: patch_embed (one conv, both passes), cls_token, pos_embed (fine table,
                      1 + (2c)^2 entries), pos_embed_coarse (coarse table, 1 + c^2 entries)
    model.stages      the arch's cells (``vit.build_cell``); the fine pass runs them with ``vit.run_cells``
    model.norm, model.head
    model.reuse       FeatureReuse

Training: ``training_loss(img, y, criterion, progress)`` is the model's objective (``nas.models.objective``):
``forward_train(img) -> (coarse_logits, fine_logits)`` (every image runs both passes, the paper's eta = 1)
scored by ``coarse_fine_loss`` (paper Eq. 14), with the fine pass on all fine tokens while ``progress`` (the
share of training done) is below ``warmup_fraction`` (the paper's 2/3), with region selection after.
Inference: ``forward(img) -> logits`` with the early exit, in train mode as well. After every forward
``last_macs`` holds the (B,) int64 MACs each image executed (``nas.measure``), ``last_exits`` (B,) which images
exited after the coarse pass and ``last_regions`` (B_fine, k) the informative regions (ascending indices on the
c x c grid) of the images that ran the fine pass, in batch order (``nas.viz`` draws them).

Decisions where the paper and spec are silent:
- Token order of the fine sequence: informative regions in ascending raster order of the c x c grid, each
  region's 2x2 fine tokens in raster order (top-left, top-right, bottom-left, bottom-right); then the other
  regions in ascending raster order. (Positions are added before the encoder, so the order does not change
  the maths; a fixed order keeps the arithmetic identical batched and alone.)
- GCA ties are broken by region index (stable descending sort: the lower index wins), so the choice does not
  depend on the batch. The EMA accumulates in float32.
- Layers are counted over all cells in order (a shared_pair is 2 layers, identity 0). With L <= 3 layers the
  GCA uses the last layer only (start = min(3, L - 1)). A sharing layer contributes the map it uses (the
  inherited one). Each layer's map is averaged over heads before the EMA: the same as the paper's "mean over
  heads at the end" since the EMA is linear, and well defined when stages have different head counts.
- k = ceil(alpha c^2 - 1e-9): the tolerance keeps float noise (0.7 * 100 = 70.00000000000001) from adding a
  region. alpha = 0.5 gives k = 25 of 49 (c = 7) and 41 of 81 (c = 9), the paper's Eq. 10.
- The fine pass embeds all (2c)^2 fine patches with one conv over the full image and runs the reuse MLP on all
  c^2 coarse tokens, then keeps the informative ones. This is what the published figures count: DeiT-S
  coarse + fine = 4.014G MACs (4.02G published), whereas embedding / reusing only the selected regions would
  give 3.96G.
- The reuse MLP's hidden width is 4C whatever the stages' mlp_ratio (GELU, LayerNorm eps = arch.norm_eps);
  nothing is detached: the fine loss reaches the coarse pass through feature reuse and the shared weights.
- The cls token is the same parameter in both passes, plus entry 0 of the pass's own position table; it gets
  no feature reuse.
- Warm-up (the paper's first 2/3 of training): ``model.warmup = True`` (or ``forward_train(img, warmup=True)``)
  treats every region as informative: 1 + 4c^2 fine tokens, all with feature reuse. ``forward`` (inference)
  never uses warm-up. ``training_loss`` switches by the share of optimiser steps done (the paper: the first
  200 of 300 epochs; the authors' code switches at an epoch boundary). The fine position table is added to
  every fine token during warm-up (the authors' code adds none then; see docs/decisions.md).
- The CE term is the trainer's criterion (label smoothing, mixup targets), as in the authors' training loop.
- Exit rule: max of softmax(coarse logits) computed in float32, ``>= model.exit_threshold`` (initialised
  from ``arch.tokenizer.exit_threshold``; change it to sweep eta). eta = 0 exits every image, eta > 1 none.
- Init as ``nas.models.vit``: Linear trunc_normal_(0.02), zero bias; cls and both position tables
  trunc_normal_(0.02).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import Mlp, PatchEmbed, trunc_normal_
from torch import nn

from nas.arch import Arch
from nas.errors import NasError
from nas.mechanisms.coarse_fine import REUSE_RATIO, WARMUP_FRACTION, CoarseFineTraining, coarse_fine_macs, num_regions
from nas.models.layers import Block
from nas.models.vit import (
    SharedPair,
    build_stages,
    drop_path_rates,
    init_weights,
    run_cells,
    tokenizer_no_weight_decay,
)
from nas.shapes import check_arch

__all__ = [
    "GCA_BETA",
    "GCA_START",
    "CoarseFineTokens",
    "CoarseFineViT",
    "CoarseOut",
    "FeatureReuse",
    "coarse_fine_loss",
    "region_fine_index",
    "select_regions",
]

GCA_START = 3      # first layer (0-based) of the global class attention (the paper's "4-th encoder")
GCA_BETA = 0.99    # EMA decay of the global class attention (paper Eq. 9)


# --- region selection ------------------------------------------------------------------------------------
def select_regions(gca: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, c^2) global class attention -> (informative (B, k), others (B, c^2 - k)) region indices, each
    ascending. The top k by score; ties go to the lower index (stable sort), independent of the batch."""
    order = torch.sort(gca, dim=1, descending=True, stable=True).indices  # (B, c^2)
    return order[:, :k].sort(dim=1).values, order[:, k:].sort(dim=1).values


def region_fine_index(coarse_grid: int) -> torch.Tensor:
    """(c^2, 4) indices into the raster-ordered (2c)^2 fine patches of each region's 2x2 fine patches,
    in raster order (top-left, top-right, bottom-left, bottom-right)."""
    c, w = coarse_grid, 2 * coarse_grid
    i, j = torch.meshgrid(torch.arange(c), torch.arange(c), indexing="ij")
    base = (2 * i * w + 2 * j).reshape(-1)                           # (c^2,) top-left fine patch
    return torch.stack([base, base + 1, base + w, base + w + 1], dim=1)


# --- modules ---------------------------------------------------------------------------------------------
class CoarseFineTokens(nn.Module):
    """One patch embedding for both passes, one cls token, two position tables (fine: 1 + (2c)^2, coarse:
    1 + c^2). ``pos_embed`` is the fine table, so a static ViT's tokenizer weights load as they are."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, dim: int, coarse_grid: int) -> None:
        super().__init__()
        # strict_img_size=False: the same conv also embeds the coarse (patch_size * c pixels) image
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, dim, strict_img_size=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + 4 * coarse_grid ** 2, dim))
        self.pos_embed_coarse = nn.Parameter(torch.zeros(1, 1 + coarse_grid ** 2, dim))
        for p in (self.cls_token, self.pos_embed, self.pos_embed_coarse):
            trunc_normal_(p, std=0.02)

    def coarse(self, small: torch.Tensor) -> torch.Tensor:
        """Resized image (B, C_in, p c, p c) -> coarse input sequence (B, 1 + c^2, C), cls first."""
        x = self.patch_embed(small)                                               # (B, c^2, C)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)     # (B, 1 + c^2, C)
        return x + self.pos_embed_coarse

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed", "pos_embed_coarse"}

    def fine(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full image -> (cls (1, 1, C), fine patches (B, (2c)^2, C) raster order), fine positions added."""
        return self.cls_token + self.pos_embed[:, :1], self.patch_embed(img) + self.pos_embed[:, 1:]


class FeatureReuse(nn.Module):
    """Coarse output patch tokens (B, c^2, C) -> LayerNorm + Mlp(C, 4C) -> nearest x2 upsampling on the
    c x c grid -> (B, (2c)^2, C) in the fine patches' raster order: each fine patch gets its region's vector."""

    def __init__(self, dim: int, coarse_grid: int, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.grid = coarse_grid
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, hidden_features=REUSE_RATIO * dim, act_layer=nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, C = x.shape
        x = self.mlp(self.norm(x)).transpose(1, 2).reshape(B, C, self.grid, self.grid)  # (B, C, c, c)
        x = F.interpolate(x, scale_factor=2, mode="nearest")                           # (B, C, 2c, 2c)
        return x.flatten(2).transpose(1, 2)                                            # (B, (2c)^2, C)


class CoarseOut(NamedTuple):
    """What the fine pass needs from the coarse pass, per image."""
    logits: torch.Tensor   # (B, num_classes)
    tokens: torch.Tensor   # (B, 1 + c^2, C) final LayerNorm-ed output tokens
    embed: torch.Tensor    # (B, 1 + c^2, C) input embeddings (coarse positions added)
    gca: torch.Tensor      # (B, c^2) global class attention, float32

    def select(self, idx: torch.Tensor) -> CoarseOut:
        return CoarseOut(*(t.index_select(0, idx) for t in self))


def coarse_fine_loss(coarse_logits: torch.Tensor, fine_logits: torch.Tensor, target: torch.Tensor,
                     criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
                     ) -> torch.Tensor:
    """CE(fine, y) + KL(softmax(fine).detach() || softmax(coarse)), 1:1, batchmean (paper Eq. 14).

    ``target``: class indices (B,) or class probabilities (B, K) (mixup / label smoothing). The KL term only
    pulls the coarse prediction towards the (detached) fine one. ``criterion`` computes the CE term (the
    trainer's: label smoothing, soft targets).
    """
    ce = criterion(fine_logits, target)
    kl = F.kl_div(F.log_softmax(coarse_logits, dim=-1), F.softmax(fine_logits, dim=-1).detach(),
                  reduction="batchmean")
    return ce + kl


class CoarseFineViT(nn.Module):
    """CF-ViT for one coarse_fine Arch; see the module docstring. ``drop_path``: stochastic depth of the last
    layer (linear over depth, ``nas.models.vit.drop_path_rates``; both passes run the same layers);
    ``warmup_fraction``: the share of training ``training_loss`` runs the fine pass on all fine tokens."""

    def __init__(self, arch: Arch, drop_path: float = 0.0, warmup_fraction: float = WARMUP_FRACTION) -> None:
        super().__init__()
        check_arch(arch)
        tok = arch.tokenizer
        if not 0 <= warmup_fraction <= 1:
            raise ValueError(f"warmup_fraction must be in [0, 1], got {warmup_fraction}")
        self.arch = arch
        self.grid, self.coarse_px = tok.coarse_grid, tok.coarse_grid * tok.patch_size
        self.num_regions = num_regions(tok.coarse_grid, tok.alpha)
        self.exit_threshold = float(tok.exit_threshold)  # eta; mutable to sweep the trade-off
        self.warmup = False                              # training: fine pass on all fine tokens
        self.warmup_fraction = float(warmup_fraction)
        dim = arch.stages[0].dim
        self.tokenizer = CoarseFineTokens(arch.img_size, tok.patch_size, arch.in_chans, dim, tok.coarse_grid)
        self.stages = build_stages(arch, drop_path_rates(arch, drop_path)[1])
        self.norm = nn.LayerNorm(dim, eps=arch.norm_eps)
        self.head = nn.Linear(dim, arch.num_classes)
        self.reuse = FeatureReuse(dim, tok.coarse_grid, arch.norm_eps)
        for m in (self.stages, self.head, self.reuse):
            m.apply(init_weights)
        self.register_buffer("fine_index", region_fine_index(tok.coarse_grid), persistent=False)  # (c^2, 4)
        num_layers = sum(st.num_layers for st in arch.stages)
        self.gca_start = min(GCA_START, num_layers - 1)  # L <= 3: the last layer only
        self.macs_coarse, self.macs_fine = coarse_fine_macs(arch)
        self.macs_fine_warmup = coarse_fine_macs(arch, tok.coarse_grid ** 2)[1]
        self.last_macs: torch.Tensor | None = None
        self.last_exits: torch.Tensor | None = None    # (B,) bool: images that exited after the coarse pass
        self.last_regions: torch.Tensor | None = None  # (B_fine, k) informative regions of the fine pass

    no_weight_decay = tokenizer_no_weight_decay

    def _check_input(self, img: torch.Tensor) -> None:
        want = (self.arch.in_chans, self.arch.img_size, self.arch.img_size)
        if img.dim() != 4 or tuple(img.shape[1:]) != want:
            raise NasError(f"CF-ViT input must be (B, {want[0]}, {want[1]}, {want[2]}), got {tuple(img.shape)}")

    # --- the two passes ---------------------------------------------------------------------------------
    def forward_coarse(self, img: torch.Tensor) -> CoarseOut:
        """Full-size images (B, C_in, H, W) -> coarse logits, output tokens, input embeddings and GCA."""
        small = F.interpolate(img, size=(self.coarse_px, self.coarse_px), mode="bilinear", align_corners=True)
        embed = self.tokenizer.coarse(small)                          # (B, 1 + c^2, C)
        x, gca = embed, embed.new_zeros(embed.shape[0], self.grid ** 2, dtype=torch.float32)
        layer = 0
        for stage in self.stages:
            for cell in stage.cells:
                if isinstance(cell, Block):
                    x, attn = cell(x, need_map=layer >= self.gca_start)   # map (B, h, N, N) or None
                    used = [attn] if layer >= self.gca_start else []
                    layer += 1
                elif isinstance(cell, SharedPair):
                    x, attn = cell(x)                                     # both layers use this map
                    used = [attn for j in (layer, layer + 1) if j >= self.gca_start]
                    layer += 2
                else:                                                     # identity cell: no layer
                    continue
                for a in used:
                    gca = GCA_BETA * gca + (1 - GCA_BETA) * a[:, :, 0, 1:].float().mean(dim=1)  # (B, c^2)
        x = self.norm(x)
        return CoarseOut(self.head(x[:, 0]), x, embed, gca)

    def fine_sequence(self, img: torch.Tensor, coarse: CoarseOut, warmup: bool = False) -> torch.Tensor:
        """The fine pass's input (B, 1 + 4k + c^2 - k, C); every region is informative when ``warmup``."""
        B, C = img.shape[0], coarse.embed.shape[-1]
        cls, fine = self.tokenizer.fine(img)                          # (1, 1, C), (B, (2c)^2, C)
        fine = fine + self.reuse(coarse.tokens[:, 1:])                 # reuse only reaches informative tokens:
        k = self.grid ** 2 if warmup else self.num_regions            # the others are dropped just below
        top, rest = select_regions(coarse.gca, k)                      # (B, k), (B, c^2 - k)
        self.last_regions = top                                        # recorded for pictures (nas.viz)
        idx = self.fine_index[top].flatten(1)                         # (B, 4k)
        fine = fine.gather(1, idx[..., None].expand(-1, -1, C))        # (B, 4k, C)
        other = coarse.embed[:, 1:].gather(1, rest[..., None].expand(-1, -1, C))  # (B, c^2 - k, C)
        return torch.cat([cls.expand(B, -1, -1), fine, other], dim=1)

    def forward_fine(self, img: torch.Tensor, coarse: CoarseOut, warmup: bool = False) -> torch.Tensor:
        """Fine logits (B, num_classes) of images whose coarse pass gave ``coarse``."""
        x = self.fine_sequence(img, coarse, warmup)
        for stage in self.stages:
            x = run_cells(stage.cells, x)
        return self.head(self.norm(x[:, 0]))

    # --- entry points -----------------------------------------------------------------------------------
    def forward_train(self, img: torch.Tensor, warmup: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(coarse_logits, fine_logits), both passes for every image; ``warmup`` defaults to ``self.warmup``."""
        self._check_input(img)
        warmup = self.warmup if warmup is None else warmup
        coarse = self.forward_coarse(img)
        fine = self.forward_fine(img, coarse, warmup)
        per_image = self.macs_coarse + (self.macs_fine_warmup if warmup else self.macs_fine)
        self.last_macs = torch.full((img.shape[0],), per_image, dtype=torch.int64)
        return coarse.logits, fine

    def training_loss(self, img: torch.Tensor, target: torch.Tensor,
                      criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                      progress: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The paper's objective: (``coarse_fine_loss`` of both passes, fine logits (B, num_classes)); the fine
        pass runs on all fine tokens while ``progress`` (share of training done, in [0, 1)) < ``warmup_fraction``."""
        coarse, fine = self.forward_train(img, warmup=progress < self.warmup_fraction)
        return coarse_fine_loss(coarse, fine, target, criterion), fine

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes): coarse for images with max softmax >= eta, fine for the others."""
        self._check_input(img)
        coarse = self.forward_coarse(img)
        with torch.no_grad():
            exits = coarse.logits.float().softmax(dim=-1).amax(dim=-1) >= self.exit_threshold  # (B,)
        go = (~exits).nonzero().squeeze(1)                            # images that run the fine pass
        logits, self.last_exits = coarse.logits, exits
        self.last_regions = go.new_empty(0, self.num_regions)         # set by the fine pass, if any
        if go.numel():
            fine = self.forward_fine(img.index_select(0, go), coarse.select(go))
            logits = logits.index_copy(0, go, fine.to(logits.dtype))
        self.last_macs = torch.where(exits.cpu(), self.macs_coarse, self.macs_coarse + self.macs_fine).long()
        return logits


class TokenizerWork(nn.Module):
    """What a latency table times as this tokenizer (``nas.latency``): the work of both passes outside the body
    and the head. img (B, C_in, H, W) -> the fine sequence (B, 1 + 4k + c^2 - k, C): the resize and coarse
    embedding, the fine embedding, feature reuse, region selection and gathering (the body's outputs stand in as
    the coarse embeddings)."""

    def __init__(self, arch: Arch) -> None:
        super().__init__()
        self.model = CoarseFineViT(arch)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        m = self.model
        small = F.interpolate(img, size=(m.coarse_px, m.coarse_px), mode="bilinear", align_corners=True)
        embed = m.tokenizer.coarse(small)                                  # (B, 1 + c^2, C)
        gca = embed[:, 1:, 0].float()                                      # (B, c^2) region scores
        return m.fine_sequence(img, CoarseOut(embed[:, 0], embed, embed, gca))


def latency_tokenizer(arch: Arch) -> TokenizerWork:
    """The tokenizer's module for a latency table (``nas.latency.timing.block_module``)."""
    return TokenizerWork(arch)


def build_model(arch: Arch, drop_path: float = 0.0, options: CoarseFineTraining | None = None) -> CoarseFineViT:
    """The whole model of a coarse_fine arch (``nas.mechanisms.Tokenizer.builds_model``); ``options``: its
    recipe section (None: the paper's warm-up)."""
    warmup = WARMUP_FRACTION if options is None else options.warmup_fraction
    return CoarseFineViT(arch, drop_path=drop_path, warmup_fraction=warmup)

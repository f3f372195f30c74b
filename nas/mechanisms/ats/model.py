"""ATS: adaptive token sampling (arXiv 2111.15667; docs/mechanisms.md section 2). Parameter-free, batch-invariant.

The layers; the config, rules and budget are the torch-free ``nas.mechanisms.ats``.

An ATS block is an ordinary pre-norm block whose attention keeps only some output rows: cls plus the
patch tokens drawn by inverse-transform sampling over the cls-attention significance scores. The pieces:

- pure tensor functions: ``token_budget`` (K per image), ``significance`` (scores), ``inverse_transform_sample``
  (which tokens), ``kept_indices`` (padded index rows and the new token mask);
- ``ats_block``: the ATS forward of one block, for ``nas.models.layers.Block`` and for timm's
  ``vision_transformer.Block``; ``masked_block``: the plain forward of either on a padded batch;
- executed MACs per image (fvcore convention) come from ``nas.cost.layer_macs``, the bounds from
  ``nas.cost.reduced_layers_bounds``;
- ``apply_ats``: turns a constructed timm ``VisionTransformer`` into its ATS version (``ATSViT``), sharing
  its weights, recording per-image MACs in ``last_macs`` on every forward (the ``nas.measure`` protocol).

Decisions where the paper is loose (each is also stated where it is implemented):
- The inverse CDF is the true one: quantile k picks the first token (in ascending score order) whose CDF
  reaches k (``torch.searchsorted``). The paper's "nearest CDF value" ties exactly halfway for uniform
  scores and picks duplicates; the authors' code min-max normalises the CDF and always draws 196
  quantiles, which crashes for K < N. With the true inverse, K' = K for uniform scores and K' < K as soon
  as one token has score >= 2/K, as the paper states.
- Scores are normalised per image over its real tokens only and the CDF is taken in float64, so padding
  (which other images of the batch cause) cannot move a quantile: an image's result does not depend on
  the batch. The authors' code normalises over padded rows too and differs by up to 0.6 in the logits.
- Kept tokens stay in their original order (cls first); padded rows go last and are exactly zero.
- ``N_in`` in the budget rule K = max(round(rho * N_in), 8), capped at N_in, counts the real *patch* tokens
  entering the block (cls excluded); ``round`` is Python's (half to even).
- A fixed ``k`` is the number of quantiles drawn, whatever N_in is (``ats_budget``): the ATS
  authors' released DeiT-S model (NUM_TOKENS = 197, cls included) draws 196 in every ATS block, also after
  earlier blocks dropped tokens: ``k=196`` here. Quantiles that land on the same token merge, so
  K' <= min(k, N_in). (Their quantiles are evenly spaced from the smallest CDF value to 1 on a min-max
  normalised CDF; ours are (2i-1)/(2K) on the true CDF, as the paper writes.)
- ``apply_ats`` refuses hybrid ViTs (a CNN backbone before the patch projection, timm's ``HybridEmbed``):
  the MACs it records per image would leave the backbone out.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention
from timm.layers import Mlp, PatchEmbed
from timm.models.vision_transformer import Block as TimmBlock
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from nas.cost import layer_macs, reduced_layers_bounds
from nas.errors import NasError
from nas.mechanisms.ats import ATS, MECHANISM, ats_budget, check_ats_budget
from nas.models.layers import Block

__all__ = [
    "token_budget", "significance", "inverse_transform_sample", "kept_indices", "take_rows", "ATSOut", "ats_block",
    "masked_block", "ATSViT", "apply_ats",
]


# --- the budget K ----------------------------------------------------------------------------------------
def token_budget(n_patches: torch.Tensor, keep: float | None = None, k: int | None = None) -> torch.Tensor:
    """K per image, ``ats_budget`` applied to (B,) real patch tokens per image -> (B,) long."""
    check_ats_budget(keep, k)
    n_patches = n_patches.long()
    if k is not None:
        return torch.full_like(n_patches, k)
    if n_patches.numel() == 0:
        return n_patches.clone()
    table = [ats_budget(n, keep) for n in range(int(n_patches.max()) + 1)]
    return torch.tensor(table, dtype=torch.long, device=n_patches.device)[n_patches]


# --- scoring and sampling --------------------------------------------------------------------------------
def _cdf_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # mps has no float64


@torch.no_grad()
def significance(attn: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scores of the patch tokens: (B, h, N, N) map and (B, h, N, d) values -> (B, N-1), each row sums to 1.

    s_j = (sum over heads of A[:, :, 0, j]) * ||v_j||, with v_j the full value vector (all heads, length C),
    normalised over the image's real tokens (``mask`` (B, N), True = real); padded tokens score 0. Returned
    in float64 (float32 on mps) so the CDF is exact enough to be batch-invariant. An image whose scores are
    all zero gets uniform scores over its real tokens.
    """
    a = attn[:, :, 0, 1:].sum(dim=1)                       # (B, N-1) cls attention, summed over heads
    vnorm = v[:, :, 1:].pow(2).sum(dim=(1, 3)).sqrt()      # (B, N-1) ||v_j|| over all heads
    s = (a * vnorm).to(_cdf_dtype(attn.device))
    real = torch.ones_like(s, dtype=torch.bool) if mask is None else mask[:, 1:]
    s = s.masked_fill(~real, 0.0)
    total = s.sum(dim=-1, keepdim=True)
    uniform = real.to(s.dtype) / real.sum(dim=-1, keepdim=True).clamp(min=1)
    return torch.where(total > 0, s / total.clamp(min=torch.finfo(s.dtype).tiny), uniform)


@torch.no_grad()
def inverse_transform_sample(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Deterministic inverse-transform sampling: (B, P) scores (rows sum to 1), (B,) budgets -> (B, P) bool.

    Image b draws at the K_b fixed quantiles (2i-1)/(2 K_b), i = 1..K_b. Tokens are sorted by ascending score
    (stable, so ties keep token order) and each quantile picks the first token whose CDF reaches it: the
    true inverse CDF. Zero-score tokens (padding included) can never be picked, as every quantile is > 0.
    A token picked several times is kept once, so K' = selected.sum(-1) <= K.
    """
    B, P = scores.shape
    k = k.to(scores.device).long()
    sorted_s, order = scores.sort(dim=-1, stable=True)                  # (B, P) ascending
    cdf = sorted_s.cumsum(dim=-1)                                       # (B, P)
    i = torch.arange(1, max(int(k.max()), 1) + 1, device=scores.device)  # (Kmax,)
    valid = i[None, :] <= k[:, None]                                    # (B, Kmax) image b draws K_b quantiles
    q = (2 * i[None, :] - 1).to(cdf.dtype) / (2 * k[:, None].clamp(min=1)).to(cdf.dtype)  # (B, Kmax)
    pos = torch.searchsorted(cdf, q.contiguous(), side="left").clamp_(max=P - 1)  # rounding may leave cdf[-1] < q
    tok = order.gather(1, pos)                                          # (B, Kmax) token index
    hits = torch.zeros(B, P, dtype=torch.long, device=scores.device).scatter_add_(1, tok, valid.long())
    return hits > 0


def kept_indices(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P) selected patch tokens -> (index (B, M), mask (B, M)) over the block's N = P+1 input rows.

    Row 0 is cls, then the kept tokens in their original order; M = max over the batch of K'+1. Padded
    entries of ``index`` are -1 (clamp before gathering) and False in ``mask``.
    """
    keep = torch.cat([torch.ones_like(selected[:, :1]), selected], dim=1)  # (B, N) cls always kept
    n_out = keep.sum(dim=1)                                                # (B,) K'+1
    M = int(n_out.max())
    index = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :M]  # kept first, in order
    mask = torch.arange(M, device=selected.device)[None, :] < n_out[:, None]        # (B, M)
    return index.masked_fill(~mask, -1), mask


def take_rows(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The same rows of every slice of an image: t (B, ..., N, D), rows (B, M) -> (B, ..., M, D), a copy.

    Equal to ``t.gather(-2, rows expanded to (B, ..., M, D))`` but copies whole rows (``index_select``)
    instead of reading one index per element: 4x faster on CPU for ATS's (B, h, M, N) attention rows.
    """
    B, N, D = t.shape[0], t.shape[-2], t.shape[-1]
    mid = t.shape[1:-2]
    slices = math.prod(mid)                                             # slices per image (heads)
    base = torch.arange(B * slices, device=t.device).view(B, slices, 1) * N
    flat = (base + rows[:, None, :]).reshape(-1)                        # (B * slices * M,) rows of t
    return t.reshape(-1, D).index_select(0, flat).view(B, *mid, rows.shape[1], D)


# --- block adapters: nas Block and timm Block ------------------------------------------------------------
def _timm_qkv(attn: TimmAttention, xn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, N, _ = xn.shape
    qkv = attn.qkv(xn).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)                                             # (B, h, N, d) each
    return attn.q_norm(q), attn.k_norm(k), v


def _maps(block: nn.Module, xn: torch.Tensor, mask: torch.Tensor | None,
          attn: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention map (B, h, N, N), before attention dropout, and values (B, h, N, d) of a block."""
    if isinstance(block, Block):
        return block.attn.maps(xn, attn=attn, mask=mask)
    q, k, v = _timm_qkv(block.attn, xn)
    s = (q * block.attn.scale) @ k.transpose(-2, -1)                    # (B, h, N, N)
    if mask is not None:
        s.masked_fill_(~mask[:, None, None, :], float("-inf"))         # in place: s is a fresh tensor
    return s.softmax(dim=-1), v


def _attend(block: nn.Module, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, h, M, N) map rows @ (B, h, N, d) values -> (B, M, C) after the output projection."""
    if isinstance(block, Block):
        return block.attn.merge(a @ v)
    attn = block.attn
    out = attn.attn_drop(a) @ v                                          # (B, h, M, d)
    B, h, M, d = out.shape
    return attn.proj_drop(attn.proj(attn.norm(out.transpose(1, 2).reshape(B, M, h * d))))


def _residual_attn(block: nn.Module, y: torch.Tensor) -> torch.Tensor:
    return block.drop_path(y) if isinstance(block, Block) else block.drop_path1(block.ls1(y))


def _residual_mlp(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(block, Block):
        return block.drop_path(block.mlp(block.norm2(x)))
    return block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def _check_block(block: nn.Module, where: str = "block") -> None:
    if isinstance(block, Block):
        return
    if not isinstance(block, TimmBlock) or not isinstance(block.attn, TimmAttention):
        raise NasError(f"{where}: ATS supports nas.models.layers.Block and timm's vision_transformer.Block with "
                       f"its standard Attention; got {type(block).__name__}")
    if getattr(block.attn, "gate", None) is not None:
        raise NasError(f"{where}: gated timm attention is not supported by ATS")


# --- forwards ---------------------------------------------------------------------------------------------
class ATSOut(NamedTuple):
    x: torch.Tensor       # (B, M, C) cls + kept tokens, padded rows zero
    mask: torch.Tensor    # (B, M) True for real rows
    index: torch.Tensor   # (B, M) row of the block input each output row came from; -1 for padding


def ats_block(block: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None, keep: float | None = None,
              k: int | None = None, attn: torch.Tensor | None = None) -> ATSOut:
    """ATS forward of one pre-norm block. x (B, N, C) with cls at row 0, mask (B, N) or None (all real).

    O = A_s V with A_s the kept rows of A over all N keys; the residual is the block input gathered with the
    same indices; proj and the MLP then run on the K'+1 kept rows only. ``attn`` is the inherited map of a
    sharing ``nas`` block. The sampling indices carry no gradient; everything else does.
    """
    _check_block(block)
    B, N, C = x.shape
    xn = block.norm1(x)
    a, v = _maps(block, xn, mask, attn)                                 # (B, h, N, N), (B, h, N, d)
    scores = significance(a, v, mask)                                   # (B, N-1)
    n_patches = torch.full((B,), N - 1, device=x.device) if mask is None else mask[:, 1:].sum(dim=1)
    selected = inverse_transform_sample(scores, token_budget(n_patches, keep, k))
    index, mask_out = kept_indices(selected)                            # (B, M)
    rows = index.clamp(min=0)
    M = rows.shape[1]
    a_s = take_rows(a, rows)                                            # (B, h, M, N)
    out = take_rows(x, rows) + _residual_attn(block, _attend(block, a_s, v))
    out = out + _residual_mlp(block, out)
    return ATSOut(out * mask_out[..., None], mask_out, index)            # padded rows exactly zero


def masked_block(block: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Plain forward of a block on a padded batch: padded keys masked out of the softmax, padded rows zero.

    For timm blocks this is written on their modules (fused ``scaled_dot_product_attention`` when the
    attention's ``fused_attn`` is set, the explicit map otherwise), so it does not rely on the installed timm
    accepting an attention mask.
    """
    if isinstance(block, Block):
        return block(x, mask=mask)[0]
    if mask is None:
        return block(x)
    xn = block.norm1(x)
    at = block.attn
    if at.fused_attn:
        q, k, v = _timm_qkv(at, xn)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :],
                                           dropout_p=at.attn_drop.p if at.training else 0.0)  # (B, h, N, d)
        B, h, N, d = o.shape
        y = at.proj_drop(at.proj(at.norm(o.transpose(1, 2).reshape(B, N, h * d))))
    else:
        y = _attend(block, *_maps(block, xn, mask))
    x = x + _residual_attn(block, y)
    x = x + _residual_mlp(block, x)
    return x * mask[..., None]


# --- a timm VisionTransformer with ATS ---------------------------------------------------------------------
class ATSViT(nn.Module):
    """A timm ``VisionTransformer`` run with ATS in some blocks. Holds the ViT itself: weights are shared.

    After every forward: ``last_macs`` (B,) int64, the MACs each image executes when run alone (its own
    token counts, patch embedding and head included); ``last_kept`` one (B, M) tensor per ATS block with the
    original token position of every row (0 = cls, j = patch j-1, -1 = padding), for visualisation;
    ``last_mask`` (B, M) the real rows at the end. Checkpoints of the plain ViT load into ``self.vit``.
    """

    def __init__(self, vit: VisionTransformer, blocks: Sequence[int], keep: float | None = None,
                 k: int | None = None) -> None:
        super().__init__()
        check_ats_budget(keep, k)
        self.vit = vit
        self.ats_blocks = tuple(sorted(blocks))
        self.keep, self.k = keep, k
        self.dim = vit.embed_dim
        self.hidden = [blk.mlp.fc1.out_features for blk in vit.blocks]
        self.last_macs: torch.Tensor | None = None
        self.last_kept: list[torch.Tensor] = []
        self.last_mask: torch.Tensor | None = None

    def _fixed_macs(self, n_patches: int) -> int:
        """Patch embedding (a conv: weight numel per output position) and head."""
        head = self.vit.head
        return self.vit.patch_embed.proj.weight.numel() * n_patches + (head.weight.numel() if isinstance(
            head, nn.Linear) else 0)

    def macs_bounds(self) -> tuple[int, int]:
        """Analytic (macs_min, macs_max) per image at the ViT's configured input size."""
        n = self.vit.patch_embed.num_patches
        layers = [(self.dim, h, False, i in self.ats_blocks) for i, h in enumerate(self.hidden)]
        lo, hi = reduced_layers_bounds(n + 1, layers, MECHANISM, ATS((), self.keep, self.k))
        return lo + self._fixed_macs(n), hi + self._fixed_macs(n)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 3, H, W) -> (tokens (B, M, C) after the final norm, padded rows zero; mask (B, M))."""
        vit = self.vit
        x = vit.patch_embed(x)
        n_patches = x.shape[1] * x.shape[2] if x.ndim == 4 else x.shape[1]  # NHWC when dynamic_img_size
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(x)))                # (B, N, C)
        B, N, _ = x.shape
        n = torch.full((B,), N, dtype=torch.long, device=x.device)       # real tokens per image, cls included
        macs = torch.full_like(n, self._fixed_macs(n_patches))
        mask, pos, kept = None, torch.arange(N, device=x.device).expand(B, N), []
        for i, blk in enumerate(vit.blocks):
            if i in self.ats_blocks:
                x, mask, index = ats_block(blk, x, mask, keep=self.keep, k=self.k)
                n_out = mask.sum(dim=1)
                macs = macs + layer_macs(n, self.dim, self.hidden[i], n_out=n_out)
                pos = pos.gather(1, index.clamp(min=0)).masked_fill(~mask, -1)  # (B, M) original positions
                kept.append(pos)
                n = n_out
            else:
                macs = macs + layer_macs(n, self.dim, self.hidden[i])
                x = masked_block(blk, x, mask)
        x = vit.norm(x)
        if mask is None:
            mask = torch.ones(B, N, dtype=torch.bool, device=x.device)
        self.last_macs, self.last_kept, self.last_mask = macs, kept, mask
        return x * mask[..., None], mask

    def forward_head(self, x: torch.Tensor, mask: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        vit = self.vit
        if vit.global_pool == "avg":  # mean over the real patch tokens only
            m = mask[:, 1:, None].to(x.dtype)
            x = (x[:, 1:] * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
        else:
            x = x[:, 0]                                                  # (B, C) cls token
        x = vit.head_drop(vit.fc_norm(x))
        return x if pre_logits else vit.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> logits (B, num_classes); sets ``last_macs``, ``last_kept``, ``last_mask``."""
        return self.forward_head(*self.forward_features(x))


def apply_ats(model: VisionTransformer, blocks: Sequence[int], keep: float | None = None,
              k: int | None = None) -> ATSViT:
    """ATS version of a constructed timm ``VisionTransformer``, sharing (not copying) its weights.

    Works without retraining (ATS has no parameters) and trains end to end. ``blocks`` are 0-based block
    indices; exactly one of ``keep`` (ratio rho, K = max(round(rho N_in), 8) capped at N_in) and ``k``
    (K = k quantiles drawn, so at most min(k, N_in) tokens kept). The paper's DeiT-S settings: blocks 3..11
    with keep in {1, 0.87, 0.72}, or block 3 alone with k in {108, 78, 48}.
    """
    check_ats_budget(keep, k)
    if not isinstance(model, VisionTransformer):
        raise NasError(f"apply_ats needs a timm VisionTransformer; got {type(model).__name__}")
    if model.cls_token is None or model.num_prefix_tokens != 1:
        raise NasError("ATS scores tokens by the class token's attention: the ViT needs a class token and no "
                       f"register tokens; got {model.num_prefix_tokens} prefix tokens, "
                       f"class token {'present' if model.cls_token is not None else 'absent'}")
    if model.attn_pool is not None or model.global_pool not in ("token", "avg"):
        raise NasError(f"ATS supports global_pool 'token' or 'avg'; got {model.global_pool!r}")
    if type(model.patch_embed) is not PatchEmbed or not isinstance(model.patch_embed.proj, nn.Conv2d):
        raise NasError("ATS records per-image MACs with the patch embedding counted as one Conv2d (timm's "
                       f"PatchEmbed); got {type(model.patch_embed).__name__}: a hybrid ViT (a CNN backbone before "
                       "the patch projection) is not supported, as its backbone's MACs would not be counted")
    depth = len(model.blocks)
    blocks = [b if isinstance(b, bool) or not hasattr(b, "__index__") else b.__index__() for b in blocks]  # numpy ints
    bad = [b for b in blocks if not isinstance(b, int) or isinstance(b, bool) or not 0 <= b < depth]
    if bad or not blocks or len(set(blocks)) != len(blocks):
        raise NasError(f"ATS blocks must be distinct block indices in 0..{depth - 1}; got {blocks}")
    for i, blk in enumerate(model.blocks):
        _check_block(blk, f"block {i}")
        if not isinstance(blk.mlp, Mlp) or blk.attn.attn_dim != model.embed_dim:
            raise NasError(f"block {i}: ATS MACs assume timm's Mlp and attention width = embed dim")
    return ATSViT(model, blocks, keep=keep, k=k)


def reduce(block: nn.Module, x: torch.Tensor, mask: torch.Tensor | None, cfg: ATS,
           attn: torch.Tensor | None = None) -> ATSOut:
    """The ``nas.mechanisms.Reduction`` hook: ``ats_block`` with the arch's budget."""
    return ats_block(block, x, mask, keep=cfg.keep, k=cfg.k, attn=attn)

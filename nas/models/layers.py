"""Transformer building blocks shared by every model family: attention that can hand its map on
(PSViT attention sharing) and accept a token mask (ATS pads per-image token sets), and the pre-norm block.

A block computes ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))`` as in timm's ViT. A *sharing* block
has no Q and K projections: it takes the attention map of the layer before it and computes only V.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, use_fused_attn
from torch import nn

from nas.shapes import heads_error


class Attention(nn.Module):
    """Multi-head self-attention. ``shared=True`` builds a layer that reuses an inherited map (V only)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, shared: bool = False) -> None:
        super().__init__()
        msg = heads_error(dim, heads)
        if msg:
            raise ValueError(msg)
        self.heads, self.shared = heads, shared
        self.scale = (dim // heads) ** -0.5
        if shared:
            self.v = nn.Linear(dim, dim, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.fused_attn = use_fused_attn()  # timm's switch; TIMM_FUSED_ATTN=0 turns it off

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        B, N, C = t.shape
        return t.reshape(B, N, self.heads, C // self.heads).transpose(1, 2)  # (B, h, N, d)

    def maps(self, x: torch.Tensor, attn: torch.Tensor | None = None,
             mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention map and values: ``(A, v)`` with A (B, h, N, N) and v (B, h, N, d).

        ``attn`` is the inherited map of a sharing layer. ``mask`` (B, N), True for real tokens, keeps
        padded keys out of the softmax.
        """
        if self.shared:
            if attn is None:
                raise ValueError("a sharing attention layer needs the previous layer's attention map")
            return attn, self._split(self.v(x))
        q, k, v = self.qkv(x).chunk(3, dim=-1)                      # 3 x (B, N, C)
        q, k, v = self._split(q), self._split(k), self._split(v)     # (B, h, N, d)
        scores = (q * self.scale) @ k.transpose(-2, -1)             # (B, h, N, N)
        if mask is not None:
            scores.masked_fill_(~mask[:, None, None, :], float("-inf"))  # in place: a fresh tensor
        return scores.softmax(dim=-1), v

    def merge(self, out: torch.Tensor) -> torch.Tensor:
        """(B, h, M, d) head outputs -> (B, M, C) after the output projection."""
        B, h, M, d = out.shape
        return self.proj(out.transpose(1, 2).reshape(B, M, h * d))

    def forward(self, x: torch.Tensor, attn: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                need_map: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns ``(out (B, N, C), map or None)``; the map is returned when ``need_map`` or shared."""
        if self.fused_attn and not self.shared and not need_map:
            q, k, v = (self._split(t) for t in self.qkv(x).chunk(3, dim=-1))
            m = None if mask is None else mask[:, None, None, :]
            return self.merge(F.scaled_dot_product_attention(q, k, v, attn_mask=m)), None
        a, v = self.maps(x, attn, mask)
        return self.merge(a @ v), a


class Block(nn.Module):
    """Pre-norm transformer layer; ``shared=True`` makes it reuse the previous layer's attention map."""

    def __init__(self, dim: int, heads: int, hidden: int, qkv_bias: bool = True, norm_eps: float = 1e-6,
                 shared: bool = False, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, heads, qkv_bias=qkv_bias, shared=shared)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, hidden_features=hidden, act_layer=nn.GELU)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, attn: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                need_map: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, N, C) -> (x (B, N, C), attention map (B, h, N, N) or None)."""
        out, a = self.attn(self.norm1(x), attn=attn, mask=mask, need_map=need_map)
        x = x + self.drop_path(out)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        if mask is not None:
            x = x * mask[..., None]  # padded rows stay exactly zero
        return x, a

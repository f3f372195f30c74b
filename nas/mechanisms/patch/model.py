"""The patch tokenizer's module (``nas.mechanisms.patch``)."""
from __future__ import annotations

import torch
from timm.layers import PatchEmbed, trunc_normal_
from torch import nn


class PatchTokens(nn.Module):
    """DeiT tokenizer: non-overlapping patches -> Linear embedding, cls token prepended, positions added."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, dim: int, cls_token: bool = True) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cls_token else None
        n = self.patch_embed.num_patches + int(cls_token)
        self.pos_embed = nn.Parameter(torch.zeros(1, n, dim))
        trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed"}

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(img)  # (B, N, C)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, C)
        return x + self.pos_embed


def build(arch, drop_path: list[float] | None = None) -> nn.Module:
    tok = arch.tokenizer
    return PatchTokens(arch.img_size, tok.patch_size, arch.in_chans, arch.stages[0].dim, arch.has_cls_token)

"""PSViT token pooling between stages: fewer tokens, (possibly) wider tokens (docs/mechanisms.md section 3).

``TokenPool1d``: the cls token goes through a Linear(C_in, C_out); the patch tokens, read as a 1D sequence,
go through Conv1d(C_in, C_out, kernel, stride 1, padding kernel//2, bias) then MaxPool1d(2, 2, ceil_mode):
197 -> 99 -> 50 tokens at 224/16.

``TokenPool2d``: the patch tokens, read as a square h x w grid (row-major, as PatchEmbed flattens them), go
through Conv2d(C_in, C_out, kernel, stride 2, padding (kernel-1)//2): 28x28 -> 14x14 -> 7x7 for kernel 3.
PSViT-2D has no cls token; when an arch combines 2d pooling with a cls head (``Arch.has_cls_token`` allows
it) the cls token is carried through a Linear exactly as in 1d pooling.

Decisions where the paper is silent: both variants keep their conv and cls Linear even when C_in == C_out
(PSViT's 'Dimension1' keeps the width but still pools), so every pooling has the same parameters whatever the
widths; an even 1d kernel gives one extra position before max pooling (padding kernel//2 on both sides).
The output sizes are ``nas.shapes.pooled_len_1d`` / ``pooled_side_2d``, which ``nas.cost`` counts with too.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from nas.arch import Pooling
from nas.errors import NasError
from nas.shapes import check_kernel, check_pooling, pooled_len_1d, pooled_side_2d

__all__ = ["TokenPool1d", "TokenPool2d", "build_pooling"]


class TokenPool1d(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, kernel: int = 3) -> None:
        super().__init__()
        self.cls_proj = nn.Linear(dim_in, dim_out)
        self.conv = nn.Conv1d(dim_in, dim_out, kernel, stride=1, padding=kernel // 2)
        self.pool = nn.MaxPool1d(2, 2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 1 + N, C_in), cls first -> (B, 1 + ceil(N / 2), C_out) for odd kernels."""
        cls, patches = x[:, :1], x[:, 1:]
        patches = self.pool(self.conv(patches.transpose(1, 2)))  # (B, C_out, N')
        return torch.cat([self.cls_proj(cls), patches.transpose(1, 2)], dim=1)


class TokenPool2d(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, kernel: int = 3, cls_token: bool = False) -> None:
        super().__init__()
        self.num_prefix = int(cls_token)
        self.cls_proj = nn.Linear(dim_in, dim_out) if cls_token else None
        self.conv = nn.Conv2d(dim_in, dim_out, kernel, stride=2, padding=(kernel - 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, [1 +] h*w, C_in) -> (B, [1 +] h'*w', C_out); the grid is square."""
        B, N, C = x.shape
        patches = x[:, self.num_prefix:]
        side = math.isqrt(patches.shape[1])
        if side * side != patches.shape[1]:
            raise ValueError(f"2d token pooling needs a square token grid, got {patches.shape[1]} tokens")
        grid = patches.transpose(1, 2).reshape(B, C, side, side)  # (B, C_in, h, w)
        out = self.conv(grid).flatten(2).transpose(1, 2)           # (B, h'*w', C_out)
        if self.cls_proj is None:
            return out
        return torch.cat([self.cls_proj(x[:, :1]), out], dim=1)


def build_pooling(pooling: Pooling, dim_in: int, dim_out: int, cls_token: bool) -> nn.Module:
    """The pooling module between two stages; ``nn.Identity`` for ``none`` (then dims must be equal)."""
    check_pooling(pooling.type, dim_in, dim_out)
    if pooling.type == "none":
        return nn.Identity()
    check_kernel(pooling.kernel)
    if pooling.type == "1d":
        if not cls_token:
            raise NasError("1d token pooling needs the cls token", key="pooling.type")
        return TokenPool1d(dim_in, dim_out, pooling.kernel)
    return TokenPool2d(dim_in, dim_out, pooling.kernel, cls_token)

"""Weight entanglement (AutoFormer): a subnet's tensor is a slice of the supernet's largest tensor.

Three rules, chosen per tensor from the module that owns it in the standalone model:

- ``lead``: the leading entries of every dimension (Linear rows and columns, LayerNorm and BatchNorm
  vectors, MLP hidden = the first ``int(dim * mlp_ratio)`` rows of fc1, position tables, cls tokens, head).
- ``qkv``: a fused ``qkv`` Linear (3C, C) holds q, k and v stacked; each is sliced on its own, so a subnet of
  width c uses rows [0, c), [C, C + c) and [2C, 2C + c) of the (3C, C) weight and the first c columns.
  Slicing the fused rows by leading entries would hand k's rows to q.
- ``centre``: convolution weights take the leading output/input channels and the *centre* of the largest
  kernel (offset (K - k) // 2 per spatial dimension), so a kernel-1 conv starts as the middle tap of the
  kernel-3 one. For an even difference K - k the window is centred exactly; for an odd one it leans to the
  start (only possible with 2d pooling, whose kernels may be even).

``slice_tensor`` returns the full tensor itself when the shapes match (no copy, no autograd node), a view
for ``lead`` and ``centre`` (so in-place updates such as BatchNorm running statistics write through), and a
copy for ``qkv`` with a smaller width (q, k, v are not one contiguous block).
"""
from __future__ import annotations

import torch
from torch import nn

RULES = ("lead", "qkv", "centre")


def rule_for(owner: nn.Module, attr: str, leaf: str) -> str:
    """The slicing rule of tensor ``leaf`` of module ``owner`` (registered in its parent as ``attr``)."""
    if isinstance(owner, nn.Linear) and attr == "qkv":
        return "qkv"   # nas Attention and timm's Attention both fuse q, k, v in one Linear named qkv
    if isinstance(owner, nn.modules.conv._ConvNd) and leaf == "weight":
        return "centre"
    return "lead"


def fits(full: tuple[int, ...], shape: tuple[int, ...], rule: str) -> bool:
    """True when a tensor of ``shape`` can be cut out of one of shape ``full`` with ``rule``."""
    if len(full) != len(shape) or any(n > m for n, m in zip(shape, full)):
        return False
    return rule != "qkv" or (full[0] % 3 == 0 and shape[0] % 3 == 0)


def region(full: tuple[int, ...], shape: tuple[int, ...], rule: str) -> list[tuple[slice, ...]]:
    """Index tuples into the full tensor that together hold the slice (three blocks for ``qkv``)."""
    if rule == "centre":
        return [tuple(slice(0, n) if i < 2 else slice((m - n) // 2, (m - n) // 2 + n)
                      for i, (m, n) in enumerate(zip(full, shape)))]
    rest = tuple(slice(0, n) for n in shape[1:])
    if rule == "qkv":
        big, small = full[0] // 3, shape[0] // 3
        return [(slice(j * big, j * big + small),) + rest for j in range(3)]
    return [tuple(slice(0, n) for n in shape)]


def slice_tensor(full: torch.Tensor, shape: tuple[int, ...], rule: str) -> torch.Tensor:
    """The ``shape`` slice of ``full`` under ``rule``; differentiable, gradients land in ``full``'s slice."""
    if tuple(full.shape) == shape:
        return full
    if rule == "qkv" and full.shape[0] != shape[0]:
        big, small = full.shape[0] // 3, shape[0] // 3
        rest = tuple(slice(0, n) for n in shape[1:])
        blocks = full.view(3, big, *full.shape[1:])[(slice(None), slice(0, small)) + rest]  # (3, c, ...)
        return blocks.reshape(shape)
    (idx,) = region(tuple(full.shape), shape, "centre" if rule == "centre" else "lead")
    return full[idx]

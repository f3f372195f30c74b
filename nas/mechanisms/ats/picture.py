"""``nas viz`` picture of ATS: one panel per ATS cell, the tokens it kept shown and the dropped ones dimmed, on the
tokenizer's grid (``nas.viz.token_boxes``); after token pooling a token stands for the tokens of its stride window
(``nas.viz.token_footprints``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from nas.errors import NasError
from nas.viz import View, figure, save, show_image, token_boxes, token_footprints

NAME = "ats"
VEIL = (0.45, 0.45, 0.5, 0.8)  # RGBA over dropped tokens: visible on dark and on light images


def kept_tokens(model: nn.Module) -> list[torch.Tensor]:
    """Per ATS cell of the last forward, (B, G) bool over the tokenizer's token grid: the tokens kept."""
    kept_pos = getattr(model, "last_kept", None)
    if not kept_pos:
        raise NasError("no kept tokens recorded: the model has no ATS cell or has not run")
    foot = token_footprints(model.arch).float()                             # (N_last, G)
    prefix = int(model.arch.has_cls_token)
    out = []
    for pos in kept_pos:                                                    # (B, M) rows of the stage, -1 pad
        pos = pos.detach().cpu()
        real = pos >= prefix                                                # cls and padding excluded
        kept = torch.zeros(pos.shape[0], foot.shape[0])
        kept.scatter_(1, (pos - prefix).clamp(min=0), real.float())         # (B, N_last)
        out.append(kept @ foot > 0)
    return out


def _draw_kept(ax, img: np.ndarray, boxes: np.ndarray, kept: np.ndarray) -> None:
    """Dim every pixel outside the kept tokens' cells."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    shown = np.zeros((h, w), dtype=bool)
    for y0, x0, y1, x1 in boxes[kept]:
        shown |= (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)
    veil = np.zeros((h, w, 4))
    veil[~shown] = VEIL
    ax.imshow(veil, interpolation="nearest")


def draw(view: View) -> list[Path]:
    arch, model, b = view.arch, view.model, view.b
    kept = kept_tokens(model)
    boxes = token_boxes(arch, model, b)
    fig, axes = figure(1 + len(kept))
    show_image(axes[0], view.img)
    axes[0].set_title("input", fontsize=7)
    prefix = int(arch.has_cls_token)
    for ax, cell, k, pos in zip(axes[1:], arch.reduction.blocks, kept, model.last_kept):
        show_image(ax, view.img)
        _draw_kept(ax, view.img, boxes, k[b].numpy())
        ax.set_title(f"ATS cell {cell}: {int((pos[b] >= prefix).sum())} tokens kept", fontsize=7)
    fig.suptitle(view.title, fontsize=7)
    return [save(fig, view.file(NAME))]

"""``nas viz`` picture of CF-ViT: the informative regions re-split 2x2 in the fine pass, outlined on the coarse grid,
or that the image exited after the coarse pass (then it shows no regions: the model chose none for it)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from nas.errors import NasError
from nas.viz import View, figure, save, show_image

NAME = "coarse_fine"


def coarse_fine_regions(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(regions (B, k) long, exits (B,) bool) of the last forward: the informative regions on the c x c grid of
    each image that ran the fine pass, a row of -1 for an image that exited after the coarse pass."""
    exits, fine = getattr(model, "last_exits", None), getattr(model, "last_regions", None)
    if exits is None or fine is None:
        raise NasError("no regions recorded: the model is not a CF-ViT or has not run")
    exits, fine = exits.cpu(), fine.cpu()
    regions = torch.full((exits.shape[0], fine.shape[1]), -1, dtype=torch.long)
    regions[~exits] = fine
    return regions, exits


def _draw_regions(ax, regions: Sequence[int], grid: int, img_size: int) -> None:
    """The c x c coarse grid, faint; the informative regions outlined with their 2x2 split dashed."""
    from matplotlib.patches import Rectangle

    s = img_size / grid
    for i in range(1, grid):
        ax.axhline(i * s - 0.5, c="white", lw=0.4, alpha=0.4)
        ax.axvline(i * s - 0.5, c="white", lw=0.4, alpha=0.4)
    for r in regions:
        y, x = divmod(int(r), grid)
        y0, x0 = y * s - 0.5, x * s - 0.5
        ax.add_patch(Rectangle((x0, y0), s, s, fill=False, ec="orange", lw=1.4))
        ax.plot([x0 + s / 2] * 2, [y0, y0 + s], c="orange", lw=0.7, ls="--")
        ax.plot([x0, x0 + s], [y0 + s / 2] * 2, c="orange", lw=0.7, ls="--")


def draw(view: View) -> list[Path]:
    regions, exits = coarse_fine_regions(view.model)
    tok, b = view.arch.tokenizer, view.b
    fig, (ax,) = figure(1)
    show_image(ax, view.img)
    chosen = [int(r) for r in regions[b] if r >= 0]
    _draw_regions(ax, chosen, tok.coarse_grid, view.arch.img_size)
    what = (f"exited after the coarse pass (confidence >= {view.model.exit_threshold:g})" if exits[b] else
            f"fine pass: {len(chosen)} of {tok.coarse_grid ** 2} regions re-split 2x2")
    ax.set_title(f"{view.title}\n{what}", fontsize=7)
    return [save(fig, view.file(NAME))]

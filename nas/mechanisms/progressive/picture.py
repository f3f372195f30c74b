"""``nas viz`` picture of progressive sampling: every token's sampling point, an arrow from its place on the regular
initial grid to its final position, the rounds between as a thin line (the paper's figure of sampling locations).
A point in stem feature-map pixels is drawn at the centre of that pixel's receptive field (``image_points``)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from nas.errors import NasError
from nas.mechanisms.progressive.model import image_points
from nas.viz import View, figure, save, show_image

NAME = "sampling"


def sampling_points(model: nn.Module) -> torch.Tensor:
    """(B, N, P, 2) sampling points (y, x) in input-image pixels of every round of the last forward; round 0 is
    the initial grid, round N-1 the final points."""
    traj = getattr(getattr(model, "tokenizer", None), "last_trajectory", None)
    if traj is None:
        raise NasError("no sampling points recorded: the model has no progressive tokenizer or has not run")
    return image_points(traj.detach().float().cpu())


def _draw_sampling(ax, traj: torch.Tensor) -> None:
    """traj (N, P, 2) image pixels (y, x): initial grid, arrows to the final points, rounds between."""
    first, last = traj[0].numpy(), traj[-1].numpy()
    if traj.shape[0] > 2:
        for p in range(traj.shape[1]):
            ax.plot(traj[:, p, 1], traj[:, p, 0], c="yellow", lw=0.5, alpha=0.6)
    ax.quiver(first[:, 1], first[:, 0], last[:, 1] - first[:, 1], last[:, 0] - first[:, 0], angles="xy",
              scale_units="xy", scale=1, color="yellow", width=0.006, headwidth=4)
    ax.scatter(first[:, 1], first[:, 0], s=9, facecolors="none", edgecolors="cyan", lw=0.7, label="initial grid")
    ax.scatter(last[:, 1], last[:, 0], s=7, c="red", label="final point")


def draw(view: View) -> list[Path]:
    traj = sampling_points(view.model)[view.b]
    fig, (ax,) = figure(1)
    show_image(ax, view.img)
    _draw_sampling(ax, traj)
    ax.set_xlim(-0.5, view.img.shape[1] - 0.5)
    ax.set_ylim(view.img.shape[0] - 0.5, -0.5)
    ax.legend(fontsize=6, loc="lower right", framealpha=0.6)
    ax.set_title(f"{view.title}\nsampling points: {traj.shape[0]} rounds, initial -> final", fontsize=7)
    return [save(fig, view.file(NAME))]

"""Pictures of what the mechanisms do to real images (``nas viz ARCH``; docs/viz.md).

One PNG per image and mechanism, drawn over the input image. Each mechanism draws its own (``picture`` in
``nas.mechanisms``: a module with ``NAME`` and ``draw(view)``, in the mechanism's package); this module holds
the model, the images and the drawing helpers they share. The shipped pictures:

- progressive sampling (PS-ViT, arXiv 2108.01684): every token's sampling point, an arrow from its place on the
  regular initial grid to its final position, the rounds between as a thin line (the paper's figure of
  sampling locations);
- ATS (arXiv 2111.15667): one panel per ATS cell, the tokens it kept shown and the dropped ones dimmed;
- CF-ViT (arXiv 2203.03821): the informative regions re-split 2x2 in the fine pass, outlined on the coarse
  grid, or that the image exited after the coarse pass.

The pictures of a search run directory (``nas viz RUN_DIR``) are the search's: ``nas.search.plots``.

The data functions of the pictures' modules (``sampling_points``, ``kept_tokens``, the CF-ViT regions) only
read what the model recorded in its last forward (``last_trajectory``, ``last_kept``, ``last_exits`` /
``last_regions``), so a picture shows the model's own decisions, never a recomputation of them.

Decisions where the papers are silent:

- A point in stem feature-map pixels is drawn at the centre of that pixel's receptive field
  (``nas.mechanisms.progressive.model.image_points``: 4 image pixels per feature pixel).
- ATS masks are drawn on the tokenizer's grid: a token is a cell of image/n pixels (a patch token is its patch),
  centred on its final sampling point when the tokenizer records points (PS-ViT); after token pooling a token stands for the tokens of its
  stride window (2 consecutive tokens for 1d pooling, 2x2 for 2d).
- An image that exited early shows no regions: the model chose none for it.
- Without weights the model is a seeded random init and the title says so. Its sampling points do not move
  (the offset heads start at zero, as in the authors' code); ATS and CF-ViT still choose, from random features.
"""
from __future__ import annotations

import importlib
import io
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from nas.arch import Arch
from nas.atomic import atomic_write
from nas.errors import NasError
from nas.limits import MAX_SEED, check_folder
from nas.mechanisms import Mechanism, reduction_of, reductions, tokenizer, tokenizers
from nas.shapes import grid_side

__all__ = ["token_footprints", "token_boxes", "mechanisms", "pictured", "View", "figure", "show_image", "save",
           "visualize", "viz"]

PANEL_INCHES = 2.6  # side of one image panel
DPI = 80


# --- what the model did -------------------------------------------------------------------------------------
def pictured(arch: Arch) -> list[Mechanism]:
    """The mechanisms of ``arch`` that draw a picture (their ``picture`` module), tokenizer first."""
    out = [tokenizer(arch.tokenizer)] + ([reduction_of(arch.reduction)] if arch.reduction is not None else [])
    return [m for m in out if m.picture]


def mechanisms(arch: Arch) -> list[str]:
    """The names of the pictures of ``arch`` (the words in their file names: ``NAME`` of each picture module)."""
    return [importlib.import_module(m.picture).NAME for m in pictured(arch)]


def token_footprints(arch: Arch) -> torch.Tensor:
    """(N_last, G) bool: which tokenizer tokens (G = side^2, raster order) each patch token of the stages
    after the last token pooling stands for (identity without pooling)."""
    from nas.models.pooling import pooled_len_1d, pooled_side_2d

    side = grid_side(arch)
    foot = torch.eye(side * side, dtype=torch.bool)                         # (G, G)
    for _ in range(len(arch.stages) - 1 if arch.pooling.type != "none" else 0):
        n = foot.shape[0]
        if arch.pooling.type == "1d":                                       # window {2j, 2j+1}
            m = pooled_len_1d(n, arch.pooling.kernel)
            foot = torch.stack([foot[2 * j:2 * j + 2].any(dim=0) for j in range(m)])
        else:                                                               # 2x2 window of a square grid
            s = math.isqrt(n)
            m = pooled_side_2d(s, arch.pooling.kernel)
            grid = foot.reshape(s, s, -1)
            foot = torch.stack([grid[2 * i:2 * i + 2, 2 * j:2 * j + 2].flatten(0, 1).any(dim=0)
                                for i in range(m) for j in range(m)])
    return foot


def token_boxes(arch: Arch, model: nn.Module, b: int) -> np.ndarray:
    """(G, 4) y0, x0, y1, x1 in imshow coordinates (pixel centres at integers) of each tokenizer token: a cell of
    image/side pixels, on the regular grid, or centred on the token's final sampling point when the tokenizer
    records them (``last_trajectory``, in stem pixels: ``image_points``)."""
    side = grid_side(arch)
    cell = arch.img_size / side
    traj = getattr(getattr(model, "tokenizer", None), "last_trajectory", None)
    if traj is None:
        r, c = np.divmod(np.arange(side * side), side)
        return np.stack([r * cell, c * cell, (r + 1) * cell, (c + 1) * cell], axis=1) - 0.5
    pts = importlib.import_module(tokenizer(arch.tokenizer).model).image_points(traj.detach().float().cpu())
    pts = pts[b, -1].numpy()                                                # (P, 2) final points
    return np.concatenate([pts - cell / 2, pts + cell / 2], axis=1)


# --- the model and the images ------------------------------------------------------------------------------
@contextmanager
def _model(arch: Arch, data: str | None, images: int, weights: str | None, supernet: str | None,
           seed: int) -> Iterator[tuple[nn.Module, Arch, torch.Tensor, torch.Tensor, str]]:
    """(model in eval mode, the arch it runs, images (N, C, H, W), labels (N,), where the weights come from)."""
    if supernet is not None:
        from nas.supernet.run import load_supernet_run

        with load_supernet_run(supernet).scored(arch, "val", data, val_images=images, batch_size=images) as s:
            x, y = next(iter(s.evaluator.batches()))
            source = f"supernet {Path(supernet).name}" + (" (as its proxy arch)" if s.arch != arch else "")
            yield s.model.eval(), s.arch, x[:images], y[:images], source
        return
    from nas.cost import cost
    from nas.data import load_data
    from nas.limits import check_model_size
    from nas.models import build_model
    from nas.weights import load_weights

    c = cost(arch)
    check_model_size(c.macs, c.params, "the arch")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(arch).eval()
    source = f"seeded random init (seed {seed}), untrained"
    if weights is not None:
        load_weights(weights, model)
        source = f"weights {Path(weights).name}"
    val = load_data(data or "builtin", arch.img_size, arch.in_chans, seed=seed, limit={"val": images}).val
    items = [val[i] for i in range(min(images, len(val)))]
    yield model, arch, torch.stack([x for x, _ in items]), torch.tensor([int(t) for _, t in items]), source


def _display(x: torch.Tensor) -> np.ndarray:
    """A normalised image (C, H, W) -> (H, W[, 3]) in [0, 1] for imshow (the data's normalisation undone)."""
    from nas.data import norm_stats

    mean, std = norm_stats(x.shape[0])
    img = (x.float() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]).clamp(0, 1)
    return img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()


# --- drawing helpers (for the mechanisms' pictures) ---------------------------------------------------------
@dataclass
class View:
    """One image of a ``nas viz`` run, handed to every picture's ``draw``: the arch and model (after its forward on
    the batch), the image's index ``b`` in the batch, the image for imshow, the common title, the output folder."""
    arch: Arch
    model: nn.Module
    b: int
    img: np.ndarray
    title: str
    out: Path

    def file(self, name: str) -> Path:
        return self.out / f"img{self.b:03d}-{name}.png"


def figure(panels: int, cols: int = 4):
    """A figure of ``panels`` image panels, at most ``cols`` per row: (figure, axes)."""
    from matplotlib.figure import Figure

    cols = min(panels, cols)
    rows = -(-panels // cols)
    fig = Figure(figsize=(PANEL_INCHES * max(cols, 1.6), (PANEL_INCHES + 0.3) * rows + 0.4), dpi=DPI)
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(panels)]


def show_image(ax, img: np.ndarray) -> None:
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.05)
    atomic_write(path, buf.getvalue())
    return path


def _title(arch: Arch, source: str, label: int, logits: torch.Tensor) -> str:
    prob = logits.float().softmax(-1)
    return (f"{arch.name or arch.hash()}\n{source}\nlabel {label}, predicted {int(prob.argmax())} "
            f"(p {float(prob.max()):.2f})")


# --- entry points -------------------------------------------------------------------------------------------
def visualize(arch: Arch, out: str | Path, data: str | None = None, images: int = 4, weights: str | None = None,
              supernet: str | None = None, seed: int = 0) -> list[Path]:
    """``nas viz ARCH``: PNGs of each mechanism of ``arch`` for the first ``images`` images of the val split of
    ``data`` (default: the supernet's data, else the built-in MNIST), written into ``out``. The weights come
    from a safetensors file, a trained supernet run (sliced for the arch), or a seeded random init."""
    if weights is not None and supernet is not None:
        raise NasError("give --weights or --supernet, not both")
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise NasError(f"--images must be a positive integer, got {images!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise NasError(f"--seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
    if not pictured(arch):
        drawn = [m.name for m in {**tokenizers(), **reductions()}.values() if m.picture]
        raise NasError(f"arch {arch.name or arch.hash()} has no mechanism to picture; pictures exist for "
                       f"{', '.join(drawn)}")
    out, files = check_folder(out), []
    with _model(arch, data, images, weights, supernet, seed) as (model, arch, x, y, source), torch.no_grad():
        logits = model(x)                                                   # records what the pictures show
        draws = [importlib.import_module(m.picture).draw for m in pictured(arch)]
        for b in range(x.shape[0]):
            view = View(arch, model, b, _display(x[b]), _title(arch, source, int(y[b]), logits[b]), out)
            for draw in draws:
                files += draw(view)
    return files


def viz(target: str, out: str | None = None, data: str | None = None, images: int = 4, weights: str | None = None,
        supernet: str | None = None, seed: int = 0) -> list[Path]:
    """``nas viz ARCH``: an arch file or a registered arch name (``visualize``, default ``out`` ``viz/<arch>``);
    the CLI sends a search run directory to ``nas.search.plots.visualize_search``."""
    path = Path(target)
    if path.is_dir():
        raise NasError("a directory is no arch: give an arch file or a registered arch name (`nas viz RUN_DIR` "
                       "draws a search run)", file=target)
    from nas.shipped import path as shipped_path
    file = path if path.exists() else shipped_path("space", target)  # a shipped reference/NAME arch too
    if file is not None:
        from nas.space import load_arch
        arch, name = load_arch(file), file.stem
    else:
        from nas.models.zoo import get_arch
        arch = get_arch(target)
        name = target
    return visualize(arch, out or Path("viz") / name, data, images, weights, supernet, seed)

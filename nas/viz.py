"""Pictures of what the mechanisms do to real images (``nas viz ARCH``; docs/viz.md).

One PNG per image and mechanism, drawn over the input image:

- progressive sampling (PS-ViT, arXiv 2108.01684): every token's sampling point, an arrow from its place on the
  regular initial grid to its final position, the rounds between as a thin line (the paper's figure of
  sampling locations);
- ATS (arXiv 2111.15667): one panel per ATS cell, the tokens it kept shown and the dropped ones dimmed;
- CF-ViT (arXiv 2203.03821): the informative regions re-split 2x2 in the fine pass, outlined on the coarse
  grid, or that the image exited after the coarse pass.

The pictures of a search run directory (``nas viz RUN_DIR``) are the search's: ``nas.search.plots``.

The data functions (``sampling_points``, ``kept_tokens``, ``coarse_fine_regions``) only read what the model
recorded in its last forward (``last_trajectory``, ``last_kept``, ``last_exits`` / ``last_regions``), so a
picture shows the model's own decisions, never a recomputation of them.

Decisions where the papers are silent:

- A point in stem feature-map pixels is drawn at the centre of that pixel's receptive field
  (``nas.mechanisms.progressive.model.image_points``: 4 image pixels per feature pixel).
- ATS masks are drawn on the tokenizer's grid: a patch token is its patch; a PS-ViT token is a cell of
  image/n pixels centred on its final sampling point; after token pooling a token stands for the tokens of its
  stride window (2 consecutive tokens for 1d pooling, 2x2 for 2d).
- An image that exited early shows no regions: the model chose none for it.
- Without weights the model is a seeded random init and the title says so. Its sampling points do not move
  (the offset heads start at zero, as in the authors' code); ATS and CF-ViT still choose, from random features.
"""
from __future__ import annotations

import io
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from nas.arch import Arch
from nas.atomic import atomic_write
from nas.errors import NasError
from nas.limits import MAX_SEED, check_folder

__all__ = ["sampling_points", "token_footprints", "kept_tokens", "coarse_fine_regions", "mechanisms",
           "visualize", "viz"]

VEIL = (0.45, 0.45, 0.5, 0.8)  # RGBA over dropped ATS tokens: visible on dark and on light images
PANEL_INCHES = 2.6  # side of one image panel
DPI = 80


# --- what the model did (tested against the models' own records) --------------------------------------------
def mechanisms(arch: Arch) -> list[str]:
    """The mechanisms of ``arch`` that have a picture: 'sampling', 'ats', 'coarse_fine'."""
    out = ["sampling"] if arch.tokenizer.type == "progressive" else []
    out += ["ats"] if arch.reduction is not None else []
    return out + (["coarse_fine"] if arch.tokenizer.type == "coarse_fine" else [])


def sampling_points(model: nn.Module) -> torch.Tensor:
    """(B, N, P, 2) sampling points (y, x) in input-image pixels of every round of the last forward; round 0 is
    the initial grid, round N-1 the final points."""
    from nas.mechanisms.progressive.model import image_points

    traj = getattr(getattr(model, "tokenizer", None), "last_trajectory", None)
    if traj is None:
        raise NasError("no sampling points recorded: the model has no progressive tokenizer or has not run")
    return image_points(traj.detach().float().cpu())


def _grid_side(arch: Arch) -> int:
    """Side of the tokenizer's token grid: image/patch, or the PS-ViT points per side."""
    tok = arch.tokenizer
    return tok.points if tok.type == "progressive" else arch.img_size // tok.patch_size


def token_footprints(arch: Arch) -> torch.Tensor:
    """(N_last, G) bool: which tokenizer tokens (G = side^2, raster order) each patch token of the stages
    after the last token pooling stands for (identity without pooling)."""
    from nas.models.pooling import pooled_len_1d, pooled_side_2d

    side = _grid_side(arch)
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


# --- drawing ------------------------------------------------------------------------------------------------
def _figure(panels: int, cols: int = 4):
    """A figure of ``panels`` image panels, at most ``cols`` per row."""
    from matplotlib.figure import Figure

    cols = min(panels, cols)
    rows = -(-panels // cols)
    fig = Figure(figsize=(PANEL_INCHES * max(cols, 1.6), (PANEL_INCHES + 0.3) * rows + 0.4), dpi=DPI)
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(panels)]


def _image(ax, img: np.ndarray) -> None:
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.05)
    atomic_write(path, buf.getvalue())
    return path


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


def _cell_boxes(arch: Arch, model: nn.Module, b: int) -> np.ndarray:
    """(G, 4) y0, x0, y1, x1 in imshow coordinates (pixel centres at integers) of each tokenizer token."""
    side = _grid_side(arch)
    if arch.tokenizer.type == "patch":
        p = arch.tokenizer.patch_size
        r, c = np.divmod(np.arange(side * side), side)
        return np.stack([r * p, c * p, (r + 1) * p, (c + 1) * p], axis=1) - 0.5
    half = arch.img_size / side / 2                                          # PS-ViT: centred on the point
    pts = sampling_points(model)[b, -1].numpy()                             # (P, 2)
    return np.concatenate([pts - half, pts + half], axis=1)


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
    if not mechanisms(arch):
        raise NasError(f"arch {arch.name or arch.hash()} has no mechanism to picture; pictures exist for the "
                       "progressive tokenizer, ats and the coarse_fine tokenizer")
    out, files = check_folder(out), []
    with _model(arch, data, images, weights, supernet, seed) as (model, arch, x, y, source), torch.no_grad():
        logits = model(x)                                                   # records what the pictures show
        kinds = mechanisms(arch)
        traj = sampling_points(model) if "sampling" in kinds else None
        kept = kept_tokens(model) if "ats" in kinds else None
        regions, exits = coarse_fine_regions(model) if "coarse_fine" in kinds else (None, None)
        for b in range(x.shape[0]):
            img, title = _display(x[b]), _title(arch, source, int(y[b]), logits[b])
            if traj is not None:
                fig, (ax,) = _figure(1)
                _image(ax, img)
                _draw_sampling(ax, traj[b])
                ax.set_xlim(-0.5, img.shape[1] - 0.5)
                ax.set_ylim(img.shape[0] - 0.5, -0.5)
                ax.legend(fontsize=6, loc="lower right", framealpha=0.6)
                ax.set_title(f"{title}\nsampling points: {traj.shape[1]} rounds, initial -> final", fontsize=7)
                files.append(_save(fig, out / f"img{b:03d}-sampling.png"))
            if kept is not None:
                boxes = _cell_boxes(arch, model, b)
                fig, axes = _figure(1 + len(kept))
                _image(axes[0], img)
                axes[0].set_title("input", fontsize=7)
                prefix = int(arch.has_cls_token)
                for ax, cell, k, pos in zip(axes[1:], arch.reduction.blocks, kept, model.last_kept):
                    _image(ax, img)
                    _draw_kept(ax, img, boxes, k[b].numpy())
                    ax.set_title(f"ATS cell {cell}: {int((pos[b] >= prefix).sum())} tokens kept", fontsize=7)
                fig.suptitle(title, fontsize=7)
                files.append(_save(fig, out / f"img{b:03d}-ats.png"))
            if regions is not None:
                tok = arch.tokenizer
                fig, (ax,) = _figure(1)
                _image(ax, img)
                chosen = [int(r) for r in regions[b] if r >= 0]
                _draw_regions(ax, chosen, tok.coarse_grid, arch.img_size)
                what = (f"exited after the coarse pass (confidence >= {model.exit_threshold:g})" if exits[b] else
                        f"fine pass: {len(chosen)} of {tok.coarse_grid ** 2} regions re-split 2x2")
                ax.set_title(f"{title}\n{what}", fontsize=7)
                files.append(_save(fig, out / f"img{b:03d}-coarse_fine.png"))
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

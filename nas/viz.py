"""Pictures of what the mechanisms do to real images, and of a search run (``nas viz``; docs/viz.md).

One PNG per image and mechanism, drawn over the input image:

- progressive sampling (PS-ViT, arXiv 2108.01684): every token's sampling point, an arrow from its place on the
  regular initial grid to its final position, the rounds between as a thin line (the paper's figure of
  sampling locations);
- ATS (arXiv 2111.15667): one panel per ATS cell, the tokens it kept shown and the dropped ones dimmed;
- CF-ViT (arXiv 2203.03821): the informative regions re-split 2x2 in the fine pass, outlined on the coarse
  grid, or that the image exited after the coarse pass.

For a search run directory, on what the search ranks by (the loss on the search split, lower is better): loss
against MACs of every candidate with the Pareto front on (MACs, loss), the budget and the winner, top-1 beside it
for reference; and the lowest loss so far against the number of evaluations, with that candidate's top-1.

The data functions (``sampling_points``, ``kept_tokens``, ``coarse_fine_regions``) only read what the model
recorded in its last forward (``last_trajectory``, ``last_kept``, ``last_exits`` / ``last_regions``), so a
picture shows the model's own decisions, never a recomputation of them.

Decisions where the papers are silent:

- A point in stem feature-map pixels is drawn at the centre of that pixel's receptive field
  (``nas.models.progressive.image_points``: 4 image pixels per feature pixel).
- ATS masks are drawn on the tokenizer's grid: a patch token is its patch; a PS-ViT token is a cell of
  image/n pixels centred on its final sampling point; after token pooling a token stands for the tokens of its
  stride window (2 consecutive tokens for 1d pooling, 2x2 for 2d).
- An image that exited early shows no regions: the model chose none for it.
- Without weights the model is a seeded random init and the title says so. Its sampling points do not move
  (the offset heads start at zero, as in the authors' code); ATS and CF-ViT still choose, from random features.
- Search runs are read by column name (``arch_hash``, ``score``, ``loss``, ``macs`` or ``target_macs``,
  optional ``macs_mean``, ``feasible``); the budget and the winner come from ``run.json`` and ``summary.json``
  when there. A history without a ``loss`` column (older or hand-made) is drawn on top-1 instead, and its axes
  say so.
"""
from __future__ import annotations

import csv
import io
import json
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from nas.arch import Arch, CoarseFineTokenizer, PatchTokenizer, ProgressiveTokenizer
from nas.atomic import atomic_write
from nas.errors import NasError

__all__ = ["sampling_points", "token_footprints", "kept_tokens", "coarse_fine_regions", "mechanisms",
           "visualize", "visualize_search", "read_history", "ranking_column", "pareto_front", "best_so_far",
           "SearchPoint", "SearchPlot", "search_plot", "viz"]

VEIL = (0.45, 0.45, 0.5, 0.8)  # RGBA over dropped ATS tokens: visible on dark and on light images
PANEL_INCHES = 2.6  # side of one image panel
DPI = 80


# --- what the model did (tested against the models' own records) --------------------------------------------
def mechanisms(arch: Arch) -> list[str]:
    """The mechanisms of ``arch`` that have a picture: 'sampling', 'ats', 'coarse_fine'."""
    out = ["sampling"] if isinstance(arch.tokenizer, ProgressiveTokenizer) else []
    out += ["ats"] if arch.ats is not None else []
    return out + (["coarse_fine"] if isinstance(arch.tokenizer, CoarseFineTokenizer) else [])


def sampling_points(model: nn.Module) -> torch.Tensor:
    """(B, N, P, 2) sampling points (y, x) in input-image pixels of every round of the last forward; round 0 is
    the initial grid, round N-1 the final points."""
    from nas.models.progressive import image_points

    traj = getattr(getattr(model, "tokenizer", None), "last_trajectory", None)
    if traj is None:
        raise NasError("no sampling points recorded: the model has no progressive tokenizer or has not run")
    return image_points(traj.detach().float().cpu())


def _grid_side(arch: Arch) -> int:
    """Side of the tokenizer's token grid: image/patch, or the PS-ViT points per side."""
    tok = arch.tokenizer
    return tok.points if isinstance(tok, ProgressiveTokenizer) else arch.img_size // tok.patch_size


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
        from nas.search.evaluator import Evaluator
        from nas.train.rundir import load_supernet_run

        run = load_supernet_run(supernet)
        scored = run.proxy_arch(arch)
        ev = Evaluator(run.supernet, run.splits(data, val_images=images), "val", batch_size=images)
        x, y = next(iter(ev.batches()))
        source = f"supernet {Path(supernet).name}" + (" (as its proxy arch)" if scored != arch else "")
        with ev.model(scored) as model:
            yield model.eval(), scored, x[:images], y[:images], source
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
    if isinstance(arch.tokenizer, PatchTokenizer):
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
    if not mechanisms(arch):
        raise NasError(f"arch {arch.name or arch.hash()} has no mechanism to picture; pictures exist for the "
                       "progressive tokenizer, ats and the coarse_fine tokenizer")
    out, files = Path(out), []
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
                for ax, cell, k, pos in zip(axes[1:], arch.ats.blocks, kept, model.last_kept):
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


# --- search runs --------------------------------------------------------------------------------------------
def read_history(path: Path) -> list[dict[str, str]]:
    """The complete rows of a history CSV by column name; a torn or short last line is dropped."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]                                                  # torn last line of a killed writer
    reader = csv.DictReader(lines)
    rows = [r for r in reader if None not in r.values() and None not in r]
    if reader.fieldnames is None or "score" not in reader.fieldnames:
        raise NasError(f"history has no 'score' column (columns: {reader.fieldnames})", file=str(path))
    return [r for r in rows if _number(r, "score") is not None]


def _number(row: dict[str, str], *cols: str) -> float | None:
    """The first of ``cols`` that the row has as a number."""
    for c in cols:
        try:
            return float(row[c])
        except (KeyError, TypeError, ValueError):
            continue
    return None


def _feasible(row: dict[str, str]) -> bool:
    """The row's ``feasible`` flag; a history without the column counts every candidate as in budget."""
    return (row.get("feasible") or "1").strip().lower() not in ("0", "false")


def ranking_column(rows: Sequence[dict[str, str]]) -> str:
    """The column the search ranked by: ``loss`` (cross-entropy on the search split, lower is better), or, for a
    history without losses (older or hand-made files), ``score`` (top-1, higher is better)."""
    return "loss" if any(_number(r, "loss") is not None for r in rows) else "score"


def _cost(row: dict[str, str], column: str) -> float | None:
    """The row's ranking value as lower-is-better (the loss, or the negated top-1); None if not a finite number."""
    v = _number(row, column)
    return None if v is None or not math.isfinite(v) else (v if column == "loss" else -v)


def _rank(row: dict[str, str], column: str) -> tuple:
    """How the search orders in-budget rows (``nas.search.history.rank_key``, whose objective is -loss): lower
    cost, then higher top-1, fewer target MACs, the hash."""
    score, macs = _number(row, "score"), _number(row, "target_macs", "macs")
    return (_cost(row, column), -score if score is not None and math.isfinite(score) else math.inf,
            math.inf if macs is None else macs, row.get("arch_hash", ""))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the Pareto front of ``points``, ``(macs, loss)`` pairs where LOWER IS BETTER ON BOTH, by
    ascending MACs: the points that no other point dominates (fewer-or-equal MACs and lower-or-equal loss, one
    strictly). Pass a higher-is-better value (top-1) negated. Identical points are on the front together or not
    at all; a point with a non-finite coordinate never is."""
    ok = [i for i, (m, v) in enumerate(points) if math.isfinite(m) and math.isfinite(v)]
    front: list[int] = []
    low = math.inf                                  # lowest loss among the points of fewer-or-equal MACs so far
    for i in sorted(ok, key=lambda i: (points[i][0], points[i][1])):
        if points[i][1] < low or (front and tuple(points[i]) == tuple(points[front[-1]])):
            front.append(i)
            low = points[i][1]
    return front


def best_so_far(rows: Sequence[dict[str, str]], column: str = "loss") -> list[int | None]:
    """After each evaluation (history order), the index of the in-budget row that the search ranks first so far
    (None before the first): the lowest ``loss``, or with ``column='score'`` the highest top-1; ties broken as
    the search breaks them, so the last entry is the run's winner."""
    best: int | None = None
    out: list[int | None] = []
    for i, r in enumerate(rows):
        if _feasible(r) and _cost(r, column) is not None and (best is None or
                                                               _rank(r, column) < _rank(rows[best], column)):
            best = i
        out.append(best)
    return out


@dataclass(frozen=True)
class SearchPoint:
    """One evaluated candidate as the pictures place it."""
    row: int                # index in the history's complete rows
    macs: float             # the MACs the budget bounds (mean for a mean budget, else the target's worst case)
    value: float            # its value in the ranking column: the loss, or top-1 without a loss column
    score: float            # top-1 on the search split
    feasible: bool
    arch_hash: str


@dataclass(frozen=True)
class SearchPlot:
    """Everything the two search pictures draw, as data (``search_plot``)."""
    column: str                     # the ranking column: 'loss' (lower is better), or 'score' (top-1) if none
    points: list[SearchPoint]       # the candidates with MACs and a finite value, in history order
    front: list[SearchPoint]        # Pareto front of the in-budget points on (MACs, ranking), ascending MACs
    winner: SearchPoint | None      # summary.json's best, else the in-budget point the search ranks first
    from_summary: bool              # whether the winner is summary.json's
    values: list[float]             # per evaluation: its value in the ranking column (nan if none)
    scores: list[float]             # per evaluation: its top-1
    feasible: list[bool]            # per evaluation: in budget
    best_value: list[float]         # per evaluation: the ranking value of the best in budget so far (nan before)
    best_score: list[float]         # per evaluation: the top-1 of that same candidate (not the best top-1 so far)
    budget: list[float]             # the MACs bounds of run.json's budget
    on_mean: bool                   # the budget is on the mean MACs
    title: str

    @property
    def lower_is_better(self) -> bool:
        return self.column == "loss"


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def search_plot(run_dir: str | Path) -> SearchPlot:
    """The data of ``visualize_search``: a run directory's candidates, front, winner and best-so-far curves, on
    the search's ranking key (the loss; top-1 for a history without one)."""
    run = Path(run_dir)
    hist = run / "history.csv"
    if not hist.exists():
        raise NasError("not a search run directory (no history.csv); make one with `nas search`", file=str(run))
    rows = read_history(hist)
    if not rows:
        raise NasError("history.csv has no evaluated candidate yet", file=str(hist))
    info, summary = _json(run / "run.json"), _json(run / "summary.json")
    budget = info.get("budget") if isinstance(info.get("budget"), dict) else {}
    on_mean = budget.get("on") == "mean"
    macs_cols = ("macs_mean", "target_macs", "macs") if on_mean else ("target_macs", "macs")
    column = ranking_column(rows)
    points = [SearchPoint(i, m, _number(r, column), float(r["score"]), _feasible(r), r.get("arch_hash", ""))
              for i, r in enumerate(rows)
              if (m := _number(r, *macs_cols)) is not None and _cost(r, column) is not None]
    feas = [p for p in points if p.feasible]
    sign = 1.0 if column == "loss" else -1.0                              # pareto_front wants lower-is-better
    front = [feas[i] for i in pareto_front([(p.macs, sign * p.value) for p in feas])]
    best_hash = summary["best"].get("arch_hash") if isinstance(summary.get("best"), dict) else None
    winner = next((p for p in feas if p.arch_hash == best_hash), None)   # the run's own choice
    from_summary = winner is not None
    if winner is None:                                                   # else the search's ranking, recomputed
        winner = min(feas, key=lambda p: _rank(rows[p.row], column), default=None)
    best = best_so_far(rows, column)
    nan = math.nan
    return SearchPlot(
        column=column, points=points, front=front, winner=winner, from_summary=from_summary,
        values=[v if (v := _number(r, column)) is not None else nan for r in rows],
        scores=[float(r["score"]) for r in rows], feasible=[_feasible(r) for r in rows],
        best_value=[nan if b is None else float(rows[b][column]) for b in best],
        best_score=[nan if b is None else float(rows[b]["score"]) for b in best],
        budget=[float(v) for v in (budget.get("macs") or []) if v], on_mean=on_mean,
        title=", ".join(str(v) for v in (f"{run.name}: {len(rows)} evaluations", info.get("searcher"),
                                         summary.get("budget_text")) if v))


LOSS_LABEL = "search loss (cross-entropy, lower is better)"
TOP1_LABEL = "top-1 on the search split"


def _candidates(ax, plot: SearchPlot, y: str, scale: float) -> None:
    """Every candidate at (MACs, its ``y`` attribute of SearchPoint), in budget blue, outside grey; the budget."""
    for ok, color, label in ((True, "tab:blue", "in budget"), (False, "0.65", "outside budget")):
        sel = [p for p in plot.points if p.feasible == ok]
        if sel:
            ax.scatter([p.macs / scale for p in sel], [getattr(p, y) for p in sel], s=10, c=color, alpha=0.6,
                       lw=0, label=label)
    for i, v in enumerate(plot.budget):
        ax.axvline(v / scale, c="tab:red", ls="--", lw=1, label="budget" if i == 0 else None)
    ax.grid(alpha=0.3)


def _winner(ax, plot: SearchPlot, y: str, scale: float) -> None:
    w = plot.winner
    if w is not None:
        what = "winner" if plot.from_summary else "best in budget"
        detail = f"loss {w.value:.4f}, top-1 {w.score:.4f}" if plot.lower_is_better else f"top-1 {w.score:.4f}"
        ax.scatter([w.macs / scale], [getattr(w, y)], marker="*", s=200, c="gold", edgecolors="k", zorder=5,
                   label=f"{what}: {detail}")


def _legend(fig, axes) -> None:
    """One legend for the figure, below its panels (the clouds of points leave no free corner); needs the
    figure's constrained layout."""
    handles, labels = [], []
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6), fontsize=7, markerscale=1.2,
               frameon=False)


def visualize_search(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """``nas viz RUN_DIR``: the pictures of a search run on its ranking key, the loss on the search split, into
    ``out`` (default ``RUN_DIR/viz``): ``pareto.png`` (loss against MACs: candidates, the Pareto front on
    (MACs, loss), the budget, the winner; beside it top-1 against MACs for reference) and ``best_so_far.png``
    (the lowest in-budget loss after each evaluation; below it the top-1 of that candidate). A history without a
    loss column is drawn on top-1, and the axes say so."""
    plot = search_plot(run_dir)
    out = Path(run_dir) / "viz" if out is None else Path(out)
    top = max((p.macs for p in plot.points), default=0.0)
    unit, scale = next(((u, v) for u, v in (("G", 1e9), ("M", 1e6), ("K", 1e3)) if top >= v), ("", 1.0))
    xlabel = f"{'mean ' if plot.on_mean else ''}MACs" + (f" ({unit})" if unit else "")
    fallback = f"{TOP1_LABEL}\n(no loss column: ranked by top-1, higher is better)"
    evals = range(1, len(plot.values) + 1)

    from matplotlib.figure import Figure

    loss = plot.lower_is_better
    fig = Figure(figsize=(12.0 if loss else 6.4, 4.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2 if loss else 1, squeeze=False)[0]
    ax = axes[0]
    _candidates(ax, plot, "value", scale)
    if plot.front:
        ax.plot([p.macs / scale for p in plot.front], [p.value for p in plot.front], "-o", c="tab:orange", ms=3,
                lw=1.2, label=f"Pareto front on (MACs, {'loss' if loss else 'top-1'})")
    _winner(ax, plot, "value", scale)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(LOSS_LABEL if loss else fallback)
    ax.set_title("the ranking key: " + ("search loss" if loss else "top-1"), fontsize=9)
    if loss:                                    # top-1 beside it, the same candidates and winner
        ax = axes[1]
        _candidates(ax, plot, "score", scale)
        ax.scatter([p.macs / scale for p in plot.front], [p.score for p in plot.front], s=22, facecolors="none",
                   edgecolors="tab:orange", lw=1, label="on the loss front")
        _winner(ax, plot, "score", scale)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(TOP1_LABEL)
        ax.set_title("top-1 for reference (not the ranking key)", fontsize=9)
    _legend(fig, axes)
    fig.suptitle(plot.title, fontsize=9)
    files = [_save(fig, out / "pareto.png")]

    fig = Figure(figsize=(6.4, 6.6 if loss else 4.2), dpi=100, layout="constrained")
    axes = fig.subplots(2 if loss else 1, 1, sharex=True, squeeze=False)[:, 0]
    panels = [("values", "best_value", LOSS_LABEL if loss else fallback,
               "lowest search loss in budget so far (the ranking key)" if loss else "best top-1 in budget so far")]
    if loss:
        panels.append(("scores", "best_score", TOP1_LABEL,
                       "top-1 of the lowest-loss candidate so far (not the best top-1 so far)"))
    ok = plot.feasible
    for ax, (each, curve, ylabel, title) in zip(axes, panels):
        y = getattr(plot, each)
        ax.scatter([x for x, f in zip(evals, ok) if f], [v for v, f in zip(y, ok) if f], s=6, c="0.5", lw=0,
                   label="an evaluation in budget")
        if not all(ok):
            ax.scatter([x for x, f in zip(evals, ok) if not f], [v for v, f in zip(y, ok) if not f], s=8, c="0.7",
                       marker="x", lw=0.6, label="an evaluation outside budget")
        ax.plot(evals, getattr(plot, curve), drawstyle="steps-post", c="tab:blue", lw=1.5,
                label="best in budget so far" + (" (by loss)" if loss else ""))
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("evaluations")
    _legend(fig, axes[:1])
    fig.suptitle(plot.title, fontsize=9)
    files.append(_save(fig, out / "best_so_far.png"))
    return files


def viz(target: str, out: str | None = None, data: str | None = None, images: int = 4, weights: str | None = None,
        supernet: str | None = None, seed: int = 0) -> list[Path]:
    """``nas viz TARGET``: a search run directory (``visualize_search``), else an arch file or a registered arch
    name (``visualize``, default ``out`` ``viz/<arch>``)."""
    path = Path(target)
    if path.is_dir():
        if data or weights or supernet:
            raise NasError("--data, --weights and --supernet picture an arch; a search run directory takes --out "
                           "only", file=target)
        return visualize_search(path, out)
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

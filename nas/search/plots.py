"""The pictures of a search run (``nas viz RUN_DIR``, and ``nas search`` into its run directory; docs/viz.md).

On what the search ranks by (the loss on the search split, lower is better): loss against MACs of every candidate
with the Pareto front on (MACs, loss), the budget and the winner, top-1 beside it for reference
(``pareto.png``); and the lowest loss so far against the number of evaluations, with that candidate's top-1
(``best_so_far.png``). ``nas.search.report`` owns the run's summary and table; this module its pictures.

Decisions:

- The history is read by the search's own reader (``nas.search.history.read_history``: ``Candidate`` rows, a torn
  last line dropped, any other bad line a file:line error); the budget and the winner come from ``run.json`` and
  ``summary.json`` when there.
- A history whose losses are all non-finite (an evaluator that defines no loss) is drawn on top-1 instead, and
  its axes say so; a candidate whose value on the ranking key is not finite is no point.
- A point's cost (the x axis) is what the budget bounds: under a latency budget the target arch's predicted
  latency (``target_latency_ms``), else its MACs: the measured mean (``macs_mean``) for a mean budget where there
  is one, else the target arch's worst case (``target_macs``).
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from nas.atomic import atomic_write
from nas.errors import NasError
from nas.limits import check_folder
from nas.search.history import Candidate, read_history

__all__ = ["ranking_column", "pareto_front", "best_so_far", "SearchPoint", "SearchPlot", "search_plot",
           "visualize_search"]


def ranking_column(rows: Sequence[Candidate]) -> str:
    """The attribute the search ranked by: ``loss`` (cross-entropy on the search split, lower is better), or, for
    a history without a finite loss (an evaluator that defines none), ``score`` (top-1, higher is better)."""
    return "loss" if any(math.isfinite(c.loss) for c in rows) else "score"


def _cost(c: Candidate, column: str) -> float | None:
    """The candidate's ranking value as lower-is-better (the loss, or the negated top-1); None if not finite."""
    v = getattr(c, column)
    return None if not math.isfinite(v) else (v if column == "loss" else -v)


def _rank(c: Candidate, column: str) -> tuple:
    """How the search orders in-budget candidates (``nas.search.history.rank_key``, whose objective is -loss):
    lower cost, then higher top-1, fewer target MACs, the hash."""
    return (_cost(c, column), -c.score if math.isfinite(c.score) else math.inf, c.target_macs, c.arch_hash)


def _budget_cost(c: Candidate, on_mean: bool, latency: bool) -> float:
    """What the budget bounds: the predicted latency under a latency budget (nan where not predicted), else the
    MACs: the measured mean for a mean budget (where measured), else the target's."""
    if latency:
        return math.nan if c.target_latency_ms is None else c.target_latency_ms
    return c.macs_mean if on_mean and c.macs_mean is not None else c.target_macs


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


def best_so_far(rows: Sequence[Candidate], column: str = "loss") -> list[int | None]:
    """After each evaluation (history order), the index of the in-budget candidate that the search ranks first so
    far (None before the first): the lowest ``loss``, or with ``column='score'`` the highest top-1; ties broken as
    the search breaks them, so the last entry is the run's winner."""
    best: int | None = None
    out: list[int | None] = []
    for i, c in enumerate(rows):
        if c.feasible and _cost(c, column) is not None and (best is None or
                                                             _rank(c, column) < _rank(rows[best], column)):
            best = i
        out.append(best)
    return out


@dataclass(frozen=True)
class SearchPoint:
    """One evaluated candidate as the pictures place it."""
    row: int                # index in the history's candidates
    cost: float             # what the budget bounds: predicted ms under a latency budget, else MACs (mean for a
                            # mean budget, else the target's worst case)
    value: float            # its value on the ranking key: the loss, or top-1 without a finite loss
    score: float            # top-1 on the search split
    feasible: bool
    arch_hash: str


@dataclass(frozen=True)
class SearchPlot:
    """Everything the two search pictures draw, as data (``search_plot``)."""
    column: str                     # the ranking key: 'loss' (lower is better), or 'score' (top-1) if none
    points: list[SearchPoint]       # the candidates with a finite value on the ranking key, in history order
    front: list[SearchPoint]        # Pareto front of the in-budget points on (cost, ranking), ascending cost
    winner: SearchPoint | None      # summary.json's best, else the in-budget point the search ranks first
    from_summary: bool              # whether the winner is summary.json's
    values: list[float]             # per evaluation: its value on the ranking key
    scores: list[float]             # per evaluation: its top-1
    feasible: list[bool]            # per evaluation: in budget
    best_value: list[float]         # per evaluation: the ranking value of the best in budget so far (nan before)
    best_score: list[float]         # per evaluation: the top-1 of that same candidate (not the best top-1 so far)
    budget: list[float]             # the bounds of run.json's budget on the cost
    on_mean: bool                   # the budget is on the mean MACs
    title: str
    latency: bool = False           # the cost is the predicted latency (a latency budget), not MACs

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
    the search's ranking key (the loss; top-1 for a history without a finite one)."""
    run = Path(run_dir)
    hist = run / "history.csv"
    if not hist.exists():
        raise NasError("not a search run directory (no history.csv); make one with `nas search`", file=str(run))
    if not hist.is_file():
        raise NasError("history.csv is a folder, not the history file `nas search` writes; give a run directory "
                       "of `nas search` (or move that folder away)", file=str(hist))
    try:
        rows = read_history(hist)
    except OSError as e:
        raise NasError(f"cannot read history.csv: {e.strerror or e}", file=str(hist)) from None
    if not rows:
        raise NasError("history.csv has no evaluated candidate yet", file=str(hist))
    info, summary = _json(run / "run.json"), _json(run / "summary.json")
    budget = info.get("budget") if isinstance(info.get("budget"), dict) else {}
    on_mean = budget.get("on") == "mean"
    latency = bool(budget.get("latency_ms"))
    column = ranking_column(rows)
    points = [SearchPoint(i, _budget_cost(c, on_mean, latency), getattr(c, column), c.score, c.feasible, c.arch_hash)
              for i, c in enumerate(rows) if _cost(c, column) is not None]
    feas = [p for p in points if p.feasible]
    sign = 1.0 if column == "loss" else -1.0                              # pareto_front wants lower-is-better
    front = [feas[i] for i in pareto_front([(p.cost, sign * p.value) for p in feas])]
    best_hash = summary["best"].get("arch_hash") if isinstance(summary.get("best"), dict) else None
    winner = next((p for p in feas if p.arch_hash == best_hash), None)   # the run's own choice
    from_summary = winner is not None
    if winner is None:                                                   # else the search's ranking, recomputed
        winner = min(feas, key=lambda p: _rank(rows[p.row], column), default=None)
    best = best_so_far(rows, column)
    nan = math.nan
    return SearchPlot(
        column=column, points=points, front=front, winner=winner, from_summary=from_summary,
        values=[getattr(c, column) for c in rows], scores=[c.score for c in rows], feasible=[c.feasible for c in rows],
        best_value=[nan if b is None else getattr(rows[b], column) for b in best],
        best_score=[nan if b is None else rows[b].score for b in best],
        budget=[float(v) for v in (budget.get("latency_ms" if latency else "macs") or []) if v], on_mean=on_mean,
        title=", ".join(str(v) for v in (f"{run.name}: {len(rows)} evaluations", info.get("searcher"),
                                         summary.get("budget_text")) if v), latency=latency)


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.05)
    atomic_write(path, buf.getvalue())
    return path


LOSS_LABEL = "search loss (cross-entropy, lower is better)"
TOP1_LABEL = "top-1 on the search split"


def _candidates(ax, plot: SearchPlot, y: str, scale: float) -> None:
    """Every candidate at (MACs, its ``y`` attribute of SearchPoint), in budget blue, outside grey; the budget."""
    for ok, color, label in ((True, "tab:blue", "in budget"), (False, "0.65", "outside budget")):
        sel = [p for p in plot.points if p.feasible == ok]
        if sel:
            ax.scatter([p.cost / scale for p in sel], [getattr(p, y) for p in sel], s=10, c=color, alpha=0.6,
                       lw=0, label=label)
    for i, v in enumerate(plot.budget):
        ax.axvline(v / scale, c="tab:red", ls="--", lw=1, label="budget" if i == 0 else None)
    ax.grid(alpha=0.3)


def _winner(ax, plot: SearchPlot, y: str, scale: float) -> None:
    w = plot.winner
    if w is not None:
        what = "winner" if plot.from_summary else "best in budget"
        detail = f"loss {w.value:.4f}, top-1 {w.score:.4f}" if plot.lower_is_better else f"top-1 {w.score:.4f}"
        ax.scatter([w.cost / scale], [getattr(w, y)], marker="*", s=200, c="gold", edgecolors="k", zorder=5,
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
    ``out`` (default ``RUN_DIR/viz``): ``pareto.png`` (loss against what the budget bounds, MACs or the predicted
    latency: candidates, the Pareto front, the budget, the winner; beside it top-1 for reference) and
    ``best_so_far.png`` (the lowest in-budget loss after each evaluation; below it the top-1 of that candidate). A
    history without a finite loss is drawn on top-1, and the axes say so."""
    plot = search_plot(run_dir)
    out = check_folder(Path(run_dir) / "viz" if out is None else out)
    if plot.latency:
        scale, xlabel, cost_name = 1.0, "predicted latency (ms, the latency table's)", "latency"
    else:
        top = max((p.cost for p in plot.points), default=0.0)
        unit, scale = next(((u, v) for u, v in (("G", 1e9), ("M", 1e6), ("K", 1e3)) if top >= v), ("", 1.0))
        xlabel, cost_name = f"{'mean ' if plot.on_mean else ''}MACs" + (f" ({unit})" if unit else ""), "MACs"
    fallback = f"{TOP1_LABEL}\n(no loss: ranked by top-1, higher is better)"
    evals = range(1, len(plot.values) + 1)

    from matplotlib.figure import Figure

    loss = plot.lower_is_better
    fig = Figure(figsize=(12.0 if loss else 6.4, 4.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2 if loss else 1, squeeze=False)[0]
    ax = axes[0]
    _candidates(ax, plot, "value", scale)
    if plot.front:
        ax.plot([p.cost / scale for p in plot.front], [p.value for p in plot.front], "-o", c="tab:orange", ms=3,
                lw=1.2, label=f"Pareto front on ({cost_name}, {'loss' if loss else 'top-1'})")
    _winner(ax, plot, "value", scale)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(LOSS_LABEL if loss else fallback)
    ax.set_title("the ranking key: " + ("search loss" if loss else "top-1"), fontsize=9)
    if loss:                                    # top-1 beside it, the same candidates and winner
        ax = axes[1]
        _candidates(ax, plot, "score", scale)
        ax.scatter([p.cost / scale for p in plot.front], [p.score for p in plot.front], s=22, facecolors="none",
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

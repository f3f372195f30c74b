"""Exports of a search: arch files with provenance, inherited weights, the Pareto front as CSV and plot.

``best.yaml`` is always the *target* arch (the space as written: the arch to retrain and deploy), with its
provenance (space, space hash, budget, score) and a comment header giving its MACs and params at target
scale and, when the supernet was trained on a proxy, the proxy's overrides. Inherited weights belong to the
space the supernet was trained on: ``best.safetensors`` when that is the target itself, else
``best.proxy.yaml`` (the proxy arch the weights fit) and ``best.proxy.safetensors``. Weights are
``supernet.extract(arch).state_dict()``, saved with safetensors (no pickles), atomically.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from nas.arch import Arch, Provenance
from nas.atomic import TMP, atomic_write
from nas.space import arch_yaml

PARETO_COLUMNS = ("arch_hash", "score", "loss", "objective", "macs", "params", "feasible", "vector")


def save_arch_with_header(arch: Arch, path: Path, header: Sequence[str]) -> Path:
    """An arch file whose first lines are ``# `` comments (``nas.load_arch`` reads it back unchanged)."""
    atomic_write(path, "".join(f"# {line}\n" for line in header) + arch_yaml(arch))
    return path


def save_weights(state_dict: dict[str, Any], path: Path, metadata: dict[str, str]) -> Path:
    """safetensors file of ``state_dict``, written atomically (temp file + rename)."""
    from safetensors.torch import save_file

    tmp = path.with_name(f"{TMP}{path.name}.{os.getpid()}")
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def export_arch(folder: Path, stem: str, target_arch: Arch, proxy_arch: Arch | None, provenance: Provenance,
                header: Sequence[str], supernet: Any | None, proxy_provenance: Provenance | None = None) -> list[Path]:
    """``<stem>.yaml`` (target) and its inherited weights: ``<stem>.safetensors`` when ``proxy_arch`` is None
    (the supernet is the target's), else ``<stem>.proxy.yaml`` + ``<stem>.proxy.safetensors``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = [save_arch_with_header(replace(target_arch, provenance=provenance), folder / f"{stem}.yaml", header)]
    if supernet is None:
        return out
    weight_arch = target_arch if proxy_arch is None else proxy_arch
    meta = {"arch_hash": weight_arch.hash(), "format": "nas-subnet-weights/1"}
    if proxy_arch is not None:
        p = proxy_provenance or Provenance()
        out.append(save_arch_with_header(replace(proxy_arch, provenance=p), folder / f"{stem}.proxy.yaml", [
            f"proxy arch of {stem}.yaml: the supernet was trained on this space; {stem}.proxy.safetensors fits it"]))
        path = folder / f"{stem}.proxy.safetensors"
    else:
        path = folder / f"{stem}.safetensors"
    out.append(save_weights(supernet.extract(weight_arch).state_dict(), path, meta))
    return out


# --- Pareto front -------------------------------------------------------------------------------------
def pareto_front(points: Iterable[tuple[float, float]]) -> list[int]:
    """Indices of the points (macs, objective) not dominated by another (fewer-or-equal MACs and higher-or-equal
    objective, one strictly), sorted by MACs."""
    pts = list(points)
    order = sorted(range(len(pts)), key=lambda i: (pts[i][0], -pts[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if pts[i][1] > best:
            front.append(i)
            best = pts[i][1]
    return front


def write_pareto_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(PARETO_COLUMNS), lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, buf.getvalue())
    return path


def plot_pareto(all_points: Sequence[tuple[float, float, bool]], front: Sequence[tuple[float, float]],
                best: tuple[float, float] | None, budget_lines: Sequence[float], path: Path, title: str,
                xlabel: str = "MACs (G)") -> Path:
    """Score vs MACs: every candidate (feasible in blue, others grey), the front, the budget, the best (star)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for ok, color, label in ((True, "tab:blue", "candidates in budget"), (False, "0.65", "outside budget")):
        xs = [m / 1e9 for m, s, f in all_points if f == ok]
        ys = [s for m, s, f in all_points if f == ok]
        if xs:
            ax.scatter(xs, ys, s=10, c=color, label=label, alpha=0.7, linewidths=0)
    if front:
        ax.plot([m / 1e9 for m, _ in front], [s for _, s in front], "-o", c="tab:orange", ms=3, lw=1.2,
                label="Pareto front (search objective)")
    for i, b in enumerate(budget_lines):
        ax.axvline(b / 1e9, c="tab:red", ls="--", lw=1, label="budget" if i == 0 else None)
    if best is not None:
        ax.scatter([best[0] / 1e9], [best[1]], marker="*", s=180, c="gold", edgecolors="k", zorder=5, label="best")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 on the search split")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(f"{TMP}{path.name}.{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_json(obj: Any, path: Path) -> Path:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")
    return path

"""Exports of a search: arch files with provenance, inherited weights, the Pareto front as CSV and plot.

``best.yaml`` is always the *target* arch (the space as written: the arch to retrain and deploy), with its
provenance (space, space hash, budget, score) and a comment header giving its MACs and params at target
scale and, when the supernet was trained on a proxy, the proxy's overrides. Inherited weights belong to the
space the supernet was trained on: ``best.safetensors`` when that is the target itself, else
``best.proxy.yaml`` (the proxy arch the weights fit) and ``best.proxy.safetensors``. Weights are
``supernet.extract(arch).state_dict()``, saved with safetensors (no pickles), atomically. ``pareto.csv`` lists
the front; ``nas.search.plots.visualize_search`` draws it (``pareto.png``) and the best-so-far curve.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from nas.arch import Arch, Provenance
from nas.atomic import atomic_file, atomic_write, make_dirs
from nas.space import arch_yaml

PARETO_COLUMNS = ("arch_hash", "score", "loss", "objective", "macs", "params", "feasible", "vector")


def save_arch_with_header(arch: Arch, path: Path, header: Sequence[str]) -> Path:
    """An arch file whose first lines are ``# `` comments (``nas.load_arch`` reads it back unchanged)."""
    atomic_write(path, "".join(f"# {line}\n" for line in header) + arch_yaml(arch))
    return path


def save_weights(state_dict: dict[str, Any], path: Path, metadata: dict[str, str]) -> Path:
    """safetensors file of ``state_dict``, written atomically (temp file + rename)."""
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, str(tmp), metadata=metadata)
    return path


def export_arch(folder: Path, stem: str, target_arch: Arch, proxy_arch: Arch | None, provenance: Provenance,
                header: Sequence[str], supernet: Any | None, proxy_provenance: Provenance | None = None) -> list[Path]:
    """``<stem>.yaml`` (target) and its inherited weights: ``<stem>.safetensors`` when ``proxy_arch`` is None
    (the supernet is the target's), else ``<stem>.proxy.yaml`` + ``<stem>.proxy.safetensors``."""
    make_dirs(folder)
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


# --- Pareto front (computed and pictured by nas.search.plots) --------------------------------------------
def write_pareto_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    buf = io.StringIO()
    latency = ["latency_ms"] if any("latency_ms" in r for r in rows) else []  # a search with a latency table
    w = csv.DictWriter(buf, fieldnames=[*PARETO_COLUMNS[:-2], *latency, *PARETO_COLUMNS[-2:]], lineterminator="\n",
                       extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, buf.getvalue())
    return path


def write_json(obj: Any, path: Path) -> Path:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")
    return path

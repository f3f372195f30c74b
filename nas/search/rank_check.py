"""Does the supernet rank subnets as training them alone would? ``nas rank-check``.

``rank_check(supernet_run, n, out)`` takes n archs of the supernet's space spread evenly over its MACs range
(one per equal-width MACs bin, ``FlopsBinSampler.sample_bin``), trains each alone from scratch with the shared
loop (``nas.train.retrain``, one resumable run directory per arch under ``out``), scores each with inherited
supernet weights (``nas.search.evaluator.Evaluator``) on the same split the standalone model is scored on
(``val``), and reports the Kendall tau-b and Spearman rho (``scipy.stats``) between the two rankings, for top-1
and for the loss. Writes ``out/rank_check.csv``, ``out/rank_check.json`` and ``out/rank_check.png``.

Re-running resumes: a finished standalone run is read back from its ``metrics.json``, an interrupted one
continues from its last checkpoint (the run directory is ``nas.train.rundir``'s; a changed recipe is refused).

Decisions where the papers are silent:

- The archs trained alone are the archs of the trained (proxy) space, exactly the paths the supernet scores;
  the recipe's ``space_overrides`` and ``width_multiplier`` are therefore dropped for the standalone runs.
- Default recipe: the supernet's own (same optimizer, epochs, data and seed); ``--recipe`` replaces it.
- Both scores are on the ``val`` split (the split ``nas retrain`` reports), not the ``search`` split, so the
  standalone runs need no code of their own to score.
- Tied values count as in tau-b and in the average-rank Spearman rho (scipy's defaults).
"""
from __future__ import annotations

import csv
import io
import json
import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

from nas.atomic import atomic_write
from nas.errors import NasError


@dataclass(frozen=True)
class Correlation:
    """Kendall tau-b and Spearman rho between two paired score lists (NaN when undefined)."""
    tau: float
    rho: float


def correlation(a: list[float], b: list[float]) -> Correlation:
    """Kendall tau-b and Spearman rho of the paired values ``a`` and ``b`` (ties handled, scipy's defaults)."""
    from scipy.stats import kendalltau, spearmanr

    if len(a) != len(b) or len(a) < 2:
        raise NasError(f"rank correlation: expected two lists of equal length >= 2, got {len(a)} and {len(b)}")
    with warnings.catch_warnings():  # a constant list (all archs at the same top-1) gives NaN, said in the output
        warnings.simplefilter("ignore")
        return Correlation(float(kendalltau(a, b).statistic), float(spearmanr(a, b).statistic))


def spread_archs(space, n: int, seed: int) -> list:
    """n distinct archs of ``space``, one from each of n equal-width MACs bins (nearest arch for an empty bin;
    an arch already taken is replaced by a fresh draw in the same bin, up to 100 tries)."""
    from nas.train.sampler import FlopsBinSampler

    sampler = FlopsBinSampler(space, f"{seed}|rank-check", bins=n)
    archs, seen = [], set()
    for b in range(n):
        for _ in range(100):
            a = sampler.sample_bin(b)
            if a.hash() not in seen:
                break
        else:
            raise NasError(f"rank-check: could not find {n} distinct archs spread over the MACs range; lower -n")
        seen.add(a.hash())
        archs.append(a)
    return archs


FIELDS = ("index", "arch_hash", "macs", "params", "inherited_top1", "inherited_loss", "standalone_top1",
          "standalone_loss", "run_dir")


def rank_check(supernet_run: str | Path, n: int = 12, out: str | Path | None = None, recipe: str | None = None,
               seed: int = 0, progress: bool = True) -> dict:
    """Train ``n`` spread archs alone, score them with inherited weights, and return the correlations (and
    write CSV/JSON/PNG under ``out``; default ``<supernet_run>/../rank-check``)."""
    from nas.search.evaluator import Evaluator
    from nas.space import save_arch
    from nas.train.recipe import load_recipe
    from nas.train.retrain import retrain
    from nas.train.rundir import load_supernet_run

    if isinstance(n, bool) or not isinstance(n, int) or n < 3:
        raise NasError(f"-n: expected an integer >= 3 (archs to rank), got {n!r}")
    run = load_supernet_run(supernet_run)
    rc = run.recipe if recipe is None else load_recipe(recipe)
    rc = replace(rc, space_overrides={}, width_multiplier=1.0)
    out = Path(out) if out is not None else Path(supernet_run).resolve().parent / "rank-check"
    out.mkdir(parents=True, exist_ok=True)
    archs = spread_archs(run.space, n, seed)
    ev = Evaluator(run.supernet, run.splits(), "val")
    rows = []
    for i, arch in enumerate(archs):
        d = out / f"{i:02d}-{arch.hash()[:12]}"
        d.mkdir(exist_ok=True)
        arch_file = d / "arch.yaml"
        if not arch_file.exists():
            save_arch(arch, arch_file)
        metrics = d / "run" / "metrics.json"
        if metrics.exists():
            m = json.loads(metrics.read_text())
        else:
            r = retrain(arch_file, data=run.data, recipe=rc, out=d / "run", progress=progress)
            m = {"val_top1": r.val_top1, "val_loss": r.val_loss}
        e = ev(arch)
        rows.append({"index": i, "arch_hash": arch.hash(), "macs": e.macs, "params": e.params,
                     "inherited_top1": e.score, "inherited_loss": e.loss, "standalone_top1": m["val_top1"],
                     "standalone_loss": m["val_loss"], "run_dir": str(d / "run")})
    top1 = correlation([r["inherited_top1"] for r in rows], [r["standalone_top1"] for r in rows])
    loss = correlation([r["inherited_loss"] for r in rows], [r["standalone_loss"] for r in rows])
    buf = io.StringIO()
    w = csv.DictWriter(buf, FIELDS)
    w.writeheader()
    w.writerows(rows)
    atomic_write(out / "rank_check.csv", buf.getvalue())
    result = {"format": "nas-rank-check/1", "supernet_run": str(supernet_run), "n": n, "seed": seed,
              "recipe_hash": rc.hash(), "top1": vars(top1), "loss": vars(loss), "csv": str(out / "rank_check.csv"),
              "png": str(out / "rank_check.png")}
    atomic_write(out / "rank_check.json", json.dumps(result, indent=1))
    _plot(rows, top1, loss, out / "rank_check.png")
    return result


def _plot(rows: list[dict], top1: Correlation, loss: Correlation, path: Path) -> None:
    """Two scatter panels, inherited vs standalone, for top-1 and for the loss."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, c in ((axes[0], "top1", top1), (axes[1], "loss", loss)):
        x = [r[f"inherited_{key}"] for r in rows]
        y = [r[f"standalone_{key}"] for r in rows]
        sc = ax.scatter(x, y, c=[r["macs"] for r in rows], cmap="viridis")
        fmt = lambda v: "nan" if math.isnan(v) else f"{v:.2f}"  # noqa: E731
        ax.set(xlabel=f"inherited {key}", ylabel=f"standalone {key}",
               title=f"{key} (val)\nKendall tau {fmt(c.tau)}, Spearman rho {fmt(c.rho)}")
    fig.colorbar(sc, ax=axes, label="MACs per image")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


__all__ = ["rank_check", "correlation", "spread_archs", "Correlation"]

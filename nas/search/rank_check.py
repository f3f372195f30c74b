"""Does the supernet rank subnets as training them alone would? ``nas rank-check``.

``rank_check(supernet_run, n, out)`` takes n archs of the supernet's space spread evenly over its MACs range
(one per equal-width MACs bin, ``FlopsBinSampler.sample_bin``), trains each alone from scratch with the shared
loop (``nas.train.retrain``, one resumable run directory per arch under ``out``), scores each with inherited
supernet weights (``nas.search.evaluator.Evaluator``) on the same split the standalone model is scored on
(``val``), and reports the Kendall tau-b and Spearman rho (``scipy.stats``) between the two rankings, for top-1
and for the loss. Writes ``out/rank_check.csv``, ``out/rank_check.json`` and ``out/rank_check.png``.

The noise ceiling (``seeds >= 2``): each arch is trained alone ``seeds`` times, with the recipe's seed, seed + 1,
...; the rank correlation between two standalone seeds (the mean over pairs of seeds) bounds what any supernet
can reach against one standalone training: when two trainings of the same archs disagree, the task cannot
rank them either. ``vs_mean`` also compares the inherited scores with the standalone mean over seeds (a less
noisy reference).

One MACs band (``band=(lo, hi)``, MACs of the space as written, as ``nas search --flops LO:HI`` counts them):
the n archs are drawn inside it instead of across the whole range (``band_archs``), so that size alone cannot
explain the ranking; ``macs_loss`` and ``macs_top1`` report how well MACs alone (more is better) rank them,
with or without a band.

``workers`` > 1 runs that many standalone trainings at once, each in a process of its own (on one GPU, or on
the cores of a CPU). Re-running resumes: a finished standalone run is read back from its ``metrics.json``, an
interrupted one continues from its last checkpoint (the run directory is ``nas.train.rundir``'s; a changed
recipe is refused).

Decisions where the papers are silent:

- The archs trained alone are the archs of the trained (proxy) space, exactly the paths the supernet scores;
  the recipe's ``space_overrides`` and ``width_multiplier`` are therefore dropped for the standalone runs.
- Default recipe: the supernet's own (same optimizer, epochs, data and seed); ``--recipe`` replaces it.
- Both scores are on the ``val`` split (the split ``nas retrain`` reports), not the ``search`` split, so the
  standalone runs need no code of their own to score.
- Tied values count as in tau-b and in the average-rank Spearman rho (scipy's defaults).
- A further standalone seed changes everything the recipe's seed drives: the initialisation, the data order
  and, with ``data.holdout`` > 0, which training images are held out; the validation images stay the same.
  So the noise ceiling includes the choice of training images, and is if anything low.
- In a band the archs are uniform draws of the space kept when their MACs fall in it (up to ``BAND_DRAWS``),
  then n of them at evenly spaced ranks of MACs (the narrowest and widest included).
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
from nas.cost import cost
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


def noise_ceiling(per_seed: list[list[float]]) -> Correlation:
    """The mean Kendall tau-b and Spearman rho over every pair of seeds of the paired scores ``per_seed[s][i]``
    (score of arch i trained with seed s): how well one training ranks the archs like another."""
    if len(per_seed) < 2:
        raise NasError(f"noise ceiling: expected scores of at least 2 seeds, got {len(per_seed)}")
    pairs = [correlation(a, b) for i, a in enumerate(per_seed) for b in per_seed[i + 1:]]
    return Correlation(sum(c.tau for c in pairs) / len(pairs), sum(c.rho for c in pairs) / len(pairs))


BAND_DRAWS = 200_000


def band_archs(space, n: int, lo: int, hi: int, seed: int, draws: int = BAND_DRAWS) -> list:
    """n distinct archs of ``space`` whose MACs (``nas.cost``, worst case) lie in [lo, hi]: uniform draws kept
    when inside the band, then n at evenly spaced ranks of MACs among them (ends included)."""
    import random

    from nas.cost import cost
    from nas.search.budget import human

    rng = random.Random(f"{seed}|rank-check-band")
    found: dict[str, tuple[int, object]] = {}
    for _ in range(draws):
        a = space.sample(rng)
        m = cost(a).macs
        if lo <= m <= hi:
            found.setdefault(a.hash(), (m, a))
            if len(found) >= 50 * n:
                break
    if len(found) < n:
        raise NasError(f"--band {human(lo)}:{human(hi)}: {len(found)} distinct archs of {space.name!r} fall in it "
                       f"in {draws} uniform draws, {n} needed; widen the band or lower -n")
    ranked = sorted(found.values(), key=lambda t: (t[0], t[1].hash()))
    return [ranked[round(i * (len(ranked) - 1) / (n - 1))][1] for i in range(n)]


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
"""CSV columns; with ``seeds`` >= 2 also ``standalone_{top1,loss}_s<k>`` per further seed k and ``..._mean``, and
with a band ``target_macs`` (the MACs the band bounds)."""


def rank_check(supernet_run: str | Path, n: int = 12, out: str | Path | None = None, recipe: str | None = None,
               seed: int = 0, progress: bool = True, seeds: int = 1, band: str | None = None,
               workers: int = 1) -> dict:
    """Train ``n`` archs alone (``seeds`` times each), score them with inherited weights, and return the
    correlations (and write CSV/JSON/PNG under ``out``; default ``<supernet_run>/../rank-check``). ``band``
    ("LO:HI", MACs of the space as written) draws the archs inside one MACs band. ``workers`` > 1 runs that many
    standalone trainings at once, each in a process of its own (on one GPU, or on a CPU's cores)."""
    from nas.search.evaluator import Evaluator
    from nas.space import save_arch
    from nas.train.recipe import load_recipe
    from nas.train.retrain import retrain
    from nas.train.rundir import load_supernet_run

    if isinstance(n, bool) or not isinstance(n, int) or n < 3:
        raise NasError(f"-n: expected an integer >= 3 (archs to rank), got {n!r}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise NasError(f"--seeds: expected an integer >= 1 (standalone trainings per arch), got {seeds!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise NasError(f"--workers: expected an integer >= 1 (trainings at once), got {workers!r}")
    lo_hi = None
    if band is not None:
        from nas.search.budget import parse_range
        lo_hi = parse_range(band, "--band")
    run = load_supernet_run(supernet_run)
    rc = run.recipe if recipe is None else load_recipe(recipe)
    rc = replace(rc, space_overrides={}, width_multiplier=1.0)
    out = Path(out) if out is not None else Path(supernet_run).resolve().parent / "rank-check"
    if lo_hi is not None:
        drawn = band_archs(run.target_space(), n, *lo_hi, seed)  # in the space as written, where budgets are
        archs, target_macs = [run.proxy_arch(a) for a in drawn], [cost(a).macs for a in drawn]
    else:
        archs = spread_archs(run.space, n, seed)
    out.mkdir(parents=True, exist_ok=True)
    jobs = []  # (arch file, recipe, run directory) of every standalone training; seed 0 in run/, seed k in run-s<k>/
    for i, arch in enumerate(archs):
        d = out / f"{i:02d}-{arch.hash()[:12]}"
        d.mkdir(exist_ok=True)
        if not (d / "arch.yaml").exists():
            save_arch(arch, d / "arch.yaml")
        jobs += [(d / "arch.yaml", replace(rc, seed=rc.seed + k), d / ("run" if k == 0 else f"run-s{k}"))
                 for k in range(seeds)]
    pending = [j for j in jobs if not (j[2] / "metrics.json").exists()]
    if workers > 1 and len(pending) > 1:
        _train_in_parallel(pending, run.data, workers)
    ev = Evaluator(run.supernet, run.splits(), "val")
    rows = []
    for i, arch in enumerate(archs):
        e = ev(arch)
        mine = jobs[i * seeds:(i + 1) * seeds]
        row = {"index": i, "arch_hash": arch.hash(), "macs": e.macs, "params": e.params,
               "inherited_top1": e.score, "inherited_loss": e.loss, "run_dir": str(mine[0][2])}
        for k, (arch_file, rck, run_dir) in enumerate(mine):
            m = _standalone(arch_file, run.data, rck, run_dir, progress, retrain)
            suffix = "" if k == 0 else f"_s{k}"
            row[f"standalone_top1{suffix}"], row[f"standalone_loss{suffix}"] = m["val_top1"], m["val_loss"]
        if seeds > 1:
            for key in ("top1", "loss"):
                row[f"standalone_{key}_mean"] = sum(row[f"standalone_{key}{'' if k == 0 else f'_s{k}'}"]
                                                    for k in range(seeds)) / seeds
        if lo_hi is not None:
            row["target_macs"] = target_macs[i]
        rows.append(row)
    result = {"format": "nas-rank-check/2", "supernet_run": str(supernet_run), "n": n, "seed": seed, "seeds": seeds,
              "band": None if lo_hi is None else list(lo_hi), "recipe_hash": rc.hash(), **statistics(rows, seeds),
              "csv": str(out / "rank_check.csv"), "png": str(out / "rank_check.png")}
    fields = [*FIELDS, *(f"standalone_{key}_{s}" for s in [*(f"s{k}" for k in range(1, seeds)),
                                                          *(["mean"] if seeds > 1 else [])] for key in ("top1", "loss")),
              *(["target_macs"] if lo_hi is not None else [])]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fields)
    w.writeheader()
    w.writerows(rows)
    atomic_write(out / "rank_check.csv", buf.getvalue())
    atomic_write(out / "rank_check.json", json.dumps(result, indent=1))
    _plot(rows, result, out / "rank_check.png")
    return result


def _train_one(arch_file: Path, data: str, rc, run_dir: Path, threads: int) -> None:
    """One standalone training in a worker process (``rank_check(workers=...)``)."""
    import torch

    from nas.train.retrain import retrain

    torch.set_num_threads(threads)
    retrain(arch_file, data=data, recipe=rc, out=run_dir, progress=False)


def _train_in_parallel(jobs: list, data: str, workers: int) -> None:
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        for f in [pool.submit(_train_one, a, data, rc, d, threads) for a, rc, d in jobs]:
            f.result()


def _standalone(arch_file: Path, data: str, rc, run_dir: Path, progress: bool, retrain) -> dict:
    """The val top-1 and loss of ``arch_file`` trained alone into ``run_dir`` (read back when finished)."""
    metrics = run_dir / "metrics.json"
    if metrics.exists():
        return json.loads(metrics.read_text())
    r = retrain(arch_file, data=data, recipe=rc, out=run_dir, progress=progress)
    return {"val_top1": r.val_top1, "val_loss": r.val_loss}


def statistics(rows: list[dict], seeds: int = 1) -> dict:
    """The correlations of a rank check from its rows (see ``FIELDS``): ``top1``/``loss`` inherited vs the first
    standalone seed; ``macs`` MACs alone (more is better) vs the standalone loss and top-1; with ``seeds`` >= 2,
    ``noise_{top1,loss}`` (``noise_ceiling`` over the seeds) and ``vs_mean_{top1,loss}`` (inherited vs the
    standalone mean over seeds). Each value is ``{"tau": ..., "rho": ...}``."""
    col = lambda key: [float(r[key]) for r in rows]  # noqa: E731
    out = {key: vars(correlation(col(f"inherited_{key}"), col(f"standalone_{key}"))) for key in ("top1", "loss")}
    macs = col("target_macs") if rows and "target_macs" in rows[0] else col("macs")
    out["macs_loss"] = vars(correlation([-m for m in macs], col("standalone_loss")))
    out["macs_top1"] = vars(correlation(macs, col("standalone_top1")))
    if seeds > 1:
        for key in ("top1", "loss"):
            per_seed = [col(f"standalone_{key}{'' if k == 0 else f'_s{k}'}") for k in range(seeds)]
            out[f"noise_{key}"] = vars(noise_ceiling(per_seed))
            out[f"vs_mean_{key}"] = vars(correlation(col(f"inherited_{key}"), col(f"standalone_{key}_mean")))
    return out


def _plot(rows: list[dict], result: dict, path: Path) -> None:
    """Scatter panels, inherited vs standalone, for top-1 and for the loss; with several seeds a third one, the
    loss of standalone seed 0 vs seed 1 (the noise ceiling)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fmt = lambda v: "nan" if math.isnan(v) else f"{v:.2f}"  # noqa: E731
    noise = result.get("noise_loss")
    fig, axes = plt.subplots(1, 3 if noise else 2, figsize=(16 if noise else 11, 4.8), layout="constrained")
    band = result.get("band")
    fig.suptitle(f"{result['n']} subnets " + (f"in the MACs band {band[0] / 1e9:.3g}G-{band[1] / 1e9:.3g}G (target)"
                                             if band else "spread over the MACs range")
                 + (f", each trained alone with {result['seeds']} seeds" if result["seeds"] > 1 else ""), fontsize=10)
    # (x column, y column, x label, y label, title, correlation)
    panels = [(f"inherited_{k}", f"standalone_{k}", f"inherited {k}", f"standalone {k}",
               f"{k} (val): inherited vs standalone", result[k]) for k in ("top1", "loss")]
    if noise:
        pairs = ", mean over seed pairs" if result["seeds"] > 2 else ""
        panels.append(("standalone_loss", "standalone_loss_s1", "standalone loss, seed 0", "standalone loss, seed 1",
                       f"loss (val): two standalone seeds (noise ceiling{pairs})", noise))
    macs_key = "target_macs" if band else "macs"
    for ax, (xk, yk, xl, yl, title, c) in zip(axes, panels):
        sc = ax.scatter([r[xk] for r in rows], [r[yk] for r in rows], c=[r[macs_key] for r in rows], cmap="viridis")
        ax.set(xlabel=xl, ylabel=yl, title=f"{title}\nKendall tau {fmt(c['tau'])}, Spearman rho {fmt(c['rho'])}")
        ax.title.set_fontsize(9)
    fig.colorbar(sc, ax=axes, label=("target " if band else "") + "MACs per image")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


__all__ = ["rank_check", "correlation", "noise_ceiling", "statistics", "spread_archs", "band_archs", "Correlation"]

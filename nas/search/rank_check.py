"""Does the supernet rank subnets as training them alone would? ``nas rank-check``.

``rank_check(supernet_run, n, out)`` takes n archs of the supernet's space spread evenly over its MACs range
(one per equal-width MACs bin, ``FlopsBinSampler.sample_bin``), trains each alone from scratch with the shared
loop (``nas.train.retrain``, one resumable run directory per arch under ``out``), scores each with inherited
supernet weights (``nas.supernet.scoring.Evaluator``) on the same split the standalone model is scored on
(``val``), and reports the Kendall tau-b and Spearman rho (``scipy.stats``) between the two rankings, for top-1
and for the loss. Writes ``out/rank_check.csv``, ``out/rank_check.json`` and ``out/rank_check.png``.

Several seeds (``seeds``, default 3): each arch is trained alone ``seeds`` times, with the recipe's seed, seed + 1,
...; ``reliability`` is the ICC(1) of those trainings (``nas.stats.icc1``, with its CI and F-test): whether
standalone training gives the archs reproducible scores at all. When it does not (p >= 0.01), no ranking of
them can be measured against standalone training, and the result says so in ``verdict``. The reference every
ranking is compared with is the mean over the seeds; a predictor that knew each arch's true quality would
correlate with that mean at about ``sqrt(icc_mean)`` (``bound``, Pearson scale: the classical attenuation
bound). The baselines every ranking is read against: MACs alone and params alone (more is better), on the same
archs. Each tau and rho comes with a bootstrap CI over the archs and a permutation p (``nas.stats``).

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
- The reliability is measured on the loss and on top-1; the verdict follows the loss, the key ``nas search``
  ranks by. With one seed the reliability is unknown and the output says so.
- A further standalone seed changes everything the recipe's seed drives: the initialisation, the data order
  and, with ``data.holdout`` > 0, which training images are held out; the validation images stay the same.
  So the seed-to-seed spread includes the choice of training images.
- In a band the archs are uniform draws of the space kept when their MACs fall in it (up to ``BAND_DRAWS``),
  then n of them at evenly spaced ranks of MACs (the narrowest and widest included).
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import replace
from pathlib import Path

from nas.atomic import atomic_write, make_dirs
from nas.cost import cost
from nas.errors import NasError
from nas.limits import MAX_RANK_ARCHS, MAX_RANK_SEEDS, MAX_SEED, check_folder
from nas.stats import icc1, rank_correlation


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
with a band ``target_macs`` and ``target_params`` (the target arch's, the MACs the band bounds)."""


def _check_int(flag: str, value: object, lo: int, hi: int, what: str) -> None:
    """Refuse ``value`` unless it is an integer in [lo, hi] (the CLI's argparse types say the same)."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise NasError(f"{flag}: expected an integer in [{lo}, {hi:,}] ({what}), got {value!r}")


def check_band(space, lo: int, hi: int) -> None:
    """Refuse a ``--band`` outside the exact MACs range of ``space`` (the space as written, ``cost_bounds``), as
    ``nas search --flops`` does, before any arch is drawn."""
    from nas.search.budget import human

    bounds = space.cost_bounds()
    if lo > bounds["max_macs"] or hi < bounds["min_macs"]:
        raise NasError(f"--band {human(lo)}:{human(hi)} is outside the reachable MACs range of {space.name!r}, "
                       f"{human(bounds['min_macs'])} .. {human(bounds['max_macs'])} (worst case per image); choose a "
                       f"band in that range")


def rank_check(supernet_run: str | Path, n: int = 12, out: str | Path | None = None, recipe: str | None = None,
               seed: int = 0, progress: bool = True, seeds: int = 3, band: str | None = None,
               workers: int = 1) -> dict:
    """Train ``n`` archs alone (``seeds`` times each), score them with inherited weights, and return the
    correlations (and write CSV/JSON/PNG under ``out``; default ``<supernet_run>/../rank-check``). ``band``
    ("LO:HI", MACs of the space as written) draws the archs inside one MACs band. ``workers`` > 1 runs that many
    standalone trainings at once, each in a process of its own (on one GPU, or on a CPU's cores)."""
    from nas.space import save_arch
    from nas.supernet.run import load_supernet_run
    from nas.train.recipe import load_recipe
    from nas.train.retrain import retrain

    import os

    _check_int("-n", n, 3, MAX_RANK_ARCHS, "archs to rank")
    _check_int("--seeds", seeds, 1, MAX_RANK_SEEDS, "standalone trainings per arch")
    _check_int("--workers", workers, 1, os.cpu_count() or 1, "trainings at once, at most the CPUs of this machine")
    _check_int("--seed", seed, 0, MAX_SEED, "seed of the arch sampling")
    lo_hi = None
    if band is not None:
        from nas.search.budget import parse_range
        lo_hi = parse_range(band, "--band")
    out = check_folder(out if out is not None else Path(supernet_run).resolve().parent / "rank-check")
    run = load_supernet_run(supernet_run)
    rc = run.recipe if recipe is None else load_recipe(recipe)
    rc = replace(rc, space_overrides={}, width_multiplier=1.0)
    if lo_hi is not None:
        check_band(run.target_space(), *lo_hi)
        drawn = band_archs(run.target_space(), n, *lo_hi, seed)  # in the space as written, where budgets are
        archs, target = [run.proxy_arch(a) for a in drawn], [cost(a) for a in drawn]
    else:
        archs = spread_archs(run.space, n, seed)
    make_dirs(out)  # the inputs are valid and the first training starts now: a failed start wrote nothing
    jobs = []  # (arch file, recipe, run directory) of every standalone training; seed 0 in run/, seed k in run-s<k>/
    for i, arch in enumerate(archs):
        d = out / f"{i:02d}-{arch.hash()[:12]}"
        make_dirs(d)
        if not (d / "arch.yaml").exists():
            save_arch(arch, d / "arch.yaml")
        jobs += [(d / "arch.yaml", replace(rc, seed=rc.seed + k), d / ("run" if k == 0 else f"run-s{k}"))
                 for k in range(seeds)]
    pending = [j for j in jobs if not (j[2] / "metrics.json").exists()]
    if workers > 1 and len(pending) > 1:
        _train_in_parallel(pending, run.data, workers)
    ev = run.evaluator("val")
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
            row["target_macs"], row["target_params"] = target[i].macs, target[i].params
        rows.append(row)
    result = {"format": "nas-rank-check/3", "supernet_run": str(supernet_run), "n": n, "seed": seed, "seeds": seeds,
              "band": None if lo_hi is None else list(lo_hi), "recipe_hash": rc.hash(), **statistics(rows, seeds),
              "csv": str(out / "rank_check.csv"), "png": str(out / "rank_check.png")}
    fields = [*FIELDS, *(f"standalone_{key}_{s}" for s in [*(f"s{k}" for k in range(1, seeds)),
                                                          *(["mean"] if seeds > 1 else [])] for key in ("top1", "loss")),
              *(["target_macs", "target_params"] if lo_hi is not None else [])]
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
    """The figures of a rank check from its rows (see ``FIELDS``), for ``key`` in top1 and loss:

    - ``reliability[key]`` (``seeds`` >= 2): ICC(1) of the standalone seeds (``nas.stats.ICC.to_json``), and
      ``bound[key]``, sqrt of the reliability of the seed mean;
    - ``inherited[key]``: inherited score vs the reference (the standalone mean over seeds, or seed 0 alone),
      Kendall tau-b and Spearman rho with CIs and p (``nas.stats.RankCorrelation.to_json``);
    - ``macs[key]``, ``params[key]``: size alone (more is better) vs the same reference;
    - ``reference`` says what the reference is; ``verdict`` is one line on whether the archs can be ranked."""
    col = lambda key: [float(r[key]) for r in rows]  # noqa: E731
    band = bool(rows) and "target_macs" in rows[0]
    size = {"macs": col("target_macs" if band else "macs"), "params": col("target_params" if band else "params")}
    ref = {key: col(f"standalone_{key}_mean" if seeds > 1 else f"standalone_{key}") for key in ("top1", "loss")}
    sign = {"top1": 1.0, "loss": -1.0}  # more MACs or params predicts a higher top-1 and a lower loss
    out: dict = {"reference": f"standalone mean of {seeds} seeds" if seeds > 1 else "standalone seed 0 (one seed)",
                 "inherited": {}, "macs": {}, "params": {}}
    for key in ("top1", "loss"):
        out["inherited"][key] = rank_correlation(col(f"inherited_{key}"), ref[key]).to_json()
        for what in ("macs", "params"):
            out[what][key] = rank_correlation([sign[key] * v for v in size[what]], ref[key]).to_json()
    if seeds > 1:
        out["reliability"], out["bound"] = {}, {}
        for key in ("top1", "loss"):
            per_arch = [[float(r[f"standalone_{key}{'' if k == 0 else f'_s{k}'}"]) for k in range(seeds)]
                        for r in rows]
            icc = icc1(per_arch)
            out["reliability"][key] = icc.to_json()
            out["bound"][key] = math.sqrt(icc.icc_mean) if icc.icc_mean > 0 else 0.0
    out["verdict"] = verdict(out, seeds)
    return out


def verdict(stats: dict, seeds: int) -> str:
    """One line: can standalone training rank these archs (by the loss), and does the supernet beat size alone?"""
    if seeds < 2:
        return ("one standalone seed: its reliability is unknown, so no tau below can be told from training noise; "
                "use --seeds 3")
    r = stats["reliability"]["loss"]
    icc = f"ICC(1) of the standalone loss {_f(r['icc'])} [{_f(r['icc_ci'][0])}, {_f(r['icc_ci'][1])}], p {_g(r['p'])}"
    if r["p"] is None or r["p"] >= 0.01:
        return (f"standalone training cannot rank these archs: {icc}; the seeds of one arch disagree about as much "
                f"as different archs do, so every tau below is within noise")
    inh, best_size = stats["inherited"]["loss"]["tau"], max(
        (stats[w]["loss"]["tau"]["value"] for w in ("macs", "params") if stats[w]["loss"]["tau"]["value"] is not None),
        default=None)
    low = inh["ci"][0]
    if low is not None and best_size is not None and low > best_size:
        cmp = f"the supernet ranks them better than size alone (tau CI low {low:.2f} > {best_size:.2f})"
    else:
        cmp = (f"the supernet's loss tau {_f(inh['value'])} [{_f(inh['ci'][0])}, {_f(inh['ci'][1])}] is not "
               f"above size alone ({_f(best_size)}) beyond noise")
    return f"standalone training ranks these archs ({icc}); {cmp}"


def _f(v: float | None) -> str:
    return "nan" if v is None else f"{v:.2f}"


def _g(v: float | None) -> str:
    return "nan" if v is None else (f"{v:.2g}" if v >= 1e-3 else f"{v:.1e}")


def report(result: dict) -> str:
    """The lines ``nas rank-check`` prints: the reliability first, then every tau with its CI and baselines."""
    def corr(c: dict) -> str:
        t, r = c["tau"], c["rho"]
        return (f"tau {_f(t['value'])} [{_f(t['ci'][0])}, {_f(t['ci'][1])}] p {_g(t['p'])}   "
                f"rho {_f(r['value'])} [{_f(r['ci'][0])}, {_f(r['ci'][1])}]")
    band = result.get("band")
    from nas.search.budget import human
    lines = [f"rank check: {result['n']} archs " + (f"in the band {human(band[0])}-{human(band[1])} (target MACs)"
                                                    if band else "spread over the MACs range")
             + f", each trained alone with {result['seeds']} seed(s); 95% CIs over the archs (bootstrap)",
             f"  {result['verdict']}"]
    for key in ("loss", "top1"):
        lines.append(f"  {key} (val), against the {result['reference']}:")
        if "reliability" in result:
            r = result["reliability"][key]
            lines.append(f"    reliability  ICC(1) {_f(r['icc'])} [{_f(r['icc_ci'][0])}, {_f(r['icc_ci'][1])}], "
                         f"F({r['df1']}, {r['df2']}) {_f(r['f'])}, p {_g(r['p'])}; seed sd {r['sd_within']:.3g}, "
                         f"sd of arch means {r['sd_between']:.3g}; a perfect predictor would reach r ~ "
                         f"{result['bound'][key]:.2f}")
        for what, label in (("inherited", "supernet   "), ("macs", "MACs alone "), ("params", "params alone")):
            lines.append(f"    {label} {corr(result[what][key])}")
    return "\n".join(lines)


def _plot(rows: list[dict], result: dict, path: Path) -> None:
    """Panels: inherited vs standalone loss and top-1 (the reference: the seed mean), and, with several seeds,
    every standalone seed's loss per arch (the reliability)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = result["seeds"]
    fig, axes = plt.subplots(1, 3 if seeds > 1 else 2, figsize=(16 if seeds > 1 else 11, 4.8), layout="constrained")
    band = result.get("band")
    from nas.search.budget import human
    fig.suptitle(f"{result['n']} subnets " + (f"in the MACs band {human(band[0])}-{human(band[1])} (target)"
                                             if band else "spread over the MACs range")
                 + (f", each trained alone with {seeds} seeds" if seeds > 1 else ""), fontsize=10)
    macs_key = "target_macs" if band else "macs"
    ref = "_mean" if seeds > 1 else ""
    for ax, key in zip(axes, ("loss", "top1")):
        c = result["inherited"][key]["tau"]
        m = result["macs"][key]["tau"]
        sc = ax.scatter([float(r[f"inherited_{key}"]) for r in rows], [float(r[f"standalone_{key}{ref}"]) for r in rows],
                        c=[float(r[macs_key]) for r in rows], cmap="viridis")
        ax.set(xlabel=f"inherited {key}", ylabel=f"standalone {key}" + (f" (mean of {seeds} seeds)" if seeds > 1 else ""),
               title=f"{key} (val): supernet tau {_f(c['value'])} [{_f(c['ci'][0])}, {_f(c['ci'][1])}]\n"
                     f"MACs alone tau {_f(m['value'])} [{_f(m['ci'][0])}, {_f(m['ci'][1])}]")
        ax.title.set_fontsize(9)
    if seeds > 1:
        ax = axes[2]
        order = sorted(range(len(rows)), key=lambda i: float(rows[i]["standalone_loss_mean"]))
        for x, i in enumerate(order):
            vals = [float(rows[i][f"standalone_loss{'' if k == 0 else f'_s{k}'}"]) for k in range(seeds)]
            ax.scatter([x] * seeds, vals, s=14, c="tab:blue", alpha=0.7, lw=0)
            ax.plot([x - 0.3, x + 0.3], [sum(vals) / seeds] * 2, c="k", lw=1.5)
        r = result["reliability"]["loss"]
        ax.set(xlabel="arch (by mean standalone loss)", ylabel="standalone loss, each seed (bar: mean)",
               title=f"reliability of standalone training: ICC(1) {_f(r['icc'])} [{_f(r['icc_ci'][0])}, "
                     f"{_f(r['icc_ci'][1])}], p {_g(r['p'])}")
        ax.title.set_fontsize(9)
    fig.colorbar(sc, ax=axes[:2], label=("target " if band else "") + "MACs per image")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


__all__ = ["rank_check", "statistics", "verdict", "report", "spread_archs", "band_archs"]

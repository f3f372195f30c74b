"""Search vs random search after retraining: do the searchers' winners train alone better than random search's?

On ONE setting (a space, its data, one trained supernet, one MACs budget), each searcher (``--searchers``:
evolution, Optuna TPE and random search) runs the real ``nas search`` job (``nas.search.runner.search``)
``--seeds`` times with ``--max-evals`` evaluations each, its random baseline thread switched off (a search
recipe with ``baseline: false``, written into OUT). The winner of every run (``<run>/best.yaml``, the target
arch) is then trained alone from scratch ``--retrain-seeds`` times with the standalone recipe
(``nas.train.retrain.retrain``, seeds ``seed``, ``seed + 1``, ... of ``--retrain-recipe``, as
``nas rank-check`` trains its archs), and scored on the ``val`` split. What is measured is what a user of
``nas search`` gets: the retrained quality of the arch the search hands over, not its supernet score.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/search_vs_random.py --supernet runs/fmnist-sn \\
        --space spaces/psvit_fmnist.yaml --data fashion-mnist --flops 2.6M:3M --seeds 5 --max-evals 100 \\
        --retrain-recipe recipes/fmnist_standalone.yaml --retrain-seeds 2 --out runs/search-vs-random

The statistics (``nas.stats``):

- Per run (searcher, seed): the winner's retrained val top-1 and val loss are the means over its retrain seeds.
- Per searcher other than random: the difference of means over the seeds, searcher minus random search
  (``nas.stats.difference``, statistic "mean": percentile bootstrap CI, each group resampled on its own, and a
  two-sided permutation p), for top-1 and for the loss. A positive top-1 difference and a negative loss
  difference favour the searcher.
- Regret (loss): a run's winner's mean retrained loss minus the best mean retrained loss of ANY winner of ANY
  searcher in this benchmark (the best subnet found at all); the mean over a searcher's seeds.
- Verdict: "the search works" when the CI of evolution's or TPE's top-1 difference lies above 0 or the CI of
  its loss difference below 0; "random search is better" when neither holds and one of those CIs lies on the
  other side (random's winners retrain better); otherwise "within noise"; "not measured" without random search
  or without two seeds on both sides.

Writes ``--json`` (one setting; overwritten atomically), ``OUT/search_vs_random.md`` (the table) and prints the
table. OUT holds ``search/<searcher>-s<seed>/`` (one ``nas search`` run directory each),
``retrain/<arch hash>/arch.yaml`` with ``run-s<k>/`` (one ``nas retrain`` run directory per retrain seed),
``search_<searcher>.yaml`` (the search recipes) and ``setting.json``. Everything resumes: a finished search
(its ``summary.json``) and a finished training (its ``metrics.json``) are read back, an interrupted one
continues from its own checkpoints; another setting in the same OUT is refused.

Decisions where the papers are silent:

- The winners of every searcher, random search's included, are retrained with the same standalone recipe
  (``--retrain-recipe``, its ``space_overrides`` applied as ``nas retrain`` applies them), never with the
  supernet's: the question is which arch trains best alone, under one training protocol for all.
- A winner is the arch ``nas search`` exports as ``best.yaml``: the lowest search loss among the candidates
  inside the budget, ties as ``nas search`` breaks them (``nas.search.history.rank_key``).
- Distinct winners are distinct target archs (``Arch.hash``: the architecture without name or provenance).
  Two runs (of one searcher or of two) that find the same arch share its trainings, and each run counts it once
  in its own searcher's statistics; a searcher's seeds are never merged.
- Retrain seeds are the recipe's ``seed + k`` for k < ``--retrain-seeds``: the same seeds for every arch, so
  arch differences are not confounded with seed luck of one side only.
- The best subnet of the regret is the lowest mean retrained loss over all winners; ties leave the regret 0 for
  each tied winner. The loss is the key ``nas search`` ranks by, so regret is on the loss.
- Evolution keeps the SPOS/AutoFormer settings of ``nas search`` (population 50, ...) with ``--max-evals``
  capping the evaluations (at 100: the initial population and one generation of children); TPE is
  ``nas search --searcher optuna``'s defaults.
- The searches' own random baseline (``baseline: true`` in the shipped search recipes) is off: random search
  runs as a searcher of its own with the same seeds, so its winners are retrained like the others'.
- ``--data`` must be the data the supernet was trained on (refused otherwise): the winners were chosen on it.
- The verdict looks at four intervals (evolution and TPE, top-1 and loss; any one beyond noise suffices)
  without a correction for multiple comparisons; each interval and its p are printed, so a reader can apply
  one (Bonferroni over the four: p < 0.0125).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.atomic import atomic_write  # noqa: E402
from nas.errors import NasError, exit_with  # noqa: E402

FORMAT = "nas-search-vs-random/1"
SETTING_FORMAT = "nas-search-vs-random-setting/1"
SEARCHERS = ("evolution", "optuna", "nsga2", "random")
JUDGED = ("evolution", "optuna")     # the searchers the verdict is about
REFERENCE = "random"
NAMES = {"evolution": "evolution", "optuna": "TPE (optuna)", "nsga2": "NSGA-II", "random": "random"}


# --- the pure aggregation ---------------------------------------------------------------------------------------
def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _finite(xs: Sequence[float]) -> bool:
    return all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def difference_json(a: Sequence[float], b: Sequence[float], seed: int = 0) -> dict | None:
    """``nas.stats.difference`` of the means (a minus b) as JSON, or None when it cannot be measured (fewer than
    two values on a side, or a value that is not finite, e.g. a diverged training)."""
    from nas.stats import difference

    if len(a) < 2 or len(b) < 2 or not _finite(a) or not _finite(b):
        return None
    return difference(a, b, statistic="mean", seed=seed).to_json()


def aggregate(winners: dict[str, list[dict]]) -> dict:
    """The statistics of the module docstring from the winners of every run.

    ``winners[searcher]``: one dict per seed with at least ``seed``, ``arch_hash``, ``retrained_top1`` and
    ``retrained_loss`` (one value per retrain seed). Returns ``{"searchers": {name: {...}}, "best": {...},
    "verdict": str, "verdict_detail": str}``; each winner gets ``mean_top1``, ``mean_loss`` and ``regret_loss``.
    """
    out: dict[str, dict] = {}
    for name, ws in winners.items():
        rows = []
        for w in sorted(ws, key=lambda w: w["seed"]):
            w = dict(w)
            w["mean_top1"], w["mean_loss"] = _mean(w["retrained_top1"]), _mean(w["retrained_loss"])
            rows.append(w)
        out[name] = {"seeds": [w["seed"] for w in rows], "winners": rows,
                     "distinct_winners": len({w["arch_hash"] for w in rows}),
                     "mean_top1": _mean([w["mean_top1"] for w in rows]),
                     "mean_loss": _mean([w["mean_loss"] for w in rows])}
    every = [w for s in out.values() for w in s["winners"] if math.isfinite(w["mean_loss"])]
    best_loss = min((w["mean_loss"] for w in every), default=math.nan)
    best_hash = sorted({w["arch_hash"] for w in every if w["mean_loss"] == best_loss})
    for s in out.values():
        for w in s["winners"]:
            w["regret_loss"] = w["mean_loss"] - best_loss
        s["regret_loss"] = _mean([w["regret_loss"] for w in s["winners"]])
    ref = out.get(REFERENCE)
    for name, s in out.items():
        if name == REFERENCE or ref is None:
            s["difference"] = None
            continue
        s["difference"] = {key: difference_json([w[f"mean_{key}"] for w in s["winners"]],
                                                [w[f"mean_{key}"] for w in ref["winners"]])
                           for key in ("top1", "loss")}
    v, detail = verdict(out)
    return {"searchers": out,
            "best": {"mean_loss": best_loss, "arch_hash": best_hash,
                     "found_by": [f"{n}-s{w['seed']}" for n, s in out.items() for w in s["winners"]
                                  if w["arch_hash"] in best_hash]},
            "verdict": v, "verdict_detail": detail}


def _side(d: dict | None) -> int:
    """+1 when the difference is beyond noise above 0, -1 below, 0 within noise (``nas.stats``: the CI covers 0
    or the permutation p is not below 0.05; with 3 seeds a side p cannot go below 0.1) or missing."""
    if d is None or d["ci"][0] is None or d["ci"][1] is None or d.get("within_noise", False):
        return 0
    return 1 if d["ci"][0] > 0 else -1 if d["ci"][1] < 0 else 0


def verdict(searchers: dict[str, dict]) -> tuple[str, str]:
    """("the search works" | "random search is better" | "within noise" | "not measured", one line why), from
    the ``difference`` of evolution and TPE (see the module docstring)."""
    judged = [(n, searchers[n]["difference"]) for n in JUDGED if n in searchers
              and searchers[n].get("difference") is not None
              and any(d is not None for d in searchers[n]["difference"].values())]
    if not judged:
        return "not measured", ("needs random search and evolution or optuna, each with at least 2 seeds and "
                                "finite retrained scores")
    better, worse = [], []
    for n, d in judged:
        for key, good in (("top1", 1), ("loss", -1)):
            side = _side(d[key])
            if side == good:
                better.append(f"{NAMES[n]} {key} {_diff_text(d[key], key)}")
            elif side == -good:
                worse.append(f"{NAMES[n]} {key} {_diff_text(d[key], key)}")
    if better:
        return "the search works", "beyond noise in favour of the search: " + "; ".join(better)
    if worse:
        return "random search is better", "beyond noise in favour of random search: " + "; ".join(worse)
    return "within noise", ("every difference of " + " and ".join(NAMES[n] for n, _ in judged) + " minus random "
                            "is within noise (its 95% CI covers 0, or its permutation p is not below 0.05)")


# --- formatting ----------------------------------------------------------------------------------------------------
def _diff_text(d: dict | None, key: str) -> str:
    """``+1.20 [+0.30, +2.10] points, p 0.02`` (top-1 in points) or ``-0.0123 [...], p ...`` (loss)."""
    if d is None:
        return "-"
    scale, digits, unit = (100, 2, " pt") if key == "top1" else (1, 4, "")
    lo, hi = d["ci"]
    ci = "[nan]" if lo is None else f"[{lo * scale:+.{digits}f}, {hi * scale:+.{digits}f}]"
    p = "nan" if d["p"] is None else f"{d['p']:.2g}"
    return f"{d['difference'] * scale:+.{digits}f} {ci}{unit}, p {p}"


def _num(v: float | None, scale: float = 1.0, digits: int = 4) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v * scale:.{digits}f}"


def table_rows(result: dict) -> list[list[str]]:
    rows = [["searcher", "seeds", "distinct winners", "retrained top-1 %", "retrained loss",
             "top-1 - random (95% CI)", "loss - random (95% CI)", "regret (loss)"]]
    for name, s in result["searchers"].items():
        d = s["difference"] or {}
        rows.append([NAMES.get(name, name), str(len(s["seeds"])), str(s["distinct_winners"]),
                     _num(s["mean_top1"], 100, 2), _num(s["mean_loss"]),
                     "reference" if name == REFERENCE else _diff_text(d.get("top1"), "top1"),
                     "reference" if name == REFERENCE else _diff_text(d.get("loss"), "loss"),
                     _num(s["regret_loss"])])
    return rows


def table(result: dict) -> str:
    rows = table_rows(result)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:],
                      f"verdict: {result['verdict']} ({result['verdict_detail']})"])


def markdown(result: dict) -> str:
    st = result["setting"]
    rows = table_rows(result)
    md = ["# Search vs random search after retraining", "",
          f"Space `{st['space']}`, data `{st['data']}`, supernet `{st['supernet']}`, MACs `{st['flops']}`, "
          f"{st['max_evals']} evaluations per search; winners retrained with `{st['retrain_recipe']}`, "
          f"{st['retrain_seeds']} seed(s) each, scored on the val split. Differences are searcher minus random "
          "search over seeds (difference of means, bootstrap 95% CI, permutation p); regret is a winner's mean "
          "retrained loss minus the best of any winner "
          f"({_num(result['best']['mean_loss'])}).", "",
          "| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|",
          *("| " + " | ".join(r) + " |" for r in rows[1:]), "",
          f"**Verdict: {result['verdict']}.** {result['verdict_detail']}.", "", "Winners:", "",
          "| searcher | seed | arch | target MACs | search loss | retrained top-1 % | retrained loss | regret |",
          "|---|---|---|---|---|---|---|---|"]
    for name, s in result["searchers"].items():
        for w in s["winners"]:
            md.append(f"| {NAMES.get(name, name)} | {w['seed']} | `{w['arch_hash']}` | {w['target_macs']:,} | "
                      f"{w['search_loss']:.4f} | {' / '.join(_num(t, 100, 2) for t in w['retrained_top1'])} | "
                      f"{' / '.join(_num(x) for x in w['retrained_loss'])} | {_num(w['regret_loss'])} |")
    md += ["", f"Command: `{result['command']}`", ""]
    return "\n".join(md)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


# --- the runs --------------------------------------------------------------------------------------------------------
def check_setting(path: Path, setting: dict) -> None:
    """Record the setting in OUT/setting.json, or refuse another one there (read-back runs would mix settings)."""
    if path.exists():
        old = json.loads(path.read_text())
        changed = [k for k in setting if old.get(k) != setting[k]]
        if changed:
            what = ", ".join(f"{k}: {old.get(k)!r}, now {setting[k]!r}" for k in changed)
            raise NasError(f"{path.parent} holds runs of another setting ({what}); use another --out", file=str(path))
        return
    atomic_write(path, json.dumps(setting, indent=1) + "\n")


def search_recipe_file(out: Path, searcher: str) -> Path:
    """OUT/search_<searcher>.yaml: the searcher's ``nas search`` defaults without the random baseline thread."""
    path = out / f"search_{searcher}.yaml"
    text = (f"# written by benchmarks/search_vs_random.py: `nas search --searcher {searcher}` defaults, no random "
            f"baseline thread\nname: search_{searcher}\nsearcher: {searcher}\n"
            + ("" if searcher == "random" else "baseline: false\n"))
    if not path.exists() or path.read_text() != text:
        atomic_write(path, text)
    return path


def run_search(args: argparse.Namespace, out: Path, searcher: str, seed: int) -> dict:
    """One ``nas search`` run (or its read-back): the winner's search numbers."""
    run = out / "search" / f"{searcher}-s{seed}"
    summary_file = run / "summary.json"
    reused = summary_file.exists()
    t0 = time.perf_counter()
    if not reused:
        from nas.search.runner import search
        search(args.space, flops=args.flops, searcher=searcher, max_evals=args.max_evals,
               supernet=args.supernet, search_recipe=search_recipe_file(out, searcher), out=run, seed=seed,
               progress=False)
    s = json.loads(summary_file.read_text())
    if s["searcher"] != searcher:
        raise NasError(f"summary.json is of searcher {s['searcher']!r}, expected {searcher!r}", file=str(summary_file))
    b = s["best"]
    return {"seed": seed, "arch_hash": b["arch_hash"], "target_macs": b["target_macs"],
            "target_params": b["target_params"], "search_loss": b["loss"], "search_top1": b["score"],
            "inherited_val_top1": s.get("val_score"), "candidates": s["candidates"], "run": str(run),
            "reused": reused, "seconds": time.perf_counter() - t0}


def arch_file_of(out: Path, w: dict) -> Path:
    """OUT/retrain/<hash>/arch.yaml, copied from the first run that found the arch."""
    from nas.space import load_arch, save_arch

    d = out / "retrain" / w["arch_hash"]
    f = d / "arch.yaml"
    if not f.exists():
        arch = load_arch(Path(w["run"]) / "best.yaml")
        if arch.hash() != w["arch_hash"]:
            raise NasError(f"best.yaml has arch hash {arch.hash()}, summary.json {w['arch_hash']}",
                           file=str(Path(w["run"]) / "best.yaml"))
        d.mkdir(parents=True, exist_ok=True)
        save_arch(arch, f)
    return f


def train_all(jobs: list[tuple[str, int, Path, Any, Path]], data: str, workers: int) -> dict[tuple[str, int], dict]:
    """Every (arch hash, k, arch file, recipe, run dir) trained alone (or read back): {(hash, k): metrics}."""
    from nas.search.rank_check import _standalone, _train_one
    from nas.train.retrain import retrain

    t0 = time.perf_counter()
    done: dict[tuple[str, int], dict] = {}
    total = len(jobs)

    def report(h: str, k: int, m: dict, how: str) -> None:
        done[(h, k)] = m
        print(f"[train {len(done)}/{total}] {h} retrain seed {k}: val top-1 {m['val_top1']:.4f} loss "
              f"{m['val_loss']:.4f} ({how}; {time.perf_counter() - t0:.0f} s total)", flush=True)

    pending = []
    for h, k, f, rc, d in jobs:
        if (d / "metrics.json").exists():
            report(h, k, json.loads((d / "metrics.json").read_text()), "read back")
        else:
            pending.append((h, k, f, rc, d))
    if workers > 1 and len(pending) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(min(workers, len(pending)), mp_context=mp.get_context("spawn")) as pool:
            futs = {pool.submit(_train_one, f, data, rc, d, threads): (h, k, d) for h, k, f, rc, d in pending}
            for fut in as_completed(futs):
                fut.result()
                h, k, d = futs[fut]
                report(h, k, json.loads((d / "metrics.json").read_text()), "trained")
    else:
        for h, k, f, rc, d in pending:
            t = time.perf_counter()
            m = _standalone(f, data, rc, d, False, retrain)
            report(h, k, m, f"trained in {time.perf_counter() - t:.0f} s")
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="spaces/psvit_fmnist.yaml", help="the target space [spaces/psvit_fmnist.yaml]")
    p.add_argument("--data", default="fashion-mnist", help="the supernet's data, the retraining's [fashion-mnist]")
    p.add_argument("--supernet", required=True, help="a trained supernet run (`nas train-supernet --out`)")
    p.add_argument("--flops", default="2.6M:3M", help="the MACs budget, as `nas search --flops` takes it [2.6M:3M]")
    p.add_argument("--searchers", default="evolution,optuna,random",
                   help=f"comma-separated, from {','.join(SEARCHERS)} [evolution,optuna,random]")
    p.add_argument("--seeds", type=int, default=5, help="search runs per searcher, seeds 0..N-1 [5]")
    p.add_argument("--max-evals", type=int, default=100, help="evaluations per search run [100]")
    p.add_argument("--retrain-recipe", default="recipes/fmnist_standalone.yaml",
                   help="the standalone training recipe [recipes/fmnist_standalone.yaml]")
    p.add_argument("--retrain-seeds", type=int, default=2, help="trainings per distinct winner [2]")
    p.add_argument("--workers", type=int, default=1, help="trainings at once, a process each [1]")
    p.add_argument("--out", default="runs/search-vs-random", help="run directories [runs/search-vs-random]")
    p.add_argument("--json", default="docs/evidence/search_vs_random.json",
                   help="the result (overwritten) [docs/evidence/search_vs_random.json]")
    args = p.parse_args(argv)
    searchers = list(dict.fromkeys(s.strip() for s in args.searchers.split(",") if s.strip()))
    bad = [s for s in searchers if s not in SEARCHERS]
    if bad or not searchers:
        p.error(f"--searchers: expected a comma-separated subset of {','.join(SEARCHERS)}, got {args.searchers!r}")
    for flag in ("seeds", "max_evals", "retrain_seeds", "workers"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    command = "OMP_NUM_THREADS=1 .venv/bin/python " + shlex.join(["benchmarks/search_vs_random.py",
                                                                  *(sys.argv[1:] if argv is None else argv)])

    # cheap checks first: the supernet's data, the space, the budget, the retrain recipe
    from nas.search.budget import Budget
    from nas.space import load_space
    from nas.train.recipe import load_recipe

    sup_json = Path(args.supernet) / "run.json"
    if not sup_json.exists():
        raise NasError("--supernet: not a supernet run (no run.json); train one with `nas train-supernet`",
                       file=args.supernet)
    sup_data = json.loads(sup_json.read_text())["data"]["spec"]
    if sup_data != args.data:
        raise NasError(f"--data {args.data!r}: the supernet was trained on {sup_data!r}, and its winners are chosen "
                       f"on that data; retrain on the same (--data {sup_data})", file=str(sup_json))
    space = load_space(args.space)
    budget = Budget.resolve(args.flops, None, space.budget)
    rc = load_recipe(args.retrain_recipe)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    check_setting(out / "setting.json", {
        "format": SETTING_FORMAT, "space_hash": space.hash, "data": args.data,
        "supernet": str(Path(args.supernet).resolve()), "macs": list(budget.macs), "max_evals": args.max_evals,
        "retrain_recipe_hash": rc.hash()})
    t0 = time.perf_counter()

    # the searches, by seed (partial results stay balanced across searchers)
    jobs = [(s, seed) for seed in range(args.seeds) for s in searchers]
    winners: dict[str, list[dict]] = {s: [] for s in searchers}
    for i, (s, seed) in enumerate(jobs, 1):
        w = run_search(args, out, s, seed)
        winners[s].append(w)
        print(f"[search {i}/{len(jobs)}] {s} seed {seed}: winner {w['arch_hash']} target MACs {w['target_macs']:,} "
              f"search loss {w['search_loss']:.4f} top-1 {w['search_top1']:.4f} ({w['candidates']} candidates; "
              + ("read back" if w["reused"] else f"searched in {w['seconds']:.0f} s")
              + f"; {time.perf_counter() - t0:.0f} s total)", flush=True)

    # every distinct winner trained alone --retrain-seeds times (shared by the runs that found it)
    files = {}
    for s in searchers:
        for w in winners[s]:
            if w["arch_hash"] not in files:
                files[w["arch_hash"]] = arch_file_of(out, w)
    print(f"{len(files)} distinct winners of {len(jobs)} runs, {args.retrain_seeds} training(s) each", flush=True)
    train_jobs = [(h, k, f, replace(rc, seed=rc.seed + k), f.parent / f"run-s{k}")
                  for h, f in files.items() for k in range(args.retrain_seeds)]
    metrics = train_all(train_jobs, args.data, args.workers)
    for ws in winners.values():
        for w in ws:
            w["retrained_top1"] = [metrics[(w["arch_hash"], k)]["val_top1"] for k in range(args.retrain_seeds)]
            w["retrained_loss"] = [metrics[(w["arch_hash"], k)]["val_loss"] for k in range(args.retrain_seeds)]
            for key in ("reused", "seconds"):
                w.pop(key)

    agg = aggregate(winners)
    result = {"format": FORMAT,
              "setting": {"space": args.space, "space_hash": space.hash, "data": args.data,
                          "supernet": args.supernet, "flops": args.flops, "budget": budget.to_dict(),
                          "max_evals": args.max_evals, "retrain_recipe": args.retrain_recipe,
                          "retrain_recipe_hash": rc.hash(), "retrain_seeds": args.retrain_seeds},
              **agg, "command": command}
    result = _json_safe(result)
    atomic_write(args.json, json.dumps(result, indent=1) + "\n")
    atomic_write(out / "search_vs_random.md", markdown(result))
    print(table(result))
    print(f"wrote {args.json}, {out / 'search_vs_random.md'} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    exit_with(main)

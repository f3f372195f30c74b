"""Search efficiency: evolution vs Optuna TPE vs random search at equal numbers of evaluations.

Each searcher runs ``--seeds`` times on ONE trained supernet and ONE budget (``--flops``, 1.3G as in the main
job), each run evaluating ``--max-evals`` distinct archs; the key is the one ``nas search`` ranks by,
``Evaluation.objective`` (the negated cross-entropy on the search split), and the top-1 of the best-by-loss
candidate is reported beside it. Printed side by side: how many evaluations each searcher needs to reach random
search's final median best (per seed, then the median over seeds, as a fraction of ``--max-evals``), the final
best loss (median and spread over seeds), and the winners' top-1 on the search and validation splits. Plotted:
best-so-far loss and top-1 against evaluations, median line and interquartile band over seeds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/search_efficiency.py --seeds 5 --max-evals 1000 \\
        --supernet runs/psvit_tiny-search-1.3G-evolution-s0/supernet --out runs/search-efficiency

The searchers are the real ones (``nas.search.evolution``, ``nas.search.optuna_search``,
``nas.search.random_search``) behind the real ``Objective`` (budget checked on the target arch, target -> proxy
mapping); only the evaluator is wrapped: ``nas.search.evaluator.Evaluator`` behind a shared on-disk cache
(SQLite, WAL) keyed by split and proxy arch hash. Scores are deterministic for a fixed supernet and split, so an
arch that several searchers or seeds propose is evaluated once, worker processes share the file, and an
interrupted benchmark resumes (a run without its ``result.json`` is replayed from its seed: every evaluation
it had made comes back from the cache, and evolution, random search and TPE take the same decisions again).

Decisions where the papers are silent:

- "Evaluations" are distinct archs evaluated by one run (a searcher's own repeats are free, as in
  ``nas search``); archs outside the budget are rejected from their analytic cost and never counted.
- Evolution keeps the SPOS/AutoFormer settings (population 50, top 10, 25 mutations + 25 crossovers) with as
  many generations as ``--max-evals`` needs (20 for 1,000); Optuna is TPE as ``nas search --searcher optuna``
  runs it (multivariate, 10 start-up trials, the budget as a constraint).
- Target for "reached": random search's median (over seeds) best objective after all ``--max-evals``; a seed
  that never reaches it counts as needing more than ``--max-evals`` (shown as ``>N``).
- The cache is tied to the supernet's weights (sha256), the split's images and the device kind (CPU and CUDA
  kernels differ in the last bits); another supernet in the same ``--out`` is refused.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import shutil
import sqlite3
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.atomic import atomic_write  # noqa: E402
from nas.errors import NasError  # noqa: E402

SEARCHERS = ("evolution", "optuna", "random")
RESULT_FORMAT = "nas-search-efficiency-run/1"


# --- the shared evaluation cache -------------------------------------------------------------------------
class EvalCache:
    """``(split, proxy arch hash) -> Evaluation`` in one SQLite file, safe for several processes (WAL; a row is
    inserted once and read back, so every process sees the first value written)."""

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.db = sqlite3.connect(str(path), timeout=120, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self.db.execute("CREATE TABLE IF NOT EXISTS evals (split TEXT, arch_hash TEXT, score REAL, loss REAL, "
                        "macs INTEGER, macs_mean INTEGER, params INTEGER, seconds REAL, "
                        "PRIMARY KEY (split, arch_hash))")
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('fingerprint', ?)", (fingerprint,))
        (stored,) = self.db.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
        if stored != fingerprint:
            raise NasError(f"{path}: the cache holds evaluations of another supernet, split or device ({stored}, "
                           f"now {fingerprint}); use another --out")

    def get(self, split: str, arch_hash: str):
        from nas.search.evaluator import Evaluation

        row = self.db.execute("SELECT score, loss, macs, macs_mean, params, seconds FROM evals WHERE split = ? AND "
                              "arch_hash = ?", (split, arch_hash)).fetchone()
        return None if row is None else Evaluation(arch_hash, *row)

    def put(self, split: str, e):
        self.db.execute("INSERT OR IGNORE INTO evals VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (split, e.arch_hash, e.score, e.loss, e.macs, e.macs_mean, e.params, e.seconds))
        return self.get(split, e.arch_hash)

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM evals").fetchone()[0]


class CachedEvaluator:
    """``Arch -> Evaluation`` of ``evaluator`` through ``cache``; ``new`` counts the archs evaluated here."""

    def __init__(self, evaluator, cache: EvalCache, split: str) -> None:
        self.evaluator, self.cache, self.split, self.new = evaluator, cache, split, 0

    def __call__(self, arch):
        h = arch.hash()
        e = self.cache.get(self.split, h)
        if e is None:
            e = self.cache.put(self.split, self.evaluator(arch))
            self.new += 1
        return e


def fingerprint(supernet_dir: Path, device: str) -> str:
    """What the cached scores depend on: the supernet's tensors (names and values, not the file's bytes, which a
    finished run's re-export may reorder), the search split's images and the device kind."""
    import torch
    from safetensors import safe_open

    h = hashlib.sha256()
    with safe_open(str(supernet_dir / "supernet.safetensors"), "pt") as f:
        for k in sorted(f.keys()):
            h.update(k.encode())
            h.update(f.get_tensor(k).contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    info = json.loads((supernet_dir / "run.json").read_text())
    return f"weights {h.hexdigest()[:16]} search {info['data']['sha256']['search'][:16]} device {device}"



def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise NasError("--device cuda: no CUDA device is visible")
    return device


# --- one run: one searcher, one seed ----------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(supernet_dir: str, space_file: str, device: str, threads: int, cache_file: str, fp: str,
                 batch_size: int) -> None:
    """Load the supernet and the evaluators once per worker process."""
    import torch

    from nas.search.evaluator import Evaluator
    from nas.search.proxy import ProxyMap
    from nas.space import load_space
    from nas.train.rundir import load_supernet_run

    if device == "cpu":
        torch.set_num_threads(threads)
    run = load_supernet_run(supernet_dir)
    splits = run.splits()
    cache = EvalCache(Path(cache_file), fp)
    _WORKER.update(
        pm=ProxyMap(load_space(space_file), run.space), cache=cache,
        search=CachedEvaluator(Evaluator(run.supernet, splits, "search", batch_size=batch_size, device=device),
                               cache, "search"),
        val=CachedEvaluator(Evaluator(run.supernet, splits, "val", batch_size=batch_size, device=device),
                            cache, "val"))


def run_one(searcher: str, seed: int, max_evals: int, flops: str, out: str) -> dict:
    """One search into ``out/runs/<searcher>-s<seed>/`` (replayed from scratch unless its result.json exists);
    returns its result: the candidates in evaluation order and the winner's val top-1."""
    from nas.search.budget import Budget
    from nas.search.history import History, best
    from nas.search.objective import Objective
    from nas.search.recipe import load_search_recipe

    d = Path(out) / "runs" / f"{searcher}-s{seed}"
    done = d / "result.json"
    if done.exists():
        r = json.loads(done.read_text())
        if r.get("max_evals") == max_evals and r.get("flops") == flops:
            return {**r, "reused": True}
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    t0 = time.perf_counter()
    pm, ev = _WORKER["pm"], _WORKER["search"]
    new_before = ev.new
    bud = Budget.resolve(flops, None, pm.target.budget, "worst")
    srec = load_search_recipe(None, searcher).with_max_evals(max_evals)
    if searcher == "evolution":  # the SPOS settings, as many generations as the evaluations need
        srec = replace(srec, evolution=replace(srec.evolution, generations=math.ceil(
            max_evals / srec.evolution.population)))
    history = History(d / "history.csv")
    obj = Objective(pm, bud, ev, history, max_evals, progress=False)
    try:
        if searcher == "evolution":
            from nas.search.evolution import evolution
            evolution(obj, srec.evolution, srec.max_tries, seed)
            cands = list(obj.requested)
        elif searcher == "random":
            from nas.search.random_search import random_search
            random_search(obj, srec.max_tries, seed)
            cands = list(obj.requested)
        else:
            from nas.search.optuna_search import optuna_search
            cands = optuna_search(obj, srec, seed, f"sqlite:///{(d / 'study.db').resolve()}",
                                  f"search-efficiency-{searcher}-s{seed}")
    finally:
        obj.close()
        history.close()
    cands = cands[:max_evals]
    w = best(cands)
    val = _WORKER["val"](pm.to_proxy(pm.target.decode(w.vector)))
    r = {"format": RESULT_FORMAT, "searcher": searcher, "seed": seed, "max_evals": max_evals, "flops": flops,
         "evals": [[c.arch_hash, c.objective, c.score, c.loss, c.target_macs, int(c.feasible)] for c in cands],
         "winner": {"arch_hash": w.arch_hash, "objective": w.objective, "search_top1": w.score, "loss": w.loss,
                    "target_macs": w.target_macs, "val_top1": val.score, "val_loss": val.loss},
         "evaluated_here": ev.new - new_before, "seconds": time.perf_counter() - t0}
    atomic_write(done, json.dumps(r))
    return r


# --- statistics ---------------------------------------------------------------------------------------------
def best_so_far(evals: list[list], n: int) -> tuple[list[float], list[float]]:
    """Best objective (feasible only) after 1..n evaluations, and the search top-1 of that best candidate
    (carried to n when a run stopped early)."""
    obj, top1, b, t = [], [], -math.inf, math.nan
    for i in range(n):
        if i < len(evals):
            _, o, s, _, _, feasible = evals[i]
            if feasible and o > b:
                b, t = o, s
        obj.append(b)
        top1.append(t)
    return obj, top1


def evals_to_reach(curve: list[float], target: float) -> int | None:
    """1-based number of evaluations after which ``curve`` (best so far) is >= ``target``; None if never."""
    for i, v in enumerate(curve):
        if v >= target:
            return i + 1
    return None


def quantile(xs: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of a non-empty list."""
    s = sorted(xs)
    pos = (len(s) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    if s[hi] == s[lo] or pos == lo:  # also keeps inf (a seed that never reached) out of the arithmetic
        return s[lo]
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def median_evals(needed: list[int | None], n: int) -> float:
    """Median over seeds with "never" counted as more than n (inf); inf when at least half never reached."""
    return quantile([math.inf if x is None else x for x in needed], 0.5) if needed else math.inf


def summarise(results: list[dict], n: int) -> dict:
    curves = {s: {r["seed"]: best_so_far(r["evals"], n) for r in results if r["searcher"] == s} for s in SEARCHERS}
    curves = {s: c for s, c in curves.items() if c}
    ref = "random" if "random" in curves else next(iter(curves))
    target = statistics.median(c[0][-1] for c in curves[ref].values())
    out = {"n": n, "reference": ref, "target_objective": target, "searchers": {}}
    for s, by_seed in curves.items():
        seeds = sorted(by_seed)
        finals = [by_seed[k][0][-1] for k in seeds]
        needed = [evals_to_reach(by_seed[k][0], target) for k in seeds]
        med_curve = [statistics.median(by_seed[k][0][i] for k in seeds) for i in range(n)]
        wins = {r["seed"]: r["winner"] for r in results if r["searcher"] == s}
        out["searchers"][s] = {
            "seeds": seeds, "final_objective": finals, "needed": needed,
            "median_needed": median_evals(needed, n), "median_curve_needed": evals_to_reach(med_curve, target),
            "final_loss_median": -statistics.median(finals), "final_loss_q25": -quantile(finals, 0.75),
            "final_loss_q75": -quantile(finals, 0.25),
            "search_top1_median": statistics.median(wins[k]["search_top1"] for k in seeds),
            "val_top1_median": statistics.median(wins[k]["val_top1"] for k in seeds),
            "val_top1": [wins[k]["val_top1"] for k in seeds],
            "val_loss_median": statistics.median(wins[k]["val_loss"] for k in seeds),
            "winner_macs_median": statistics.median(wins[k]["target_macs"] for k in seeds)}
    return out


def table(summary: dict) -> str:
    n, ref = summary["n"], summary["reference"]
    fmt = lambda v: f">{n}" if v is None or math.isinf(v) else f"{v:.0f}"  # noqa: E731
    lines = [f"target: {ref}'s median best after {n} evaluations, search loss {-summary['target_objective']:.5f}",
             f"{'searcher':<10} {'seeds':>5} {'evals to target (median)':>25} {'/ N':>6} {'per seed':<28} "
             f"{'final loss med [q25,q75]':>26} {'winner top-1 search/val (med)':>30}"]
    for s, r in summary["searchers"].items():
        m = r["median_needed"]
        ratio = "-" if math.isinf(m) else f"{m / n:.2f}"
        lines.append(f"{s:<10} {len(r['seeds']):>5} {fmt(m):>25} {ratio:>6} "
                     f"{' '.join(fmt(x) for x in r['needed']):<28} "
                     f"{r['final_loss_median']:.5f} [{r['final_loss_q25']:.5f},{r['final_loss_q75']:.5f}] "
                     f"{r['search_top1_median']:>15.4f} / {r['val_top1_median']:.4f}")
    return "\n".join(lines)


def write_curves(results: list[dict], n: int, path: Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["searcher", "seed", "evals", "arch_hash", "loss", "top1", "best_loss", "best_top1"])
    for r in sorted(results, key=lambda r: (r["searcher"], r["seed"])):
        obj, top1 = best_so_far(r["evals"], n)
        for i, e in enumerate(r["evals"][:n]):
            w.writerow([r["searcher"], r["seed"], i + 1, e[0], repr(e[3]), repr(e[2]), repr(-obj[i]), repr(top1[i])])
    atomic_write(path, buf.getvalue())


def plot(results: list[dict], summary: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = summary["n"]
    colors = {"evolution": "tab:green", "optuna": "tab:blue", "random": "tab:gray"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    xs = list(range(1, n + 1))
    for s in summary["searchers"]:
        runs = [best_so_far(r["evals"], n) for r in results if r["searcher"] == s]
        for ax, k, sign in ((axes[0], 0, -1), (axes[1], 1, 1)):
            cols = [[sign * c[k][i] for c in runs] for i in range(n)]
            ok = [i for i in range(n) if all(math.isfinite(v) for v in cols[i])]
            med = [statistics.median(cols[i]) for i in ok]
            ax.plot([xs[i] for i in ok], med, color=colors[s], label=f"{s} (median of {len(runs)})")
            ax.fill_between([xs[i] for i in ok], [quantile(cols[i], 0.25) for i in ok],
                            [quantile(cols[i], 0.75) for i in ok], color=colors[s], alpha=0.2, linewidth=0)
    axes[0].axhline(-summary["target_objective"], color="k", linestyle=":", linewidth=1,
                    label=f"{summary['reference']}'s final median")
    for s, r in summary["searchers"].items():
        if r["median_curve_needed"] is not None:
            axes[0].axvline(r["median_curve_needed"], color=colors[s], linestyle="--", linewidth=0.8)
    axes[0].set(xscale="log", xlabel="evaluations", ylabel="best search loss so far (lower is better)",
                title="best loss (what the searchers minimise)")
    axes[1].set(xscale="log", xlabel="evaluations", ylabel="search top-1 of the best-by-loss arch",
                title="top-1 of the best-by-loss arch")
    lo = min(-summary["target_objective"], *(r["final_loss_q25"] for r in summary["searchers"].values()))
    axes[0].set_ylim(lo - 0.01, lo + 0.08)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def markdown(summary: dict, args: argparse.Namespace, machine: str, seconds: float, cache_rows: int) -> str:
    n = summary["n"]
    fmt = lambda v: f">{n}" if v is None or math.isinf(v) else f"{v:.0f}"  # noqa: E731
    rows = ["| searcher | seeds | evals to reach random's final median best (median over seeds) | fraction of N "
            "| per seed | final best search loss, median [q25, q75] | winner top-1 search / val (median) |",
            "|---|---:|---:|---:|---|---|---|"]
    for s, r in summary["searchers"].items():
        m = r["median_needed"]
        rows.append(f"| {s} | {len(r['seeds'])} | {fmt(m)} | {'-' if math.isinf(m) else f'{m / n:.2f}'} | "
                    f"{', '.join(fmt(x) for x in r['needed'])} | {r['final_loss_median']:.4f} "
                    f"[{r['final_loss_q25']:.4f}, {r['final_loss_q75']:.4f}] | "
                    f"{r['search_top1_median']:.4f} / {r['val_top1_median']:.4f} |")
    seeds = ", ".join(f"{s} x {len(r['seeds'])}" for s, r in summary["searchers"].items())
    return (f"Measured on {machine}; N = {n} evaluations per run, budget {args.flops}, seeds: {seeds}"
            f"{'' if summary.get('complete') else ' (INCOMPLETE: the runs finished so far)'}; {cache_rows} distinct "
            f"evaluations in the cache, {seconds:.0f} s.\n\n"
            + "\n".join(rows) + "\n")


def machine_line(device: str) -> str:
    import platform

    import torch
    if device == "cuda":
        what = torch.cuda.get_device_name(0)
    else:
        what = platform.processor() or platform.machine()
    return f"{what} ({device}, {os.cpu_count()} CPUs, torch {torch.__version__})"


# --- main ---------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--supernet", help="a trained supernet run (default: train the CPU recipe's into OUT/supernet)")
    p.add_argument("--space", default="spaces/psvit_tiny.yaml", help="the target space (budget checked there)")
    p.add_argument("--flops", default="1.3G", help="the budget on target MACs [1.3G]")
    p.add_argument("--seeds", type=int, default=5, help="seeds per searcher [5]")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--max-evals", type=int, default=1000, help="evaluations per run [1000]")
    p.add_argument("--searchers", default=",".join(SEARCHERS), help="comma-separated subset of " + ",".join(SEARCHERS))
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--workers", type=int, default=1, help="processes running searches side by side [1]")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker on CPU [1]")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", default="runs/search-efficiency")
    p.add_argument("--png", help="where to write the plot [OUT/search_efficiency.png]")
    args = p.parse_args(argv)
    args.searchers = [s.strip() for s in args.searchers.split(",") if s.strip()]
    bad = [s for s in args.searchers if s not in SEARCHERS]
    if bad or args.seeds < 1 or args.max_evals < 1 or args.workers < 1:
        p.error(f"--searchers from {SEARCHERS}, --seeds/--max-evals/--workers >= 1 (got {bad or ''})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sup = Path(args.supernet) if args.supernet else out / "supernet"
    if not (sup / "supernet.safetensors").exists():
        if args.supernet:
            raise NasError("--supernet: not a finished supernet run (no supernet.safetensors)", file=str(sup))
        from nas.train import train_supernet
        print(f"training the supernet into {sup} (the default recipe for the built-in data)", flush=True)
        train_supernet(args.space, data="builtin", out=sup, progress=False)
    device = pick_device(args.device)
    fp = fingerprint(sup, device)
    cache_file = out / "eval_cache.sqlite"
    EvalCache(cache_file, fp).db.close()  # refuse a mismatched cache before anything runs
    jobs = [(s, args.first_seed + k) for s in args.searchers for k in range(args.seeds)]
    jobs.sort(key=lambda j: (j[1], j[0] != "optuna"))  # by seed (partial results stay balanced), TPE first
    init = (str(sup), args.space, device, args.threads, str(cache_file), fp, args.batch_size)
    results: list[dict] = []
    png = Path(args.png) if args.png else out / "search_efficiency.png"
    print(f"{len(jobs)} runs of {args.max_evals} evaluations on {device}, {args.workers} worker(s)", flush=True)

    def done(r: dict) -> None:  # the summary so far is written after every run: a killed benchmark leaves it
        results.append(r)
        _progress(r, len(results), len(jobs), t0)
        report(results, args, out, png, cache_file, fp, device, str(sup), t0, final=len(results) == len(jobs))

    if args.workers == 1:
        _init_worker(*init)
        for s, seed in jobs:
            done(run_one(s, seed, args.max_evals, args.flops, str(out)))
    else:
        import multiprocessing as mp
        with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                 initargs=init) as pool:
            futs = [pool.submit(run_one, s, seed, args.max_evals, args.flops, str(out)) for s, seed in jobs]
            for f in as_completed(futs):
                done(f.result())
    return 0


def report(results: list[dict], args: argparse.Namespace, out: Path, png: Path, cache_file: Path, fp: str,
           device: str, sup: str, t0: float, final: bool) -> None:
    """Summary, table, curves, markdown and plot of the runs finished so far."""
    if not any(r["searcher"] == "random" for r in results) and "random" in args.searchers:
        return  # the reference is not there yet
    n = args.max_evals
    summary = summarise(results, n)
    seconds = time.perf_counter() - t0
    cache_rows = len(EvalCache(cache_file, fp))
    machine = machine_line(device)
    seeds = {s: len(r["seeds"]) for s, r in summary["searchers"].items()}
    summary.update(machine=machine, seconds=seconds, supernet=sup, flops=args.flops, device=device,
                   cache_rows=cache_rows, complete=final)
    if final:
        print(table(summary))
    write_curves(results, n, out / "curves.csv")
    atomic_write(out / "summary.json", json.dumps(summary, indent=1, default=str))
    atomic_write(out / "search_efficiency.md", markdown(summary, args, machine, seconds, cache_rows))
    plot(results, summary, png, f"{Path(args.space).stem}, MACs <= {args.flops}: "
         + ", ".join(f"{s} x {k}" for s, k in seeds.items()) + f" seeds, {n} evaluations each ({machine})")
    if final:
        print(f"wrote {out / 'curves.csv'}, {out / 'summary.json'}, {out / 'search_efficiency.md'}, {png} "
              f"({seconds:.0f} s)")


def _progress(r: dict, done: int, total: int, t0: float) -> None:
    w = r["winner"]
    print(f"[{done}/{total}] {r['searcher']} seed {r['seed']}: best loss {w['loss']:.5f} top-1 {w['search_top1']:.4f} "
          + ("(read back from its result.json; " if r.get("reused") else
             f"({r['evaluated_here']} evaluated here, {r['seconds']:.0f} s; ") + f"{time.perf_counter() - t0:.0f} s total)",
          flush=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except NasError as e:
        print(f"nas: error: {e.format()}", file=sys.stderr)
        sys.exit(2)

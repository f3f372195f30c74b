"""Search efficiency: evolution vs Optuna TPE vs random search at equal numbers of evaluations.

Each searcher runs ``--seeds`` times on ONE trained supernet and ONE budget (``--flops``, 1.3G as in the main
job), each run evaluating ``--max-evals`` (N) distinct archs; the key is the one ``nas search`` ranks by,
``Evaluation.objective`` (the negated cross-entropy on the search split), and the top-1 of the best-by-loss
candidate is reported beside it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/search_efficiency.py --seeds 10 --max-evals 1000 \\
        --supernet runs/psvit_tiny-search-1.3G-evolution-s0/supernet --out runs/search-efficiency

The protocol (every interval and test from ``nas.stats``):

- Target, independent of every searcher: a uniform sample of ``--target-sample`` distinct in-budget archs
  (500; drawn exactly as random search draws, from its own seed stream ``"target-sample"``, which no searcher
  uses) is scored with the same evaluator; the target is the best ``--target-quantile`` fraction of it (0.01:
  the 99th percentile of the objective, i.e. the 1st percentile of the loss, numpy's linear interpolation).
  The sample goes through the shared cache (a searcher that proposes one of its archs gets it for free) but
  is no searcher's run. Under this target a uniform draw reaches it with probability about q per evaluation,
  so random search's median hitting time is about ln 2 / q (69 evaluations for q = 0.01).
- Hitting time of a run, random search's included: the number of evaluations after which its best-so-far
  objective (feasible candidates only) is at least the target; a run that never gets there within N is
  censored, shown ``>N``. The median over seeds is the number of evaluations by which half of the seeds had
  reached the target (the lower median; for runs censored at N it is the Kaplan-Meier median), censored
  when fewer than half reach it.
- Ratio: a searcher's median hitting time over RANDOM SEARCH'S OWN median hitting time (1.00 for random). When
  random's median is censored the ratio is an upper bound (``<`` m / N); when the searcher's is censored and
  random's is not, a lower bound (``>`` N / m_random); both censored: ``-``.
- p vs random: a two-sided permutation test of the hitting times, rank-based: ``nas.stats.difference`` of the
  mid-ranks of the pooled times (censored runs count as N + 1, worse than any run that reached the target,
  tied among themselves), i.e. the Wilcoxon-Mann-Whitney rank-sum statistic under permutation of the
  searcher labels. summary.json adds the difference of median hitting times with its bootstrap CI.
- Final best loss: mean over seeds with its bootstrap 95% CI, and the difference from random search's mean
  (``nas.stats.difference``, statistic "mean": bootstrap CI, permutation p); "within noise" when the CI
  covers 0.
- Curves: best-so-far search loss (what the searchers minimise) and the search top-1 of the best-by-loss arch,
  mean over seeds with a 95% bootstrap band (``nas.stats.bootstrap_band``), the target as a horizontal line.
- Zero-evaluation baselines: the in-budget arch with the most parameters and the one with the most target
  MACs, found without evaluating anything (``largest_in_budget``: exact, by enumerating every combination of
  the stage-level choices and of the NUMBER of cells of each kind per stage, since a static arch's analytic
  cost does not depend on the order of a stage's cells; for spaces where it would, the best of
  ``--baseline-draws`` uniform draws). Ties: the first in enumeration order (lowest value index per
  dimension; within a stage, cells ordered as the space lists the kinds). Each is scored once per split and
  compared, image by image, with each searcher's winners: ``nas.stats.paired_difference`` of the baseline's
  per-image loss and the per-image loss of the winners averaged over seeds, on the search split (where the
  winners were selected: favours them) and on the val split (held out); the CI covers which-images noise,
  not seed-to-seed variation, which "better than k of n winners" shows.

The searchers are the real ones (``nas.search.evolution``, ``nas.search.optuna_search``,
``nas.search.random_search``) behind the real ``Objective`` (budget checked on the target arch, target -> proxy
mapping); only the evaluator is wrapped: ``nas.supernet.scoring.Evaluator`` behind a shared on-disk cache
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
- The cache is tied to the supernet's weights (sha256), the split's images and the device kind (CPU and CUDA
  kernels differ in the last bits); another supernet in the same ``--out`` is refused. Per-image outcomes of
  the baselines and winners are kept beside it (``OUT/per_image``).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import itertools
import json
import math
import os
import random
import re
import shutil
import sqlite3
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.atomic import atomic_write  # noqa: E402
from nas.errors import NasError, exit_with  # noqa: E402

SEARCHERS = ("evolution", "optuna", "random")
RESULT_FORMAT = "nas-search-efficiency-run/2"
TARGET_SEED = "target-sample"      # the target sample's seed stream; searchers seed with f"{seed}|..." or ints
BASELINES = {"most_params": "most params", "most_macs": "most target MACs"}


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
        from nas.supernet.scoring import Evaluation

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


# --- worker processes: one search run, the target sample, per-image outcomes -------------------------------
_WORKER: dict = {}


def _init_worker(supernet_dir: str, space_file: str, device: str, threads: int, cache_file: str, fp: str,
                 batch_size: int) -> None:
    """Load the supernet and the evaluators once per worker process."""
    import torch

    from nas.search.proxy import ProxyMap
    from nas.space import load_space
    from nas.supernet.run import load_supernet_run
    from nas.supernet.scoring import Evaluator

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
    returns its result: the candidates in evaluation order and the winner (vector, search and val scores)."""
    from nas.search.budget import Budget
    from nas.search.history import History, best
    from nas.search.objective import Objective
    from nas.search.recipe import load_search_recipe

    d = Path(out) / "runs" / f"{searcher}-s{seed}"
    done = d / "result.json"
    if done.exists():
        r = json.loads(done.read_text())
        if r.get("format") == RESULT_FORMAT and r.get("max_evals") == max_evals and r.get("flops") == flops:
            return {**r, "reused": True}
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    t0 = time.perf_counter()
    pm, ev = _WORKER["pm"], _WORKER["search"]
    new_before = ev.new
    bud = Budget.resolve(flops, None, pm.target.budget, "worst")
    srec = load_search_recipe(None, searcher).with_max_evals(max_evals)
    if searcher == "evolution":  # the SPOS settings, as many generations as the evaluations need
        srec = replace(srec, settings=replace(srec.settings, generations=math.ceil(
            max_evals / srec.settings.population)))
    history = History(d / "history.csv")
    obj = Objective(pm, bud, ev, history, max_evals, progress=False)
    try:
        if searcher == "evolution":
            from nas.search.evolution import evolution
            evolution(obj, srec.settings, srec.max_tries, seed)
            cands = list(obj.requested)
        elif searcher == "random":
            from nas.search.random_search import random_search
            random_search(obj, srec.max_tries, seed)
            cands = list(obj.requested)
        else:
            from nas.search.optuna_search import optuna_search
            cands = optuna_search(obj, srec.settings, srec.max_tries, seed, f"sqlite:///{(d / 'study.db').resolve()}",
                                  f"search-efficiency-{searcher}-s{seed}")
    finally:
        obj.close()
        history.close()
    cands = cands[:max_evals]
    w = best(cands)
    val = _WORKER["val"](pm.to_proxy(pm.target.decode(w.vector)))
    r = {"format": RESULT_FORMAT, "searcher": searcher, "seed": seed, "max_evals": max_evals, "flops": flops,
         "evals": [[c.arch_hash, c.objective, c.score, c.loss, c.target_macs, int(c.feasible)] for c in cands],
         "winner": {"arch_hash": w.arch_hash, "vector": list(w.vector), "objective": w.objective,
                    "search_top1": w.score, "loss": w.loss, "target_macs": w.target_macs, "val_top1": val.score,
                    "val_loss": val.loss},
         "evaluated_here": ev.new - new_before, "seconds": time.perf_counter() - t0}
    atomic_write(done, json.dumps(r))
    return r


def score_sample(vectors: list[list[int]]) -> list[tuple[str, float, float]]:
    """(target arch hash, search loss, search top-1) of each target-space vector, through the shared cache."""
    pm, ev = _WORKER["pm"], _WORKER["search"]
    out = []
    for v in vectors:
        arch = pm.target.decode(v)
        e = ev(pm.to_proxy(arch))
        out.append((arch.hash(), e.loss, e.score))
    return out


def per_image(vector: list[int], split: str, folder: str):
    """(per-image loss, per-image correctness) of a target-space vector on ``split``, always the same images in
    the same order; kept in ``folder`` (deterministic for the cache's supernet, split and device)."""
    import numpy as np

    pm = _WORKER["pm"]
    proxy = pm.to_proxy(pm.target.decode(vector))
    f = Path(folder) / f"{split}-{proxy.hash()}.npz"
    if f.exists():
        with np.load(f) as z:
            return z["loss"], z["correct"]
    out = _WORKER[split].evaluator.per_image(proxy)
    loss, correct = out.loss.numpy().astype(np.float64), out.correct.numpy().astype(np.int8)
    buf = io.BytesIO()
    np.savez(buf, loss=loss, correct=correct)
    f.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(f, buf.getvalue())
    return loss, correct


class _Inline:
    """A future run on ``result()`` in this process (``--workers 1``: no pool, results in submission order)."""

    def __init__(self, fn: Callable, args: tuple) -> None:
        self.fn, self.args, self._value, self._done = fn, args, None, False

    def result(self):
        if not self._done:
            self._value, self._done = self.fn(*self.args), True
        return self._value


# --- the target sample and the zero-evaluation baselines (analytic costs only) -----------------------------
def draw_sample(space, budget, size: int, seed: str = TARGET_SEED, max_tries: int = 1000) -> list[list[int]]:
    """``size`` distinct in-budget uniform archs of ``space`` as vectors, drawn exactly as random search draws
    (``SearchSpace.sample``, the budget's analytic pre-check), from the seed stream ``seed``."""
    from nas.cost import cost

    rng, seen, out, tries = random.Random(seed), set(), [], 0
    while len(out) < size:
        tries += 1
        if tries > max_tries * size:
            raise NasError(f"--target-sample {size}: found only {len(out)} distinct in-budget archs in "
                           f"{tries - 1} uniform draws; the budget admits too few archs")
        arch = space.sample(rng)
        h = arch.hash()
        if h in seen:
            continue
        c = cost(arch)
        if budget.may_admit(c.macs_min, c.macs_max, c.params):
            seen.add(h)
            out.append(space.encode(arch))
    return out


CELL_DIM = re.compile(r"^stages\[(\d+)\]\.cells\[\d+\]$")


def largest_in_budget(space, budget, draws: int = 200_000, max_combinations: int = 5_000_000,
                      seed: str = "baseline-draws") -> dict[str, dict]:
    """The in-budget archs of ``space`` with the most params and with the most (worst-case) MACs, from their
    analytic cost (``nas.cost``) alone: {"most_params" | "most_macs": {vector, macs, params, how}}.

    Exact when a stage's cells are exchangeable (static archs: the cost of a stage depends on how many cells of
    each kind it has, not on their order, checked on random archs): every combination of the other choices and
    of the per-stage counts of each cell kind is costed (8 x 28 x 28 x 21 = 131,712 for psvit_tiny, seconds).
    Otherwise, or when there are more than ``max_combinations``, the best of ``draws`` uniform draws."""
    from nas.cost import cost

    dims = space.dims
    groups: dict[str, list[int]] = {}
    free: list[int] = []
    for i, d in enumerate(dims):
        m = CELL_DIM.match(d.path)
        (groups.setdefault(m.group(1), []) if m else free).append(i)
    groups = {k: g for k, g in groups.items() if len({dims[i].values for i in g}) == 1}
    free = [i for i in range(len(dims)) if not any(i in g for g in groups.values())]
    keys = {"most_params": lambda c: (c.params, c.macs), "most_macs": lambda c: (c.macs, c.params)}
    best: dict[str, tuple] = {}

    def consider(vec: list[int]) -> None:
        c = cost(space.decode(vec))
        if not budget.may_admit(c.macs_min, c.macs_max, c.params):
            return
        for name, key in keys.items():
            if name not in best or key(c) > best[name][0]:
                best[name] = (key(c), list(vec), c)

    rng = random.Random(seed)
    exchangeable = not space.sample(rng).data_dependent and all(
        _order_free(space, groups, rng) for _ in range(50))
    combos = math.prod(len(dims[i].values) for i in free) * math.prod(
        math.comb(len(g) + len(dims[g[0]].values) - 1, len(g)) for g in groups.values())
    if exchangeable and combos <= max_combinations:
        how = (f"exact: all {combos:,} combinations of the stage-level choices and of the number of cells of "
               f"each kind per stage, since a stage's cost does not depend on the order of its cells")
        per_group = [list(itertools.combinations_with_replacement(range(len(dims[g[0]].values)), len(g)))
                     for g in groups.values()]
        for fv in itertools.product(*(range(len(dims[i].values)) for i in free)):
            for counts in itertools.product(*per_group):
                vec = [0] * len(dims)
                for i, v in zip(free, fv):
                    vec[i] = v
                for g, kinds in zip(groups.values(), counts):
                    for i, v in zip(g, kinds):
                        vec[i] = v
                consider(vec)
    else:
        how = f"the best of {draws:,} uniform draws (not exact: the space's cells are not exchangeable in cost)"
        for _ in range(draws):
            consider(space.encode(space.sample(rng)))
    if not best:
        raise NasError("no arch of the space meets the budget (zero-evaluation baselines)")
    return {name: {"vector": vec, "macs": c.macs, "params": c.params, "how": how}
            for name, (_, vec, c) in best.items()}


def _order_free(space, groups: dict[str, list[int]], rng: random.Random) -> bool:
    """Whether a random arch costs the same with the cells of each stage shuffled."""
    from nas.cost import cost

    vec = space.encode(space.sample(rng))
    shuffled = list(vec)
    for g in groups.values():
        vals = [vec[i] for i in g]
        rng.shuffle(vals)
        for i, v in zip(g, vals):
            shuffled[i] = v
    a, b = cost(space.decode(vec)), cost(space.decode(shuffled))
    return (a.macs, a.params, a.macs_min) == (b.macs, b.params, b.macs_min)


# --- pure functions: hitting times, target, ratio (tests/test_search_efficiency.py) ------------------------
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


def hitting_time(curve: Sequence[float], target: float) -> int | None:
    """1-based number of evaluations after which ``curve`` (best objective so far) is >= ``target``; None
    (censored at len(curve)) if never."""
    for i, v in enumerate(curve):
        if v >= target:
            return i + 1
    return None


def median_hitting_time(times: Sequence[int | None]) -> int | None:
    """The number of evaluations by which half of the runs had reached the target: the lower median of the
    hitting times (None = censored, later than any reached), i.e. the Kaplan-Meier median of times all censored
    at the same N. None when fewer than half of the runs reached it (or no runs)."""
    if not times:
        return None
    s = sorted(times, key=lambda t: math.inf if t is None else t)
    return s[math.ceil(len(s) / 2) - 1]


def censored(times: Sequence[int | None], n: int) -> list[int]:
    """Hitting times with a censored run (None) as n + 1: worse than any run that reached the target."""
    return [n + 1 if t is None else int(t) for t in times]


def target_objective(objectives: Sequence[float], best_fraction: float) -> float:
    """The objective reached by the best ``best_fraction`` of a sample: its (1 - best_fraction) quantile (numpy's
    linear interpolation). With loss = -objective, the target loss is the ``best_fraction`` quantile of the
    losses."""
    import numpy as np

    if not objectives:
        raise NasError("target: the sample is empty")
    if not 0 < best_fraction < 1:
        raise NasError(f"--target-quantile: expected a fraction in (0, 1), got {best_fraction}")
    return float(np.quantile(np.asarray(objectives, dtype=float), 1 - best_fraction))


def ratio_to_random(m: int | None, m_random: int | None, n: int) -> tuple[float | None, str]:
    """A searcher's median hitting time over random search's, as (value, kind): kind "=" exact, "<" an upper
    bound (random's median censored, > n: the ratio is below m / n), ">" a lower bound (the searcher's median
    censored: above n / m_random), "-" unknown (both censored; value None)."""
    if m is not None and m_random is not None:
        return m / m_random, "="
    if m is not None:
        return m / n, "<"
    if m_random is not None:
        return n / m_random, ">"
    return None, "-"


def format_ratio(value: float | None, kind: str) -> str:
    return "-" if value is None else f"{'' if kind == '=' else kind}{value:.2f}"


def format_time(t: int | None, n: int) -> str:
    return f">{n}" if t is None else str(t)


def hitting_time_test(times: Sequence[int | None], ref: Sequence[int | None], n: int):
    """Rank-based two-sided permutation test of two groups of hitting times (``nas.stats.difference`` of the
    pooled mid-ranks, censored runs as n + 1): the ``Difference`` (its estimate is the difference of mean ranks,
    its p the permutation p-value of the Wilcoxon-Mann-Whitney rank sum), or None with fewer than 2 runs a side."""
    from scipy.stats import rankdata

    from nas.stats import difference

    a, b = censored(times, n), censored(ref, n)
    if len(a) < 2 or len(b) < 2:
        return None
    r = rankdata(a + b)  # mid-ranks: ties (censored runs among them) share their mean rank
    return difference(r[:len(a)], r[len(a):], statistic="mean")


# --- summary --------------------------------------------------------------------------------------------------
def _j(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def summarise(results: list[dict], n: int, target: dict) -> dict:
    """Hitting times, ratios, tests and final losses of the runs in ``results`` against ``target``."""
    import numpy as np

    from nas.stats import bootstrap_band, difference

    tobj = target["objective"]
    by = {s: sorted((r for r in results if r["searcher"] == s), key=lambda r: r["seed"]) for s in SEARCHERS}
    by = {s: rs for s, rs in by.items() if rs}
    times = {s: [hitting_time(best_so_far(r["evals"], n)[0], tobj) for r in rs] for s, rs in by.items()}
    finals = {s: [-best_so_far(r["evals"], n)[0][-1] for r in rs] for s, rs in by.items()}
    m_random = median_hitting_time(times["random"]) if "random" in times else None
    out = {"n": n, "target": target, "searchers": {}}
    for s, rs in by.items():
        m = median_hitting_time(times[s])
        value, kind = ratio_to_random(m, m_random, n) if "random" in times else (None, "-")
        fl = np.asarray(finals[s])
        if len(fl) >= 2:
            mean, lo, hi = (float(x[0]) for x in bootstrap_band(fl[:, None]))
        else:
            mean, lo, hi = float(fl[0]), math.nan, math.nan
        row: dict[str, Any] = {
            "seeds": [r["seed"] for r in rs], "hitting_times": times[s], "median_hitting_time": m,
            "ratio_to_random": {"value": value, "kind": kind, "text": format_ratio(value, kind)},
            "final_loss": finals[s], "final_loss_mean": mean, "final_loss_ci": [_j(lo), _j(hi)],
            "final_loss_median": float(np.median(fl)),
            "winners": [r["winner"] for r in rs],
            "search_top1_median": float(np.median([r["winner"]["search_top1"] for r in rs])),
            "val_top1_median": float(np.median([r["winner"]["val_top1"] for r in rs])),
            "val_loss_median": float(np.median([r["winner"]["val_loss"] for r in rs])),
            "winner_macs_median": float(np.median([r["winner"]["target_macs"] for r in rs])),
            "hitting_time_test": None, "hitting_time_median_difference": None, "final_loss_vs_random": None}
        if s != "random" and "random" in times:
            test = hitting_time_test(times[s], times["random"], n)
            if test is not None:
                row["hitting_time_test"] = {**test.to_json(), "method": "difference of mean mid-ranks of the "
                                            "hitting times (censored = N+1), permutation p (Wilcoxon-Mann-Whitney)"}
                row["hitting_time_median_difference"] = difference(censored(times[s], n),
                                                                   censored(times["random"], n),
                                                                   statistic="median").to_json()
                row["final_loss_vs_random"] = difference(finals[s], finals["random"], statistic="mean").to_json()
        out["searchers"][s] = row
    return out


def compare_baselines(baselines: dict[str, dict], images: dict, summary: dict) -> dict:
    """Each baseline's scores and its paired per-image comparison with each searcher's winners (their per-image
    loss averaged over seeds) on the search and val splits. ``images[(split, tuple(vector))]`` = (loss, correct)."""
    import numpy as np

    from nas.stats import paired_difference

    out = {}
    for name, b in baselines.items():
        key = tuple(b["vector"])
        row = {**b, "label": BASELINES[name]}
        for split in ("search", "val"):
            loss, correct = images[(split, key)]
            row[f"{split}_loss"], row[f"{split}_top1"] = float(np.mean(loss)), float(np.mean(correct))
        row["vs"] = {}
        for s, r in summary["searchers"].items():
            vs = {}
            for split in ("search", "val"):
                per_seed = [images[(split, tuple(w["vector"]))][0] for w in r["winners"]]
                d = paired_difference(images[(split, key)][0], np.mean(per_seed, axis=0), "loss")
                better = sum(row[f"{split}_loss"] < float(np.mean(x)) for x in per_seed)
                vs[split] = {**d.to_json(), "describe": d.describe(), "better_than": better,
                             "winners": len(per_seed)}
            row["vs"][s] = vs
        out[name] = row
    return out


# --- output ---------------------------------------------------------------------------------------------------
def _diff_text(d: dict | None, digits: int = 4) -> str:
    if d is None:
        return "-"
    lo, hi = d["ci"]
    if lo is None or hi is None:
        return f"{d['difference']:+.{digits}f} [no interval]"
    verdict = "within noise" if d["within_noise"] else "beyond noise"
    p = d["p"]
    ptxt = "nan" if p is None else (f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}")
    return f"{d['difference']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}], p {ptxt}: {verdict}"


def _p_text(t: dict | None) -> str:
    if t is None or t["p"] is None:
        return "-"
    return f"{t['p']:.2g}" if t["p"] >= 1e-3 else f"{t['p']:.1e}"


def target_line(summary: dict) -> str:
    import numpy as np

    t = summary["target"]
    return (f"target: search loss <= {t['loss']:.5f}, the best {100 * t['quantile']:.3g}% of {t['size']} uniform "
            f"in-budget archs drawn apart from every searcher (seed stream \"{t['seed']}\"; their losses: best "
            f"{min(t['losses']):.5f}, median {float(np.median(t['losses'])):.5f})")


def table(summary: dict) -> str:
    n = summary["n"]
    per_seed_w = max(16, *(len(" ".join(format_time(x, n) for x in r["hitting_times"]))
                           for r in summary["searchers"].values()))
    lines = [target_line(summary),
             f"{'searcher':<10} {'seeds':>5} {'hitting time per seed':<{per_seed_w}} {'median':>6} "
             f"{'/random':>7} {'p vs random':>11}  {'final best loss, mean [95% CI]':<30}  "
             f"{'minus random: diff [95% CI], p':<52}  {'winner top-1 search / val (median)'}"]
    for s, r in summary["searchers"].items():
        lo, hi = r["final_loss_ci"]
        final = f"{r['final_loss_mean']:.5f}" + ("" if lo is None else f" [{lo:.5f}, {hi:.5f}]")
        lines.append(f"{s:<10} {len(r['seeds']):>5} "
                     f"{' '.join(format_time(x, n) for x in r['hitting_times']):<{per_seed_w}} "
                     f"{format_time(r['median_hitting_time'], n):>6} {r['ratio_to_random']['text']:>7} "
                     f"{_p_text(r['hitting_time_test']):>11}  {final:<30}  "
                     f"{_diff_text(r['final_loss_vs_random']):<52}  "
                     f"{100 * r['search_top1_median']:.2f}% / {100 * r['val_top1_median']:.2f}%")
    b = summary.get("baselines")
    if b:
        from nas.space.schema import human
        lines.append("")
        lines.append("zero-evaluation baselines, from the analytic cost alone (" + next(iter(b.values()))["how"]
                     + "):")
        lines.append(f"{'baseline':<17} {'target MACs':>11} {'params':>7} {'search loss':>11} {'search top-1':>12} "
                     f"{'val loss':>8} {'val top-1':>9}")
        for row in b.values():
            lines.append(f"{row['label']:<17} {human(row['macs']):>11} {human(row['params']):>7} "
                         f"{row['search_loss']:>11.5f} {100 * row['search_top1']:>11.2f}% {row['val_loss']:>8.5f} "
                         f"{100 * row['val_top1']:>8.2f}%")
        lines.append(f"{'baseline':<17} {'vs winners of':<13} {'split':<6} "
                     f"{'baseline minus winners, per-image loss: diff [95% CI], p':<58} better than")
        for row in b.values():
            for s, vs in row["vs"].items():
                for split in ("search", "val"):
                    d = vs[split]
                    lines.append(f"{row['label']:<17} {s:<13} {split:<6} {_diff_text(d):<58} "
                                 f"{d['better_than']} of {d['winners']}")
        lines.extend(baseline_verdicts(summary))
    return "\n".join(lines)


def baseline_verdicts(summary: dict) -> list[str]:
    """One plain sentence per baseline: within noise of each searcher's winners or not, on each split."""
    out = []
    for row in summary.get("baselines", {}).values():
        parts = []
        for split in ("search", "val"):
            worse = [s for s, vs in row["vs"].items() if not vs[split]["within_noise"] and vs[split]["difference"] > 0]
            better = [s for s, vs in row["vs"].items() if not vs[split]["within_noise"]
                      and vs[split]["difference"] < 0]
            same = [s for s, vs in row["vs"].items() if vs[split]["within_noise"]]
            bits = ([f"worse than the winners of {', '.join(worse)} beyond noise"] if worse else []) + \
                   ([f"better than the winners of {', '.join(better)} beyond noise"] if better else []) + \
                   ([f"within noise of the winners of {', '.join(same)}"] if same else [])
            parts.append(f"on the {split} split {'; '.join(bits)}")
        out.append(f"The {row['label']} arch (no evaluation): " + "; ".join(parts) + ".")
    return out


def write_curves(results: list[dict], n: int, path: Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["searcher", "seed", "evals", "arch_hash", "loss", "top1", "best_loss", "best_top1"])
    for r in sorted(results, key=lambda r: (r["searcher"], r["seed"])):
        obj, top1 = best_so_far(r["evals"], n)
        for i, e in enumerate(r["evals"][:n]):
            w.writerow([r["searcher"], r["seed"], i + 1, e[0], repr(e[3]), repr(e[2]), repr(-obj[i]), repr(top1[i])])
    atomic_write(path, buf.getvalue())


def write_sample(sample: list[tuple[str, float, float]], vectors: list[list[int]], path: Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["arch_hash", "loss", "top1", "vector"])
    for (h, loss, top1), v in zip(sample, vectors):
        w.writerow([h, repr(loss), repr(top1), "-".join(map(str, v))])
    atomic_write(path, buf.getvalue())


COLORS = {"evolution": "tab:green", "optuna": "tab:blue", "random": "tab:gray"}


def plot(results: list[dict], summary: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from nas.stats import bootstrap_band

    n = summary["n"]
    tloss = summary["target"]["loss"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    xs = np.arange(1, n + 1)
    zoom = [tloss]
    for s in summary["searchers"]:
        runs = [best_so_far(r["evals"], n) for r in results if r["searcher"] == s]
        for ax, k, sign in ((axes[0], 0, -1), (axes[1], 1, 1)):
            c = sign * np.asarray([run[k] for run in runs], dtype=float)
            ok = np.isfinite(c).all(axis=0)
            if not ok.any():
                continue
            if len(runs) >= 2:
                mean, lo, hi = bootstrap_band(c[:, ok])
                ax.fill_between(xs[ok], lo, hi, color=COLORS[s], alpha=0.2, linewidth=0)
            else:
                mean = c[0, ok]
            ax.plot(xs[ok], mean, color=COLORS[s], label=f"{s} (mean of {len(runs)} seeds, 95% band)")
            if k == 0:
                zoom += list(mean[min(9, len(mean) - 1):])
        m = summary["searchers"][s]["median_hitting_time"]
        if m is not None:
            axes[0].axvline(m, color=COLORS[s], linestyle="--", linewidth=0.8)
    t = summary["target"]
    axes[0].axhline(tloss, color="k", linestyle=":", linewidth=1,
                    label=f"target: best {100 * t['quantile']:.3g}% of {t['size']} uniform archs")
    lo_y, hi_y = min(zoom), max(zoom)
    pad = 0.1 * (hi_y - lo_y) + 1e-4
    for row, style in zip(summary.get("baselines", {}).values(), ("-.", (0, (5, 2, 1, 2, 1, 2)))):
        if row["search_loss"] <= hi_y + pad:
            axes[0].axhline(row["search_loss"], color="tab:red", linestyle=style, linewidth=1,
                            label=f"{row['label']} arch (no evaluation)")
        else:
            axes[0].plot([], [], color="tab:red", linestyle=style,
                         label=f"{row['label']} arch: loss {row['search_loss']:.4f} (above the plot)")
    axes[0].set(xscale="log", xlabel="evaluations (dashed: median hitting time)",
                ylabel="best search loss so far (lower is better)", title="best loss (what the searchers minimise)",
                ylim=(lo_y - pad, hi_y + pad))
    axes[1].set(xscale="log", xlabel="evaluations", ylabel="search top-1 of the best-by-loss arch",
                title="top-1 of the best-by-loss arch")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def markdown(summary: dict, args: argparse.Namespace, machine: str, seconds: float, cache_rows: int) -> str:
    from nas.space.schema import human

    n, t = summary["n"], summary["target"]
    rows = ["| searcher | seeds | hitting time per seed | median hitting time | / random's median | "
            "p vs random | final best search loss, mean [95% CI] | minus random's: difference [95% CI], p | "
            "winner's top-1, search / val (median) |",
            "|---|---:|---|---:|---:|---:|---|---|---|"]
    for s, r in summary["searchers"].items():
        lo, hi = r["final_loss_ci"]
        ci = "" if lo is None else f" [{lo:.4f}, {hi:.4f}]"
        rows.append(f"| {s} | {len(r['seeds'])} | {', '.join(format_time(x, n) for x in r['hitting_times'])} | "
                    f"{format_time(r['median_hitting_time'], n)} | {r['ratio_to_random']['text']} | "
                    f"{_p_text(r['hitting_time_test'])} | {r['final_loss_mean']:.4f}{ci} | "
                    f"{_diff_text(r['final_loss_vs_random'])} | "
                    f"{100 * r['search_top1_median']:.2f}% / {100 * r['val_top1_median']:.2f}% |")
    seeds = ", ".join(f"{s} x {len(r['seeds'])}" for s, r in summary["searchers"].items())
    text = (f"Measured on {machine}; N = {n} evaluations per run, budget {args.flops}, seeds: {seeds}"
            f"{'' if summary.get('complete') else ' (INCOMPLETE: the runs finished so far)'}; {cache_rows} distinct "
            f"evaluations in the cache (the target sample's included), {seconds:.0f} s.\n\n"
            f"Target: search loss <= {t['loss']:.4f}, reached by the best {100 * t['quantile']:.3g}% (the "
            f"{t['quantile']:.3g} quantile of the loss) of {t['size']} distinct uniform in-budget archs drawn apart "
            f"from every searcher (seed stream \"{t['seed']}\") and scored like them.\n\n" + "\n".join(rows) + "\n\n"
            "Columns: *hitting time* = evaluations until the run's best-so-far search loss is at or below the "
            f"target (`>{n}`: never within N); *median hitting time* = the number of evaluations by which half of "
            "the seeds had reached the target (`>N` when fewer than half did); */ random's median* = that median "
            "over random search's own median hitting time (`<x`: an upper bound, random's median censored; `>x`: "
            "a lower bound, the searcher's censored); *p vs random* = two-sided permutation p-value of the hitting "
            "times, rank-based (Wilcoxon-Mann-Whitney rank sum; censored runs rank last); *final best search "
            "loss* = the best loss after N evaluations, mean over seeds with its bootstrap 95% CI; *minus "
            "random's* = difference of those means from random search's with its bootstrap 95% CI and "
            "permutation p, *within noise* when the CI covers 0; *winner's top-1* = the best-by-loss arch's top-1 "
            "on the search split and on the held-out val split, median over seeds.\n")
    b = summary.get("baselines")
    if b:
        brows = ["| baseline (no evaluation) | target MACs | params | search loss | search top-1 | val loss | "
                 "val top-1 |", "|---|---:|---:|---:|---:|---:|---:|"]
        for row in b.values():
            brows.append(f"| {row['label']} | {human(row['macs'])} | {human(row['params'])} | "
                         f"{row['search_loss']:.4f} | {100 * row['search_top1']:.2f}% | {row['val_loss']:.4f} | "
                         f"{100 * row['val_top1']:.2f}% |")
        brows += ["", "| baseline | vs the winners of | search split: baseline minus winners, loss per image "
                  "[95% CI], p | better than | val split: baseline minus winners, loss per image [95% CI], p | "
                  "better than |", "|---|---|---|---:|---|---:|"]
        for row in b.values():
            for s, vs in row["vs"].items():
                brows.append(f"| {row['label']} | {s} | " + " | ".join(
                    f"{_diff_text(vs[split])} | {vs[split]['better_than']} of {vs[split]['winners']}"
                    for split in ("search", "val")) + " |")
        text += ("\nZero-evaluation baselines: the in-budget archs with the most params and with the most target "
                 f"MACs, found from their analytic cost ({next(iter(b.values()))['how']}).\n\n"
                 + "\n".join(brows) + "\n\n"
                 "Columns: *baseline minus winners* = the baseline's per-image loss minus the per-image loss "
                 "of that searcher's winners averaged over its seeds, mean over the images with a paired bootstrap "
                 "95% CI and a sign-flip permutation p, on the search split (where the winners were chosen, which "
                 "favours them) and on the held-out val split; *better than k of n* = the number of that "
                 "searcher's seed winners whose loss on that split is higher than the baseline's.\n\n"
                 + "\n".join(baseline_verdicts(summary)) + "\n")
    return text


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
    p.add_argument("--seeds", type=int, default=10, help="seeds per searcher [10]")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--max-evals", type=int, default=1000, help="evaluations per run [1000]")
    p.add_argument("--searchers", default=",".join(SEARCHERS), help="comma-separated subset of " + ",".join(SEARCHERS))
    p.add_argument("--target-sample", type=int, default=500,
                   help="uniform in-budget archs scored to set the target, apart from every searcher [500]")
    p.add_argument("--target-quantile", type=float, default=0.01,
                   help="the target is the loss of the best this fraction of the target sample [0.01]")
    p.add_argument("--baseline-draws", type=int, default=200_000,
                   help="uniform draws for the zero-evaluation baselines where no exact search applies [200000]")
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
    if args.target_sample < 2 or not 0 < args.target_quantile < 1:
        p.error("--target-sample >= 2 and --target-quantile in (0, 1)")
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

    from nas.search.budget import Budget
    from nas.space import load_space
    space = load_space(args.space)
    budget = Budget.resolve(args.flops, None, space.budget, "worst")
    sample_vectors = draw_sample(space, budget, args.target_sample)
    jobs = [(s, args.first_seed + k) for s in args.searchers for k in range(args.seeds)]
    jobs.sort(key=lambda j: (j[1], j[0] != "optuna"))  # by seed (partial results stay balanced), TPE first
    init = (str(sup), args.space, device, args.threads, str(cache_file), fp, args.batch_size)
    results: list[dict] = []
    png = Path(args.png) if args.png else out / "search_efficiency.png"
    print(f"target sample of {args.target_sample} archs, then {len(jobs)} runs of {args.max_evals} evaluations on "
          f"{device}, {args.workers} worker(s)", flush=True)

    if args.workers == 1:
        _init_worker(*init)
        pool = None
        submit: Callable = lambda fn, *a: _Inline(fn, a)  # noqa: E731
    else:
        import multiprocessing as mp
        pool = ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                   initargs=init)
        submit = pool.submit
    try:
        chunk = max(1, math.ceil(len(sample_vectors) / (4 * args.workers)))
        sample_futs = [submit(score_sample, sample_vectors[i:i + chunk])
                       for i in range(0, len(sample_vectors), chunk)]
        run_futs = [submit(run_one, s, seed, args.max_evals, args.flops, str(out)) for s, seed in jobs]
        baselines = largest_in_budget(space, budget, args.baseline_draws)  # analytic, while the workers score
        sample = [x for f in sample_futs for x in f.result()]
        losses = [loss for _, loss, _ in sample]
        tobj = target_objective([-x for x in losses], args.target_quantile)
        target = {"size": len(sample), "quantile": args.target_quantile, "seed": TARGET_SEED, "objective": tobj,
                  "loss": -tobj, "losses": losses, "top1": [t for _, _, t in sample]}
        write_sample(sample, sample_vectors, out / "target_sample.csv")
        print(f"target sample scored: search loss <= {-tobj:.5f} is the best {100 * args.target_quantile:.3g}% of "
              f"{len(sample)} uniform in-budget archs ({time.perf_counter() - t0:.0f} s)", flush=True)
        for f in (run_futs if pool is None else as_completed(run_futs)):
            results.append(f.result())
            _progress(results[-1], len(results), len(jobs), t0)
            if len(results) < len(jobs):  # the summary so far after every run: a killed benchmark leaves it
                report(results, args, out, png, cache_file, fp, device, str(sup), t0, target, final=False)
        # the baselines and every winner, image by image, on both splits
        summary = summarise(results, args.max_evals, target)
        vecs = [b["vector"] for b in baselines.values()] + [w["vector"] for r in summary["searchers"].values()
                                                             for w in r["winners"]]
        keys = list(dict.fromkeys((split, tuple(v)) for v in vecs for split in ("search", "val")))
        futs = [submit(per_image, list(v), split, str(out / "per_image")) for split, v in keys]
        images = {k: f.result() for k, f in zip(keys, futs)}
    finally:
        if pool is not None:
            pool.shutdown()
    report(results, args, out, png, cache_file, fp, device, str(sup), t0, target, final=True,
           baselines=compare_baselines(baselines, images, summary))
    return 0


def report(results: list[dict], args: argparse.Namespace, out: Path, png: Path, cache_file: Path, fp: str,
           device: str, sup: str, t0: float, target: dict, final: bool, baselines: dict | None = None) -> None:
    """Summary, table, curves, markdown and plot of the runs finished so far."""
    n = args.max_evals
    summary = summarise(results, n, target)
    if baselines:
        summary["baselines"] = baselines
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
        print(f"wrote {out / 'curves.csv'}, {out / 'summary.json'}, {out / 'search_efficiency.md'}, "
              f"{out / 'target_sample.csv'}, {png} ({seconds:.0f} s)")


def _progress(r: dict, done: int, total: int, t0: float) -> None:
    w = r["winner"]
    print(f"[{done}/{total}] {r['searcher']} seed {r['seed']}: best loss {w['loss']:.5f} top-1 {w['search_top1']:.4f} "
          + ("(read back from its result.json; " if r.get("reused") else
             f"({r['evaluated_here']} evaluated here, {r['seconds']:.0f} s; ") + f"{time.perf_counter() - t0:.0f} s total)",
          flush=True)


if __name__ == "__main__":
    exit_with(main)

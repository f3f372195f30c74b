"""``nas search``: the most accurate subnet within a budget, end to end, in one resumable run directory.

    from nas.search.runner import search
    result = search("spaces/psvit_tiny.yaml", flops="1.3G")

The job in its parts, in the order they run (cheap checks first, so bad input fails in well under a second,
before any training):

1. the plan (``nas.search.job.plan``): target space, search recipe, budget against the target's exact
   reachable range, training recipe and the proxy it defines, the data as training sees it;
2. the run directory: a lock, and ``run.json`` (a changed space, budget, searcher, recipe, data or seed is
   refused);
3. the supernet: trained into ``<run>/supernet`` per the training recipe (resumable), or ``--supernet``;
4. the backend (``nas.search.backend``; this process by default, Ray actors when the caller passes
   ``nas.distributed.RaySearch(...).backend()``) and the searcher (``nas.search.searchers``), scoring proxy
   archs with inherited weights on the search split, the budget checked on the target archs; every evaluation
   appended to ``history.csv`` at once, so a killed run resumes losing nothing; beside it, in a thread, the
   random baseline at the same number of evaluations (``baseline.csv``);
5. the report (``nas.search.report``): the winner's and the baseline's top-1 on the validation split, their
   paired comparisons, the exports (best.yaml and weights, ``--top K`` more, pareto.csv), summary.json, the
   pictures (``nas.search.plots``) and the table.

Run directory ``<out>/`` (default ``runs/<space>-search-<budget>-<searcher>-s<seed>``)::

    run.json  supernet/  history.csv  baseline.csv  study.db (optuna, nsga2)  best.yaml  best.safetensors or
    best.proxy.yaml + best.proxy.safetensors  top/  pareto.csv  pareto.png  best_so_far.png  summary.json
    search.log  .lock

Decisions where the papers are silent:

- The winner and the baseline's best are re-scored on the validation split (never seen by the search).
- The baseline runs concurrently with the search (its own supernet copy, half of torch's threads each): on the
  2-core CPU of the main job the two cost about the wall time of one. An arch both happen to draw is scored
  by each (the two histories are independent, each resumable on its own). On Ray both use the same actors.
- Where candidates are scored is not part of ``run.json``: a run started on Ray resumes locally, on another
  cluster or with another number of workers (evolution and random search give the same candidates whatever
  the workers).
"""
from __future__ import annotations

import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from nas.search.backend import Backend, Local, Scoring, Trained
from nas.search.history import Candidate, History, best, read_history
from nas.search.job import SearchJob, plan
from nas.search.objective import Evaluate, Objective
from nas.search.proxy import ProxyMap, check_same_dimensions
from nas.search.report import Found, SearchResult, finish
from nas.search.searchers import Context, searcher as registered


def search(space: str | Path, *, flops: str | None = None, params: str | None = None, budget_on: str | None = None,
           searcher: str | None = None, max_evals: int | None = None, top: int = 0, data: str | None = None,
           recipe: str | Path | None = None, search_recipe: str | Path | None = None,
           supernet: str | Path | None = None, storage: str | None = None, out: str | Path | None = None,
           seed: int = 0, progress: bool = True, backend: Backend | None = None, latency: str | None = None,
           latency_table: str | Path | None = None) -> SearchResult:
    """Search ``space`` for the best arch within the budget (``flops``/``params``/``latency``, else the space's
    own) and export it into the run directory ``out``; see the module docstring. ``latency`` bounds the latency
    that ``latency_table`` predicts (``nas latency-table``). ``backend`` says where candidates are scored
    (``nas.search.backend``: this process by default); the results are the same on every backend."""
    t0 = time.perf_counter()
    backend = backend or Local()
    job = plan(space, flops=flops, params=params, budget_on=budget_on, searcher=searcher, max_evals=max_evals,
               top=top, data=data, recipe=recipe, search_recipe=search_recipe, supernet=supernet, storage=storage,
               seed=seed, trains=backend.needs_supernet, latency=latency, latency_table=latency_table)
    for warning in job.warnings:  # before the run directory: a user may stop here
        print(f"nas: warning: {warning}", file=sys.stderr)
    run_dir = Path(out) if out is not None else job.default_out()
    from nas.train.rundir import RunLock, check_run_json, commit_run_json
    with RunLock(run_dir, activity="searching"), ExitStack() as stack:
        info, compare = job.identity()
        resumed = check_run_json(run_dir, info, compare)
        for name in ("history.csv", "baseline.csv"):  # a damaged history fails now, not after the supernet
            read_history(run_dir / name, job.target)
        log = _Log(run_dir / "search.log", progress)
        log(f"{'resumed' if resumed else 'started'}: {job.target.name} ({job.space_file}), {job.budget.describe()}, "
            f"searcher {job.searcher}, seed {seed}; " + "; ".join(job.notes))
        trained = _supernet(job, run_dir, log, progress) if backend.needs_supernet else None
        scoring = backend.start(job.proxy.proxy, trained, job.recipe.batch_size, stack, log)
        commit_run_json(run_dir, info)  # the supernet loads and candidates can be scored: the run has started
        found = _run_searcher(job, run_dir, scoring, progress)
        return finish(job, run_dir, found, scoring, trained, log, t0)


def _supernet(job: SearchJob, run_dir: Path, log: "_Log", progress: bool) -> Trained:
    """The supernet of the job: trained into ``<run>/supernet`` (resumed when it is there), or the given run."""
    from nas.supernet.run import load_supernet_run

    sup_dir = job.supernet if job.supernet is not None else run_dir / "supernet"
    if job.supernet is None:
        from nas.train import train_supernet
        r = train_supernet(job.space_file, data=job.data, recipe=job.training, out=sup_dir, progress=progress,
                           resolved=job.resolved)
        log(f"supernet: {r.weights} ({r.steps} steps, {r.seconds:.0f} s)")
    sr = load_supernet_run(sup_dir)
    if sr.space.hash != job.proxy.proxy.hash:
        check_same_dimensions(job.target, sr.space, where=str(sup_dir))
        job.proxy = ProxyMap(job.target, sr.space)
    splits = job.resolved[1] if job.resolved is not None else sr.splits()  # trained here: the data of the plan
    return Trained(sr.supernet, lambda: load_supernet_run(sup_dir).supernet, splits,
                   dict(sr.recipe.space_overrides))


def _run_searcher(job: SearchJob, run_dir: Path, scoring: Scoring, progress: bool) -> Found:
    """The searcher into ``history.csv`` and, in a thread beside it, the random baseline into ``baseline.csv``."""
    found = registered(job.searcher)
    history = History(run_dir / "history.csv", job.target)
    baseline = None
    if job.recipe.baseline and found.baseline:
        try:
            baseline = _Baseline(job, scoring.baseline(), History(run_dir / "baseline.csv", job.target), progress)
        except BaseException:
            history.close()
            raise
    obj = Objective(job.proxy, job.budget, scoring.search, history, job.recipe.max_evals, progress,
                    desc=f"search ({job.searcher})")
    ctx = Context(job.seed, job.recipe.max_tries, run_dir, job.storage, job.study_name(), scoring.run_study)
    with _share_threads(baseline is not None and scoring.share_threads):
        if baseline is not None:
            baseline.start()
        try:
            cands = found.run(obj, job.recipe.settings, ctx)
        except BaseException:
            if baseline is not None:
                baseline.cancel()  # joined before the error goes up: no thread left inside torch at exit
            raise
        finally:
            obj.close()
            history.close()
        best_random, evals = baseline.result(len(cands)) if baseline is not None else (None, 0)
    return Found(cands, obj.new_evals, baseline is not None, best_random, evals)


class _Baseline(threading.Thread):
    """Random search into ``baseline.csv`` (resumable like the search's history), in a thread beside the search,
    for as many candidates as the searcher plans. ``result(n)``: the best of its first ``n`` candidates (the
    search's count) and how many that was."""

    def __init__(self, job: SearchJob, evaluate: Evaluate, history: History, progress: bool) -> None:
        super().__init__(name="nas-random-baseline", daemon=True)
        self.job, self.evaluate, self.history, self.progress = job, evaluate, history, progress
        self.requested: list[Candidate] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def cancel(self) -> None:
        """Stop after the evaluation in progress (its row is written), and wait for that."""
        self.stop.set()
        self.join()

    def run(self) -> None:
        job, history = self.job, self.history
        try:
            obj = Objective(job.proxy, job.budget, self.evaluate, history, job.recipe.planned_evals(), self.progress,
                            desc="random baseline", position=1, stop=self.stop)
            try:
                registered("random").run(obj, None, Context(job.seed, job.recipe.max_tries, history.path.parent))
            finally:
                obj.close()
                history.close()
            self.requested = obj.requested
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread by result()
            self.error = e

    def result(self, n: int) -> tuple[Candidate | None, int]:
        self.join()
        if self.error is not None:
            raise self.error
        got = self.requested[:n]
        return best(got), len(got)


@contextmanager
def _share_threads(parallel: bool) -> Iterator[None]:
    """Half of torch's CPU threads each for the search and the baseline while both run."""
    import torch

    n = torch.get_num_threads()
    if parallel and n > 1:
        torch.set_num_threads(max(1, n // 2))
    try:
        yield
    finally:
        torch.set_num_threads(n)


class _Log:
    """``search.log`` (appended, timestamped) and stderr."""

    def __init__(self, path: Path, echo: bool) -> None:
        self.path, self.echo = path, echo

    def __call__(self, line: str) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
        if self.echo and "\n" not in line:
            print(f"nas: {line}", file=sys.stderr)

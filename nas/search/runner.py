"""``nas search``: the most accurate subnet within a budget, end to end, in one resumable run directory.

    from nas.search.runner import search
    result = search("spaces/psvit_tiny.yaml", flops="1.3G")

Order of work (cheap checks first, so bad input fails in well under a second, before any training):

1. the target space, the search recipe, the training recipe and the proxy it defines (same dimensions);
2. the budget (flags or the space's ``budget:``), checked against the target space's exact reachable range;
3. the run directory: a lock, and ``run.json`` (a changed space, budget, searcher, recipe, data or seed is
   refused);
4. the supernet: trained into ``<run>/supernet`` per the training recipe (resumable), or ``--supernet``;
5. the searcher, scoring proxy archs with inherited weights on the search split, the budget checked on the
   target archs; every evaluation appended to ``history.csv`` at once, so a killed run resumes losing nothing;
   beside it, in a thread, the random baseline at the same number of evaluations (``baseline.csv``); with
   ``ray_address`` the evaluations run on Ray actors holding the supernet (``nas.distributed.evaluation``,
   Optuna through Ray Tune: ``nas.distributed.tune``), with the same results, the driver writing every file;
6. the winner's and the baseline's best top-1 on the validation split, and the paired comparisons of
   ``nas.search.report``: the winner minus the baseline on the validation images with its CI, and the cheapest
   candidate whose search loss is within noise of the winner's;
7. exports (``nas.export``): best.yaml and weights, ``--top K`` more, pareto.csv (the front of search loss
   against MACs), summary.json; the pictures (``nas.search.plots``): pareto.png, best_so_far.png, both of the search
   loss, the key the search ranks by.

Run directory ``<out>/`` (default ``runs/<space>-search-<budget>-<searcher>-s<seed>``)::

    run.json  supernet/  history.csv  baseline.csv  study.db (optuna, nsga2)  best.yaml  best.safetensors or
    best.proxy.yaml + best.proxy.safetensors  top/  pareto.csv  pareto.png  best_so_far.png  summary.json
    search.log  .lock

Decisions where the papers are silent:

- ``--budget-on`` defaults to ``mean`` for a space of data-dependent archs (ATS, CF-ViT) whose supernet is
  trained on the target itself, else ``worst``; ``mean`` with a proxy is refused (the measured mean of a proxy
  arch says nothing exact about the target's), and ``summary.json``, the log and the table say which applied.
- The winner and the baseline's best are re-scored on the validation split (never seen by the search).
- The baseline runs concurrently with the search (its own supernet copy, half of torch's threads each): on the
  2-core CPU of the main job the two cost about the wall time of one. An arch both happen to draw is scored
  by each (the two histories are independent, each resumable on its own). On Ray both use the same actors.
- The Ray address and the number of workers are not part of ``run.json``: a run started on Ray resumes
  locally, on another cluster or with another ``--num-workers`` (evolution and random search give the same
  candidates whatever the workers).
- Changing ``--max-evals`` changes the search recipe: a run directory refuses it like any other recipe change.
"""
from __future__ import annotations

import sys
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from nas.arch import Arch, Provenance
from nas.errors import NasError
from nas.search.budget import Budget, human
from nas.search.history import Candidate, History, best, rank_key
from nas.search.objective import Evaluate, Objective
from nas.search.proxy import ProxyMap, check_same_dimensions
from nas.search.recipe import SearchRecipe, load_search_recipe
from nas.search.report import summary, table  # noqa: F401 - the job's report; ``table`` is what the CLI prints
from nas.space import SearchSpace, load_space

SEARCH_RUN_FORMAT = "nas-search-run/1"


# --- the evaluator interface (one place) --------------------------------------------------------------
def open_supernet(run_dir: Path) -> Any:
    """A trained supernet run: ``.space`` (the space it was trained on), ``.supernet``, ``.recipe``, and
    ``.splits()``, the data it was trained with (``search`` and ``val`` are what candidates are scored on)."""
    from nas.supernet.run import load_supernet_run
    return load_supernet_run(run_dir)


def make_evaluator(supernet: Any, splits: Any, split: str, batch_size: int) -> Evaluate:
    from nas.supernet.scoring import Evaluator
    return Evaluator(supernet, splits, split, batch_size=batch_size)


def _ray_actors(cluster: ExitStack, address: str, supernet: Any, splits: Any, batch_size: int,
                num_workers: int | None, max_retries: int, log: Callable[[str], None]) -> Any:
    """Ray joined (left when ``cluster`` closes) and the evaluation actors, each holding the supernet and the
    search and val splits (``nas.distributed.evaluation``)."""
    from nas.distributed import ray_cluster
    from nas.distributed.evaluation import ActorEvaluators

    cluster.enter_context(ray_cluster(address))
    actors = ActorEvaluators(supernet, {s: make_evaluator(supernet, splits, s, batch_size) for s in ("search", "val")},
                             num_workers=num_workers, max_retries=max_retries, batch_size=batch_size)
    log(f"ray: {actors.workers} evaluation actors on {address} (processes {', '.join(map(str, actors.pids()))}), "
        f"--max-retries {max_retries}")
    return actors


# --- result -------------------------------------------------------------------------------------------
@dataclass
class SearchResult:
    run_dir: Path
    space: SearchSpace
    budget: Budget
    searcher: str
    best: Candidate
    best_arch: Arch                         # target arch, with provenance
    candidates: list[Candidate]             # every evaluated candidate of the search, in order
    new_evals: int                          # evaluated by this invocation (the rest came from the history)
    baseline: Candidate | None = None       # the best of the same number of random candidates
    val_score: float | None = None          # winner's top-1 on the validation split
    baseline_val_score: float | None = None
    baseline_evals: int = 0                 # random candidates the baseline scored (as many as the search's)
    versus_baseline: dict[str, Any] | None = None  # winner - baseline on val, paired (nas.search.report.versus)
    cheapest: dict[str, Any] | None = None  # the cheapest candidate within noise (report.cheapest_within_noise)
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def default_out(space: SearchSpace, budget: Budget, searcher: str, seed: int) -> Path:
    return Path("runs") / f"{space.name}-search-{budget.label()}-{searcher}-s{seed}"


def data_dependent(space: SearchSpace) -> bool:
    """Whether the space's archs execute image-dependent MACs (ATS or coarse-to-fine tokenizer)."""
    t = space.template()
    return t.get("ats") is not None or t["tokenizer"]["type"] == "coarse_fine"


# --- the job ------------------------------------------------------------------------------------------
@dataclass
class _Plan:
    """Everything decided before the run directory is touched (all cheap checks passed)."""
    space_file: str
    target: SearchSpace
    srec: SearchRecipe
    budget: Budget
    proxy: ProxyMap
    rc: Any                       # the training recipe (None with --supernet)
    train_id: dict[str, Any]      # what identifies the supernet in run.json
    notes: list[str]


def search(space: str | Path, *, flops: str | None = None, params: str | None = None, budget_on: str | None = None,
           searcher: str | None = None, max_evals: int | None = None, top: int = 0, data: str = "builtin",
           recipe: str | Path | None = None, search_recipe: str | Path | None = None,
           supernet: str | Path | None = None, storage: str | None = None, out: str | Path | None = None,
           seed: int = 0, progress: bool = True,
           evaluator: Callable[[SearchSpace, str], Evaluate] | None = None, ray_address: str | None = None,
           num_workers: int | None = None, max_retries: int = 3) -> SearchResult:
    """Search ``space`` for the best arch within the budget; see the module docstring.

    ``evaluator(proxy_space, split)``, when given, replaces the supernet (no training, no weights exported):
    tests pass fast deterministic fakes through it. ``ray_address`` (``local``, ``auto`` or ``host:port``)
    evaluates candidates on Ray actors (``nas.distributed.evaluation``; ``num_workers`` of them, each retried
    up to ``max_retries`` times when its process dies); the results are the same as without.
    """
    t0 = time.perf_counter()
    if ray_address is None and num_workers is not None:
        raise NasError("--num-workers sets how many Ray actors evaluate candidates: it needs --ray-address "
                       "(local, auto or HOST:PORT)")
    if ray_address is not None:
        from nas.distributed.cluster import check_address
        check_address(ray_address)
        if evaluator is not None:
            raise NasError("an injected evaluator runs in this process; it cannot be combined with --ray-address")
        from nas.distributed.evaluation import check_workers
        check_workers(num_workers, max_retries)
    p = _plan(str(space), flops, params, budget_on, searcher, max_evals, top, data, recipe, search_recipe, supernet,
              storage, seed, evaluator is not None)
    target, srec, bud = p.target, p.srec, p.budget
    run = Path(out) if out is not None else default_out(target, bud, srec.searcher, seed)
    from nas.train.rundir import RunLock, check_run_json
    with RunLock(run, activity="searching"), ExitStack() as cluster:
        info = {"format": SEARCH_RUN_FORMAT, "space_hash": target.hash, "budget": bud.to_dict(), "searcher": srec.searcher,
                "search_recipe": srec.hash(), "train": p.train_id, "seed": seed,
                "space": {"name": target.name, "file": p.space_file}, "search_recipe_file": srec.file,
                "storage": storage}
        resumed = check_run_json(run, info, {"space_hash": "space", "budget": "budget", "searcher": "searcher",
                                             "search_recipe": "search recipe (or --max-evals)",
                                             "train": "supernet training (recipe, data or --supernet)",
                                             "seed": "seed"})
        log = _Log(run / "search.log", progress)
        log(f"{'resumed' if resumed else 'started'}: {target.name} ({p.space_file}), {bud.describe()}, "
            f"searcher {srec.searcher}, seed {seed}; " + "; ".join(p.notes))

        # the supernet (trained here unless given) and the evaluators of its search and val splits
        sr = actors = None
        if evaluator is None:
            sup_dir = Path(supernet) if supernet is not None else run / "supernet"
            if supernet is None:
                from nas.train import train_supernet
                r = train_supernet(p.space_file, data=data, recipe=p.rc, out=sup_dir, progress=progress)
                log(f"supernet: {r.weights} ({r.steps} steps, {r.seconds:.0f} s)")
            sr = open_supernet(sup_dir)
            if sr.space.hash != p.proxy.proxy.hash:
                check_same_dimensions(target, sr.space, where=str(sup_dir))
                p.proxy = ProxyMap(target, sr.space)
            splits = sr.splits()
            if ray_address is not None:  # the actors hold the supernet and both splits; the baseline shares them
                actors = _ray_actors(cluster, ray_address, sr.supernet, splits, srec.batch_size, num_workers,
                                     max_retries, log)

            def new_evaluator(split: str, own_supernet: bool = False) -> Evaluate:
                if actors is not None:
                    return actors.evaluator(split)
                net = open_supernet(sup_dir).supernet if own_supernet else sr.supernet
                return make_evaluator(net, splits, split, srec.batch_size)
        else:
            def new_evaluator(split: str, own_supernet: bool = False) -> Evaluate:
                return evaluator(p.proxy.proxy, split)
        evaluate, val = new_evaluator("search"), new_evaluator("val")
        pm = p.proxy

        # the random baseline at the search's number of evaluations runs beside the search, with its own
        # evaluator and supernet copy (evaluators are not thread-safe): on a CPU they share the cores
        baseline = None
        if srec.baseline and srec.searcher != "random":
            baseline = _Baseline(pm, bud, new_evaluator("search", own_supernet=True), planned_evals(srec), run,
                                 srec, seed, progress)

        # the search: every evaluation appended to history.csv as it completes
        history = History(run / "history.csv")
        obj = Objective(pm, bud, evaluate, history, srec.max_evals, progress, desc=f"search ({srec.searcher})")
        with _share_threads(baseline is not None and ray_address is None):
            if baseline is not None:
                baseline.start()
            try:
                cands = _run_searcher(obj, srec, seed, storage, run, target, bud, actors)
            finally:
                obj.close()
                history.close()
            if baseline is not None:
                result_baseline = baseline.result(len(cands))
        winner = best(cands)
        if winner is None:
            raise NasError(f"none of the {len(cands)} evaluated candidates met the budget ({bud.describe()}) on their "
                           f"measured mean MACs; widen the budget or use --budget-on worst")
        log(f"search: {len(cands)} candidates ({obj.new_evals} evaluated now), best {winner.arch_hash} "
            f"score {winner.score:.4f} target MACs {human(winner.target_macs)}")
        result = SearchResult(run, target, bud, srec.searcher, winner, _target_arch(target, winner, bud), cands,
                              obj.new_evals, notes=p.notes)

        # both winners on the validation split
        result.val_score = float(val(pm.to_proxy(target.decode(winner.vector))).score)
        if baseline is not None:
            result.baseline, result.baseline_evals = result_baseline
            if result.baseline is not None:
                result.baseline_val_score = float(val(pm.to_proxy(target.decode(result.baseline.vector))).score)

        # the paired comparisons on the images themselves (nas.search.report)
        _compare(result, pm, bud, evaluate, val, sr, splits if sr is not None else None, srec.batch_size, log)

        result.files = [run / "history.csv", *([run / "baseline.csv"] if baseline is not None else []),
                        *_export(result, pm, sr, top, srec, seed, proxy_overrides(p.rc, sr))]
        result.seconds = time.perf_counter() - t0
        from nas.export import write_json
        result.files.append(write_json(summary(result), run / "summary.json"))
        from nas.search.plots import visualize_search
        result.files += visualize_search(run, out=run)  # pareto.png, best_so_far.png (reads summary.json)
        log(table(result))
    return result


def _plan(space_file: str, flops: str | None, params: str | None, budget_on: str | None, searcher: str | None,
          max_evals: int | None, top: int, data: str, recipe: str | Path | None, search_recipe: str | Path | None,
          supernet: str | Path | None, storage: str | None, seed: int, injected: bool) -> _Plan:
    """Every check that needs no training, cheapest first: the budget before the training recipe."""
    target = load_space(space_file)
    srec = load_search_recipe(search_recipe, searcher).with_max_evals(max_evals)
    if top < 0:
        raise NasError(f"--top must be >= 0, got {top}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise NasError(f"--seed must be a non-negative integer, got {seed!r}")
    if storage is not None and srec.searcher not in ("optuna", "nsga2"):
        raise NasError(f"--storage holds an Optuna study: it applies to --searcher optuna or nsga2, not "
                       f"{srec.searcher}")
    if storage is not None:  # a malformed URL is refused now, not after the supernet has trained
        from sqlalchemy.engine import make_url
        try:
            make_url(storage)
        except Exception as e:  # noqa: BLE001 - sqlalchemy's ArgumentError and friends
            raise NasError(f"--storage {storage!r} is not a database URL ({e}); use e.g. sqlite:///study.db") from None

    # the budget against the target's exact reachable range (the lenient mean check while mean may apply)
    dd = data_dependent(target)
    bud = Budget.resolve(flops, params, target.budget, budget_on or ("mean" if dd else "worst"))
    bounds = target.cost_bounds()
    bud.check_reachable(bounds, where=space_file)

    # the training recipe and the proxy it defines (no data loaded yet)
    rc = None
    if supernet is not None:
        sup_dir = Path(supernet)
        if not (sup_dir / "space.yaml").exists() or not (sup_dir / "supernet.safetensors").exists():
            raise NasError("--supernet: not a finished supernet run (needs space.yaml and supernet.safetensors; "
                           "train one with `nas train-supernet`)", file=str(sup_dir))
        proxy_space = load_space(sup_dir / "space.yaml")
        train_id: dict[str, Any] = {"supernet": str(sup_dir.resolve()), "space_hash": proxy_space.hash}
        where: str | None = str(sup_dir / "space.yaml")
    else:
        from nas.train.recipe import default_recipe, load_recipe
        # the training default for the data (the CPU recipe on the built-in data); with an injected evaluator
        # nothing is trained: no default recipe (and so no proxy) unless one is given
        default = None if injected else default_recipe("supernet", data)
        rc = load_recipe(recipe if recipe is not None else default)
        where = rc.file
        try:
            proxy_space = load_space(space_file, overrides=rc.space_overrides) if rc.space_overrides else target
        except NasError as e:
            if recipe is not None:
                raise
            raise NasError(f"the default training recipe does not fit this space ({e.format()}); give a training "
                           "recipe with --recipe (its space_overrides may define a proxy) or a trained --supernet",
                           file=str(default)) from None
        train_id = {"recipe_hash": rc.hash(), "data": data}
    check_same_dimensions(target, proxy_space, where=where)
    if not injected and supernet is None:  # num_classes follows the data: resolve exactly as training will
        from nas.train.spos import resolve
        proxy_space, splits, _ = resolve(space_file, data, rc)
        why = f"data {data!r} has {splits.num_classes} classes, the space {target.template()['num_classes']}"
    else:
        why = ""

    on = budget_on or ("mean" if dd and proxy_space.hash == target.hash else "worst")
    if on == "mean" and proxy_space.hash != target.hash:
        raise _mean_refusal(where, why if not rc or not rc.space_overrides else "")
    bud = replace(bud, on=on)
    bud.check_reachable(bounds, where=space_file)
    pm = ProxyMap(target, proxy_space)
    notes = [f"budget on {on} MACs" + (" (default: data-dependent archs, supernet at target scale)" if
                                       budget_on is None and on == "mean" else
                                       " (default)" if budget_on is None else "")]
    if supernet is None and not injected:
        notes.append(f"supernet recipe {_shown(rc.file) if rc.file else 'the PSViT paper defaults'}"
                     + (" (the default for this data; --recipe to change)" if recipe is None else ""))
    if not pm.is_identity:
        notes.append(f"scored on a proxy of the target (space hash {proxy_space.hash}); budget checked on the target")
    return _Plan(space_file, target, srec, bud, pm, rc, train_id, notes)


def planned_evals(srec: SearchRecipe) -> int:
    """How many candidates the search will evaluate (fewer only when the space runs out of new ones)."""
    if srec.searcher == "evolution":
        return min(srec.max_evals, srec.evolution.population * srec.evolution.generations)
    return srec.max_evals


class _Baseline(threading.Thread):
    """Random search into ``baseline.csv`` (resumable like the search's history), in a thread beside the search.
    ``result(n)``: the best of its first ``n`` candidates (the search's count) and how many that was."""

    def __init__(self, pm: ProxyMap, bud: Budget, evaluate: Evaluate, n: int, run: Path, srec: SearchRecipe,
                 seed: int, progress: bool) -> None:
        super().__init__(name="nas-random-baseline", daemon=True)
        self.pm, self.bud, self.evaluate, self.n, self.run_dir = pm, bud, evaluate, n, run
        self.max_tries, self.seed, self.progress = srec.max_tries, seed, progress
        self.requested: list[Candidate] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        from nas.search.random_search import random_search
        try:
            history = History(self.run_dir / "baseline.csv")
            obj = Objective(self.pm, self.bud, self.evaluate, history, self.n, self.progress,
                            desc="random baseline", position=1)
            try:
                random_search(obj, self.max_tries, self.seed)
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


def _shown(path: str) -> str:
    """``path`` relative to the working directory when it lies below it (as a user would type it)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _mean_refusal(where: str | None, why: str = "") -> NasError:
    return NasError("--budget-on mean bounds the mean MACs measured with the supernet's weights, so the supernet "
                    "must be trained on the target space itself, but the training recipe defines a proxy "
                    f"({why or 'space_overrides'}); use --budget-on worst, or a recipe without space_overrides "
                    "and data with the space's num_classes", file=where)


def _run_searcher(obj: Objective, srec: SearchRecipe, seed: int, storage: str | None, run: Path,
                  target: SearchSpace, bud: Budget, actors: Any = None) -> list[Candidate]:
    if srec.searcher == "evolution":
        from nas.search.evolution import evolution
        evolution(obj, srec.evolution, srec.max_tries, seed)
        return list(obj.requested)
    if srec.searcher == "random":
        from nas.search.random_search import random_search
        random_search(obj, srec.max_tries, seed)
        return list(obj.requested)
    from nas.search.optuna_search import optuna_search
    url = storage or f"sqlite:///{(run / 'study.db').resolve()}"
    name = f"nas-search-{target.name}-{target.hash}-{bud.label()}-{srec.searcher}-{srec.hash()}-s{seed}"
    if actors is not None:  # through Ray Tune's OptunaSearch, trials scored by the actors
        from nas.distributed.tune import tune_search
        return tune_search(obj, srec, seed, url, name, srec.searcher == "nsga2", actors, run / "tune")
    return optuna_search(obj, srec, seed, url, name, multi=srec.searcher == "nsga2")


def proxy_overrides(rc: Any, sr: Any) -> dict[str, Any]:
    if sr is not None and getattr(sr, "recipe", None) is not None:
        return dict(sr.recipe.space_overrides)
    return dict(rc.space_overrides) if rc is not None else {}


def _target_arch(target: SearchSpace, c: Candidate, bud: Budget) -> Arch:
    return replace(target.decode(c.vector), provenance=Provenance(
        space=target.name, space_hash=target.hash, budget_macs=None if bud.macs is None else bud.macs[1],
        budget_params=None if bud.params is None else bud.params[1], score=c.score))


def _budget_macs(c: Candidate, bud: Budget) -> int:
    """The MACs the budget bounds: the measured mean or the worst case."""
    return c.macs_mean if bud.on == "mean" and c.macs_mean is not None else c.target_macs


def _compare(r: SearchResult, pm: ProxyMap, bud: Budget, evaluate: Evaluate, val: Evaluate, sr: Any, splits: Any,
             batch_size: int, log: Callable[[str], None]) -> None:
    """``r.versus_baseline`` and ``r.cheapest`` from per-image outcomes: the evaluators' own, or (on Ray, whose
    actors return means only) local evaluators of the same supernet and splits."""
    from nas.search.report import cheapest_within_noise, versus

    def per_image(ev: Evaluate, split: str) -> Any:
        if hasattr(ev, "per_image"):
            return ev.per_image
        return None if sr is None else make_evaluator(sr.supernet, splits, split, batch_size).per_image

    on_search, on_val = per_image(evaluate, "search"), per_image(val, "val")
    if on_search is None or on_val is None:
        r.notes.append("the evaluator gives no per-image outcomes: paired comparisons left out")
        return
    arch_of = lambda c: pm.to_proxy(r.space.decode(c.vector))  # noqa: E731
    if r.baseline is not None:
        r.versus_baseline = versus(on_val, arch_of(r.best), arch_of(r.baseline))
    r.cheapest = cheapest_within_noise(on_search, r.best, r.candidates, arch_of, lambda c: _budget_macs(c, bud))
    log(f"paired comparisons: winner vs baseline {r.versus_baseline}; cheapest within noise {r.cheapest}")


def _export(res: SearchResult, pm: ProxyMap, sr: Any, top: int, srec: SearchRecipe, seed: int,
            overrides: dict[str, Any]) -> list[Path]:
    from nas.export import export_arch, write_pareto_csv
    from nas.search.plots import pareto_front

    run, target, bud = res.run_dir, res.space, res.budget
    ranked = sorted((c for c in res.candidates if c.feasible), key=rank_key)
    files: list[Path] = []
    for i, c in enumerate(ranked[:top + 1]):
        arch = _target_arch(target, c, bud)
        proxy_arch = None if pm.is_identity else pm.to_proxy(arch)
        header = [f"{'best' if i == 0 else f'rank {i + 1}'} of search {run.name}: target arch ({target.name}, space "
                  f"hash {target.hash}); retrain it with `nas retrain`",
                  f"target MACs {c.target_macs} ({human(c.target_macs)}, worst case), params {c.target_params} "
                  f"({human(c.target_params)})" + (f", mean MACs {c.macs_mean}" if pm.is_identity and c.macs_mean
                                                   else ""),
                  f"budget: {bud.describe()}; searcher {res.searcher}, seed {seed}",
                  f"score: top-1 {c.score:.6f} on the search split (loss {c.loss:.6f}), inherited supernet weights"]
        if proxy_arch is not None:
            header.append(f"scored on a proxy (space hash {pm.proxy.hash}, overrides {overrides}): the inherited "
                          f"weights fit {'best' if i == 0 else 'this'}.proxy.yaml, not this arch")
        folder, stem = (run, "best") if i == 0 else (run / "top", f"rank{i + 1:02d}-{c.arch_hash}")
        pprov = Provenance(space=pm.proxy.name, space_hash=pm.proxy.hash, score=c.score)
        files += export_arch(folder, stem, arch, proxy_arch, arch.provenance, header,
                             None if sr is None else sr.supernet, pprov)
    feas = [c for c in res.candidates if c.feasible]
    front = [feas[i] for i in pareto_front([(_budget_macs(c, bud), c.loss) for c in feas])]  # lower is better
    files.append(write_pareto_csv([{"arch_hash": c.arch_hash, "score": repr(c.score), "loss": repr(c.loss),
                                    "objective": repr(c.objective), "macs": _budget_macs(c, bud),
                                    "params": c.target_params, "feasible": int(c.feasible),
                                    "vector": "-".join(map(str, c.vector))} for c in front], run / "pareto.csv"))
    return files


class _Log:
    """``search.log`` (appended, timestamped) and stderr."""

    def __init__(self, path: Path, echo: bool) -> None:
        self.path, self.echo = path, echo

    def __call__(self, line: str) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
        if self.echo and "\n" not in line:
            print(f"nas: {line}", file=sys.stderr)

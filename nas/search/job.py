"""The plan of a search: everything ``nas search`` decides before its run directory is touched.

    job = plan("spaces/psvit_tiny.yaml", flops="1.3G")      # cheap checks only: well under a second

``plan`` resolves, cheapest check first, and once: the target space and the search recipe, the budget against
the target's exact reachable range, the training recipe and the proxy space it defines, and the data as
training will see it (the splits are loaded here and handed to training and to scoring, never loaded again).
The ``SearchJob`` it returns is what the run directory records (``SearchJob.identity``), what the supernet is
trained from, and what the searcher and the report read.

Decisions where the papers are silent:

- ``--budget-on`` defaults to ``mean`` for a space of data-dependent archs (ATS, CF-ViT) whose supernet is
  trained on the target itself, else ``worst``; ``mean`` with a proxy is refused (the measured mean of a proxy
  arch says nothing exact about the target's), and ``summary.json``, the log and the table say which applied.
- Changing ``--max-evals`` changes the search recipe: a run directory refuses it like any other recipe change.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.cost import cost
from nas.errors import NasError
from nas.limits import MAX_EVALS
from nas.search.budget import Budget
from nas.search.proxy import ProxyMap, check_same_dimensions
from nas.search.recipe import SearchRecipe, load_search_recipe
from nas.search.searchers import SEARCHERS, searcher as registered
from nas.space import SearchSpace, load_space

if TYPE_CHECKING:
    from nas.data import DataSplits
    from nas.train.recipe import Recipe

SEARCH_RUN_FORMAT = "nas-search-run/1"


@dataclass
class SearchJob:
    """A search, resolved: ``target`` the space as written (what the budget bounds), ``proxy`` the map to the
    space the supernet is trained on; ``training`` the supernet recipe (None with ``supernet``, a trained run
    given) and, when it is trained here (``trains``), ``resolved`` = (trained space, splits, overrides) of
    ``data`` as training sees them."""
    space_file: str
    target: SearchSpace
    recipe: SearchRecipe
    budget: Budget
    proxy: ProxyMap
    data: str
    seed: int
    top: int = 0
    storage: str | None = None
    training: "Recipe | None" = None
    resolved: "tuple[SearchSpace, DataSplits, dict[str, Any]] | None" = None
    supernet: Path | None = None
    trains: bool = True
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def searcher(self) -> str:
        return self.recipe.searcher

    def default_out(self) -> Path:
        return Path("runs") / f"{self.target.name}-search-{self.budget.label()}-{self.searcher}-s{self.seed}"

    def study_name(self) -> str:
        """The Optuna study of this search (its identity: space, budget, searcher, recipe, seed)."""
        t = self.target
        return f"nas-search-{t.name}-{t.hash}-{self.budget.label()}-{self.searcher}-{self.recipe.hash()}-s{self.seed}"

    def train_id(self) -> dict[str, Any]:
        """What identifies the supernet in run.json."""
        if self.supernet is not None:
            return {"supernet": str(self.supernet.resolve()), "space_hash": self.proxy.proxy.hash}
        return {"recipe_hash": self.training.hash(), "data": self.data}

    def identity(self) -> tuple[dict[str, Any], dict[str, str]]:
        """run.json of the search, and the keys a resumed run must keep (key -> what it is, for the message)."""
        info = {"format": SEARCH_RUN_FORMAT, "space_hash": self.target.hash, "budget": self.budget.to_dict(),
                "searcher": self.searcher, "search_recipe": self.recipe.hash(), "train": self.train_id(),
                "seed": self.seed, "space": {"name": self.target.name, "file": self.space_file},
                "search_recipe_file": self.recipe.file, "storage": self.storage}
        return info, {"space_hash": "space", "budget": "budget", "searcher": "searcher",
                      "search_recipe": "search recipe (or --max-evals)",
                      "train": "supernet training (recipe, data or --supernet)", "seed": "seed"}


def data_dependent(space: SearchSpace) -> bool:
    """Whether the space's archs execute image-dependent MACs (``SearchSpace.data_dependent``)."""
    return space.data_dependent()


def default_search_recipe(space: str, searcher: str | None) -> Path | None:
    """The search recipe of a search on the built-in data when none is given: the shipped ``search_cpu_<space>``
    when the space has one and its searcher is the one asked for (its CPU settings, e.g. fewer evaluations
    where each costs more), else None (the searcher's defaults)."""
    from nas.shipped import path as shipped_path

    found = shipped_path("recipe", f"search_cpu_{space}")
    if found is None or (searcher is not None and load_search_recipe(found).searcher != searcher):
        return None
    return found


def plan(space: str | Path, *, flops: str | None = None, params: str | None = None, budget_on: str | None = None,
         searcher: str | None = None, max_evals: int | None = None, top: int = 0, data: str | None = None,
         recipe: str | Path | None = None, search_recipe: str | Path | None = None,
         supernet: str | Path | None = None, storage: str | None = None, seed: int = 0,
         trains: bool = True, latency: str | None = None, latency_table: str | Path | None = None) -> SearchJob:
    """Every check that needs no training, cheapest first (the budget before the training recipe); ``trains``
    False: nothing will be trained (an injected backend), so no default training recipe and no data. ``data``
    None: the built-in data, or the data ``supernet`` was trained with (which takes no ``data`` or ``recipe``).
    ``latency`` bounds the latency ``latency_table`` predicts (``nas.latency``); a table made on another machine,
    thread count or library version is used, with a warning in ``SearchJob.warnings``."""
    if supernet is not None and (data is not None or recipe is not None):
        given = " and ".join(f for f, v in (("--data", data), ("--recipe", recipe)) if v is not None)
        raise NasError(f"{given} cannot apply with --supernet: a trained supernet is searched with the data and "
                       f"recipe it was trained with (its run.json); drop {given}, or drop --supernet to train one")
    space_file = str(space)
    target = load_space(space_file)
    if search_recipe is None and supernet is None and data is None:
        search_recipe = default_search_recipe(target.name, searcher)
    srec = load_search_recipe(search_recipe, searcher).with_max_evals(max_evals)
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_EVALS:
        raise NasError(f"--top must be an integer in [0, {MAX_EVALS:,}], got {top!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise NasError(f"--seed must be an integer in [0, 2**63 - 1], got {seed!r}")
    if storage is not None:
        _check_storage(storage, srec)

    # the budget against the target's exact reachable range (the lenient mean check while mean may apply)
    dd = data_dependent(target)
    table = None
    if latency_table is not None:
        from nas.latency.table import load_table
        table = load_table(latency_table)
    bud = Budget.resolve(flops, params, target.budget, budget_on or ("mean" if dd else "worst"), latency, table)
    bounds: dict[str, Any] = dict(target.cost_bounds())
    if table is not None:  # every block the space can produce, looked up: a table of another space fails here
        bounds.update({k: v for k, (v, _) in target.latency_bounds(table).items()})
    bud.check_reachable(bounds, where=space_file)
    if table is not None:  # after the cheap checks: it imports torch
        from nas.latency.table import check_environment
        warning = check_environment(table)

    # the supernet's space: a trained run's, or the training recipe's (its overrides define a proxy)
    job = SearchJob(space_file, target, srec, bud, ProxyMap(target, target), data or "builtin", seed, top, storage,
                    trains=trains and supernet is None)
    if supernet is not None:
        job.supernet = Path(supernet)
        trained, where = _trained_space(job.supernet), str(job.supernet / "space.yaml")
    else:
        trained, where = _training(job, recipe, trains)
    check_same_dimensions(target, trained, where=where)
    why = ""
    if job.trains:  # num_classes follows the data: resolve exactly as training will, once
        from nas.train.spos import resolve
        job.resolved = resolve(space_file, job.data, job.training)
        trained, splits = job.resolved[0], job.resolved[1]
        why = f"data {job.data!r} has {splits.num_classes} classes, the space {target.template()['num_classes']}"

    on = budget_on or ("mean" if dd and trained.hash == target.hash else "worst")
    if on == "mean" and trained.hash != target.hash:
        raise _mean_refusal(where, why if job.training is None or not job.training.space_overrides else "")
    job.budget = replace(bud, on=on)
    job.budget.check_reachable(bounds, where=space_file)
    _check_feasible(job)
    job.proxy = ProxyMap(target, trained)
    job.notes = _notes(job, budget_on, recipe is None)
    job.warnings = [warning] if table is not None and warning else []
    return job


def _check_storage(storage: str, srec: SearchRecipe) -> None:
    """``--storage``: for a searcher that keeps a study, a database URL, and one Optuna can open now (refused
    before any training, not after)."""
    studies = [name for name, s in SEARCHERS.items() if s.study]
    if not registered(srec.searcher).study:
        raise NasError(f"--storage holds an Optuna study: it applies to --searcher {' or '.join(studies)}, not "
                       f"{srec.searcher}")
    from sqlalchemy.engine import make_url
    try:
        make_url(storage)
    except Exception as e:  # noqa: BLE001 - sqlalchemy's ArgumentError and friends
        raise NasError(f"--storage {storage!r} is not a database URL ({e}); use e.g. sqlite:///study.db") from None
    from nas.search.optuna_search import open_storage
    open_storage(storage, srec.settings).engine.dispose()


def _check_feasible(job: SearchJob) -> None:
    """Some arch may meet the budget: one of ``max_tries`` seeded draws of the target passes the analytic check
    (what every searcher's first candidate needs), so an empty band fails here, before the run directory."""
    rng = random.Random(f"{job.seed}|feasible")
    for _ in range(job.recipe.max_tries):
        arch = job.target.sample(rng)
        c = cost(arch)
        if job.budget.may_admit(c.macs_min, c.macs_max, c.params, job.budget.predict(arch)):
            return
    raise NasError(f"no arch of the space met the budget ({job.budget.describe()}) in {job.recipe.max_tries:,} "
                   f"random draws (the search recipe's max_tries); widen the budget", file=job.space_file)


def _trained_space(sup_dir: Path) -> SearchSpace:
    if not (sup_dir / "space.yaml").exists() or not (sup_dir / "supernet.safetensors").exists():
        raise NasError("--supernet: not a finished supernet run (needs space.yaml and supernet.safetensors; "
                       "train one with `nas train-supernet`)", file=str(sup_dir))
    return load_space(sup_dir / "space.yaml")


def _training(job: SearchJob, recipe: str | Path | None, trains: bool) -> tuple[SearchSpace, str | None]:
    """The training recipe (``job.training``: the default for the data unless given; with nothing to train and
    no recipe given, the PSViT defaults) and the space it trains, with no data loaded yet."""
    from nas.train.recipe import default_recipe, load_recipe

    default = default_recipe("supernet", job.data, job.target.name) if trains else None
    rc = job.training = load_recipe(recipe if recipe is not None else default)
    try:
        trained = load_space(job.space_file, overrides=rc.space_overrides) if rc.space_overrides else job.target
    except NasError as e:
        if recipe is not None:
            raise
        raise NasError(f"the default training recipe does not fit this space ({e.format()}); give a training "
                       "recipe with --recipe (its space_overrides may define a proxy) or a trained --supernet",
                       file=str(default)) from None
    return trained, rc.file


def _notes(job: SearchJob, budget_on: str | None, default_recipe: bool) -> list[str]:
    on = job.budget.on
    notes = [] if job.budget.macs is None else [  # no MACs bound (params or latency only): nothing to say
        f"budget on {on} MACs" + (" (default: data-dependent archs, supernet at target scale)" if
                                  budget_on is None and on == "mean" else " (default)" if budget_on is None else "")]
    if job.trains:
        rc = job.training
        notes.append(f"supernet recipe {_shown(rc.file) if rc.file else 'the PSViT paper defaults'}"
                     + (" (the default for this data; --recipe to change)" if default_recipe else ""))
    if not job.proxy.is_identity:
        notes.append(f"scored on a proxy of the target (space hash {job.proxy.proxy.hash}); budget checked on the "
                     "target")
    return notes


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

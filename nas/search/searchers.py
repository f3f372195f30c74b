"""The searchers, by name: the one registry the search recipe, the search job and the CLI read.

    searcher("evolution").run(objective, settings, context)     # -> the candidates it asked for, in order

A searcher is its settings (the dataclass of its recipe section, whose key is the searcher's name; ``FIELDS``
maps each key to its parser, ``check()`` states the rules between keys) and a function that drives an
``Objective`` (``nas.search.objective``) until ``max_evals`` or until the space runs out of new archs.
Adding one: its module (settings and function), one entry in ``SEARCHERS`` below, and its recipe file
``recipes/search_<name>.yaml``; ``tests/search/test_searchers.py`` then runs it like the others.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from nas.errors import NasError
from nas.search.evolution import EvolutionCfg, evolution
from nas.search.history import Candidate
from nas.search.objective import Objective
from nas.search.optuna_search import Nsga2Cfg, OptunaCfg, optuna_search
from nas.search.random_search import random_search

StudyRunner = Callable[..., list[Candidate]]
"""``(objective, settings, max_tries, seed, storage, study_name, run_dir) -> candidates``: how an execution
backend runs an Optuna study its own way (Ray Tune on the actors, ``nas.distributed.tune``)."""


@dataclass(frozen=True)
class Context:
    """What a searcher runs with besides its objective and settings."""
    seed: int
    max_tries: int                    # draws allowed to find one new in-budget candidate
    run_dir: Path
    storage: str | None = None        # Optuna storage URL (default: SQLite in the run directory)
    study_name: str = ""              # Optuna study name (the run's identity)
    run_study: StudyRunner | None = None

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.run_dir / 'study.db').resolve()}"


@dataclass(frozen=True)
class Searcher:
    """A registered searcher: ``settings`` its recipe section's dataclass (None: it has none), ``run`` its
    function, ``study`` whether it keeps an Optuna study (``--storage`` applies), ``baseline`` whether a random
    baseline beside it means anything (random search is its own)."""
    settings: type | None
    run: Callable[[Objective, Any, Context], list[Candidate]]
    study: bool = False
    baseline: bool = True

    def planned(self, settings: Any, max_evals: int) -> int:
        """How many candidates it evaluates under ``max_evals`` (fewer only when the space runs out)."""
        return settings.planned(max_evals) if hasattr(settings, "planned") else max_evals


def _evolution(obj: Objective, cfg: EvolutionCfg, ctx: Context) -> list[Candidate]:
    evolution(obj, cfg, ctx.max_tries, ctx.seed)
    return list(obj.requested)


def _random(obj: Objective, cfg: None, ctx: Context) -> list[Candidate]:
    random_search(obj, ctx.max_tries, ctx.seed)
    return list(obj.requested)


def _optuna(obj: Objective, cfg: OptunaCfg | Nsga2Cfg, ctx: Context) -> list[Candidate]:
    args = (obj, cfg, ctx.max_tries, ctx.seed, ctx.storage_url(), ctx.study_name)
    if ctx.run_study is not None:
        return ctx.run_study(*args, run_dir=ctx.run_dir)
    return optuna_search(*args)


SEARCHERS: dict[str, Searcher] = {
    "evolution": Searcher(EvolutionCfg, _evolution),
    "optuna": Searcher(OptunaCfg, _optuna, study=True),
    "nsga2": Searcher(Nsga2Cfg, _optuna, study=True),
    "random": Searcher(None, _random, baseline=False),
}


def searcher(name: str) -> Searcher:
    """The registered searcher ``name``; any other name is a ``NasError`` listing them."""
    found = SEARCHERS.get(name)
    if found is None:
        raise NasError(f"searcher {name!r}: expected one of {', '.join(SEARCHERS)}")
    return found

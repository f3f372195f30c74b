"""Search recipes: YAML files validated like training recipes (file:line errors, did-you-mean, ranges).

A search recipe says how to search (which searcher, its settings, how many evaluations); the space says what,
the budget how much. ``SearchRecipe(searcher=...)`` with no other arguments gives the shipped defaults, which
the shipped recipes ``search_<searcher>`` (``recipes/search_<searcher>.yaml``) spell out. Search recipes ship
inside the package with the training recipes and are found by name (``--search-recipe search_optuna``; ``nas
recipe list``; ``nas.shipped``); a path works wherever a name does, and an existing path wins.

Keys (all optional; defaults in brackets)::

    name: str                      # [search_<searcher>]
    description: str
    searcher: evolution | optuna | nsga2 | random     # [evolution]
    max_evals: int >= 1            # [1000] evaluated candidates at most (one per distinct arch)
    max_tries: int >= 1            # [1000] draws allowed to find one new in-budget candidate (retry cap)
    batch_size: int >= 1           # [256] evaluation batch size
    baseline: bool                 # [true] also score the best of max_evals random candidates (not for random)
    evolution: {population [50], generations [20], parents [10], mutations [25], crossovers [25],
                mutation_prob [0.1]}
    optuna:    {n_startup_trials [10], multivariate [true], heartbeat_interval [5], grace_period [20]}
    nsga2:     {population [50], crossover_prob [0.9], mutation_prob [null = 1 / number of dimensions]}

Only the section of the recipe's searcher is allowed.

Decisions where the papers are silent:

- Evolution as in SPOS (arXiv:1904.00420) and AutoFormer (arXiv:2107.00651): population 50, 20 generations,
  top 10 parents, 25 mutations (each dimension re-drawn with probability 0.1) and 25 uniform crossovers per
  generation, every candidate distinct and inside the budget, the population topped up with random archs
  when too few children are found within ``max_tries`` draws; so 1,000 evaluations.
- ``heartbeat_interval`` / ``grace_period`` (seconds) let Optuna mark the trial of a killed worker as failed,
  so that no worker waits forever for an evaluation that will never come.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from nas.errors import NasError
from nas.shipped import find
from nas.space.schema import Reader, boolean, integer, number, one_of, text
from nas.space.yamlnodes import Node, load_nodes

SEARCHERS = ("evolution", "optuna", "nsga2", "random")


@dataclass(frozen=True)
class EvolutionCfg:
    population: int = 50
    generations: int = 20
    parents: int = 10
    mutations: int = 25
    crossovers: int = 25
    mutation_prob: float = 0.1


@dataclass(frozen=True)
class OptunaCfg:
    n_startup_trials: int = 10
    multivariate: bool = True
    heartbeat_interval: int = 5
    grace_period: int = 20


@dataclass(frozen=True)
class Nsga2Cfg:
    population: int = 50
    crossover_prob: float = 0.9
    mutation_prob: float | None = None


@dataclass(frozen=True)
class SearchRecipe:
    searcher: str = "evolution"
    name: str = ""
    description: str = ""
    max_evals: int = 1000
    max_tries: int = 1000
    batch_size: int = 256
    baseline: bool = True
    evolution: EvolutionCfg = EvolutionCfg()
    optuna: OptunaCfg = OptunaCfg()
    nsga2: Nsga2Cfg = Nsga2Cfg()
    file: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", f"search_{self.searcher}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data in the file format: only the searcher's own section."""
        d = asdict(self)
        d.pop("file")
        for s in ("evolution", "optuna", "nsga2"):
            if s != self.searcher:
                d.pop(s)
        if self.searcher == "random":
            d.pop("baseline")  # random search is its own baseline
        if not d["description"]:
            d.pop("description")
        return d

    def hash(self) -> str:
        """Identity of the search settings (not the name or description): a run refuses another hash."""
        d = self.to_dict()
        d.pop("name"), d.pop("description", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]

    def with_max_evals(self, n: int | None) -> "SearchRecipe":
        if n is None:
            return self
        if n < 1:
            raise NasError(f"--max-evals must be at least 1, got {n}")
        from dataclasses import replace
        return replace(self, max_evals=n)


def _section(root: Reader, key: str, cls: type, fields: dict[str, Any]) -> Any:
    if not root.has(key) or root.left[key].value is None:
        root.left.pop(key, None)
        return cls()
    node = root.left.pop(key)
    r = Reader(node, key).allow(*fields)
    d = cls()
    out = cls(**{k: r.take(k, parse, getattr(d, k)) for k, parse in fields.items()})
    r.done()
    return out


def _prob_or_null(n: Node) -> float | None:
    return None if n.value is None else number(0.0, 1.0)(n)


def parse_search_recipe(root: Node, name: str = "") -> SearchRecipe:
    """Validate a search recipe Node tree (see the module docstring for the keys)."""
    r = Reader(root, "a search recipe").allow("name", "description", "searcher", "max_evals", "max_tries",
                                              "batch_size", "baseline", "evolution", "optuna", "nsga2")
    searcher = r.take("searcher", one_of(*SEARCHERS), "evolution")
    for other in ("evolution", "optuna", "nsga2"):
        if other != searcher and r.has(other):
            node = r.left[other]
            raise node.error(f"section {other!r} does not apply to searcher {searcher!r}; remove it or set "
                             f"`searcher: {other}`")
    d = SearchRecipe(searcher)
    pos = integer(1, 10**9)
    out = SearchRecipe(
        searcher=searcher, name=r.take("name", text, name or d.name), description=r.take("description", text, ""),
        max_evals=r.take("max_evals", pos, d.max_evals), max_tries=r.take("max_tries", pos, d.max_tries),
        batch_size=r.take("batch_size", pos, d.batch_size), baseline=r.take("baseline", boolean, d.baseline),
        evolution=_section(r, "evolution", EvolutionCfg, {
            "population": integer(2, 10**6), "generations": pos, "parents": pos, "mutations": integer(0, 10**6),
            "crossovers": integer(0, 10**6), "mutation_prob": number(0.0, 1.0, lo_open=True)}),
        optuna=_section(r, "optuna", OptunaCfg, {
            "n_startup_trials": integer(0, 10**6), "multivariate": boolean, "heartbeat_interval": pos,
            "grace_period": pos}),
        nsga2=_section(r, "nsga2", Nsga2Cfg, {
            "population": integer(2, 10**6), "crossover_prob": number(0.0, 1.0), "mutation_prob": _prob_or_null}),
        file=root.file)
    r.done()
    ev = out.evolution
    if ev.parents > ev.population:
        raise NasError(f"parents {ev.parents} must not exceed the population {ev.population}",
                       file=root.file, key="evolution.parents")
    if ev.mutations + ev.crossovers > ev.population:
        raise NasError(f"mutations + crossovers = {ev.mutations + ev.crossovers} must not exceed the population "
                       f"{ev.population} (children replace the population each generation)",
                       file=root.file, key="evolution.mutations")
    if out.optuna.grace_period <= out.optuna.heartbeat_interval:
        raise NasError(f"grace_period {out.optuna.grace_period} must exceed heartbeat_interval "
                       f"{out.optuna.heartbeat_interval} (Optuna's rule)", file=root.file, key="optuna.grace_period")
    return out


def load_search_recipe(path: str | os.PathLike | None, searcher: str | None = None) -> SearchRecipe:
    """Read and validate a search recipe file, or a shipped one by name (``search_optuna``; an existing path wins);
    ``None`` gives the defaults of ``searcher`` (evolution if None). A ``searcher`` that disagrees with the file's
    is an error."""
    if searcher is not None and searcher not in SEARCHERS:
        raise NasError(f"--searcher {searcher!r}: expected one of {', '.join(SEARCHERS)}")
    if path is None:
        return SearchRecipe(searcher or "evolution")
    file = find("recipe", path)
    recipe = parse_search_recipe(load_nodes(file), file.stem)
    if searcher is not None and searcher != recipe.searcher:
        raise NasError(f"--searcher {searcher} disagrees with the recipe's `searcher: {recipe.searcher}`; drop "
                       f"--searcher or use a {searcher} recipe (search_{searcher})", file=str(file))
    return recipe

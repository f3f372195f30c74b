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
    max_evals: 1..100,000          # [1000] evaluated candidates at most (one per distinct arch; nas.limits)
    max_tries: int >= 1            # [1000] draws allowed to find one new in-budget candidate (retry cap)
    batch_size: int >= 1           # [256] evaluation batch size
    baseline: bool                 # [true] also score the best of max_evals random candidates (not for random)
    evolution: {population [50], generations [20], parents [10], mutations [25], crossovers [25],
                mutation_prob [0.1]}
    optuna:    {n_startup_trials [10], multivariate [true], heartbeat_interval [5], grace_period [20]}
    nsga2:     {population [50], crossover_prob [0.9], mutation_prob [null = 1 / number of dimensions]}

Only the section of the recipe's searcher is allowed: the section is the searcher's registered settings
(``nas.search.searchers``), parsed by the keys and rules its dataclass declares.

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
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from nas.errors import NasError
from nas.limits import MAX_EVALS
from nas.search.searchers import SEARCHERS, searcher as registered
from nas.shipped import find
from nas.space.schema import Reader, boolean, integer, one_of, text
from nas.space.yamlnodes import Node, load_nodes


@dataclass(frozen=True)
class SearchRecipe:
    """How to search; ``settings`` is the searcher's section (its registered dataclass; None for a searcher
    without one), filled with its defaults when not given."""
    searcher: str = "evolution"
    name: str = ""
    description: str = ""
    max_evals: int = 1000
    max_tries: int = 1000
    batch_size: int = 256
    baseline: bool = True
    settings: Any = None
    file: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        kind = registered(self.searcher).settings
        if self.settings is None and kind is not None:
            object.__setattr__(self, "settings", kind())
        elif kind is None and self.settings is not None or kind is not None and not isinstance(self.settings, kind):
            raise NasError(f"settings of searcher {self.searcher!r}: expected {getattr(kind, '__name__', None)}, "
                           f"got {type(self.settings).__name__}")
        if not self.name:
            object.__setattr__(self, "name", f"search_{self.searcher}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data in the file format: the searcher's own section under its name."""
        d = {k: getattr(self, k) for k in ("searcher", "name", "description", "max_evals", "max_tries",
                                           "batch_size", "baseline")}
        if self.settings is not None:
            d[self.searcher] = asdict(self.settings)
        if not registered(self.searcher).baseline:
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
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_EVALS:
            raise NasError(f"--max-evals must be an integer in [1, {MAX_EVALS:,}], got {n!r}")
        return replace(self, max_evals=n)

    def planned_evals(self) -> int:
        """How many candidates the search evaluates (fewer only when the space runs out of new ones)."""
        return registered(self.searcher).planned(self.settings, self.max_evals)


def _section(r: Reader, key: str, kind: type | None, file: str | None) -> Any:
    """The searcher's section ``key`` parsed into ``kind`` (its defaults when absent or null)."""
    if kind is None:
        return None
    if not r.has(key) or r.left[key].value is None:
        r.left.pop(key, None)
        return kind()
    sr = Reader(r.left.pop(key), key).allow(*kind.FIELDS)
    d = kind()
    out = kind(**{k: sr.take(k, parse, getattr(d, k)) for k, parse in kind.FIELDS.items()})
    sr.done()
    broken = out.check() if hasattr(out, "check") else None
    if broken is not None:
        raise NasError(broken[1], file=file, key=f"{key}.{broken[0]}")
    return out


def parse_search_recipe(root: Node, name: str = "") -> SearchRecipe:
    """Validate a search recipe Node tree (see the module docstring for the keys)."""
    sections = [n for n, s in SEARCHERS.items() if s.settings is not None]
    r = Reader(root, "a search recipe").allow("name", "description", "searcher", "max_evals", "max_tries",
                                              "batch_size", "baseline", *sections)
    searcher = r.take("searcher", one_of(*SEARCHERS), "evolution")
    for other in sections:
        if other != searcher and r.has(other):
            raise r.left[other].error(f"section {other!r} does not apply to searcher {searcher!r}; remove it or "
                                      f"set `searcher: {other}`")
    d = SearchRecipe(searcher)
    pos = integer(1, 10**9)
    out = SearchRecipe(
        searcher=searcher, name=r.take("name", text, name or d.name), description=r.take("description", text, ""),
        max_evals=r.take("max_evals", integer(1, MAX_EVALS), d.max_evals),
        max_tries=r.take("max_tries", pos, d.max_tries),
        batch_size=r.take("batch_size", pos, d.batch_size), baseline=r.take("baseline", boolean, d.baseline),
        settings=_section(r, searcher, SEARCHERS[searcher].settings, root.file), file=root.file)
    r.done()
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

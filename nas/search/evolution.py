"""Evolutionary search as in SPOS (arXiv:1904.00420, section 3.4) and AutoFormer (arXiv:2107.00651).

Generation 0 is ``population`` random archs inside the budget. Each generation is scored; the ``parents``
best feasible candidates seen so far become parents; the next generation is ``mutations`` children by
mutation (each dimension re-drawn with probability ``mutation_prob``) of a random parent, ``crossovers``
children by uniform crossover of two random parents, topped up with random archs. Every candidate is new
(never proposed before in this search) and passes the budget check on its target arch before evaluation;
``max_tries`` draws are allowed per candidate. With the defaults, 20 generations of 50 = 1,000 evaluations.

Same seed, same search: every random decision comes from one ``random.Random`` seeded by the search seed,
and the only other input is the scores, which a resumed run reads back exactly from the history. So a
resumed evolution replays the uninterrupted one, candidate for candidate.

Decisions where the papers are silent:

- Parents are the top candidates over all generations so far (SPOS keeps a global top-k), ranked by the
  evaluator's objective (top-1 unless the evaluator defines a finer one), then top-1, loss, fewer MACs, hash.
- When a generation cannot be filled within ``max_tries`` draws per candidate (a small or tight space), the
  search goes on with a smaller generation; when generation 0 gets no candidate at all, it stops with a
  ``NasError`` naming the budget.
- With a single parent, crossover children are replaced by random ones.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from nas.arch import Arch
from nas.errors import NasError
from nas.search.history import Candidate, rank_key
from nas.search.objective import Objective
from nas.space.schema import integer, number


@dataclass(frozen=True)
class EvolutionCfg:
    """The ``evolution:`` section of a search recipe (SPOS / AutoFormer defaults: 1,000 evaluations)."""
    population: int = 50
    generations: int = 20
    parents: int = 10
    mutations: int = 25
    crossovers: int = 25
    mutation_prob: float = 0.1

    FIELDS: ClassVar[dict[str, Callable[[Any], Any]]] = {
        "population": integer(2, 10**6), "generations": integer(1, 10**9), "parents": integer(1, 10**9),
        "mutations": integer(0, 10**6), "crossovers": integer(0, 10**6),
        "mutation_prob": number(0.0, 1.0, lo_open=True)}

    def check(self) -> tuple[str, str] | None:
        """The first rule between keys that fails, as (key, message); None when all hold."""
        if self.parents > self.population:
            return "parents", f"parents {self.parents} must not exceed the population {self.population}"
        if self.mutations + self.crossovers > self.population:
            return "mutations", (f"mutations + crossovers = {self.mutations + self.crossovers} must not exceed the "
                                 f"population {self.population} (children replace the population each generation)")
        return None

    def planned(self, max_evals: int) -> int:
        """How many candidates the evolution evaluates under ``max_evals``."""
        return min(max_evals, self.population * self.generations)


def no_candidate_error(obj: Objective, max_tries: int) -> NasError:
    return NasError(f"no arch of space {obj.space.name!r} met the budget ({obj.budget.describe()}) in {max_tries} "
                    f"random draws; widen the budget or raise max_tries in the search recipe")


def evolution(obj: Objective, cfg: EvolutionCfg, max_tries: int, seed: int) -> None:
    """Run the evolution until ``cfg.generations`` generations or ``obj.max_evals`` evaluations."""
    rng = random.Random(f"{seed}|evolution")
    space = obj.space

    def fill(pop: list[Arch], n: int) -> list[Arch]:
        while len(pop) < n:
            arch = obj.propose(lambda: space.sample(rng), max_tries)
            if arch is None:
                break
            pop.append(arch)
        return pop

    population = fill([], cfg.population)
    if not population:
        raise no_candidate_error(obj, max_tries)
    scored: list[tuple[Arch, Candidate]] = []
    for gen in range(cfg.generations):
        room = max(0, obj.max_evals - len(obj.requested))
        batch = population[:room]  # the whole generation at once: in parallel where the evaluator can
        scored += zip(batch, obj.evaluate_many(batch, gen))
        if len(batch) < len(population) or gen == cfg.generations - 1:
            return
        parents = [a for a, c in sorted((p for p in scored if p[1].feasible), key=lambda p: rank_key(p[1]))
                   [:cfg.parents]]
        children: list[Arch] = []
        if parents:
            for _ in range(cfg.mutations):
                child = obj.propose(lambda: space.mutate(rng.choice(parents), cfg.mutation_prob, rng), max_tries)
                if child is not None:
                    children.append(child)
            if len(parents) > 1:
                for _ in range(cfg.crossovers):
                    child = obj.propose(lambda: space.crossover(*rng.sample(parents, 2), rng), max_tries)
                    if child is not None:
                        children.append(child)
        population = fill(children, cfg.population)
        if not population:
            return  # nothing new left within the budget

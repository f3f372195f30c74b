"""Random search: the baseline every searcher is compared with, at the same number of evaluations.

Uniform samples of the space (``SearchSpace.sample``), each new and inside the budget (``max_tries`` draws per
candidate), scored in order. Seeded like evolution, so a resumed run replays the same candidates.
"""
from __future__ import annotations

import random

from nas.search.evolution import no_candidate_error
from nas.search.objective import Objective


def random_search(obj: Objective, max_tries: int, seed: int) -> None:
    """Score new in-budget uniform samples until ``obj.max_evals`` or the space runs out of new ones."""
    rng = random.Random(f"{seed}|random")
    i = 0
    while not obj.exhausted:
        arch = obj.propose(lambda: obj.space.sample(rng), max_tries)
        if arch is None:
            if i == 0:
                raise no_candidate_error(obj, max_tries)
            return
        obj(arch, i)
        i += 1

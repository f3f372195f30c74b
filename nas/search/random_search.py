"""Random search: the baseline every searcher is compared with, at the same number of evaluations.

Uniform samples of the space (``SearchSpace.sample``), each new and inside the budget (``max_tries`` draws per
candidate), scored in order. Seeded like evolution, so a resumed run replays the same candidates.
"""
from __future__ import annotations

import random

from nas.search.evolution import no_candidate_error
from nas.search.objective import Objective

BATCH_PER_WORKER = 4
"""Candidates drawn per worker before their scores are awaited (keeps every Ray actor busy while the ragged
end of a batch finishes)."""


def random_search(obj: Objective, max_tries: int, seed: int) -> None:
    """Score new in-budget uniform samples until ``obj.max_evals`` or the space runs out of new ones."""
    rng = random.Random(f"{seed}|random")
    i = 0
    while not obj.exhausted:
        # a batch of a few evaluations per worker (one at a time in this process): the draws do not depend on
        # the scores, so the candidates and their order are the same whatever the batch
        room = min(obj.max_evals - len(obj.requested), BATCH_PER_WORKER * obj.parallelism)
        batch = []
        while len(batch) < room:
            arch = obj.propose(lambda: obj.space.sample(rng), max_tries)
            if arch is None:
                break
            batch.append(arch)
        if not batch and i == 0:
            raise no_candidate_error(obj, max_tries)
        obj.evaluate_many(batch, range(i, i + len(batch)))
        i += len(batch)
        if len(batch) < room:
            return

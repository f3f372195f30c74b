"""Candidate evaluation throughput on Ray: in this process, 1 actor and 2 actors side by side in one run.

    .venv/bin/python benchmarks/ray_eval.py [-n 24] [--rounds 2] [--workers 1 2]

The setting is the main job's: ``spaces/psvit_tiny.yaml`` at the CPU recipe's proxy scale
(``recipes/cpu_supernet.yaml``: 32x32, patch 8, narrow widths) and its search split of the built-in MNIST
data (half of the training images held out). The supernet keeps its seeded initial weights:
how fast an arch is scored does not depend on what the weights are. Candidates are random archs of the space
as written, mapped to the proxy, scored exactly as ``nas search`` scores them (``nas.supernet.scoring.Evaluator``).

The ``in-process`` row is the local search (one ``Evaluator`` in this process); the others are
``nas.distributed.evaluation.ActorEvaluators`` on a local Ray instance (``ray_cluster('local')``, with one
logical CPU per actor of all settings, since all stay alive and idle while another setting runs): the
weights and the split put in the object store once, the candidates sent through ``ray.util.ActorPool``. Each round scores ``-n`` new candidates per setting (the evaluators cache by
arch), after a warm-up that starts the actors; the settings take turns round by round so that load from other
processes hits them alike. Printed: candidates per second (median over rounds) and the ratio to 1 actor, and
a check that every setting produced the same scores.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=24, help="candidates per setting and round (default 24)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="actor counts (default 1 2)")
    args = ap.parse_args()

    import torch

    from nas.data import load_data
    from nas.distributed import ray_cluster
    from nas.distributed.evaluation import ActorEvaluators
    from nas.supernet.scoring import Evaluator
    from nas.space import load_space
    from nas.space.proxy import to_proxy
    from nas.supernet import Supernet
    from nas.train.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "cpu_supernet.yaml")
    target = load_space(REPO / "spaces" / "psvit_tiny.yaml")
    proxy = load_space(REPO / "spaces" / "psvit_tiny.yaml", overrides=recipe.space_overrides)
    t = proxy.template()
    splits = load_data("builtin", t["input"]["size"], t["input"]["channels"], holdout=recipe.data.holdout)
    proxy = load_space(REPO / "spaces" / "psvit_tiny.yaml",
                       overrides={**recipe.space_overrides, "num_classes": splits.num_classes})
    torch.manual_seed(0)
    supernet = Supernet(proxy).eval()
    batch = 256
    local = {s: Evaluator(supernet, splits, s, batch_size=batch) for s in ("search", "val")}
    rng = random.Random(0)
    draws = iter(lambda: to_proxy(target.sample(rng), target, proxy), None)
    warm = [next(draws) for _ in range(max(args.workers))]

    settings = ["in-process", *(f"{w} actor{'s' if w > 1 else ''}" for w in args.workers)]
    rates: dict[str, list[float]] = {s: [] for s in settings}
    scores: dict[str, dict[str, float]] = {s: {} for s in settings}
    # every pool's actors live through the whole run (the settings take turns), each asking for one CPU: the
    # instance gets that many logical CPUs, though only one pool computes at a time
    with ray_cluster("local", num_cpus=sum(args.workers)) as ray:
        pools = {f"{w} actor{'s' if w > 1 else ''}": ActorEvaluators(supernet, local, num_workers=w, batch_size=batch)
                 for w in args.workers}
        for pool in pools.values():
            list(pool.map(warm))  # actors up, first forward done
        [local["search"](a) for a in warm]  # the same first-call work in this process
        for _ in range(args.rounds):
            cands = [next(draws) for _ in range(args.n)]
            for name in settings:
                t0 = time.perf_counter()
                if name == "in-process":
                    evs = [local["search"](a) for a in cands]
                else:
                    evs = list(pools[name].map(cands))
                rates[name].append(len(cands) / (time.perf_counter() - t0))
                scores[name].update({e.arch_hash: e.loss for e in evs})
        info = ray.cluster_resources()
    same = all(scores[s] == scores["in-process"] for s in settings)
    print(f"{os.cpu_count()} cores (Ray: {info.get('CPU', 0):g} logical CPUs), torch threads in this process "
          f"{torch.get_num_threads()}, search split {local['search'].num_images} images, batch {batch}, "
          f"{args.rounds} rounds x {args.n} candidates")
    base = statistics.median(rates[settings[1]]) if len(settings) > 1 else 1.0
    print(f"{'setting':12s} {'candidates/s':>13s} {'vs 1 actor':>11s}")
    for name in settings:
        r = statistics.median(rates[name])
        print(f"{name:12s} {r:13.2f} {r / base:10.2f}x")
    print(f"same scores in every setting: {same}")


if __name__ == "__main__":
    main()

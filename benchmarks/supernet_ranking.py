"""Does the CPU supernet rank subnets? Inherited accuracy and split-half rank agreement of random subnets.

    OMP_NUM_THREADS=2 python benchmarks/supernet_ranking.py                # recipes/cpu_supernet.yaml, 30 subnets
    OMP_NUM_THREADS=2 python benchmarks/supernet_ranking.py --recipe recipes/demo.yaml --out runs/rank-demo

1. Trains (or, when ``--out`` already holds the finished run, reuses) a supernet of ``spaces/psvit_tiny.yaml``
   with the recipe on the built-in data.
2. Draws ``-n`` random archs of the space as written and maps each to the recipe's proxy (``nas.space.proxy``).
3. Scores each with inherited weights (``nas.supernet.scoring.Evaluator.per_image``) on ``val`` (the inherited
   accuracy) and on every image of the ``search`` split.
4. Prints the mean / min / max inherited val top-1; the Spearman rank correlation between the rankings of the
   subnets on two disjoint halves of the search split, for top-1, for the loss and for the search's ranking
   key (``Evaluation.objective``), on the first of ``--partitions`` seeded random partitions and
   averaged over all of them; and how well the ranking on the whole search split predicts the val ranking.
5. Trains the first ``--standalone`` of the same subnets alone with the same recipe (the space with every
   dimension fixed to the subnet's value: a one-path supernet is plain training) and prints their val top-1
   next to the inherited one.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import random
import sys
import time
from pathlib import Path
from statistics import mean

import torch
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.arch import Arch  # noqa: E402
from nas.space import load_space  # noqa: E402
from nas.space.proxy import to_proxy  # noqa: E402
from nas.supernet.run import load_supernet_run  # noqa: E402
from nas.supernet.scoring import Evaluator, evaluation  # noqa: E402
from nas.train import load_recipe, train_supernet  # noqa: E402


def fixed_overrides(arch: Arch) -> dict:
    """Space overrides that pin every stage of a PSViT-like space to ``arch``'s values."""
    out = {}
    for s, st in enumerate(arch.stages):
        out.update({f"stages[{s}].dim": st.dim, f"stages[{s}].heads": st.heads,
                    f"stages[{s}].mlp_ratio": st.mlp_ratio, f"stages[{s}].cells": list(st.cells)})
    return out


def partitions(n: int, k: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``k`` seeded random partitions of ``range(n)`` into two halves."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(k):
        order = torch.randperm(n, generator=g)
        out.append((order[: n // 2], order[n // 2:]))
    return out


KEYS = {  # ranking keys of an Evaluation: higher is better
    "top-1": lambda e: e.score,
    "loss (negated)": lambda e: -e.loss,
    "Evaluation.objective": lambda e: e.objective,  # what the searchers maximise
}


def rho(a: list[float], b: list[float]) -> float:
    return float(spearmanr(a, b)[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--space", default=str(ROOT / "spaces" / "psvit_tiny.yaml"))
    p.add_argument("--recipe", default=str(ROOT / "recipes" / "cpu_supernet.yaml"))
    p.add_argument("--data", default="builtin")
    p.add_argument("--out", default="runs/bench-supernet-ranking", help="folder for the supernet and standalone runs")
    p.add_argument("-n", type=int, default=30, help="random subnets (default 30)")
    p.add_argument("--standalone", type=int, default=3, help="of them trained alone (default 3)")
    p.add_argument("--seed", type=int, default=0, help="which subnets are drawn and how the halves are split")
    p.add_argument("--partitions", type=int, default=20, help="random half/half partitions averaged (default 20)")
    args = p.parse_args()
    out = Path(args.out)
    rc = load_recipe(args.recipe)

    t0 = time.perf_counter()
    r = train_supernet(args.space, data=args.data, recipe=rc, out=out / "supernet", progress=False)
    print(f"supernet: {r.steps} steps over {r.epochs} epochs; this call {r.seconds:.0f} s, "
          f"{r.images_per_s:.0f} img/s" + (" (already trained: reused)" if r.images_per_s == 0 else ""))
    run = load_supernet_run(out / "supernet")
    target = load_space(args.space)
    rng = random.Random(args.seed)
    archs = [target.sample(rng) for _ in range(args.n)]
    proxies = [to_proxy(a, target, run.space) for a in archs]

    splits = run.splits()
    val = Evaluator(run.supernet, splits, "val")
    search = Evaluator(run.supernet, splits, "search")
    t1 = time.perf_counter()
    on_val = [val.per_image(a) for a in proxies]
    t2 = time.perf_counter()
    on_search = [search.per_image(a) for a in proxies]
    per_eval = (time.perf_counter() - t2) / len(proxies)
    print(f"scored {args.n} subnets on val ({val.num_images} images) and search ({search.num_images} images) in "
          f"{time.perf_counter() - t1:.1f} s: {per_eval:.3f} s per search-split evaluation "
          f"({search.num_images / per_eval:.0f} img/s)")

    v = [float(o.correct.double().mean()) for o in on_val]
    print(f"inherited val top-1: mean {mean(v):.4f}  min {min(v):.4f}  max {max(v):.4f}")
    parts = partitions(search.num_images, args.partitions, args.seed)
    print(f"Spearman of the {args.n} subnets ranked on two disjoint halves of the search split "
          f"({len(parts[0][0])} + {len(parts[0][1])} images; first partition, mean over {len(parts)} random "
          f"partitions), and ranked on the whole search split against val:")
    for name, key in KEYS.items():
        halves = [rho([key(evaluation(x, o.subset(a))) for x, o in zip(proxies, on_search)],
                      [key(evaluation(x, o.subset(b))) for x, o in zip(proxies, on_search)]) for a, b in parts]
        whole = [key(evaluation(x, o)) for x, o in zip(proxies, on_search)]
        same = rho(whole, [key(evaluation(x, o)) for x, o in zip(proxies, on_val)])
        print(f"  {name:<22} halves {halves[0]:+.3f} (mean {mean(halves):+.3f})   search vs val top-1 "
              f"{rho(whole, v):+.3f}   search vs val, same key {same:+.3f}")

    if args.standalone:
        print(f"standalone (trained alone with the same recipe) vs inherited val top-1, first {args.standalone}:")
    for i, (arch, proxy) in enumerate(zip(archs[: args.standalone], proxies)):
        alone_rc = dataclasses.replace(rc, space_overrides={**rc.space_overrides, **fixed_overrides(proxy)})
        t = time.perf_counter()
        train_supernet(args.space, data=args.data, recipe=alone_rc, out=out / f"standalone-{proxy.hash()}",
                       progress=False)
        alone = load_supernet_run(out / f"standalone-{proxy.hash()}")
        (only,) = [alone.space.decode([])]
        e = Evaluator(alone.supernet, alone.splits(), "val")(only)
        print(f"  subnet {i} ({proxy.hash()}, {sum(c != 'identity' for _, _, c in proxy.cells())} cells, "
              f"{e.params / 1e6:.2f}M params): standalone {e.score:.4f}  inherited {v[i]:.4f}"
              f"  ({time.perf_counter() - t:.0f} s)")
    print(f"total {time.perf_counter() - t0:.0f} s on {torch.get_num_threads()} threads "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")


if __name__ == "__main__":
    main()

"""The MACs winner against the latency winner at a matched budget: what does a latency budget choose that MACs hide?

Takes two finished ``nas search`` runs on the same supernet: one under a MACs budget (the main job, ``--flops
1.3G``) and one under a latency budget set to the MACs winner's predicted latency (``--latency X
--latency-table FILE``).

1. The two winners: target MACs and params, the latency the table predicts and the latency measured here (both
   models timed round-robin in ``--rounds`` rounds, ``--reps`` runs each in all, after ``--burn-in`` seconds of
   load, each model's figure the median of its fastest round as in the table; the ratio's 95% CI is a bootstrap
   over the rounds), what they chose (per stage: width, heads, MLP ratio, and how many basic cells, shared pairs
   and identities), and their val top-1 and loss with the supernet's inherited weights, paired on the same
   images (``nas.stats.paired_difference``). When both searches pick the same arch, that is the result.
2. The two budgets' feasible sets, on ``--samples`` random archs of the space (prediction only): how many meet
   one budget and not the other, and what those archs chose: the mean count of each cell kind per stage and the
   share of each width, heads and MLP value, with 95% bootstrap CIs of the difference between the two sets.

    .venv/bin/python benchmarks/latency_vs_macs.py runs/psvit_tiny-search-1.3G-evolution-s0 \\
        runs/psvit_tiny-search-28.9ms-evolution-s0 --table runs/latency/psvit_tiny-cpu.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.cost import cost  # noqa: E402
from nas.errors import NasError, exit_with  # noqa: E402
from nas.latency import load_table  # noqa: E402
from nas.latency.timing import burn_in, model_calls, raw_times, threads_set  # noqa: E402
from nas.space import load_arch, load_space  # noqa: E402
from nas.space.schema import human  # noqa: E402
from nas.stats import difference, paired_difference  # noqa: E402
from nas.supernet.run import load_supernet_run  # noqa: E402


def shape(arch) -> str:
    """'192/3/4.0 b2 s3 i1 | ...': per stage width/heads/MLP ratio and its cell kinds counted."""
    return " | ".join(f"{st.dim}/{st.heads}/{st.mlp_ratio:g} b{st.cells.count('basic')} "
                      f"s{st.cells.count('shared_pair')} i{st.cells.count('identity')}" for st in arch.stages)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("macs_run")
    ap.add_argument("latency_run")
    ap.add_argument("--table", required=True)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--burn-in", type=float, default=15.0)
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--json", default=str(ROOT / "docs" / "evidence" / "latency_vs_macs.json"))
    args = ap.parse_args()
    table = load_table(args.table)
    runs = {"MACs winner": Path(args.macs_run), "latency winner": Path(args.latency_run)}
    archs = {k: load_arch(r / "best.yaml") for k, r in runs.items()}
    sup = [json.loads((r / "run.json").read_text())["train"].get("supernet") or str((r / "supernet").resolve())
           for r in runs.values()]  # --supernet, else the one trained into the run
    if len(set(sup)) != 1:
        raise NasError(f"the two runs must search one supernet (the second with --supernet); they used {sup}")

    # accuracy with inherited weights, paired on the val images
    sr = load_supernet_run(sup[0])
    ev = sr.evaluator("val")
    proxies = {k: load_arch(r / "best.proxy.yaml") if (r / "best.proxy.yaml").exists() else archs[k]
               for k, r in runs.items()}
    per = {k: ev.per_image(a) for k, a in proxies.items()}
    a, b = per["latency winner"], per["MACs winner"]
    same = archs["latency winner"] == archs["MACs winner"]
    top1 = None if same else paired_difference(a.correct.double().numpy(), b.correct.double().numpy(), "top1")
    loss = None if same else paired_difference(a.loss.numpy(), b.loss.numpy(), "loss")

    # latency, measured round-robin
    with threads_set(args.threads):
        burn_in(args.burn_in)
        times = {k: [] for k in archs}  # per round, the median of its runs
        per_round = max(1, args.reps // args.rounds)
        for _ in range(args.rounds):
            for k, arch in archs.items():  # built afresh for its turn, as the table and `nas latency` do
                times[k].append(statistics.median(raw_times(model_calls(arch, torch.device("cpu"), 1, 0),
                                                            torch.device("cpu"), 3, per_round)))
    rng = np.random.default_rng(0)
    ta, tb = np.array(times["latency winner"]), np.array(times["MACs winner"])
    boot = [rng.choice(ta, len(ta)).min() / rng.choice(tb, len(tb)).min() for _ in range(9999)]
    ratio, lo, hi = float(ta.min() / tb.min()), *np.percentile(boot, [2.5, 97.5])

    rows = {}
    print(f"MACs winner against latency winner, {table.describe()}, table {table.file}")
    for k, arch in archs.items():
        c = cost(arch)
        rows[k] = {"run": str(runs[k]), "arch": arch.hash(), "macs": c.macs, "params": c.params,
                   "predicted_ms": table.predict(arch), "measured_ms": min(times[k]), "rounds_ms": times[k],
                   "shape": shape(arch), "val_top1": float(per[k].correct.double().mean()),
                   "val_loss": float(per[k].loss.mean())}
        r = rows[k]
        print(f"  {k:<15} {r['arch']}  {human(c.macs)} MACs  {human(c.params)} params  predicted "
              f"{r['predicted_ms']:.2f} ms  measured {r['measured_ms']:.2f} ms  val top-1 {r['val_top1']:.4f} "
              f"loss {r['val_loss']:.4f}\n  {'':<15} {r['shape']}")
    if same:
        print("  both searches chose the same arch: at this matched budget the latency budget changes nothing")
    else:
        print(f"  latency winner / MACs winner, measured: {ratio:.3f} [{lo:.3f}, {hi:.3f}] (95% CI, bootstrap over "
              f"the {args.rounds} interleaved rounds)")
        print(f"  latency winner - MACs winner, val ({len(a.loss):,} images, paired): top-1 "
              f"{top1.describe(100, ' points')}; loss {loss.describe()}")
    sets = feasible_sets(load_space(json.loads((runs["MACs winner"] / "run.json").read_text())["space"]["file"]),
                         table, json.loads((runs["MACs winner"] / "run.json").read_text())["budget"]["macs"][1],
                         json.loads((runs["latency winner"] / "run.json").read_text())["budget"]["latency_ms"][1],
                         args.samples)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"environment": table.environment, "table": str(table.file), "winners": rows,
                               "same_winner": same, "measured_ratio": [ratio, float(lo), float(hi)],
                               "val_top1": None if same else top1.to_json(),
                               "val_loss": None if same else loss.to_json(), "feasible_sets": sets},
                              indent=1) + "\n")
    print(f"  {out}")
    return 0


def features(arch) -> dict[str, float]:
    """What an arch chose, as numbers: per stage the count of each cell kind, and each searchable value's flag."""
    out = {}
    for s, st in enumerate(arch.stages):
        for kind in ("basic", "shared_pair", "identity"):
            out[f"stage {s} {kind}"] = st.cells.count(kind)
    out["stage 1 dim 288"] = float(arch.stages[1].dim == 288)
    out["stage 1 heads 8"] = float(arch.stages[1].heads == 8)
    out["stage 2 mlp 4"] = float(arch.stages[2].mlp_ratio == 4.0)
    return out


def feasible_sets(space, table, macs_hi: int, ms_hi: float, n: int) -> dict:
    """On ``n`` random archs: those within the MACs budget but not the latency one, and the reverse, and how
    their choices differ (mean of each feature in each set, the difference with its 95% bootstrap CI and
    permutation p, ``nas.stats.difference``)."""
    only_macs, only_ms, both = [], [], 0
    for a in (space.sample(f"lat-vs-macs|{i}") for i in range(n)):
        m_ok, t_ok = cost(a).macs <= macs_hi, table.predict(a) <= ms_hi
        both += m_ok and t_ok
        if m_ok != t_ok:
            (only_macs if m_ok else only_ms).append(features(a))
    print(f"  {n:,} random archs: {both:,} meet both budgets, {len(only_macs):,} only MACs <= {human(macs_hi)}, "
          f"{len(only_ms):,} only latency <= {ms_hi:g} ms")
    diffs = {}
    if only_macs and only_ms:
        print("  what the archs that meet only the latency budget chose, against those that meet only the MACs one "
              "(mean, difference with 95% bootstrap CI and permutation p):")
        for key in only_macs[0]:
            x, y = [f[key] for f in only_ms], [f[key] for f in only_macs]
            d = difference(x, y)
            diffs[key] = {"only_latency": float(np.mean(x)), "only_macs": float(np.mean(y)), **d.to_json()}
            print(f"    {key:<22} {np.mean(x):5.2f} against {np.mean(y):5.2f}: {d.describe()}")
    return {"samples": n, "both": int(both), "only_macs": len(only_macs), "only_latency": len(only_ms),
            "features": diffs}


if __name__ == "__main__":
    exit_with(main)

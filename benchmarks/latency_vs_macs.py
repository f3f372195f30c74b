"""The MACs winner against the latency winner at a matched budget: what does a latency budget choose that MACs hide?

Takes two finished ``nas search`` runs on the same supernet: one under a MACs budget (the main job, ``--flops
1.3G``) and one under a latency budget set to the MACs winner's predicted latency (``--latency X
--latency-table FILE``). For both winners it prints the target MACs and params, the latency the table predicts
and the latency measured here (both models timed round-robin in ``--rounds`` rounds, ``--reps`` runs each in all,
after ``--burn-in`` seconds of load; the ratio's 95% CI is a bootstrap over the timed runs), what they chose
(per stage: width, heads, MLP ratio, and how many basic cells, shared pairs and identities), and their val top-1
and loss with the supernet's inherited weights, paired on the same images (``nas.stats.paired_difference``).

    .venv/bin/python benchmarks/latency_vs_macs.py runs/psvit_tiny-search-1.3G-evolution-s0 \\
        runs/psvit_tiny-search-32.8ms-evolution-s0 --table runs/latency/psvit_tiny-cpu.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.cost import cost  # noqa: E402
from nas.errors import NasError, exit_with  # noqa: E402
from nas.latency import load_table  # noqa: E402
from nas.latency.timing import raw_times, threads_set  # noqa: E402
from nas.models import build_model  # noqa: E402
from nas.space import load_arch  # noqa: E402
from nas.space.schema import human  # noqa: E402
from nas.stats import paired_difference  # noqa: E402
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
    ap.add_argument("--json", default=str(ROOT / "docs" / "evidence" / "latency_vs_macs.json"))
    args = ap.parse_args()
    table = load_table(args.table)
    runs = {"MACs winner": Path(args.macs_run), "latency winner": Path(args.latency_run)}
    archs = {k: load_arch(r / "best.yaml") for k, r in runs.items()}
    sup = [json.loads((r / "run.json").read_text())["train"].get("supernet") for r in runs.values()]
    if len(set(sup)) != 1 or sup[0] is None:
        raise NasError(f"the two runs must search one supernet (--supernet); run.json says {sup}")

    # accuracy with inherited weights, paired on the val images
    sr = load_supernet_run(sup[0])
    ev = sr.evaluator("val")
    proxies = {k: load_arch(r / "best.proxy.yaml") if (r / "best.proxy.yaml").exists() else archs[k]
               for k, r in runs.items()}
    per = {k: ev.per_image(a) for k, a in proxies.items()}
    a, b = per["latency winner"], per["MACs winner"]
    top1 = paired_difference(a.correct.double().numpy(), b.correct.double().numpy(), "top1")
    loss = paired_difference(a.loss.numpy(), b.loss.numpy(), "loss")

    # latency, measured round-robin
    t0 = time.time()
    with threads_set(args.threads):
        x = torch.randn(1, 3, 224, 224)
        w = torch.randn(512, 512)
        while time.time() - t0 < args.burn_in:
            w @ w
        models = {k: build_model(arch).eval() for k, arch in archs.items()}
        times = {k: [] for k in archs}
        per_round = max(1, args.reps // args.rounds)
        for _ in range(args.rounds):
            for k, m in models.items():
                times[k] += raw_times([lambda m=m: m(x)], torch.device("cpu"), 3, per_round)
    rng = np.random.default_rng(0)
    ta, tb = np.array(times["latency winner"]), np.array(times["MACs winner"])
    boot = [np.median(rng.choice(ta, len(ta))) / np.median(rng.choice(tb, len(tb))) for _ in range(9999)]
    ratio, lo, hi = float(np.median(ta) / np.median(tb)), *np.percentile(boot, [2.5, 97.5])

    rows = {}
    print(f"MACs winner against latency winner, {table.describe()}, table {table.file}")
    for k, arch in archs.items():
        c = cost(arch)
        rows[k] = {"run": str(runs[k]), "arch": arch.hash(), "macs": c.macs, "params": c.params,
                   "predicted_ms": table.predict(arch), "measured_ms": statistics.median(times[k]),
                   "shape": shape(arch), "val_top1": float(per[k].correct.double().mean()),
                   "val_loss": float(per[k].loss.mean())}
        r = rows[k]
        print(f"  {k:<15} {r['arch']}  {human(c.macs)} MACs  {human(c.params)} params  predicted "
              f"{r['predicted_ms']:.2f} ms  measured {r['measured_ms']:.2f} ms  val top-1 {r['val_top1']:.4f} "
              f"loss {r['val_loss']:.4f}\n  {'':<15} {r['shape']}")
    print(f"  latency winner / MACs winner, measured: {ratio:.3f} [{lo:.3f}, {hi:.3f}] (95% CI, bootstrap over "
          f"{len(ta)} + {len(tb)} timed runs in {args.rounds} interleaved rounds)")
    print(f"  latency winner - MACs winner, val ({len(a.loss):,} images, paired): top-1 "
          f"{top1.estimate * 100:+.1f} points [{top1.ci.low * 100:+.1f}, {top1.ci.high * 100:+.1f}], p "
          f"{top1.p:.2g}{' (within noise)' if top1.within_noise else ''}; loss {loss.estimate:+.4f} "
          f"[{loss.ci.low:+.4f}, {loss.ci.high:+.4f}], p {loss.p:.2g}{' (within noise)' if loss.within_noise else ''}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"environment": table.environment, "table": str(table.file), "winners": rows,
                               "measured_ratio": [ratio, float(lo), float(hi)], "val_top1": top1.to_json(),
                               "val_loss": loss.to_json()}, indent=1) + "\n")
    print(f"  {out}")
    return 0


if __name__ == "__main__":
    exit_with(main)

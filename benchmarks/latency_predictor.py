"""How well does a latency table predict the measured latency of whole archs? (issue: budgets in milliseconds)

Makes the table of ``--space`` (``nas latency-table``) with ``--archs`` held-out archs (``--check``: drawn after
the table's calibration archs, never used to calibrate it) timed whole in the same interleaved rounds as the
blocks, so that table and measurements see the same machine, and compares (an arch's measured latency is, like a
block's in the table, the median of its fastest round: other jobs slow whole rounds down, never speed one up):

- the predictor's relative error (predicted - measured) / measured: median and 90th percentile of its absolute
  value, each with a bootstrap 95% CI over the archs, and its mean (the bias);
- the noise floor: the median relative difference between an arch measured on its even and on its odd rounds,
  how far two measurements of one arch disagree, so how small an error can be;
- ranking: Spearman rho of predicted against measured latency with its bootstrap CI, next to the rho of MACs
  alone (the proxy the table replaces) on the same archs.

With ``--table FILE`` it makes no table: it times that table's held-out archs again, now, and compares them with
the table's predictions: how well a table made earlier predicts the machine as it is later. Before anything is
timed the CPU runs ``--burn-in`` seconds of matrix products: the first seconds of load run measurably slower
here. Writes a scatter of predicted against measured (``--png``) and every arch's figures (``--json``).

    .venv/bin/python benchmarks/latency_predictor.py                    # torch's threads (2 here)
    .venv/bin/python benchmarks/latency_predictor.py --threads 1
    .venv/bin/python benchmarks/latency_predictor.py --table runs/latency/psvit_tiny-cpu-b1-t2-check.json
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

from nas.atomic import atomic_write  # noqa: E402
from nas.cost import cost  # noqa: E402
from nas.errors import exit_with  # noqa: E402
from nas.latency import load_table, make_table  # noqa: E402
from nas.latency.timing import burn_in, check_device, model_calls, raw_times, threads_set  # noqa: E402
from nas.space import load_space, sample_distinct  # noqa: E402
from nas.stats import rank_correlation  # noqa: E402

TARGET = 0.10  # the bound on the median relative error


def bootstrap_ci(x: np.ndarray, stat, seed: int = 0, n: int = 9999) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n, len(x)))
    vals = np.array([stat(x[i]) for i in idx])
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default="spaces/psvit_tiny.yaml")
    ap.add_argument("--table", help="a table made with --check: time its held-out archs again now")
    ap.add_argument("--archs", type=int, default=50, help="held-out archs (default 50)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--reps", type=int, default=60, help="timed runs of each block and arch in all (default 60)")
    ap.add_argument("--burn-in", type=float, default=15.0)
    ap.add_argument("--png", default=None, help="default docs/img/latency_<space>_<device>_b<B>_t<T>[_later].png")
    ap.add_argument("--json", default=None,
                    help="default docs/evidence/latency_<space>_<device>_b<B>_t<T>[_later].json")
    args = ap.parse_args()
    dev = check_device(args.device)
    space = load_space(args.space)
    later = args.table is not None
    tag = f"{space.name}_{args.device}_b{args.batch}_t{args.threads}" + ("_later" if later else "")
    t0 = time.time()
    with threads_set(args.threads):
        burn_in(args.burn_in)
        if later:
            table = load_table(args.table)
            by_hash = {a.hash(): a for a in sample_distinct(space, table.protocol["calibrate"] + len(table.check),
                                                            table.protocol["seed"])}
            rows = [dict(c) for c in table.check]
            per_round = max(1, -(-args.reps // args.rounds))
            for c in rows:
                c["rounds_ms"] = []
            for r in range(args.rounds):
                for c in rows:  # built afresh each time, as `nas latency` times one model per process
                    c["rounds_ms"].append(statistics.median(raw_times(
                        model_calls(by_hash[c["arch"]], dev, args.batch, 0), dev, 3, per_round)))
                print(f"  round {r + 1}/{args.rounds} ({time.time() - t0:.0f} s)", file=sys.stderr)
            for c in rows:
                c["measured_ms"] = min(c["rounds_ms"])  # the fastest round's median, as the table keeps
        else:
            out = ROOT / "runs" / "latency" / f"{space.name}-{args.device}-b{args.batch}-t{args.threads}-check.json"
            table = make_table(args.space, out, args.device, args.batch, args.threads, rounds=args.rounds,
                               reps=args.reps, check=args.archs)
            rows = table.check
            by_hash = {a.hash(): a for a in sample_distinct(space, table.protocol["calibrate"] + len(rows),
                                                            table.protocol["seed"])}

    measured = np.array([c["measured_ms"] for c in rows])
    predicted = np.array([c["predicted_ms"] for c in rows])
    even = np.array([min(c["rounds_ms"][0::2]) for c in rows])   # two measurements of each arch, as the table's
    odd = np.array([min(c["rounds_ms"][1::2]) for c in rows])    # (fastest round), from disjoint rounds
    macs = np.array([cost(by_hash[c["arch"]]).macs for c in rows], dtype=float)
    err = (predicted - measured) / measured
    noise = np.abs(even - odd) / ((even + odd) / 2)
    med, p90 = float(np.median(np.abs(err))), float(np.percentile(np.abs(err), 90))
    med_ci = bootstrap_ci(np.abs(err), np.median)
    p90_ci = bootstrap_ci(np.abs(err), lambda v: np.percentile(v, 90))
    rho = rank_correlation(predicted, measured).rho
    rho_macs = rank_correlation(macs, measured).rho

    when = "timed again now, after the table was made" if later else "timed whole in the table's rounds"
    print(f"latency predictor, {space.name}: {len(rows)} held-out archs {when}; {table.describe()}; table "
          f"{table.file} ({len(table.entries)} blocks, fixed {table.fixed_ms:+.2f} ms from "
          f"{len(table.calibration)} archs); {time.time() - t0:.0f} s")
    print(f"  measured   {measured.min():.1f} .. {measured.max():.1f} ms (the median of the fastest of {args.rounds} "
          f"interleaved rounds, {args.reps} runs in all)")
    print(f"  |error|    median {med:.1%} [{med_ci[0]:.1%}, {med_ci[1]:.1%}], p90 {p90:.1%} "
          f"[{p90_ci[0]:.1%}, {p90_ci[1]:.1%}], max {np.abs(err).max():.1%}; mean error {err.mean():+.1%} (bias)")
    print(f"  noise      even vs odd rounds of one arch: median {np.median(noise):.1%}, p90 "
          f"{np.percentile(noise, 90):.1%}")
    print(f"  ranking    Spearman rho predicted {rho.describe()}; MACs alone {rho_macs.describe()}")
    print(f"  target     median |error| <= {TARGET:.0%}: {'met' if med <= TARGET else 'NOT met'}")

    png = Path(args.png or ROOT / "docs" / "img" / f"latency_{tag}.png")
    _plot(png, measured, predicted, f"{space.name}: {len(rows)} held-out archs, {when}\n{table.describe()}\n"
          f"median |error| {med:.1%}, p90 {p90:.1%}, Spearman {rho.value:.2f}")
    out_json = Path(args.json or ROOT / "docs" / "evidence" / f"latency_{tag}.json")
    atomic_write(out_json, (json.dumps({
        "space": space.name, "environment": table.environment, "table": str(table.file), "later": later,
        "fixed_ms": table.fixed_ms, "calibration_archs": len(table.calibration), "archs": len(rows),
        "rounds": args.rounds, "reps": args.reps, "median_abs_error": med, "median_abs_error_ci": med_ci,
        "p90_abs_error": p90, "p90_abs_error_ci": p90_ci, "mean_error": float(err.mean()),
        "noise_median": float(np.median(noise)), "spearman": rho.to_json(), "spearman_macs": rho_macs.to_json(),
        "rows": [{**c, "macs": int(m)} for c, m in zip(rows, macs)]}, indent=1) + "\n").encode())
    print(f"  {png}\n  {out_json}")
    return 0


def _plot(path: Path, measured: np.ndarray, predicted: np.ndarray, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 5.6))
    lo, hi = min(measured.min(), predicted.min()) * 0.9, max(measured.max(), predicted.max()) * 1.1
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="0.9", label="within 10%")
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="predicted = measured")
    ax.scatter(measured, predicted, s=14)
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="measured (ms: median of the fastest round)",
           ylabel="predicted (ms: the table's fixed time + its blocks)")
    ax.set_title(title, fontsize=7.5)
    ax.legend(fontsize=8, loc="upper left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    exit_with(main)

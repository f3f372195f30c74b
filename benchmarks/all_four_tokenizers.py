"""Does the all_four supernet's shared body serve all three tokenizers, or starve one? Inherited vs standalone top-1.

In ``spaces/all_four.yaml`` the tokenizer is a choice of ``patch``, ``progressive`` (PS-ViT progressive sampling)
and ``coarse_fine`` (CF-ViT, two passes); a supernet of its 32x32 proxy keeps one set of tokenizer tensors per
type but one transformer body for all three. For ``--per-type`` subnets of each type, this compares the val top-1
with weights inherited from the supernet with the val top-1 of the same subnet trained alone from scratch: a type
the shared body serves badly shows a larger gap (standalone - inherited) than the others.

    HF_HUB_OFFLINE=1 TIMM_FUSED_ATTN=0 .venv/bin/python benchmarks/all_four_tokenizers.py \\
        runs/all_four-search-1.3G-evolution-s0/supernet --per-type 3 --out runs/tokenizer-evidence

1. Draws K distinct archs of each type from the supernet's (proxy) space: ``space.sample("<seed>|0")``,
   ``"<seed>|1"``, ... in order, each kept while its type still has fewer than K.
2. Inherited: each arch scored as the search scores it (``SupernetRun.evaluator("val").model``: the supernet
   path, or for BatchNorm archs (the progressive stem) an extracted copy with BatchNorm recalibrated).
3. Standalone: each arch trained alone with the supernet's recipe (``space_overrides`` dropped, as
   ``nas rank-check`` does; ``--epochs`` replaces its epochs) into ``OUT/<type>-<i>-<hash12>/run`` (a finished
   run, with its metrics.json, is reused; an interrupted one resumes), its ``final.safetensors`` then scored on
   the same val images.
4. For coarse_fine archs also the top-1 of the coarse pass alone and of the fine pass alone, both run on every
   image (``CoarseFineViT.forward_train``, regions selected as at inference), with either set of weights.

Prints one row per arch and, per type, the mean inherited and standalone top-1 and the mean gap with a 95%
bootstrap CI over the K archs and a sign-flip p (``nas.stats.paired_difference``; "within noise" unless both
the CI excludes 0 and p < 0.05: with K = 3 the smallest p is 0.25, so no gap of 3 archs is ever called real);
the differences of the types' gaps (``nas.stats.difference``); and Kendall's tau between inherited and
standalone over all archs (``nas.stats.rank_correlation``). Writes ``OUT/tokenizer_evidence.csv`` and
``OUT/tokenizer_evidence.json``.
"""
from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.atomic import atomic_write, make_dirs  # noqa: E402
from nas.errors import NasError, exit_with  # noqa: E402

TYPES = ("patch", "progressive", "coarse_fine")
MAX_DRAWS = 10_000
FIELDS = ("type", "index", "arch_hash", "macs", "params", "inherited_top1", "standalone_top1", "gap",
          "inherited_coarse_top1", "inherited_fine_top1", "standalone_coarse_top1", "standalone_fine_top1",
          "standalone_metrics_top1", "train_seconds", "run_dir")


def draw(space, k: int, seed: int) -> dict[str, list]:
    """K distinct archs of each tokenizer type: draws with the seeds "<seed>|0", "<seed>|1", ... in order."""
    from nas.mechanisms import tokenizer

    found: dict[str, list] = {t: [] for t in TYPES}
    seen = set()
    for i in range(MAX_DRAWS):
        a = space.sample(f"{seed}|{i}")
        kind = tokenizer(a.tokenizer).name
        if a.hash() not in seen and len(found.setdefault(kind, [])) < k:
            seen.add(a.hash())
            found[kind].append(a)
        if all(len(found[t]) >= k for t in TYPES):
            return {t: found[t] for t in TYPES}
    short = {t: len(v) for t, v in found.items() if len(v) < k}
    raise NasError(f"--per-type {k}: {MAX_DRAWS} draws of {space.name!r} found only {short} distinct archs of "
                   f"these tokenizer types; lower --per-type")


def scored(ev, arch, model) -> dict[str, float]:
    """Val top-1 of ``model`` (``arch``'s, eval mode) on the evaluator's images; for CF-ViT also the top-1 of its
    coarse and of its fine pass, both run on every image."""
    import torch

    from nas.supernet.scoring import evaluation

    out = {"top1": evaluation(arch, ev.per_image_of(arch, model)).score}
    if hasattr(model, "forward_train"):
        hits, n = torch.zeros(2, dtype=torch.long), 0
        with torch.inference_mode():
            for x, y in ev.batches():
                y = y.to(ev.device)
                coarse, fine = model.forward_train(x.to(ev.device), warmup=False)  # (B, classes) each
                hits += torch.stack([(coarse.argmax(-1) == y).sum(), (fine.argmax(-1) == y).sum()]).cpu()
                n += len(y)
        out["coarse_top1"], out["fine_top1"] = (hits.double() / n).tolist()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("supernet_run", help="a finished `nas train-supernet` run of spaces/all_four.yaml")
    p.add_argument("--per-type", type=int, default=3, help="archs per tokenizer type [3]")
    p.add_argument("--out", help="standalone runs and results [<SUPERNET_RUN>/../tokenizer-evidence]")
    p.add_argument("--seed", type=int, default=0, help="seed of the arch draws [0]")
    p.add_argument("--epochs", type=int, help="standalone epochs [the supernet recipe's]")
    args = p.parse_args(argv)
    import torch

    from nas.cost import cost
    from nas.limits import check_folder
    from nas.space import save_arch
    from nas.stats import difference, paired_difference, rank_correlation
    from nas.supernet.run import load_supernet_run
    from nas.train.retrain import build_retrain_model, retrain

    if args.per_type < 1:
        raise NasError(f"--per-type: expected at least 1 arch per tokenizer type, got {args.per_type}")
    if args.epochs is not None and args.epochs < 1:
        raise NasError(f"--epochs: expected at least 1, got {args.epochs}")
    if not Path(args.supernet_run).is_dir():
        raise NasError("no such run directory; give the folder `nas train-supernet SPACE --out DIR` wrote",
                       file=args.supernet_run)
    out = check_folder(args.out if args.out is not None else Path(args.supernet_run).resolve().parent
                       / "tokenizer-evidence")
    t_start = time.perf_counter()
    run = load_supernet_run(args.supernet_run)
    rc = replace(run.recipe, space_overrides={}, width_multiplier=1.0,
                 **({} if args.epochs is None else {"epochs": args.epochs}))
    archs = draw(run.space, args.per_type, args.seed)
    ev = run.evaluator("val")
    rows = []
    for kind, i in ((t, i) for t in TYPES for i in range(args.per_type)):
        arch = archs[kind][i]
        with ev.model(arch) as model:  # what the search scores: supernet path or BN-recalibrated copy
            inh = scored(ev, arch, model)
        d = make_dirs(out / f"{kind}-{i}-{arch.hash()[:12]}")
        if not (d / "arch.yaml").exists():
            save_arch(arch, d / "arch.yaml")
        t, trained = time.perf_counter(), not (d / "run" / "metrics.json").exists()
        if trained:  # else: a finished run of an earlier call, read back
            print(f"{kind} {i}: training {arch.hash()[:12]} alone, {rc.epochs} epochs", flush=True)
            retrain(d / "arch.yaml", data=run.data, recipe=rc, out=d / "run", progress=False)
        metrics = json.loads((d / "run" / "metrics.json").read_text())
        if metrics["arch_hash"] != arch.hash() or metrics["recipe_hash"] != rc.hash():
            raise NasError("the standalone run holds another arch or recipe than this command's (another --epochs?); "
                           "use another --out", file=str(d / "run"))
        own = scored(ev, arch, build_retrain_model(arch, rc, d / "run" / "final.safetensors").to(ev.device).eval())
        c = cost(arch)
        rows.append({"type": kind, "index": i, "arch_hash": arch.hash(), "macs": c.macs, "params": c.params,
                     "inherited_top1": inh["top1"], "standalone_top1": own["top1"],
                     "gap": own["top1"] - inh["top1"],
                     **{f"{w}_{p}_top1": s.get(f"{p}_top1", "") for w, s in (("inherited", inh), ("standalone", own))
                        for p in ("coarse", "fine")},
                     "standalone_metrics_top1": metrics["val_top1"],
                     "train_seconds": round(time.perf_counter() - t) if trained else "",
                     "run_dir": str(d / "run")})

    def pct(v) -> str:
        return f"{100 * v:5.1f}" if v != "" else "    -"

    print(f"\n{run.run_dir}: {ev.num_images} val images; standalone: {rc.epochs} epochs of the supernet's recipe "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")
    print("type         i  hash          MACs    params   inh top-1  alone top-1    gap   "
          "CF coarse/fine inh   CF coarse/fine alone")
    for r in rows:
        print(f"{r['type']:<12} {r['index']}  {r['arch_hash'][:12]}  {r['macs'] / 1e6:6.2f}M  {r['params'] / 1e3:6.1f}K"
              f"  {pct(r['inherited_top1'])}%     {pct(r['standalone_top1'])}%    {100 * r['gap']:+5.1f}"
              f"   {pct(r['inherited_coarse_top1'])} / {pct(r['inherited_fine_top1'])}      "
              f"{pct(r['standalone_coarse_top1'])} / {pct(r['standalone_fine_top1'])}")
    per_type: dict = {}
    print("\nper type (gap = standalone - inherited, points; 95% bootstrap CI over the archs, sign-flip p):")
    for kind in TYPES:
        mine = [r for r in rows if r["type"] == kind]
        inh, own = [r["inherited_top1"] for r in mine], [r["standalone_top1"] for r in mine]
        s = {"n": len(mine), "inherited_top1": sum(inh) / len(inh), "standalone_top1": sum(own) / len(own),
             "gap": (sum(own) - sum(inh)) / len(mine)}
        gap = f"{100 * s['gap']:+.1f} (one arch: no CI)"
        if len(mine) >= 2:
            diff = paired_difference(own, inh, "loss")
            s["gap_test"], gap = diff.to_json(), diff.describe(100)
        per_type[kind] = s
        print(f"  {kind:<12} inherited {100 * s['inherited_top1']:5.1f}%  standalone {100 * s['standalone_top1']:5.1f}%"
              f"  gap {gap}")
    gaps_differ = {}
    if args.per_type >= 2:
        print("differences of the gaps between types (a starved type has a larger gap):")
        for a, b in itertools.combinations(TYPES, 2):
            diff = difference(*([r["gap"] for r in rows if r["type"] == t] for t in (a, b)))
            gaps_differ[f"{a}-{b}"] = diff.to_json()
            print(f"  gap({a}) - gap({b}): {diff.describe(100)}")
    tau = rank_correlation([r["inherited_top1"] for r in rows], [r["standalone_top1"] for r in rows])
    print(f"inherited vs standalone top-1 over all {len(rows)} archs: Kendall {tau.describe()}")
    seconds = round(time.perf_counter() - t_start)
    print(f"{seconds} s in all; wrote {out / 'tokenizer_evidence.csv'} and {out / 'tokenizer_evidence.json'}")
    buf = io.StringIO()
    w = csv.DictWriter(buf, FIELDS)
    w.writeheader()
    w.writerows(rows)
    atomic_write(out / "tokenizer_evidence.csv", buf.getvalue())
    atomic_write(out / "tokenizer_evidence.json", json.dumps(
        {"format": "nas-tokenizer-evidence/1", "supernet_run": str(run.run_dir), "per_type": args.per_type,
         "seed": args.seed, "epochs": rc.epochs, "recipe_hash": rc.hash(), "val_images": ev.num_images,
         "types": per_type, "gap_differences": gaps_differ, "kendall": tau.to_json(), "seconds": seconds,
         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    exit_with(main)

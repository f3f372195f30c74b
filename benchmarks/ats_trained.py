"""ATS on a trained model, off the shelf: accuracy and measured mean MACs at several keep ratios, no fine-tuning.

Adaptive token sampling (arXiv 2111.15667) is parameter-free: the paper's claim is that it can be inserted
into an already trained ViT (DeiT-S, blocks 3 to 11) and cut its MACs a lot at little accuracy cost, with no
fine-tuning. This benchmark retrains DeiT-Tiny alone with ``nas retrain`` on the built-in data (CPU recipe
``recipes/retrain_cpu.yaml``, its ``tokenizer.patch_size`` set by ``--patch``; ATS off while training), then
loads the same final weights into the ATS version of the arch (``ats: {blocks, keep}``) at each ``--keeps``
ratio and reports, beside the base model: val top-1, val loss, and the mean MACs per image executed on the
1,000 val images (``nas.measure`` protocol, recorded by the ATS blocks themselves).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ats_trained.py --out runs/ats-trained

Re-running resumes the retraining (its run directory is ``OUT/retrain``) and only re-scores.

Decisions where the papers are silent:

- Patch 4 at 32x32 (64 patch tokens) by default rather than the CPU recipe's 8 (16 tokens): ATS keeps at
  least 8 tokens (K = max(round(keep * N_in), 8)), so with 16 tokens every keep <= 0.5 would be the same model.
  ``--patch 8`` runs the recipe unchanged.
- ATS blocks 3..11 (0-based) of the 12, as the paper does for DeiT-S; one keep ratio for every ATS block.
- Kept tokens are counted per block from the model's ``last_kept`` (the positions each ATS block kept):
  quantiles that land on the same token merge, so even keep 1.0 keeps fewer tokens than enter the block
  when the cls attention is concentrated, and each ATS block samples again from what the previous one kept.
- The base model's MACs are its analytic cost (``nas.cost``), which equals the executed MACs of a static model.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.atomic import atomic_write  # noqa: E402
from nas.errors import NasError, exit_with  # noqa: E402


DEFAULT_BLOCKS = [3, 4, 5, 6, 7, 8, 9, 10, 11]


def kept_tokens(model, dataset, device) -> list[float]:
    """Mean number of patch tokens (cls excluded) each ATS block keeps over ``dataset`` (``last_kept``)."""
    import torch

    from nas.data import make_loader

    sums, n = None, 0
    model.eval()
    with torch.no_grad():
        for x, _ in make_loader(dataset, 256, shuffle=False):
            model(x.to(device))
            counts = [((pos >= 0).sum(1) - 1).double().sum().item() for pos in model.last_kept]
            sums = counts if sums is None else [a + b for a, b in zip(sums, counts)]
            n += x.shape[0]
    return [v / n for v in sums or []]


def arch_with_ats(base_file: Path, blocks: list[int], keep: float | None, out: Path) -> Path:
    """A copy of the arch file ``base_file`` with ``ats: {blocks, keep}`` (None: the file itself)."""
    if keep is None:
        return base_file
    text = base_file.read_text()
    if "\nats:" in text:
        raise NasError("the base arch already has an ats: key; give a plain ViT", file=str(base_file))
    path = out / f"{base_file.stem}_ats_b{blocks[0]}-{blocks[-1]}_keep{keep:g}.yaml"
    atomic_write(path, text.rstrip("\n") + f"\nats: {{blocks: {blocks}, keep: {keep}}}\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default=str(ROOT / "spaces/reference/deit_tiny.yaml"), help="a plain ViT arch file")
    p.add_argument("--patch", type=int, default=4, help="tokenizer.patch_size at 32x32 [4: 64 patch tokens]")
    p.add_argument("--blocks", default=",".join(map(str, DEFAULT_BLOCKS)), help="ATS blocks (0-based cell indices); "
                   "results of other blocks than the default go to ats_trained_b<first>-<last>.md")
    p.add_argument("--keeps", default="1.0,0.87,0.72,0.5", help="keep ratios to apply")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--out", default="runs/ats-trained")
    args = p.parse_args(argv)
    import torch

    from nas.cost import cost
    from nas.train.recipe import default_recipe, load_recipe
    from nas.train.retrain import build_retrain_model, evaluate, resolve_arch, retrain

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    blocks = [int(b) for b in args.blocks.split(",")]
    keeps = [float(k) for k in args.keeps.split(",")]
    rc = load_recipe(default_recipe("retrain", "builtin"))
    rc = replace(rc, space_overrides={**rc.space_overrides, "tokenizer.patch_size": args.patch},
                 **({} if args.epochs is None else {"epochs": args.epochs}))
    base_file = Path(args.arch)
    t0 = time.perf_counter()
    r = retrain(base_file, data="builtin", recipe=rc, out=out / "retrain", progress=False)
    train_s = time.perf_counter() - t0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for keep in [None, *keeps]:
        arch, splits, _ = resolve_arch(str(arch_with_ats(base_file, blocks, keep, out)), "builtin", rc)
        model = build_retrain_model(arch, rc, r.weights).to(device)
        t = time.perf_counter()
        ev = evaluate(model, splits.val, 256, device, measure_macs=arch.data_dependent)
        kept = kept_tokens(model, splits.val, device) if arch.data_dependent else []
        c = cost(arch)
        macs = ev.get("macs_mean", c.macs)
        rows.append({"keep": keep, "val_top1": ev["top1"], "val_loss": ev["loss"], "images": ev["images"],
                     "macs_mean": macs, "macs_max": c.macs, "macs_min": c.macs_min, "params": c.params,
                     "kept_patch_tokens": kept, "seconds": time.perf_counter() - t})
    base = rows[0]
    for row in rows:
        row["macs_ratio"] = row["macs_mean"] / base["macs_mean"]
        row["top1_delta"] = row["val_top1"] - base["val_top1"]
    se = math.sqrt(base["val_top1"] * (1 - base["val_top1"]) / base["images"])
    machine = (torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU") + f", torch {torch.__version__}"
    took = f", {train_s:.0f} s" if r.resumed_from is None else ""
    head = (f"{base_file.stem} at 32x32, patch {args.patch} ({(32 // args.patch) ** 2} patch tokens), retrained "
            f"{rc.epochs} epochs with ATS off ({r.steps} steps{took}), ATS in blocks "
            f"{args.blocks} applied with no fine-tuning; {base['images']} val images (one standard error "
            f"{100 * se:.1f} points); {machine}")
    lines = ["| model | val top-1 | change | val loss | mean MACs / image | MACs vs base | mean patch tokens kept, "
             "first and last ATS block |", "|---|---:|---:|---:|---:|---:|---|"]
    n_patches = (32 // args.patch) ** 2
    for row in rows:
        name = "base (no ATS)" if row["keep"] is None else f"ATS keep {row['keep']:g}"
        k = row["kept_patch_tokens"]
        lines.append(f"| {name} | {100 * row['val_top1']:.1f}% | {100 * row['top1_delta']:+.1f} | "
                     f"{row['val_loss']:.3f} | {row['macs_mean'] / 1e6:.2f}M | {row['macs_ratio']:.3f} | "
                     + (f"{k[0]:.1f} ... {k[-1]:.1f} of {n_patches}" if k else f"{n_patches}") + " |")
    md = head + "\n\n" + "\n".join(lines) + "\n"
    print(md)
    tag = "" if blocks == DEFAULT_BLOCKS else f"_b{blocks[0]}-{blocks[-1]}"
    atomic_write(out / f"ats_trained{tag}.json", json.dumps({"format": "nas-ats-trained/1", "arch": str(base_file),
                                                        "patch": args.patch, "blocks": blocks, "recipe": rc.to_dict(),
                                                        "train_seconds": train_s, "machine": machine,
                                                        "rows": rows}, indent=1))
    atomic_write(out / f"ats_trained{tag}.md", md)
    return 0


if __name__ == "__main__":
    exit_with(main)

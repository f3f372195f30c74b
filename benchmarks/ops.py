"""Do the mechanisms save time in proportion to the MACs they save? Each comparison runs side by side in one
process on the same inputs: the variants are timed in interleaved repetitions (the order rotating each
repetition, one warm-up call each) and each keeps its median, so that load from other processes hits all
alike. Printed: time ratio against MACs ratio (MACs from ``nas.cost`` or the models' per-image ``last_macs``).

1. sharing: a sharing layer (attention map inherited, V only) vs a basic layer, and a shared pair vs two basic
   layers, at DeiT-Tiny width (192, 197 tokens) and a small setting (64, 65 tokens);
2. ats: ``nas.models.reduction.apply_ats`` on a timm ViT (DeiT-Ti, or DeiT-S with ``--ats-arch small``) at keep 1.0
   and 0.72 vs the plain ViT, images/s at batch ``--batch`` and at batch 1. Random weights with timm's
   jax-style init (xavier-uniform projections): with the default trunc-normal(0.02) init the cls attention is
   nearly flat and ATS keeps nearly every token, so there would be little to measure;
3. cfvit: CF-ViT (DeiT-Ti width, 7x7 coarse grid) with early exit at two thresholds vs always-fine
   (eta = 1.0) and coarse only (eta = 0). The thresholds are the 30% and 70% quantiles of the coarse max
   softmax on the timed batch, so that about 70% and 30% of its random-weight images exit;
4. ps: PS-ViT-Ti/14's progressive sampling tokenizer: its ``grid_sample`` calls and its stem against the whole
   tokenizer.

    .venv/bin/python benchmarks/ops.py [--only sharing,ats,cfvit,ps] [--reps 5]
        [--batch 64] [--batch1-images 8] [--ats-arch tiny|small] [--threads 1] [--profile]

``--profile`` adds torch.profiler's top operators for the variants whose speed-up trails their MACs saving.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from nas.cost import cost, layer_macs

from nas.mechanisms.progressive import progressive_cost
from nas.models import build_model
from nas.models.layers import Block
from nas.mechanisms.progressive.model import bilinear_sample
from nas.models.vit import SharedPair
from nas.space import load_arch

REFERENCE = Path(__file__).resolve().parents[1] / "spaces" / "reference"


# --- timing ------------------------------------------------------------------------------------------------
def interleaved(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in ``reps`` interleaved rounds after one warm-up each.
    The order rotates every round so that no variant always runs first (after another's cache effects)."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for n in names:
            fns[n]()
        for r in range(reps):
            for n in names[r % len(names):] + names[:r % len(names)]:
                t = time.perf_counter()
                fns[n]()
                times[n].append(time.perf_counter() - t)
    return {n: statistics.median(ts) for n, ts in times.items()}


def profile(fn: Callable[[], object], title: str, rows: int = 10) -> None:
    """torch.profiler's operators of one call of ``fn``, sorted by self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch.inference_mode():
        fn()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
    print(f"\n# profile: {title}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def row(name: str, seconds: float, base_s: float, macs: float, base_macs: float, extra: str = "",
        saving: bool = True) -> None:
    """One line; ``saving=False`` for a part of the first row (a share, not a saving)."""
    t, m = seconds / base_s, macs / base_macs
    eff = f"{(1 - t) / (1 - m):.2f}" if saving and m < 0.999 else "-"  # time saved / MACs saved: 1.0 = in proportion
    print(f"  {name:<34} {seconds * 1e3:>10.2f} {t:>7.3f} {macs / 1e6:>10.1f} {m:>7.3f} {eff:>9}  {extra}")


def header(title: str) -> None:
    print(f"\n## {title}")
    print(f"  {'variant':<34} {'ms':>10} {'time':>7} {'MMACs':>10} {'MACs':>7} {'saved':>9}")
    print(f"  {'':<34} {'':>10} {'ratio':>7} {'':>10} {'ratio':>7} {'t / MACs':>9}")


# --- 1. attention sharing ----------------------------------------------------------------------------------
def bench_sharing(args: argparse.Namespace) -> None:
    """A sharing layer (V only, map given) vs a basic layer; a shared pair vs two basic layers."""
    for dim, heads, n, batch in ((192, 3, 197, args.layer_batch), (64, 2, 65, args.layer_batch)):
        hidden = 4 * dim
        torch.manual_seed(0)
        basic, basic2 = Block(dim, heads, hidden).eval(), Block(dim, heads, hidden).eval()
        pair = SharedPair(dim, heads, hidden).eval()
        x = torch.randn(batch, n, dim)
        with torch.inference_mode():
            attn = basic(x, need_map=True)[1]                           # (B, h, N, N) a map to inherit
        shared = pair.second
        fns = {
            "basic layer": lambda: basic(x),
            "basic layer, map kept (need_map)": lambda: basic(x, need_map=True),
            "sharing layer (map given)": lambda: shared(x, attn=attn),
            "two basic layers": lambda: basic2(basic(x)[0]),
            "shared pair": lambda: pair(x),
        }
        t = interleaved(fns, args.reps * 5)
        full, sh = layer_macs(n, dim, hidden), layer_macs(n, dim, hidden, shared=True)
        macs = {"basic layer": full, "basic layer, map kept (need_map)": full, "sharing layer (map given)": sh,
                "two basic layers": 2 * full, "shared pair": full + sh}
        header(f"sharing: dim {dim}, heads {heads}, {n} tokens, MLP {hidden}, batch {batch} (per call)")
        for name in ("basic layer", "basic layer, map kept (need_map)", "sharing layer (map given)"):
            row(name, t[name], t["basic layer"], batch * macs[name], batch * full)
        for name in ("two basic layers", "shared pair"):
            row(name, t[name], t["two basic layers"], batch * macs[name], batch * 2 * full)
        if args.profile and dim == 192:
            profile(lambda: basic(x), f"basic layer, dim {dim}")
            profile(lambda: pair(x), f"shared pair, dim {dim}")


# --- 2. ATS ------------------------------------------------------------------------------------------------
def bench_ats(args: argparse.Namespace) -> None:
    """ATS (blocks 3..11) at keep 1.0 and 0.72 vs the plain timm ViT, at batch ``--batch`` and batch 1."""
    from timm.models.vision_transformer import VisionTransformer

    from nas.mechanisms.ats.model import apply_ats

    arch = load_arch(REFERENCE / f"deit_{args.ats_arch}.yaml")
    st = arch.stages[0]
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=arch.img_size, patch_size=arch.tokenizer.patch_size, embed_dim=st.dim,
                            depth=st.num_layers, num_heads=st.heads, mlp_ratio=st.mlp_ratio,
                            num_classes=arch.num_classes, weight_init="jax").eval()
    base_macs = cost(arch).macs                                          # nas.cost equals timm's DeiT
    models = {"base ViT": vit}
    for keep in (1.0, 0.72):
        models[f"ATS keep {keep}"] = apply_ats(vit, list(range(3, st.num_layers)), keep=keep).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, arch.img_size, arch.img_size, generator=g)
    singles = [x[i:i + 1] for i in range(min(args.batch1_images, args.batch))]

    def mean_macs(m: torch.nn.Module, images: list[torch.Tensor]) -> float:
        if m is vit:
            return float(base_macs)
        with torch.inference_mode():
            return statistics.fmean(_run(m, xi) for xi in images)

    for label, images, reps in ((f"batch {args.batch}", [x], args.reps),
                                (f"batch 1 ({len(singles)} images one by one)", singles, 2 * args.reps)):
        fns = {name: (lambda m=m, images=images: [m(xi) for xi in images]) for name, m in models.items()}
        t = interleaved(fns, reps)
        n_img = sum(xi.shape[0] for xi in images)
        header(f"ATS in blocks 3..{st.num_layers - 1} of {arch.name} (timm, jax init), {label}; "
               "MACs = mean per image")
        base_t = t["base ViT"]
        for name, m in models.items():
            mm = mean_macs(m, images)
            row(name, t[name], base_t, mm, base_macs, f"{n_img / t[name]:.1f} images/s")
        if args.profile:
            profile(fns["base ViT"], f"base ViT, {label}")
            profile(fns["ATS keep 0.72"], f"ATS keep 0.72, {label}")


def _run(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Mean per-image MACs that ``model`` recorded on ``x`` (the ``nas.measure`` protocol)."""
    from nas.measure import batch_macs

    model(x)
    return float(batch_macs(model, x.shape[0]).double().mean())


# --- 3. CF-ViT ---------------------------------------------------------------------------------------------
def bench_cfvit(args: argparse.Namespace) -> None:
    """Early exit at two thresholds (the 30% / 70% quantiles of the coarse max softmax) vs always-fine."""
    arch = load_arch(REFERENCE / "cf_vit_deit_s_7x7.yaml", overrides={"stages[0].dim": 192, "stages[0].heads": 3})
    torch.manual_seed(0)
    model = build_model(arch).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, arch.img_size, arch.img_size, generator=g)
    with torch.inference_mode():
        conf = model.forward_coarse(x).logits.float().softmax(dim=-1).amax(dim=-1)  # (B,) coarse max softmax
    lo, hi = (float(q) for q in torch.quantile(conf.double(), torch.tensor([0.3, 0.7], dtype=torch.float64)))
    etas = {"always fine (eta 1.0)": 1.0, f"eta = q70 ({hi:.6f})": hi, f"eta = q30 ({lo:.6f})": lo,
            "coarse only (eta 0)": 0.0}

    def run(eta: float) -> torch.Tensor:
        model.exit_threshold = eta
        return model(x)

    t = interleaved({name: (lambda e=eta: run(e)) for name, eta in etas.items()}, args.reps)
    header(f"CF-ViT, DeiT-Ti width, 7x7 coarse grid, batch {args.batch}; MACs = mean per image")
    base = "always fine (eta 1.0)"
    macs = {}
    with torch.inference_mode():
        for name, eta in etas.items():
            macs[name] = _run_cf(model, x, eta)
    for name in etas:
        row(name, t[name], t[base], macs[name][0], macs[base][0],
            f"{args.batch / t[name]:.1f} images/s, {macs[name][1]:.0%} exit")
    if args.profile:
        profile(lambda: run(etas[base]), "CF-ViT always fine")
        profile(lambda: run(lo), "CF-ViT eta = q30")


def _run_cf(model: torch.nn.Module, x: torch.Tensor, eta: float) -> tuple[float, float]:
    model.exit_threshold = eta
    mean = _run(model, x)
    return mean, float(model.last_exits.float().mean())


# --- 4. progressive sampling -------------------------------------------------------------------------------
def bench_ps(args: argparse.Namespace) -> None:
    """grid_sample (all rounds) and the stem against the whole PS-ViT-Ti/14 tokenizer."""
    arch = load_arch(REFERENCE / "ps_vit_ti_14.yaml")
    torch.manual_seed(0)
    tok = build_model(arch).tokenizer.eval()
    g = torch.Generator().manual_seed(0)
    batch = args.ps_batch
    x = torch.randn(batch, 3, arch.img_size, arch.img_size, generator=g)
    with torch.inference_mode():
        tok(x)
        feat = tok.stem(x)                                               # (B, C, 56, 56)
    rounds = tok.last_trajectory.unbind(1)                               # N x (B, P, 2)
    fns = {
        "whole tokenizer": lambda: tok(x),
        "stem": lambda: tok.stem(x),
        f"grid_sample x {len(rounds)} rounds": lambda: [bilinear_sample(feat, p) for p in rounds],
    }
    t = interleaved(fns, args.reps * 2)
    st = arch.stages[0]
    tok_macs = progressive_cost(arch.img_size, arch.in_chans, arch.tokenizer, st.dim, st.hidden, arch.qkv_bias,
                                arch.has_cls_token)[0]
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        tok.stem(x[:1])
    stem_macs = fc.get_total_flops() // 2                                # an independent count of the stem
    P, C = tok.points ** 2, tok.dim
    gs_macs = len(rounds) * 4 * P * C                                    # 4 taps per value; nas.cost counts 0
    header(f"PS-ViT-Ti/14 tokenizer, batch {batch}; grid_sample counted as 4 MACs per value here "
           "(nas.cost counts 0)")
    whole, gs_name = t["whole tokenizer"], f"grid_sample x {len(rounds)} rounds"
    for name, m in (("whole tokenizer", tok_macs), ("stem", stem_macs), (gs_name, gs_macs)):
        row(name, t[name], whole, batch * m, batch * tok_macs, saving=False)
    rest = whole - t["stem"] - t[gs_name]
    rest_macs = tok_macs - stem_macs                                     # grid_sample's 4 MACs/value not in it
    row("rest (4 layers, positions, offsets)", rest, whole, batch * rest_macs, batch * tok_macs, saving=False)
    gs = t[gs_name]
    print(f"  grid_sample / rest of the tokenizer (stem included): time {gs / (whole - gs):.3f}, "
          f"MACs {gs_macs / tok_macs:.4f}")
    if args.profile:
        profile(fns["whole tokenizer"], "PS-ViT-Ti/14 tokenizer")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="sharing,ats,cfvit,ps", help="comma-separated: sharing, ats, cfvit, ps")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per variant (after one warm-up)")
    ap.add_argument("--batch", type=int, default=64, help="batch of the ATS and CF-ViT runs")
    ap.add_argument("--batch1-images", type=int, default=8, help="images run one by one for ATS at batch 1")
    ap.add_argument("--layer-batch", type=int, default=16, help="batch of the single-layer runs")
    ap.add_argument("--ps-batch", type=int, default=16, help="batch of the progressive tokenizer runs")
    ap.add_argument("--ats-arch", choices=("tiny", "small"), default="tiny", help="DeiT-Ti or DeiT-S")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 by default: on a shared machine a multi-threaded op waits for its slowest "
                         "thread, and a preempted thread stalls it for a whole time slice")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler's top operators too")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{platform.processor() or platform.machine()}, median of {args.reps} interleaved repetitions "
          "(x5 for single layers, x2 for ATS at batch 1 and the tokenizer)")
    print("# time ratio and MACs ratio against the first row of each block; saved t / MACs = (1 - time ratio) / "
          "(1 - MACs ratio): 1.0 when time falls as MACs do, below 0.8 a speed-up trailing its MACs saving by > 20%")
    benches = {"sharing": bench_sharing, "ats": bench_ats, "cfvit": bench_cfvit, "ps": bench_ps}
    for name in args.only.split(","):
        t = time.perf_counter()
        benches[name.strip()](args)
        print(f"  ({name.strip()}: {time.perf_counter() - t:.0f} s)")


if __name__ == "__main__":
    main()

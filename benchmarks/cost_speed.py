"""Speed of the analytic cost model: archs/second of ``nas.cost.cost`` on representative archs, side by side
with building the model and counting its MACs with FlopCounterMode (what the cost model replaces).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cost_speed.py [--calls 20000] [--repeat 5]
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import time

from nas.arch import Arch, Pooling, Stage

from nas.mechanisms.patch import PatchTokenizer
from nas.cost import cost
from nas.models import get_arch


def random_tiny_scale_archs(n: int, seed: int = 0) -> list[Arch]:
    """Distinct DeiT-Tiny-scale PSViT archs (224/16, 3 stages x 6 cells, 1d pooling), as a search samples them."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        dims = sorted(rng.choice([192, 256, 320, 384]) for _ in range(3))
        stages = tuple(Stage(d, d // 64, 4.0, tuple(rng.choice(["basic", "shared_pair", "identity"]) for _ in range(6)))
                       for d in dims)
        out.append(Arch(224, 3, 1000, PatchTokenizer(16), stages, Pooling("1d", 3)))
    return out


def archs_per_second(archs: list[Arch], calls: int, repeat: int) -> float:
    """Best of ``repeat`` timings of ``calls`` cost() calls cycling through ``archs``."""
    seq = [archs[i % len(archs)] for i in range(calls)]
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for a in seq:
            cost(a)
        best = min(best, time.perf_counter() - t)
    return calls / best


def build_and_count_seconds(arch: Arch) -> float:
    """Seconds to build the model and count its MACs once (the measured alternative)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from nas.models import build_model
    t = time.perf_counter()
    model = build_model(arch).eval()
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False  # FlopCounterMode counts fused attention as 0
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, arch.in_chans, arch.img_size, arch.img_size))
    if counter.get_total_flops() // 2 != cost(arch).macs:
        raise RuntimeError("cost() disagrees with FlopCounterMode")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    cases = {name: [get_arch(name)] for name in ("deit_tiny_patch16_224", "deit_small_patch16_224",
                                                  "psvit_t1_dimension1_patch16_224", "psvit_t1_dimension2_patch16_224",
                                                  "psvit1d_test_patch4_32")}
    cases["random PSViT 3x6 cells, 1000 distinct"] = random_tiny_scale_archs(1000)
    print(f"python {platform.python_version()}, {os.cpu_count()} cpus, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', '-')}, {args.calls} calls, best of {args.repeat}")
    print(f"{'arch':40s} {'archs/s':>10s} {'us/arch':>8s}")
    rates = {}
    for label, archs in cases.items():
        rates[label] = archs_per_second(archs, args.calls, args.repeat)
        print(f"{label:40s} {rates[label]:10,.0f} {1e6 / rates[label]:8.2f}")
    ref = "deit_tiny_patch16_224"
    secs = build_and_count_seconds(cases[ref][0])
    print(f"{ref}: build_model + FlopCounterMode {secs:.3f} s/arch vs cost() {1 / rates[ref] * 1e6:.2f} us/arch: "
          f"cost() is {secs * rates[ref]:,.0f}x faster")


if __name__ == "__main__":
    main()

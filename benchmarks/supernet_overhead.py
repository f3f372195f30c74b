"""Overhead of training through the weight-sharing supernet: one SGD step (forward + backward + step) of a
random arch through ``Supernet.forward(x, arch)`` versus the same step through ``Supernet.extract(arch)``
(the standalone model), same batch, side by side in one run. The two are timed alternately, so that load
from other processes hits both alike; per arch the median of ``--steps`` steps is kept.

Also reported: the cold cost of an arch seen for the first time (its meta skeleton is built once, then
cached; of which the Python garbage collector, when a collection happens to run then), and the time spent
cutting the slices out of the supernet tensors.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/supernet_overhead.py [--space spaces/psvit_tiny.yaml]
        [--size 32] [--patch 4] [--archs 8] [--steps 7] [--batch 16]
"""
from __future__ import annotations

import argparse
import gc
import platform
import random
import statistics
import time

import torch
import torch.nn.functional as F

from nas.space import load_space
from nas.supernet import Supernet
from nas.supernet.skeleton import build_skeleton


def sgd_step(forward, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, lr: float = 1e-3) -> float:
    """Seconds of one plain-SGD training step; ``params`` are updated in place (gradients set to None first)."""
    t = time.perf_counter()
    for p in params:
        p.grad = None
    loss = F.cross_entropy(forward(x), y)
    loss.backward()
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p.add_(p.grad, alpha=-lr)
    return time.perf_counter() - t


class GcClock:
    """Seconds spent in Python's garbage collector (all generations) since the last ``take()``."""

    def __init__(self) -> None:
        self.total, self._t = 0.0, 0.0
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._t

    def take(self) -> float:
        out, self.total = self.total, 0.0
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default="spaces/psvit_tiny.yaml")
    ap.add_argument("--size", type=int, default=32, help="input size override")
    ap.add_argument("--patch", type=int, default=4, help="patch size override (patch tokenizers)")
    ap.add_argument("--archs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=7, help="timed steps per arch and side (after one warm-up)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    overrides = {"input.size": args.size}
    if load_space(args.space).template()["tokenizer"]["type"] == "patch":
        overrides["tokenizer.patch_size"] = args.patch
    space = load_space(args.space, overrides=overrides)
    torch.manual_seed(args.seed)
    t = time.perf_counter()
    supernet = Supernet(space).train()
    build_s = time.perf_counter() - t
    n_classes = space.decode([0] * len(space.dims)).num_classes
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g)
    y = torch.randint(0, n_classes, (args.batch,), generator=g)
    sup_params = list(supernet.parameters())

    patch = f", patch {args.patch}" if "tokenizer.patch_size" in overrides else ""
    print(f"# {space.name} at {args.size}x{args.size}{patch}, "
          f"batch {args.batch}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{platform.processor() or platform.machine()}")
    print(f"# supernet: {sum(p.numel() for p in sup_params) / 1e6:.1f}M params, built in {build_s:.2f} s")
    print(f"{'arch':>4} {'params':>8} {'layers':>6} {'subnet ms':>10} {'supernet ms':>12} {'ratio':>6} "
          f"{'cold +ms':>9} {'(gc ms)':>8} {'slicing ms':>11}")
    rng = random.Random(args.seed)
    gc_clock = GcClock()
    ratios, colds, slicings, subs = [], [], [], []
    for i in range(args.archs):
        arch = space.sample(rng)
        gc_clock.take()
        t = time.perf_counter()
        build_skeleton(arch)                      # what a never-seen arch costs on top (then cached)
        cold = time.perf_counter() - t
        cold_gc = gc_clock.take()
        sub = supernet.extract(arch).train()
        sub_params = list(sub.parameters())
        path = supernet._path(arch)
        sgd_step(sub, sub_params, x, y)           # warm-up both (allocator, caches)
        sgd_step(lambda v: supernet(v, arch), sup_params, x, y)
        ts_sub, ts_sup = [], []
        for _ in range(args.steps):
            ts_sub.append(sgd_step(sub, sub_params, x, y))
            ts_sup.append(sgd_step(lambda v: supernet(v, arch), sup_params, x, y))
        t = time.perf_counter()
        for _ in range(10):
            supernet._slices(path)
        slicing = (time.perf_counter() - t) / 10
        m_sub, m_sup = statistics.median(ts_sub), statistics.median(ts_sup)
        ratios.append(m_sup / m_sub)
        colds.append(cold)
        slicings.append(slicing)
        subs.append(m_sub)
        n_layers = sum(s.num_layers for s in arch.stages)
        print(f"{i:>4} {sum(p.numel() for p in sub_params) / 1e6:>7.2f}M {n_layers:>6} {m_sub * 1e3:>10.1f} "
              f"{m_sup * 1e3:>12.1f} {m_sup / m_sub:>6.3f} {cold * 1e3:>9.1f} {cold_gc * 1e3:>8.1f} "
              f"{slicing * 1e3:>11.2f}")
    med = statistics.median(ratios)
    print(f"median ratio supernet / subnet (warm): {med:.3f}  (min {min(ratios):.3f}, max {max(ratios):.3f})")
    cold_ratio = statistics.median([(r * s + c) / s for r, s, c in zip(ratios, subs, colds)])
    print(f"median ratio for an arch's first step (skeleton build included): {cold_ratio:.3f}; "
          f"skeleton build median {statistics.median(colds) * 1e3:.1f} ms, slicing median "
          f"{statistics.median(slicings) * 1e3:.2f} ms per step")


if __name__ == "__main__":
    main()

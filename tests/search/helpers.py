"""Tiny spaces and a fast deterministic fake evaluator for the search tests."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from nas.arch import Arch
from nas.cost import cost
from nas.space import SearchSpace

TINY = """\
name: tiny
budget: {macs: 1.0M}
input: {size: 16, channels: 3}
num_classes: 10
tokenizer: {type: patch, patch_size: 4}
pooling: {type: none}
head: cls
stages:
  - dim: {choice: [16, 24, 32]}
    heads: 2
    mlp_ratio: {choice: [1, 2]}
    cells: {repeat: 3, choice: [basic, shared_pair, identity]}
"""
"""3 x 2 x 27 = 162 archs."""

TINY_CF = """\
name: tiny_cf
input: {size: 32, channels: 3}
num_classes: 10
tokenizer:
  type: coarse_fine
  patch_size: 4
  coarse_grid: 4
  alpha: {choice: [0.25, 0.5, 1.0]}
  exit_threshold: {choice: [0.5, 0.8, 1.0]}
head: cls
stages:
  - dim: 16
    heads: 2
    mlp_ratio: {choice: [1, 2]}
    cells: [basic, {choice: [basic, identity]}]
"""
"""CF-ViT at 32x32: coarse 4x4 grid of 8-px patches, fine 8x8; 3 x 3 x 2 x 2 = 36 archs."""


@dataclass(frozen=True)
class FakeEvaluation:
    arch_hash: str
    score: float
    loss: float
    macs: int
    macs_mean: int | None
    params: int
    seconds: float


def fake_score(arch: Arch) -> float:
    """Deterministic, arch-dependent, in (0, 1): a hash-derived jitter on a rising trend with MACs."""
    u = int(hashlib.sha256(arch.hash().encode()).hexdigest()[:8], 16) / 2**32
    c = cost(arch)
    return 0.5 * u + 0.4 * min(c.params / 50_000, 1.0) + 0.05


class FakeEvaluator:
    """``Evaluator`` interface; counts calls per arch; ``sleep`` makes workers overlap in concurrency tests.
    ``macs_mean`` of a data-dependent arch: the midpoint of its analytic [macs_min, macs_max]."""

    def __init__(self, space: SearchSpace, split: str, sleep: float = 0.0) -> None:
        self.space, self.split, self.sleep = space, split, sleep
        self.calls: dict[str, int] = {}

    def __call__(self, arch: Arch) -> FakeEvaluation:
        assert arch in self.space, "the evaluator must get archs of the proxy space"
        self.calls[arch.hash()] = self.calls.get(arch.hash(), 0) + 1
        if self.sleep:
            time.sleep(self.sleep)
        c = cost(arch)
        s = fake_score(arch) - (0.01 if self.split == "val" else 0.0)
        mean = (c.macs_min + c.macs_max) // 2 if arch.data_dependent else None
        return FakeEvaluation(arch.hash(), s, 1.0 - s, c.macs, mean, c.params, 0.0)


def write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(text)
    return p


SMALL_EVOLUTION = """\
searcher: evolution
max_evals: 40
max_tries: 200
evolution: {population: 10, generations: 5, parents: 3, mutations: 4, crossovers: 4, mutation_prob: 0.3}
"""

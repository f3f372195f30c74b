"""Shared test helpers: the independent MAC counter and a tiny random Arch generator."""
from __future__ import annotations

import random

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nas.arch import Arch, Pooling, Stage

from nas.mechanisms.patch import PatchTokenizer


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs of ``model(x)`` for the whole batch ``x`` (pass one image for per-image MACs), counted
    independently of ``nas.cost``: FlopCounterMode's FLOPs // 2 (matmul, linear, conv, bmm only).

    FlopCounterMode counts CPU fused attention (scaled_dot_product_attention) as 0, so fused attention is
    switched off on every module that has timm's ``fused_attn`` switch (``nas.models.layers.Attention`` and
    timm's Attention classes) for the count, then restored.
    """
    switched = [m for m in model.modules() if getattr(m, "fused_attn", False)]
    for m in switched:
        m.fused_attn = False
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        for m in switched:
            m.fused_attn = True
    return counter.get_total_flops() // 2


def random_arch(rng: random.Random, img_size: int = 32, num_classes: int = 10) -> Arch:
    """A random tiny static arch: patch 4 or 8, 1-3 stages of 1-3 cells, dims 16-64, every pooling type,
    cls or gap head, optional qkv bias. Stages of equal width when there is no pooling."""
    pooling = rng.choice(["none", "1d", "2d"])
    n_stages = rng.randint(1, 3)
    dims = sorted(rng.choice([16, 24, 32, 48, 64]) for _ in range(n_stages))
    if pooling == "none":
        dims = [dims[0]] * n_stages
    stages = []
    for d in dims:
        heads = rng.choice([h for h in (1, 2, 4) if d % h == 0])
        cells = tuple(rng.choice(["basic", "shared_pair", "identity"]) for _ in range(rng.randint(1, 3)))
        stages.append(Stage(d, heads, rng.choice([1.0, 2.0, 2.5]), cells))
    return Arch(img_size, 3, num_classes, PatchTokenizer(rng.choice([4, 8])), tuple(stages),
                pooling=Pooling(pooling, rng.choice([1, 2, 3])), head=rng.choice(["cls", "gap"]),
                qkv_bias=rng.random() < 0.7)


def tiny_space(num_classes: int) -> str:
    """The YAML of a 16x16, 2-stage space (1D pooling between stages; basic, shared-pair and identity cells; two
    widths, head counts and MLP ratios) whose supernet trains in seconds: the training and evaluation tests'."""
    return f"""\
name: tiny
input: {{size: 16, channels: 3}}
num_classes: {num_classes}
tokenizer: {{type: patch, patch_size: 4}}
pooling: {{type: 1d, kernel: 3}}
head: cls
stages:
  - dim: 16
    heads: 2
    mlp_ratio: 2
    cells: {{repeat: 2, choice: [basic, shared_pair, identity]}}
  - dim: {{choice: [16, 24]}}
    heads: {{choice: [2, 4]}}
    mlp_ratio: {{choice: [1.5, 2]}}
    cells: [{{choice: [basic, identity]}}, basic]
"""


EVAL_RECIPE = """\
seed: 0
epochs: 1
batch_size: 24
optimizer: {name: adamw, lr: 2e-3, weight_decay: 0.0}
label_smoothing: 0.0
data: {holdout: 0.25}
device: cpu
"""
"""A one-epoch CPU supernet recipe holding out a quarter of the training images as the search split: the
evaluation, rank-check and search-on-Ray tests'."""

RANK_SPACE = """\
name: tiny
input: {size: 16, channels: 3}
num_classes: 3
tokenizer: {type: patch, patch_size: 4}
head: cls
stages:
  - dim: {choice: [8, 16, 24]}
    heads: 2
    mlp_ratio: {choice: [1, 2]}
    cells: {repeat: 2, choice: [basic, identity]}
"""
"""A 3-class space of 12 archs at 16 px (trained with ``EVAL_RECIPE``): the rank-check tests'."""

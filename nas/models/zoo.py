"""Registered archs, timm-style: ``@register_arch`` constructors named after their hyperparameters.

``get_arch(name)`` returns the Arch (its ``name`` set to the constructor's); ``build_model(name)`` builds it.
The ``*_test_*`` archs are tiny (32x32 input) for tests; the others are published models at 224x224.
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import replace
from typing import Callable

from nas.arch import Arch, Pooling, Stage
from nas.mechanisms.patch import PatchTokenizer
from nas.errors import NasError

_REGISTRY: dict[str, Callable[[], Arch]] = {}


def register_arch(fn: Callable[[], Arch]) -> Callable[[], Arch]:
    """Register an Arch constructor under its function name."""
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"arch {fn.__name__!r} is already registered")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_archs(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_arch(name: str) -> Arch:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; registered: {', '.join(list_archs())}"
        raise NasError(f"no registered arch named {name!r}{hint}")
    return replace(_REGISTRY[name](), name=name)


def _stages(dims: list[int], heads: list[int], layers: list[int], mlp_ratio: float = 4.0) -> tuple[Stage, ...]:
    """Stages of plain ("basic") layers."""
    return tuple(Stage(d, h, mlp_ratio, ("basic",) * n) for d, h, n in zip(dims, heads, layers))


# --- published models at 224x224, ImageNet-1k --------------------------------------------------------------
@register_arch
def deit_tiny_patch16_224() -> Arch:
    return Arch(224, 3, 1000, PatchTokenizer(16), _stages([192], [3], [12]))


@register_arch
def deit_small_patch16_224() -> Arch:
    return Arch(224, 3, 1000, PatchTokenizer(16), _stages([384], [6], [12]))


@register_arch
def psvit_t1_deit_tiny_patch16_224() -> Arch:
    """PSViT Table 1 baseline: DeiT-Tiny seen as 3 stages of 4 layers, no pooling."""
    return Arch(224, 3, 1000, PatchTokenizer(16), _stages([192] * 3, [3] * 3, [4, 4, 4]))


@register_arch
def psvit_t1_dimension1_patch16_224() -> Arch:
    """PSViT Table 1 'Dimension1': width kept, 1d pooling 197/99/50 tokens, layers [4, 8, 20].

    The paper leaves the pooling kernel unstated: 3.
    """
    return Arch(224, 3, 1000, PatchTokenizer(16), _stages([192] * 3, [3] * 3, [4, 8, 20]), Pooling("1d", 3))


@register_arch
def psvit_t1_dimension2_patch16_224() -> Arch:
    """PSViT Table 1 'Dimension2': widths [192, 256, 384], heads [3, 4, 6], 1d pooling, layers [4, 4, 4].

    The paper leaves the pooling kernel unstated: 3.
    """
    return Arch(224, 3, 1000, PatchTokenizer(16), _stages([192, 256, 384], [3, 4, 6], [4, 4, 4]), Pooling("1d", 3))


# --- tiny test archs: 32x32 input, 10 classes --------------------------------------------------------------
@register_arch
def vit_test_patch4_32() -> Arch:
    """One stage of two plain layers, dim 32, 2 heads, 64 tokens + cls."""
    return Arch(32, 3, 10, PatchTokenizer(4), _stages([32], [2], [2], mlp_ratio=2.0))


@register_arch
def psvit1d_test_patch4_32() -> Arch:
    """Three stages (65 -> 33 -> 17 tokens), 1d pooling, widths 32/48/64, a shared pair and an identity cell."""
    stages = (Stage(32, 2, 2.0, ("basic", "shared_pair")),
              Stage(48, 2, 2.0, ("identity", "basic")),
              Stage(64, 4, 2.0, ("shared_pair", "basic")))
    return Arch(32, 3, 10, PatchTokenizer(4), stages, Pooling("1d", 3))


@register_arch
def psvit2d_test_patch4_32() -> Arch:
    """Three stages on 8x8 -> 4x4 -> 2x2 grids, 2d pooling, no cls token, gap head."""
    stages = (Stage(32, 2, 2.0, ("shared_pair", "identity")),
              Stage(48, 2, 2.0, ("basic",)),
              Stage(64, 4, 2.0, ("basic", "shared_pair", "basic")))
    return Arch(32, 3, 10, PatchTokenizer(4), stages, Pooling("2d", 3), head="gap")

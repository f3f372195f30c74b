"""nas: neural architecture search for efficient Vision Transformers.

Public API (see docs/ and ../shared/spec/design.md for the data path)::

    space = nas.load_space("spaces/psvit_tiny.yaml")   # validated SearchSpace
    arch = space.sample(seed=0)                          # Arch: self-contained, hashable
    nas.cost(arch)                                       # Cost(macs, params, ...) analytic
    model = nas.build_model(arch)                        # torch nn.Module
    supernet = nas.Supernet(space)                       # shared weights; supernet.extract(arch)

Attributes are imported lazily so that ``nas --version`` and ``nas space validate`` do not load torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "load_space": "nas.space", "load_arch": "nas.space", "save_arch": "nas.space", "SearchSpace": "nas.space",
    "Arch": "nas.arch", "NasError": "nas.errors",
    "cost": "nas.cost", "Cost": "nas.cost",
    "build_model": "nas.models",
    "Supernet": "nas.supernet",
    "measure_cost": "nas.measure",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'nas' has no attribute {name!r}")

"""nas: neural architecture search for efficient Vision Transformers.

Public API::

    space = nas.load_space("spaces/psvit_tiny.yaml")   # validated SearchSpace
    arch = space.sample(seed=0)                          # Arch: self-contained, hashable
    nas.cost(arch)                                       # Cost(macs, params, ...) analytic
    model = nas.build_model(arch)                        # torch nn.Module
    supernet = nas.Supernet(space)                       # shared weights; supernet.extract(arch)

The torch-free names (spaces, archs, cost) are bound when ``nas`` is imported; the torch ones (models,
supernet, measurement) on first use, so that ``nas space validate`` and ``nas flops`` start without torch.

Why ``cost`` is bound eagerly: importing a submodule binds it on its package, so a lazily exported
function named like its module (``nas.cost``) would be replaced by the module the first time anything
imported ``nas.cost``. Binding the function after the submodule is imported keeps ``nas.cost`` the
function whatever is imported later (a module already in ``sys.modules`` is not re-bound).
"""
from __future__ import annotations

import importlib as _importlib

from nas.arch import Arch
from nas.cost import Cost, cost
from nas.errors import NasError
from nas.space import SearchSpace, load_arch, load_space, save_arch

__version__ = "0.1.0"

_LAZY = {"build_model": "nas.models", "Supernet": "nas.supernet", "measure_cost": "nas.measure"}

__all__ = sorted(["Arch", "Cost", "NasError", "SearchSpace", "cost", "load_arch", "load_space", "save_arch",
                  *_LAZY])


def __getattr__(name: str) -> object:
    if name in _LAZY:
        value = getattr(_importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'nas' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])

"""Parameter-free skeletons: ``build_model(arch)`` on the meta device, run later with supernet tensors.

A skeleton holds the module structure and every non-tensor attribute (heads, scales, paddings, flags) of the
standalone model but no weights; ``torch.func.functional_call`` runs it on real tensors. Building through
``build_model`` itself is what keeps the supernet and the standalone models one code path.

Non-persistent buffers are constants of the arch (CF-ViT's region index table), not weights: a skeleton
keeps them real. They are computed by a second, real build of the model in which parameter init is skipped
(no random numbers drawn, no init arithmetic); only models that have such buffers pay for it.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._device import DeviceContext

from nas.arch import Arch


def _is_init(func, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The tensor an in-place function (``uniform_``, ``nn.init.trunc_normal_``, ...) writes, else None.

    ``requires_grad_`` is not init and is kept. ``nn.init`` functions pass the tensor by keyword.
    """
    name = getattr(func, "__name__", "")
    if not name.endswith("_") or name.endswith("__") or name == "requires_grad_":
        return None
    target = args[0] if args else next(iter(kwargs.values()), None)
    return target if isinstance(target, torch.Tensor) else None


class _MetaWithoutInit(DeviceContext):
    """``torch.device("meta")`` that also skips in-place functions on meta tensors (the weight init).

    Meta tensors hold no values, so init does nothing useful there, and several meta kernels (``clamp_`` in
    ``trunc_normal_``) run through slow Python decompositions: a psvit_tiny arch builds in ~120 ms on meta
    with init, ~25 ms without. No random numbers are drawn.
    """

    def __init__(self) -> None:
        super().__init__(torch.device("meta"))

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        target = _is_init(func, args, kwargs)
        if target is not None and target.is_meta:
            return target
        return super().__torch_function__(func, types, args, kwargs)


class _SkipParameterInit(TorchFunctionMode):
    """Skips in-place functions applied to parameters (``nn.init.*``, ``uniform_``, ...) in a real build."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        target = _is_init(func, args, kwargs)
        if isinstance(target, nn.Parameter):
            return target
        return func(*args, **kwargs)


def constants(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, buffer name) of every non-persistent buffer: arch constants, not weights."""
    return [(m, k) for m in model.modules() for k in sorted(m._non_persistent_buffers_set)
            if m._buffers.get(k) is not None]


def build_skeleton(arch: Arch, **model_kwargs: Any) -> nn.Module:
    """``nas.build_model(arch, **model_kwargs)`` on the meta device (non-persistent buffers real, on the CPU).

    Raises NotImplementedError (from ``build_model``) for archs whose models do not exist yet, and
    RuntimeError for a model that keeps a plain tensor attribute (it would stay on meta).
    """
    from nas.models import build_model

    with _MetaWithoutInit():
        model = build_model(arch, **model_kwargs)
    for name, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, torch.Tensor):
                raise RuntimeError(f"{type(module).__name__} at {name!r} keeps tensor attribute {attr!r} outside "
                                   "its parameters and buffers; the supernet cannot provide its value")
    consts = constants(model)
    if consts:
        with torch.random.fork_rng(devices=[]), _SkipParameterInit():
            real = dict(build_model(arch, **model_kwargs).named_buffers())
        names = {id(m): n for n, m in model.named_modules()}
        for m, k in consts:
            m._buffers[k] = real[f"{names[id(m)]}.{k}" if names[id(m)] else k]
    return model

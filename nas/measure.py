"""Measured cost of data-dependent models: mean, worst and best executed MACs per image over data.

Protocol (every model family follows it, so one function measures them all): after each ``forward(x)``
on a batch of B images the model holds, in the attribute ``last_macs``, the multiply-accumulates that each
image executes when run alone, as a (B,) integer tensor (fvcore convention: matmul/linear/conv only; see
docs/mechanisms.md). "Alone" matters: padding to a common token count within a batch is an implementation detail
and never counts. A static model (same cost for every image) may store a plain int or a 0-d tensor, which
stands for every image of the batch. Examples: ``nas.mechanisms.ats.model.ATSViT`` (tokens kept per image),
CF-ViT (coarse only, or coarse + fine, per image), static ViTs (a constant).

``measure_cost`` runs the model in eval mode without gradients (and restores its mode), so the numbers are
those of inference, the paper's protocol (ATS averages over the ImageNet validation set).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

import torch
from torch import nn

from nas.errors import NasError

if TYPE_CHECKING:
    from nas.arch import Arch

__all__ = ["MeasuredCost", "measure_cost", "measure_arch", "batch_macs", "seeded_model"]


@dataclass(frozen=True)
class MeasuredCost:
    """Per-image MACs observed over ``images`` images: their mean, the largest and the smallest."""
    macs_mean: float
    macs_worst: int
    macs_best: int
    images: int


def batch_macs(model: nn.Module, batch_size: int) -> torch.Tensor:
    """The (B,) int64 MACs that ``model`` recorded in its last forward, per the protocol above."""
    macs = getattr(model, "last_macs", None)
    if macs is None:
        raise NasError(f"{type(model).__name__} does not record per-image MACs: after forward it must set "
                       "`last_macs` to a (B,) tensor of the MACs each image executes alone (see nas.measure)")
    macs = torch.as_tensor(macs).detach().to("cpu", torch.int64)
    if macs.dim() == 0:
        macs = macs.expand(batch_size)
    if macs.shape != (batch_size,):
        raise NasError(f"{type(model).__name__}.last_macs has shape {tuple(macs.shape)}; expected ({batch_size},) "
                       "or a scalar")
    return macs


def _images(batch: Any) -> torch.Tensor:
    """Loaders yield images, (images, labels, ...) tuples or dicts with an 'image'/'images'/'x' entry."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, dict):
        for key in ("image", "images", "x", "input"):
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key]
    raise NasError(f"cannot find images in a batch of type {type(batch).__name__}: expected a tensor, "
                   "an (images, labels) pair or a dict with an 'image' entry")


def measure_cost(model: nn.Module, loader: Iterable[Any], max_batches: int | None = None) -> MeasuredCost:
    """Mean / worst / best per-image MACs of ``model`` over ``loader`` (at most ``max_batches`` batches).

    Worst and best are the extremes observed on this data, not analytic bounds (for ATS those are
    ``ATSViT.macs_bounds()``).
    """
    if max_batches is not None and max_batches < 1:
        raise NasError(f"max_batches must be >= 1 or None; got {max_batches}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    total, worst, best, count = 0, None, None, 0
    try:
        with torch.no_grad():
            for b, batch in enumerate(loader):
                if max_batches is not None and b >= max_batches:
                    break
                x = _images(batch).to(device)
                model(x)
                macs = batch_macs(model, x.shape[0])
                total += int(macs.sum())
                worst = int(macs.max()) if worst is None else max(worst, int(macs.max()))
                best = int(macs.min()) if best is None else min(best, int(macs.min()))
                count += macs.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise NasError("measure_cost got no images: the loader is empty")
    return MeasuredCost(macs_mean=total / count, macs_worst=worst, macs_best=best, images=count)


def seeded_model(arch: "Arch", seed: int = 0, weights: str | None = None, file: str | None = None) -> nn.Module:
    """``arch``'s model with ``weights`` from a safetensors file, else seeded random init; its size checked
    (``nas.limits.check_model_size``) before it is built and ``weights`` against it before loading (``nas.weights``);
    ``file`` (the arch file) is named in errors."""
    from nas.cost import cost
    from nas.limits import check_model_size
    from nas.models import build_model

    c = cost(arch)
    check_model_size(c.macs, c.params, "the arch", file=file)
    torch.manual_seed(seed)
    model = build_model(arch)
    if weights is not None:
        from nas.weights import load_weights
        load_weights(weights, model)
    return model


def measure_arch(arch: "Arch", data: str, images: int = 256, seed: int = 0, weights: str | None = None,
                 batch_size: int = 32, file: str | None = None) -> dict[str, float | int]:
    """Build ``arch`` (with ``weights`` from a safetensors file, else seeded random init) and measure its
    executed MACs per image over ``images`` images of the evaluation split of ``data`` (``nas flops --data``).

    Without trained weights the sampling decisions (ATS, CF-ViT's early exit) are those of an untrained
    model: the numbers are honest measurements of that model, not of a trained one. The model comes from
    ``seeded_model`` (size and weights checked; ``file`` named in errors).
    """
    from nas.data import load_data, make_loader

    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise NasError(f"images: expected an integer >= 1 (how many images to measure over), got {images!r}")
    model = seeded_model(arch, seed, weights, file)
    splits = load_data(data, arch.img_size, arch.in_chans, seed=seed, limit={"val": images})
    loader = make_loader(splits.val, batch_size=batch_size, shuffle=False, seed=seed)
    m = measure_cost(model, loader)
    return {"macs_mean": round(m.macs_mean), "macs_worst_seen": m.macs_worst, "macs_best_seen": m.macs_best,
            "images": m.images}

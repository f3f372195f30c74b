"""BatchNorm recalibration (SPOS): running statistics of one subnet, measured again on training batches.

Shared BatchNorm statistics in a supernet are a mix over every path trained; before a subnet is scored,
SPOS resets them and accumulates the subnet's own. Only the PS-ViT stem has BatchNorm in this toolkit.
"""
from __future__ import annotations

import itertools
from typing import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from nas.arch import Arch
from nas.errors import NasError


def recalibrate_bn(model: nn.Module, batches: Iterable, num_batches: int | None = None,
                   arch: Arch | None = None) -> nn.Module:
    """Reset BatchNorm running statistics and re-estimate them on ``batches``; return ``model`` in eval mode.

    ``batches`` yields images (B, C, H, W) or ``(images, labels, ...)`` tuples; the first ``num_batches``
    (all when None) are used. The statistics are the cumulative average (``momentum=None``) of the batch
    statistics: running_mean = mean over batches of the batch mean, running_var = mean of the unbiased batch
    variance, computed in train mode without gradients. The momentum of each BatchNorm is restored after.

    ``model`` is a standalone model, or a ``Supernet`` with ``arch``: then the slices of the supernet's
    running statistics on that arch's path are recalibrated in place (other archs sharing those slices see
    the new values; recalibrate an ``extract``-ed copy to leave the supernet untouched).
    A model with no BatchNorm (tracking running statistics) is left exactly as it is, mode included.
    """
    from nas.supernet.supernet import Supernet

    if isinstance(model, Supernet):
        if arch is None:
            raise NasError("recalibrating a Supernet needs the arch whose path to recalibrate (arch=...)")
        stats = model.batchnorm_stats(arch)
        run = lambda x: model(x, arch)  # noqa: E731
    else:
        stats = [(m, {"running_mean": m.running_mean, "running_var": m.running_var,
                      "num_batches_tracked": m.num_batches_tracked})
                 for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
        run = model
    if not stats:
        return model
    if num_batches is not None and num_batches < 1:
        raise NasError(f"num_batches must be at least 1, got {num_batches}")
    momenta = [m.momentum for m, _ in stats]
    device = stats[0][1]["running_mean"].device
    seen = 0
    try:
        with torch.no_grad():
            for _, s in stats:
                s["running_mean"].zero_()
                s["running_var"].fill_(1.0)
                s["num_batches_tracked"].zero_()
            for m, _ in stats:
                m.momentum = None  # cumulative moving average: 1 / num_batches_tracked
            model.train()
            for batch in itertools.islice(batches, num_batches):
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                run(x.to(device))
                seen += 1
    finally:
        for (m, _), mom in zip(stats, momenta):
            m.momentum = mom
        model.eval()
    if seen == 0:
        raise NasError("recalibrate_bn got no batches: BatchNorm statistics need at least one training batch")
    return model

"""A model's training objective: the one hook every trainer calls (supernet training, retraining).

Most models train on ``criterion(model(x), y)``. A model whose training differs from its inference owns its
objective as a method ``training_loss(x, y, criterion, progress) -> (loss, logits)``: CF-ViT runs both passes
on every image and adds a KL term (in its mechanism package), where its inference path would exit early.
A supernet path is the arch's own model carrying the supernet's slices (``Supernet.bound(arch)``), so the same
hook serves it.

- ``criterion`` maps (logits, target) to a scalar: the trainer's loss (label smoothing, soft mixup targets).
- ``progress`` is the share of training done before this step, in [0, 1): schedules inside an objective
  (CF-ViT's warm-up) follow it, so they do not depend on how a trainer counts epochs or steps.
- ``logits`` (B, num_classes) are what the trainer reports accuracy on (CF-ViT: the fine pass's).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def training_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion: Criterion,
                  progress: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits) of one training batch x (B, C, H, W) with targets y: the model's own
    ``training_loss`` when it has one, else ``criterion(model(x), y)``."""
    own = getattr(model, "training_loss", None)
    if own is not None:
        return own(x, y, criterion, progress)
    logits = model(x)  # (B, num_classes)
    return criterion(logits, y), logits

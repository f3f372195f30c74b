"""``build_model``: the model of an Arch, dispatched on its mechanisms (one line each)."""
from __future__ import annotations

from torch import nn

from nas.arch import Arch, CoarseFineTokenizer
from nas.models.coarse_fine import CoarseFineViT
from nas.models.vit import VisionTransformer
from nas.models.zoo import get_arch
from nas.shapes import WARMUP_FRACTION


def build_model(arch: Arch | str, drop_path: float = 0.0, coarse_fine_warmup: float | None = None) -> nn.Module:
    """Build the static model of an Arch, or of a registered arch name (``nas.models.zoo.list_archs()``).

    Training options (neither changes the weights nor an eval-mode forward): ``drop_path``, the stochastic depth
    of the last layer (linear over depth); ``coarse_fine_warmup``, the share of training a CF-ViT trains its
    fine pass on all fine tokens (None: the paper's, ``nas.shapes.WARMUP_FRACTION``).
    """
    if isinstance(arch, str):
        arch = get_arch(arch)
    # The data-dependent models dispatch here, one line each.
    if isinstance(arch.tokenizer, CoarseFineTokenizer):  # CF-ViT, arXiv 2203.03821
        warmup = WARMUP_FRACTION if coarse_fine_warmup is None else coarse_fine_warmup
        return CoarseFineViT(arch, drop_path=drop_path, warmup_fraction=warmup)
    return VisionTransformer(arch, drop_path=drop_path)

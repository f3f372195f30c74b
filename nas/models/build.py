"""``build_model``: the model of an Arch; a tokenizer that runs the body its own way builds the whole model."""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from nas.arch import Arch
from nas.mechanisms import tokenizer
from nas.models.vit import VisionTransformer
from nas.models.zoo import get_arch


def build_model(arch: Arch | str, drop_path: float = 0.0, options: Mapping[str, Any] | None = None) -> nn.Module:
    """Build the static model of an Arch, or of a registered arch name (``nas.models.zoo.list_archs()``).

    Training options (neither changes the weights nor an eval-mode forward): ``drop_path``, the stochastic depth
    of the last layer (linear over depth); ``options``, the mechanisms' recipe sections by mechanism name
    (``Recipe.mechanisms``: an instance of each mechanism's ``training`` dataclass; absent: its defaults).
    """
    if isinstance(arch, str):
        arch = get_arch(arch)
    mech = tokenizer(arch.tokenizer)
    if mech.builds_model:
        return mech.hooks().build_model(arch, drop_path=drop_path, options=(options or {}).get(mech.name))
    return VisionTransformer(arch, drop_path=drop_path)

"""nas.measure: mean / worst / best per-image MACs over data, for any model following the last_macs protocol."""
from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import DataLoader, TensorDataset

from nas.errors import NasError
from nas.measure import MeasuredCost, measure_cost
from nas.mechanisms.ats.model import apply_ats


def untrained_ats(keep: float = 0.72, weight_init: str = "jax"):
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2, num_classes=10,
                            weight_init=weight_init)
    return apply_ats(vit, [1, 2, 3], keep=keep)


def loader(n: int = 10, batch_size: int = 4) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
    return DataLoader(data, batch_size=batch_size)


def test_measured_cost_is_the_per_image_cost_alone():
    model = untrained_ats()
    cost = measure_cost(model, loader(10, 4))
    alone = []
    with torch.no_grad():
        for x, _ in loader(10, 1):
            model(x)
            alone.append(int(model.last_macs[0]))
    assert cost == MeasuredCost(sum(alone) / 10, max(alone), min(alone), 10)
    assert isinstance(cost.macs_worst, int) and isinstance(cost.macs_best, int)


def test_untrained_vit_at_keep_072_spends_less_than_its_worst_case():
    """Untrained timm ViT (its 'jax' init: xavier qkv, so the cls attention is not flat) on random images."""
    model = untrained_ats(0.72)
    lo, hi = model.macs_bounds()
    cost = measure_cost(model, loader(12, 4))
    assert lo <= cost.macs_best <= cost.macs_mean < hi
    assert cost.macs_worst <= hi


def test_max_batches_and_mode_restored():
    model = untrained_ats().train()
    cost = measure_cost(model, loader(10, 4), max_batches=2)
    assert cost.images == 8 and model.training
    with pytest.raises(NasError):
        measure_cost(model, loader(10, 4), max_batches=0)


class Static(torch.nn.Module):
    """A static model following the protocol with a scalar."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3 * 32 * 32, 10)
        self.last_macs = None

    def forward(self, x):
        self.last_macs = self.fc.weight.numel()
        return self.fc(x.flatten(1))


def test_static_model_and_dict_batches():
    batches = [{"image": torch.randn(3, 3, 32, 32)}, {"image": torch.randn(2, 3, 32, 32)}]
    assert measure_cost(Static(), batches) == MeasuredCost(30720.0, 30720, 30720, 5)


def test_protocol_errors():
    with pytest.raises(NasError, match="last_macs"):
        measure_cost(torch.nn.Flatten(), loader(4, 2))
    with pytest.raises(NasError, match="empty"):
        measure_cost(untrained_ats(), [])
    with pytest.raises(NasError, match="images"):
        measure_cost(untrained_ats(), [["not a tensor"]])

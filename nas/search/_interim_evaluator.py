"""Stand-in for ``nas.search.evaluator`` until it lands: same interface, minimal behaviour. Delete on merge."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.arch import Arch


@dataclass(frozen=True)
class Evaluation:
    arch_hash: str
    score: float
    loss: float
    macs: int
    macs_mean: int | None
    params: int
    seconds: float


@dataclass
class SupernetRun:
    space: Any
    supernet: Any
    recipe: Any
    data: str
    run_dir: Path

    def splits(self) -> Any:
        from nas.data import load_data
        t = self.space.template()
        return load_data(self.data, t["input"]["size"], t["input"]["channels"], seed=self.recipe.seed,
                         holdout=self.recipe.data.holdout, limit=self.recipe.data.limit)


def load_supernet_run(run_dir: str | Path, data: str | None = None) -> SupernetRun:
    import json

    from safetensors.torch import load_model

    from nas.space import load_space
    from nas.supernet import Supernet
    from nas.train.recipe import load_recipe

    run = Path(run_dir)
    space = load_space(run / "space.yaml")
    recipe = load_recipe(run / "recipe.yaml")
    info = json.loads((run / "run.json").read_text())
    torch.manual_seed(0)
    sn = Supernet(space)
    load_model(sn, str(run / "supernet.safetensors"))
    return SupernetRun(space, sn.eval(), recipe, data or info["data"]["spec"], run)


class Evaluator:
    def __init__(self, supernet: nn.Module, splits: Any, split: str = "search", *, batch_size: int = 256,
                 device: str = "cpu") -> None:
        from nas.data import make_loader
        self.supernet, self.splits = supernet, splits
        self.loader = make_loader(getattr(splits, split), batch_size, shuffle=False, seed=0)
        self.cache: dict[str, Evaluation] = {}

    def __call__(self, arch: Arch) -> Evaluation:
        from nas.cost import cost
        from nas.measure import batch_macs

        h = arch.hash()
        if h in self.cache:
            return self.cache[h]
        t0 = time.perf_counter()
        model = self.supernet.extract(arch).eval()
        n = correct = 0
        loss = 0.0
        macs_sum = 0
        with torch.no_grad():
            for x, y in self.loader:
                logits = model(x)
                loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
                correct += (logits.argmax(-1) == y).sum().item()
                n += len(y)
                if arch.data_dependent:
                    macs_sum += int(batch_macs(model, len(y)).sum())
        c = cost(arch)
        e = Evaluation(h, correct / n, loss / n, c.macs, round(macs_sum / n) if arch.data_dependent else None,
                       c.params, time.perf_counter() - t0)
        self.cache[h] = e
        return e

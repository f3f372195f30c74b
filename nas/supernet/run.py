"""A trained supernet run directory read back (``load_supernet_run``), and the one way to score an arch with it.

The directory is the one ``nas train-supernet`` writes (``nas.train.rundir``: run.json, space.yaml, recipe.yaml,
supernet.safetensors). ``SupernetRun`` holds the resolved space, the recipe, the data spec and the supernet with
its final weights. ``SupernetRun.evaluator(split)`` scores many archs of the trained space on one split (the rank
check); ``SupernetRun.scored(arch, split)`` is "the scored model of this arch on this split": the arch
mapped to the trained space (``proxy_arch``), an ``Evaluator`` over the split (``nas.supernet.scoring``) and its
model (the supernet path bound to the arch, or an extracted copy with BatchNorm recalibrated). ``nas eval``
(``evaluate_arch``), ``nas flops --supernet`` (``measure_inherited``) and ``nas viz --supernet`` go through it.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from nas.arch import Arch
from nas.errors import NasError
from nas.space import SearchSpace
from nas.train.recipe import Recipe
from nas.train.rundir import RUN_KEYS, SUPERNET_RUN_FORMAT, read_run_json

if TYPE_CHECKING:
    from torch import nn

    from nas.data import DataSplits
    from nas.supernet.scoring import Evaluation, Evaluator
    from nas.supernet.supernet import Supernet


@dataclass
class SupernetRun:
    """A trained supernet run directory, read back: what search and evaluation need from it.

    ``space`` is the resolved space the supernet was trained on (recipe overrides and ``num_classes`` applied,
    read from ``space.yaml``); ``data`` the data spec recorded in run.json; ``info`` run.json itself.
    """
    run_dir: Path
    space: SearchSpace
    supernet: "Supernet"  # weights loaded from <run>/supernet.safetensors
    recipe: Recipe
    data: str
    info: dict[str, Any] = field(repr=False)

    def target_space(self) -> SearchSpace:
        """The space as written (before the recipe's overrides), read from the file run.json names."""
        from nas.shipped import resolves
        from nas.space import load_space

        file = self.info["space"]["file"]  # as given: a path or a shipped space name (nas.shipped)
        if not isinstance(file, str):
            raise NasError("run.json records no space file (null), so the space as written is unknown; retrain "
                           "the supernet from a space file", file=str(self.run_dir / "run.json"), key="space.file")
        if not resolves("space", file):
            raise NasError(f"the space file this supernet was trained from, {file}, is not there (run.json "
                           f"records it relative to where training ran); run from that folder",
                           file=str(self.run_dir / "run.json"), key="space.file")
        return load_space(file)

    def proxy_arch(self, arch: Arch) -> Arch:
        """``arch`` as an arch of the trained space: itself when it is one, else the arch of the space as written
        (the target) mapped through ``nas.space.proxy.to_proxy``."""
        if arch in self.space:
            return arch
        from nas.space.proxy import to_proxy

        target = self.target_space()
        try:
            target.encode(arch)
        except ValueError as e:
            raise NasError(f"the arch is neither in the supernet's space {self.space.name!r} (hash {self.space.hash}) "
                           f"nor in the space it was derived from ({self.info['space']['file']}): {e}",
                           file=str(self.run_dir)) from None
        return to_proxy(arch, target, self.space)

    def splits(self, data: str | None = None, val_images: int | None = None) -> "DataSplits":
        """The data splits at the trained space's input size, split with the recipe's seed, holdout and limit.

        With the recorded data (``data`` None or equal to it) the train and search splits must be the ones
        the supernet was trained with (their digests are compared with run.json): a search split that
        overlapped the training images would score memorisation. ``val_images`` caps the val split.
        """
        from nas.data import load_data

        limit = self.recipe.data.limit
        if val_images is not None:
            limit = {s: limit for s in ("train", "search", "val")} if not isinstance(limit, dict) else dict(limit)
            limit["val"] = min(val_images, limit.get("val") or val_images)
        t = self.space.template()
        spec = self.data if data is None else data
        splits = load_data(spec, t["input"]["size"], t["input"]["channels"], seed=self.recipe.seed,
                           holdout=self.recipe.data.holdout, limit=limit)
        if splits.num_classes != t["num_classes"]:
            raise NasError(f"data {spec!r} has {splits.num_classes} classes, the supernet was trained for "
                           f"{t['num_classes']}", file=str(self.run_dir / "run.json"), key="data.spec")
        if spec == self.data:
            digests, recorded = splits.split_record()["sha256"], self.info["data"]["sha256"]  # a mapping (read_run_json)
            for split in ("train", "search"):
                if digests[split] != recorded.get(split):
                    raise NasError(f"data {spec!r} now gives another {split} split than the supernet was trained "
                                   f"with (other images, seed or holdout)", file=str(self.run_dir / "run.json"),
                                   key="data.sha256")
        return splits

    def evaluator(self, split: str, data: str | None = None, val_images: int | None = None,
                  batch_size: int = 256) -> "Evaluator":
        """An ``Evaluator`` of this run's supernet on ``split`` of ``data`` (``splits``), for scoring many archs of
        the trained space on the same images."""
        from nas.supernet.scoring import Evaluator

        return Evaluator(self.supernet, self.splits(data, val_images), split, batch_size=batch_size)

    @contextmanager
    def scored(self, arch: Arch, split: str, data: str | None = None, val_images: int | None = None,
               batch_size: int = 256) -> Iterator["Scored"]:
        """The scored model of ``arch`` (of the trained space or of the space as written) on ``split`` of ``data``
        (default: the data it was trained on; ``val_images`` caps the val split), with this run's weights."""
        proxy = self.proxy_arch(arch)
        ev = self.evaluator(split, data, val_images, batch_size)
        t0 = time.perf_counter()
        with ev.model(proxy) as model:
            yield Scored(proxy, model, ev, t0)


@dataclass(frozen=True)
class Scored:
    """One arch ready to score with a supernet run's weights (``SupernetRun.scored``)."""
    arch: Arch              # the arch scored: the given arch, or its proxy in the trained space
    model: "nn.Module"      # its model in eval mode: the supernet path, or a BatchNorm-recalibrated copy
    evaluator: "Evaluator"  # the split's images (``batches()``, ``num_images``)
    started: float          # time.perf_counter() before the model was made (``Evaluation.seconds`` counts from it)

    def evaluation(self) -> "Evaluation":
        """Top-1, loss and MACs of the model over every image of the split."""
        from nas.supernet.scoring import evaluation

        out = self.evaluator.per_image_of(self.arch, self.model)
        return evaluation(self.arch, out, seconds=time.perf_counter() - self.started)


def load_supernet_run(run_dir: str | os.PathLike) -> SupernetRun:
    """Read a supernet run: its resolved space, recipe, data spec, and the supernet with its final weights."""
    from nas.space import load_space
    from nas.train.recipe import load_recipe

    run = Path(run_dir)
    meta = run / "run.json"
    if not meta.exists():
        raise NasError("not a supernet run directory (no run.json); train one with `nas train-supernet SPACE "
                       "--out DIR`", file=str(run))
    info = read_run_json(run, SUPERNET_RUN_FORMAT, RUN_KEYS,
                         "retrain it, or give the run directory `nas train-supernet SPACE --out DIR` wrote")
    space = load_space(run / "space.yaml")
    recipe = load_recipe(run / "recipe.yaml")
    for what, obj in (("space", space.hash), ("recipe", recipe.hash())):
        if obj != info[what]["hash"]:
            raise NasError(f"{what}.yaml has hash {obj}, run.json records {info[what]['hash']}: the run directory "
                           f"was edited, or written by a version of nas whose {what} format differs; retrain it",
                           file=str(meta), key=f"{what}.hash")
    weights = run / "supernet.safetensors"
    if not weights.exists():
        raise NasError("no supernet.safetensors: training has not finished; run the same `nas train-supernet` "
                       "command to resume and finish it", file=str(run))
    return SupernetRun(run, space, _load_supernet(space, weights), recipe, info["data"]["spec"], info)


def _load_supernet(space: SearchSpace, weights: Path) -> "Supernet":
    import torch

    from nas.supernet.supernet import Supernet
    from nas.weights import load_weights

    with torch.random.fork_rng(devices=[]):  # building draws initial values: leave the caller's RNG alone
        supernet = Supernet(space)
    load_weights(weights, supernet, what=f"the supernet of space {space.name!r}")
    return supernet.eval()


def evaluate_arch(run_dir: str, arch: Arch, split: str = "search", data: str | None = None,
                  batch_size: int = 256) -> tuple[Arch, "Evaluation", int]:
    """``nas eval``: score ``arch`` (of the supernet's space or of the space as written) with the weights of
    the supernet run in ``run_dir`` on ``split`` of ``data`` (default: the data it was trained on).
    Returns the arch scored (in the supernet's space), its evaluation and the number of images."""
    with load_supernet_run(run_dir).scored(arch, split, data, batch_size=batch_size) as s:
        return s.arch, s.evaluation(), s.evaluator.num_images


def measure_inherited(run_dir: str, arch: Arch, data: str | None = None, images: int = 256,
                      batch_size: int = 256) -> dict[str, int | str]:
    """``nas flops --supernet``: executed MACs per image of ``arch`` with the supernet's weights sliced for it
    (BatchNorm recalibrated), over the first ``images`` images of the val split of ``data``, at the scale of
    the supernet's space (a target arch is measured as its proxy)."""
    from nas.cost import cost
    from nas.measure import measure_cost

    with load_supernet_run(run_dir).scored(arch, "val", data, val_images=images, batch_size=batch_size) as s:
        m = measure_cost(s.model, s.evaluator.batches())
    out: dict[str, int | str] = {"macs_mean": round(m.macs_mean), "macs_worst_seen": m.macs_worst,
                                 "macs_best_seen": m.macs_best, "images": m.images}
    if s.arch != arch:  # measured on the proxy: say so, with the proxy's own analytic figures
        out.update(measured_on="proxy", proxy_macs=cost(s.arch).macs, proxy_params=cost(s.arch).params)
    return out

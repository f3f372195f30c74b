"""Retraining one arch from scratch (or from its inherited weights) on the shared loop, then its final numbers.

``retrain(arch_file, data, recipe, out, init)`` trains the model of an exported arch (``nas.models.build_model``)
with the generic ``Trainer`` (``nas.train.loop``): the path of every step is the arch itself, scored with the
model's own objective (CF-ViT: both passes and the KL term, its warm-up following the recipe's section for it).
Checkpoints, exact resume after SIGKILL, signals and logs are the loop's; the run directory is ``nas.train.rundir``'s
(format ``nas-retrain-run/1``: a changed arch, recipe, data or ``--init`` is refused). At the end the model is
scored on the ``val`` split (top-1, cross-entropy) and, for data-dependent archs (ATS, CF-ViT), the mean MACs per
image executed on those images is measured (``nas.measure`` protocol, eval mode: early exits and token sampling as
at inference). ``<run>/final.safetensors`` and ``<run>/metrics.json`` hold the result.

The arch trained: the arch file with the recipe's ``space_overrides`` applied by key path (the same keys a
supernet recipe uses on a space, e.g. ``input.size: 32``, ``tokenizer.patch_size: 8``), then its
``width_multiplier`` (every stage's dim scaled, rounded to a multiple of its heads), and ``num_classes`` from
the data; run.json records the resulting overrides. So the target arch of a search (``best.yaml``, 224 px, 1000
classes) becomes, under ``recipes/retrain_cpu.yaml``, a 32 px proxy on the built-in data at a quarter of its
widths, with the search's choices between stages kept.

``init="inherited"`` starts from the weights exported next to the arch file: ``<stem>.safetensors`` (a search on
the target itself: ``best.safetensors`` next to ``best.yaml``), else the proxy's, ``<stem>.proxy.yaml`` with
``<stem>.proxy.safetensors`` (a search on a proxy): then the proxy arch is the one trained. The weights are loaded
with ``nas.weights.load_weights``, which refuses any mismatch of names or shapes with one line.

Decisions where the papers are silent:

- Overrides on an arch file take fixed values (an arch has no choices); a ``{choice: ...}`` value is refused at
  the recipe's line. Keys the arch file lacks are errors, as for spaces: the CPU recipe's keys fit patch and
  coarse-to-fine tokenizers; other archs take a recipe of their own.
- With ``--init inherited`` the overrides still apply: weights of another shape are refused by ``load_weights``
  (a proxy's weights fit the proxy arch, which the CPU recipe leaves unchanged at 32 px, patch 8).
- The val loss is plain cross-entropy, as in ``nas eval``; the training loss is the recipe's.
- Default run directory: ``runs/<arch name or hash>-retrain`` (name and hash of the arch trained).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from nas.arch import Arch
from nas.atomic import atomic_write
from nas.cost import cost, training_floats_floor
from nas.data import DataSplits, load_data, make_loader
from nas.errors import NasError
from nas.limits import check_model_size, check_training_memory
from nas.measure import batch_macs
from nas.train.checkpoint import sha256_file
from nas.train.loop import Job, SingleArch, Trainer, TrainResult, TrainState, run_job
from nas.train.recipe import Recipe, load_recipe
from nas.train.rundir import retrain_spec

INITS = ("scratch", "inherited")


@dataclass
class RetrainResult(TrainResult):
    arch: Arch | None = None
    val_top1: float = math.nan        # in [0, 1]
    val_loss: float = math.nan
    val_images: int = 0
    macs_mean: float | None = None   # measured on val, data-dependent archs only
    metrics: Path | None = None      # <run>/metrics.json


def default_out(arch: Arch) -> Path:
    return Path("runs") / f"{arch.name or arch.hash()}-retrain"


def inherited_files(arch_file: str | os.PathLike) -> tuple[Path, Path]:
    """(arch file to train, its weights) exported next to ``arch_file``: ``<stem>.safetensors``, else the proxy's
    ``<stem>.proxy.yaml`` + ``<stem>.proxy.safetensors``."""
    path = Path(arch_file)
    stem = path.name[: -len(path.suffix)] if path.suffix in (".yaml", ".yml") else path.name
    own = path.with_name(f"{stem}.safetensors")
    if own.is_file():
        return path, own
    proxy, proxy_w = path.with_name(f"{stem}.proxy{path.suffix}"), path.with_name(f"{stem}.proxy.safetensors")
    if proxy.is_file() and proxy_w.is_file():
        return proxy, proxy_w
    raise NasError(f"--init inherited: no exported weights next to the arch file; expected {own.name} (a search on "
                   f"the target) or {proxy.name} with {proxy_w.name} (a search on a proxy); drop --init to train "
                   f"from scratch", file=str(arch_file))


def resolve_arch(arch_file: str, data: str, recipe: Recipe) -> tuple[Arch, DataSplits, dict[str, Any]]:
    """The arch with the recipe's overrides and the data's class count, its data splits, and the overrides applied
    (``num_classes`` among them when the data's class count differs from the file's)."""
    from nas.space import load_arch

    overrides = dict(recipe.space_overrides)
    arch = recipe.overridden(load_arch, arch_file, overrides)
    if recipe.width_multiplier != 1.0:
        m = recipe.width_multiplier
        for i, s in enumerate(arch.stages):
            overrides[f"stages[{i}].dim"] = max(1, round(s.dim * m / s.heads)) * s.heads
        arch = recipe.overridden(load_arch, arch_file, overrides)
    splits = load_data(data, arch.img_size, arch.in_chans, seed=recipe.seed, holdout=recipe.data.holdout,
                       limit=recipe.data.limit)
    if splits.num_classes != arch.num_classes:
        overrides["num_classes"] = splits.num_classes
        arch = recipe.overridden(load_arch, arch_file, overrides)
    return arch, splits, overrides


def build_retrain_model(arch: Arch, recipe: Recipe, weights: Path | None = None) -> nn.Module:
    """The arch's model with the recipe's training options, with ``weights`` loaded when given."""
    from nas.models import build_model
    from nas.weights import load_weights

    model = build_model(arch, **recipe.model_kwargs())
    if weights is not None:
        load_weights(weights, model, what=f"the arch {arch.name or arch.hash()}")
    return model


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Any, batch_size: int, device: torch.device,
             measure_macs: bool) -> dict[str, float]:
    """Top-1 in [0, 1] and mean cross-entropy of ``model`` on ``dataset`` in eval mode, and the mean MACs per image
    it executed when ``measure_macs`` (the ``nas.measure`` protocol)."""
    was = model.training
    model.eval()
    correct, loss, macs, n = 0, 0.0, 0, 0
    try:
        for x, y in make_loader(dataset, batch_size, shuffle=False):
            x, y = x.to(device), y.to(device)
            logits = model(x)  # (B, num_classes)
            correct += int((logits.argmax(-1) == y).sum())
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            if measure_macs:
                macs += int(batch_macs(model, x.shape[0]).sum())
            n += x.shape[0]
    finally:
        model.train(was)
    out = {"top1": correct / max(n, 1), "loss": loss / max(n, 1), "images": n}
    if measure_macs:
        out["macs_mean"] = macs / max(n, 1)
    return out


def retrain(arch_file: str | os.PathLike, data: str = "builtin", recipe: Recipe | str | os.PathLike | None = None,
            out: str | os.PathLike | None = None, init: str = "scratch", resume: bool = False,
            progress: bool = True, on_step: Callable[[TrainState], None] | None = None) -> RetrainResult:
    """Train (or resume training) the arch of ``arch_file`` on ``data`` with ``recipe`` into ``out``; score it on
    ``val``. ``recipe`` None: ``nas.train.recipe.default_recipe('retrain', data)``. Re-running with the same
    arguments resumes; ``resume=True`` additionally requires that ``out`` holds a run. On a Ray cluster:
    ``nas.distributed.train``."""
    job = retrain_job(arch_file, data, recipe, out, init, progress, on_step)
    return run_job(job, resume)


def retrain_job(arch_file: str | os.PathLike, data: str = "builtin", recipe: Recipe | str | os.PathLike | None = None,
                out: str | os.PathLike | None = None, init: str = "scratch", progress: bool = True,
                on_step: Callable[[TrainState], None] | None = None) -> Job:
    """The retraining job of ``retrain`` (its arguments), checked (model size, memory, inherited weights)."""
    from nas.train.recipe import default_recipe

    if init not in INITS:
        raise NasError(f"--init: got {init!r}; allowed: {', '.join(INITS)}")
    rc = recipe if isinstance(recipe, Recipe) else load_recipe(recipe if recipe is not None
                                                               else default_recipe("retrain", data))
    arch_file = str(arch_file)
    trained_file, weights = arch_file, None
    if init == "inherited":
        found, w = inherited_files(arch_file)
        trained_file, weights = str(found), str(w)
    arch, splits, overrides = resolve_arch(trained_file, data, rc)
    c = cost(arch)
    what = "the arch" + (" (with the recipe's space_overrides)" if rc.space_overrides else "")
    check_model_size(c.macs, c.params, what, file=trained_file)
    check_training_memory(training_floats_floor(arch), c.params, rc.batch_size, what, file=rc.file)
    tag = "scratch" if weights is None else f"inherited:{sha256_file(Path(weights))[:16]}"
    spec = retrain_spec(arch, trained_file, rc, splits.split_record(), overrides, tag)
    run = Path(out) if out is not None else default_out(arch)

    def note() -> None:
        if trained_file != arch_file:
            print(f"nas: note: --init inherited: training the proxy arch {trained_file} from {weights}",
                  file=sys.stderr)
        if "num_classes" in overrides and overrides["num_classes"] != rc.space_overrides.get("num_classes"):
            print(f"nas: note: data {data!r} has {splits.num_classes} classes: num_classes of {trained_file} is set "
                  f"to {splits.num_classes}", file=sys.stderr)

    def make(**replica: Any) -> Trainer:
        return Trainer(lambda: build_retrain_model(arch, rc, None if weights is None else Path(weights)), splits,
                       rc, run, SingleArch(arch), {"arch_hash": arch.hash()}, weights="final.safetensors",
                       metadata={"arch_hash": arch.hash()}, progress=progress, on_step=on_step, **replica)

    def finish(trainer: Trainer, r: TrainResult) -> RetrainResult:
        t = time.perf_counter()
        ev = evaluate(trainer.model, splits.val, min(rc.batch_size, 256), trainer.device, arch.data_dependent)
        metrics = {"format": "nas-retrain-metrics/1", "arch_hash": arch.hash(), "arch_file": trained_file,
                   "init": tag, "recipe_hash": rc.hash(), "epochs": rc.epochs, "steps": r.steps,
                   "val_top1": ev["top1"], "val_loss": ev["loss"], "val_images": ev["images"],
                   "macs": c.macs, "params": c.params, "macs_mean": ev.get("macs_mean"),
                   "weights": str(r.weights), "weights_sha256": sha256_file(r.weights)}
        path = run / "metrics.json"
        atomic_write(path, json.dumps(metrics, indent=1))
        trainer.log_line(f"val top-1 {ev['top1']:.4f} loss {ev['loss']:.4f} on {ev['images']} images"
                         + (f", mean MACs {ev['macs_mean']:.4g}" if "macs_mean" in ev else "")
                         + f" ({time.perf_counter() - t:.1f} s)")
        return RetrainResult(**vars(r), arch=arch, val_top1=ev["top1"], val_loss=ev["loss"], val_images=ev["images"],
                             macs_mean=ev.get("macs_mean"), metrics=path)

    return Job(run, spec, rc, make, finish, note)


__all__ = ["retrain", "retrain_job", "RetrainResult", "resolve_arch", "inherited_files", "build_retrain_model",
           "evaluate", "default_out", "INITS"]

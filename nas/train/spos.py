"""SPOS supernet training: one sampled path per step, on the shared loop (``nas.train.loop``), resumable bit for bit.

What is particular to SPOS is the path of a step: ``SposPath`` draws the arch of step ``t`` as a pure function of
``(seed, t)`` (``nas.train.sampler``, ``at(t)``) and runs it as the supernet's path (``Supernet.bound(arch)``: the
arch's own model carrying the supernet's slices, so the arch's own objective applies, CF-ViT's two-pass loss
included). Everything else (optimiser, schedule, data order,
checkpoints, exact resume after SIGKILL, signals, logs) is the generic ``Trainer``'s. ``resolve`` makes the space
a recipe trains (its ``space_overrides``, ``num_classes`` from the data).

Decisions where the papers are silent:

- ``num_classes`` of the supernet always comes from the data: the space's value is overridden (with a note on
  stderr) when they differ, so the head matches the labels; the resolved space is what run.json hashes.
- The arch of step ``t`` is drawn by its own generator, seeded by ``f"{seed}|arch|{t}"``: changing the model or
  augmentation does not change which archs are drawn, every rank of a data-parallel run draws the same arch
  without a broadcast, and a run on one process trains the same archs as a run on N workers (of the same global
  batch). A checkpoint keeps only the sampler's statistics (FLOPs-bin hits and misses, for the log). Checkpoints
  of runs from before this rule (one sampler stream whose state they hold) resume no further: the rest of such a
  run would train other archs; a finished one still exports and serves search.
- The final weights are written to ``<run>/supernet.safetensors`` (metadata: ``space_hash``, ``steps``).
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from torch import nn

from nas.arch import Arch
from nas.cost import training_floats_floor
from nas.data import DataSplits, load_data
from nas.errors import NasError
from nas.limits import check_model_size, check_training_memory
from nas.space import SearchSpace, load_space
from nas.train.loop import Job, TrainResult, Trainer, TrainState, run_job, seed_everything
from nas.train.recipe import Recipe, load_recipe
from nas.train.rundir import supernet_spec
from nas.train.sampler import UniformSampler, make_sampler

__all__ = ["Job", "SposPath", "SposTrainer", "TrainResult", "TrainState", "default_out", "resolve", "seed_everything",
           "supernet_job", "train_supernet"]
ARCH_OF_STEP = "sampler(random.Random(f'{seed}|arch|{step}'))"  # the rule a checkpoint's path state names


def default_out(space: SearchSpace) -> Path:
    return Path("runs") / f"{space.name}-supernet"


# --- resolving space + data ---------------------------------------------------------------------------
def _load_space(path: str, overrides: dict[str, Any], recipe: Recipe) -> SearchSpace:
    return recipe.overridden(load_space, path, overrides)


Resolved = tuple[SearchSpace, DataSplits, dict[str, Any]]
"""A space resolved for training: the space with the recipe's overrides and the data's class count, the data
splits, and the overrides applied (``resolve``)."""


def resolve(space_path: str, data: str, recipe: Recipe) -> Resolved:
    """The space with the recipe's overrides and the data's class count, its data splits, and the overrides
    (``num_classes`` among them when the data's class count differs from the space's)."""
    if recipe.width_multiplier != 1.0:
        raise recipe.error("width_multiplier", "width_multiplier narrows the arch of a retraining; a supernet "
                           "recipe narrows its space with space_overrides (e.g. stages[1].dim: {choice: [48, 64]})")
    overrides = dict(recipe.space_overrides)
    space = _load_space(space_path, overrides, recipe)
    t = space.template()
    splits = load_data(data, t["input"]["size"], t["input"]["channels"], seed=recipe.seed,
                       holdout=recipe.data.holdout, limit=recipe.data.limit)
    if splits.num_classes != t["num_classes"]:
        overrides["num_classes"] = splits.num_classes
        space = _load_space(space_path, overrides, recipe)
    return space, splits, overrides


def _build_supernet(space: SearchSpace, **model_kwargs: Any) -> nn.Module:
    from nas.supernet import Supernet
    return Supernet(space, **model_kwargs)


# --- the SPOS path ------------------------------------------------------------------------------------
class SposPath:
    """The arch of step ``t`` from ``sampler.at(t)`` (a pure function of (seed, t)), run as the supernet's path."""

    def __init__(self, sampler: UniformSampler) -> None:
        self.sampler = sampler

    def arch(self, step: int) -> Arch:
        return self.sampler.at(step)

    @contextmanager
    def bind(self, model: nn.Module, arch: Arch) -> Iterator[nn.Module]:
        with model.bound(arch) as path:  # type: ignore[operator]  # nas.supernet.Supernet
            yield path

    def state_dict(self) -> dict[str, Any]:
        return {"arch_of_step": ARCH_OF_STEP, **self.sampler.counters()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("arch_of_step") != ARCH_OF_STEP:
            raise NasError("this checkpoint was written by an earlier nas that drew the arch of each step from one "
                           "sampler stream; this version draws it from (seed, step) alone, so resuming would train "
                           "other archs than the run began with: finish the run with the version that started it, "
                           "or start over with another --out")
        self.sampler.load_counters(state)

    def stats(self) -> str:
        return self.sampler.stats()


class SposTrainer(Trainer):
    """The generic ``Trainer`` on a supernet of ``space`` with a ``SposPath``; ``sampler`` is the path's."""

    def __init__(self, space: SearchSpace, splits: DataSplits, recipe: Recipe, run_dir: Path,
                 build: Callable[..., nn.Module] = _build_supernet, progress: bool = True,
                 on_step: Callable[[TrainState], None] | None = None, **replica: Any) -> None:
        self.space = space
        self.sampler: UniformSampler = make_sampler(space, recipe.sampler.type, recipe.seed, recipe.sampler.bins,
                                                    recipe.sampler.max_tries)
        super().__init__(lambda: build(space, **recipe.model_kwargs()), splits, recipe, run_dir,
                         SposPath(self.sampler), {"space_hash": space.hash}, weights="supernet.safetensors",
                         metadata={"space_hash": space.hash}, progress=progress, on_step=on_step, **replica)


def supernet_job(space: str | os.PathLike, data: str = "builtin", recipe: Recipe | str | os.PathLike | None = None,
                 out: str | os.PathLike | None = None, progress: bool = True,
                 on_step: Callable[[TrainState], None] | None = None,
                 build: Callable[..., nn.Module] = _build_supernet, resolved: Resolved | None = None) -> Job:
    """The supernet training job of ``train_supernet`` (its arguments), checked (model size, memory)."""
    rc = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    space_file = str(space)
    sp, splits, overrides = resolved if resolved is not None else resolve(space_file, data, rc)
    bounds = sp.cost_bounds()  # before anything is allocated or written
    largest = "the largest arch of the space" + (" (with the recipe's space_overrides)" if rc.space_overrides else "")
    check_model_size(bounds["max_macs"], bounds["max_params"], largest, file=space_file)
    check_training_memory(training_floats_floor(sp.extreme_archs()["max_macs"]), bounds["max_params"],
                          rc.batch_size, largest, file=rc.file)
    run = Path(out) if out is not None else default_out(sp)
    spec = supernet_spec(sp, space_file, rc, splits.split_record(), overrides)

    def note() -> None:
        if overrides.get("num_classes", None) != rc.space_overrides.get("num_classes"):
            print(f"nas: note: data {data!r} has {splits.num_classes} classes: num_classes of {space_file} is set "
                  f"to {splits.num_classes}", file=sys.stderr)

    def make(**replica: Any) -> Trainer:
        return SposTrainer(sp, splits, rc, run, build=build, progress=progress, on_step=on_step, **replica)

    return Job(run, spec, rc, make, finish=lambda trainer, result: result, note=note)


def train_supernet(space: str | os.PathLike, data: str = "builtin",
                   recipe: Recipe | str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                   resume: bool = False, progress: bool = True,
                   on_step: Callable[[TrainState], None] | None = None,
                   build: Callable[..., nn.Module] = _build_supernet, resolved: Resolved | None = None) -> TrainResult:
    """Train (or resume training) a SPOS supernet of ``space`` on ``data`` with ``recipe`` into ``out``.

    Re-running with the same arguments resumes from the newest valid checkpoint in ``out``; ``resume=True``
    additionally requires that ``out`` holds a run. ``on_step(state)`` is called after every step (hooks, tests);
    ``build(space, **recipe.model_kwargs())`` makes the supernet (default ``nas.supernet.Supernet``; the trainer
    runs a path with ``supernet.bound(arch)``). ``resolved``: ``resolve(space, data, recipe)`` when the caller
    has it already (``nas search`` plans with it), so the data is loaded once. On a Ray cluster:
    ``nas.distributed.train``.
    """
    job = supernet_job(space, data, recipe, out, progress, on_step, build, resolved)
    return run_job(job, resume)

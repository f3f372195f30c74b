"""SPOS supernet training: one sampled path per step, resumable bit for bit.

Each step samples one arch (``nas.train.sampler``), scores the batch with that path's training objective (the
arch's model's, ``nas.models.objective``: ``criterion(model(x), y)`` for most models, the two-pass loss and
warm-up for CF-ViT) and updates the weights on that path: tensors off the path keep ``grad = None``
(``zero_grad(set_to_none=True)``), so the optimiser leaves them, their momentum and their weight decay untouched,
as in SPOS; the unused rows of a tensor the path slices get a zero gradient, so momentum and weight decay still
move those (as in AutoFormer's weight entanglement).
Checkpoints are taken at every epoch end, every ``checkpoint.every_steps`` steps, and on SIGINT/SIGTERM at the next
step boundary (a second signal stops at once; the last checkpoint is intact).

Exact resume: a checkpoint holds the weights, the optimiser (its state keyed by parameter name) and scheduler, the
python/numpy/torch RNG states, the arch sampler's state and the running loss and accuracy sums of the epoch in
progress (the epoch summary after a resume is the mean over the whole epoch), taken at a step boundary; the data
order of epoch ``e`` is a pure function of ``(seed, e)`` and a resumed epoch skips the batches already trained
(``SeededLoader.set_epoch``). A run killed at any point and re-run ends with the same weights as an uninterrupted
one, bitwise on CPU with the same torch and thread count. Not covered: random data augmentation in loader worker
processes (ImageFolder data with ``data.num_workers > 0``) is exact across epoch boundaries only, and GPU kernels
may be non-deterministic.

Decisions where the papers are silent:

- ``num_classes`` of the supernet always comes from the data: the space's value is overridden (with a note on
  stderr) when they differ, so the head matches the labels; the resolved space is what run.json hashes.
- The supernet is built after ``torch.manual_seed(seed)`` (and python/numpy seeded too): same seed, same init.
- The arch sampler has its own RNG stream (seeded by ``f"{seed}|arch"``), so changing the model or augmentation
  does not change which archs are drawn.
- A non-finite loss stops training with a ``NasError`` pointing at ``optimizer.lr`` (no checkpoint is written
  for that step: the last good one stays).
- Accuracy is measured against the un-mixed labels when mixup/cutmix is on, on the logits the objective returns.
- ``progress`` handed to the objective is the share of optimiser steps done before the step
  (``global_step / (epochs * steps_per_epoch)``): resumes and epoch lengths do not shift schedules inside it.
- SIGINT and SIGTERM both end in ``KeyboardInterrupt`` after the checkpoint (the CLI exits with 130).
- The final weights are also written to ``<run>/supernet.safetensors``; re-running a finished run only checks it.
"""
from __future__ import annotations

import functools
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from nas.arch import Arch
from nas.cost import cost, training_floats_floor
from nas.data import DataSplits, load_data, make_loader
from nas.errors import NasError
from nas.limits import check_model_size, check_training_memory
from nas.models.objective import training_loss
from nas.space import SearchSpace, load_space
from nas.train import checkpoint as ck
from nas.train.recipe import Recipe, load_recipe
from nas.train.rundir import CsvLog, RunLock, check_resumable, commit, prepare, run_info
from nas.train.sampler import UniformSampler, make_sampler


@dataclass
class TrainState:
    """Where training stands. ``epoch`` is the epoch in progress (0-based); ``step_in_epoch`` the batches of it
    already trained; ``global_step`` the optimiser steps so far. The last step's arch, loss and accuracy too."""
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    loss_sum: float = 0.0         # over the steps of the epoch in progress (checkpointed)
    acc_sum: float = 0.0
    arch: Arch | None = None
    loss: float = math.nan
    acc: float = math.nan


@dataclass
class TrainResult:
    run_dir: Path
    weights: Path                 # <run>/supernet.safetensors
    epochs: int
    steps: int
    resumed_from: int | None      # the global step resumed from, None for a fresh start
    seconds: float                # wall time of this invocation
    images_per_s: float           # training throughput of this invocation
    loss: float                   # mean training loss of the last epoch trained in this invocation
    acc: float


def default_out(space: SearchSpace) -> Path:
    return Path("runs") / f"{space.name}-supernet"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --- resolving space + data ---------------------------------------------------------------------------
def _load_space(path: str, overrides: dict[str, Any], recipe: Recipe) -> SearchSpace:
    """``load_space`` with the recipe's overrides; an error caused by an override points at the recipe."""
    try:
        return load_space(path, overrides=overrides)
    except NasError as e:
        if not recipe.space_overrides:
            raise
        load_space(path)  # a fault of the space file itself is reported as such
        key = e.key if e.key in recipe.space_overrides else None
        where = f"space_overrides.{key}" if key else "space_overrides"
        what = f"{'' if key else f'{e.key}: '}{e.message} (in {path} with the recipe's overrides)"
        raise recipe.error(where, what) from None


def resolve(space_path: str, data: str, recipe: Recipe) -> tuple[SearchSpace, DataSplits, dict[str, Any]]:
    """The space with the recipe's overrides and the data's class count, its data splits, and the overrides
    (``num_classes`` among them when the data's class count differs from the space's)."""
    overrides = dict(recipe.space_overrides)
    space = _load_space(space_path, overrides, recipe)
    t = space.template()
    splits = load_data(data, t["input"]["size"], t["input"]["channels"], seed=recipe.seed,
                       holdout=recipe.data.holdout, limit=recipe.data.limit)
    if splits.num_classes != t["num_classes"]:
        overrides["num_classes"] = splits.num_classes
        space = _load_space(space_path, overrides, recipe)
    return space, splits, overrides


def _device(recipe: Recipe) -> torch.device:
    if recipe.device == "cuda" and not torch.cuda.is_available():
        raise recipe.error("device", "device cuda was asked for but torch sees no CUDA device; use auto or cpu")
    if recipe.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(recipe.device)


def _build_supernet(space: SearchSpace, **model_kwargs: Any) -> nn.Module:
    from nas.supernet import Supernet
    return Supernet(space, **model_kwargs)


# --- signals ------------------------------------------------------------------------------------------
def _ignore_sigint(worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the main process, which stops at a step boundary (they share its group)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class StopOnSignal:
    """SIGINT/SIGTERM set ``requested``; the trainer checkpoints at the next step boundary and stops. A second
    signal raises KeyboardInterrupt at once. Only installable in the main thread (elsewhere: a no-op)."""

    def __init__(self) -> None:
        self.requested = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = signum
        print(f"\nnas: {signal.Signals(signum).name}: stopping after this step with a checkpoint "
              f"(send it again to stop at once)", file=sys.stderr)

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# --- the trainer --------------------------------------------------------------------------------------
class SposTrainer:
    """Holds the pieces of one training run; ``run()`` trains to the end or to a stop signal."""

    def __init__(self, space: SearchSpace, splits: DataSplits, recipe: Recipe, run_dir: Path,
                 build: Callable[..., nn.Module] = _build_supernet, progress: bool = True,
                 on_step: Callable[[TrainState], None] | None = None) -> None:
        from timm.data import Mixup
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
        from timm.optim import create_optimizer_v2

        self.space, self.recipe, self.run_dir = space, recipe, run_dir
        self.progress, self.on_step = progress, on_step
        self.device = _device(recipe)
        workers = recipe.data.num_workers
        self.loader = make_loader(splits.train, recipe.batch_size, shuffle=True, seed=recipe.seed,
                                  num_workers=workers, pin_memory=self.device.type == "cuda",
                                  worker_init_fn=_ignore_sigint if workers else None)
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise recipe.error("batch_size", f"batch_size {recipe.batch_size} is larger than the "
                               f"{len(splits.train)} training images (the ragged last batch is dropped); lower it")
        seed_everything(recipe.seed)
        self.model = build(space, **recipe.model_kwargs()).to(self.device)
        # timm's parameter groups: no weight decay on biases, norms and the model's no_weight_decay()
        self.optimizer = create_optimizer_v2(self.model, **recipe.optimizer.timm_kwargs())
        self.scheduler = self._scheduler()
        rc = recipe
        self.mixup = None
        if rc.mixup.active:
            self.mixup = Mixup(mixup_alpha=rc.mixup.mixup_alpha, cutmix_alpha=rc.mixup.cutmix_alpha,
                               prob=rc.mixup.prob, switch_prob=rc.mixup.switch_prob,
                               label_smoothing=rc.label_smoothing, num_classes=splits.num_classes)
            self.criterion: nn.Module = SoftTargetCrossEntropy()  # smoothing is in the mixed targets
        elif rc.label_smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(rc.label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()
        self.sampler: UniformSampler = make_sampler(space, rc.sampler.type, rc.seed, rc.sampler.bins,
                                                    rc.sampler.max_tries)
        self.state = TrainState()
        self.on_save: Callable[[], None] | None = None  # called once, before the first checkpoint (run commit)

    def _scheduler(self) -> Any:
        from timm.scheduler import create_scheduler_v2

        s = self.recipe.schedule
        if s.name == "none":
            return None
        sched, _ = create_scheduler_v2(self.optimizer, sched=s.name, num_epochs=self.recipe.epochs, min_lr=s.min_lr,
                                       warmup_epochs=s.warmup_epochs, warmup_lr=s.warmup_lr, step_on_epochs=False,
                                       updates_per_epoch=self.steps_per_epoch)
        return sched

    # --- checkpoints ---------------------------------------------------------------------------------
    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def save(self) -> Path:
        if self.on_save is not None:
            self.on_save()
            self.on_save = None
        opt_js, tensors = ck.optimizer_state(self.optimizer, self.model)
        rng_js, rng_t = ck.rng_state()
        st = self.state
        state = {"epoch": st.epoch, "step_in_epoch": st.step_in_epoch, "steps_per_epoch": self.steps_per_epoch,
                 "epochs": self.recipe.epochs, "complete": st.epoch >= self.recipe.epochs,
                 "space_hash": self.space.hash, "recipe_hash": self.recipe.hash(), "optimizer": opt_js,
                 "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                 "sampler": self.sampler.state_dict(), "rng": rng_js, "loss_sum": st.loss_sum,
                 "acc_sum": st.acc_sum, "time": time.time()}
        return ck.save_checkpoint(self.ckpt_dir, st.global_step, self.model, state, {**tensors, **rng_t},
                                  keep=self.recipe.checkpoint.keep)

    def restore(self) -> int | None:
        """Load the newest valid checkpoint, if any; returns its global step."""
        c = ck.load_latest(self.ckpt_dir)
        if c is None:
            return None
        s = c.state
        if s["space_hash"] != self.space.hash or s["recipe_hash"] != self.recipe.hash():
            raise NasError("checkpoint belongs to another space or recipe than run.json says; use another --out",
                           file=str(c.path))
        if s["steps_per_epoch"] != self.steps_per_epoch:
            raise NasError(f"checkpoint has {s['steps_per_epoch']} steps per epoch, the data now gives "
                           f"{self.steps_per_epoch}", file=str(c.path))
        c.load_model(self.model)
        tensors = c.tensors()
        try:
            ck.load_optimizer_state(self.optimizer, self.model, s["optimizer"], tensors)
        except ValueError as e:
            raise NasError(f"the checkpoint's optimiser state does not fit this supernet: {e}",
                           file=str(c.path)) from None
        if self.scheduler is not None:
            self.scheduler.load_state_dict(s["scheduler"])
        self.sampler.load_state_dict(s["sampler"])
        ck.set_rng_state(s["rng"], tensors)
        self.state = TrainState(s["epoch"], s["step_in_epoch"], c.step, loss_sum=s["loss_sum"], acc_sum=s["acc_sum"])
        return c.step

    def write_weights(self) -> Path:
        """The final weights as ``<run>/supernet.safetensors`` (atomic)."""
        from safetensors.torch import save_model

        path = self.run_dir / "supernet.safetensors"
        tmp = path.with_name(f"{ck.TMP}{path.name}.{os.getpid()}")
        save_model(self.model, str(tmp), metadata={"space_hash": self.space.hash, "steps": str(self.state.global_step)})
        os.replace(tmp, path)
        return path

    # --- one step ------------------------------------------------------------------------------------
    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float, Arch]:
        """One SPOS update on one sampled path; returns (loss, acc, lr used, arch)."""
        arch = self.sampler.sample()
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        target = y
        if self.mixup is not None:
            x, target = self.mixup(x, y)
        self.model.train()
        progress = self.state.global_step / (self.recipe.epochs * self.steps_per_epoch)
        with self.model.bound(arch) as model:  # the arch's model carrying the supernet's slices
            loss, logits = training_loss(model, x, target, self.criterion, progress)  # logits (B, num_classes)
        if not torch.isfinite(loss):
            raise self.recipe.error("optimizer.lr", f"the training loss is {loss.item()} at step "
                                    f"{self.state.global_step + 1} (arch {arch.hash()}); lower the learning rate")
        self.optimizer.zero_grad(set_to_none=True)  # None grads: paths not taken are not updated
        loss.backward()
        if self.recipe.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.state.global_step += 1
        if self.scheduler is not None:
            self.scheduler.step_update(num_updates=self.state.global_step)
        acc = (logits.detach().argmax(-1) == y).float().mean().item()
        return loss.item(), acc, lr, arch

    # --- the loop ------------------------------------------------------------------------------------
    def run(self) -> tuple[float, float, float, int]:
        """Train to the end; returns (mean loss and acc of the last epoch, images/s, images) of this call.
        On a stop signal: checkpoint, then KeyboardInterrupt."""
        from tqdm import tqdm

        rc, st, spe = self.recipe, self.state, self.steps_per_epoch
        log = CsvLog(self.run_dir / "train_log.csv", st.global_step)
        images, t_start = 0, time.perf_counter()
        ep_loss = ep_acc = math.nan
        try:
            with StopOnSignal() as stop:
                while st.epoch < rc.epochs:
                    epoch = st.epoch
                    self.loader.set_epoch(epoch, st.step_in_epoch)
                    bar = tqdm(total=spe, initial=st.step_in_epoch, desc=f"epoch {epoch + 1}/{rc.epochs}",
                               unit="step", disable=not self.progress, dynamic_ncols=True, file=sys.stderr)
                    t_prev = time.perf_counter()
                    for x, y in self.loader:
                        loss, acc, lr, arch = self.step(x, y)
                        now = time.perf_counter()
                        ips = len(x) / max(now - t_prev, 1e-9)
                        t_prev, images = now, images + len(x)
                        st.step_in_epoch += 1
                        st.arch, st.loss, st.acc = arch, loss, acc
                        st.loss_sum, st.acc_sum, n = st.loss_sum + loss, st.acc_sum + acc, st.step_in_epoch
                        ep_loss, ep_acc = st.loss_sum / n, st.acc_sum / n  # the epoch's mean so far
                        log.write(epoch=epoch + 1, step=st.global_step, loss=f"{loss:.6g}", acc=f"{acc:.6g}",
                                  lr=f"{lr:.6g}", img_per_s=f"{ips:.1f}", arch=arch.hash(), macs=cost(arch).macs)
                        bar.update(1)
                        bar.set_postfix_str(f"loss {ep_loss:.3f} acc {ep_acc:.3f} "
                                            f"{images / (now - t_start):.0f} img/s lr {lr:.3g}", refresh=False)
                        if st.step_in_epoch == spe:
                            st.epoch, st.step_in_epoch, st.loss_sum, st.acc_sum = epoch + 1, 0, 0.0, 0.0
                        if self.on_step is not None:
                            self.on_step(st)
                        every = rc.checkpoint.every_steps
                        if st.step_in_epoch == 0 or stop.requested or (every and st.global_step % every == 0):
                            path = self.save()
                        if stop.requested:
                            bar.close()
                            print(f"nas: stopped at epoch {epoch + 1} step {st.step_in_epoch or spe}/{spe} "
                                  f"(global step {st.global_step}); checkpoint {path}; run the same command to "
                                  f"resume", file=sys.stderr)
                            raise KeyboardInterrupt
                    bar.close()
                    line = (f"epoch {epoch + 1}/{rc.epochs}: loss {ep_loss:.4f} acc {ep_acc:.4f} "
                            f"{images / (time.perf_counter() - t_start):.1f} img/s, step {st.global_step}, "
                            f"checkpoint {self.ckpt_dir / f'{ck.PREFIX}{st.global_step:09d}'}")
                    extra = self.sampler.stats()
                    self.log_line(line + (f"; {extra}" if extra else ""))
        finally:
            log.close()
        seconds = time.perf_counter() - t_start
        return ep_loss, ep_acc, images / max(seconds, 1e-9), images

    def log_line(self, line: str) -> None:
        """An epoch summary: to stderr (above any progress bar) and appended to ``<run>/train.log``."""
        from tqdm import tqdm

        if self.progress:
            tqdm.write(line, file=sys.stderr)
        with open(self.run_dir / "train.log", "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


def train_supernet(space: str | os.PathLike, data: str = "builtin",
                   recipe: Recipe | str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                   resume: bool = False, progress: bool = True,
                   on_step: Callable[[TrainState], None] | None = None,
                   build: Callable[..., nn.Module] = _build_supernet) -> TrainResult:
    """Train (or resume training) a SPOS supernet of ``space`` on ``data`` with ``recipe`` into ``out``.

    Re-running with the same arguments resumes from the newest valid checkpoint in ``out``; ``resume=True``
    additionally requires that ``out`` holds a run. ``on_step(state)`` is called after every step (hooks, tests);
    ``build(space, **recipe.model_kwargs())`` makes the supernet (default ``nas.supernet.Supernet``; the trainer
    runs a path with ``supernet.bound(arch)``).
    """
    t0 = time.perf_counter()
    rc = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    space_file = str(space)
    sp, splits, overrides = resolve(space_file, data, rc)
    bounds = sp.cost_bounds()  # before anything is allocated or written
    largest = "the largest arch of the space" + (" (with the recipe's space_overrides)" if rc.space_overrides else "")
    check_model_size(bounds["max_macs"], bounds["max_params"], largest, file=space_file)
    check_training_memory(training_floats_floor(sp.extreme_archs()["max_macs"]), bounds["max_params"],
                          rc.batch_size, largest, file=rc.file)
    run = Path(out) if out is not None else default_out(sp)
    with RunLock(run):
        record = splits.split_record()
        info = run_info(sp, space_file, rc, record, overrides)
        existing = prepare(run, info, sp, rc, record, resume, commit_now=False)
        if overrides.get("num_classes", None) != rc.space_overrides.get("num_classes"):
            print(f"nas: note: data {data!r} has {splits.num_classes} classes: num_classes of {space_file} is set "
                  f"to {splits.num_classes}", file=sys.stderr)
        trainer = SposTrainer(sp, splits, rc, run, build=build, progress=progress, on_step=on_step)
        resumed = trainer.restore()
        if existing:
            check_resumable(run, resumed)
        else:  # committed at the first checkpoint: a start that fails before it leaves nothing to refuse
            trainer.on_save = functools.partial(commit, run, info, sp, rc, record)
        if resumed is not None:
            st = trainer.state
            trainer.log_line(f"resumed from {run / 'checkpoints'} at epoch {st.epoch + 1}, step {st.step_in_epoch}/"
                             f"{trainer.steps_per_epoch} (global step {st.global_step})"
                             if st.epoch < rc.epochs else f"already complete ({st.global_step} steps)")
        loss, acc, ips, _ = trainer.run()
        weights = trainer.write_weights()
    return TrainResult(run, weights, rc.epochs, trainer.state.global_step, resumed, time.perf_counter() - t0,
                       ips, loss, acc)

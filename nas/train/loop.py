"""The training loop every job shares: supernet training (``nas.train.spos``) and retraining (``nas.train.retrain``).

``Trainer`` owns what does not depend on what is trained: the recipe's optimiser, schedule, loss, mixup and
augmentation, the seeded data order, the device, atomic checkpoints and exact resume, stop signals, the progress
bar and the logs. What a job trains at each step is a ``TrainPath``: the arch of step ``t`` and how the model
runs it. SPOS samples one arch per step and runs it as a path of the supernet (``Supernet.bound(arch)``);
retraining returns its one arch and runs the model as it is. Every step scores the batch with the arch's own
objective (``nas.models.objective.training_loss``: ``criterion(model(x), y)`` for most models, CF-ViT's two-pass
loss and warm-up for CF-ViT). ``run_job`` is the sequence around it: run-directory lock, refusal of a changed
run, commit at the first checkpoint, resume, final export.

Tensors off the path keep ``grad = None`` (``zero_grad(set_to_none=True)``), so the optimiser leaves them, their
momentum and their weight decay untouched, as in SPOS; the unused rows of a tensor the path slices get a zero
gradient, so momentum and weight decay still move those (as in AutoFormer's weight entanglement).
Checkpoints are taken at every epoch end, every ``checkpoint.every_steps`` steps, and on SIGINT/SIGTERM at the next
step boundary (a second signal stops at once; the last checkpoint is intact).

Exact resume: a checkpoint holds the weights, the optimiser (its state keyed by parameter name) and scheduler, the
python/numpy/torch RNG states, the path's state (SPOS: the FLOPs-bin counts; the arch of a step needs none) and
the running loss and accuracy sums of the epoch in progress (the epoch summary after a resume is the mean over the
whole epoch), taken at a step boundary; the data order of epoch ``e`` is a pure function of ``(seed, e)`` and a
resumed epoch skips the batches already trained (``SeededLoader.set_epoch``). A run killed at any point and re-run
ends with the same weights as an uninterrupted one, bitwise on CPU with the same torch and thread count. Not
covered: random data augmentation in loader worker processes (ImageFolder data with ``data.num_workers > 0``) is
exact across epoch boundaries only, and GPU kernels may be non-deterministic.

Distributed data parallel (``nas.distributed.train``, Ray Train's ``TorchTrainer``) drives the same ``Trainer``
from its per-worker loop: each worker builds it with ``replicas=(rank, world_size)``, which gives it its rank's
shard of the training data (``make_loader(..., num_replicas, rank)``: ``batch_size / world_size`` images of each
global batch; the epoch order is already a pure function of (seed, epoch), so shards need no communication),
and wraps ``objective`` (the model, the path and the loss: the whole forward of a step) in
``DistributedDataParallel``. The path of step ``t`` is ``arch(t)``, a pure function of ``(seed, t)`` for SPOS too,
so every rank trains the same path without a broadcast and resume needs no path state. ``batch_size`` is the
global batch (the lr scaling rule reads it) and ``steps_per_epoch`` is ``len(train) // batch_size`` whatever
the number of ranks. ``is_main`` (rank 0) alone writes: checkpoints, the run's commit, logs, final weights;
every rank ``restore``s the same checkpoint, whatever the number of workers that wrote it. The loss and accuracy
of a step are averaged over ranks (``reduce``) before they are checked and logged.

Decisions where the papers are silent:

- The model is built after ``torch.manual_seed(seed)`` (and python/numpy seeded too): same seed, same init.
- A non-finite loss stops training with a ``NasError`` pointing at ``optimizer.lr`` (no checkpoint is written
  for that step: the last good one stays).
- Accuracy is measured against the un-mixed labels when mixup/cutmix is on, on the logits the objective returns.
- ``progress`` handed to the objective is the share of optimiser steps done before the step
  (``global_step / (epochs * steps_per_epoch)``): resumes and epoch lengths do not shift schedules inside it.
- SIGINT and SIGTERM both end in ``KeyboardInterrupt`` after the checkpoint (the CLI exits with 130).
- The final weights are written to ``<run>/<weights name>`` (``supernet.safetensors``, ``final.safetensors``); a
  re-run of a finished run restores its last checkpoint and writes them again.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import math
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Protocol, TypeVar

import numpy as np
import torch
from torch import nn

from nas.arch import Arch
from nas.atomic import atomic_file
from nas.cost import cost
from nas.data import DataSplits, ImageFiles, make_loader, norm_stats
from nas.errors import NasError
from nas.models.objective import training_loss
from nas.train import checkpoint as ck
from nas.train.recipe import AugmentCfg, Recipe
from nas.train.rundir import CsvLog, RunLock, RunSpec, check_resumable, commit, prepare


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
    weights: Path                 # <run>/supernet.safetensors or <run>/final.safetensors
    epochs: int
    steps: int
    resumed_from: int | None      # the global step resumed from, None for a fresh start
    seconds: float                # wall time of this invocation
    images_per_s: float           # training throughput of this invocation
    loss: float                   # mean training loss of the last epoch trained in this invocation
    acc: float


@dataclass
class Job:
    """A training job, resolved and checked, before anything is written: its run directory and ``spec`` (run.json),
    ``make(**replica)`` its ``Trainer`` (``replicas=(rank, world_size)``, ``device`` on a data-parallel rank),
    ``finish(trainer, result)`` its last act on rank 0, ``note()`` what it says on stderr once the run is checked.
    ``nas.train.loop.run_job`` runs it in this process; ``nas.distributed.train`` on Ray workers."""
    run: Path
    spec: RunSpec
    recipe: Recipe
    make: Callable[..., Trainer]
    finish: Callable[[Trainer, TrainResult], Any]
    note: Callable[[], None]


class TrainPath(Protocol):
    """What a job trains at each step: the arch of global step ``step`` (0-based) and the module that runs it."""

    def arch(self, step: int) -> Arch: ...

    def bind(self, model: nn.Module, arch: Arch) -> ContextManager[nn.Module]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def stats(self) -> str: ...


class TrainingLoss(nn.Module):
    """The loss of one training step: ``path.bind(model, arch)`` scored with its model's own training loss
    (``training_loss``). One module, so that ``DistributedDataParallel`` can wrap the whole of it (it must see the
    forward whose backward it reduces)."""

    def __init__(self, model: nn.Module, path: TrainPath, criterion: nn.Module) -> None:
        super().__init__()
        self.model, self.path, self.criterion = model, path, criterion

    def forward(self, x: torch.Tensor, target: torch.Tensor, arch: Arch,
                progress: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits (B, num_classes)) of the batch x (B, C, H, W)."""
        with self.path.bind(self.model, arch) as model:  # SPOS: the arch's model carrying the supernet's slices
            return training_loss(model, x, target, self.criterion, progress)


class SingleArch:
    """The path of a retraining: one arch, the model itself, no state."""

    def __init__(self, arch: Arch) -> None:
        self.the_arch = arch

    def arch(self, step: int) -> Arch:
        return self.the_arch

    def bind(self, model: nn.Module, arch: Arch) -> ContextManager[nn.Module]:
        return contextlib.nullcontext(model)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def stats(self) -> str:
        return ""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_batch(recipe: Recipe, world_size: int) -> None:
    """``batch_size`` is the global batch of a data-parallel run: each of ``world_size`` ranks takes an equal share."""
    if recipe.batch_size % world_size:
        raise recipe.error("batch_size", f"batch_size {recipe.batch_size} is the global batch: it must be divisible "
                           f"by the number of workers, {world_size}; use a multiple of {world_size}")


def device_of(recipe: Recipe) -> torch.device:
    if recipe.device == "cuda" and not torch.cuda.is_available():
        raise recipe.error("device", "device cuda was asked for but torch sees no CUDA device; use auto or cpu")
    if recipe.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(recipe.device)


def augment(splits: DataSplits, recipe: Recipe) -> None:
    """Give the training split the recipe's augmentation (ImageFolder data; timm's ``create_transform``)."""
    if recipe.augment == AugmentCfg():
        return  # nas.data's own training transform
    train = splits.train
    if not isinstance(train, ImageFiles):
        print(f"nas: note: augment ({recipe.augment.auto_augment or 'colour jitter, random erasing'}) applies to "
              f"ImageFolder data; data {splits.record['spec']!r} is in memory and is not augmented", file=sys.stderr)
        return
    from timm.data import create_transform

    chans, size = splits.record["in_chans"], splits.record["img_size"]
    mean, std = norm_stats(chans)
    train.transform = create_transform((chans, size, size), is_training=True, mean=mean, std=std,
                                       **recipe.augment.timm_kwargs())


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
class Trainer:
    """Holds the pieces of one training run; ``run()`` trains to the end or to a stop signal.

    ``build()`` makes the model (called after seeding); ``path`` says what each step trains; ``identity``
    (e.g. ``{"space_hash": ...}``) is stored in every checkpoint and must match on restore; ``weights`` names the
    final export in the run directory, ``metadata`` goes into it. ``replicas`` is ``(rank, world_size)`` of a
    data-parallel run and ``device`` its rank's device (default: the recipe's); see the module docstring.
    """

    def __init__(self, build: Callable[[], nn.Module], splits: DataSplits, recipe: Recipe, run_dir: Path,
                 path: TrainPath, identity: dict[str, str], weights: str = "final.safetensors",
                 metadata: dict[str, str] | None = None, progress: bool = True,
                 on_step: Callable[[TrainState], None] | None = None, replicas: tuple[int, int] = (0, 1),
                 device: torch.device | None = None) -> None:
        from timm.data import Mixup
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
        from timm.optim import create_optimizer_v2

        self.recipe, self.run_dir, self.path, self.identity = recipe, run_dir, path, identity
        self.weights_name, self.metadata = weights, dict(metadata or {})
        rank, world = replicas
        self.rank, self.world_size, self.is_main = rank, world, rank == 0
        self.progress, self.on_step = progress and self.is_main, on_step
        self.device = device if device is not None else device_of(recipe)
        check_batch(recipe, world)
        augment(splits, recipe)
        workers = recipe.data.num_workers
        self.loader = make_loader(splits.train, recipe.batch_size // world, shuffle=True, seed=recipe.seed,
                                  num_workers=workers, pin_memory=self.device.type == "cuda",
                                  worker_init_fn=_ignore_sigint if workers else None, num_replicas=world, rank=rank)
        # the global batches of an epoch, the ragged last one dropped: the same for any number of ranks (the
        # union of the ranks' k-th batches is the k-th global batch; a rank's padded tail is never reached)
        self.steps_per_epoch = len(splits.train) // recipe.batch_size
        if self.steps_per_epoch == 0:
            raise recipe.error("batch_size", f"batch_size {recipe.batch_size} is larger than the "
                               f"{len(splits.train)} training images (the ragged last batch is dropped); lower it")
        seed_everything(recipe.seed)
        self.model = build().to(self.device)
        # timm's parameter groups: no weight decay on biases, norms and the model's no_weight_decay()
        self.optimizer = create_optimizer_v2(self.model, **recipe.optimizer.timm_kwargs(recipe.batch_size))
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
        self.training_loss: nn.Module = TrainingLoss(self.model, path, self.criterion)  # DDP wraps it (distributed)
        self.reduce: Callable[[torch.Tensor], torch.Tensor] | None = None  # mean over ranks (distributed)
        self.state = TrainState()
        self.on_save: Callable[[], None] | None = None  # called once, before the first checkpoint (run commit)
        self.on_checkpoint: Callable[[], None] | None = None  # every rank, at every checkpoint (distributed checks)

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
                 "epochs": self.recipe.epochs, "complete": st.epoch >= self.recipe.epochs, **self.identity,
                 "recipe_hash": self.recipe.hash(), "optimizer": opt_js,
                 "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                 "sampler": self.path.state_dict(), "rng": rng_js, "loss_sum": st.loss_sum,
                 "acc_sum": st.acc_sum, "time": time.time()}
        return ck.save_checkpoint(self.ckpt_dir, st.global_step, self.model, state, {**tensors, **rng_t},
                                  keep=self.recipe.checkpoint.keep)

    def restore(self) -> int | None:
        """Load the newest valid checkpoint, if any; returns its global step."""
        c = ck.load_latest(self.ckpt_dir)
        if c is None:
            return None
        s = c.state
        mine = {**self.identity, "recipe_hash": self.recipe.hash()}
        if any(s.get(k) != v for k, v in mine.items()):
            what = " or ".join(k.removesuffix("_hash") for k in mine)
            raise NasError(f"checkpoint belongs to another {what} than run.json says; use another --out",
                           file=str(c.path))
        if s["steps_per_epoch"] != self.steps_per_epoch:
            raise NasError(f"checkpoint has {s['steps_per_epoch']} steps per epoch, the data now gives "
                           f"{self.steps_per_epoch}", file=str(c.path))
        c.load_model(self.model)
        tensors = c.tensors()
        try:
            ck.load_optimizer_state(self.optimizer, self.model, s["optimizer"], tensors)
        except ValueError as e:
            raise NasError(f"the checkpoint's optimiser state does not fit this model: {e}",
                           file=str(c.path)) from None
        if self.scheduler is not None:
            self.scheduler.load_state_dict(s["scheduler"])
        if not s["complete"]:  # a finished run takes no more steps: its path state is not needed
            try:
                self.path.load_state_dict(s["sampler"])
            except NasError as e:
                raise NasError(e.message, file=str(c.path)) from None
        ck.set_rng_state(s["rng"], tensors)
        self.state = TrainState(s["epoch"], s["step_in_epoch"], c.step, loss_sum=s["loss_sum"], acc_sum=s["acc_sum"])
        return c.step

    def write_weights(self) -> Path:
        """The final weights as ``<run>/<weights name>`` (atomic), with the run's identity as metadata."""
        from safetensors.torch import save_model

        path = self.run_dir / self.weights_name
        with atomic_file(path) as tmp:
            save_model(self.model, str(tmp), metadata={**self.metadata, "steps": str(self.state.global_step)})
        return path

    # --- one step ------------------------------------------------------------------------------------
    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float, Arch]:
        """One update on the path of this step; returns (loss, acc, lr used, arch)."""
        arch = self.path.arch(self.state.global_step)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        target = y
        if self.mixup is not None:
            x, target = self.mixup(x, y)
        self.model.train()
        progress = self.state.global_step / (self.recipe.epochs * self.steps_per_epoch)
        loss, logits = self.training_loss(x, target, arch, progress)  # logits (B, num_classes)
        metrics = torch.stack([loss.detach(), (logits.detach().argmax(-1) == y).float().mean()])  # (2,)
        if self.reduce is not None:
            metrics = self.reduce(metrics)  # the global batch's: every rank checks and logs the same numbers
        loss_v, acc = metrics.tolist()
        if not math.isfinite(loss_v):
            raise self.recipe.error("optimizer.lr", f"the training loss is {loss_v} at step "
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
        return loss_v, acc, lr, arch

    # --- the loop ------------------------------------------------------------------------------------
    def run(self) -> tuple[float, float, float, int]:
        """Train to the end; returns (mean loss and acc of the last epoch, images/s, images) of this call.
        On a stop signal: checkpoint, then KeyboardInterrupt."""
        from tqdm import tqdm

        rc, st, spe = self.recipe, self.state, self.steps_per_epoch
        log = CsvLog(self.run_dir / "train_log.csv", st.global_step) if self.is_main else None
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
                    for x, y in itertools.islice(self.loader, spe - st.step_in_epoch):
                        loss, acc, lr, arch = self.step(x, y)
                        now = time.perf_counter()
                        n_images = len(x) * self.world_size  # the global batch
                        ips = n_images / max(now - t_prev, 1e-9)
                        t_prev, images = now, images + n_images
                        st.step_in_epoch += 1
                        st.arch, st.loss, st.acc = arch, loss, acc
                        st.loss_sum, st.acc_sum, n = st.loss_sum + loss, st.acc_sum + acc, st.step_in_epoch
                        ep_loss, ep_acc = st.loss_sum / n, st.acc_sum / n  # the epoch's mean so far
                        if log is not None:
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
                            path = self.save() if self.is_main else self.ckpt_dir
                            if self.on_checkpoint is not None:
                                self.on_checkpoint()
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
                    extra = self.path.stats()
                    self.log_line(line + (f"; {extra}" if extra else ""))
        finally:
            if log is not None:
                log.close()
        seconds = time.perf_counter() - t_start
        return ep_loss, ep_acc, images / max(seconds, 1e-9), images

    def log_line(self, line: str) -> None:
        """A summary line: to stderr (above any progress bar) and appended to ``<run>/train.log`` (rank 0 only)."""
        from tqdm import tqdm

        if not self.is_main:
            return
        if self.progress:
            tqdm.write(line, file=sys.stderr)
        with open(self.run_dir / "train.log", "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


T = TypeVar("T")


@contextlib.contextmanager
def checked_run(job: Job, resume: bool) -> Iterator[bool]:
    """``job``'s run directory locked and checked against ``job.spec`` (a changed run refused), ``job.note()``
    said; yields whether the run existed. Wherever the job then trains (here, or on Ray workers)."""
    with RunLock(job.run):
        existing = prepare(job.run, job.spec, resume, commit_now=False)
        job.note()
        yield existing


def run_job(job: Job, resume: bool) -> Any:
    """The life of ``job`` in this process: ``checked_run``, then ``train_job`` with the trainer ``job.make()``
    returns; returns what ``job.finish`` returns."""
    t0 = time.perf_counter()
    with checked_run(job, resume) as existing:
        return train_job(job.run, job.spec, existing, job.make(), job.finish, t0)


def train_job(run: Path, spec: RunSpec, existing: bool, trainer: Trainer,
              finish: Callable[[Trainer, TrainResult], T], t0: float | None = None) -> T | None:
    """Restore the newest checkpoint, commit the run at the first checkpoint of a new one (``existing`` False),
    train, export the weights, then ``finish(trainer, result)``. The caller holds the run's lock and has checked it
    (``prepare``). In a data-parallel run every rank calls this; only rank 0 (``trainer.is_main``) commits,
    exports and finishes, the others return None."""
    t0 = time.perf_counter() if t0 is None else t0
    resumed = trainer.restore()
    if existing:
        check_resumable(run, resumed)
    elif trainer.is_main:  # committed at the first checkpoint: a start that fails before it leaves nothing to refuse
        trainer.on_save = functools.partial(commit, run, spec)
    rc = trainer.recipe
    if resumed is not None:
        st = trainer.state
        trainer.log_line(f"resumed from {run / 'checkpoints'} at epoch {st.epoch + 1}, step {st.step_in_epoch}/"
                         f"{trainer.steps_per_epoch} (global step {st.global_step})"
                         if st.epoch < rc.epochs else f"already complete ({st.global_step} steps)")
    loss, acc, ips, _ = trainer.run()
    if not trainer.is_main:
        return None
    weights = trainer.write_weights()
    result = TrainResult(run, weights, rc.epochs, trainer.state.global_step, resumed, time.perf_counter() - t0,
                         ips, loss, acc)
    return finish(trainer, result)

"""Supernet training and retraining on a Ray cluster: ``nas train-supernet`` / ``nas retrain`` with ``--ray-address``.

    from nas.distributed.train import RayTrain, train_on_ray
    result = train_on_ray("supernet", {"space": "spaces/psvit_tiny.yaml", "data": "builtin"}, resume=False,
                          ray=RayTrain("auto", num_workers=8, use_gpu=True))

Ray Train's ``TorchTrainer`` starts ``num_workers`` processes and a process group (gloo on CPU, NCCL with GPUs);
each runs the toolkit's own ``Trainer`` (``nas.train.loop``) as one data-parallel rank:

- The job is the local one: the driver resolves and checks it (``supernet_job`` / ``retrain_job``), takes the
  run directory's lock and refuses a changed run (``prepare``), then every worker resolves the same job again from
  the same arguments (paths made absolute; files inside a working directory that ``ray job submit --working-dir``
  ships to every node stay relative to it) and checks that it got the same space or arch, recipe and data split.
- Rank ``r`` of ``N`` trains on its shard of every global batch (``batch_size`` of the recipe is the global batch:
  each rank gets ``batch_size / N`` images, the union of the ranks' k-th batches is the k-th batch of a
  single-process run, an epoch has ``len(train) // batch_size`` steps for any ``N``).
- ``DistributedDataParallel`` wraps the step's whole forward (``Trainer.training_loss``) with
  ``find_unused_parameters=True``: a SPOS path leaves tensors unused. The arch of step ``t`` is a pure function of
  ``(seed, t)`` (``nas.train.sampler``), so every rank runs the same path and gradients are averaged over ranks
  that ran it; a tensor off the path is unused on every rank, and DDP leaves the gradient of a tensor unused on
  every rank ``None`` (it zero-fills only tensors unused on some ranks), so the optimiser leaves it, its momentum
  and its weight decay untouched, as in a single process. The loss and accuracy of a step are averaged over
  ranks, so the logs are the global batch's.
- Rank 0 alone writes the run directory: checkpoints in the toolkit's own format (``nas.train.checkpoint``; Ray
  Train's checkpoints are not used), the commit of run.json at the first checkpoint, ``train.log``,
  ``train_log.csv``, the final weights and ``metrics.json``. Every rank restores the same newest checkpoint,
  whatever the number of workers that wrote it: a run resumes on any number of workers, or on one process
  without Ray, and ends with the weights an uninterrupted run would (up to float summation order).
- At every checkpoint the ranks compare a sha256 digest of their parameters; rank 0 records them in
  ``<run>/replicas.jsonl`` (one line per checkpoint) and stops the run if they differ.
- A worker that dies (or any error on a worker) fails the worker group; Ray Train starts a new one, up to
  ``max_failures`` times, which resumes from the newest checkpoint in the run directory.
- The run directory (and the data, and input files outside a shipped working directory) must be on a filesystem
  every worker sees at the same absolute path (NFS, a shared disk; trivially true on one machine); Ray Train's own
  files go to ``<run>/ray``.

Decisions where Ray leaves a choice:

- The run is locked by the driver (``<run>/.lock``) and by rank 0 (``<run>/.lock-writer``): a new rank 0 (a
  restarted worker group, a re-run while a killed driver's workers still wind down) waits up to
  ``WRITER_WAIT_S`` seconds for the previous one to exit, so the run directory never has two writers.
- Before any rank restores, rank 0 alone reads the checkpoints (which removes a killed writer's leftovers and
  sets invalid checkpoints aside); a barrier then lets every rank read the same folder.
- A user error on a worker (a ``NasError``: a non-finite loss, a checkpoint of another run) also counts as a
  failure and is retried like a crash: Ray Train does not tell errors apart. The driver prints it as the
  one-line error it was.
- ``DistributedDataParallel`` keeps its default ``broadcast_buffers=True``: buffers (the BatchNorm running
  statistics of the PS-ViT stem) are rank 0's at every forward, and rank 0 saves them; the replica digests cover
  parameters only. BatchNorm normalises over a rank's shard, as plain DDP does (not synchronised).
- Random augmentation, mixup/cutmix, dropout and drop path run per rank with the same seeds: a run with them is
  as valid as a single-process one but not equal to it; without them N workers equal one process.
- Without ``--use-gpu`` the workers train on the CPU (gloo) whatever the recipe's ``device: auto`` would pick;
  ``--use-gpu`` gives each worker one GPU (NCCL) and refuses a recipe with ``device: cpu``.
- Progress: the driver prints the summary lines of ``<run>/train.log`` (one per epoch, resumes, the final
  val accuracy) as rank 0 writes them. Worker logs stay in Ray's session folder.
- Ray Train V2 (``RAY_TRAIN_V2_ENABLED=1``, the default of recent Ray) is asked for: the driver takes rank 0's
  return value (``Result.return_value``).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from nas.distributed.cluster import DEFAULT_TIMEOUT_S, check_address, check_timeout
from nas.errors import NasError

JOBS = ("supernet", "retrain")
WRITER_WAIT_S = 120.0
REPLICAS_LOG = "replicas.jsonl"


@dataclass(frozen=True)
class RayTrain:
    """Where and how wide, validated once here: ``address`` (``local``, ``auto`` or ``host:port``), ``num_workers``
    data-parallel ranks, one GPU each with ``use_gpu``, how many worker-group failures are retried
    (``max_failures``, -1: no limit) and how long the head may take to answer (``timeout_s``, ``--ray-timeout``)."""
    address: str
    num_workers: int = 1
    use_gpu: bool = False
    max_failures: int = 3
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        check_address(self.address)
        check_timeout(self.timeout_s)
        if isinstance(self.num_workers, bool) or self.num_workers < 1:
            raise NasError(f"--num-workers must be >= 1, got {self.num_workers}")
        if isinstance(self.max_failures, bool) or self.max_failures < -1:
            raise NasError(f"--max-failures must be >= -1, got {self.max_failures}")


def _job_factory(kind: str) -> Callable[..., Any]:
    if kind == "supernet":
        from nas.train.spos import supernet_job
        return supernet_job
    if kind == "retrain":
        from nas.train.retrain import retrain_job
        return retrain_job
    raise ValueError(f"unknown job {kind!r}; allowed: {', '.join(JOBS)}")


def _worker_paths(args: dict[str, Any], working_dir: bool) -> dict[str, Any]:
    """The job's arguments as the workers get them: file paths absolute (workers run in another directory), except
    files inside the job's working directory when Ray ships it to every worker (``ray job submit --working-dir``):
    those stay relative, since each node unpacks its own copy. The run directory is always absolute."""
    out = dict(args)
    cwd = Path.cwd().resolve()
    for key in ("space", "arch_file", "recipe", "data"):
        value = out.get(key)
        if not isinstance(value, (str, os.PathLike)) or not Path(value).exists():
            continue  # a Recipe object, builtin / synthetic data
        path = Path(value).resolve()
        out[key] = str(path.relative_to(cwd) if working_dir and path.is_relative_to(cwd) else path)
    return out


def weights_digest(model: nn.Module) -> str:
    """sha256 over the parameters (name, dtype, shape, bytes) in name order: equal on ranks holding equal weights."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        t = p.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _identity(info: dict[str, Any]) -> dict[str, Any]:
    subject = "space" if "space" in info else "arch"
    return {subject: info[subject]["hash"], "recipe": info["recipe"]["hash"], "data": info["data"]["sha256"],
            "init": info.get("init")}


# --- on each worker ---------------------------------------------------------------------------------------
def _mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    t = t.clone()
    dist.all_reduce(t)  # sum
    return t / dist.get_world_size()


def _check_replicas(trainer: Any) -> None:
    """Every rank's parameter digest, gathered at a checkpoint; rank 0 records them and stops on a difference."""
    import torch.distributed as dist

    mine = torch.tensor(list(bytes.fromhex(weights_digest(trainer.model))), dtype=torch.uint8, device=trainer.device)
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    if not trainer.is_main:
        return
    digests = [bytes(t.cpu().tolist()).hex() for t in every]
    step = trainer.state.global_step
    with open(trainer.run_dir / REPLICAS_LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, "world_size": len(digests), "weights_sha256": digests}) + "\n")
    if len(set(digests)) > 1:
        raise NasError(f"the {len(digests)} ranks hold different weights after step {step} (digests in "
                       f"{REPLICAS_LOG}); the run stops: resume it from its last checkpoint",
                       file=str(trainer.run_dir))


def _writer_lock(run: Path) -> Any:
    """``<run>/.lock-writer`` for rank 0, waiting up to ``WRITER_WAIT_S`` for a previous rank 0 to exit."""
    from nas.train.rundir import RunLock

    deadline = time.monotonic() + WRITER_WAIT_S
    while True:
        try:
            return RunLock(run, "writing", name=".lock-writer").__enter__()
        except NasError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def _worker(config: dict[str, Any]) -> Any:
    """The loop of one Ray Train worker: the job's ``Trainer`` as rank ``r`` of ``N``, DDP-wrapped."""
    import ray.train
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from nas.train import checkpoint as ck
    from nas.train.loop import train_job

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if config["use_gpu"]:
        import ray.train.torch

        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    job = _job_factory(config["kind"])(**config["args"], progress=False)
    spec = config["spec"]
    if _identity(job.spec.info) != _identity(spec.info):
        raise NasError(f"worker {rank} on {socket.gethostname()} resolves another job than the driver "
                       f"({_identity(job.spec.info)} vs {_identity(spec.info)}): every node must see the same "
                       "files at the same paths", file=str(job.run))
    lock = _writer_lock(job.run) if rank == 0 else None
    try:
        if rank == 0:
            ck.load_latest(job.run / "checkpoints")  # leftovers of a killed writer removed by one rank only
        dist.barrier()
        trainer = job.make(replicas=(rank, world), device=device)
        trainer.training_loss = DistributedDataParallel(trainer.training_loss, find_unused_parameters=True)
        trainer.reduce = _mean_over_ranks
        trainer.on_checkpoint = functools.partial(_check_replicas, trainer)
        return train_job(job.run, spec, config["existing"], trainer, job.finish)
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)


# --- on the driver ----------------------------------------------------------------------------------------
class _Progress(threading.Thread):
    """Prints the lines rank 0 appends to ``<run>/train.log``, every two seconds."""

    def __init__(self, run: Path) -> None:
        super().__init__(daemon=True)
        self.run_dir, self.done = run, threading.Event()
        log = run / "train.log"
        self.offset = log.stat().st_size if log.exists() else 0

    def poll(self) -> None:
        log = self.run_dir / "train.log"
        if log.exists() and log.stat().st_size > self.offset:
            with open(log, "rb") as f:
                f.seek(self.offset)
                data = f.read()
            complete = data[: data.rfind(b"\n") + 1]  # whole lines only: rank 0 may be writing the next one
            self.offset += len(complete)
            for line in complete.decode("utf-8", errors="replace").splitlines():
                print(f"nas: {line.split(' ', 2)[-1]}", file=sys.stderr, flush=True)  # without the time stamp

    def run(self) -> None:
        while not self.done.wait(2.0):
            self.poll()
        self.poll()


def _unwrap(e: BaseException, max_failures: int) -> NasError:
    """A one-line ``NasError`` for a failed fit: the first user error of a worker, else the first error line."""
    failures = dict(getattr(e, "worker_failures", {}) or {})
    errors = list(failures.values()) or [e]
    for err in errors:
        for x in (err, getattr(err, "cause", None), getattr(err, "__cause__", None)):
            if isinstance(x, NasError):
                return NasError(x.message, file=x.file, line=x.line, key=x.key)
    first = next((ln for ln in str(errors[0]).splitlines() if ln.strip()), type(errors[0]).__name__)
    return NasError(f"training on Ray failed ({max_failures} retries spent): {first.strip()}; the run directory "
                    f"keeps its last checkpoint: run the same command to resume")


def train_on_ray(kind: str, args: dict[str, Any], resume: bool, ray: RayTrain) -> Any:
    """Run the ``kind`` job (``supernet``: ``train_supernet``'s arguments; ``retrain``: ``retrain``'s) on Ray.

    Returns what the local job returns (``TrainResult`` / ``RetrainResult``), from rank 0.
    """
    from nas.distributed.cluster import check_reachable, ray_cluster
    from nas.train.loop import check_batch, checked_run

    job = _job_factory(kind)(**args, progress=False)  # resolved and checked before anything starts
    rc = job.recipe
    check_batch(rc, ray.num_workers)
    if ray.use_gpu and rc.device == "cpu":
        raise rc.error("device", "device cpu, but --use-gpu gives every worker a GPU; set device: auto or drop "
                       "--use-gpu")
    if not ray.use_gpu and rc.device == "cuda":
        raise rc.error("device", "device cuda: add --use-gpu so that Ray gives every worker a GPU")
    run = job.run.resolve()
    check_reachable(ray.address, ray.timeout_s)  # a dead head: one line, before the run directory is made
    with checked_run(job, resume) as existing:
        os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
        cpus = max(os.cpu_count() or 1, ray.num_workers)
        with ray_cluster(ray.address, num_cpus=cpus, timeout_s=ray.timeout_s) as r:
            resources = r.cluster_resources()
            if ray.use_gpu and resources.get("GPU", 0) < 1:
                raise NasError(f"--use-gpu: the Ray cluster at {ray.address!r} has no GPU; drop --use-gpu to train "
                               "on CPUs")
            need = "GPU" if ray.use_gpu else "CPU"
            if resources.get(need, 0) < ray.num_workers:
                print(f"nas: note: the cluster has {resources.get(need, 0):g} {need}s now for {ray.num_workers} "
                      f"workers of one {need} each: Ray waits until it has them", file=sys.stderr)
            working_dir = bool(r.get_runtime_context().runtime_env.get("working_dir"))
            if working_dir and run.is_relative_to(Path.cwd().resolve()):
                print(f"nas: warning: the run directory {run} is inside the job's working directory, a copy Ray "
                      "deletes after the job: give --out a path on a filesystem every node sees", file=sys.stderr)
            config = {"kind": kind, "args": {**_worker_paths(args, working_dir), "out": str(run)}, "spec": job.spec,
                      "existing": existing, "use_gpu": ray.use_gpu}
            return _fit(run, config, ray)


def _fit(run: Path, config: dict[str, Any], ray: RayTrain) -> Any:
    from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        _worker, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=ray.num_workers, use_gpu=ray.use_gpu),
        torch_config=TorchConfig(backend="nccl" if ray.use_gpu else "gloo"),
        run_config=RunConfig(name="train", storage_path=str(run / "ray"),
                             failure_config=FailureConfig(max_failures=ray.max_failures)))
    print(f"nas: training on Ray ({ray.address}): {ray.num_workers} worker(s), "
          f"{'one GPU each (nccl)' if ray.use_gpu else 'CPU (gloo)'}, "
          f"{'restarts without limit' if ray.max_failures < 0 else f'up to {ray.max_failures} restart(s)'}; "
          f"run directory {run}", file=sys.stderr)
    progress = _Progress(run)
    progress.start()
    try:
        result = trainer.fit()
    except TrainingFailedError as e:  # the failures retried max_failures times
        raise _unwrap(e, ray.max_failures) from None
    finally:
        progress.done.set()
        progress.join(10)
    value = getattr(result, "return_value", None)
    if value is None:
        raise NasError("training on Ray ended without rank 0's result (Ray Train V1? set RAY_TRAIN_V2_ENABLED=1)",
                       file=str(run))
    return value


__all__ = ["RayTrain", "train_on_ray", "weights_digest", "REPLICAS_LOG"]

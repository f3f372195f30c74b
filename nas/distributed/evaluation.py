"""Candidate evaluation on Ray actors that each hold the supernet (``nas search --ray-address``).

    result = search(space, flops="1.3G", backend=RaySearch("auto", num_workers=8).backend())

or, below the search's backend interface (``nas.search.backend``)::

    with ray_cluster("auto"):
        pool = ActorEvaluators(supernet, {"search": ev_search, "val": ev_val}, num_workers=8)
        evaluate = pool.evaluator("search")     # an ``Evaluate``: ``evaluate(arch)``, ``evaluate.map(archs)``

What travels, and how often:

- the supernet's weights (its ``state_dict``) and the scored splits (the ``search`` and ``val`` batches as
  tensors, ``nas.supernet.scoring.Preloaded``) are put in Ray's object store once (``ray.put``) and handed to
  each actor by reference; an actor builds the supernet from its space, loads the weights and keeps both
  splits for the whole search;
- per candidate only the (proxy) arch goes out and its ``Evaluation`` comes back.

The searchers are unchanged: ``Objective.evaluate_many`` sends a whole batch (an evolution generation, a few
random candidates per worker) through ``ray.util.ActorPool.map``, which yields the results in the order of
the batch as they complete, and the driver appends each to ``history.csv`` in that order. The driver stays the
only writer of the run directory, so a history written on Ray is the one a local run writes (apart from the
``seconds`` column) and a search resumes on Ray, locally, or with another number of workers alike.

Fault tolerance is Ray's: the actors are created with ``max_restarts`` and ``max_task_retries``
(``--max-retries``). A worker process that dies (killed, out of memory, its node lost) is restarted from the
same object references and the evaluation it was running is sent again; the driver records an evaluation
only when its result arrives, so every candidate is evaluated and recorded exactly once. When a worker dies
more than ``max_retries`` times the search stops with a ``NasError``; running the same command resumes it.

Decisions where Ray leaves a choice:

- One actor per CPU of the cluster by default, or one per GPU when the cluster has GPUs (``num_gpus=1`` each,
  the supernet moved to its GPU); ``--num-workers`` overrides. On CPUs each actor asks for one CPU, and Ray
  gives it one torch thread (``OMP_NUM_THREADS=1``), so N actors use N cores.
- The random baseline that runs beside the search shares these actors: its batches and the search's take
  turns (a lock around each batch), each batch spread over every actor. Its random candidates are the same
  as locally (they do not depend on scores), so ``baseline.csv`` is the same too.
- The winner's and the baseline's validation scores are computed on the actors as well (they hold ``val``).
- A split too large to preload (``Evaluator``'s ``max_preload_bytes``, e.g. ImageFolder data at 224 px) is
  not shipped: the actors read it from the same paths, so it must be on a file system every node sees.
- The weights travel as a ``state_dict`` through Ray's own serialisation (in memory, between processes of
  one job); nothing of this is written to the run directory.
- ``NAS_TEST_KILL_ACTOR=K:FILE`` (a test hook): the first actor to reach its K-th evaluation and create
  ``FILE`` kills its own process with SIGKILL in the middle of that evaluation (once per FILE).
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from nas.arch import Arch
from nas.distributed.cluster import (DEFAULT_TIMEOUT_S, check_address, check_reachable, check_timeout,
                                     ray_cluster)
from nas.errors import NasError
from nas.search.backend import Log, Scoring, Trained
from nas.supernet.scoring import Evaluation, Evaluator, Preloaded
from nas.space import SearchSpace

KILL_HOOK = "NAS_TEST_KILL_ACTOR"
MAX_RETRIES = 3
"""Restarts of a dead evaluation worker, and retries of its evaluation, unless ``--max-retries`` says."""


@dataclass(frozen=True)
class RaySearch:
    """Where a search's candidates are scored on Ray, validated once here: ``address`` (``local``, ``auto`` or
    ``host:port``), ``num_workers`` evaluation actors (None: one per CPU of the cluster, or one per GPU when it
    has GPUs), each restarted up to ``max_retries`` times when its process dies; ``timeout_s``: how long the head
    may take to answer (``--ray-timeout``)."""
    address: str
    num_workers: int | None = None
    max_retries: int = MAX_RETRIES
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        check_address(self.address)
        check_timeout(self.timeout_s)
        if self.num_workers is not None and (isinstance(self.num_workers, bool) or self.num_workers < 1):
            raise NasError(f"--num-workers must be >= 1, got {self.num_workers}")
        if isinstance(self.max_retries, bool) or self.max_retries < 0:
            raise NasError(f"--max-retries must be >= 0, got {self.max_retries}")

    def backend(self) -> "RayBackend":
        """The search's backend; first checks that the head answers (``check_reachable``), so that a dead address
        is one error line before the search writes anything."""
        check_reachable(self.address, self.timeout_s)
        return RayBackend(self)


class RayBackend:
    """The search's backend (``nas.search.backend``) on Ray: joins the cluster for the search, and scores
    candidates, the baseline's and the winners on ``EvalActor``s holding the supernet; Optuna studies run
    through Ray Tune on the same actors (``nas.distributed.tune``)."""
    needs_supernet = True

    def __init__(self, config: RaySearch) -> None:
        self.config = config

    def start(self, space: SearchSpace, supernet: Trained | None, batch_size: int, stack: ExitStack,
              log: Log) -> Scoring:
        from nas.distributed.tune import tune_search

        assert supernet is not None  # needs_supernet
        cfg = self.config
        stack.enter_context(ray_cluster(cfg.address, timeout_s=cfg.timeout_s))
        local = {s: Evaluator(supernet.supernet, supernet.splits, s, batch_size=batch_size) for s in ("search", "val")}
        actors = ActorEvaluators(supernet.supernet, local, num_workers=cfg.num_workers, max_retries=cfg.max_retries,
                                 batch_size=batch_size)
        log(f"ray: {actors.workers} evaluation actors on {cfg.address} (processes "
            f"{', '.join(map(str, actors.pids()))}), --max-retries {cfg.max_retries}")
        shared = actors.evaluator("search")  # the baseline takes turns with the search on the same actors
        return Scoring(shared, actors.evaluator("val"), lambda: shared,
                       run_study=lambda *args, run_dir: tune_search(*args, actors=actors, tune_dir=run_dir / "tune"),
                       per_image=lambda split: local[split].per_image)  # the actors return means only


class EvalActor:
    """A Ray actor (``ray.remote(EvalActor)``): the supernet of ``space`` with ``weights``, scoring archs on the
    splits of ``data`` (split name -> ``Preloaded`` tensors, or the ``DataSplits`` to stream from)."""

    def __init__(self, space: SearchSpace, weights: dict[str, Any], data: dict[str, Any], batch_size: int,
                 device: str, kill_hook: str | None = None) -> None:
        import torch

        from nas.supernet import Supernet

        with torch.random.fork_rng(devices=[]):
            supernet = Supernet(space)
        supernet.load_state_dict(weights)
        self.evaluators = {
            split: Evaluator(supernet, d if not isinstance(d, Preloaded) else None, split, batch_size=batch_size,
                             device=device, preloaded=d if isinstance(d, Preloaded) else None)
            for split, d in data.items()}
        self.space, self.count, self.kill_hook = space, 0, kill_hook

    def evaluate_vector(self, vector: list[int], split: str) -> Evaluation:
        """``evaluate`` of the arch of this actor's (the supernet's) space with choice indices ``vector``."""
        return self.evaluate(self.space.decode(vector), split)

    def evaluate(self, arch: Arch, split: str) -> Evaluation:
        self.count += 1
        ev = self.evaluators[split](arch)
        if self.kill_hook:
            at, file = self.kill_hook.split(":", 1)
            if self.count == int(at):
                try:
                    os.close(os.open(file, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    pass
                else:
                    os.kill(os.getpid(), signal.SIGKILL)
        return ev

    def pid(self) -> int:
        return os.getpid()


class ActorEvaluators:
    """``num_workers`` ``EvalActor``s sharing one copy of the weights and splits in the object store.

    ``splits`` maps a split name to the driver's ``Evaluator`` of it (its batches are what the actors score).
    ``num_workers`` None: one per CPU of the cluster, or one per GPU when it has GPUs.
    """

    def __init__(self, supernet: Any, splits: dict[str, Evaluator], *, num_workers: int | None = None,
                 max_retries: int = MAX_RETRIES, batch_size: int = 256) -> None:
        import ray
        from ray.util import ActorPool

        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if num_workers is None:
            num_workers = gpus or max(1, int(resources.get("CPU", 1)))
        weights = ray.put({k: v.detach().cpu() for k, v in supernet.state_dict().items()})
        data = ray.put({name: ev.preload() or ev.splits for name, ev in splits.items()})
        space = ray.put(supernet.space)
        options: dict[str, Any] = {"max_restarts": max_retries, "max_task_retries": max_retries}
        options.update({"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1})
        actor = ray.remote(EvalActor).options(**options)
        self.actors = [actor.remote(space, weights, data, batch_size, "cuda" if gpus else "cpu",
                                    os.environ.get(KILL_HOOK)) for _ in range(num_workers)]
        self.ray, self.workers, self.max_retries = ray, num_workers, max_retries
        self._refs = (space, weights, data)  # kept for the actors' restarts (their constructor arguments)
        self.pool = ActorPool(self.actors)
        self._lock = threading.Lock()

    def pids(self, timeout: float = 600) -> list[int]:
        """The actors' process ids (waits until every actor is up)."""
        return self._get([a.pid.remote() for a in self.actors], timeout)

    def map(self, archs: Sequence[Arch], split: str = "search") -> Iterator[Evaluation]:
        """The evaluations of ``archs`` on ``split``, in order, each yielded as soon as it and those before it
        are done. One batch at a time over all actors (callers in other threads wait their turn)."""
        if not archs:
            return
        from ray.exceptions import RayActorError
        from ray.util import ActorPool

        with self._lock:
            try:
                yield from self.pool.map(lambda a, arch: a.evaluate.remote(arch, split), list(archs))
            except RayActorError as e:
                self.pool = ActorPool(self.actors)  # the pool's bookkeeping is lost with the failed batch
                raise NasError(f"a Ray evaluation worker died more than --max-retries {self.max_retries} times "
                               f"({str(e).splitlines()[0][:200]}); run the same command to resume") from None

    def evaluator(self, split: str) -> "RayEvaluate":
        return RayEvaluate(self, split)

    def _get(self, refs: list[Any], timeout: float) -> Any:
        return self.ray.get(refs, timeout=timeout)


class RayEvaluate:
    """An ``Evaluate`` (``nas.search.objective``) on the actors: ``evaluate(arch)`` for one arch, ``map(archs)``
    for a batch in parallel (``Objective.evaluate_many``), ``workers`` how many at once."""

    def __init__(self, pool: ActorEvaluators, split: str) -> None:
        self.pool, self.split = pool, split

    @property
    def workers(self) -> int:
        return self.pool.workers

    def map(self, archs: Sequence[Arch]) -> Iterator[Evaluation]:
        return self.pool.map(archs, self.split)

    def __call__(self, arch: Arch) -> Evaluation:
        return list(self.map([arch]))[0]

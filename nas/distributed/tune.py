"""``nas search --searcher optuna|nsga2 --ray-address``: Ray Tune's ``OptunaSearch`` drives the study.

    cands = tune_search(obj, settings, max_tries, seed, storage_url, study_name, actors, run / "tune")

The pieces, all Ray Tune's or Optuna's own:

- ``OptunaSearch`` with the sampler of the local search (TPE with the constant liar, or NSGA-II, seeded), the
  same ``study_name`` and the same RDB storage (SQLite in the run directory by default), and the same
  define-by-run space (``nas.search.optuna_search.suggest_vector``);
- ``ConcurrencyLimiter(max_concurrent=N)``, N the number of evaluation actors;
- a ``Tuner`` whose trials are thin: a trial sends its arch to one of the evaluation actors of
  ``nas.distributed.evaluation`` (each holding the supernet, put in the object store once) and reports the
  ``Evaluation``. Tune's own files go to ``<run>/tune``.

``_Dedup``, a Tune ``Searcher`` around the two, keeps the rules of the local Optuna search:

- an arch outside the budget (analytic pre-check) is told at once with its violation, never evaluated;
- an arch already evaluated (this run's history, so also before a resume) is told its cached values, never
  evaluated again; an arch suggested while another trial evaluates it waits for that trial's values;
- only new archs become Tune trials, so each is evaluated once; the driver (Tune's controller runs in it)
  records each result in ``history.csv`` when the trial completes, then stores it on the Optuna trial and
  tells the study. The history is written first: a driver killed in between has the candidate in its history,
  and a resumed search serves it from there.

Decisions where Ray leaves a choice:

- Resuming is the search's own, not Tune's (``Tuner.restore``): the study and ``history.csv`` hold the whole
  state. A new driver marks the study's trials that a killed driver left RUNNING as FAIL (the driver is the
  study's only client on Ray) and starts a fresh Tune experiment; the searcher is never checkpointed by Tune.
- Trials ask for no CPU (the evaluation actors hold the CPUs or GPUs; ``TRIAL_RESOURCES``); each trial is
  given an actor that no other live trial uses (``config['slot']``), so N concurrent trials keep N actors busy.
- A worker that dies is the actors' business (restart and retry, ``--max-retries``); a trial that fails anyway
  stops the search with a ``NasError`` after the others finished; the same command resumes it.
- History rows appear in the order trials complete, numbered by Optuna trial: with N > 1 workers the search
  is not the local one trial for trial (TPE and NSGA-II condition on the trials completed so far); each arch
  is still evaluated once, and the study's size is bounded by ``max_evals`` like locally.
"""
from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from nas.errors import NasError
from nas.search.history import Candidate
from nas.search.objective import Objective
from nas.search.optuna_search import (Nsga2Cfg, Settings, constrain, open_study, optuna_sampler, rejection,
                                      remember_candidates, suggest_vector, values)
from nas.supernet.scoring import Evaluation

METRICS = ("objective", "budget_macs")
TRIAL_RESOURCES = {"cpu": 0, "memory": 1 << 20}
"""What a trial asks for: no CPU (the actors hold them), and a token of memory (Tune refuses an empty request)."""
_EVALUATION = ("arch_hash", "score", "loss", "macs", "macs_mean", "params", "seconds")


def _trial(config: dict[str, Any], actors: list[Any]) -> None:
    """One Tune trial: the arch ``config['proxy_vector']`` scored on the search split by actor ``slot``."""
    import ray
    from ray import tune

    ev = ray.get(actors[config["slot"]].evaluate_vector.remote(config["proxy_vector"], "search"))
    # objective and budget_macs as Tune sees them (the scored arch's): the study is told the target's by _Dedup
    tune.report({**{k: getattr(ev, k) for k in _EVALUATION}, "objective": ev.objective,
                 "budget_macs": ev.macs if ev.macs_mean is None else ev.macs_mean})


def _searcher_base() -> type:
    from ray.tune.search import Searcher
    return Searcher


class _Dedup(_searcher_base()):  # type: ignore[misc]
    """The searcher Tune sees: new in-budget archs only (see the module docstring)."""

    def __init__(self, inner: Any, obj: Objective, multi: bool, workers: int, max_tries: int) -> None:
        super().__init__(metric=list(METRICS) if multi else METRICS[0], mode=["max", "min"] if multi else "max")
        self.inner, self.obj, self.multi, self.max_tries = inner, obj, multi, max_tries
        self.free = list(range(workers))  # actor slots no live trial uses
        self.live: dict[str, tuple[str, str, Any, int, list[int]]] = {}
        """Tune trial id -> (internal id, arch hash, Optuna trial, slot, target vector)."""
        self.waiting: dict[str, list[tuple[str, Any]]] = {}  # hash -> duplicates (internal id, Optuna trial)
        self.asked = 0
        self.stale = 0
        self.errors: list[str] = []
        self._ot: Any = None

    # --- the define-by-run space ---------------------------------------------------------------------
    def space(self, trial: Any) -> dict[str, Any]:
        vec = suggest_vector(trial, self.obj)
        trial.set_user_attr("arch_hash", self.obj.space.decode(vec).hash())
        self._ot = trial  # Tune's captor of the Optuna trial: it forwards every Trial method
        return {"vector": vec}

    # --- Searcher ------------------------------------------------------------------------------------
    def set_search_properties(self, metric: Any, mode: Any, config: dict, **spec: Any) -> bool:
        return self.inner.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict | str | None:
        from ray.tune.search import Searcher

        obj = self.obj
        while True:
            if len(obj.cache) + len(self.live) >= obj.max_evals or self.stale >= self.max_tries:
                return Searcher.FINISHED if not self.live else None
            if not self.free:
                return None
            iid = f"nas-{self.asked}"
            config = self.inner.suggest(iid)
            if config is None or config == Searcher.FINISHED:
                return config
            self.asked += 1
            ot, vec = self._ot, config["vector"]
            arch = obj.space.decode(vec)
            h = arch.hash()
            if not obj.precheck(arch):
                self._tell(iid, rejection(obj, ot, arch, self.multi))
            elif h in obj.cache:
                ot.set_user_attr("duplicate", True)
                self._tell(iid, values(obj, obj.cache[h], self.multi))
            elif any(h == live[1] for live in self.live.values()):
                ot.set_user_attr("duplicate", True)
                self.waiting.setdefault(h, []).append((iid, ot))
            else:
                slot = self.free.pop(0)
                self.live[trial_id] = (iid, h, ot, slot, vec)
                self.stale = 0
                proxy = obj.proxy.to_proxy(arch)
                return {**config, "slot": slot, "proxy_vector": list(obj.proxy.proxy.encode(proxy))}
            self.stale += 1

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        iid, h, ot, slot, vec = self.live.pop(trial_id)
        self.free.append(slot)
        self.free.sort()
        if error or not result or "score" not in result:
            self.errors.append(trial_id)
            self.inner.on_trial_complete(iid, None, error=True)
            for dup, _ in self.waiting.pop(h, []):
                self.inner.on_trial_complete(dup, None, error=True)
            return
        ev = Evaluation(**{k: result[k] for k in _EVALUATION})
        c = self.obj.record(self.obj.space.decode(vec), ot.number, ev, 0.0)  # history.csv first
        ot.set_user_attr("candidate", c.to_json())
        self.obj.requested.append(c)
        for iid_, trial in [(iid, ot), *self.waiting.pop(h, [])]:
            constrain(self.obj, trial, c)
            self._tell(iid_, values(self.obj, c, self.multi))

    def _tell(self, iid: str, value: float | tuple[float, float]) -> None:
        vals = value if isinstance(value, tuple) else (value,)
        self.inner.on_trial_complete(iid, dict(zip(METRICS, vals)))

    def __getstate__(self) -> dict:
        """Nothing: Tune pickles its searcher into ``tuner.pkl`` for ``Tuner.restore``, which is not used (the
        study and history.csv are the search's state)."""
        return {}

    def __setstate__(self, state: dict) -> None:
        raise NasError("a `nas search` Tune experiment is resumed by running the same `nas search` command, not "
                       "with Tuner.restore")

    def save_to_dir(self, *args: Any, **kwargs: Any) -> None:
        """Nothing: the study and history.csv are the search's state (Tune's own resume is not used)."""

    def save(self, checkpoint_path: str) -> None:
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass


@contextmanager
def _quiet() -> Iterator[None]:
    """Tune's tables and INFO lines off (the search has its own progress bar and log); Optuna's warning that
    heartbeats are meant for ``Study.optimize`` too (they serve the local multi-process search)."""
    old = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    tune_log = logging.getLogger("ray.tune")
    level = tune_log.level
    tune_log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            yield
    finally:
        tune_log.setLevel(level)
        if old is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = old


def tune_search(obj: Objective, settings: Settings, max_tries: int, seed: int, storage: str, study_name: str,
                actors: Any, tune_dir: Path) -> list[Candidate]:
    """Run the study through Ray Tune until ``obj.max_evals`` distinct archs are evaluated (or ``max_tries``
    suggestions in a row bring nothing new). Returns every candidate of the run's history."""
    import optuna
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    multi = isinstance(settings, Nsga2Cfg)
    sampler, directions = optuna_sampler(settings, seed)
    study, st = open_study(storage, settings, study_name, directions)  # the sampler is OptunaSearch's
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)  # left by a killed driver
    remember_candidates(obj, study.get_trials(deepcopy=False))  # those of the study the history lacks (another run)

    workers = actors.workers
    dedup = _Dedup(None, obj, multi, workers, max_tries)
    inner = OptunaSearch(space=dedup.space, metric=dedup.metric, mode=dedup.mode, sampler=sampler,
                         study_name=study_name, storage=st)
    dedup.inner = ConcurrencyLimiter(inner, max_concurrent=workers)
    if len(obj.cache) < obj.max_evals:
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_trial, actors=actors.actors), TRIAL_RESOURCES),
            tune_config=tune.TuneConfig(search_alg=dedup, num_samples=-1, reuse_actors=True,
                                        trial_dirname_creator=lambda t: f"trial_{t.trial_id}"),
            run_config=tune.RunConfig(name="optuna", storage_path=str(tune_dir.resolve()), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=0)))
        with _quiet():
            tuner.fit()
    if dedup.errors:
        raise NasError(f"{len(dedup.errors)} Tune trial(s) failed (their logs are under {tune_dir}); run the same "
                       "command to resume")
    out = list(obj.cache.values())
    if not out:
        raise NasError(f"no arch of space {obj.space.name!r} met the budget ({obj.budget.describe()}) in "
                       f"{dedup.asked} Optuna trials; widen the budget")
    return out


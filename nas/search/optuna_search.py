"""Optuna searchers: TPE with the budget as a constraint (``optuna``) and NSGA-II on (objective, MACs) (``nsga2``).

An arch is suggested one dimension at a time: numeric dimensions (widths, ratios, counts) as ordinal integer
indices (``suggest_int``), the rest (cell kinds, ATS blocks) as categoricals. The budget enters through
Optuna's constraint API (``Trial.set_constraint``; ``constraints_func`` on Optuna versions without it): an
arch outside the budget is told at once with its relative violation and is never evaluated.

The study lives in an Optuna RDB storage (SQLite inside the run directory by default, any URL with
``--storage``), so several processes can share one study. Each arch is evaluated once across all of them:

1. a trial records its arch hash (``user_attrs['arch_hash']``) as soon as it has suggested it;
2. it is served from the cache (this run's history plus every candidate stored in the study) when it can be;
3. else it waits until every lower-numbered running trial has recorded its hash (trial numbers are handed
   out atomically by the storage), and the lowest-numbered running trial with that hash evaluates it, the
   others wait for its result. The evaluated candidate is stored on its trial
   (``user_attrs['candidate']``) before it is appended to the history.

Heartbeats (``heartbeat_interval``, ``grace_period``) let Optuna fail the trials of a killed worker, so no one
waits forever; a resumed run finds its own evaluations in its history and in the study.

Decisions where Optuna's docs are silent about our use:

- Duplicates are told the cached score (a repeated observation) rather than pruned, so that TPE's model is
  not pushed away from good regions it suggests again.
- A resumed study is not a replay: TPE and NSGA-II condition on the trials so far, and their RNG restarts
  from the seed, so a resumed Optuna search may take other decisions than an uninterrupted one (evolution
  and random search replay exactly). No evaluation is lost or repeated either way.
- Evaluations are counted over the whole study; with several workers the last few in flight may take the
  total a little past ``max_evals`` (at most one per extra worker).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Union

from nas.errors import NasError
from nas.search.history import Candidate
from nas.search.objective import Objective
from nas.space.schema import boolean, integer, number
from nas.space.yamlnodes import Node


@dataclass(frozen=True)
class OptunaCfg:
    """The ``optuna:`` section of a search recipe: TPE's settings and the storage's heartbeats (seconds)."""
    n_startup_trials: int = 10
    multivariate: bool = True
    heartbeat_interval: int = 5
    grace_period: int = 20

    FIELDS: ClassVar[dict[str, Callable[[Node], Any]]] = {
        "n_startup_trials": integer(0, 10**6), "multivariate": boolean, "heartbeat_interval": integer(1, 10**9),
        "grace_period": integer(1, 10**9)}

    def check(self) -> tuple[str, str] | None:
        if self.grace_period <= self.heartbeat_interval:
            return "grace_period", (f"grace_period {self.grace_period} must exceed heartbeat_interval "
                                    f"{self.heartbeat_interval} (Optuna's rule)")
        return None


def _prob_or_null(n: Node) -> float | None:
    return None if n.value is None else number(0.0, 1.0)(n)


@dataclass(frozen=True)
class Nsga2Cfg:
    """The ``nsga2:`` section of a search recipe (``mutation_prob`` None: 1 / number of dimensions)."""
    population: int = 50
    crossover_prob: float = 0.9
    mutation_prob: float | None = None

    FIELDS: ClassVar[dict[str, Callable[[Node], Any]]] = {
        "population": integer(2, 10**6), "crossover_prob": number(0.0, 1.0), "mutation_prob": _prob_or_null}


Settings = Union[OptunaCfg, Nsga2Cfg]
"""What an Optuna search runs with: TPE (``OptunaCfg``) or NSGA-II (``Nsga2Cfg``)."""

POLL_S = 0.05
_WORST = -1e9
"""The objective told for an arch outside the budget (never evaluated); its constraint marks it infeasible."""


def _numeric(values: tuple) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def suggest_vector(trial: Any, obj: Objective) -> list[int]:
    """One index per dimension: ordinal dimensions as ints, the others categorical over their values. A dimension
    inside a tokenizer option is suggested only when that option is chosen (Optuna's conditional parameters;
    the tokenizer's dimension comes first in the file), else 0 (``SearchSpace.active``)."""
    out: list[int] = []
    conditions = obj.space.conditions
    for i, d in enumerate(obj.space.dims):
        cond = conditions[i]
        if len(d.values) == 1 or (cond is not None and out[cond[0]] not in cond[1]):
            out.append(0)
        elif _numeric(d.values):
            out.append(trial.suggest_int(d.path, 0, len(d.values) - 1))
        elif all(v is None or isinstance(v, (bool, int, float, str)) for v in d.values) and \
                len(set(map(repr, d.values))) == len(d.values):
            out.append(d.values.index(trial.suggest_categorical(d.path, list(d.values))))
        else:
            out.append(trial.suggest_categorical(d.path, list(range(len(d.values)))))
    return out


def _sqlite_wal(storage: Any) -> None:
    """SQLite in WAL mode with ``synchronous=NORMAL``: a commit no longer waits for an fsync (10 ms here, and
    an Optuna trial makes about 20), yet a killed process loses nothing it committed (only a power cut could);
    readers and the writer of several workers do not block each other."""
    from sqlalchemy import event

    def pragmas(dbapi_connection: Any, _record: Any) -> None:
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    event.listen(storage.engine, "connect", pragmas)
    storage.engine.dispose()  # pooled connections were opened before the listener


def open_storage(storage: str, settings: Settings) -> Any:
    """The Optuna RDB storage at URL ``storage``, with heartbeats (``OptunaCfg``'s, its defaults for NSGA-II),
    SQLite in WAL mode (``NasError`` when Optuna cannot open it)."""
    import optuna

    cfg = settings if isinstance(settings, OptunaCfg) else OptunaCfg()
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                st = optuna.storages.RDBStorage(storage, heartbeat_interval=cfg.heartbeat_interval,
                                                grace_period=cfg.grace_period)
            break
        except Exception as e:  # invalid URLs, missing drivers: the user's input
            # two workers creating one new database race on its schema: the loser retries
            from sqlalchemy.exc import DBAPIError
            if attempt < 4 and isinstance(e, DBAPIError):  # e.g. "table already exists", "locked"
                time.sleep(0.2 * (attempt + 1))
                continue
            raise NasError(f"--storage {storage!r}: Optuna cannot open it ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}); use an "
                           "RDB URL such as sqlite:///study.db") from None
    if st.engine.dialect.name == "sqlite":
        _sqlite_wal(st)
    return st


def has_set_constraint() -> bool:
    from optuna.trial import Trial
    return hasattr(Trial, "set_constraint")


def optuna_sampler(settings: Settings, seed: int) -> tuple[Any, list[str]]:
    """The sampler (TPE with the constant liar, or NSGA-II) and the study's directions."""
    import optuna

    cons = None if has_set_constraint() else (lambda t: [t.user_attrs.get("constraint", 0.0)])
    if isinstance(settings, Nsga2Cfg):
        n = settings
        sampler = optuna.samplers.NSGAIISampler(population_size=n.population, crossover_prob=n.crossover_prob,
                                                mutation_prob=n.mutation_prob, seed=seed,
                                                **({} if cons is None else {"constraints_func": cons}))
        return sampler, ["maximize", "minimize"]
    cfg = settings
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.n_startup_trials,
                                         multivariate=cfg.multivariate, constant_liar=True,
                                         **({} if cons is None else {"constraints_func": cons}))
    return sampler, ["maximize"]


def set_violation(trial: Any, violation: float) -> None:
    """The budget constraint of ``trial`` (<= 0 satisfied), through ``set_constraint`` where Optuna has it."""
    if has_set_constraint():
        trial.set_constraint("budget", violation)
    else:
        trial.set_user_attr("constraint", violation)


def rejection(obj: Objective, trial: Any, arch: Any, multi: bool) -> float | tuple[float, float]:
    """Mark ``trial`` (its target ``arch`` fails the budget's pre-check) rejected; the values to tell."""
    c, ms = obj.cost(arch), obj.latency(arch)
    trial.set_user_attr("rejected", True)
    macs = c.macs_min if obj.budget.on == "mean" else c.macs  # the best the arch could do
    set_violation(trial, max(obj.budget.violation(macs, c.params, ms), 1e-9))
    return (_WORST, float(c.macs if obj.budget.latency is None else ms)) if multi else _WORST


def constrain(obj: Objective, trial: Any, cand: Candidate) -> None:
    """The budget constraint of ``trial`` from its evaluated candidate (the measured mean for a mean budget)."""
    set_violation(trial, 0.0 if cand.feasible else max(obj.budget.violation(
        cand.macs_mean if cand.macs_mean is not None else cand.target_macs, cand.target_params,
        cand.target_latency_ms), 1e-9))


def values(obj: Objective, c: Candidate, multi: bool) -> float | tuple[float, float]:
    """What the study is told for candidate ``c``: its objective (and for NSGA-II the cost the budget bounds:
    the predicted latency under a latency budget, else MACs)."""
    m = c.macs_mean if obj.budget.on == "mean" and c.macs_mean is not None else c.target_macs
    if obj.budget.latency is not None:
        m = c.target_latency_ms
    return (c.objective, float(m)) if multi else c.objective


def open_study(storage: str, settings: Settings, study_name: str, directions: list[str],
               sampler: Any = None) -> tuple[Any, Any]:
    """The study ``study_name`` in ``storage`` (created, or loaded when it exists) and the opened storage; a stored
    study with other objectives is refused."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = open_storage(storage, settings)
    study = optuna.create_study(storage=st, sampler=sampler, study_name=study_name, directions=directions,
                                load_if_exists=True)
    if study.directions != [getattr(optuna.study.StudyDirection, d.upper()) for d in directions]:
        raise NasError(f"study {study_name!r} in {storage} has other objectives; use another --storage")
    return study, st


def remember_candidates(obj: Objective, trials: list[Any]) -> int:
    """Cache in ``obj`` the candidate every evaluated trial carries (``user_attrs['candidate']``); how many."""
    n = 0
    for t in trials:
        js = t.user_attrs.get("candidate")
        if js is not None:
            obj.remember(Candidate.from_json(js))
            n += 1
    return n


class _Study:
    """The study plus the cross-worker cache and claim protocol (see the module docstring)."""

    def __init__(self, obj: Objective, settings: Settings, seed: int, storage: str, study_name: str) -> None:
        import optuna

        self.optuna, self.obj, self.multi = optuna, obj, isinstance(settings, Nsga2Cfg)
        sampler, directions = optuna_sampler(settings, seed)
        self.study, _ = open_study(storage, settings, study_name, directions, sampler)
        self.refresh()

    # --- shared state --------------------------------------------------------------------------------
    def trials(self) -> list[Any]:
        return self.study.get_trials(deepcopy=False)

    def refresh(self, trials: list[Any] | None = None) -> int:
        """Cache every candidate stored in the study; returns how many distinct archs were evaluated."""
        return remember_candidates(self.obj, trials if trials is not None else self.trials())

    def evaluated(self) -> int:
        return len({t.user_attrs["arch_hash"] for t in self.trials() if "candidate" in t.user_attrs})

    # --- one trial -----------------------------------------------------------------------------------
    def objective(self, trial: Any) -> float | tuple[float, float]:
        obj = self.obj
        vec = suggest_vector(trial, obj)
        arch = obj.space.decode(vec)
        h = arch.hash()
        trial.set_user_attr("arch_hash", h)
        if not obj.precheck(arch):
            return rejection(obj, trial, arch, self.multi)
        cand = self.claim(trial, h, arch)
        constrain(obj, trial, cand)
        return values(obj, cand, self.multi)

    def claim(self, trial: Any, h: str, arch: Any) -> Candidate:
        """The candidate of ``arch``: cached, evaluated here (this trial owns the hash), or another's result."""
        optuna, obj = self.optuna, self.obj
        RUNNING = optuna.trial.TrialState.RUNNING
        while True:
            cached = obj.cache.get(h)
            if cached is not None:
                trial.set_user_attr("duplicate", True)
                obj.requested.append(cached)
                return cached
            trials = self.trials()
            if self.refresh(trials) and h in obj.cache:
                continue
            lower = [t for t in trials if t.number < trial.number and t.state == RUNNING]
            if any("arch_hash" not in t.user_attrs for t in lower):
                self._wait()
                continue
            owners = [t.number for t in trials if t.state == RUNNING and t.user_attrs.get("arch_hash") == h
                      and not t.user_attrs.get("duplicate")]
            if min(owners, default=trial.number) >= trial.number:
                c = obj.evaluate_new(arch, trial.number,
                                     publish=lambda c: trial.set_user_attr("candidate", c.to_json()))
                obj.requested.append(c)
                return c
            self._wait()

    def _wait(self) -> None:
        time.sleep(POLL_S)
        with warnings.catch_warnings():  # "experimental" in Optuna 5
            warnings.simplefilter("ignore", self.optuna.exceptions.ExperimentalWarning)
            self.optuna.storages.fail_stale_trials(self.study)


def optuna_search(obj: Objective, settings: Settings, max_tries: int, seed: int, storage: str,
                  study_name: str) -> list[Candidate]:
    """Run TPE (``OptunaCfg``) or NSGA-II (``Nsga2Cfg``) until the study holds ``obj.max_evals`` evaluated archs,
    or until ``max_tries`` trials in a row bring nothing new. Returns every candidate evaluated in the study."""
    s = _Study(obj, settings, seed, storage, study_name)
    stale = {"n": 0, "evaluated": s.evaluated()}

    def stop(study: Any, trial: Any) -> None:
        n = s.evaluated()
        stale["n"] = 0 if n > stale["evaluated"] else stale["n"] + 1
        stale["evaluated"] = n
        if n >= obj.max_evals or stale["n"] >= max_tries:
            study.stop()

    if stale["evaluated"] < obj.max_evals:
        s.study.optimize(s.objective, callbacks=[stop], gc_after_trial=False)
    trials = s.trials()
    s.refresh(trials)
    out: dict[str, Candidate] = {}
    for t in sorted(trials, key=lambda t: t.number):
        js = t.user_attrs.get("candidate")
        if js is not None:
            out.setdefault(js["arch_hash"], Candidate.from_json(js))
    if not out:
        raise NasError(f"no arch of space {obj.space.name!r} met the budget ({obj.budget.describe()}) in "
                       f"{len(trials)} Optuna trials; widen the budget")
    return list(out.values())


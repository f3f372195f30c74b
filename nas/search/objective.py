"""The objective every searcher calls: a target arch in, a scored ``Candidate`` out, each arch evaluated once.

``Objective`` joins the pieces a searcher should not know about: the budget check on the target arch (before
any evaluation), the target -> proxy mapping, the evaluator (inherited supernet weights on the search split),
the history file (durable, and the cache a resumed run replays from) and a progress bar.

``Evaluation`` and ``Evaluator`` are the evaluator's interface (``nas.supernet.scoring``); searchers and tests
may pass any callable ``Arch -> Evaluation`` (tests use a fast deterministic fake).
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable, Protocol, Sequence

from nas.arch import Arch
from nas.cost import Cost, cost
from nas.search.budget import Budget
from nas.search.history import Candidate, History, best
from nas.search.proxy import ProxyMap
from nas.space import SearchSpace


class EvaluationLike(Protocol):
    """What an evaluator returns for one (proxy) arch (``nas.supernet.scoring.Evaluation``). Searchers maximise
    its ``objective`` attribute when it has one, else ``score``."""
    arch_hash: str
    score: float
    loss: float
    macs: int
    macs_mean: int | None
    params: int
    seconds: float


Evaluate = Callable[[Arch], EvaluationLike]


class Cancelled(Exception):
    """Raised inside a searcher whose ``Objective.stop`` was set (the search it ran beside has failed)."""


class Objective:
    """Target arch -> Candidate (cached by arch hash), with the budget checked before evaluation.

    ``max_evals`` caps the distinct candidates (``exhausted``); ``propose`` draws new, in-budget archs with a
    retry cap, so a searcher never asks twice for the same arch.
    """

    def __init__(self, proxy: ProxyMap, budget: Budget, evaluate: Evaluate, history: History, max_evals: int,
                 progress: bool = True, desc: str = "search", position: int = 0,
                 stop: threading.Event | None = None) -> None:
        self.space: SearchSpace = proxy.target
        self.stop = stop or threading.Event()  # set from another thread: the next evaluation raises Cancelled
        self.proxy, self.budget, self.evaluate, self.history = proxy, budget, evaluate, history
        self.max_evals = max_evals
        self.cache: dict[str, Candidate] = dict(history.cached)
        self.requested: list[Candidate] = []   # candidates this search asked for, in order (cached or new)
        self.seen: set[str] = set()            # hashes proposed so far
        self.new_evals = 0
        self._costs: dict[Arch, Cost] = {}
        self._ms: dict[Arch, float | None] = {}
        from tqdm import tqdm
        self.bar = tqdm(total=max_evals, desc=desc, unit="eval", disable=not progress, dynamic_ncols=True,
                        file=sys.stderr, position=position)

    # --- budget --------------------------------------------------------------------------------------
    def cost(self, arch: Arch) -> Cost:
        c = self._costs.get(arch)
        if c is None:
            c = self._costs[arch] = cost(arch)
        return c

    def latency(self, arch: Arch) -> float | None:
        """The target ``arch``'s latency predicted by the budget's table (ms; None without a table)."""
        if arch not in self._ms:
            self._ms[arch] = self.budget.predict(arch)
        return self._ms[arch]

    def precheck(self, arch: Arch) -> bool:
        """Whether the target ``arch`` can meet the budget, from its analytic cost and predicted latency (no
        evaluation)."""
        c = self.cost(arch)
        return self.budget.may_admit(c.macs_min, c.macs_max, c.params, self.latency(arch))

    def propose(self, make: Callable[[], Arch], max_tries: int) -> Arch | None:
        """The first of at most ``max_tries`` archs from ``make()`` that is new and passes the budget check."""
        for _ in range(max_tries):
            arch = make()
            h = arch.hash()
            if h not in self.seen and self.precheck(arch):
                self.seen.add(h)
                return arch
        return None

    @property
    def exhausted(self) -> bool:
        return len(self.requested) >= self.max_evals

    # --- evaluation ----------------------------------------------------------------------------------
    def __call__(self, arch: Arch, step: int) -> Candidate:
        """The candidate for target ``arch``: from the cache, else evaluated and appended to the history."""
        self._check_stop()
        h = arch.hash()
        c = self.cache.get(h)
        if c is None:
            c = self.evaluate_new(arch, step)
        else:
            self.bar.update(1)
        self.requested.append(c)
        self._postfix()
        return c

    def evaluate_many(self, archs: Sequence[Arch], steps: int | Sequence[int]) -> list[Candidate]:
        """``[self(a, s) for a, s in zip(archs, steps)]`` (``steps`` one int for all, or one per arch), with the
        new archs evaluated in parallel when the evaluator can (a ``map`` method: ``nas.distributed``). Results
        are recorded in the order of ``archs``, each as soon as it and those before it are in, so the history
        is the one a sequential run writes."""
        self._check_stop()
        steps = [steps] * len(archs) if isinstance(steps, int) else list(steps)
        fan_out = getattr(self.evaluate, "map", None)
        if fan_out is None:
            return [self(a, s) for a, s in zip(archs, steps)]
        new = list(dict.fromkeys(a for a in archs if a.hash() not in self.cache))  # distinct, in order
        results = iter(fan_out([self.proxy.to_proxy(a) for a in new]))
        out = []
        for arch, step in zip(archs, steps):
            c = self.cache.get(arch.hash())
            if c is None:
                c = self.record(arch, step, next(results), time.perf_counter())
            else:
                self.bar.update(1)
            self.requested.append(c)
            out.append(c)
        self._postfix()
        return out

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Cancelled("stopped: the search beside this one failed")

    @property
    def parallelism(self) -> int:
        """How many evaluations run at once (the evaluator's ``workers``; 1 in this process)."""
        return int(getattr(self.evaluate, "workers", 1))

    def evaluate_new(self, arch: Arch, step: int, publish: Callable[[Candidate], None] | None = None) -> Candidate:
        """Evaluate (no cache lookup), ``publish`` the result (shared storage), record it durably, return it."""
        t0 = time.perf_counter()
        return self.record(arch, step, self.evaluate(self.proxy.to_proxy(arch)), t0, publish)

    def record(self, arch: Arch, step: int, e: EvaluationLike, t0: float,
                publish: Callable[[Candidate], None] | None = None) -> Candidate:
        """The candidate of target ``arch`` from its evaluation ``e``: published, appended to the history, cached."""
        tc, ms = self.cost(arch), self.latency(arch)
        measured = e.macs_mean if self.budget.on == "mean" and e.macs_mean is not None else tc.macs
        c = Candidate(arch.hash(), step, float(e.score), float(e.loss), float(getattr(e, "objective", e.score)),
                      int(e.macs), int(e.params),
                      None if e.macs_mean is None else int(e.macs_mean), tc.macs, tc.params,
                      self.budget.admits(measured, tc.params, ms),
                      float(getattr(e, "seconds", time.perf_counter() - t0)),
                      tuple(self.space.encode(arch)), ms)
        if publish is not None:
            publish(c)
        self.history.append(c)
        self.cache[c.arch_hash] = c
        self.new_evals += 1
        self.bar.update(1)
        return c

    def remember(self, c: Candidate) -> None:
        """A candidate evaluated elsewhere (another worker on the same study): cached, not written."""
        self.cache.setdefault(c.arch_hash, c)

    def _postfix(self) -> None:
        b = best(self.requested)
        if b is not None:
            self.bar.set_postfix_str(f"best {b.score:.4f} ({b.target_macs / 1e9:.3g} GMACs) new {self.new_evals}",
                                     refresh=False)

    def close(self) -> None:
        self.bar.close()

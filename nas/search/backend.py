"""Where a search's candidates are scored: an execution backend, built by the caller and passed to ``search``.

    search(space, flops="1.3G")                                            # Local(): in this process
    search(space, flops="1.3G", backend=RaySearch("auto").backend())       # Ray actors (nas.distributed)
    search(space, flops="1.3G", backend=Injected(fake))                    # tests: no supernet at all

``backend.start(space, supernet, batch_size, stack, log)`` returns the search's ``Scoring``: the evaluators of
the search and val splits, the random baseline's, and what else differs between backends. ``supernet`` is the
``Trained`` supernet the candidates inherit their weights from (None for a backend with ``needs_supernet``
False); ``stack`` holds whatever the backend must release when the search ends (a Ray connection).

The search never imports a backend's module: ``nas.distributed`` sits above ``nas.search`` and builds its own.
"""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

from nas.search.objective import Evaluate
from nas.search.searchers import StudyRunner
from nas.space import SearchSpace

if TYPE_CHECKING:
    from nas.data import DataSplits

Log = Callable[[str], None]


@dataclass(frozen=True)
class Trained:
    """The supernet candidates are scored with: its weights, a way to load a second copy (evaluators are not
    thread-safe: the baseline thread gets its own), the data splits it was trained with, and its training
    recipe's ``space_overrides`` (what makes its space a proxy of the target)."""
    supernet: Any                       # nas.supernet.Supernet
    copy: Callable[[], Any]
    splits: "DataSplits"
    overrides: dict[str, Any]


@dataclass(frozen=True)
class Scoring:
    """A started backend: ``search`` / ``val`` score the searcher's candidates and the winners, ``baseline`` the
    random baseline beside the search; ``share_threads`` whether the baseline thread and the search split this
    process's torch threads; ``run_study`` the backend's own way to run an Optuna study (None: Optuna's);
    ``per_image(split)`` the per-image outcomes the report's paired comparisons need (None: none)."""
    search: Evaluate
    val: Evaluate
    baseline: Callable[[], Evaluate]
    share_threads: bool = False
    run_study: StudyRunner | None = None
    per_image: Callable[[str], Any] = lambda split: None


class Backend(Protocol):
    needs_supernet: bool

    def start(self, space: SearchSpace, supernet: Trained | None, batch_size: int, stack: ExitStack,
              log: Log) -> Scoring: ...


class Local:
    """Candidates scored in this process (the default): the supernet's evaluators, and the baseline's on its own
    copy of the supernet, in a thread sharing the CPU."""
    needs_supernet = True

    def start(self, space: SearchSpace, supernet: Trained | None, batch_size: int, stack: ExitStack,
              log: Log) -> Scoring:
        from nas.supernet.scoring import Evaluator

        assert supernet is not None  # needs_supernet
        evaluators = {s: Evaluator(supernet.supernet, supernet.splits, s, batch_size=batch_size)
                      for s in ("search", "val")}
        return Scoring(evaluators["search"], evaluators["val"],
                       lambda: Evaluator(supernet.copy(), supernet.splits, "search", batch_size=batch_size),
                       share_threads=True, per_image=lambda split: evaluators[split].per_image)


class Injected:
    """Candidates scored by ``evaluator(space, split)`` (an ``Arch -> Evaluation`` for the supernet's space),
    with no supernet trained, loaded or exported: tests pass fast deterministic fakes through it."""
    needs_supernet = False

    def __init__(self, evaluator: Callable[[SearchSpace, str], Evaluate]) -> None:
        self.evaluator = evaluator

    def start(self, space: SearchSpace, supernet: Trained | None, batch_size: int, stack: ExitStack,
              log: Log) -> Scoring:
        search, val = self.evaluator(space, "search"), self.evaluator(space, "val")
        return Scoring(search, val, lambda: self.evaluator(space, "search"), share_threads=True,
                       per_image=lambda split: getattr(search if split == "search" else val, "per_image", None))

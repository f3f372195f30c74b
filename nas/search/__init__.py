"""Search: scoring archs with inherited supernet weights (``evaluator``), and the searchers that use it.

Modules: ``evaluator`` (top-1 and loss on the search split), ``budget`` (bands on MACs/params), ``proxy``
(target space vs the space the supernet was trained on), ``recipe`` (validated search recipes), ``history``
(history.csv, the resume cache), ``objective`` (what searchers call), ``evolution`` / ``optuna_search`` /
``random_search`` (the searchers), ``runner`` (the ``nas search`` job). See docs/search.md.

``Evaluation`` and ``Evaluator`` are imported lazily, so that ``nas search`` refuses a bad budget or recipe
before torch is loaded.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Evaluation", "Evaluator"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from nas.search import evaluator
        return getattr(evaluator, name)
    raise AttributeError(f"module 'nas.search' has no attribute {name!r}")

"""Search: scoring archs with inherited supernet weights (``evaluator``), and the searchers that use it.

Modules: ``evaluator`` (top-1 and loss on the search split), ``budget`` (bands on MACs/params), ``proxy``
(target space vs the space the supernet was trained on), ``recipe`` (validated search recipes), ``history``
(history.csv, the resume cache), ``objective`` (what searchers call), ``evolution`` / ``optuna_search`` /
``random_search`` (the searchers), ``runner`` (the ``nas search`` job). See docs/search.md.
"""
from nas.search.evaluator import Evaluation, Evaluator

__all__ = ["Evaluation", "Evaluator"]

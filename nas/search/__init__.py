"""Search: scoring archs with inherited supernet weights (``evaluator``), and the searchers that use it."""
from nas.search.evaluator import Evaluation, Evaluator

__all__ = ["Evaluation", "Evaluator"]

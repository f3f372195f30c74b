"""Search: the searchers that score archs with inherited supernet weights, and their report.

Modules: ``budget`` (bands on MACs/params), ``proxy`` (target space vs the space the supernet was trained on),
``recipe`` (validated search recipes), ``history`` (history.csv, the resume cache), ``objective`` (what searchers
call), ``evolution`` / ``optuna_search`` / ``random_search`` (the searchers), ``runner`` (the ``nas search`` job),
``report`` (summary and table) and ``plots`` (the pictures of a run), ``rank_check`` (``nas rank-check``). The
evaluator the searchers call is ``nas.supernet.scoring.Evaluator`` (top-1 and loss on the search split). See
docs/search.md.
"""

"""Exact min/max of MACs and params over a search space, and an arch attaining each, without enumerating it.

The cost of an arch (``nas.cost``) is a sum of terms along a chain: the tokenizer (its choices and stage 0's
width), then per stage its cells, the pooling into it (the previous and this stage's widths) and finally the
head (the last width). Two kinds of choices:

- *global* ones, which reach every stage: the tokenizer's values, the pooling kernel, a token reduction's
  budget (ATS's keep or k);
- *chain* ones: a stage's dim / heads / mlp_ratio, each cell's kind, each searchable block of the reduction.

For each combination of global values, a dynamic programme walks the stages and cells in order with the
state (tokens entering, grid side, previous width): a stage's values are chosen at its first cell, every cell
adds its own MACs and params and, when the reduction acts in it, moves the (worst-case) token count. A tokenizer
with several passes (CF-ViT) runs every cell once per pass and the head after each. The state
captures everything later terms depend on, so the optimum over the chain is exact; the global combinations
are enumerated. The work is (global combinations) x (stages x stage values + cells x kinds x token states),
milliseconds on every shipped space, where the spaces themselves hold up to 10^9 archs.

MACs are ``Cost.macs``: the worst case of data-dependent archs (a reduction keeps its ``max_kept`` tokens in every
layer it acts in; CF-ViT runs both passes).

Given a latency table (``latency``: anything with ``ms(blocks) -> float``, ``nas.latency.LatencyTable``), the same
walk also bounds the predicted latency, a sum over the blocks of ``nas.latency.blocks`` that the walk names term by
term (objectives ``min_latency`` and ``max_latency``); every block the space can produce is asked for on the way.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Protocol

from nas.arch import Stage
from nas.cost import cell_macs, cell_params, head_cost, pooling_cost
from nas.latency.blocks import Block, cell_blocks, head_blocks, pooling_blocks, tokenizer_blocks
from nas.mechanisms import reductions, tokenizer
from nas.shapes import reduction_stage
from nas.space.schema import Choice, Subset

Decision = tuple[int, int]  # (dimension index, value index)
OBJECTIVES = ("min_macs", "max_macs", "min_params", "max_params")
LATENCY_OBJECTIVES = ("min_latency", "max_latency")


class BlockTimes(Protocol):
    """A predictor that sums a time per block (``nas.latency.LatencyTable``)."""

    def ms(self, blocks: list[Block]) -> float: ...


def _options(x: Any, index: dict[int, int]) -> list[tuple[Any, tuple[Decision, ...]]]:
    """A template leaf's values, each with the decision that picks it (none for a fixed value)."""
    if isinstance(x, Choice):
        return [(v, ((index[id(x)], j),)) for j, v in enumerate(x.values)]
    return [(x, ())]


def _product(fields: dict[str, Any], index: dict[int, int]) -> list[tuple[dict[str, Any], tuple[Decision, ...]]]:
    """Every combination of a mapping's leaves: ({key: value}, decisions)."""
    keys = list(fields)
    out = []
    for combo in itertools.product(*(_options(fields[k], index) for k in keys)):
        out.append(({k: v for k, (v, _) in zip(keys, combo)}, tuple(d for _, ds in combo for d in ds)))
    return out


class _Chain:
    """The per-stage and per-cell choices of a template, with their decisions, independent of global values."""

    def __init__(self, t: dict[str, Any], index: dict[int, int]) -> None:
        self.t = t
        n = len(t["stages"])
        self.stage_values = [
            [(Stage(v["dim"], v["heads"], float(v["mlp_ratio"]), ()), ds)
             for v, ds in _product({k: x for k, x in st.items() if k != "cells"}, index)]
            for st in t["stages"]]
        used = [key for key in reductions() if t.get(key) is not None]
        red, g = (t[used[0]] if used else None), 0
        blocks = () if red is None else red["blocks"]
        self.cells: list[list[list[tuple[str, bool, tuple[Decision, ...]]]]] = []
        for s, st in enumerate(t["stages"]):
            stage_cells = []
            for cell in st["cells"]:
                if red is None or not reduction_stage(t["pooling"]["type"], s, n):
                    flags = [(False, ())]
                elif isinstance(blocks, Subset):
                    flags = ([(False, ((index[id(blocks)] + blocks.items.index(g), 0),)),
                              (True, ((index[id(blocks)] + blocks.items.index(g), 1),))]
                             if g in blocks.items else [(False, ())])
                else:
                    flags = [(g in blocks, ())]
                stage_cells.append([(kind, a, ds + dk) for kind, dk in _options(cell, index) for a, ds in flags
                                    if not (a and kind == "identity")])
                g += 1
            self.cells.append(stage_cells)


State = tuple[int, int, int]        # (tokens entering incl. cls, grid side, previous stage's width)
Best = tuple[float, int, int, float, Any]  # (score, macs, params, ms, decisions as a linked list)


def _keep(table: dict[State, Best], state: State, cand: Best) -> None:
    old = table.get(state)
    if old is None or cand[0] < old[0]:
        table[state] = cand


def _optimise(chain: _Chain, g: dict[str, Any], score: Callable[[int, int, float], float], memo: dict[tuple, Any],
              lat: BlockTimes | None) -> Best:
    """Best (by ``score(macs, params, ms)``, smallest) arch of the chain given the global values ``g``; ``memo``
    caches the cost terms of ``g`` across objectives; ``lat`` times the blocks (None: no latency)."""
    t = chain.t
    img, chans, qkv_bias, classes = t["input"]["size"], t["input"]["channels"], t["qkv_bias"], t["num_classes"]
    pool, kernel, tok, red = t["pooling"]["type"], g["kernel"], g["tokenizer"], g["reduction"]
    t_head = t["head"]
    cls = t_head == "cls" or pool != "2d"
    mech = tokenizer(tok)
    side0 = mech.side(img, tok)
    passes = mech.passes(tok, side0 * side0 + cls)  # tokens of each run of the body
    several = len(passes) > 1                        # then pooling is none: every stage sees the same counts

    def cell(kind: str, n: int, n_out: int | None, st: Stage) -> tuple[int, int, float]:
        key = (kind, n, n_out, st.dim, st.heads, st.hidden)
        if key not in memo:
            macs = (sum(cell_macs(kind, m, st.dim, st.hidden) for m in passes) if several
                    else cell_macs(kind, n, st.dim, st.hidden, n_out))
            ms = 0.0 if lat is None else lat.ms(cell_blocks(kind, n, st, qkv_bias, passes if several else None,
                                                             n_out, red if n_out is not None else None))
            memo[key] = macs, cell_params(kind, st.dim, st.hidden, qkv_bias), ms
        return memo[key]

    states: dict[State, Best] = {(0, 0, 0): (0, 0, 0, 0.0, None)}
    for s, (values, cells) in enumerate(zip(chain.stage_values, chain.cells)):
        entered: dict[State, Best] = {}
        for (n, side, prev), (_, macs, params, ms, trace) in states.items():
            for st, ds in values:
                key = (s, n, side, prev, id(st))
                if key not in memo:
                    if s == 0:
                        macs_per_pass, p = mech.cost(img, chans, tok, st, qkv_bias, cls)
                        dt = 0.0 if lat is None else lat.ms(tokenizer_blocks(img, chans, tok, st, qkv_bias, cls))
                        memo[key] = sum(macs_per_pass), p, dt, side0 * side0 + cls, side0
                    else:
                        m, p, n_patch, side_in = pooling_cost(pool, kernel, n - cls, side, prev, st.dim, cls)
                        dt = 0.0 if lat is None else lat.ms(pooling_blocks(pool, kernel, n, side, prev, st.dim, cls))
                        memo[key] = m, p, dt, n_patch + cls, side_in
                m, p, dt, n_in, side_in = memo[key]
                # the stage's values travel in the state's width slot until the stage ends
                m, p, dt = macs + m, params + p, ms + dt
                _keep(entered, (n_in, side_in, id(st)), (score(m, p, dt), m, p, dt, (ds, trace)))
        by_id = {id(st): st for st, _ in values}
        for options in cells:
            after: dict[State, Best] = {}
            for (n, side, sid), (_, macs, params, ms, trace) in entered.items():
                st = by_id[sid]
                for kind, reduces, ds in options:
                    reduces = reduces and red is not None  # inactive with a tokenizer that is not reducible
                    n_out = 1 + g["reducer"].max_kept(red, n - 1) if reduces else n
                    m, p, dt = cell(kind, n, n_out if reduces else None, st)
                    m, p, dt = macs + m, params + p, ms + dt
                    _keep(after, (n_out, side, sid), (score(m, p, dt), m, p, dt, (ds, trace)))
            entered = after
        states = {}
        for (n, side, sid), best in entered.items():
            _keep(states, (n, side, by_id[sid].dim), best)
    result: Best | None = None
    for (n, side, dim), (_, macs, params, ms, trace) in states.items():
        m, p = head_cost(dim, classes)
        m *= len(passes)  # the head runs after every pass
        m, p = macs + m, params + p
        dt = ms + (0.0 if lat is None else lat.ms(head_blocks(t_head, n, dim, classes, passes if several else None)))
        cand = (score(m, p, dt), m, p, dt, (g["decisions"], trace))
        if result is None or cand[0] < result[0]:
            result = cand
    assert result is not None  # a template has at least one stage, every stage at least one value
    return result


def extremes(t: dict[str, Any], index: dict[int, int], n_dims: int,
             latency: BlockTimes | None = None) -> dict[str, tuple[Any, list[int]]]:
    """{objective: (value, flat vector of an arch attaining it)} for the four ``OBJECTIVES``, or with a
    ``latency`` predictor for the two ``LATENCY_OBJECTIVES`` (milliseconds).

    ``t`` is a validated template, ``index`` maps ``id(leaf)`` of each Choice / Subset to its first dimension.
    """
    chain = _Chain(t, index)
    used = [key for key in reductions() if t.get(key) is not None]
    budget = {k: v for k, v in t[used[0]].items() if k != "blocks"} if used else {}
    globals_: list[dict[str, Any]] = []
    for section, sd in _options(t["tokenizer"], index):  # a choice of tokenizers: each option in turn
        mech = tokenizer(section["type"])
        reducer = reductions()[used[0]] if used and mech.reducible else None
        for tv, td in _product({k: v for k, v in section.items() if k != "type"}, index):
            for kernel, kd in _options(t["pooling"]["kernel"], index):
                for bv, bd in _product(budget if reducer else {}, index):  # the reduction's budget, every block
                    globals_.append({"tokenizer": mech.from_dict(tv), "kernel": kernel, "reducer": reducer,
                                     "reduction": reducer.from_dict({"blocks": [], **bv}) if reducer else None,
                                     "decisions": sd + td + kd + bd})
    scores = {"min_macs": lambda m, p, t: m, "max_macs": lambda m, p, t: -m,
              "min_params": lambda m, p, t: p, "max_params": lambda m, p, t: -p,
              "min_latency": lambda m, p, t: t, "max_latency": lambda m, p, t: -t}
    objectives = OBJECTIVES if latency is None else LATENCY_OBJECTIVES
    bests: dict[str, Best] = {}
    for g in globals_:
        memo: dict[tuple, Any] = {}
        for name in objectives:
            b = _optimise(chain, g, scores[name], memo, latency)
            if name not in bests or b[0] < bests[name][0]:
                bests[name] = b
    out = {}
    for name, best in bests.items():
        vector, node = [0] * n_dims, best[4]
        while node is not None:
            decisions, node = node
            for i, j in decisions:
                vector[i] = j
        out[name] = (best[{"macs": 1, "params": 2, "latency": 3}[name.split("_")[1]]], vector)
    return out

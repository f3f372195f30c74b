"""The search-space schema: validates a YAML Node tree into a *template*.

A template has the shape of ``Arch.to_dict()`` but any searchable leaf may be a ``Choice`` (pick one
value) and ATS blocks may be a ``Subset`` (pick any subset). An arch file is a template with no choices.
Every rule is checked for every reachable combination of choices at load time, so that any arch sampled
from a space that loads is valid. The rules and the DSL are documented in docs/space-dsl.md.
"""
from __future__ import annotations

import difflib
import itertools
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import yaml

from nas.arch import ARCH_FORMAT, CELL_KINDS, CHANNELS
from nas.errors import NasError
from nas.limits import MAX_CELLS, MAX_VALUES, name_problem
from nas.mechanisms import Reduction, reductions, tokenizer, tokenizers
from nas.shapes import heads_error, pooled_side_2d
from nas.space.yamlnodes import Node

REQUIRED = object()


@dataclass(frozen=True)
class Choice:
    """One searchable value: exactly one of ``values`` is picked."""
    values: tuple
    path: str
    line: int


@dataclass(frozen=True)
class Subset:
    """A searchable subset of ``items`` (each item in or out independently)."""
    items: tuple
    path: str
    line: int


def options(x: Any) -> tuple:
    """The values a template leaf can take."""
    return x.values if isinstance(x, Choice) else (x,)


# --- sizes --------------------------------------------------------------------------------------------
_SIZE = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([KMGT]?)\s*$")
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_size(text: str | int | float) -> int:
    """'1.3G' -> 1_300_000_000; '1300M', '1.3e9', 1300000000 too. Decimal units. Raises ValueError."""
    if isinstance(text, bool):
        raise ValueError(f"bad size {text!r}")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _SIZE.match(str(text))
        if not m:
            raise ValueError(f"bad size {text!r}: expected a number with an optional K, M, G or T suffix, "
                             f"e.g. 1.3G, 1300M or 1.3e9")
        value = float(m.group(1)) * _UNITS[m.group(2)]
    if not math.isfinite(value) or round(value) < 1:
        raise ValueError(f"bad size {text!r}: a size is a count of MACs or parameters, a finite number >= 1 "
                         f"(e.g. 1.3G, 1300M or 1.3e9)")
    return int(round(value))


def human(n: float) -> str:
    """The inverse of ``parse_size`` for display: 1260000000 -> '1.26G' (three significant digits)."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}" if n / scale < 100 else f"{n / scale:.1f}{unit}"
    return str(n)


# --- reading mappings ---------------------------------------------------------------------------------
class Reader:
    """Takes keys out of a mapping Node; ``done()`` rejects whatever is left (with a did-you-mean)."""

    def __init__(self, node: Node, what: str) -> None:
        if not node.is_map:
            raise node.error(f"expected a mapping ({what}), got {_kind(node.value)}")
        self.node, self.left = node, dict(node.value)

    def has(self, key: str) -> bool:
        return key in self.left

    def take(self, key: str, parse: Callable[[Node], Any], default: Any = REQUIRED) -> Any:
        if key not in self.left:
            if default is REQUIRED:
                raise self.node.error(f"missing required key {key!r}")
            return default
        return parse(self.left.pop(key))

    def done(self) -> None:
        """Reject keys nobody took (a safety net: ``allow`` already rejected unknown ones)."""
        self._reject(list(self.left))

    def allow(self, *keys: str) -> "Reader":
        """Declare the keys allowed here; unknown keys are reported at once, before any missing key."""
        self._allowed = list(keys)
        self._reject([k for k in self.left if k not in keys])
        return self

    _allowed: list[str] = []

    def _reject(self, keys: list[str]) -> None:
        for key in keys:
            child = self.left[key]
            close = difflib.get_close_matches(key, self._allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            allowed = ", ".join(self._allowed) if self._allowed else "none"
            raise NasError(f"unknown key {key!r}{hint} (allowed here: {allowed})",
                           file=child.file, line=child.line, key=child.path)


def _kind(v: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def _plain(v: Any) -> Any:
    if isinstance(v, Node):
        return v.plain()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def shown(v: Any, width: int = 60) -> str:
    """A value as the user would write it in YAML (``{choise: [2, 4]}``), at most ``width`` characters: what
    error messages quote, never an internal repr."""
    plain = _plain(v)
    if isinstance(plain, (dict, list)):
        try:
            out = yaml.safe_dump(plain, default_flow_style=True, width=10**6, sort_keys=False).strip()
        except yaml.YAMLError:
            out = repr(plain)
    else:
        out = repr(plain)
    return out if len(out) <= width else out[:width - 3] + "..."


def got(v: Any) -> str:
    """'a mapping {choise: [2, 4]}', 'a string 'x'': the kind and the value, for messages."""
    return f"{_kind(v)} {shown(v)}"


# --- scalar parsers -----------------------------------------------------------------------------------
def integer(lo: int | None = None, hi: int | None = None) -> Callable[[Node], int]:
    def parse(n: Node) -> int:
        v = n.value
        if isinstance(v, bool) or not isinstance(v, int):
            raise n.error(f"expected an integer, got {got(v)}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise n.error(f"must be an integer {rng}, got {v}")
        return v
    return parse


def number(lo: float, hi: float | None = None, lo_open: bool = False) -> Callable[[Node], float]:
    def parse(n: Node) -> float:
        v = n.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise n.error(f"expected a number, got {got(v)}")
        v = float(v)
        if not math.isfinite(v) or (v <= lo if lo_open else v < lo) or (hi is not None and v > hi):
            left = "(" if lo_open else "["
            rng = f"{left}{lo}, {hi}]" if hi is not None else (f"> {lo}" if lo_open else f">= {lo}")
            raise n.error(f"must be a number {'in ' if hi is not None else ''}{rng}, got {v}")
        return v
    return parse


def boolean(n: Node) -> bool:
    if not isinstance(n.value, bool):
        raise n.error(f"expected true or false, got {got(n.value)}")
    return n.value


def one_of(*allowed: str) -> Callable[[Node], str]:
    def parse(n: Node) -> str:
        if n.value not in allowed or not isinstance(n.value, str):
            close = difflib.get_close_matches(str(n.value), allowed, n=1) if isinstance(n.value, str) else []
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise n.error(f"got {shown(n.value)}, expected one of {', '.join(allowed)}{hint}")
        return n.value
    return parse


def text(n: Node) -> str:
    if not isinstance(n.value, str) or not n.value:
        raise n.error(f"expected a non-empty string, got {got(n.value)}")
    return n.value


def file_name(n: Node) -> str:
    """A name that becomes part of file and folder names: ``nas.limits.NAME_RULE``."""
    problem = name_problem(text(n))
    if problem:
        raise n.error(problem)
    return n.value


def channels(n: Node) -> int:
    """Image channels: one of ``nas.arch.CHANNELS`` (grayscale or RGB: what the data pipeline feeds)."""
    v = integer()(n)
    if v not in CHANNELS:
        raise n.error(f"channels must be {' or '.join(map(str, CHANNELS))} (grayscale or RGB), got {v}")
    return v


def size(n: Node) -> int:
    if isinstance(n.value, (dict, list)):
        raise n.error(f"expected a size (e.g. 1.3G, 1300M or 1.3e9), got {got(n.value)}")
    try:
        return parse_size(n.value)
    except ValueError as e:
        raise n.error(str(e)) from None


# --- the schema ---------------------------------------------------------------------------------------
class Parser:
    """Validates one file. ``allow_choices=False`` reads an arch file (every value fixed)."""

    def __init__(self, allow_choices: bool) -> None:
        self.allow_choices = allow_choices

    def choosable(self, parse: Callable[[Node], Any]) -> Callable[[Node], Any]:
        """A fixed value, ``{choice: [v, ...]}`` or ``{range: [lo, hi, step]}`` (integers, inclusive)."""
        def read(n: Node) -> Any:
            if not n.is_map:
                return parse(n)
            if not self.allow_choices:
                if "choice" in n.value or "range" in n.value:
                    raise n.error("choices are not allowed in an arch file: every value must be fixed")
                return parse(n)
            r = Reader(n, "a choice").allow("choice", "range")  # a mapping here is a choice: did-you-mean
            if r.has("choice") == r.has("range"):
                raise n.error("give either 'choice' or 'range', not both" if r.has("choice") else
                              "expected a value, {choice: [v, ...]} or {range: [lo, hi, step]}, got an empty mapping")
            if r.has("choice"):
                items = r.take("choice", lambda m: self._list(m, "choice"))
                if len(items) > MAX_VALUES:
                    raise n.error(f"choice has {len(items):,} values; allowed: at most {MAX_VALUES:,} per choice")
                values = tuple(parse(m) for m in items)
            else:
                bounds = r.take("range", lambda m: self._list(m, "range"))
                if len(bounds) not in (2, 3):
                    raise n.error(f"range must be [lo, hi] or [lo, hi, step], got {len(bounds)} numbers")
                lo, hi, *step = (integer()(m) for m in bounds)
                step = step[0] if step else 1
                if step <= 0 or hi < lo:
                    raise n.error(f"range [{lo}, {hi}, {step}] is empty: need lo <= hi and step >= 1")
                count = (hi - lo) // step + 1  # counted, not built: [4, 4000000000, 4] stays cheap
                if count > MAX_VALUES:
                    raise n.error(f"range [{lo}, {hi}, {step}] has {count:,} values; allowed: at most "
                                  f"{MAX_VALUES:,} per choice (raise the step or narrow the range)")
                values = tuple(parse(Node(v, n.line, n.path, n.file)) for v in range(lo, hi + 1, step))
            r.done()
            if len(set(values)) != len(values):
                raise n.error(f"choice has duplicate values: {list(values)}")
            return values[0] if len(values) == 1 else Choice(values, n.path, n.line)
        return read

    @staticmethod
    def _list(n: Node, what: str) -> list[Node]:
        if not isinstance(n.value, list):
            raise n.error(f"{what} must be a list, got {_kind(n.value)}")
        if not n.value:
            raise n.error(f"{what} is empty: give at least one value")
        return n.value

    # sections ---------------------------------------------------------------------------------------
    def parse(self, root: Node) -> dict[str, Any]:
        r = Reader(root, "a search space" if self.allow_choices else "an arch")
        t: dict[str, Any] = {}
        if self.allow_choices:
            for key in ("format", "provenance"):  # the file kind is explicit: only arch files have these
                if r.has(key):
                    raise r.left[key].error(f"this is an arch file ({key!r} is a key of arch files, which start "
                                            f"with 'format: {ARCH_FORMAT}'), and a search space is expected here: "
                                            f"give a space file (it has no {key!r})")
            r.allow("name", "description", "input", "num_classes", "tokenizer", "stages", "pooling", "head",
                    *reductions(), "qkv_bias", "norm_eps", "budget")
            if not r.has("name"):
                raise root.error(f"missing required key 'name' (a search space has a name; an arch file starts with "
                                 f"'format: {ARCH_FORMAT}')")
            t["name"] = r.take("name", file_name)
            r.take("description", text, None)
            budget = r.take("budget", self.budget, None)
            if budget:
                t["budget"] = budget
        else:
            r.allow("format", "name", "input", "num_classes", "tokenizer", "stages", "pooling", "head",
                    *reductions(), "qkv_bias", "norm_eps", "provenance")
            if not r.has("format"):
                raise root.error(f"missing key 'format': an arch file starts with 'format: {ARCH_FORMAT}' (a file "
                                 f"without it is a search space; the kind of a file is never guessed)", key="format")
            r.take("format", one_of(ARCH_FORMAT))
            t["name"] = r.take("name", file_name, "")
        t["input"] = r.take("input", self.input)
        t["num_classes"] = r.take("num_classes", integer(1))
        t["tokenizer"] = r.take("tokenizer", self.tokenizer)
        t["stages"] = r.take("stages", self.stages)
        t["pooling"] = r.take("pooling", self.pooling, {"type": "none", "kernel": 3})
        t["head"] = r.take("head", one_of("cls", "gap"), "cls")
        t["qkv_bias"] = r.take("qkv_bias", boolean, True)
        t["norm_eps"] = r.take("norm_eps", number(0.0, lo_open=True), 1e-6)
        used = [key for key in reductions() if r.has(key) and r.left[key].value is not None]
        if len(used) > 1:
            used.sort(key=lambda key: r.left[key].line)  # the error points at the later one in the file
            raise r.left[used[1]].error(f"an arch uses at most one token reduction; got {' and '.join(used)}")
        for key, mech in reductions().items():  # every key present (None when unused): the space hash covers it
            t[key] = r.take(key, lambda n, m=mech: self.reduction(n, m), None)
        if not self.allow_choices:
            t["provenance"] = r.take("provenance", self.provenance, {})
        r.done()
        check(t, root)
        return t

    def budget(self, n: Node) -> dict[str, int]:
        r = Reader(n, "budget").allow("macs", "params")
        out = {k: r.take(k, size, None) for k in ("macs", "params")}
        r.done()
        return {k: v for k, v in out.items() if v is not None}

    def input(self, n: Node) -> dict[str, int]:
        r = Reader(n, "input").allow("size", "channels")
        out = {"size": r.take("size", integer(4, 4096)), "channels": r.take("channels", channels, 3)}
        r.done()
        return out

    def tokenizer(self, n: Node) -> dict[str, Any] | Choice:
        """The ``type`` picks a registered tokenizer (``nas.mechanisms``), which reads the rest of the section.

        In a space the tokenizer itself may be a choice, ``{choice: [{type: patch, ...}, {type: progressive,
        ...}]}``: one option per type, each with choices of its own (active only when the option is chosen).
        """
        if n.is_map and "choice" in n.value and self.allow_choices:
            r = Reader(n, "a choice of tokenizers").allow("choice")
            items = r.take("choice", lambda m: self._list(m, "choice"))
            r.done()
            options_ = tuple(self.tokenizer_section(m) for m in items)
            types = [o["type"] for o in options_]
            for i, kind in enumerate(types):
                if kind in types[:i]:
                    raise items[i].error(f"the tokenizer choice has two options of type {kind}; give each type once "
                                         f"and put the values that differ inside it as choices ({{choice: [...]}})")
            return options_[0] if len(options_) == 1 else Choice(options_, n.path, n.line)
        return self.tokenizer_section(n)

    def tokenizer_section(self, n: Node) -> dict[str, Any]:
        r = Reader(n, "tokenizer")
        if n.is_map and "choice" in n.value and not self.allow_choices:
            raise n.error("choices are not allowed in an arch file: every value must be fixed")
        out = tokenizer(r.take("type", one_of(*tokenizers()))).read(r, self.choosable)
        r.done()
        return out

    def stages(self, n: Node) -> list[dict[str, Any]]:
        out = [self.stage(m) for m in self._list(n, "stages")]
        total = sum(len(st["cells"]) for st in out)
        if total > MAX_CELLS:
            raise n.error(f"{total:,} cells over all stages; allowed: at most {MAX_CELLS:,}")
        return out

    def stage(self, n: Node) -> dict[str, Any]:
        r = Reader(n, "a stage").allow("dim", "heads", "mlp_ratio", "cells")
        c = self.choosable
        out = {"dim": r.take("dim", c(integer(1))), "heads": r.take("heads", c(integer(1))),
               "mlp_ratio": r.take("mlp_ratio", c(number(0.0, 64.0, lo_open=True)), 4.0),
               "cells": r.take("cells", self.cells)}
        r.done()
        return out

    def cells(self, n: Node) -> list[Any]:
        """A list of cells (each a kind or a choice of kinds), or ``{repeat: n, choice: [kinds]}``."""
        kind = self.choosable(one_of(*CELL_KINDS))
        if n.is_map:
            r = Reader(n, "repeated cells").allow("repeat", "choice")  # did-you-mean for 'repaet'
            if not r.has("repeat"):
                raise n.error("missing key 'repeat': cells are a list ([basic, {choice: [basic, identity]}]) or "
                              "{repeat: n, choice: [kinds]}")
            count = r.take("repeat", integer(1, 256))
            values = r.take("choice", lambda m: tuple(one_of(*CELL_KINDS)(x) for x in self._list(m, "choice")))
            r.done()
            if len(set(values)) != len(values):
                raise n.error(f"choice has duplicate values: {list(values)}")
            if len(values) > 1 and not self.allow_choices:
                raise n.error("choices are not allowed in an arch file: every value must be fixed")
            return [values[0] if len(values) == 1 else Choice(values, f"{n.path}[{i}]", n.line)
                    for i in range(count)]
        return [kind(m) for m in self._list(n, "cells")]

    def pooling(self, n: Node) -> dict[str, Any]:
        r = Reader(n, "pooling").allow("type", "kernel")
        out = {"type": r.take("type", one_of("none", "1d", "2d")),
               "kernel": r.take("kernel", self.choosable(integer(1, 15)), 3)}
        r.done()
        return out

    def reduction(self, n: Node, mech: Reduction) -> dict[str, Any] | None:
        """A token reduction's section: ``blocks`` (the cells it acts in) and the mechanism's own keys."""
        if n.value is None:
            return None
        r = Reader(n, mech.name)
        own = mech.read(r, self.choosable)  # declares the keys allowed here (``blocks`` among them)
        out = {"blocks": r.take("blocks", self.blocks), **own}
        r.done()
        return out

    def blocks(self, n: Node) -> Any:
        """A list of global cell indices, or ``{subset: [indices]}`` to search which of them use ATS."""
        if n.is_map:
            if not self.allow_choices:
                raise n.error("choices are not allowed in an arch file: every value must be fixed")
            r = Reader(n, "a subset").allow("subset")
            items = tuple(integer(0)(m) for m in r.take("subset", lambda m: self._list(m, "subset")))
            r.done()
            if len(set(items)) != len(items):
                raise n.error(f"subset has duplicate blocks: {list(items)}")
            return Subset(items, n.path, n.line)
        if not isinstance(n.value, list):
            raise n.error(f"expected a list of block indices or {{subset: [...]}}, got {_kind(n.value)}")
        items = [integer(0)(m) for m in n.value]
        if len(set(items)) != len(items):
            raise n.error(f"duplicate blocks: {items}")
        return sorted(items)

    def provenance(self, n: Node) -> dict[str, Any]:
        r = Reader(n, "provenance").allow("space", "space_hash", "budget_macs", "budget_params", "budget_latency_ms",
                                          "latency_ms", "latency_table", "score")
        out = {"space": r.take("space", text, None), "space_hash": r.take("space_hash", text, None),
               "budget_macs": r.take("budget_macs", integer(0), None),
               "budget_params": r.take("budget_params", integer(0), None),
               "budget_latency_ms": r.take("budget_latency_ms", number(0.0), None),
               "latency_ms": r.take("latency_ms", number(0.0), None),
               "latency_table": r.take("latency_table", text, None),
               "score": r.take("score", number(float("-inf")), None)}
        r.done()
        return {k: v for k, v in out.items() if v is not None}


# --- cross-field rules, checked over every reachable choice -------------------------------------------
def _at(root: Node, path: str) -> Node:
    """The Node at a dotted path (for error locations); falls back to the nearest existing parent."""
    node = root
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        nxt = None
        if part.startswith("[") and isinstance(node.value, list):
            i = int(part[1:-1])
            nxt = node.value[i] if i < len(node.value) else None
        elif isinstance(node.value, dict):
            nxt = node.value.get(part)
        if nxt is None:
            break
        node = nxt
    return node


def tokenizer_values(tok: dict[str, Any]) -> list[Any]:
    """Every tokenizer config a template's ``tokenizer`` section can give (the product of its choices)."""
    mech = tokenizer(tok["type"])
    keys = [k for k in tok if k != "type"]
    return [mech.from_dict(dict(zip(keys, combo))) for combo in itertools.product(*(options(tok[k]) for k in keys))]


def tokenizer_options(t: dict[str, Any]) -> list[dict[str, Any]]:
    """The tokenizer sections a template can pick: one, or each option of a choice of tokenizers."""
    return list(options(t["tokenizer"]))


def with_tokenizer(t: dict[str, Any], option: dict[str, Any]) -> dict[str, Any]:
    """Template ``t`` with one tokenizer section; a reduction is dropped when that tokenizer is not reducible
    (in a choice of tokenizers the reduction is inactive with that option)."""
    out = {**t, "tokenizer": option}
    if not tokenizer(option["type"]).reducible:
        out.update({key: None for key in reductions()})
    return out


def check(t: dict[str, Any], root: Node) -> None:
    """Cross-field rules. Each error names the key at fault and what would be allowed. With a choice of tokenizers
    the rules that involve the tokenizer hold for every option (errors point into the option)."""
    if isinstance(t["tokenizer"], Choice):
        for key in reductions():
            if t.get(key) is not None and not any(tokenizer(o["type"]).reducible for o in t["tokenizer"].values):
                raise _at(root, key).error(f"{key} needs a tokenizer it can act in; no option of the tokenizer "
                                           "choice is reducible", key=key)
        _check_widths(t, root)  # no tokenizer involved: once, not per option
        for j, option in enumerate(t["tokenizer"].values):
            _check_one(with_tokenizer(t, option), root, f"tokenizer.choice[{j}]")
    else:
        _check_widths(t, root)
        _check_one(t, root, "tokenizer")


def _check_widths(t: dict[str, Any], root: Node) -> None:
    """Every dim choice of a stage splits into every heads choice and gives a non-empty MLP."""
    for s, st in enumerate(t["stages"]):
        for d in options(st["dim"]):
            for h in options(st["heads"]):
                msg = heads_error(d, h)
                if msg:
                    path = f"stages[{s}].heads"
                    raise _at(root, path).error(f"{msg}; every dim choice of a stage must be divisible by every "
                                                f"heads choice", key=path)
            for r in options(st["mlp_ratio"]):
                if int(d * r) < 1:
                    path = f"stages[{s}].mlp_ratio"
                    raise _at(root, path).error(f"mlp_ratio {r} gives an empty MLP for dim {d}", key=path)


def _check_one(t: dict[str, Any], root: Node, tok_path: str) -> None:
    size, tok, pool, stages = t["input"]["size"], t["tokenizer"], t["pooling"], t["stages"]
    mech = tokenizer(tok["type"])

    def fail(path: str, message: str) -> None:
        if path.startswith("tokenizer.") and tok_path != "tokenizer":
            path = tok_path + path[len("tokenizer"):]
        raise _at(root, path).error(message, key=path)

    mech.check_space(t, fail)
    if pool["type"] == "none" and len(stages) > 1:
        dims = [options(st["dim"]) for st in stages]
        if any(len(d) > 1 for d in dims) or len({d[0] for d in dims}) > 1:
            fail("stages", f"stages without token pooling between them must share one fixed dim, got "
                 f"{[list(d) for d in dims]}; set pooling.type to 1d or 2d, or use one stage")
    if pool["type"] == "1d":
        for k in options(pool["kernel"]):
            if k % 2 == 0:
                fail("pooling.kernel", f"1d pooling needs an odd kernel (the token count must not shift), got {k}")
    if pool["type"] == "2d":
        if not mech.grid:
            grids = " or ".join(name for name, m in tokenizers().items() if m.grid)
            fail("pooling.type", f"2d pooling needs the {grids} tokenizer (a token grid), got {tok['type']}")
        if t["head"] != "gap":
            fail("head", "2d pooling drops the cls token: head must be gap")
        grids = {mech.side(size, cfg) for cfg in tokenizer_values(tok)}
        for s in range(1, len(stages)):
            for grid in sorted(grids):
                if grid % 2:
                    fail("pooling.type", f"2d pooling before stage {s} needs an even token grid, got {grid}x{grid} "
                         f"(the tokenizer's grid halved {s - 1} times)")
            try:
                grids = {pooled_side_2d(g, k) for g in grids for k in options(pool["kernel"])}
            except NasError as e:
                fail("pooling.kernel", e.message)
    for key, red in reductions().items():
        if t.get(key) is not None:
            _check_reduction(t, key, fail)
            red.check_space(t, fail)


def _check_reduction(t: dict[str, Any], key: str, fail: Callable[[str, str], None]) -> None:
    """Where a token reduction may act: cells that exist, are never identity, after the last token pooling."""
    a, stages = t[key], t["stages"]
    if t["pooling"]["type"] == "2d":
        fail(key, f"{key} needs a cls token; 2d pooling has none")
    cells = [(s, c, kind) for s, st in enumerate(stages) for c, kind in enumerate(st["cells"])]
    blocks = a["blocks"].items if isinstance(a["blocks"], Subset) else a["blocks"]
    for b in blocks:
        if b >= len(cells):
            fail(f"{key}.blocks", f"block {b} does not exist: the space has {len(cells)} cells (0..{len(cells) - 1})")
        s, c, kind = cells[b]
        if "identity" in options(kind):
            fail(f"{key}.blocks", f"block {b} (stage {s}, cell {c}) can be an identity cell; {key} blocks must be "
                 f"cells whose choices exclude identity")
        if t["pooling"]["type"] != "none" and s != len(stages) - 1:
            fail(f"{key}.blocks", f"block {b} is in stage {s}, before a token pooling; {key} blocks must be in the "
                 f"last stage (stage {len(stages) - 1}, cells {sum(len(st['cells']) for st in stages[:-1])}.."
                 f"{len(cells) - 1})")

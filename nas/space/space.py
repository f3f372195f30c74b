"""SearchSpace: the set of Archs a space file describes, and the operators searchers need.

A space is a template (see ``schema``) whose searchable leaves are the *dimensions* of the space, in the
order they appear in the file. An arch is a point: one index per dimension. That flat integer vector is
the encoding Optuna and evolution work on. Every combination is valid, because the loader checked every rule
for every reachable choice.

A choice of tokenizers makes some dimensions conditional: the choices inside a tokenizer option count only when
that option is chosen, and a token reduction's only with a reducible tokenizer. Such a dimension is *inactive*
otherwise: it keeps a value in the vector (``encode`` writes 0) that changes nothing. ``size()`` counts archs,
not vectors: the sum over the tokenizer options of the product of the sizes of the dimensions active with it.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from typing import Any, Iterator

from nas.arch import Arch
from nas.mechanisms import reductions, tokenizer
from nas.space.bounds import extremes
from nas.space.schema import Choice, Subset, with_tokenizer


@dataclass(frozen=True)
class Dimension:
    """One searchable decision: its key path, file line and the values it can take (a choice of tokenizers:
    their type names)."""
    path: str
    line: int
    values: tuple


def _walk(t: Any) -> Iterator[Any]:
    """Choice and Subset leaves of a template, in file order; a choice of sections (tokenizers) is followed by
    the leaves inside each of its options, option by option."""
    if isinstance(t, (Choice, Subset)):
        yield t
        if isinstance(t, Choice):
            for v in t.values:
                if isinstance(v, dict):
                    yield from _walk(v)
    elif isinstance(t, dict):
        for v in t.values():
            yield from _walk(v)
    elif isinstance(t, list):
        for v in t:
            yield from _walk(v)


def _jsonable(t: Any) -> Any:
    if isinstance(t, Choice):
        return {"choice": [_jsonable(v) for v in t.values]}
    if isinstance(t, Subset):
        return {"subset": list(t.items)}
    if isinstance(t, dict):
        return {k: _jsonable(v) for k, v in t.items()}
    if isinstance(t, list):
        return [_jsonable(v) for v in t]
    return t


def _width(leaf: Any) -> int:
    """Dimensions a leaf takes: one for a Choice, one per item of a Subset."""
    return 1 if isinstance(leaf, Choice) else len(leaf.items)


Rng = random.Random


class SearchSpace:
    """Built by ``nas.load_space``; immutable."""

    def __init__(self, template: dict[str, Any], file: str | None = None) -> None:
        self._t = template
        self.file = file
        self.name: str = template["name"]
        self.budget: dict[str, int] = dict(template.get("budget", {}))
        self._first = self._first_dimensions()
        self.dims: tuple[Dimension, ...] = tuple(self._dimensions())
        self._conditions = self._condition_table()
        self._branches = self._branch_table()
        self._sizes = [math.prod(len(self.dims[i].values) for i in b) for b in self._branches]  # archs per branch
        self._extremes: dict[str, tuple[int, list[int]]] | None = None
        body = {k: v for k, v in _jsonable(template).items() if k not in ("name", "budget")}
        self.hash = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]

    def _first_dimensions(self) -> dict[int, int]:
        """id(leaf) -> the leaf's first dimension (ids: rebuilt after unpickling, ``__setstate__``)."""
        first, i = {}, 0
        for leaf in _walk(self._t):
            first[id(leaf)] = i
            i += _width(leaf)
        return first

    def __setstate__(self, state: dict) -> None:
        """Unpickled (Ray actors, deepcopy): the template's leaves are new objects, so their ids are new."""
        self.__dict__.update(state)
        self._first = self._first_dimensions()

    def _dimensions(self) -> Iterator[Dimension]:
        for leaf in _walk(self._t):
            if isinstance(leaf, Choice) and all(isinstance(v, dict) for v in leaf.values):
                yield Dimension(leaf.path, leaf.line, tuple(v["type"] for v in leaf.values))
            elif isinstance(leaf, Choice):
                yield Dimension(leaf.path, leaf.line, leaf.values)
            else:
                for item in leaf.items:
                    yield Dimension(f"{leaf.path}[{item}]", leaf.line, (False, True))

    def tokenizer_types(self) -> tuple[str, ...]:
        """The tokenizer types an arch of the space can have: one, or the options of a choice of tokenizers."""
        choice = self._tokenizer_choice()
        return tuple(v["type"] for v in choice.values) if choice else (self._t["tokenizer"]["type"],)

    def _tokenizer_choice(self) -> Choice | None:
        tok = self._t["tokenizer"]
        return tok if isinstance(tok, Choice) else None

    def _condition_table(self) -> list[tuple[int, frozenset[int]] | None]:
        """Per dimension: None (always active) or (the tokenizer choice's dimension, the options it is active with)."""
        out: list[tuple[int, frozenset[int]] | None] = [None] * len(self.dims)
        choice = self._tokenizer_choice()
        if choice is None:
            return out
        k = self._first[id(choice)]
        for j, option in enumerate(choice.values):
            for leaf in _walk(option):
                for i in range(self._first[id(leaf)], self._first[id(leaf)] + _width(leaf)):
                    out[i] = (k, frozenset({j}))
        reducible = frozenset(j for j, o in enumerate(choice.values) if tokenizer(o["type"]).reducible)
        if len(reducible) < len(choice.values):
            for key in reductions():
                for leaf in _walk(self._t.get(key)):
                    for i in range(self._first[id(leaf)], self._first[id(leaf)] + _width(leaf)):
                        out[i] = (k, reducible)
        return out

    @property
    def conditions(self) -> tuple[tuple[int, frozenset[int]] | None, ...]:
        """Per dimension: None (always active), or (the tokenizer choice's dimension, the options it is active with)."""
        return tuple(self._conditions)

    def active(self, vector: list[int] | tuple[int, ...]) -> list[bool]:
        """Which dimensions count for the arch ``vector`` encodes (all, unless the tokenizer is a choice)."""
        return [c is None or int(vector[c[0]]) in c[1] for c in self._conditions]

    def __repr__(self) -> str:
        return f"SearchSpace({self.name!r}, dims={len(self.dims)}, size={self.size()})"

    def _branch_table(self) -> list[list[int]]:
        """Per tokenizer option (one branch without a choice of tokenizers), the dimensions active with it; the
        tokenizer choice's own dimension is left out (it picks the branch)."""
        choice = self._tokenizer_choice()
        if choice is None:
            return [list(range(len(self.dims)))]
        k = self._first[id(choice)]
        return [[i for i, c in enumerate(self._conditions) if i != k and (c is None or j in c[1])]
                for j in range(len(choice.values))]

    def size(self) -> int:
        """Exact number of distinct archs (identity cell positions count: they are distinct supernet paths)."""
        return sum(self._sizes)

    def vector_at(self, index: int) -> list[int]:
        """The ``index``-th arch of the space, 0 <= index < size(), as a vector: the branches (tokenizer options)
        in order, each read in mixed radix with its first active dimension slowest; inactive dimensions 0."""
        if not 0 <= index < self.size():
            raise ValueError(f"index {index} is outside the space's {self.size()} archs")
        choice = self._tokenizer_choice()
        vector = [0] * len(self.dims)
        for j, (branch, n) in enumerate(zip(self._branches, self._sizes)):
            if index < n:
                if choice is not None:
                    vector[self._first[id(choice)]] = j
                for i in reversed(branch):
                    index, vector[i] = divmod(index, len(self.dims[i].values))
                return vector
            index -= n
        raise AssertionError("unreachable: index checked against size()")

    def template(self) -> dict[str, Any]:
        """The space as plain data (choices as ``{choice: [...]}``, subsets as ``{subset: [...]}``)."""
        return _jsonable(self._t)

    def data_dependent(self) -> bool:
        """Whether some arch of the space executes image-dependent MACs: a data-dependent tokenizer (CF-ViT's
        early exit) or a token reduction (ATS) with a reducible tokenizer."""
        toks = [tokenizer(kind) for kind in self.tokenizer_types()]
        return (any(m.data_dependent for m in toks)
                or any(self._t.get(key) is not None and m.data_dependent and any(t.reducible for t in toks)
                       for key, m in reductions().items()))

    # --- encoding ------------------------------------------------------------------------------------
    def decode(self, vector: list[int] | tuple[int, ...]) -> Arch:
        """Flat vector (one index per dimension) -> Arch (inactive dimensions are not read)."""
        if len(vector) != len(self.dims):
            raise ValueError(f"vector has {len(vector)} entries, the space has {len(self.dims)} dimensions")
        for i, (v, d) in enumerate(zip(vector, self.dims)):
            if not 0 <= int(v) < len(d.values):
                raise ValueError(f"vector[{i}] = {v} is out of range for {d.path} (0..{len(d.values) - 1})")
        vec = [int(v) for v in vector]

        def fill(t: Any) -> Any:
            if isinstance(t, Choice):
                value = t.values[vec[self._first[id(t)]]]
                return fill(value) if isinstance(value, dict) else value
            if isinstance(t, Subset):
                first = self._first[id(t)]
                return [item for k, item in enumerate(t.items) if vec[first + k]]
            if isinstance(t, dict):
                return {k: fill(v) for k, v in t.items()}
            if isinstance(t, list):
                return [fill(v) for v in t]
            return t

        d = fill(self._t)
        d.pop("budget", None)
        d = with_tokenizer(d, d["tokenizer"])  # no reduction with a tokenizer that takes none
        d["name"] = ""
        d["provenance"] = {"space": self.name, "space_hash": self.hash}
        return Arch.from_dict(d)

    def encode(self, arch: Arch) -> list[int]:
        """Arch -> flat vector (inactive dimensions 0); raises ValueError if the arch is not in this space."""
        out = [0] * len(self.dims)

        def match(t: Any, a: Any, path: str) -> None:
            if isinstance(t, Choice) and all(isinstance(v, dict) for v in t.values):
                kinds = [v["type"] for v in t.values]
                kind = a.get("type") if isinstance(a, dict) else None
                if kind not in kinds:
                    raise ValueError(f"{path}: type {kind!r} is not one of {kinds}")
                out[self._first[id(t)]] = kinds.index(kind)
                match(t.values[kinds.index(kind)], a, path)
            elif isinstance(t, Choice):
                if a not in t.values:
                    raise ValueError(f"{path}: {a!r} is not one of {list(t.values)}")
                out[self._first[id(t)]] = t.values.index(a)
            elif isinstance(t, Subset):
                extra = set(a) - set(t.items)
                if extra:
                    raise ValueError(f"{path}: blocks {sorted(extra)} are not in {list(t.items)}")
                first = self._first[id(t)]
                for k, item in enumerate(t.items):
                    out[first + k] = int(item in a)
            elif isinstance(t, dict):
                for k, v in t.items():
                    if k in ("name", "budget"):
                        continue
                    if not isinstance(a, dict) or k not in a:
                        raise ValueError(f"{path}.{k}: missing in the arch")
                    match(v, a[k], f"{path}.{k}".lstrip("."))
            elif isinstance(t, list):
                if not isinstance(a, list) or len(a) != len(t):
                    raise ValueError(f"{path}: expected {len(t)} entries, got {a!r}")
                for i, (x, y) in enumerate(zip(t, a)):
                    match(x, y, f"{path}[{i}]")
            elif t != a:
                raise ValueError(f"{path}: {a!r} differs from the space's fixed value {t!r}")

        d = arch.to_dict(with_provenance=False)
        reducible = tokenizer(arch.tokenizer).reducible
        template = {k: v for k, v in self._t.items() if k != "provenance"}
        for key in reductions():
            used = self._t.get(key) is not None and reducible
            if used != (key in d):
                raise ValueError(f"{key}: the arch and the space disagree on whether {key} is used")
            if key in self._t:
                d.setdefault(key, None)
                if not used:
                    template[key] = None
        match(template, d, "")
        return out

    def __contains__(self, arch: Arch) -> bool:
        try:
            self.encode(arch)
            return True
        except ValueError:
            return False

    # --- search operators ----------------------------------------------------------------------------
    @staticmethod
    def _rng(seed: int | Rng | None) -> Rng:
        return seed if isinstance(seed, random.Random) else random.Random(seed)

    def sample(self, seed: int | Rng | None = None) -> Arch:
        """Uniform sample: every dimension independently uniform (SPOS's uniform path sampling)."""
        rng = self._rng(seed)
        return self.decode([rng.randrange(len(d.values)) for d in self.dims])

    def mutate(self, arch: Arch, prob: float, seed: int | Rng | None = None) -> Arch:
        """Each active dimension, with probability ``prob``, moves to a different value chosen uniformly."""
        rng, vec = self._rng(seed), self.encode(arch)
        active = self.active(vec)
        for i, d in enumerate(self.dims):
            if len(d.values) > 1 and active[i] and rng.random() < prob:
                vec[i] = rng.choice([j for j in range(len(d.values)) if j != vec[i]])
        return self.decode(vec)

    def crossover(self, a: Arch, b: Arch, seed: int | Rng | None = None) -> Arch:
        """Uniform crossover: each dimension from ``a`` or ``b`` with equal probability."""
        rng = self._rng(seed)
        return self.decode([x if rng.random() < 0.5 else y for x, y in zip(self.encode(a), self.encode(b))])

    # --- cost bounds ---------------------------------------------------------------------------------
    def _extreme_vectors(self) -> dict[str, tuple[int, list[int]]]:
        if self._extremes is None:
            self._extremes = extremes(self._t, self._first, len(self.dims))
        return self._extremes

    def cost_bounds(self) -> dict[str, int]:
        """Exact ``min_macs``, ``max_macs``, ``min_params``, ``max_params`` over the space, without enumerating
        it (``nas.space.bounds``). MACs are ``Cost.macs``: the worst case of data-dependent archs."""
        return {name: value for name, (value, _) in self._extreme_vectors().items()}

    def extreme_archs(self) -> dict[str, Arch]:
        """An arch of the space attaining each bound of ``cost_bounds()``, under the same keys."""
        return {name: self.decode(vector) for name, (_, vector) in self._extreme_vectors().items()}

    def latency_bounds(self, table: Any) -> dict[str, tuple[float, Arch]]:
        """Exact ``min_latency`` and ``max_latency`` (ms) that ``table`` (``nas.latency.LatencyTable``) predicts
        over the space, each with an arch attaining it, by the same walk as ``cost_bounds`` (the sum of the blocks,
        plus the table's ``fixed_ms``): every block the space can produce is looked up, and ``table.ms`` raises on
        the first one the table lacks."""
        found = extremes(self._t, self._first, len(self.dims), latency=table)
        return {name: (value + table.fixed_ms, self.decode(vector)) for name, (value, vector) in found.items()}

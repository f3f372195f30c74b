"""SearchSpace: the set of Archs a space file describes, and the operators searchers need.

A space is a template (see ``schema``) whose searchable leaves are the *dimensions* of the space, in the
order they appear in the file. An arch is a point: one index per dimension. That flat integer vector is
the encoding Optuna and evolution work on; ``size()`` is the product of the dimensions' sizes (every
combination is valid, because the loader checked every rule for every reachable choice).
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
from nas.space.schema import Choice, Subset


@dataclass(frozen=True)
class Dimension:
    """One searchable decision: its key path, file line and the values it can take."""
    path: str
    line: int
    values: tuple


def _walk(t: Any) -> Iterator[Any]:
    """Choice and Subset leaves of a template, in file order."""
    if isinstance(t, (Choice, Subset)):
        yield t
    elif isinstance(t, dict):
        for v in t.values():
            yield from _walk(v)
    elif isinstance(t, list):
        for v in t:
            yield from _walk(v)


def _jsonable(t: Any) -> Any:
    if isinstance(t, Choice):
        return {"choice": list(t.values)}
    if isinstance(t, Subset):
        return {"subset": list(t.items)}
    if isinstance(t, dict):
        return {k: _jsonable(v) for k, v in t.items()}
    if isinstance(t, list):
        return [_jsonable(v) for v in t]
    return t


Rng = random.Random


class SearchSpace:
    """Built by ``nas.load_space``; immutable."""

    def __init__(self, template: dict[str, Any], file: str | None = None) -> None:
        self._t = template
        self.file = file
        self.name: str = template["name"]
        self.budget: dict[str, int] = dict(template.get("budget", {}))
        self.dims: tuple[Dimension, ...] = tuple(self._dimensions())
        self._extremes: dict[str, tuple[int, list[int]]] | None = None
        body = {k: v for k, v in _jsonable(template).items() if k not in ("name", "budget")}
        self.hash = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]

    def _dimensions(self) -> Iterator[Dimension]:
        for leaf in _walk(self._t):
            if isinstance(leaf, Choice):
                yield Dimension(leaf.path, leaf.line, leaf.values)
            else:
                for item in leaf.items:
                    yield Dimension(f"{leaf.path}[{item}]", leaf.line, (False, True))

    def __repr__(self) -> str:
        return f"SearchSpace({self.name!r}, dims={len(self.dims)}, size={self.size()})"

    def size(self) -> int:
        """Exact number of distinct archs (identity cell positions count: they are distinct supernet paths)."""
        return math.prod(len(d.values) for d in self.dims)

    def data_dependent(self) -> bool:
        """Whether some arch of the space executes image-dependent MACs: a data-dependent tokenizer (CF-ViT's
        early exit) or a token reduction (ATS)."""
        return (tokenizer(self._t["tokenizer"]["type"]).data_dependent
                or any(self._t.get(key) is not None and m.data_dependent for key, m in reductions().items()))

    def template(self) -> dict[str, Any]:
        """The space as plain data (choices as ``{choice: [...]}``, subsets as ``{subset: [...]}``)."""
        return _jsonable(self._t)

    # --- encoding ------------------------------------------------------------------------------------
    def decode(self, vector: list[int] | tuple[int, ...]) -> Arch:
        """Flat vector (one index per dimension) -> Arch."""
        if len(vector) != len(self.dims):
            raise ValueError(f"vector has {len(vector)} entries, the space has {len(self.dims)} dimensions")
        for i, (v, d) in enumerate(zip(vector, self.dims)):
            if not 0 <= int(v) < len(d.values):
                raise ValueError(f"vector[{i}] = {v} is out of range for {d.path} (0..{len(d.values) - 1})")
        it = iter(int(v) for v in vector)

        def fill(t: Any) -> Any:
            if isinstance(t, Choice):
                return t.values[next(it)]
            if isinstance(t, Subset):
                return [item for item in t.items if next(it)]
            if isinstance(t, dict):
                return {k: fill(v) for k, v in t.items()}
            if isinstance(t, list):
                return [fill(v) for v in t]
            return t

        d = fill(self._t)
        d.pop("budget", None)
        d["name"] = ""
        d["provenance"] = {"space": self.name, "space_hash": self.hash}
        return Arch.from_dict(d)

    def encode(self, arch: Arch) -> list[int]:
        """Arch -> flat vector; raises ValueError if the arch is not in this space."""
        out: list[int] = []

        def match(t: Any, a: Any, path: str) -> None:
            if isinstance(t, Choice):
                if a not in t.values:
                    raise ValueError(f"{path}: {a!r} is not one of {list(t.values)}")
                out.append(t.values.index(a))
            elif isinstance(t, Subset):
                extra = set(a) - set(t.items)
                if extra:
                    raise ValueError(f"{path}: blocks {sorted(extra)} are not in {list(t.items)}")
                out.extend(int(item in a) for item in t.items)
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
        for key in reductions():
            if (self._t.get(key) is None) != (key not in d):
                raise ValueError(f"{key}: the arch and the space disagree on whether {key} is used")
            if key in self._t:
                d.setdefault(key, None)
        match({k: v for k, v in self._t.items() if k != "provenance"}, d, "")
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
        """Each dimension, with probability ``prob``, moves to a different value chosen uniformly."""
        rng, vec = self._rng(seed), self.encode(arch)
        for i, d in enumerate(self.dims):
            if len(d.values) > 1 and rng.random() < prob:
                vec[i] = rng.choice([j for j in range(len(d.values)) if j != vec[i]])
        return self.decode(vec)

    def crossover(self, a: Arch, b: Arch, seed: int | Rng | None = None) -> Arch:
        """Uniform crossover: each dimension from ``a`` or ``b`` with equal probability."""
        rng = self._rng(seed)
        return self.decode([x if rng.random() < 0.5 else y for x, y in zip(self.encode(a), self.encode(b))])

    # --- cost bounds ---------------------------------------------------------------------------------
    def _extreme_vectors(self) -> dict[str, tuple[int, list[int]]]:
        if self._extremes is None:
            first, i = {}, 0
            for leaf in _walk(self._t):
                first[id(leaf)] = i
                i += 1 if isinstance(leaf, Choice) else len(leaf.items)
            self._extremes = extremes(self._t, first, len(self.dims))
        return self._extremes

    def cost_bounds(self) -> dict[str, int]:
        """Exact ``min_macs``, ``max_macs``, ``min_params``, ``max_params`` over the space, without enumerating
        it (``nas.space.bounds``). MACs are ``Cost.macs``: the worst case of data-dependent archs."""
        return {name: value for name, (value, _) in self._extreme_vectors().items()}

    def extreme_archs(self) -> dict[str, Arch]:
        """An arch of the space attaining each bound of ``cost_bounds()``, under the same keys."""
        return {name: self.decode(vector) for name, (_, vector) in self._extreme_vectors().items()}

"""The search-space DSL: YAML files -> validated ``SearchSpace`` and ``Arch`` objects (docs/space-dsl.md)."""
from __future__ import annotations

import os
import re
import sys
from typing import Any, Mapping

import yaml

from nas.arch import Arch
from nas.atomic import atomic_write
from nas.space.schema import Parser, parse_size
from nas.space.space import Dimension, SearchSpace
from nas.errors import NasError
from nas.shipped import find
from nas.space.yamlnodes import Node, load_nodes

__all__ = ["SearchSpace", "Dimension", "load_space", "load_arch", "save_arch", "parse_size", "load_any",
           "is_arch_file", "sample_distinct"]


def load_space(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> SearchSpace:
    """Read and validate a search-space file, or a shipped space by name (``psvit_tiny``; an existing path wins,
    ``nas.shipped.find``). Raises ``NasError`` naming file:line and key on bad input.

    ``overrides`` replaces values before validation, by dotted key path (``{"input.size": 32,
    "stages[0].dim": 64}``); a path that is not in the file is an error, as in big_vision.
    """
    file = find("space", path)
    root = apply_overrides(load_nodes(file), overrides or {})
    return SearchSpace(Parser(allow_choices=True).parse(root), file=str(file))


def load_arch(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> Arch:
    """Read and validate an arch file (a space with every value fixed, plus provenance), or a shipped one by name
    (``reference/deit_tiny``)."""
    root = apply_overrides(load_nodes(find("space", path)), overrides or {})
    return Arch.from_dict(Parser(allow_choices=False).parse(root))


def is_arch_file(root: Node) -> bool:
    """The kind of a file is explicit, never guessed: an arch file has a ``format`` key (``nas-arch/1``), a
    search space never does. A space whose every value is fixed is still a space (of one arch)."""
    return "format" in root.value


def load_any(path: str | os.PathLike) -> Arch | SearchSpace:
    """An arch file (``format: nas-arch/1``) as an Arch, any other file as a SearchSpace (``is_arch_file``);
    a shipped name (``psvit_tiny``, ``reference/deit_tiny``) reads the shipped file."""
    file = find("space", path)
    root = load_nodes(file)
    if is_arch_file(root):
        return Arch.from_dict(Parser(allow_choices=False).parse(root))
    return SearchSpace(Parser(allow_choices=True).parse(root), file=str(file))


def sample_distinct(space: SearchSpace, n: int, seed: int | None = None) -> list[Arch]:
    """``n`` distinct archs drawn uniformly without replacement (``n`` at most ``space.size()``).

    Each arch is an index in ``range(space.size())`` read in mixed radix (first dimension slowest), drawn with
    ``random.sample``: no retries, so asking for every arch of a small space costs ``n`` draws, not a coupon
    collector's ``n log n``.
    """
    import random

    size = space.size()
    if not 0 <= n <= size:
        raise ValueError(f"cannot draw {n} distinct archs from a space of {size}")
    rng = random.Random(seed)
    if size <= sys.maxsize:
        indices = rng.sample(range(size), n)
    else:  # too large for random.sample (len(range) must fit a C integer); repeats are then vanishingly rare
        indices, seen = [], set()
        while len(indices) < n:
            i = rng.randrange(size)
            if i not in seen:
                seen.add(i)
                indices.append(i)
    return [space.decode(space.vector_at(index)) for index in indices]


def arch_yaml(arch: Arch) -> str:
    return yaml.safe_dump(arch.to_dict(), sort_keys=False, default_flow_style=None, width=110)


def save_arch(arch: Arch, path: str | os.PathLike) -> None:
    """Write an arch file atomically (temp file + rename); ``load_arch`` reads back an equal Arch."""
    atomic_write(path, arch_yaml(arch))

def _to_node(value: Any, line: int, path: str, file: str) -> Node:
    if isinstance(value, dict):
        return Node({k: _to_node(v, line, f"{path}.{k}", file) for k, v in value.items()}, line, path, file)
    if isinstance(value, (list, tuple)):
        return Node([_to_node(v, line, f"{path}[{i}]", file) for i, v in enumerate(value)], line, path, file)
    return Node(value, line, path, file)


def apply_overrides(root: Node, overrides: Mapping[str, Any]) -> Node:
    """Replace values at dotted key paths (``a.b[2].c``). Every path must exist in the file."""
    for path, value in overrides.items():
        parent, node, last = None, root, None
        for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
            parent, last = node, part
            if part.startswith("[") and isinstance(node.value, list) and int(part[1:-1]) < len(node.value):
                node = node.value[int(part[1:-1])]
            elif not part.startswith("[") and node.is_map and part in node.value:
                node = node.value[part]
            else:
                known = ", ".join(node.value) if node.is_map else f"indices 0..{len(node.value) - 1}" \
                    if isinstance(node.value, list) else "none (a value)"
                raise NasError(f"cannot override {path!r}: {part.strip('[]')!r} is not in the file "
                               f"(keys there: {known})", file=root.file, line=node.line, key=path)
        new = _to_node(value, node.line, node.path, node.file)
        if last.startswith("["):
            parent.value[int(last[1:-1])] = new
        else:
            parent.value[last] = new
    return root


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """CLI ``--set key=value`` items -> overrides; values are read as YAML scalars/flow (``[1, 2]``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise NasError(f"--set expects key.path=value, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise NasError(f"--set {key}: cannot read value {text!r} as YAML") from None
    return out

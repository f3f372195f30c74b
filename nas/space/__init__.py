"""The search-space DSL: YAML files -> validated ``SearchSpace`` and ``Arch`` objects (docs/space-dsl.md)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml

from nas.arch import Arch
from nas.space.schema import Parser, parse_size
from nas.space.space import Dimension, SearchSpace
from nas.space.yamlnodes import load_nodes

__all__ = ["SearchSpace", "Dimension", "load_space", "load_arch", "save_arch", "parse_size", "load_any"]


def load_space(path: str | os.PathLike) -> SearchSpace:
    """Read and validate a search-space file. Raises ``NasError`` naming file:line and key on bad input."""
    return SearchSpace(Parser(allow_choices=True).parse(load_nodes(path)), file=str(path))


def load_arch(path: str | os.PathLike) -> Arch:
    """Read and validate an arch file (a space with every value fixed, plus provenance)."""
    return Arch.from_dict(Parser(allow_choices=False).parse(load_nodes(path)))


def load_any(path: str | os.PathLike) -> Arch | SearchSpace:
    """An arch file has ``format: nas-arch/1`` or no choices; a space has a name and may have choices."""
    root = load_nodes(path)
    if "format" in root.value or "provenance" in root.value:
        return Arch.from_dict(Parser(allow_choices=False).parse(root))
    return SearchSpace(Parser(allow_choices=True).parse(root), file=str(path))


def arch_yaml(arch: Arch) -> str:
    return yaml.safe_dump(arch.to_dict(), sort_keys=False, default_flow_style=None, width=110)


def save_arch(arch: Arch, path: str | os.PathLike) -> None:
    """Write an arch file atomically (temp file + rename); ``load_arch`` reads back an equal Arch."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(arch_yaml(arch))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

"""YAML -> a tree of ``Node``s that remember their line, so every error can name file:line and key path.

Only plain data is accepted: mappings with string keys, sequences, strings, numbers, booleans and null.
Duplicate keys, custom or Python tags (``!!python/object``...), merge keys and multiple documents are
errors. Scalars resolve as with ``yaml.safe_load`` with one fix: YAML 1.1 reads ``1e-6`` as a string; a
string that is a plain float in exponent notation is read as a float.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nas.errors import NasError

_PLAIN_TAGS = {"tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null")}
_EXP_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


@dataclass
class Node:
    """A parsed YAML value: ``value`` is a dict[str, Node], a list[Node] or a plain scalar."""
    value: Any
    line: int           # 1-based
    path: str           # dotted key path, e.g. "stages[1].dim"
    file: str

    def error(self, message: str, key: str | None = None) -> NasError:
        return NasError(message, file=self.file, line=self.line, key=key if key is not None else self.path)

    @property
    def is_map(self) -> bool:
        return isinstance(self.value, dict)

    def plain(self) -> Any:
        """The value as plain Python data (lines dropped)."""
        if isinstance(self.value, dict):
            return {k: v.plain() for k, v in self.value.items()}
        if isinstance(self.value, list):
            return [v.plain() for v in self.value]
        return self.value


def _child(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _convert(node: yaml.Node, path: str, file: str, loader: yaml.SafeLoader) -> Node:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        if node.tag != "tag:yaml.org,2002:map":
            raise NasError(f"tag {node.tag!r} is not allowed: only plain YAML data", file=file, line=line, key=path)
        out: dict[str, Node] = {}
        for k, v in node.value:
            kline = k.start_mark.line + 1
            if not isinstance(k, yaml.ScalarNode) or k.tag != "tag:yaml.org,2002:str":
                what = "merge keys (<<)" if k.tag == "tag:yaml.org,2002:merge" else f"key {k.value!r}"
                raise NasError(f"{what}: only string keys are allowed", file=file, line=kline, key=path)
            if k.value in out:
                raise NasError(f"duplicate key {k.value!r} (first at line {out[k.value].line})",
                               file=file, line=kline, key=_child(path, k.value))
            out[k.value] = _convert(v, _child(path, k.value), file, loader)
            out[k.value].line = kline if isinstance(v, (yaml.MappingNode, yaml.SequenceNode)) else out[k.value].line
        return Node(out, line, path, file)
    if isinstance(node, yaml.SequenceNode):
        if node.tag != "tag:yaml.org,2002:seq":
            raise NasError(f"tag {node.tag!r} is not allowed: only plain YAML data", file=file, line=line, key=path)
        return Node([_convert(v, _child(path, i), file, loader) for i, v in enumerate(node.value)], line, path, file)
    if node.tag not in _PLAIN_TAGS:
        raise NasError(f"tag {node.tag!r} is not allowed: only plain YAML data (strings, numbers, booleans, "
                       f"null, lists, mappings)", file=file, line=line, key=path)
    value = loader.construct_object(node)
    if isinstance(value, str) and node.style is None and _EXP_FLOAT.match(value):
        value = float(value)
    return Node(value, line, path, file)


def load_nodes(path: str | Path) -> Node:
    """Read one YAML file into a Node tree; any problem is a NasError naming file and line."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NasError("no such file", file=file) from None
    except (OSError, UnicodeDecodeError) as e:
        raise NasError(f"cannot read: {e}", file=file) from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = " ".join(str(p) for p in (e.context, e.problem) if p)
        raise NasError(f"YAML syntax error: {problem}", file=file, line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as e:
        raise NasError(f"YAML error: {e}", file=file) from None
    finally:
        loader.dispose()
    if root is None:
        raise NasError("the file is empty: expected a mapping of keys", file=file, line=1)
    tree = _convert(root, "", file, yaml.SafeLoader(""))
    if not tree.is_map:
        raise NasError(f"expected a mapping of keys at the top level, got {'a list' if isinstance(tree.value, list) else 'a scalar'}",
                       file=file, line=tree.line)
    return tree

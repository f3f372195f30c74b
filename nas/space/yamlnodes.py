"""YAML -> a tree of ``Node``s that remember their line, so every error can name file:line and key path.

Only plain data is accepted: mappings with string keys, sequences, strings, numbers, booleans and null.
Duplicate keys, custom or Python tags (``!!python/object``...), merge keys and multiple documents are
errors. Scalars resolve as with ``yaml.safe_load`` with one fix: YAML 1.1 reads ``1e-6`` as a string; a
string that is a plain float in exponent notation is read as a float. A number too large for a float
(``1e400``) is an error, not infinity (``.inf`` is still infinity).

Bounded (``nas.limits``): the file's size, its nesting depth and the number of values once aliases are
expanded, so a small file cannot make the loader run for long or fill memory ("billion laughs"), and a
recursive alias (``&a [*a]``) is an error. PyYAML's composer keeps an alias as a reference to its anchor's
node, so the expansion happens here, in ``_convert``, where it is counted.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nas.errors import NasError
from nas.limits import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES

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


class _Budget:
    """What one file may still expand to: values left, and the YAML nodes being converted (cycle check)."""

    def __init__(self, file: str) -> None:
        self.file, self.left, self.open = file, MAX_NODES, set()
        self.top: tuple[int, str] | None = None  # the top-level key being read: where an expansion is reported

    def spend(self, node: yaml.Node, path: str, depth: int) -> None:
        line = node.start_mark.line + 1
        self.left -= 1
        if self.left < 0:
            line, path = self.top or (line, path)
            raise NasError(f"the file expands to more than {MAX_NODES:,} values (each use of an alias *name "
                           f"copies its anchor); allowed: at most {MAX_NODES:,}", file=self.file, line=line, key=path)
        if depth > MAX_DEPTH:
            raise NasError(f"values nested more than {MAX_DEPTH} levels deep; allowed: at most {MAX_DEPTH} "
                           f"levels of mappings and lists", file=self.file, line=line, key=path)


class _Loader(yaml.SafeLoader):
    """SafeLoader whose composer stops at ``MAX_DEPTH`` (PyYAML composes recursively: 5,000 levels of ``[``
    would be a RecursionError)."""

    def __init__(self, text: str, file: str) -> None:
        super().__init__(text)
        self.file, self.depth = file, 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH + 1:
                mark = self.peek_event().start_mark
                raise NasError(f"values nested more than {MAX_DEPTH} levels deep; allowed: at most {MAX_DEPTH} "
                               f"levels of mappings and lists", file=self.file, line=mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _convert(node: yaml.Node, path: str, file: str, loader: yaml.SafeLoader, budget: _Budget,
             depth: int = 0) -> Node:
    line = node.start_mark.line + 1
    budget.spend(node, path, depth)
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        if id(node) in budget.open:
            raise NasError("recursive alias: an anchor is used inside its own value; allowed: aliases of "
                           "values defined before (or beside) them", file=file, line=line, key=path)
        budget.open.add(id(node))
        try:
            return _convert_collection(node, path, file, loader, budget, depth)
        finally:
            budget.open.discard(id(node))
    if node.tag not in _PLAIN_TAGS:
        raise NasError(f"tag {node.tag!r} is not allowed: only plain YAML data (strings, numbers, booleans, "
                       f"null, lists, mappings)", file=file, line=line, key=path)
    value = loader.construct_object(node)
    if isinstance(value, str) and node.style is None and _EXP_FLOAT.match(value):
        value = float(value)
    if isinstance(value, float) and math.isinf(value) and node.value.lstrip("+-").lower() != ".inf":
        raise NasError(f"number {node.value} is too large (beyond a float's range, about 1.8e308); write .inf "
                       f"for infinity", file=file, line=line, key=path)
    return Node(value, line, path, file)


def _convert_collection(node: yaml.Node, path: str, file: str, loader: yaml.SafeLoader, budget: _Budget,
                        depth: int) -> Node:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        if node.tag != "tag:yaml.org,2002:map":
            raise NasError(f"tag {node.tag!r} is not allowed: only plain YAML data", file=file, line=line, key=path)
        out: dict[str, Node] = {}
        for k, v in node.value:
            kline = k.start_mark.line + 1
            if not isinstance(k, yaml.ScalarNode) or k.tag != "tag:yaml.org,2002:str":
                what = ("merge keys (<<)" if k.tag == "tag:yaml.org,2002:merge" else
                        f"key {k.value!r}" if isinstance(k, yaml.ScalarNode) else "a list or mapping as a key")
                raise NasError(f"{what}: only string keys are allowed", file=file, line=kline, key=path)
            if k.value in out:
                raise NasError(f"duplicate key {k.value!r} (first at line {out[k.value].line})",
                               file=file, line=kline, key=_child(path, k.value))
            if depth == 0:
                budget.top = (kline, k.value)
            out[k.value] = _convert(v, _child(path, k.value), file, loader, budget, depth + 1)
            out[k.value].line = kline if isinstance(v, (yaml.MappingNode, yaml.SequenceNode)) else out[k.value].line
        return Node(out, line, path, file)
    if node.tag != "tag:yaml.org,2002:seq":
        raise NasError(f"tag {node.tag!r} is not allowed: only plain YAML data", file=file, line=line, key=path)
    return Node([_convert(v, _child(path, i), file, loader, budget, depth + 1) for i, v in enumerate(node.value)],
                line, path, file)


def load_nodes(path: str | Path) -> Node:
    """Read one YAML file into a Node tree; any problem is a NasError naming file and line."""
    file = str(path)
    try:
        if "\0" in file:
            raise NasError("the path contains a NUL byte; allowed: a path to a YAML file", file=file.replace("\0", "\\0"))
        p = Path(path)
        if p.is_dir():
            raise NasError("is a folder; expected a YAML file", file=file)
        if p.exists() and p.stat().st_size > MAX_FILE_BYTES:
            raise NasError(f"file of {p.stat().st_size:,} bytes is too large; allowed: at most {MAX_FILE_BYTES:,} "
                           f"bytes", file=file)
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NasError("no such file", file=file) from None
    except UnicodeDecodeError as e:
        raise NasError(f"cannot read: not UTF-8 text (byte {e.start}); expected a YAML text file", file=file) from None
    except OSError as e:
        raise NasError(f"cannot read: {e.strerror or e}", file=file) from None
    loader = _Loader(text, file)
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
    tree = _convert(root, "", file, yaml.SafeLoader(""), _Budget(file))
    if not tree.is_map:
        raise NasError(f"expected a mapping of keys at the top level, got {'a list' if isinstance(tree.value, list) else 'a scalar'}",
                       file=file, line=tree.line)
    return tree

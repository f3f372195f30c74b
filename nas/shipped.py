"""The search spaces and recipes that ship inside the package, found by name (``importlib.resources``).

Kinds and names (a name is the file's path below its folder, without ``.yaml``)::

    space    spaces/*.yaml              psvit_tiny, cf_vit, ...
             spaces/reference/*.yaml    reference/deit_tiny, ... (published archs: arch files)
    recipe   recipes/*.yaml             cpu_supernet, retrain_deit, search_optuna, ... (training and search)
             recipes/cluster/*.yaml     cluster/gpu-cluster (a `ray up` cluster config, not a nas recipe)

``find(kind, text)`` is what every loader calls: an existing path wins, else a shipped name (``.yaml`` may be
added), else one ``NasError`` line that names what was given and lists the shipped names. The files live once
in git, in the repository's top-level ``spaces/`` and ``recipes/``; ``nas/spaces`` and ``nas/recipes`` are
symlinks to them, which a plain checkout, an editable install and a built wheel all see (pyproject.toml).
"""
from __future__ import annotations

import atexit
import contextlib
import difflib
import os
from importlib.resources import as_file, files
from importlib.resources.abc import Traversable
from pathlib import Path

import yaml

from nas.errors import NasError

KINDS = {"space": "spaces", "recipe": "recipes"}
"""Kind -> its folder inside the package."""
_SUFFIX = ".yaml"
_WIDTH = 110  # a description read from a comment line is cut to this many characters
_extracted = contextlib.ExitStack()  # files copied out of a zipped install, removed at exit
atexit.register(_extracted.close)


def _folder(kind: str) -> Traversable:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; allowed: {', '.join(KINDS)}")
    return files("nas") / KINDS[kind]


def _walk(folder: Traversable, prefix: str = "") -> dict[str, Traversable]:
    """Name -> file of every YAML file in ``folder`` and its subfolders (names sorted, top level first)."""
    out: dict[str, Traversable] = {}
    subfolders = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.is_dir():
            subfolders.append(entry)
        elif entry.name.endswith(_SUFFIX):
            out[prefix + entry.name[:-len(_SUFFIX)]] = entry
    for sub in subfolders:
        out.update(_walk(sub, f"{prefix}{sub.name}/"))
    return out


def _shipped(kind: str) -> dict[str, Traversable]:
    folder = _folder(kind)
    return _walk(folder) if folder.is_dir() else {}


def _path(item: Traversable) -> Path:
    """A file-system path of a shipped file, links resolved (in a checkout: the file in the top-level folder);
    copied out for the life of the process if the install is zipped."""
    return item.resolve() if isinstance(item, Path) else _extracted.enter_context(as_file(item))


def names(kind: str) -> list[tuple[str, str]]:
    """``(name, description)`` of every shipped file of ``kind``: the file's ``description:`` key, else its
    first comment line."""
    return [(name, _description(item.read_text(encoding="utf-8"))) for name, item in _shipped(kind).items()]


def _description(text: str) -> str:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("description"), str):
        return data["description"].strip()
    for line in text.splitlines():
        if line.startswith("#") and line.strip("# \t"):
            first = line.lstrip("#").strip()
            return first if len(first) <= _WIDTH else first[:first.rfind(" ", 0, _WIDTH)] + " ..."
    return ""


def path(kind: str, name: str) -> Path | None:
    """The file of the shipped ``name`` (``.yaml`` allowed at its end) of ``kind``, or None."""
    shipped = _shipped(kind)
    key = name[:-len(_SUFFIX)] if name.endswith(_SUFFIX) else name
    return _path(shipped[key]) if key in shipped else None


def resolves(kind: str, text: str | os.PathLike) -> bool:
    """Whether ``find(kind, text)`` finds a file (an existing path or a shipped name)."""
    text = str(text)
    return "\0" not in text and (Path(text).exists() or path(kind, text) is not None)


def find(kind: str, name_or_path: str | os.PathLike) -> Path:
    """The file to read for ``name_or_path``: the path itself when it exists (a path always wins), else the
    shipped file of that name; else a ``NasError`` that lists the shipped names. A path with a NUL byte is
    returned as it is, for the reader to report; a missing path that cannot be a name (absolute, ``./``, or in a
    folder that is not a shipped one) is reported as a missing file."""
    text = os.fspath(name_or_path)
    if "\0" in text or Path(text).exists():
        return Path(text)
    found = path(kind, text)
    if found is not None:
        return found
    known = list(_shipped(kind))
    key = text[:-len(_SUFFIX)] if text.endswith(_SUFFIX) else text
    folders = {name.split("/")[0] for name in known if "/" in name}
    if os.path.isabs(text) or text.startswith(".") or ("/" in key and key.split("/")[0] not in folders):
        raise NasError(f"no such file (a shipped {kind} is also found by its name: `nas {kind} list`)", file=text)
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise NasError(f"no such file, nor a shipped {kind} name; {hint}shipped {kind}s (`nas {kind} list`): "
                   f"{', '.join(known) or 'none'}; or give the path of a YAML file", file=text)

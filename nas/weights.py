"""Weights files: safetensors only, checked against the model before a single value is copied.

``load_weights(path, model)`` reads the file's header (names, dtypes, shapes, metadata) without loading
tensors, and refuses with one line naming the file and what is wrong: no such file, a folder, an empty file, a
text file, a pickle or ``torch.save`` zip (never unpickled: a pickle can run code), a file that is not
safetensors, keys the model lacks or does not have, shapes that differ. For key and shape mismatches it names
the first few and says which arch the file seems to be for, read from its tensor shapes (classes, channels,
patch, tokens, per-stage width and depth) and its metadata (a supernet's ``space_hash``).

Decisions where the papers are silent:

- Loading is strict: every tensor of the model must be in the file and nothing else (a partial load would
  measure a half-random model without saying so). Tensors a model shares under two names are saved once by
  safetensors and count as present when either name is.
- The header is read by hand (8-byte length, JSON), as the safetensors format specifies, so a file that is
  not safetensors is diagnosed by what it is rather than by a parser error.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from torch import nn

from nas.errors import NasError

__all__ = ["load_weights", "read_header", "describe"]

MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header
SHOW = 3  # mismatches named per kind
_CONVERT = ("nas reads only safetensors; convert it with safetensors.torch.save_file(state_dict, "
            "'weights.safetensors')")


def _fail(path: str, message: str) -> NasError:
    return NasError(message, file=path)


def read_header(path: str | os.PathLike) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Tensor shapes by name and the metadata of a safetensors file; a NasError saying what the file is
    otherwise."""
    file = str(path)
    p = Path(path)
    if not p.exists():
        raise _fail(file, "no such file; expected a .safetensors weights file")
    if p.is_dir():
        raise _fail(file, "is a folder; expected a .safetensors weights file (a supernet's weights are "
                          "<run>/supernet.safetensors)")
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(8)
            if size == 0:
                raise _fail(file, "the file is empty; expected safetensors weights")
            if head.startswith(b"PK\x03\x04"):
                raise _fail(file, f"a zip archive, as written by torch.save (it holds a pickle, which is never "
                                  f"loaded: unpickling can run code); {_CONVERT}")
            if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
                raise _fail(file, f"a Python pickle (never loaded: unpickling can run code); {_CONVERT}")
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 2 <= n <= min(size - 8, MAX_HEADER):
                if _looks_like_text(head + f.read(504)):
                    raise _fail(file, f"a text file, not safetensors weights; {_CONVERT}")
                raise _fail(file, f"not a safetensors file (its first 8 bytes are not a valid header length); "
                                  f"{_CONVERT}")
            raw = f.read(n)
    except OSError as e:
        raise _fail(file, f"cannot read: {e.strerror or e}") from None
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _fail(file, "not a safetensors file (its header is not JSON); " + _CONVERT) from None
    if not isinstance(header, dict):
        raise _fail(file, "not a safetensors file (its header is not a JSON object); " + _CONVERT)
    meta = header.pop("__metadata__", None) or {}
    shapes: dict[str, tuple[int, ...]] = {}
    for name, info in header.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise _fail(file, f"corrupt safetensors header: tensor {name[:80]!r} has no valid shape")
        shapes[name] = tuple(shape)
    return shapes, {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def _looks_like_text(data: bytes) -> bool:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def describe(shapes: dict[str, tuple[int, ...]]) -> str:
    """What an arch these shapes belong to looks like: classes, channels, patch, tokens, stages (width x cells).
    Keys of ``nas.models`` (``head.weight``, ``tokenizer.patch_embed.proj.weight``, ``stages.S.cells.C.*``)."""
    parts = []
    if len(shapes.get("head.weight", ())) == 2:
        parts.append(f"{shapes['head.weight'][0]} classes")
    pe = shapes.get("tokenizer.patch_embed.proj.weight", ())
    if len(pe) == 4:
        parts.append(f"{pe[1]} channels, patch {pe[2]}")
    pos = shapes.get("tokenizer.pos_embed", ())
    if len(pos) == 3:
        parts.append(f"{pos[1]} tokens")
    stages: dict[int, dict[int, int]] = {}
    for name, shape in shapes.items():
        m = re.fullmatch(r"stages\.(\d+)\.cells\.(\d+)\.norm1\.weight", name)
        if m and len(shape) == 1:
            stages.setdefault(int(m[1]), {})[int(m[2])] = shape[0]
    if stages:
        parts.append("stages " + ", ".join(f"{len(c)} cells of dim {sorted(set(c.values()))[-1]}"
                                           for _, c in sorted(stages.items())))
    parts.append(f"{len(shapes)} tensors")
    return ", ".join(parts)


def _expected(model: nn.Module) -> tuple[dict[str, tuple[int, ...]], list[list[str]]]:
    """The model's tensor shapes, and its names grouped by shared storage (saved once by safetensors)."""
    state = model.state_dict()
    groups: dict[Any, list[str]] = {}
    for name, t in state.items():
        key = (t.device, t.data_ptr(), tuple(t.shape)) if t.numel() else name
        groups.setdefault(key, []).append(name)
    return {k: tuple(v.shape) for k, v in state.items()}, list(groups.values())


def _names(items: list[str]) -> str:
    more = f", ... ({len(items) - SHOW} more)" if len(items) > SHOW else ""
    return ", ".join(items[:SHOW]) + more


def check_weights(path: str | os.PathLike, model: nn.Module, what: str = "the arch") -> None:
    """Raise a NasError naming the file when its tensors are not exactly the model's (names and shapes)."""
    file = str(path)
    found, meta = read_header(path)
    expected, groups = _expected(model)
    missing = [g[0] for g in groups if not any(n in found for n in g)]
    unexpected = sorted(set(found) - set(expected))
    wrong = [f"{k}: file {list(found[k])}, {what} {list(v)}" for k, v in expected.items()
             if k in found and found[k] != v]
    if not (missing or unexpected or wrong):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) of {what} missing ({_names(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} not in {what} ({_names(unexpected)})")
    if wrong:
        problems.append(f"{len(wrong)} with another shape ({'; '.join(wrong[:SHOW])}"
                        + (f"; ... ({len(wrong) - SHOW} more)" if len(wrong) > SHOW else "") + ")")
    origin = f"the file seems to be for an arch with {describe(found)}"
    if "space_hash" in meta:
        origin = f"the file is the weights of a supernet of space hash {meta['space_hash']}"
        if "supernet" not in what:
            origin += ": an arch's weights are sliced out of a supernet with --supernet RUN_DIR, not loaded with --weights"
    raise _fail(file, f"the weights do not fit {what}: {'; '.join(problems)}; {origin}; {what} has "
                      f"{describe(expected)}")


def load_weights(path: str | os.PathLike, model: nn.Module, what: str = "the arch") -> nn.Module:
    """Copy the weights of a safetensors file into ``model`` after ``check_weights``; returns the model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    check_weights(path, model, what)
    try:
        load_model(model, str(path), strict=True)
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise _fail(str(path), f"corrupt safetensors file: {str(e).splitlines()[0][:200]}") from None
    return model

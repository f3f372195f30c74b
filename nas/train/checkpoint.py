"""Atomic, pickle-free checkpoints: a kill at any moment leaves the previous checkpoint or the new one intact.

Layout of ``<run>/checkpoints/``::

    ckpt-000000120/           one checkpoint, named by the global step it was taken after
        model.safetensors     the weights (safetensors.torch.save_model: tied tensors are handled)
        state.safetensors     tensors of the trainer state: optimiser buffers (``optim/<parameter name>/<buffer>``),
                              torch RNG states
        state.json            everything else (epoch, step, optimiser param groups, scheduler, python/numpy
                              RNG states, the path's state) and the sha256 of both safetensors files

How a checkpoint is committed: every file is written and fsync-ed into ``.tmp-ckpt-<step>-<pid>/``, ``state.json``
last; then the folder is renamed to ``ckpt-<step>`` (one atomic rename) and the parent folder is fsync-ed; only then
are old checkpoints pruned (the newest ``keep`` stay). A reader takes the newest ``ckpt-*`` whose ``state.json``
parses and whose files match their digests; ``.tmp-*`` leftovers of a killed writer are ignored and removed.

Decisions where the papers are silent:

- The rename of a complete folder is the commit point (no separate "latest" pointer that could disagree with it).
- A ``ckpt-*`` folder that fails verification (bit rot, a hand-edited file) while an older one is valid is renamed
  ``broken-ckpt-*`` (kept for inspection, never read again) and the older one is used, with a warning. If
  checkpoints exist but none is valid, loading fails (and renames nothing) rather than silently starting over.
- Nothing is unpickled: JSON for scalars and structure, safetensors for tensors.
- Optimiser state is keyed by parameter name (``model.named_parameters()``), not by torch's position index, and
  each parameter group lists its parameters by name: a model whose parameters are registered in another order,
  or an optimiser that groups them in another order, still gets every buffer back on the parameter it belongs
  to. A parameter group whose members differ from the checkpoint's is an error, not a silent mismatch.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from nas.atomic import TMP, atomic_write, fsync_dir
from nas.errors import NasError

CKPT_FORMAT = "nas-checkpoint/2"  # /2: optimiser state by parameter name
PREFIX, BROKEN = "ckpt-", "broken-"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- RNG and optimiser state as JSON + tensors -------------------------------------------------------
def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The global RNGs of python, numpy and torch (CPU and every CUDA device)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    js = {"python": [version, list(internal), gauss],
          "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return js, tensors


def set_rng_state(js: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, internal, gauss = js["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = js["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k[9:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[:torch.cuda.device_count()])


OPTIM = "optim/"


def _param_names(opt: torch.optim.Optimizer, model: nn.Module) -> list[str]:
    """The name in ``model`` of each parameter, in the order ``opt.state_dict()`` numbers them."""
    names = {id(p): n for n, p in model.named_parameters()}
    missing = [p.shape for g in opt.param_groups for p in g["params"] if id(p) not in names]
    if missing:
        raise ValueError(f"the optimiser holds {len(missing)} parameters that are not the model's")
    return [names[id(p)] for g in opt.param_groups for p in g["params"]]


def optimizer_state(opt: torch.optim.Optimizer, model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``opt.state_dict()`` keyed by ``model``'s parameter names: JSON (param groups listing names, scalars
    per name) and tensors (``optim/<parameter name>/<buffer>``)."""
    sd = opt.state_dict()
    index = _param_names(opt, model)
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{OPTIM}{index[idx]}/{key}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(index[idx], {})[key] = v
    groups = [{**g, "params": [index[i] for i in g["params"]]} for g in sd["param_groups"]]
    return {"param_groups": groups, "scalars": scalars}, tensors


def load_optimizer_state(opt: torch.optim.Optimizer, model: nn.Module, js: dict[str, Any],
                         tensors: dict[str, torch.Tensor]) -> None:
    """Restore what ``optimizer_state`` saved onto the parameters of ``model`` with the same names; each of
    ``opt``'s parameter groups takes the saved group holding the same parameters. Raises ValueError when the
    groups or names differ."""
    index = _param_names(opt, model)
    position = {n: i for i, n in enumerate(index)}
    saved_group = {n: j for j, g in enumerate(js["param_groups"]) for n in g["params"]}
    groups, start = [], 0
    for g in opt.param_groups:
        mine = index[start:start + len(g["params"])]
        found = {saved_group.get(n) for n in mine}
        j = found.pop() if len(found) == 1 else None
        if j is None or sorted(js["param_groups"][j]["params"]) != sorted(mine):
            raise ValueError(f"the optimiser's parameter group of {mine[:2]}... matches no group of the checkpoint")
        groups.append({**js["param_groups"][j], "params": list(range(start, start + len(mine)))})
        start += len(mine)
    unknown = set(saved_group) - set(position)
    if unknown:
        raise ValueError(f"the checkpoint holds optimiser state of parameters the model lacks: {sorted(unknown)[:3]}")
    state: dict[int, dict[str, Any]] = {position[n]: dict(v) for n, v in js["scalars"].items()}
    for key, v in tensors.items():
        if key.startswith(OPTIM):
            name, buf = key[len(OPTIM):].rsplit("/", 1)
            state.setdefault(position[name], {})[buf] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


# --- checkpoints --------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """A verified checkpoint folder: ``state`` is its state.json."""
    path: Path
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["global_step"])

    def tensors(self) -> dict[str, torch.Tensor]:
        return load_file(self.path / "state.safetensors")

    def load_model(self, model: nn.Module) -> None:
        load_model(model, self.path / "model.safetensors", strict=True, device=str(_device_of(model)))


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _step_of(path: Path) -> int:
    try:
        return int(path.name[len(PREFIX):])
    except ValueError:
        return -1


def save_checkpoint(folder: str | os.PathLike, step: int, model: nn.Module, state: dict[str, Any],
                    tensors: dict[str, torch.Tensor], keep: int = 2) -> Path:
    """Commit a checkpoint of ``model`` + ``state`` (JSON-able) + ``tensors`` as ``folder/ckpt-<step>``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{PREFIX}{step:09d}"
    tmp = folder / f"{TMP}{PREFIX}{step:09d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_model(model, str(tmp / "model.safetensors"), force_contiguous=True)
        save_file(tensors, str(tmp / "state.safetensors"))
        files = {}
        for name in ("model.safetensors", "state.safetensors"):
            with open(tmp / name, "rb+") as f:
                os.fsync(f.fileno())
            files[name] = sha256_file(tmp / name)
        blob = json.dumps({**state, "format": CKPT_FORMAT, "global_step": step, "files": files}, separators=(",", ":"))
        atomic_write(tmp / "state.json", blob)
        fsync_dir(tmp)
        if final.exists():  # the same step saved twice: the trainer never does this; not atomic
            shutil.rmtree(final)
        os.rename(tmp, final)  # the commit point
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(folder)
    for old in sorted(folder.glob(f"{PREFIX}*"), key=_step_of)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify(path: Path) -> dict[str, Any]:
    """state.json of a checkpoint folder after checking its format and file digests; raises ValueError."""
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"state.json unreadable: {e}") from None
    if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT:
        raise ValueError(f"state.json is not a {CKPT_FORMAT} checkpoint")
    for name, digest in state.get("files", {}).items():
        if not (path / name).is_file():
            raise ValueError(f"{name} is missing")
        if sha256_file(path / name) != digest:
            raise ValueError(f"{name} does not match its sha256 in state.json")
    if set(state.get("files", {})) != {"model.safetensors", "state.safetensors"}:
        raise ValueError("state.json does not list model.safetensors and state.safetensors")
    return state


def load_latest(folder: str | os.PathLike) -> Checkpoint | None:
    """The newest valid checkpoint in ``folder`` (None when there is none). Leftovers of killed writers are
    removed; invalid checkpoints are renamed ``broken-ckpt-*`` with a warning on stderr."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    for tmp in folder.glob(f"{TMP}*"):
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    found = sorted(folder.glob(f"{PREFIX}*"), key=_step_of, reverse=True)
    problems: list[tuple[Path, str]] = []
    for path in found:
        try:
            ckpt = Checkpoint(path, verify(path))
        except ValueError as e:
            problems.append((path, str(e)))
            continue
        for bad, why in problems:  # newer than the one used: set aside so they are never read again
            aside = bad.with_name(f"{BROKEN}{bad.name}-{os.getpid()}")
            print(f"nas: warning: checkpoint {bad} is invalid ({why}); using {path.name}; renamed it to "
                  f"{aside.name}", file=sys.stderr)
            os.replace(bad, aside)
        return ckpt
    if problems:
        raise NasError(f"no valid checkpoint: {'; '.join(f'{p.name}: {w}' for p, w in problems)}; move the run "
                       f"directory aside to start over", file=str(folder))
    return None

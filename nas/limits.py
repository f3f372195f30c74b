"""Bounds on what a file or a flag can make the toolkit allocate or write, and the rule for safe names.

A small input must never cost a large amount of memory, time or disk: a 1 KB YAML file can describe a
billion values through aliases ("billion laughs"), ``range: [4, 4000000000, 4]`` four billion choices, and
``dim: 10000000`` a model of petabytes. Each bound below is checked before the work it guards, and exceeding
it is a one-line ``NasError`` that says the bound. docs/space-dsl.md lists them for users.

Names that become file or folder names (a space's ``name``, an arch's ``name``) must be safe file names, so
that nothing is ever written outside the folder the user named: ``NAME_RULE``.

Decisions where the papers are silent:

- The bounds are fixed numbers, far above any published ViT search space (the largest shipped space has 20
  decisions of at most 3 values and 18 cells), not derived from the machine, so a file that loads on one
  machine loads on every machine. The one exception is model memory, which is what the machine has.
- A model must hold its float32 weights in the machine's physical memory (``check_model_size``); its MACs per
  image are bounded by ``MAX_MACS`` (10 TMACs, several times the largest published ViTs), which also bounds
  the token count whose attention maps would not fit.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from nas.errors import NasError

MAX_FILE_BYTES = 1 << 20
"""A space, arch or recipe file (1 MiB; the shipped ones are under 4 KB)."""
MAX_DEPTH = 32
"""Nesting of YAML mappings and lists (a space needs 6)."""
MAX_NODES = 20_000
"""YAML values in one file, counted after aliases are expanded (a space needs a few hundred)."""
MAX_VALUES = 1024
"""Values of one ``choice`` or ``range``."""
MAX_CELLS = 1024
"""Cells of a space or an arch, over all stages."""
MAX_SAMPLES = 10_000
"""``nas space sample -n``."""
MAX_EVALS = 100_000
"""Evaluations one search may make (``--max-evals``, a search recipe's ``max_evals``; ``--top`` exports at most as
many): about 10 hours at the CPU job's 3 per second, 100 times the SPOS/AutoFormer budget of 1,000."""
MAX_RANK_ARCHS = 1_000
"""``nas rank-check -n``: archs trained alone (published rank checks use 10 to 100)."""
MAX_RANK_SEEDS = 100
"""``nas rank-check --seeds``: standalone trainings per arch (3 to 5 are usual)."""
MAX_SEED = 2**63 - 1
"""``--seed`` of every command: 0..2**63-1, what ``torch.manual_seed`` accepts."""
PATH_RESERVE = 128
"""Characters of a path kept for the files a command writes inside its ``--out`` (``checkpoints/...``)."""
MAX_SYNTHETIC = 100_000
"""Images of ``--data synthetic:N``."""
MAX_IDX_ITEMS = 1_000_000
"""Images or labels of one IDX file (``--data fashion-mnist``, ``idx:DIR``); EMNIST ByClass, the largest MNIST-style
set, has 697,932 training images."""
MAX_IDX_BYTES = 1 << 30
"""Pixel bytes of one IDX image file, after decompression (1 GiB; Fashion-MNIST's training file holds 47 MB)."""
MAX_MACS = 10**13
"""MACs per image of a model that is built (measured or trained)."""
BYTES_PER_PARAM = 4
"""float32 weights."""

NAME_MAX = 64
NAME_RULE = (f"1 to {NAME_MAX} characters from A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or "
             f"a digit")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a safe file name (``NAME_RULE``), or None when it is."""
    if not isinstance(name, str):
        return f"expected a string, got {type(name).__name__}"
    if len(name) > NAME_MAX:
        return f"a name of {len(name)} characters is too long (it becomes a file name); allowed: {NAME_RULE}"
    if not _NAME.fullmatch(name):
        bad = sorted({c for c in name if not re.fullmatch(r"[A-Za-z0-9._-]", c)})
        what = (f"has character(s) {', '.join(repr(c) for c in bad)}" if bad else
                "does not start with a letter or a digit")
        return f"{name!r} {what} (it becomes a file name); allowed: {NAME_RULE}"
    return None


def safe_name(name: str, what: str = "name") -> str:
    """``name`` if it is a safe file name, else a NasError stating ``NAME_RULE``."""
    problem = name_problem(name)
    if problem:
        raise NasError(f"{what}: {problem}")
    return name


def shown(path: str | os.PathLike, most: int = 120) -> str:
    """``path`` for an error line: a very long one shortened in the middle."""
    text = str(path)
    return text if len(text) <= most else f"{text[:most // 2]}...({len(text):,} characters)...{text[-most // 3:]}"


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long, a loop of links: not there for our purpose
        return False


def _fs_limit(path: Path, name: str, default: int) -> int:
    """``os.pathconf`` of the file system holding ``path`` (an existing folder), ``default`` where it says nothing."""
    try:
        return os.pathconf(path, name)
    except (OSError, ValueError, AttributeError):
        return default


def check_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` as a folder to write into: it may not exist yet, but neither it nor a parent may be a file, its
    names must fit the file system (``PC_NAME_MAX``, ``PC_PATH_MAX`` less ``PATH_RESERVE``), and the folder (or
    its nearest existing parent) must be writable. Checked before any work, one NasError line."""
    path = Path(path)
    base = next((p for p in (path, *path.parents) if _exists(p) and p.is_dir()), Path("."))
    name_max = _fs_limit(base, "PC_NAME_MAX", 255)
    long = next((part for part in path.parts if len(os.fsencode(part)) > name_max), None)
    if long is not None:
        raise NasError(f"{flag} has a name of {len(os.fsencode(long)):,} bytes; the file system allows {name_max} "
                       f"per name: give a shorter {flag}", file=shown(path))
    path_max = _fs_limit(base, "PC_PATH_MAX", 4096) - PATH_RESERVE
    size = len(os.fsencode(os.path.abspath(path)))
    if size > path_max:
        raise NasError(f"{flag} is a path of {size:,} bytes (absolute); the file system allows {path_max + PATH_RESERVE:,}, "
                       f"{PATH_RESERVE} of which are kept for the files written inside: give a shorter {flag} "
                       f"(at most {path_max:,})", file=shown(path))
    for p in (path, *path.parents):
        if _exists(p) and not p.is_dir():
            what = f"{flag} names an existing file" if p == path else f"{flag} is under {p}, which is a file"
            raise NasError(f"{what}; give a folder (it is created if missing)", file=str(path))
    if not os.access(base, os.W_OK | os.X_OK):
        where = "is a folder" if base == path else f"would be created in {base}, a folder"
        raise NasError(f"{flag} {where} this user cannot write into; change its permissions or give another "
                       f"{flag}", file=str(path))
    return path


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine (None where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _bytes(n: float) -> str:
    for unit, scale in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} bytes"


def check_model_size(macs: int, params: int, what: str, file: str | None = None) -> None:
    """Refuse, before anything is allocated, a model whose float32 weights exceed the machine's physical memory
    or whose MACs per image exceed ``MAX_MACS``. ``macs``/``params`` come from ``nas.cost`` (no model built)."""
    memory = physical_memory()
    need = params * BYTES_PER_PARAM
    if memory is not None and need > memory:
        raise NasError(f"{what} has {params:.3g} parameters ({_bytes(need)} of float32 weights), more than the "
                       f"{_bytes(memory)} of memory of this machine; lower dim, depth, mlp_ratio or num_classes",
                       file=file)
    if macs > MAX_MACS:
        raise NasError(f"{what} needs {macs:.3g} MACs per image, above the limit of {MAX_MACS:.0e}; lower "
                       f"input.size, dim or depth, or raise patch_size", file=file)


def check_training_memory(floats_per_image: int, params: int, batch_size: int, what: str,
                          file: str | None = None, key: str = "batch_size") -> None:
    """Refuse, before anything is allocated, a training recipe that certainly cannot fit in this machine's memory.

    ``floats_per_image`` is ``nas.cost.training_floats_floor`` of the largest arch (a lower bound); weights,
    gradients and two optimizer moments add 4 floats per parameter. Only a certain failure is refused: the true
    need is higher than this floor, so a recipe that passes may still need less batch to run comfortably.
    """
    memory = physical_memory()
    need = (batch_size * floats_per_image + 4 * params) * BYTES_PER_PARAM
    if memory is not None and need > memory:
        fits = max((memory // BYTES_PER_PARAM - 4 * params) // max(floats_per_image, 1), 0)
        raise NasError(f"batch_size {batch_size} needs at least {_bytes(need)} of memory to train {what}, more than "
                       f"the {_bytes(memory)} of this machine; use batch_size {fits} or less, a smaller input "
                       f"size (space_overrides), or a recipe made for this machine (--recipe cpu_supernet for "
                       f"the built-in data)", file=file, key=key)

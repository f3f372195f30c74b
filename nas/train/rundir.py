"""The run directory of a supernet training: what it was started with, a lock, and the per-step CSV log.

``<run>/``::

    run.json          format, space (name, file, hash), recipe (name, file, hash), data (spec, split digests),
                      overrides applied to the space; written last when a run starts, then never changed
    space.yaml        the resolved space (recipe overrides and num_classes applied): ``load_space`` reads it back
                      with the same hash
    recipe.yaml       the resolved recipe (every key, defaults filled in)
    data_split.json   ``DataSplits.split_record()``: the split members and digests
    train_log.csv     one row per optimiser step (``LOG_COLUMNS``)
    train.log         human-readable epoch summaries, appended
    checkpoints/      see ``nas.train.checkpoint``
    supernet.safetensors   the final weights, once training completes
    .lock             held (flock) while a process trains here

Re-running on a directory compares the space hash, the recipe hash and the data split digests with run.json and
refuses (``NasError``, exit 2) on any difference. The CSV is cut back to the resumed checkpoint's step before new
rows are appended, so a resumed run has each step exactly once.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import yaml

from nas.errors import NasError
from nas.space import SearchSpace
from nas.train.checkpoint import atomic_write
from nas.train.recipe import Recipe

RUN_FORMAT = "nas-supernet-run/1"
LOG_COLUMNS = ("epoch", "step", "loss", "acc", "lr", "img_per_s", "arch", "macs")
"""``epoch`` 1-based; ``step`` the global optimiser step, 1-based; ``loss``/``acc`` of that step's batch (acc
against the un-mixed labels); ``lr`` used by that step; ``img_per_s`` over that step including data loading;
``arch`` the sampled arch's hash; ``macs`` its MACs (``cost(arch).macs``)."""


class RunLock:
    """An exclusive ``flock`` on ``<run>/.lock``: two trainers on one directory would corrupt it. The kernel drops
    the lock when the holder dies, even by SIGKILL."""

    def __init__(self, run: Path) -> None:
        self.path, self.fd = run / ".lock", -1

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return self
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise NasError("another process is training in this run directory; wait for it or use another --out",
                           file=str(self.path.parent)) from None
        return self

    def __exit__(self, *exc: Any) -> None:
        os.close(self.fd)  # releases the flock


def run_info(space: SearchSpace, space_file: str, recipe: Recipe, data_record: dict,
             overrides: dict[str, Any]) -> dict[str, Any]:
    return {"format": RUN_FORMAT,
            "space": {"name": space.name, "file": space_file, "hash": space.hash},
            "recipe": {"name": recipe.name, "file": recipe.file, "hash": recipe.hash()},
            "data": {"spec": data_record["spec"], "sha256": data_record["sha256"]},
            "space_overrides": overrides}


def prepare(run: Path, info: dict[str, Any], space: SearchSpace, recipe: Recipe, data_record: dict,
            resume: bool) -> bool:
    """Check ``run`` against ``info`` (returns True: an existing run) or initialise it (returns False)."""
    meta = run / "run.json"
    if not meta.exists():
        if resume:
            raise NasError("--resume: nothing to resume here (no run.json); drop --resume to start a new run",
                           file=str(run))
        head = f"# resolved space {space.name}, hash {space.hash}, from {info['space']['file']}"
        if info["space_overrides"]:
            head += f" with overrides {json.dumps(info['space_overrides'])}"
        atomic_write(run / "space.yaml", head + "\n" + yaml.safe_dump(space.template(), sort_keys=False))
        atomic_write(run / "recipe.yaml", f"# resolved recipe, hash {recipe.hash()}\n"
                     + yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        atomic_write(run / "data_split.json", json.dumps(data_record))
        atomic_write(meta, json.dumps(info, indent=1))  # last: marks a complete start
        return False
    try:
        old = json.loads(meta.read_text())
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict) or old.get("format") != RUN_FORMAT:
        raise NasError(f"not a {RUN_FORMAT} run file; use another --out", file=str(meta))
    for what in ("space", "recipe"):
        was, now = old[what]["hash"], info[what]["hash"]
        if was != now:
            raise NasError(f"cannot resume: this run was started with {what} hash {was} (from "
                           f"{old[what]['file'] or 'the default recipe'}), this {what} has hash {now} (from "
                           f"{info[what]['file'] or 'the default recipe'}); use the original {what} or another --out",
                           file=str(meta), key=f"{what}.hash")
    if old["data"]["sha256"] != info["data"]["sha256"]:
        raise NasError(f"cannot resume: this run was started on data {old['data']['spec']!r} split differently (now "
                       f"{info['data']['spec']!r}: other images, seed, holdout or limit); use the original --data "
                       f"or another --out", file=str(meta), key="data.sha256")
    return True


class CsvLog:
    """``train_log.csv``: rows up to ``upto_step`` are kept (a resumed run rewrites the rest), then appended."""

    def __init__(self, path: Path, upto_step: int) -> None:
        kept: list[list[str]] = []
        if path.exists():
            rows = list(csv.reader(io.StringIO(path.read_text(errors="replace"))))
            for row in rows[1:]:
                try:
                    ok = len(row) == len(LOG_COLUMNS) and int(row[1]) <= upto_step
                except ValueError:
                    ok = False  # a torn last line of a killed writer
                if ok:
                    kept.append(row)
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([list(LOG_COLUMNS), *kept])
        atomic_write(path, buf.getvalue())
        self.file = open(path, "a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file, lineterminator="\n")

    def write(self, **row: Any) -> None:
        self.writer.writerow([row[c] for c in LOG_COLUMNS])
        self.file.flush()

    def close(self) -> None:
        self.file.close()

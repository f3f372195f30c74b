"""The run directory of a training job (supernet or retraining): what it was started with, a lock, the CSV log.

``<run>/``::

    run.json          format, the subject (``space`` of a supernet or ``arch`` of a retraining: name, file, hash),
                      recipe (name, file, hash), data (spec, split digests), overrides applied to the subject;
                      written last when a run is committed, then never changed
    space.yaml        the resolved space (recipe overrides and num_classes applied): ``load_space`` reads it back
                      with the same hash (supernet runs; a retraining writes ``arch.yaml``, read by ``load_arch``)
    recipe.yaml       the resolved recipe (every key, defaults filled in)
    data_split.json   ``DataSplits.split_record()``: the split members and digests
    train_log.csv     one row per optimiser step (``LOG_COLUMNS``)
    train.log         human-readable epoch summaries, appended
    checkpoints/      see ``nas.train.checkpoint``
    supernet.safetensors   the final weights, once training completes (a retraining: final.safetensors,
                      metrics.json)
    .lock             held (flock) while a process trains here

``read_run_json(run, fmt)`` reads run.json back with its format checked, for every job that reads one (a finished
supernet run is read back by ``nas.supernet.run.load_supernet_run``).

One module serves every job: ``RunSpec`` (run.json plus the resolved files) is all that differs. Re-running on a
directory compares the format, the subject's hash, the recipe hash and the data split digests with run.json and
refuses (``NasError``, exit 2) on any difference. The CSV is cut back to the resumed checkpoint's step before new
rows are appended, so a resumed run has each step exactly once.

A failed start never poisons a directory: ``prepare(..., commit=False)`` only checks, and the trainer calls
``commit`` just before its first checkpoint, once the run has really started (batch size, device, memory, model
build, the first images and steps all went through). Until then there is nothing to resume, so a re-run with a
corrected recipe, space or data simply starts. Once committed, run.json promises a checkpoint: a run whose
``checkpoints/`` was emptied is refused (``check_resumable``) rather than silently restarted at step 0.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nas.arch import Arch
from nas.atomic import atomic_write
from nas.errors import NasError
from nas.limits import check_folder
from nas.space import SearchSpace
from nas.train.recipe import Recipe

SUPERNET_RUN_FORMAT = "nas-supernet-run/1"
RETRAIN_FORMAT = "nas-retrain-run/1"
LOG_COLUMNS = ("epoch", "step", "loss", "acc", "lr", "img_per_s", "arch", "macs")
"""``epoch`` 1-based; ``step`` the global optimiser step, 1-based; ``loss``/``acc`` of that step's batch (acc
against the un-mixed labels); ``lr`` used by that step; ``img_per_s`` over that step including data loading;
``arch`` the sampled arch's hash; ``macs`` its MACs (``cost(arch).macs``)."""


RUN_KEYS = ("format", "space.name", "space.file", "space.hash", "recipe.name", "recipe.file", "recipe.hash",
            "data.spec", "data.sha256")
"""Keys every run.json has (dotted paths)."""


def make_run_dir(run: Path) -> None:
    """Create ``run`` (and its parents); a path that names a file, or under one, is a NasError."""
    check_folder(run)
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NasError(f"cannot create the run directory: {e.strerror or e}", file=str(run)) from None


class RunLock:
    """An exclusive ``flock`` on ``<run>/.lock``: two trainers on one directory would corrupt it. The kernel drops
    the lock when the holder dies, even by SIGKILL."""

    def __init__(self, run: Path, activity: str = "training", name: str = ".lock") -> None:
        self.path, self.fd, self.activity = run / name, -1, activity

    def __enter__(self) -> "RunLock":
        make_run_dir(self.path.parent)
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise NasError(f"cannot write the lock file: {e.strerror or e}", file=str(self.path)) from None
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return self
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise NasError(f"another process is {self.activity} in this run directory; wait for it or use another "
                           "--out",
                           file=str(self.path.parent)) from None
        return self

    def __exit__(self, *exc: Any) -> None:
        os.close(self.fd)  # releases the flock


@dataclass(frozen=True)
class RunSpec:
    """What a job is started with and refuses to change: ``info`` (run.json) and the resolved ``files`` written
    next to it (name -> text). ``subject`` is the key of ``info`` naming what is trained (``space`` or ``arch``)."""
    info: dict[str, Any]
    files: dict[str, str]
    subject: str

    @property
    def format(self) -> str:
        return self.info["format"]

    def required(self) -> tuple[str, ...]:
        return tuple(k.replace("space.", f"{self.subject}.") for k in RUN_KEYS)


def _spec(fmt: str, subject: str, name: str, file: str, hash: str, resolved: str, recipe: Recipe,
          data_record: dict, overrides: dict[str, Any]) -> RunSpec:
    info = {"format": fmt, subject: {"name": name, "file": file, "hash": hash},
            "recipe": {"name": recipe.name, "file": recipe.file, "hash": recipe.hash()},
            "data": {"spec": data_record["spec"], "sha256": data_record["sha256"]},
            "space_overrides": overrides}  # the recipe's key, for spaces and arch files alike
    head = f"# resolved {subject} {name}, hash {hash}, from {file}"
    if overrides:
        head += f" with overrides {json.dumps(overrides)}"
    files = {f"{subject}.yaml": head + "\n" + resolved,
             "recipe.yaml": f"# resolved recipe, hash {recipe.hash()}\n" + yaml.safe_dump(recipe.to_dict(), sort_keys=False),
             "data_split.json": json.dumps(data_record)}
    return RunSpec(info, files, subject)


def supernet_spec(space: SearchSpace, space_file: str, recipe: Recipe, data_record: dict,
                  overrides: dict[str, Any]) -> RunSpec:
    """The run of a supernet of ``space`` (resolved: recipe overrides and num_classes applied)."""
    return _spec(SUPERNET_RUN_FORMAT, "space", space.name, space_file, space.hash,
                 yaml.safe_dump(space.template(), sort_keys=False), recipe, data_record, overrides)


def retrain_spec(arch: Arch, arch_file: str, recipe: Recipe, data_record: dict, overrides: dict[str, Any],
                 init: str) -> RunSpec:
    """The run of a retraining of ``arch`` (resolved: recipe overrides and num_classes applied); ``init`` is part
    of what it was started with (``scratch`` or ``inherited``)."""
    from nas.space import arch_yaml

    spec = _spec(RETRAIN_FORMAT, "arch", arch.name or arch.hash(), arch_file, arch.hash(), arch_yaml(arch), recipe,
                 data_record, overrides)
    spec.info["init"] = init
    return spec


def commit(run: Path, spec: RunSpec) -> None:
    """Write what the run was started with, run.json last (the commit point); nothing if it is committed."""
    meta = run / "run.json"
    if meta.exists():
        return
    for name, text in spec.files.items():
        atomic_write(run / name, text)
    atomic_write(meta, json.dumps(spec.info, indent=1))  # last: marks a complete start


def _missing_key(old: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    """The first of ``keys`` (dotted paths) that ``old`` lacks, None if it has all (a ``.file`` may be null)."""
    for key in keys:
        node: Any = old
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None and not key.endswith(".file"):  # recipe.file is null for the default recipe
            return key
    return None


def _type_name(value: Any) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _wrong_type(old: dict[str, Any], keys: tuple[str, ...]) -> tuple[str, str] | None:
    """The first of ``keys`` (dotted paths) whose value, or a mapping on its way, is there with the wrong type:
    (key, what it is and should be); ``data.sha256`` is a mapping (split -> digest), every other key a string
    (a ``.file`` may be null). Missing keys are ``_missing_key``'s."""
    for key in keys:
        node: Any = old
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            node = node.get(part)
            if node is not None and not isinstance(node, dict):
                return ".".join(parts[:i + 1]), f"expected a mapping, got {_type_name(node)}"
            if node is None:
                break
        value = node.get(parts[-1]) if isinstance(node, dict) else None
        want, ok = (("a mapping (split -> digest)", isinstance(value, dict)) if key.endswith(".sha256") else
                    ("a string", isinstance(value, str)))
        if value is not None and not ok:
            return key, f"expected {want}, got {_type_name(value)} {json.dumps(value)[:40]}"
    return None


def read_run_json(run: Path, fmt: str, keys: tuple[str, ...] = (),
                  fix: str = "use another --out") -> dict[str, Any]:
    """``<run>/run.json`` (it exists) checked to be a ``fmt`` run file with every key of ``keys`` (dotted paths, a
    ``.file`` may be null); anything else is one ``NasError`` naming the file and ending with ``fix``."""
    meta = run / "run.json"
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError) as e:
        raise NasError(f"not a {fmt} run file (unreadable: {getattr(e, 'strerror', None) or e}); {fix}",
                       file=str(meta)) from None
    if not isinstance(info, dict) or info.get("format") != fmt:
        other = info.get("format") if isinstance(info, dict) else None
        was = f" (it is a {other} run)" if isinstance(other, str) else ""
        raise NasError(f"not a {fmt} run file{was}; {fix}", file=str(meta))
    wrong = _wrong_type(info, keys)
    if wrong:
        raise NasError(f"{wrong[1]}: not a {fmt} run file as nas writes it (edited by hand?); {fix}",
                       file=str(meta), key=wrong[0])
    missing = _missing_key(info, keys)
    if missing:
        raise NasError(f"run.json has no {missing!r}: not a complete {fmt} run file (edited by hand?); {fix}",
                       file=str(meta), key=missing)
    return info


def prepare(run: Path, spec: RunSpec, resume: bool, commit_now: bool = True) -> bool:
    """Check ``run`` against ``spec`` (returns True: an existing run) or, for a new run, ``commit`` it at once
    (``commit_now``) or leave it untouched for a later ``commit`` (returns False)."""
    meta, info, fmt = run / "run.json", spec.info, spec.format
    check_folder(run)
    if not meta.exists():
        if resume:
            raise NasError("--resume: nothing to resume here (no run.json); drop --resume to start a new run",
                           file=str(run))
        if commit_now:
            commit(run, spec)
        return False
    old = read_run_json(run, fmt, spec.required(), "use another --out, or delete the run directory to start over")
    for what in (spec.subject, "recipe"):
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
    if old.get("init") != info.get("init"):
        raise NasError(f"cannot resume: this run was started with --init {old.get('init')}, now --init "
                       f"{info.get('init')}; use the original --init or another --out", file=str(meta), key="init")
    return True


def logged_steps(run: Path) -> int:
    """Rows in ``<run>/train_log.csv`` (0 when there is none)."""
    path = run / "train_log.csv"
    if not path.exists():
        return 0
    return max(len(path.read_text(errors="replace").splitlines()) - 1, 0)


def check_resumable(run: Path, restored_step: int | None) -> None:
    """A committed run (run.json) always has a checkpoint; none left means ``checkpoints/`` was deleted, and
    carrying on would restart at step 0 and drop the logged steps: refuse and say so."""
    if restored_step is None:
        raise NasError(f"this run was committed but checkpoints/ holds no checkpoint (deleted?); resuming would "
                       f"restart at step 0 and drop the {logged_steps(run)} logged step(s): restore checkpoints/, "
                       f"or delete the run directory (or use another --out) to start over", file=str(run / "checkpoints"))


def check_run_json(run: Path, info: dict[str, Any], compare: dict[str, str]) -> bool:
    """Any job's run.json: False when absent (a new run: ``commit_run_json`` once its work can start); else
    refuse (``NasError``) a run whose stored ``info[key]`` differs for a key of ``compare`` (key -> what it is,
    for the message), and return True."""
    meta = run / "run.json"
    if not meta.exists():
        return False
    old = read_run_json(run, info["format"])
    for key, what in compare.items():
        if old.get(key) != info.get(key):
            raise NasError(f"cannot resume: this run was started with another {what} ({json.dumps(old.get(key))}, now "
                           f"{json.dumps(info.get(key))}); use the original {what} or another --out",
                           file=str(meta), key=key)
    return True


def commit_run_json(run: Path, info: dict[str, Any]) -> None:
    """Write run.json (``info``) unless it is there: the commit point of a job, once every input was checked and
    its first unit of work can start, so that a failed start never blocks the corrected re-run."""
    meta = run / "run.json"
    if not meta.exists():
        atomic_write(meta, json.dumps(info, indent=1))


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

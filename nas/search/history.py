"""Search history: one ``Candidate`` per evaluated arch, appended to ``history.csv`` and fsynced row by row.

The history is also the evaluation cache of a resumed search: a searcher replays from its seed and every
candidate already in the file is served from it instead of being evaluated again. A process killed while
writing leaves at most one torn last line (a final line without its newline), which ``History`` drops (and
rewrites the file without) on open. Scores and losses are written with ``repr`` so that they read back bit for
bit, and a replay takes exactly the decisions of the uninterrupted run.

Every other line is checked on reading (``read_history``): the header first and only there, the column count,
integers, finite numbers (top-1 in [0, 1]; a nan loss is an evaluator that defines none), the feasible flag, and,
given the space, a vector it decodes whose arch has the hash the row claims. A bad line is a ``NasError`` naming
the file and line, and the file is left as it is: nothing is dropped from a history without the user saying so.
"""
from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from nas.atomic import atomic_write
from nas.errors import NasError

if TYPE_CHECKING:
    from nas.space import SearchSpace

COLUMNS = ("arch_hash", "generation_or_trial", "score", "loss", "objective", "macs", "params", "macs_mean",
           "target_macs", "target_params", "target_latency_ms", "feasible", "seconds", "vector")
"""``score`` top-1 on the search split in [0, 1]; ``loss`` its cross-entropy; ``objective`` what the searchers
maximise (the evaluator's ``Evaluation.objective`` where it defines one, else the score); ``macs``/``params`` the scored
(proxy) arch's, ``macs`` its worst case; ``macs_mean`` the measured mean MACs per image (data-dependent archs,
else empty); ``target_macs``/``target_params`` the target arch's (what the budget bounds, worst case);
``target_latency_ms`` its latency as the search's latency table predicts it (empty without a table); ``feasible``
whether the budget holds (on the mean for a mean budget); ``vector`` the choice indices, '-'-joined."""

LEGACY_COLUMNS = tuple(c for c in COLUMNS if c != "target_latency_ms")
"""The columns before latency budgets: such a history is read (no latency) and appended to in its own columns."""


@dataclass(frozen=True)
class Candidate:
    arch_hash: str                  # hash of the target arch
    generation_or_trial: int
    score: float
    loss: float
    objective: float
    macs: int
    params: int
    macs_mean: int | None
    target_macs: int
    target_params: int
    feasible: bool
    seconds: float
    vector: tuple[int, ...]
    target_latency_ms: float | None = None

    def row(self, columns: tuple[str, ...] = COLUMNS) -> list[str]:
        v = {"arch_hash": self.arch_hash, "generation_or_trial": str(self.generation_or_trial),
             "score": repr(self.score), "loss": repr(self.loss), "objective": repr(self.objective),
             "macs": str(self.macs), "params": str(self.params),
             "macs_mean": "" if self.macs_mean is None else str(self.macs_mean), "target_macs": str(self.target_macs),
             "target_params": str(self.target_params),
             "target_latency_ms": "" if self.target_latency_ms is None else repr(self.target_latency_ms),
             "feasible": str(int(self.feasible)), "seconds": f"{self.seconds:.4f}",
             "vector": "-".join(map(str, self.vector))}
        return [v[c] for c in columns]

    @classmethod
    def from_row(cls, row: list[str], columns: tuple[str, ...] = COLUMNS) -> "Candidate":
        """Inverse of ``row``; ValueError saying what is wrong with anything else."""
        if len(row) != len(columns):
            raise ValueError(f"{len(row)} column(s), expected {len(columns)}")
        v = dict(zip(columns, row))
        v.setdefault("target_latency_ms", "")
        if not _HASH.fullmatch(v["arch_hash"]):  # the arguments below are checked in column order
            raise ValueError(f"arch_hash {v['arch_hash']!r} is not 16 hex digits")
        return cls(v["arch_hash"], _count(v, "generation_or_trial"),
                   _number(v, "score", "a finite number in [0, 1]", lambda x: 0.0 <= x <= 1.0),
                   _number(v, "loss", "a finite number (or nan: no loss)", lambda x: not math.isinf(x)),
                   _number(v, "objective"), _count(v, "macs"), _count(v, "params"),
                   _count(v, "macs_mean") if v["macs_mean"] else None, _count(v, "target_macs"),
                   _count(v, "target_params"), _flag(v, "feasible"), _number(v, "seconds"), _vector(v["vector"]),
                   _number(v, "target_latency_ms", "a finite number of ms >= 0 (or empty)",
                           lambda x: math.isfinite(x) and x >= 0) if v["target_latency_ms"] else None)

    def check(self, space: "SearchSpace") -> None:
        """ValueError unless ``vector`` is an arch of the (target) ``space`` whose hash is ``arch_hash``."""
        arch = space.decode(self.vector)  # ValueError: wrong length, index out of range
        if arch.hash() != self.arch_hash:
            raise ValueError(f"arch_hash {self.arch_hash} is not the hash of the arch its vector decodes to "
                             f"({arch.hash()})")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["vector"] = list(self.vector)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Candidate":
        d = {f.name: d[f.name] for f in fields(cls) if f.name in d or f.name != "target_latency_ms"}
        d["vector"] = tuple(d["vector"])  # a study written before latency budgets has no target_latency_ms
        return cls(**d)


def best(candidates: list[Candidate]) -> Candidate | None:
    """Highest objective among the feasible; ties: higher score, lower loss, fewer target MACs, then hash."""
    ok = [c for c in candidates if c.feasible]
    return min(ok, key=rank_key, default=None)


def rank_key(c: Candidate) -> tuple:
    return (-c.objective, -c.score, c.loss, c.target_macs, c.arch_hash)


_HASH = re.compile(r"[0-9a-f]{16}")
_COUNT = re.compile(r"[0-9]+")
_VECTOR = re.compile(r"[0-9]+(-[0-9]+)*")
DAMAGED = "the history is damaged: restore it, delete the line(s) to re-evaluate them, or use another --out"


def _count(v: dict[str, str], key: str) -> int:
    if not _COUNT.fullmatch(v[key]):
        raise ValueError(f"{key} {v[key]!r} is not a non-negative integer")
    return int(v[key])


def _flag(v: dict[str, str], key: str) -> bool:
    if v[key] not in ("0", "1"):
        raise ValueError(f"{key} {v[key]!r} is not 0 or 1")
    return v[key] == "1"


def _vector(text: str) -> tuple[int, ...]:
    if text and not _VECTOR.fullmatch(text):
        raise ValueError(f"vector {text!r} is not choice indices joined by '-'")
    return tuple(int(i) for i in text.split("-")) if text else ()


def _number(v: dict[str, str], key: str, what: str = "a finite number",
            ok: Callable[[float], bool] = math.isfinite) -> float:
    try:
        x = float(v[key])
    except ValueError:
        x = math.inf
    if v[key].strip() != v[key] or not ok(x):
        raise ValueError(f"{key} {v[key]!r} is not {what}")
    return x


def read_history(path: Path, space: "SearchSpace | None" = None) -> list[Candidate]:
    """The rows of a history file (none if it does not exist or is empty), a torn last line left out; every
    other line checked (against ``space`` too where given: vector and hash). NasError at the first bad line."""
    return _read(path, space)[0]


def _read(path: Path, space: "SearchSpace | None") -> tuple[list[Candidate], bytes, tuple[str, ...]]:
    """The rows, the file's bytes up to its last newline (without a torn last line; b"" for no file) and its
    columns (``COLUMNS``, or ``LEGACY_COLUMNS`` for a history written before latency budgets)."""
    data = path.read_bytes() if path.exists() else b""
    keep = data[:data.rfind(b"\n") + 1]
    header = ",".join(COLUMNS)
    columns = COLUMNS
    rows: list[Candidate] = []
    if data and not keep:  # the header is written whole (atomic_write): a torn line always follows it
        raise NasError(f"the first line is not the history header ({header}); {DAMAGED}", file=str(path), line=1)
    for n, line in enumerate(keep.decode("utf-8", errors="replace").split("\n")[:-1], 1):
        try:
            if n == 1 and line == ",".join(LEGACY_COLUMNS):
                columns = LEGACY_COLUMNS
                continue
            if n == 1 and line != header:
                raise ValueError(f"the first line is not the history header ({header})")
            if n == 1:
                continue
            if line == ",".join(columns):
                raise ValueError("a second header line")
            c = Candidate.from_row(line.split(","), columns)
            if space is not None:
                c.check(space)
        except ValueError as e:
            raise NasError(f"{e}; {DAMAGED}", file=str(path), line=n) from None
        rows.append(c)
    return rows, keep, columns


class History:
    """``history.csv`` of a run: ``cached[hash]`` for every row so far, ``append`` one durable row at a time."""

    def __init__(self, path: Path, space: "SearchSpace | None" = None) -> None:
        """Reads ``path`` (``read_history``, checked against the target ``space`` where given): NasError, the
        file untouched, at a bad line; a torn last line is dropped from the file, a missing header written."""
        self.path = path
        rows, keep, self.columns = _read(path, space)
        self.rows: list[Candidate] = rows
        seen: dict[str, Candidate] = {}
        for c in self.rows:
            seen.setdefault(c.arch_hash, c)
        self.cached = seen
        keep = keep or (",".join(COLUMNS) + "\n").encode()
        if not path.exists() or path.stat().st_size != len(keep):  # new, or a torn last line to drop
            atomic_write(path, keep)
        self._file = open(path, "a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file, lineterminator="\n")

    def append(self, c: Candidate) -> None:
        """One row, on disk (fsynced) before this returns. A row that a resume would refuse (a score outside
        [0, 1] or not finite, from a broken evaluator) is a ``NasError`` instead, and nothing is written."""
        if c.target_latency_ms is not None and self.columns != COLUMNS:
            raise NasError("this history was written before latency budgets (no target_latency_ms column): search "
                           "with a latency table into a new --out", file=str(self.path))
        try:
            Candidate.from_row(c.row(self.columns), self.columns)
        except ValueError as e:
            raise NasError(f"arch {c.arch_hash}: the evaluation cannot be recorded ({e}); the evaluator returned "
                           f"{c.score!r} top-1, {c.loss!r} loss", file=str(self.path)) from None
        self._writer.writerow(c.row(self.columns))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.rows.append(c)
        self.cached.setdefault(c.arch_hash, c)

    def __iter__(self) -> Iterator[Candidate]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def close(self) -> None:
        self._file.close()

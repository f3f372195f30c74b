"""Search history: one ``Candidate`` per evaluated arch, appended to ``history.csv`` and fsynced row by row.

The history is also the evaluation cache of a resumed search: a searcher replays from its seed and every
candidate already in the file is served from it instead of being evaluated again. A process killed while
writing leaves at most one torn last line, which ``History`` drops (and rewrites the file without) on open.
Scores and losses are written with ``repr`` so that they read back bit for bit, and a replay takes exactly
the decisions of the uninterrupted run.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator

from nas.atomic import atomic_write

COLUMNS = ("arch_hash", "generation_or_trial", "score", "loss", "objective", "macs", "params", "macs_mean",
           "target_macs", "target_params", "feasible", "seconds", "vector")
"""``score`` top-1 on the search split in [0, 1]; ``loss`` its cross-entropy; ``objective`` what the searchers
maximise (the evaluator's ``Evaluation.objective`` where it defines one, else the score); ``macs``/``params`` the scored
(proxy) arch's, ``macs`` its worst case; ``macs_mean`` the measured mean MACs per image (data-dependent archs,
else empty); ``target_macs``/``target_params`` the target arch's (what the budget bounds, worst case);
``feasible`` whether the budget holds (on the mean for a mean budget); ``vector`` the choice indices, '-'-joined."""


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

    def row(self) -> list[str]:
        return [self.arch_hash, str(self.generation_or_trial), repr(self.score), repr(self.loss), repr(self.objective),
                str(self.macs),
                str(self.params), "" if self.macs_mean is None else str(self.macs_mean), str(self.target_macs),
                str(self.target_params), str(int(self.feasible)), f"{self.seconds:.4f}",
                "-".join(map(str, self.vector))]

    @classmethod
    def from_row(cls, row: list[str]) -> "Candidate":
        """Inverse of ``row``; ValueError on anything malformed (a torn line)."""
        if len(row) != len(COLUMNS) or len(row[0]) != 16:
            raise ValueError(f"expected {len(COLUMNS)} columns")
        return cls(row[0], int(row[1]), float(row[2]), float(row[3]), float(row[4]), int(row[5]), int(row[6]),
                   int(row[7]) if row[7] else None, int(row[8]), int(row[9]), bool(int(row[10])), float(row[11]),
                   tuple(int(v) for v in row[12].split("-")) if row[12] else ())

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["vector"] = list(self.vector)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Candidate":
        d = {f.name: d[f.name] for f in fields(cls)}
        d["vector"] = tuple(d["vector"])
        return cls(**d)


def best(candidates: list[Candidate]) -> Candidate | None:
    """Highest objective among the feasible; ties: higher score, lower loss, fewer target MACs, then hash."""
    ok = [c for c in candidates if c.feasible]
    return min(ok, key=rank_key, default=None)


def rank_key(c: Candidate) -> tuple:
    return (-c.objective, -c.score, c.loss, c.target_macs, c.arch_hash)


def read_history(path: Path) -> list[Candidate]:
    """The complete rows of a history file (none if it does not exist); stops at a torn or malformed line."""
    rows: list[Candidate] = []
    if not path.exists():
        return rows
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    for line in lines[1:]:
        if not line.endswith("\n"):
            break  # torn last line of a killed writer
        try:
            rows.append(Candidate.from_row(next(csv.reader([line]))))
        except (ValueError, StopIteration):
            break
    return rows


class History:
    """``history.csv`` of a run: ``cached[hash]`` for every row so far, ``append`` one durable row at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[Candidate] = read_history(path)
        seen: dict[str, Candidate] = {}
        for c in self.rows:
            seen.setdefault(c.arch_hash, c)
        self.cached = seen
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([list(COLUMNS), *(c.row() for c in self.rows)])
        atomic_write(path, buf.getvalue())
        self._file = open(path, "a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file, lineterminator="\n")

    def append(self, c: Candidate) -> None:
        """One row, on disk (fsynced) before this returns."""
        self._writer.writerow(c.row())
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

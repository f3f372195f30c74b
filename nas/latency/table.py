"""A latency table: the measured time of every block a space can produce, on one device, and the predictor.

The predicted latency of an arch is ``fixed_ms`` + the sum of its blocks' times (``nas.latency.blocks``), where
``fixed_ms`` is what a forward costs outside every block (the model's own Python, allocations): the median, over a
few whole archs timed when the table is made, of measured minus summed. The table is a JSON file::

    {"format": "nas-latency-table/1", "space": ..., "space_hash": ..., "environment": {device, machine,
     threads, batch, torch, timm, nas, python}, "protocol": {...}, "fixed_ms": ..., "calibration": [...],
     "check": [...], "blocks": [{"block": {"kind": "layer", ...}, "ms": median, "q1": ..., "q3": ...}, ...]}

It predicts latency for the ``environment`` it was made in; ``differences`` names what differs from another one
(the search warns, in one line, and goes on). Nothing here imports torch.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from nas.errors import NasError
from nas.latency.blocks import KINDS, Block, arch_blocks

if TYPE_CHECKING:
    from nas.arch import Arch

TABLE_FORMAT = "nas-latency-table/1"
DEVICES = ("cpu", "cuda")
ENVIRONMENT_KEYS = ("device", "machine", "threads", "batch", "torch", "timm", "nas", "python")
"""What a table's times depend on beyond the blocks: a table made with other values is accepted with a warning."""


@dataclass(frozen=True)
class Timing:
    """Milliseconds of repeated timed runs: the median and the quartiles (q1, q3), over ``runs`` runs."""
    ms: float
    q1: float
    q3: float
    runs: int

    def to_dict(self) -> dict[str, Any]:
        return {"ms": self.ms, "q1": self.q1, "q3": self.q3, "runs": self.runs}


@dataclass
class LatencyTable:
    """Block -> time on one environment, and the fixed time of a forward outside the blocks (``fixed_ms``)."""
    environment: dict[str, Any]
    entries: dict[Block, Timing]
    fixed_ms: float = 0.0
    space: str = ""
    space_hash: str = ""
    protocol: dict[str, Any] = field(default_factory=dict)
    calibration: list[dict[str, Any]] = field(default_factory=list)
    check: list[dict[str, Any]] = field(default_factory=list)
    file: str | None = None

    @property
    def batch(self) -> int:
        return int(self.environment["batch"])

    @property
    def device(self) -> str:
        return str(self.environment["device"])

    # --- prediction ---------------------------------------------------------------------------------------
    def ms(self, blocks: Iterable[Block]) -> float:
        """The summed time of ``blocks``; a ``NasError`` naming the first one the table does not hold."""
        total = 0.0
        for b in blocks:
            t = self.entries.get(b)
            if t is None:
                raise NasError(f"the latency table has no time for block {b}: it was made for another space "
                               f"({self.space or 'unnamed'}); make one for this space with `nas latency-table SPACE "
                               f"--device {self.device} --batch {self.batch}`", file=self.file)
            total += t.ms
        return total

    def predict(self, arch: "Arch") -> float:
        """Predicted milliseconds of one forward of ``arch`` at the table's batch size (its worst case when the
        arch is data-dependent: every token a reduction can keep, both passes of CF-ViT)."""
        return self.fixed_ms + self.ms(arch_blocks(arch))

    def describe(self) -> str:
        """'batch 1 on cpu (AMD EPYC x2, 2 threads, torch 2.5.1)'."""
        e = self.environment
        return f"batch {e['batch']} on {e['device']} ({e['machine']}, {e['threads']} threads, torch {e['torch']})"

    def differences(self, here: dict[str, Any]) -> list[str]:
        """'threads 2 (here 1)' for every environment value that differs from ``here``."""
        return [f"{k} {self.environment.get(k)} (here {here.get(k)})" for k in ENVIRONMENT_KEYS
                if k in here and self.environment.get(k) != here.get(k)]

    def hash(self) -> str:
        """Identity of the predictions: sha256 of the canonical JSON of the environment, fixed time and blocks."""
        blob = json.dumps({"environment": self.environment, "fixed_ms": self.fixed_ms,
                           "blocks": sorted((b.key(), t.ms) for b, t in self.entries.items())},
                          sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    # --- file -----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": TABLE_FORMAT, "space": self.space, "space_hash": self.space_hash,
                "environment": self.environment, "protocol": self.protocol, "fixed_ms": self.fixed_ms,
                "calibration": self.calibration, "check": self.check,
                "blocks": [{"block": b.to_dict(), **t.to_dict()} for b, t in self.entries.items()]}

    def save(self, path: str | os.PathLike) -> Path:
        from nas.atomic import atomic_write
        path = Path(path)
        atomic_write(path, (json.dumps(self.to_dict(), indent=1) + "\n").encode())
        self.file = str(path)
        return path


def check_summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Median, 90th percentile and mean (bias) of the relative error (predicted - measured) / measured over the
    ``check`` rows of a table, and Spearman's rho of predicted against measured (needs 3 rows)."""
    import statistics
    err = [(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] for r in rows]
    out = {"archs": len(err), "median_abs_error": statistics.median(abs(e) for e in err),
           "p90_abs_error": statistics.quantiles([abs(e) for e in err], n=10, method="inclusive")[-1]
           if len(err) > 1 else abs(err[0]), "mean_error": statistics.fmean(err)}
    if len(rows) >= 3:
        from scipy.stats import spearmanr
        out["spearman"] = float(spearmanr([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows])[0])
    return out


def load_table(path: str | os.PathLike) -> LatencyTable:
    """Read and check a table file; a ``NasError`` naming the file, line and key of the first problem."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NasError("no such latency table; make one with `nas latency-table SPACE --device cpu --batch 1 --out "
                       "FILE`", file=where) from None
    except (OSError, UnicodeDecodeError) as e:
        raise NasError(f"cannot read the latency table: {e}", file=where) from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise NasError(f"not JSON: {e.msg}; a latency table is the JSON file `nas latency-table` writes",
                       file=where, line=e.lineno) from None

    def bad(key: str, what: str) -> NasError:
        return NasError(f"expected {what}; remake the table with `nas latency-table`", file=where, key=key)

    if not isinstance(d, dict) or d.get("format") != TABLE_FORMAT:
        raise bad("format", f"{TABLE_FORMAT!r} (a file written by `nas latency-table`)")
    env = d.get("environment")
    if not isinstance(env, dict) or any(k not in env for k in ENVIRONMENT_KEYS):
        raise bad("environment", f"a mapping with {', '.join(ENVIRONMENT_KEYS)}")
    if env["device"] not in DEVICES:
        raise bad("environment.device", f"one of {', '.join(DEVICES)}, got {env['device']!r}")
    if not _count(env["batch"]) or not _count(env["threads"]):
        raise bad("environment.batch", "integers >= 1 for batch and threads")
    if not _ms(d.get("fixed_ms"), signed=True):
        raise bad("fixed_ms", "a finite number of milliseconds")
    blocks = d.get("blocks")
    if not isinstance(blocks, list):
        raise bad("blocks", "a list of {block, ms, q1, q3, runs}")
    entries: dict[Block, Timing] = {}
    for i, row in enumerate(blocks):
        key = f"blocks[{i}]"
        if not isinstance(row, dict) or not isinstance(row.get("block"), dict) \
                or row["block"].get("kind") not in KINDS:
            raise bad(f"{key}.block", f"a block of kind {', '.join(KINDS)}")
        if not all(_ms(row.get(k)) for k in ("ms", "q1", "q3")) or not _count(row.get("runs")):
            raise bad(key, "ms, q1 and q3 as finite numbers >= 0 and runs an integer >= 1")
        b = Block.from_dict(row["block"])
        if b in entries:
            raise bad(f"{key}.block", f"each block once; {b} is also in an earlier row")
        entries[b] = Timing(float(row["ms"]), float(row["q1"]), float(row["q3"]), int(row["runs"]))
    return LatencyTable(env, entries, float(d["fixed_ms"]), str(d.get("space", "")), str(d.get("space_hash", "")),
                        d.get("protocol") or {}, d.get("calibration") or [], d.get("check") or [], where)


def _ms(x: Any, signed: bool = False) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            and (signed or x >= 0))


def _count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1


def machine_name(device: str) -> str:
    """The processor (with its core count) or the GPU a table is made on."""
    if device == "cuda":
        import torch
        return torch.cuda.get_device_name()
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name} x{os.cpu_count()}"


def check_environment(table: LatencyTable) -> str | None:
    """None when this process runs where ``table`` was made (machine, torch threads, library versions), else
    the one-line warning naming what differs."""
    import torch
    if table.device == "cuda" and not torch.cuda.is_available():
        here = {**environment("cpu", torch.get_num_threads(), table.batch), "device": "cuda",
                "machine": "no CUDA device"}
    else:
        here = environment(table.device, torch.get_num_threads(), table.batch)
    diff = table.differences(here)
    if not diff:
        return None
    return (f"the latency table {table.file} was made elsewhere: {', '.join(diff)}; its predictions hold where it "
            "was made (remake it here with `nas latency-table` to bound latency on this machine)")


def environment(device: str, threads: int, batch: int) -> dict[str, Any]:
    """This process's environment as a table records it (imports torch and timm for their versions)."""
    from importlib.metadata import PackageNotFoundError, version

    import timm
    import torch
    try:
        ours = version("nas")
    except PackageNotFoundError:  # run from a checkout that is not installed
        ours = "unknown"
    return {"device": device, "machine": machine_name(device), "threads": threads, "batch": batch,
            "torch": torch.__version__, "timm": timm.__version__, "nas": ours,
            "python": ".".join(map(str, sys.version_info[:3]))}

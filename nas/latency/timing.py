"""Timing on the device: whole models (``measure_latency``, ``nas latency``) and the blocks of a table
(``make_table``, ``nas latency-table``).

Protocol (both): eval mode, ``torch.inference_mode``, untimed warm-up calls, then timed calls, each waited for
(``torch.cuda.synchronize`` on a GPU), on the thread count asked for; the figure is the median, the spread the
quartiles. A table spreads its timed calls over ``rounds`` passes over every block and calibration arch, and keeps
for each the median of its fastest round: other jobs on a shared machine slow whole rounds down at a time (on this
project's 2-core VM by up to a quarter, for tens of seconds), and never speed one up, so the fastest round is the
machine undisturbed, the same state for every block, which is what a budget should bound.

A block is timed in a rotation of independent copies whose weights together are as large as a typical arch
of the space (``flush_mb``): in a whole forward each block's weights were last touched a whole forward ago, so
timing one copy again and again (its weights always in cache) would make every block look faster than it runs
inside a model. What the blocks do not cover (the model's own Python between them) is ``fixed_ms``: the median,
over ``calibrate`` archs of the space timed whole, of measured minus summed (each model built afresh for its
turn, as ``nas latency`` times one model in a process: one that holds many models that have run is measurably
slower on each).

Data-dependent archs (ATS, CF-ViT) do work that depends on the image: ``measure_latency`` times them on real
images of ``data``, batch by batch, and reports the mean over batches. A table times them at their worst case
(every token kept, both passes), which is what their random-weight models do on the random inputs it uses.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from nas.arch import Arch, Pooling, Stage
from nas.errors import NasError
from nas.latency.blocks import Block, arch_blocks
from nas.latency.table import DEVICES, LatencyTable, Timing, environment
from nas.measure import seeded_model

WARMUP, REPS = 10, 50                 # a whole model
BLOCK_WARMUP, BLOCK_REPS = 3, 40      # one block (or a calibration arch) in a table, in each round / in all
ROUNDS = 4                            # passes over a table's blocks
CALIBRATE = 20                        # whole archs a table measures its fixed time on
DATA_REPS = 3                         # timed runs per batch of images (data-dependent archs)


@dataclass(frozen=True)
class MeasuredLatency:
    """Measured milliseconds per forward of ``batch`` images: median and quartiles over timed runs (a
    data-dependent arch: the mean over ``images`` images of ``data`` of each batch's median, and the quartiles
    and the largest of the batch medians)."""
    ms: float
    q1: float
    q3: float
    runs: int
    environment: dict[str, Any]
    data: str | None = None
    images: int = 0
    worst_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"ms": self.ms, "q1": self.q1, "q3": self.q3, "runs": self.runs, **self.environment}
        if self.data is not None:
            d.update(data=self.data, images=self.images, worst_ms=self.worst_ms)
        return d


def check_device(device: str) -> torch.device:
    if device not in DEVICES:
        raise NasError(f"--device {device!r}: expected one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise NasError("--device cuda: torch sees no CUDA device on this machine; use --device cpu")
    return torch.device(device)


@contextmanager
def threads_set(threads: int | None) -> Iterator[int]:
    """torch's intra-op threads set to ``threads`` (None: as they are) for the block, restored after."""
    before = torch.get_num_threads()
    if threads is not None:
        _at_least(1, ("--threads", threads))
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _at_least(lo: int, *named: tuple[str, Any]) -> None:
    """A ``NasError`` naming the first ``(name, value)`` that is not an integer >= ``lo``."""
    for name, v in named:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise NasError(f"{name}: expected an integer >= {lo}, got {v!r}")


def burn_in(seconds: float) -> None:
    """Keep the CPU busy with matrix products for ``seconds``: on a shared VM the first seconds of load run
    measurably slower (a benchmark's timings start after it)."""
    a = torch.randn(512, 512)
    end = time.time() + seconds
    while time.time() < end:
        a @ a


def time_calls(calls: list[Callable[[], Any]], device: torch.device, warmup: int, reps: int) -> Timing:
    """Median and quartiles (ms) of ``reps`` timed calls after ``warmup`` untimed ones, going round ``calls``."""
    return _timing(raw_times(calls, device, warmup, reps))


def raw_times(calls: list[Callable[[], Any]], device: torch.device, warmup: int, reps: int) -> list[float]:
    """Milliseconds of ``reps`` timed calls after ``warmup`` untimed ones, going round ``calls``."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(warmup):
            calls[i % len(calls)]()
        sync()
        for i in range(reps):
            f = calls[i % len(calls)]
            t0 = time.perf_counter()
            f()
            sync()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def _timing(times: list[float]) -> Timing:
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else [times[0]] * 3
    return Timing(statistics.median(times), q[0], q[2], len(times))


# --- whole models -------------------------------------------------------------------------------------------
def measure_latency(arch: Arch, device: str = "cpu", batch: int = 1, threads: int | None = None,
                    data: str | None = None, images: int = 64, weights: str | None = None, seed: int = 0,
                    warmup: int = WARMUP, reps: int = REPS, file: str | None = None) -> MeasuredLatency:
    """Milliseconds per forward of ``batch`` images through the built model of ``arch`` (see the module
    docstring). A data-dependent arch is timed on ``images`` images of the evaluation split of ``data``
    (default builtin); a static one on a seeded random batch (``data`` is not needed and not used)."""
    dev = check_device(device)
    _at_least(1, ("--batch", batch), ("--images", images), ("reps", reps))
    with threads_set(threads) as n:
        env = environment(device, n, batch)
        if not arch.data_dependent:
            t = time_calls(model_calls(arch, dev, batch, seed, weights, file), dev, warmup, reps)
            return MeasuredLatency(t.ms, t.q1, t.q3, t.runs, env)
        model = seeded_model(arch, seed, weights, file).eval().to(dev)
        from nas.data import load_data, make_loader
        data = data or "builtin"
        splits = load_data(data, arch.img_size, arch.in_chans, seed=seed, limit={"val": images})
        batches = [b[0].to(dev) for b in make_loader(splits.val, batch_size=batch, shuffle=False, seed=seed,
                                                    drop_last=True)]
        if not batches:
            raise NasError(f"--images {images}: fewer images than one batch of {batch}; give --images >= --batch")
        time_calls([lambda: model(batches[0])], dev, warmup, 1)
        per_batch = [time_calls([lambda b=b: model(b)], dev, 1, DATA_REPS).ms for b in batches]
        t = _timing(per_batch)
        return MeasuredLatency(statistics.fmean(per_batch), t.q1, t.q3, len(per_batch) * DATA_REPS, env, data,
                               len(batches) * batch, max(per_batch))


# --- blocks -------------------------------------------------------------------------------------------------
class _Layer(nn.Module):
    """A transformer layer as a block times it: own map, map kept for the next layer, or inherited map."""

    def __init__(self, b: Block, batch: int) -> None:
        super().__init__()
        from nas.models.layers import Block as Layer
        shared = b.get("attn") == "shared"
        self.layer = Layer(b.get("dim"), b.get("heads"), b.get("hidden"), qkv_bias=b.get("qkv_bias"), shared=shared)
        self.need_map = b.get("attn") == "map"
        n, h = b.get("tokens"), b.get("heads")
        # the inherited map (B, h, N, N), a buffer so that it moves to the device with the module
        self.register_buffer("map", torch.randn(batch, h, n, n).softmax(-1) if shared else None, persistent=False)
        self.reduction = None
        if b.kind == "reduce":
            from nas.mechanisms import reductions
            r = dict(b.get("reduction"))
            m = reductions()[r.pop("type")]
            self.reduction, self.cfg = m.hooks().reduce, m.from_dict({"blocks": [], **r})

    def forward(self, x: torch.Tensor) -> Any:
        if self.reduction is not None:
            return self.reduction(self.layer, x, None, self.cfg, self.map)
        return self.layer(x, attn=self.map, need_map=self.need_map)


class _Head(nn.Module):
    def __init__(self, b: Block) -> None:
        super().__init__()
        self.cls = b.get("head") == "cls"
        self.norm = nn.LayerNorm(b.get("dim"))
        self.head = nn.Linear(b.get("dim"), b.get("classes")) if b.get("classes") else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)                                     # (B, N, C)
        return self.head(x[:, 0] if self.cls else x.mean(dim=1))


def tokenizer_arch(b: Block) -> Arch:
    """The smallest arch whose tokenizer is the block's (one stage of one basic cell, stage 0's values)."""
    from nas.mechanisms import tokenizer
    d = dict(b.get("tokenizer"))
    cfg = tokenizer(d["type"]).from_dict(d)
    dim, hidden = b.get("dim"), b.get("hidden")
    return Arch(b.get("img"), b.get("chans"), 10, cfg, (Stage(dim, b.get("heads"), (hidden + 0.5) / dim, ("basic",)),),
                Pooling("none" if b.get("cls") else "2d"), "cls" if b.get("cls") else "gap", qkv_bias=b.get("qkv_bias"))


def block_module(b: Block, batch: int) -> tuple[nn.Module, torch.Tensor]:
    """A fresh module of block ``b`` (random weights, eval mode) and an input batch for it."""
    if b.kind == "tokenizer":
        from nas.mechanisms import tokenizer
        from nas.models.vit import build_tokenizer
        arch = tokenizer_arch(b)
        mech = tokenizer(arch.tokenizer)
        make = build_tokenizer
        if mech.builds_model:  # a tokenizer that builds its own model names the module to time
            make = getattr(mech.hooks(), "latency_tokenizer", None)
            if make is None:
                raise NasError(f"the {mech.name} tokenizer builds its own model and its model module defines no "
                               "latency_tokenizer(arch): a latency table cannot time it (docs/adding-a-mechanism.md)")
        return make(arch).eval(), torch.randn(batch, arch.in_chans, arch.img_size, arch.img_size)
    if b.kind in ("layer", "reduce"):
        return _Layer(b, batch).eval(), torch.randn(batch, b.get("tokens"), b.get("dim"))
    if b.kind == "pooling":
        from nas.models.pooling import build_pooling
        m = build_pooling(Pooling(b.get("type"), b.get("kernel")), b.get("dim_in"), b.get("dim_out"), b.get("cls"))
        return m.eval(), torch.randn(batch, b.get("tokens"), b.get("dim_in"))
    if b.kind == "head":
        return _Head(b).eval(), torch.randn(batch, b.get("tokens"), b.get("dim"))
    raise ValueError(f"unknown block kind {b.kind!r}")


def block_calls(b: Block, device: torch.device, batch: int, flush_mb: float) -> list[Callable[[], Any]]:
    """Calls of the block ``b`` on its input, one per copy, the copies' weights totalling about ``flush_mb`` MB
    (at most 64 copies): timed in turn, each finds its weights where a whole forward would."""
    first, x = block_module(b, batch)
    size = sum(p.numel() * p.element_size() for p in first.parameters()) + 1
    copies = [first] + [block_module(b, batch)[0] for _ in range(min(63, math.ceil(flush_mb * 2**20 / size)) - 1)]
    x = x.to(device)
    return [lambda m=m.to(device): m(x) for m in copies]


class _Collector:
    """A latency "table" that records the blocks it is asked for (the walk of ``SearchSpace.latency_bounds``
    asks for every block the space can produce)."""
    fixed_ms = 0.0

    def __init__(self) -> None:
        self.blocks: dict[Block, None] = {}

    def ms(self, blocks: Any) -> float:
        for b in blocks:
            self.blocks.setdefault(b, None)
        return 0.0


def space_blocks(space: Any) -> list[Block]:
    """Every distinct block an arch of ``space`` can run (a ``SearchSpace``), in the order first met."""
    c = _Collector()
    space.latency_bounds(c)
    return list(c.blocks)


def make_table(space_file: str, out: str | os.PathLike, device: str = "cpu", batch: int = 1,
               threads: int | None = None, calibrate: int = CALIBRATE, rounds: int = ROUNDS, reps: int = BLOCK_REPS,
               seed: int = 0, progress: bool = True, check: int = 0) -> LatencyTable:
    """Time every block of the space (``space_blocks``) and ``calibrate`` whole archs of it, and write the table
    to ``out``. The timings are spread over ``rounds`` passes over all of them (``reps`` runs of each block in
    all, a share per pass), so that a slow spell of the machine weighs on every block alike rather than on the
    few timed during it. ``check`` more archs (drawn after the calibration archs) are timed whole in the same
    passes and predicted by the finished table, their figures kept in ``table.check``: the table's error on archs
    it was not calibrated on, under the same conditions. Resumable: each pass's timing of each block is appended
    to ``<out>.partial`` as it is made, and a rerun with the same settings on the same environment keeps them
    (other settings start over); the table replaces ``out`` whole."""
    from tqdm import tqdm

    from nas.space import load_space, sample_distinct

    dev = check_device(device)
    _at_least(1, ("--batch", batch), ("--reps", reps), ("--rounds", rounds))
    _at_least(0, ("--calibrate", calibrate), ("--check", check))
    space = load_space(space_file)
    blocks = space_blocks(space)
    drawn = min(calibrate + check, space.size())
    archs = list(sample_distinct(space, drawn, seed)) if drawn else []
    bounds = space.cost_bounds()
    flush_mb = 4 * (bounds["min_params"] + bounds["max_params"]) / 2 / 2**20  # float32 weights of a middle arch
    per_round = max(1, math.ceil(reps / rounds))
    with threads_set(threads) as n:
        env = environment(device, n, batch)
        protocol = {"rounds": rounds, "block_warmup": BLOCK_WARMUP, "block_reps": per_round * rounds,
                    "flush_mb": round(flush_mb, 1), "warmup": BLOCK_WARMUP, "reps": per_round * rounds,
                    "calibrate": min(calibrate, len(archs)), "check": max(0, len(archs) - calibrate), "seed": seed}
        partial = _Partial(Path(str(out) + ".partial"), {"space_hash": space.hash, "environment": env,
                                                          "protocol": protocol})
        bar = tqdm(total=rounds * (len(blocks) + len(archs)), desc="latency table", unit="timing",
                   disable=not progress, file=sys.stderr, dynamic_ncols=True)
        for r in range(rounds):
            for key, make in [*((b.key(), lambda b=b: block_calls(b, dev, batch, flush_mb)) for b in blocks),
                              *((f"arch:{a.hash()}", lambda a=a: model_calls(a, dev, batch, seed))
                                for a in archs)]:
                if f"{r}|{key}" not in partial.done:
                    partial.add(f"{r}|{key}", raw_times(make(), dev, BLOCK_WARMUP, per_round))
                bar.update(1)
        bar.close()
    def timing(key: str) -> Timing:  # the fastest round's median, the quartiles of all runs
        t = _timing([t for r in range(rounds) for t in partial.done[f"{r}|{key}"]])
        return Timing(min(statistics.median(partial.done[f"{r}|{key}"]) for r in range(rounds)), t.q1, t.q3, t.runs)

    table = LatencyTable(env, {b: timing(b.key()) for b in blocks}, 0.0, space.name, space.hash, protocol)
    rows = [{"arch": a.hash(), "measured_ms": timing(f"arch:{a.hash()}").ms, "blocks_ms": table.ms(arch_blocks(a)),
             "rounds_ms": [statistics.median(partial.done[f"{r}|arch:{a.hash()}"]) for r in range(rounds)]}
            for a in archs]
    table.calibration, table.check = rows[:calibrate], rows[calibrate:]
    if table.calibration:
        table.fixed_ms = statistics.median(c["measured_ms"] - c["blocks_ms"] for c in table.calibration)
    for c in table.check:
        c["predicted_ms"] = table.fixed_ms + c["blocks_ms"]
    table.save(out)
    partial.path.unlink(missing_ok=True)
    return table


def model_calls(arch: Arch, device: torch.device, batch: int, seed: int, weights: str | None = None,
                file: str | None = None) -> list[Callable[[], Any]]:
    """The call of ``arch``'s whole model (``nas.measure.seeded_model``) on a seeded random batch, built afresh
    (and freed once timed): a process holding many models that have run is measurably slower on each of them
    than one holding one."""
    model = seeded_model(arch, seed, weights, file).eval().to(device)
    x = torch.randn(batch, arch.in_chans, arch.img_size, arch.img_size,
                    generator=torch.Generator().manual_seed(seed)).to(device)
    return [lambda: model(x)]


class _Partial:
    """``<out>.partial``: a header line, then one JSON line per timing made, fsynced; a torn last line is dropped.
    A header that differs from this run's (space, environment, protocol) starts the file over."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path, self.done = path, {}
        lines = path.read_text(encoding="utf-8").split("\n")[:-1] if path.exists() else []
        try:
            same = bool(lines) and json.loads(lines[0]) == header
            if same:
                for line in lines[1:]:
                    row = json.loads(line)
                    self.done[row["key"]] = row["value"]
        except (json.JSONDecodeError, KeyError, TypeError):
            same, self.done = False, {}
        if not same:
            from nas.atomic import atomic_write
            atomic_write(path, (json.dumps(header) + "\n").encode())
        else:  # keep the complete lines only
            from nas.atomic import atomic_write
            atomic_write(path, ("\n".join(lines[:1 + len(self.done)]) + "\n").encode())

    def add(self, key: str, value: Any) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"key": key, "value": value}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done[key] = value


"""Latency: measured on the device (``nas latency``), predicted from a table of block times (``nas latency-table``),
bounded in a search (``nas search --latency 8ms --latency-table FILE``). See docs/latency.md.

    from nas.latency import load_table, measure_latency
    table = load_table("runs/latency/psvit_tiny-cpu-b1-t2.json")
    table.predict(arch)                   # ms, the sum of the arch's blocks + the table's fixed time
    measure_latency(arch, batch=1).ms     # ms, timed on this machine

The table and the predictor (``blocks``, ``table``) are torch-free; ``measure_latency`` and ``make_table``
(``timing``) import torch when called.
"""
from __future__ import annotations

from typing import Any

from nas.latency.blocks import Block, arch_blocks
from nas.latency.table import LatencyTable, Timing, load_table

__all__ = ["Block", "LatencyTable", "Timing", "arch_blocks", "load_table", "make_table", "measure_latency"]


def measure_latency(*args: Any, **kwargs: Any) -> Any:
    """``nas.latency.timing.measure_latency``: the measured latency of an arch's model on this machine."""
    from nas.latency.timing import measure_latency as measure
    return measure(*args, **kwargs)


def make_table(*args: Any, **kwargs: Any) -> LatencyTable:
    """``nas.latency.timing.make_table``: time every block of a space into a table file."""
    from nas.latency.timing import make_table as make
    return make(*args, **kwargs)

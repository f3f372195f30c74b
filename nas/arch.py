"""Arch: one concrete architecture, self-contained.

An Arch holds everything needed to rebuild a model without its search space: input size, tokenizer,
stages of cells, token pooling, head, token reduction (ATS). The tokenizer and the reduction are configs of
registered mechanisms (``nas.mechanisms``), written in files under their own keys. It is a frozen dataclass tree, hashable and
comparable; ``provenance`` (where it came from: space, budget, score) is carried along but is not part
of its identity. Arch files are YAML (see docs/space-dsl.md); they are read by the same validating
loader as search spaces (``nas.load_arch``), because an arch file is a search space with no choices.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any

from nas.mechanisms import reduction_of, reductions, tokenizer

CELL_KINDS = ("basic", "shared_pair", "identity")
CELL_LAYERS = {"basic": 1, "shared_pair": 2, "identity": 0}
"""Transformer layers in a cell of each kind."""
"""PSViT's cell choices: one transformer layer; two layers, the second reusing the first's attention
map; nothing."""

ARCH_FORMAT = "nas-arch/1"

CHANNELS = (1, 3)
"""Input channels an arch may have: grayscale or RGB, the inputs ``nas.data`` can feed (and normalise)."""


@dataclass(frozen=True)
class Stage:
    """Cells that share one token count and width. ``cells`` holds one of CELL_KINDS per cell."""
    dim: int
    heads: int
    mlp_ratio: float
    cells: tuple[str, ...]

    @property
    def hidden(self) -> int:
        """MLP hidden width (timm's rule: int(dim * mlp_ratio))."""
        return int(self.dim * self.mlp_ratio)

    @property
    def num_layers(self) -> int:
        return sum(CELL_LAYERS[c] for c in self.cells)


@dataclass(frozen=True)
class Pooling:
    """Token pooling between consecutive stages (PSViT). ``none``: stages only group cells.

    ``1d``: cls kept (through a Linear), Conv1d(kernel, stride 1) over patch tokens, MaxPool1d(2, 2, ceil).
    ``2d``: no cls; tokens as a grid, Conv2d(kernel, stride 2, padding (kernel-1)//2).
    """
    type: str = "none"
    kernel: int = 3


@dataclass(frozen=True)
class Provenance:
    """Where an arch came from. Not part of its identity (equality and hash ignore it)."""
    space: str | None = None
    space_hash: str | None = None
    budget_macs: int | None = None
    budget_params: int | None = None
    budget_latency_ms: float | None = None  # the upper end of a latency budget
    latency_ms: float | None = None         # the arch's latency as that budget's table predicts it
    latency_table: str | None = None        # that table: "<file> (<its hash>)"
    score: float | None = None


@dataclass(frozen=True)
class Arch:
    img_size: int
    in_chans: int
    num_classes: int
    tokenizer: Any                        # the config of a registered tokenizer (``nas.mechanisms``)
    stages: tuple[Stage, ...]
    pooling: Pooling = Pooling()
    head: str = "cls"                     # "cls" token or global average pooling ("gap")
    reduction: Any = None                 # the config of a registered token reduction, or None
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    name: str = field(default="", compare=False)
    provenance: Provenance = field(default=Provenance(), compare=False)

    @property
    def has_cls_token(self) -> bool:
        return self.head == "cls" or self.pooling.type != "2d"

    @property
    def data_dependent(self) -> bool:
        """True when the MACs executed depend on the image (a token reduction, an early exit)."""
        return tokenizer(self.tokenizer).data_dependent or (
            self.reduction is not None and reduction_of(self.reduction).data_dependent)

    def cells(self) -> list[tuple[int, int, str]]:
        """(stage index, cell index within the stage, kind) for every cell, in global order."""
        return [(s, c, kind) for s, stage in enumerate(self.stages) for c, kind in enumerate(stage.cells)]

    # --- serialisation -------------------------------------------------------------------------------
    def to_dict(self, with_provenance: bool = True) -> dict[str, Any]:
        """Plain YAML/JSON-ready dict in the arch file format (key order fixed)."""
        tok = tokenizer(self.tokenizer).to_dict(self.tokenizer)
        d: dict[str, Any] = {"format": ARCH_FORMAT}
        if self.name:
            d["name"] = self.name
        d.update({
            "input": {"size": self.img_size, "channels": self.in_chans},
            "num_classes": self.num_classes,
            "tokenizer": tok,
            "stages": [{"dim": s.dim, "heads": s.heads, "mlp_ratio": s.mlp_ratio, "cells": list(s.cells)}
                       for s in self.stages],
            "pooling": {"type": self.pooling.type, "kernel": self.pooling.kernel},
            "head": self.head,
            "qkv_bias": self.qkv_bias,
            "norm_eps": self.norm_eps,
        })
        if self.reduction is not None:
            m = reduction_of(self.reduction)
            d[m.name] = m.to_dict(self.reduction)
        if with_provenance:
            p = {f.name: getattr(self.provenance, f.name) for f in fields(Provenance)}
            p = {k: v for k, v in p.items() if v is not None}
            if p:
                d["provenance"] = p
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Arch":
        """Inverse of ``to_dict`` for trusted, already validated dicts. Files go through ``nas.load_arch``."""
        present = [m for key, m in reductions().items() if d.get(key) is not None]
        return cls(
            img_size=d["input"]["size"], in_chans=d["input"]["channels"], num_classes=d["num_classes"],
            tokenizer=tokenizer(d["tokenizer"]["type"]).from_dict(d["tokenizer"]),
            stages=tuple(Stage(s["dim"], s["heads"], float(s["mlp_ratio"]), tuple(s["cells"])) for s in d["stages"]),
            pooling=Pooling(**d.get("pooling", {})),
            head=d.get("head", "cls"),
            reduction=present[0].from_dict(d[present[0].name]) if present else None,
            qkv_bias=d.get("qkv_bias", True), norm_eps=float(d.get("norm_eps", 1e-6)),
            name=d.get("name", ""), provenance=Provenance(**d.get("provenance", {})),
        )

    def hash(self) -> str:
        """Stable identity: sha256 of the canonical JSON of the architecture (no name, no provenance)."""
        d = self.to_dict(with_provenance=False)
        d.pop("name", None)
        blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

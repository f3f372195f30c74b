"""The registry of mechanisms: each one lives in its own package under ``nas/mechanisms/`` and registers itself here.

The core (``nas.arch``, ``nas.shapes``, ``nas.cost``, the space schema and bounds, ``nas.models.vit``, the
supernet, the search) names no mechanism: it asks the registry. Two kinds plug in:

- a ``Tokenizer`` turns the image into the tokens of stage 0; ``tokenizer.type`` in a space or arch file picks
  one (``patch``, ``progressive``, ``coarse_fine``). It may run the body more than once (``passes``: CF-ViT's
  coarse and fine pass) and stop early, or build the whole model itself (``builds_model``).
- a ``Reduction`` drops tokens in the last layer of chosen cells (``ats``); each has a top-level key of its own
  in the files, and an arch uses at most one.

Token pooling and attention sharing (PSViT) are not plug-ins: they are the shape of the body itself (stages,
pooling between them, cell kinds) and live in the core.

A mechanism's package has two halves. Its ``__init__`` is torch-free: the arch dataclass with the defaults
(the DSL reads them from it), the DSL section, the shape rules, the MACs and params formulas (``nas.cost``
owns the shared ones; a mechanism's own formulas live in its torch-free half), its contribution to the exact
space bounds, whether it is data-dependent. Its ``model`` module (named by the string ``model``, imported
by ``nas.models`` when a model is built, so the torch-free layers never import torch) holds the layers and the
model hook; its ``picture`` module, imported by ``nas.viz`` only, draws what it did for ``nas viz``. ``docs/adding-a-mechanism.md`` walks through adding one.
"""
from __future__ import annotations

import importlib
from dataclasses import MISSING, fields
from types import ModuleType
from typing import Any, Callable

from nas.errors import NasError

Arch = Stage = Any  # ``nas.arch``'s classes, which import this module: named here for the signatures only

BUILTIN = ("nas.mechanisms.patch", "nas.mechanisms.progressive", "nas.mechanisms.coarse_fine", "nas.mechanisms.ats")
"""The packages of the shipped mechanisms, imported (and so registered) the first time the registry is read."""

Fail = Callable[[str, str], None]
"""``fail(key path, message)``: raises the file:line error of the space file at that key."""


def default(config: type, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``config``: what the DSL fills in when the key is absent."""
    for f in fields(config):
        if f.name == name:
            if f.default is MISSING:
                raise KeyError(f"{config.__name__}.{name} has no default")
            return f.default
    raise KeyError(f"{config.__name__} has no field {name!r}")


class Mechanism:
    """What every mechanism declares. Subclass ``Tokenizer`` or ``Reduction``, not this."""

    name: str = ""
    """Its name in the files: the ``tokenizer.type`` of a tokenizer, the top-level key of a reduction."""
    config: type
    """The frozen dataclass an Arch carries for it; its field defaults are the DSL's defaults."""
    model: str = ""
    """Module path of the torch half (``nas.mechanisms.ats.model``), imported by ``nas.models`` and ``nas.viz`` only
    (``nas.viz`` also reads a tokenizer's ``image_points`` there when its module records sampling points)."""
    data_dependent: bool = False
    """True when the MACs executed depend on the image (the search then scores per image MACs)."""
    picture: str | None = None
    """Module path of its picture for ``nas viz`` (``NAME``, the word in the file names, and ``draw(view) ->
    list[Path]``, ``view`` a ``nas.viz.View``), or None: nothing to draw."""
    training: type | None = None
    """The frozen dataclass of its section in a training recipe (under its ``name``), or None: options of its
    objective that the trainer hands to every model it builds (``build_model(arch, options=...)``)."""

    def read(self, r: Any, choosable: Callable) -> dict[str, Any]:
        """The DSL section's values from ``r`` (``nas.space.schema.Reader``), every missing key at its default
        (``default(self.config, key)``); ``choosable(parse)`` wraps a parser to allow ``{choice: [...]}``."""
        raise NotImplementedError

    def read_training(self, r: Any) -> Any:
        """Its recipe section's values from ``r`` (``nas.space.schema.Reader``) as a ``training`` instance."""
        raise NotImplementedError

    def check_space(self, t: dict[str, Any], fail: Fail) -> None:
        """Rules between this mechanism and the rest of template ``t``, over every reachable choice."""

    def check(self, arch: Arch) -> None:
        """The rules the model needs of a whole arch; raises NasError naming the key at fault."""

    def to_dict(self, cfg: Any) -> dict[str, Any]:
        """The section as written in an arch file (field order)."""
        return {f.name: getattr(cfg, f.name) for f in fields(cfg)}

    def from_dict(self, d: dict[str, Any]) -> Any:
        """Inverse of ``to_dict`` for trusted, validated dicts."""
        return self.config(**d)

    def hooks(self) -> ModuleType:
        """The torch half (``model``), imported on first use: for ``nas.models`` and ``nas.viz`` only."""
        return importlib.import_module(self.model)


class Tokenizer(Mechanism):
    """Image -> the tokens of stage 0. The ``model`` module defines ``build(arch, drop_path) -> nn.Module``,
    img (B, C, H, W) -> (B, N, C0) with cls first when the arch has one (``builds_model``: the whole model,
    ``build_model(arch, drop_path, options) -> nn.Module``, instead)."""

    grid: bool = False
    """Its tokens form a square grid that 2d token pooling can pool (side x side, no other tokens)."""
    builds_model: bool = False
    """It runs the body its own way and builds the whole model (CF-ViT's two passes)."""
    reducible: bool = True
    """A token reduction can act in the body it runs. In a space whose tokenizer is a choice, a reduction is
    inactive (the arch has none) with an option that is not reducible."""

    def read(self, r: Any, choosable: Callable) -> dict[str, Any]:
        raise NotImplementedError

    def to_dict(self, cfg: Any) -> dict[str, Any]:
        return {"type": self.name, **{f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name != "type"}}

    def from_dict(self, d: dict[str, Any]) -> Any:
        return self.config(**{k: v for k, v in d.items() if k != "type"})

    def side(self, img_size: int, tok: Any) -> int:
        """Side of the square grid of patch tokens it emits into stage 0."""
        raise NotImplementedError

    def passes(self, tok: Any, tokens: int) -> tuple[int, ...]:
        """The tokens (cls included) each run of the body sees, in order; ``tokens`` is side^2 + cls. The
        body and the head run once per pass; a data-dependent tokenizer may stop after any pass."""
        return (tokens,)

    def cost(self, img_size: int, in_chans: int, tok: Any, st: Stage, qkv_bias: bool,
             cls: bool) -> tuple[tuple[int, ...], int]:
        """(MACs of its own modules in each pass, their params), feeding stage ``st`` (its width)."""
        raise NotImplementedError

    def layers(self, tok: Any) -> int:
        """Transformer layers it runs before stage 0 (they come first in the stochastic-depth schedule)."""
        return 0

    def weights(self, tok: Any) -> str:
        """The name of the set of tokenizer weights ``tok`` uses. In a supernet whose space reaches configs with
        different names (a choice of tokenizers, of patch sizes), each name keeps its own tokenizer tensors
        (``tokenizer.<name>.*``) while the body is shared."""
        return self.name

    def supernet_name(self, tok: Any, name: str) -> str:
        """The supernet key of the standalone model's tensor ``name`` (the identity unless a setting of the
        tokenizer is a choice block with weights of its own)."""
        return name


class Reduction(Mechanism):
    """Drops tokens in the last layer of the cells ``blocks`` (global cell indices, after the last token
    pooling, never an identity cell). The config has a ``blocks`` field; its other fields set the budget.

    The ``model`` module defines ``reduce(block, x, mask, cfg, attn) -> (x, mask, index)``: the reduced forward
    of one layer (``nas.models.layers.Block``), x (B, N, C) with cls at row 0, ``mask`` (B, N) of real rows
    or None; it returns cls plus the kept rows (B, M, C), their mask (B, M) and the input row of each (-1 for
    padding).
    """

    data_dependent = True

    def max_kept(self, cfg: Any, n_patches: int) -> int:
        """The most patch tokens the layer can keep when ``n_patches`` enter (the worst-case MACs)."""
        raise NotImplementedError

    def min_kept(self, cfg: Any, n_patches: int) -> int:
        """The fewest patch tokens it can keep (the best-case MACs)."""
        raise NotImplementedError

    def budget(self, cfg: Any) -> dict[str, Any]:
        """The config's fields other than ``blocks``: they apply to every block (global in the bounds)."""
        return {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name != "blocks"}


_TOKENIZERS: dict[str, Tokenizer] = {}
_REDUCTIONS: dict[str, Reduction] = {}
_loaded = False


def register(mechanism: Mechanism) -> Mechanism:
    """Add a mechanism (``register(ATS())`` at the end of its package); its name must be new."""
    table = _TOKENIZERS if isinstance(mechanism, Tokenizer) else _REDUCTIONS
    if not isinstance(mechanism, (Tokenizer, Reduction)):
        raise TypeError(f"register takes a Tokenizer or a Reduction, got {type(mechanism).__name__}")
    if not mechanism.name or mechanism.name in _TOKENIZERS or mechanism.name in _REDUCTIONS:
        raise ValueError(f"mechanism name {mechanism.name!r} is empty or already registered")
    table[mechanism.name] = mechanism
    return mechanism


def unregister(name: str) -> None:
    """Remove a mechanism (tests that register a toy one)."""
    _TOKENIZERS.pop(name, None)
    _REDUCTIONS.pop(name, None)


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN:
            importlib.import_module(module)


def _ordered(table: dict[str, Any]) -> dict[str, Any]:
    """The built-in mechanisms in ``BUILTIN`` order (whatever imported them first), then the others as registered."""
    rank = {module: i for i, module in enumerate(BUILTIN)}
    order = sorted(table, key=lambda name: rank.get(type(table[name]).__module__, len(BUILTIN)))
    return {name: table[name] for name in order}


def tokenizers() -> dict[str, Tokenizer]:
    """The registered tokenizers by ``type``: the built-in ones, then others in registration order."""
    _load()
    return _ordered(_TOKENIZERS)


def reductions() -> dict[str, Reduction]:
    """The registered reductions by their top-level key: the built-in ones, then others in registration order."""
    _load()
    return _ordered(_REDUCTIONS)


def tokenizer(type_or_config: Any) -> Tokenizer:
    """The tokenizer of a ``type`` name or of a tokenizer config (an arch's ``tokenizer``)."""
    name = type_or_config if isinstance(type_or_config, str) else getattr(type_or_config, "type", None)
    table = tokenizers()
    if name not in table:
        raise NasError(f"unknown tokenizer {name!r}; allowed: {', '.join(table)}", key="tokenizer.type")
    return table[name]


def reduction_of(cfg: Any) -> Reduction:
    """The reduction whose config ``cfg`` is (an arch's ``reduction``)."""
    for m in reductions().values():
        if isinstance(cfg, m.config):
            return m
    raise NasError(f"no registered reduction has the config {type(cfg).__name__}")

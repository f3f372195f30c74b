"""Training recipes: YAML files validated like search spaces (file:line errors, did-you-mean, ranges).

A recipe says *how* to train (optimiser, schedule, loss, augmentation, arch sampling, data options, space
overrides); the space says *what*. ``Recipe()`` with no arguments is the PSViT supernet recipe (PSViT, arXiv 2108.03428,
section 4.1): Nesterov SGD, momentum 0.9, lr 0.2 cosine-annealed to 0, batch 1024, weight decay 1e-4,
100 epochs, label smoothing 0.1; the shipped recipe ``spos_supernet`` (``recipes/spos_supernet.yaml``) spells the
same values out. Recipes ship inside the package and are found by name (``--recipe cpu_supernet``; ``nas recipe
list``; ``nas.shipped``); a path to a YAML file works wherever a name does, and an existing path wins.

Keys (all optional; defaults in brackets)::

    name: str                       # [file stem]
    description: str
    seed: int >= 0                  # [0] model init, data split and order, arch sampling, augmentation
    epochs: int >= 1                # [100]
    batch_size: int >= 1            # [1024] images per optimiser step (the global batch, over all workers)
    optimizer:  {name: sgd | adamw [sgd], lr > 0 [0.2], weight_decay >= 0 [1e-4],
                 momentum in [0, 1) [0.9] and nesterov [true] (sgd only), betas [[0.9, 0.999]], eps (adamw only),
                 lr_base_batch: int >= 1 or null [null], lr_scaling: linear | sqrt [linear]}
                                    # with lr_base_batch, lr is per lr_base_batch images: the lr used is
                                    # lr * batch_size / lr_base_batch (linear; DeiT's 5e-4 x batch/512) or its sqrt
    schedule:   {name: cosine | none [cosine], min_lr [0], warmup_epochs [0], warmup_lr [1e-6]}
    label_smoothing: [0, 1)         # [0.1]
    drop_path: [0, 1)               # [0] stochastic depth of the last layer, linear from 0 over the layers
    <mechanism>: {...}              # a mechanism's training options, under its name (``training`` in
                                    # ``nas.mechanisms``): CF-ViT's warm-up share (docs/decisions.md)
    mixup:      {mixup_alpha [0], cutmix_alpha [0], prob [1], switch_prob [0.5]}   # off when both alphas are 0
    augment:    {auto_augment: str or null [null], color_jitter >= 0 [0.4], re_prob in [0, 1] [0],
                 interpolation: bilinear | bicubic [bilinear]}   # ImageFolder training images (timm create_transform)
    sampler:    {type: uniform | flops_bins [uniform], bins [10], max_tries [100]}
    data:       {holdout [0.1], limit [null]: int or {train, search, val}, num_workers [0]}
    grad_clip: >= 0                 # [0 = off] max global gradient norm
    checkpoint: {every_steps [0 = epoch ends only], keep [2]}
    device: auto | cpu | cuda       # [auto]
    space_overrides: {key.path: value, ...}   # applied to the space file (nas.space.load_space overrides), or
                                    # to the arch file of a retraining (fixed values only)
    width_multiplier: (0, 16]       # [1] retraining only: every stage's dim times this, rounded to a multiple of
                                    # its heads (after space_overrides)

Decisions where the papers are silent:

- Optimisers and schedules are timm's (``create_optimizer_v2``: weight decay skips biases and norm weights, as in
  timm/DeiT; ``create_scheduler_v2`` stepped per update, so cosine anneals smoothly over all steps to ``min_lr``).
- ``schedule: {name: none}`` keeps the lr constant (warmup keys are then not allowed).
- ``drop_path`` is timm's ``drop_path_rate``: the last layer's rate, the others linear from 0 in the order the
  layers run (PS-ViT's sampling rounds first). The PSViT supernet recipe states none: 0.
- A mechanism's section applies to the archs that use the mechanism only; its keys and defaults are the
  mechanism's (its ``training`` dataclass and ``read_training``). See docs/decisions.md for CF-ViT's warm-up.
- ``augment`` is the training transform of ImageFolder data, built with timm's ``create_transform``
  (random resized crop, flip, colour jitter, ``auto_augment`` such as RandAugment ``rand-m9-mstd0.5-inc1``,
  random erasing ``re_prob``); its defaults are ``nas.data``'s own training transform. In-memory data (builtin,
  synthetic) is never augmented: the trainer says so on stderr when a recipe asks for augmentation there. An
  ``auto_augment`` string is checked by building it with timm, so a typo fails at load time with the line.
- ``lr_base_batch`` (timm's ``lr_base_size``) states ``lr`` for a reference batch; the lr used follows
  ``batch_size``, the global batch, so the same recipe on more workers or GPUs needs no edit.
- ``sampler`` applies to supernet training only; a retraining trains its one arch.
- ``width_multiplier`` (MobileNet's rule, for arch files): it narrows any arch while keeping the differences a
  search chose between its stages (a target's 256 and 288 stay 64 and 72 at 0.25), which fixed ``space_overrides``
  of the widths would erase. Stage ``i`` gets ``max(1, round(dim_i * m / heads_i)) * heads_i``. A supernet recipe
  narrows its space with ``space_overrides`` instead (its widths may be choices); it refuses the key.
- Mixup/CutMix needs an even batch size (timm's rule), checked here so the error names the recipe line.
- The recipe hash (``Recipe.hash``) covers every key but ``name`` and ``description``: a run directory refuses to
  resume under a recipe whose hash differs, even for keys that do not change the numbers (``num_workers``).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Callable

from nas.errors import NasError
from nas.mechanisms import Mechanism, reductions, tokenizers
from nas.shipped import find
from nas.shipped import path as shipped_path
from nas.space.schema import Reader, boolean, got, integer, number, one_of, text
from nas.space.yamlnodes import Node, load_nodes

SPLITS = ("train", "search", "val")


@dataclass(frozen=True)
class OptimizerCfg:
    name: str = "sgd"
    lr: float = 0.2
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    lr_base_batch: int | None = None
    lr_scaling: str = "linear"

    def scaled_lr(self, batch_size: int) -> float:
        """The lr used at ``batch_size`` images per step: ``lr`` itself, or scaled from ``lr_base_batch``."""
        if self.lr_base_batch is None:
            return self.lr
        ratio = batch_size / self.lr_base_batch
        return self.lr * (ratio if self.lr_scaling == "linear" else ratio ** 0.5)

    def timm_kwargs(self, batch_size: int | None = None) -> dict[str, Any]:
        """Arguments of ``timm.optim.create_optimizer_v2`` (timm's 'sgd' is Nesterov, 'momentum' is not), with the
        lr scaled to ``batch_size`` when given."""
        lr = self.lr if batch_size is None else self.scaled_lr(batch_size)
        if self.name == "sgd":
            return {"opt": "sgd" if self.nesterov else "momentum", "lr": lr,
                    "weight_decay": self.weight_decay, "momentum": self.momentum}
        return {"opt": self.name, "lr": lr, "weight_decay": self.weight_decay, "betas": self.betas,
                "eps": self.eps}


@dataclass(frozen=True)
class ScheduleCfg:
    name: str = "cosine"
    min_lr: float = 0.0
    warmup_epochs: int = 0
    warmup_lr: float = 1e-6


@dataclass(frozen=True)
class MixupCfg:
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


@dataclass(frozen=True)
class AugmentCfg:
    auto_augment: str | None = None
    color_jitter: float = 0.4
    re_prob: float = 0.0
    interpolation: str = "bilinear"

    def timm_kwargs(self) -> dict[str, Any]:
        """Arguments of ``timm.data.create_transform(..., is_training=True)``."""
        return {"auto_augment": self.auto_augment, "color_jitter": self.color_jitter, "re_prob": self.re_prob,
                "interpolation": self.interpolation}


@dataclass(frozen=True)
class SamplerCfg:
    type: str = "uniform"
    bins: int = 10
    max_tries: int = 100


@dataclass(frozen=True)
class DataCfg:
    holdout: float = 0.1
    limit: int | dict[str, int] | None = None
    num_workers: int = 0


def trained_mechanisms() -> dict[str, Mechanism]:
    """The registered mechanisms with a section in training recipes (their ``training``), by name."""
    return {name: m for name, m in {**tokenizers(), **reductions()}.items() if m.training is not None}


def _mechanism_defaults() -> dict[str, Any]:
    return {name: m.training() for name, m in trained_mechanisms().items()}


@dataclass(frozen=True)
class CheckpointCfg:
    every_steps: int = 0
    keep: int = 2


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. ``file`` and ``lines`` say where keys came from (for errors); not part of identity."""
    name: str = "spos_supernet"
    description: str = ""
    seed: int = 0
    epochs: int = 100
    batch_size: int = 1024
    optimizer: OptimizerCfg = OptimizerCfg()
    schedule: ScheduleCfg = ScheduleCfg()
    label_smoothing: float = 0.1
    drop_path: float = 0.0
    mechanisms: dict[str, Any] = field(default_factory=_mechanism_defaults)  # sections under their names
    mixup: MixupCfg = MixupCfg()
    augment: AugmentCfg = AugmentCfg()
    sampler: SamplerCfg = SamplerCfg()
    data: DataCfg = DataCfg()
    grad_clip: float = 0.0
    checkpoint: CheckpointCfg = CheckpointCfg()
    device: str = "auto"
    space_overrides: dict[str, Any] = field(default_factory=dict)
    width_multiplier: float = 1.0
    file: str | None = field(default=None, compare=False)
    lines: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain data in the recipe file format (``load_recipe`` of its YAML gives an equal Recipe)."""
        d = asdict(self)
        d.pop("file"), d.pop("lines")
        d.update(d.pop("mechanisms"))  # each at the top level, under the mechanism's name
        if not d["description"]:
            d.pop("description")
        d["optimizer"]["betas"] = list(self.optimizer.betas)
        if self.optimizer.lr_base_batch is None:
            d["optimizer"].pop("lr_base_batch"), d["optimizer"].pop("lr_scaling")
        if self.augment == AugmentCfg():  # recipes from before the key hash as they did
            d.pop("augment")
        if self.width_multiplier == 1.0:
            d.pop("width_multiplier")
        unused_keys = (("optimizer", "name", {"sgd": ("betas", "eps"), "adamw": ("momentum", "nesterov")}),
                       ("schedule", "name", {"none": ("min_lr", "warmup_epochs", "warmup_lr")}),
                       ("sampler", "type", {"uniform": ("bins", "max_tries")}))
        for section, key, unused in unused_keys:
            for k in unused.get(d[section][key], ()):  # keys that do not apply (and are not allowed) here
                d[section].pop(k)
        return d

    def model_kwargs(self) -> dict[str, Any]:
        """The training options ``nas.models.build_model`` (and ``Supernet``) take from a recipe."""
        return {"drop_path": self.drop_path, "options": dict(self.mechanisms)}

    @property
    def lr(self) -> float:
        """The lr used (``optimizer.lr`` scaled to ``batch_size`` when ``optimizer.lr_base_batch`` is set)."""
        return self.optimizer.scaled_lr(self.batch_size)

    def hash(self) -> str:
        d = self.to_dict()
        d.pop("name"), d.pop("description", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]

    def overridden(self, load: Callable[..., Any], path: str, overrides: dict[str, Any]) -> Any:
        """``load(path, overrides=overrides)`` (``load_space``, ``load_arch``); an error caused by one of the recipe's
        ``space_overrides`` points at the recipe's line, a fault of the file itself is reported as such."""
        try:
            return load(path, overrides=overrides)
        except NasError as e:
            if not self.space_overrides:
                raise
            load(path)  # a fault of the file itself is reported as such
            key = e.key if e.key in self.space_overrides else None
            where = f"space_overrides.{key}" if key else "space_overrides"
            what = f"{'' if key else f'{e.key}: '}{e.message} (in {path} with the recipe's overrides)"
            raise self.error(where, what) from None

    def error(self, key: str, message: str) -> NasError:
        """An error located at ``key`` of the recipe file (or at the nearest parent key that has a line)."""
        k = key
        while k and k not in self.lines:
            k = k.rpartition(".")[0]
        return NasError(message, file=self.file, line=self.lines.get(k), key=key)


# --- parsing ------------------------------------------------------------------------------------------
def _below(parse: Callable[[Node], float], hi: float) -> Callable[[Node], float]:
    """``parse`` and then strictly below ``hi`` (the schema's ``number`` closes its upper end)."""
    def read(n: Node) -> float:
        v = parse(n)
        if v >= hi:
            raise n.error(f"must be below {hi}, got {v}")
        return v
    return read


def _section(root: Reader, key: str, read: Callable[[Reader], Any], default: Any) -> Any:
    if not root.has(key) or root.left[key].value is None:  # absent or `key:` with nothing: defaults
        root.left.pop(key, None)
        return default
    return root.take(key, lambda n: read(Reader(n, key)))


class _Lines:
    """Collects the line of every key read (``lines['optimizer.lr'] = 7``) for errors raised later."""

    def __init__(self) -> None:
        self.lines: dict[str, int] = {}

    def walk(self, node: Node) -> None:
        if node.path:
            self.lines[node.path] = node.line
        if isinstance(node.value, dict):
            for child in node.value.values():
                self.walk(child)


def _optimizer(r: Reader) -> OptimizerCfg:
    d = OptimizerCfg()
    name = r.take("name", one_of("sgd", "adamw"), d.name)
    scaling = ("lr_base_batch", "lr_scaling")
    if name == "sgd":
        r.allow("name", "lr", "weight_decay", "momentum", "nesterov", *scaling)
    else:
        r.allow("name", "lr", "weight_decay", "betas", "eps", *scaling)
    betas = r.take("betas", _betas, d.betas)
    base = r.take("lr_base_batch", lambda n: None if n.value is None else integer(1)(n), None)
    if base is None and r.has("lr_scaling"):
        raise r.left["lr_scaling"].error("lr_scaling needs lr_base_batch (the batch size lr is stated for)")
    out = OptimizerCfg(name, r.take("lr", number(0.0, lo_open=True), d.lr),
                       r.take("weight_decay", number(0.0), d.weight_decay),
                       r.take("momentum", _below(number(0.0), 1.0), d.momentum),
                       r.take("nesterov", boolean, d.nesterov), betas,
                       r.take("eps", number(0.0, lo_open=True), d.eps), base,
                       r.take("lr_scaling", one_of("linear", "sqrt"), d.lr_scaling))
    r.done()
    return out


def _betas(n: Node) -> tuple[float, float]:
    if not isinstance(n.value, list) or len(n.value) != 2:
        raise n.error(f"expected two numbers [beta1, beta2] in [0, 1), got {got(n.value)}")
    b1, b2 = (_below(number(0.0), 1.0)(m) for m in n.value)
    return (b1, b2)


def _schedule(r: Reader) -> ScheduleCfg:
    d = ScheduleCfg()
    name = r.take("name", one_of("cosine", "none"), d.name)
    r.allow(*(("name", "min_lr", "warmup_epochs", "warmup_lr") if name == "cosine" else ("name",)))
    out = ScheduleCfg(name, r.take("min_lr", number(0.0), d.min_lr), r.take("warmup_epochs", integer(0), 0),
                      r.take("warmup_lr", number(0.0), d.warmup_lr))
    r.done()
    return out


def _mixup(r: Reader) -> MixupCfg:
    d = MixupCfg()
    r.allow("mixup_alpha", "cutmix_alpha", "prob", "switch_prob")
    out = MixupCfg(r.take("mixup_alpha", number(0.0), d.mixup_alpha),
                   r.take("cutmix_alpha", number(0.0), d.cutmix_alpha),
                   r.take("prob", number(0.0, 1.0), d.prob), r.take("switch_prob", number(0.0, 1.0), d.switch_prob))
    r.done()
    return out


def _auto_augment(n: Node) -> str | None:
    """A timm auto-augment string, checked by building it the way ``create_transform`` does."""
    if n.value is None:
        return None
    config = text(n)
    from timm.data.auto_augment import (augment_and_mix_transform, auto_augment_transform,
                                        rand_augment_transform)

    build = (rand_augment_transform if config.startswith("rand") else augment_and_mix_transform
             if config.startswith("augmix") else auto_augment_transform)
    try:
        build(config, {"translate_const": 100, "img_mean": (124, 116, 104)})
    except Exception as e:  # timm raises AssertionError, KeyError or ValueError on a malformed string
        raise n.error(f"timm cannot build auto_augment {config!r} ({type(e).__name__}: {e}); allowed: "
                      f"'rand-m9-mstd0.5-inc1' (RandAugment), 'augmix-m5-w4-d2', 'original', 'v0', "
                      f"or null") from None
    return config


def _augment(r: Reader) -> AugmentCfg:
    d = AugmentCfg()
    r.allow("auto_augment", "color_jitter", "re_prob", "interpolation")
    out = AugmentCfg(r.take("auto_augment", _auto_augment, d.auto_augment),
                     r.take("color_jitter", number(0.0), d.color_jitter), r.take("re_prob", number(0.0, 1.0), d.re_prob),
                     r.take("interpolation", one_of("bilinear", "bicubic"), d.interpolation))
    r.done()
    return out


def _sampler(r: Reader) -> SamplerCfg:
    d = SamplerCfg()
    kind = r.take("type", one_of("uniform", "flops_bins"), d.type)
    r.allow(*(("type", "bins", "max_tries") if kind == "flops_bins" else ("type",)))
    out = SamplerCfg(kind, r.take("bins", integer(1, 10_000), d.bins), r.take("max_tries", integer(1), d.max_tries))
    r.done()
    return out


def _limit(n: Node) -> int | dict[str, int] | None:
    if n.value is None or not n.is_map:
        return None if n.value is None else integer(1)(n)
    r = Reader(n, "limit per split").allow(*SPLITS)
    out = {s: r.take(s, integer(1)) for s in SPLITS if r.has(s)}
    r.done()
    return out


def _data(r: Reader) -> DataCfg:
    d = DataCfg()
    r.allow("holdout", "limit", "num_workers")
    out = DataCfg(r.take("holdout", _below(number(0.0), 1.0), d.holdout), r.take("limit", _limit, None),
                  r.take("num_workers", integer(0, 256), d.num_workers))
    r.done()
    return out


def _done(read: Callable[[Reader], Any]) -> Callable[[Reader], Any]:
    """``read``, then reject any key it left."""
    def run(r: Reader) -> Any:
        out = read(r)
        r.done()
        return out
    return run


def _checkpoint(r: Reader) -> CheckpointCfg:
    d = CheckpointCfg()
    r.allow("every_steps", "keep")
    out = CheckpointCfg(r.take("every_steps", integer(0), d.every_steps), r.take("keep", integer(1, 1000), d.keep))
    r.done()
    return out


def _overrides(n: Node) -> dict[str, Any]:
    if n.value is None:
        return {}
    if not n.is_map:
        raise n.error(f"expected a mapping of space key paths to values (e.g. {{input.size: 32}}), got {got(n.value)}")
    return {k: v.plain() for k, v in n.value.items()}


def parse_recipe(root: Node, name: str = "") -> Recipe:
    """Validate a recipe Node tree (see the module docstring for the keys)."""
    r = Reader(root, "a recipe").allow(
        "name", "description", "seed", "epochs", "batch_size", "optimizer", "schedule", "label_smoothing",
        "drop_path", "mixup", "augment", "sampler", "data", "grad_clip", "checkpoint", "device",
        "space_overrides", "width_multiplier", *trained_mechanisms())
    d = Recipe()
    lines = _Lines()
    lines.walk(root)
    recipe = Recipe(
        name=r.take("name", text, name or d.name), description=r.take("description", text, ""),
        seed=r.take("seed", integer(0, 2**63 - 1), d.seed), epochs=r.take("epochs", integer(1, 100_000), d.epochs),
        batch_size=r.take("batch_size", integer(1), d.batch_size),
        optimizer=_section(r, "optimizer", _optimizer, d.optimizer),
        schedule=_section(r, "schedule", _schedule, d.schedule),
        label_smoothing=r.take("label_smoothing", _below(number(0.0), 1.0), d.label_smoothing),
        drop_path=r.take("drop_path", _below(number(0.0), 1.0), d.drop_path),
        mechanisms={name: _section(r, name, _done(m.read_training), d.mechanisms[name])
                    for name, m in trained_mechanisms().items()},
        mixup=_section(r, "mixup", _mixup, d.mixup), augment=_section(r, "augment", _augment, d.augment),
        sampler=_section(r, "sampler", _sampler, d.sampler),
        data=_section(r, "data", _data, d.data), grad_clip=r.take("grad_clip", number(0.0), d.grad_clip),
        checkpoint=_section(r, "checkpoint", _checkpoint, d.checkpoint),
        device=r.take("device", one_of("auto", "cpu", "cuda"), d.device),
        space_overrides=r.take("space_overrides", _overrides, {}),
        width_multiplier=r.take("width_multiplier", number(0.0, 16.0, lo_open=True), 1.0),
        file=root.file, lines=lines.lines)
    r.done()
    _check(recipe)
    return recipe


def _check(rc: Recipe) -> None:
    """Cross-key rules."""
    s = rc.schedule
    if s.warmup_epochs >= rc.epochs:
        raise rc.error("schedule.warmup_epochs", f"warmup_epochs {s.warmup_epochs} must be below epochs {rc.epochs}")
    if s.min_lr > rc.lr:
        scaled = f" (scaled to batch_size {rc.batch_size})" if rc.optimizer.lr_base_batch else ""
        raise rc.error("schedule.min_lr", f"min_lr {s.min_lr} is above the optimizer lr {rc.lr:.6g}{scaled}")
    if rc.mixup.active and rc.batch_size % 2:
        raise rc.error("batch_size", f"mixup/cutmix needs an even batch_size (timm mixes the batch with its "
                                     f"flipped self), got {rc.batch_size}")


def load_recipe(path: str | os.PathLike | None) -> Recipe:
    """Read and validate a recipe file, or a shipped recipe by name (``cpu_supernet``; an existing path wins);
    ``None`` gives the default (PSViT supernet) recipe."""
    if path is None:
        return Recipe()
    file = find("recipe", path)
    return parse_recipe(load_nodes(file), file.stem)


# --- default recipes ------------------------------------------------------------------------------------
RECIPES = Path(str(files("nas") / "recipes")).resolve()
"""The folder of the shipped recipes (in the package; ``nas.shipped`` finds them by name)."""
BUILTIN_DATA = ("builtin", "mnist")


def default_recipe(job: str, data: str, space: str | None = None) -> Path | None:
    """The recipe a ``job`` (``supernet`` or ``retrain``) uses on ``data`` when none is given: the CPU recipes on
    the built-in data and on 28x28 IDX data (``fashion-mnist``, ``idx:DIR``), else the paper's (None:
    ``Recipe()``, the PSViT supernet recipe; ``retrain_deit``). The files are the shipped ones (``nas.shipped``).

    A supernet of the space named ``space`` on the built-in data takes the shipped ``cpu_supernet_<space>`` when
    there is one (its proxy: ``space_overrides`` are per space), else ``cpu_supernet`` (``psvit_tiny``'s)."""
    spec = str(data).strip().lower()
    builtin = spec in BUILTIN_DATA
    idx = spec == "fashion-mnist" or spec.startswith("idx:")
    if job == "supernet":
        if idx:
            return _shipped("cpu_fashion_supernet")
        if builtin and space and shipped_path("recipe", f"cpu_supernet_{space}") is not None:
            return _shipped(f"cpu_supernet_{space}")
        return _shipped("cpu_supernet") if builtin else None
    if job == "retrain":
        return _shipped("retrain_cpu" if builtin else "retrain_cpu_fashion" if idx else "retrain_deit")
    raise ValueError(f"unknown job {job!r}; allowed: supernet, retrain")


def _shipped(name: str) -> Path:
    """The shipped recipe ``name`` (an error if the install lacks it: nothing else would do)."""
    path = shipped_path("recipe", name)
    if path is None:
        raise NasError(f"the shipped recipe {name!r} is missing from this install of nas (nas/recipes/); reinstall "
                       f"nas, or give a recipe with --recipe")
    return path

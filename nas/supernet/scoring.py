"""Scoring archs with inherited supernet weights: top-1 and loss on the held-out search split.

``Evaluator(supernet, splits)(arch)`` runs ``arch``'s path of the supernet (no training, no copy of its
weights) over every image of the ``search`` split (``nas.data``: a stratified hold-out of the training set,
disjoint from the images the supernet trained on and from ``val``) and returns an ``Evaluation``: top-1 in
[0, 1], mean cross-entropy, the analytic MACs and params (``nas.cost``), for data-dependent archs (ATS,
CF-ViT) the mean MACs per image measured on the same images (``nas.measure`` protocol), and the time taken.
Results are cached by ``arch.hash()``: a searcher that proposes an arch twice pays once. Searchers maximise
``Evaluation.objective`` (the negated loss), finer than top-1; ``per_image(arch)`` gives the outcome on every
image (``benchmarks/supernet_ranking.py`` ranks archs on halves of the split with it).

Speed (a search evaluates up to 1,000 archs): the split is converted once into tensors, batches are large,
everything runs in eval mode under ``torch.inference_mode``, and the only per-arch work besides the forward
passes is the supernet's skeleton of the path (cached by the supernet).

Decisions where the papers are silent:

- The loss is the plain cross-entropy (no label smoothing, whatever the training recipe used): it is a
  property of the predictions, comparable between recipes.
- BatchNorm (only the PS-ViT stem has it) is recalibrated as in SPOS, on the first ``bn_batches`` training
  batches of a fixed seeded order, for every arch that has it; this runs on an ``extract``-ed copy so the
  supernet's own statistics stay as trained and an arch's score does not depend on which archs were scored
  before it. Archs without BatchNorm run on the supernet's path directly.
- Data too large to keep in memory (more than ``max_preload_bytes`` as float32 tensors; ImageFolder data at
  224 px) is streamed through a loader on every call instead of preloaded.
- The split is never shuffled or sub-sampled: every call scores the same images in the same order, so two
  archs are compared on identical data (paired).
- The ranking key is the loss, not top-1: random subnets of a trained supernet differ in top-1 by about a
  point, less than its sampling noise on a few thousand images (docs/decisions.md, "Search scores and the
  CPU supernet").
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from nas.arch import Arch
from nas.cost import cost
from nas.data import DataSplits, make_loader
from nas.errors import NasError
from nas.measure import batch_macs

if TYPE_CHECKING:
    from nas.supernet.supernet import Supernet

SCORED_SPLITS = ("search", "val")


@dataclass(frozen=True)
class Evaluation:
    """What one arch scores on a split with inherited weights."""
    arch_hash: str
    score: float            # top-1 on the split, in [0, 1]
    loss: float             # mean cross-entropy on the split
    macs: int               # nas.cost(arch).macs (worst case for data-dependent archs), at the scored scale
    macs_mean: int | None   # measured mean MACs per image on the split (data-dependent archs), else None
    params: int
    seconds: float

    @property
    def objective(self) -> float:
        """What searchers maximise: the negated mean cross-entropy on the split. Finer than top-1, which moves
        in steps of one image and ties or reorders similar archs by chance (docs/decisions.md, "Search
        scores"); ``score`` stays the top-1 a user reads."""
        return -self.loss


class PerImage(NamedTuple):
    """One arch's outcome on each of the split's N images, in the split's order."""
    correct: torch.Tensor        # (N,) bool: top-1 right
    loss: torch.Tensor           # (N,) float64: cross-entropy
    macs: torch.Tensor | None    # (N,) int64 executed MACs (data-dependent archs), else None

    def subset(self, idx: torch.Tensor) -> "PerImage":
        """The outcomes on the images ``idx`` (a (K,) index tensor)."""
        return PerImage(self.correct[idx], self.loss[idx], None if self.macs is None else self.macs[idx])


def evaluation(arch: Arch, out: PerImage, seconds: float = 0.0) -> Evaluation:
    """The ``Evaluation`` of ``arch`` from its per-image outcomes (means over the images)."""
    loss = float(out.loss.mean())
    if not math.isfinite(loss):
        raise NasError(f"arch {arch.hash()}: the loss on the scored images is not finite; the supernet weights "
                       f"are broken (diverged training?)")
    c = cost(arch)
    return Evaluation(arch_hash=arch.hash(), score=float(out.correct.double().mean()), loss=loss, macs=c.macs,
                      macs_mean=None if out.macs is None else round(float(out.macs.double().mean())),
                      params=c.params, seconds=seconds)


Batches = list[tuple[torch.Tensor, torch.Tensor]]


class Preloaded(NamedTuple):
    """A split as the tensors an ``Evaluator`` scores: ``batches`` of (images (B, C, H, W), labels (B,)) in the
    split's order, and ``bn``, the BatchNorm recalibration batches (None when the supernet has no BatchNorm)."""
    batches: Batches
    bn: Batches


def _materialise(dataset, batch_size: int, num_batches: int | None = None, shuffle: bool = False,
                 seed: int = 0) -> Batches:
    """The first ``num_batches`` batches of a seeded loader over ``dataset``, as tensors (random transforms,
    if any, drawn under a fixed torch seed so the batches are the same every time)."""
    loader = make_loader(dataset, batch_size, shuffle=shuffle, seed=seed, drop_last=False)
    out: Batches = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for x, y in loader:
            out.append((x, y))
            if num_batches is not None and len(out) >= num_batches:
                break
    return out


class Evaluator:
    """Scores archs of ``supernet``'s space on one split of ``splits`` (``search`` for searching).

    ``batch_size`` images per forward; ``device`` where the supernet runs (it is moved there and put in eval
    mode); ``bn_batches`` training batches recalibrate BatchNorm for archs that have it; splits larger than
    ``max_preload_bytes`` are streamed instead of preloaded.
    """

    def __init__(self, supernet: "Supernet", splits: DataSplits | None, split: str = "search", *,
                 batch_size: int = 256, device: str | torch.device = "cpu", bn_batches: int = 4,
                 max_preload_bytes: int = 2 << 30, preloaded: "Preloaded | None" = None) -> None:
        if split not in SCORED_SPLITS:
            raise NasError(f"--split: expected one of {list(SCORED_SPLITS)} (archs are never scored on training "
                           f"images), got {split!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise NasError(f"batch_size: expected a positive integer, got {batch_size!r}")
        if bn_batches < 1:
            raise NasError(f"bn_batches: expected at least 1, got {bn_batches!r}")
        self.device = torch.device(device)
        self.supernet = supernet.to(self.device).eval()
        self.splits, self.split, self.batch_size, self.bn_batches = splits, split, batch_size, bn_batches
        self.cache: dict[str, Evaluation] = {}
        if preloaded is not None:  # the batches another Evaluator materialised (``preload``): same images, order
            self._batches, self._bn_batches = preloaded.batches, preloaded.bn
            self.num_images, self.preloaded = sum(len(y) for _, y in preloaded.batches), True
            return
        self.dataset = getattr(splits, split)
        self.num_images = len(self.dataset)  # type: ignore[arg-type]
        if self.num_images == 0:
            raise NasError(f"the {split} split is empty: nothing to score archs on (raise data.holdout)")
        x0, _ = self.dataset[0]
        self.preloaded = self.num_images * x0.numel() * 4 <= max_preload_bytes
        self._batches: Batches | None = _materialise(self.dataset, batch_size) if self.preloaded else None
        self._bn_batches: Batches | None = None  # training batches, loaded the first time an arch has BatchNorm

    def __len__(self) -> int:
        return len(self.cache)

    def batches(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """The split's (images, labels) batches, always the same images in the same order."""
        if self._batches is not None:
            return self._batches
        return make_loader(self.dataset, self.batch_size, shuffle=False, drop_last=False)

    def preload(self) -> "Preloaded | None":
        """The split's batches and the BatchNorm recalibration batches, as tensors: what an
        ``Evaluator(..., preloaded=...)`` elsewhere (a Ray actor) needs to score exactly as this one does.
        None when the split is streamed (too large to preload)."""
        if self._batches is None:
            return None
        return Preloaded(self._batches, self.bn_data())

    def bn_data(self) -> Batches:
        """The training batches BatchNorm statistics are recalibrated on (a fixed seeded order)."""
        if self._bn_batches is None:
            self._bn_batches = _materialise(self.splits.train, self.batch_size, self.bn_batches, shuffle=True)
        return self._bn_batches

    @contextmanager
    def model(self, arch: Arch) -> Iterator[nn.Module]:
        """``arch`` with inherited weights in eval mode, ready to score: its supernet path, or a recalibrated
        copy when it has BatchNorm."""
        from nas.supernet.bn import recalibrate_bn

        if self.supernet.training:
            self.supernet.eval()
        if self.supernet.batchnorm_stats(arch):
            copy = self.supernet.extract(arch)
            yield recalibrate_bn(copy, ((x.to(self.device), y) for x, y in self.bn_data()))
            return
        with self.supernet.bound(arch) as model:
            yield model

    def per_image(self, arch: Arch) -> PerImage:
        """``arch``'s outcome on every image of the split, in the split's order (not cached)."""
        with self.model(arch) as model:
            return self.per_image_of(arch, model)

    def per_image_of(self, arch: Arch, model: nn.Module) -> PerImage:
        """The outcome on every image of the split of ``model``, ``arch``'s model from ``self.model(arch)``."""
        correct, losses, macs = [], [], []
        with torch.inference_mode():
            for x, y in self.batches():
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                logits = model(x).float()  # (B, num_classes)
                correct.append((logits.argmax(-1) == y).cpu())
                losses.append(F.cross_entropy(logits, y, reduction="none").cpu())
                if arch.data_dependent:
                    macs.append(batch_macs(model, x.shape[0]))
        return PerImage(torch.cat(correct), torch.cat(losses).double(), torch.cat(macs) if macs else None)

    def __call__(self, arch: Arch) -> Evaluation:
        key = arch.hash()
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        t0 = time.perf_counter()
        out = self.per_image(arch)
        ev = evaluation(arch, out, seconds=time.perf_counter() - t0)
        self.cache[key] = ev
        return ev

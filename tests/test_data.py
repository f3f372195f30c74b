"""nas.data: deterministic, disjoint, stratified splits; conversions; ImageFolder; seeded loaders; errors."""
from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nas.data import (IMAGENET_MEAN, IMAGENET_STD, MNIST_MEAN, MNIST_STD, EpochSampler, _mnist_pool,
                      epoch_order, holdout_count, load_data, make_loader, synthetic_pool)
from nas.errors import NasError


def _counts(ds) -> Counter:
    return Counter(ds.targets)


# ------------------------------------------------------------------------------------------- builtin MNIST


def test_builtin_split_sizes_balance_and_disjointness():
    d = load_data("builtin", img_size=28, in_chans=1, seed=0, holdout=0.1)
    assert d.num_classes == 10 and d.classes == tuple(str(i) for i in range(10))
    # 5,000 = 500/class: val 100/class first, then 10% of the remaining 400/class = 40/class held out
    assert (len(d.train), len(d.search), len(d.val)) == (3600, 400, 1000)
    assert _counts(d.train) == {c: 360 for c in range(10)}
    assert _counts(d.search) == {c: 40 for c in range(10)}
    assert _counts(d.val) == {c: 100 for c in range(10)}
    tr, se, va = set(d.train.indices), set(d.search.indices), set(d.val.indices)
    assert not (tr & se) and not (tr & va) and not (se & va)
    assert tr | se | va == set(range(5000))
    rec = d.split_record()
    assert json.loads(json.dumps(rec)) == rec
    assert rec["sizes"] == {"train": 3600, "search": 400, "val": 1000}
    assert rec["members"]["search"] == d.search.indices and rec["members"]["val"] == d.val.indices
    assert rec["members"]["train"] is None  # = the rest of the pool
    assert rec["sha256"]["search"] == hashlib.sha256("\n".join(map(str, d.search.indices)).encode()).hexdigest()
    assert (rec["spec"], rec["seed"], rec["holdout"], rec["val_fraction"]) == ("builtin", 0, 0.1, 0.2)


def test_builtin_split_is_deterministic_and_val_independent_of_seed():
    a = load_data("mnist", 28, 1, seed=3).split_record()
    b = load_data("mnist", 28, 1, seed=3).split_record()
    c = load_data("mnist", 28, 1, seed=4).split_record()
    assert a == b
    assert a["members"]["search"] != c["members"]["search"]  # search depends on the seed
    assert a["members"]["val"] == c["members"]["val"]  # the final evaluation set does not


def test_builtin_items_are_converted_exactly():
    images, labels = _mnist_pool()
    assert images.shape == (5000, 1, 28, 28) and images.dtype == torch.uint8
    d = load_data("builtin", 28, 1)
    x, y = d.val[7]
    j = d.val.indices[7]
    assert x.shape == (1, 28, 28) and y == int(labels[j])
    torch.testing.assert_close(x, (images[j].float() / 255 - MNIST_MEAN[0]) / MNIST_STD[0])
    # grayscale replicated to 3 channels, ImageNet-normalised per channel
    x3, _ = load_data("builtin", 28, 3).val[7]
    raw = x3 * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    for ch in range(3):
        torch.testing.assert_close(raw[ch], images[j, 0].float() / 255, atol=1e-6, rtol=0)


def test_resize_matches_pil_bilinear_upsampling():
    images, _ = _mnist_pool()
    d = load_data("builtin", 56, 1)
    x, _ = d.train[0]
    j = d.train.indices[0]
    ref = Image.fromarray(images[j, 0].numpy()).resize((56, 56), Image.BILINEAR)  # uint8, rounded
    ref = torch.from_numpy(np.asarray(ref, dtype=np.float32)) / 255
    got = x[0] * MNIST_STD[0] + MNIST_MEAN[0]
    assert x.shape == (1, 56, 56)
    assert (got - ref).abs().max() < 1.5 / 255


def test_limit_gives_deterministic_class_balanced_subsets():
    d = load_data("builtin", 16, 1, seed=1, limit={"train": 50, "val": 20})
    assert (len(d.train), len(d.search), len(d.val)) == (50, 400, 20)
    assert _counts(d.train) == {c: 5 for c in range(10)} and _counts(d.val) == {c: 2 for c in range(10)}
    full = load_data("builtin", 16, 1, seed=1)
    assert set(d.train.indices) <= set(full.train.indices) and set(d.val.indices) <= set(full.val.indices)
    rec = d.split_record()
    assert rec["members"]["train"] == d.train.indices and rec["limit"] == {"train": 50, "search": None, "val": 20}
    assert rec == load_data("builtin", 16, 1, seed=1, limit={"train": 50, "val": 20}).split_record()
    other = load_data("builtin", 16, 1, seed=2, limit=20)
    assert other.val.indices == d.val.indices  # val subset is seed-independent
    assert _counts(other.search) == {c: 2 for c in range(10)}


# ----------------------------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_balanced_and_learnable():
    a = load_data("synthetic:200", 16, 3, seed=5)
    b = load_data("synthetic:200", 16, 3, seed=5)
    assert a.split_record() == b.split_record() and a.num_classes == 10
    torch.testing.assert_close(a.train[3][0], b.train[3][0])
    # 20/class: val 4/class, then round(0.1 * 16) = 2/class held out, 14/class train
    assert (len(a.train), len(a.search), len(a.val)) == (140, 20, 40)
    assert _counts(a.search) == {c: 2 for c in range(10)}
    assert not set(a.train.indices) & set(a.search.indices) and not set(a.search.indices) & set(a.val.indices)
    # class signal: nearest class mean (from train) classifies the unseen val images far above chance (10%)
    xs = torch.stack([a.train[i][0] for i in range(len(a.train))]).flatten(1)
    ys = torch.tensor(a.train.targets)
    means = torch.stack([xs[ys == c].mean(0) for c in range(10)])
    assert torch.cdist(means, means).add(torch.eye(10) * 1e9).min() > 1.0  # class means differ
    xv = torch.stack([a.val[i][0] for i in range(len(a.val))]).flatten(1)
    acc = (torch.cdist(xv, means).argmin(1) == torch.tensor(a.val.targets)).float().mean()
    assert acc > 0.9
    images_other_seed, _ = synthetic_pool(200, 10, seed=6)
    assert not torch.equal(images_other_seed, synthetic_pool(200, 10, seed=5)[0])


def test_synthetic_classes_and_luminance():
    d = load_data("synthetic:30:3", 16, 1, seed=0)
    assert d.num_classes == 3 and d.classes == ("class0", "class1", "class2")
    images, _ = synthetic_pool(30, 3, seed=0)
    x, _ = d.train[0]
    rgb = images[d.train.indices[0]].float() / 255
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    assert x.shape == (1, 16, 16)
    torch.testing.assert_close(x[0] * MNIST_STD[0] + MNIST_MEAN[0], luma, atol=1e-6, rtol=0)


def test_holdout_count_rule():
    assert [holdout_count(n, 0.1) for n in (1, 2, 5, 14, 15, 400)] == [0, 1, 1, 1, 2, 40]
    assert holdout_count(10, 0.0) == 0 and holdout_count(10, 0.99) == 9


# --------------------------------------------------------------------------------------------- ImageFolder

COLORS = {"cat": (250, 10, 10), "dog": (10, 250, 10), "eel": (10, 10, 250)}


def _make_folder(root: Path, n_train: int = 5, n_val: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for part, n in (("train", n_train), ("val", n_val)):
        for cls, color in COLORS.items():
            (root / part / cls).mkdir(parents=True)
            for i in range(n):
                arr = np.clip(np.array(color) + rng.integers(-5, 6, (20, 24, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(root / part / cls / f"{cls}{i}.png")
    return root


def test_image_folder_loads_classes_sizes_channels(tmp_path):
    root = _make_folder(tmp_path / "data")
    d = load_data(str(root), img_size=16, in_chans=3, seed=0, holdout=0.2)
    assert d.classes == ("cat", "dog", "eel") and d.num_classes == 3
    # round(0.2 * 5) = 1 file per class held out
    assert (len(d.train), len(d.search), len(d.val)) == (12, 3, 6)
    assert _counts(d.search) == {0: 1, 1: 1, 2: 1}
    tr, se = set(d.train.files), set(d.search.files)
    assert not tr & se and all(f.startswith("train/") for f in tr | se)
    assert all(f.startswith("val/") for f in d.val.files)
    for ds in (d.train, d.search, d.val):
        x, y = ds[0]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
        assert ds.files[0].split("/")[1] == d.classes[y]
    # eval transform: deterministic, colour preserved (cat is red: R well above G, B after un-normalising)
    x1, y1 = d.val[0]
    torch.testing.assert_close(x1, d.val[0][0])
    raw = x1 * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    assert d.classes[y1] == "cat" and raw[0].mean() > 0.9 and raw[1:].mean() < 0.1
    gray = load_data(str(root), img_size=12, in_chans=1)
    assert gray.val[0][0].shape == gray.train[0][0].shape == (1, 12, 12)
    rec = d.split_record()
    assert json.loads(json.dumps(rec)) == rec and rec["kind"] == "imagefolder"
    assert rec["members"]["search"] == d.search.files and rec["members"]["val"] is None


def test_image_folder_split_is_deterministic_and_location_independent(tmp_path):
    root = _make_folder(tmp_path / "a", n_train=10)
    moved = tmp_path / "b"
    shutil.copytree(root, moved)
    a = load_data(str(root), 16, 3, seed=1).split_record()
    b = load_data(str(moved), 16, 3, seed=1).split_record()
    assert a["members"] == b["members"] and a["sha256"] == b["sha256"]
    assert a["members"]["search"] != load_data(str(root), 16, 3, seed=2).split_record()["members"]["search"]


# ------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("spec, match", [
    ("cifar10", "no such folder; expected 'builtin'"),
    ("synthetic:abc", r"synthetic\[:N\[:C\]\]"),
    ("synthetic:5:10", "N >= 3\\*C"),
])
def test_bad_specs(spec, match):
    with pytest.raises(NasError, match=match):
        load_data(spec, 16, 1)


def test_bad_folders(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(NasError, match="not a folder"):
        load_data(str(f), 16, 3)
    root = tmp_path / "r"
    (root / "train" / "cat").mkdir(parents=True)
    with pytest.raises(NasError, match=r"no val/ folder .* train/<class>/ and val/<class>/"):
        load_data(str(root), 16, 3)
    (root / "val").mkdir()
    with pytest.raises(NasError, match=r"class folder\(s\) train/cat hold no images"):
        load_data(str(root), 16, 3)
    empty = tmp_path / "e"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir()
    with pytest.raises(NasError, match="has no class folders"):
        load_data(str(empty), 16, 3)
    good = _make_folder(tmp_path / "g")
    shutil.rmtree(good / "val" / "eel")
    with pytest.raises(NasError, match=r"missing in val/: \['eel'\]"):
        load_data(str(good), 16, 3)


@pytest.mark.parametrize("kwargs, match", [
    ({"in_chans": 2}, "in_chans: expected 1 or 3"),
    ({"holdout": 1.0}, r"holdout: expected a fraction in \[0, 1\)"),
    ({"img_size": 0}, "img_size"),
    ({"limit": {"tain": 3}}, "unknown split"),
    ({"limit": 0}, "positive integer"),
])
def test_bad_arguments(kwargs, match):
    args = {"spec": "synthetic:30", "img_size": 16, "in_chans": 1} | kwargs
    with pytest.raises(NasError, match=match):
        load_data(**args)


# ------------------------------------------------------------------------------------------------ loaders


def _labels(n: int) -> torch.utils.data.TensorDataset:
    return torch.utils.data.TensorDataset(torch.arange(n))


def _order(loader) -> list[int]:
    return [int(i) for (b,) in loader for i in b]


def test_loader_order_is_a_pure_function_of_seed_and_epoch():
    ds = _labels(10)
    a, b = make_loader(ds, 4, shuffle=True, seed=7), make_loader(ds, 4, shuffle=True, seed=7)
    assert len(a) == 2  # drop_last defaults to shuffle
    a.set_epoch(0)
    e0 = _order(a)
    a.set_epoch(1)
    e1 = _order(a)
    a.set_epoch(2)
    b.set_epoch(2)
    assert _order(a) == _order(b)
    b.set_epoch(1)
    assert _order(b) == e1 != e0
    assert e1 == epoch_order(10, 7, 1).tolist()[:8]
    c = make_loader(ds, 4, shuffle=True, seed=8)
    c.set_epoch(1)
    assert _order(c) != e1
    b.set_epoch(1, skip_batches=1)  # mid-epoch resume: the rest of epoch 1
    assert len(b) == 1 and _order(b) == e1[4:]


def test_loader_batches_of_a_split():
    d = load_data("synthetic:30", 8, 3)
    x, y = next(iter(make_loader(d.train, 4, shuffle=True, seed=0)))
    assert x.shape == (4, 3, 8, 8) and y.dtype == torch.int64


def test_loader_without_shuffle_is_sequential_and_keeps_last_batch():
    loader = make_loader(_labels(10), 4, shuffle=False, seed=0)
    loader.set_epoch(3)
    assert len(loader) == 3 and _order(loader) == list(range(10))


def test_sampler_shards_cover_everything():
    shards = []
    for rank in range(3):
        s = EpochSampler(10, shuffle=True, seed=1, num_replicas=3, rank=rank)
        s.set_epoch(4)
        shards.append(list(s))
        assert len(s) == 4
    flat = sum(shards, [])
    assert set(flat) == set(range(10)) and len(flat) == 12  # padded by wrapping around


class _Noise(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.rand(())  # a stand-in for a random augmentation


def test_worker_seeds_follow_the_epoch():
    loader = make_loader(_Noise(), 4, shuffle=False, seed=0, num_workers=1)
    loader.set_epoch(1)
    first = next(iter(loader))
    loader.set_epoch(2)
    other = next(iter(loader))
    loader.set_epoch(1)
    torch.testing.assert_close(next(iter(loader)), first)
    assert not torch.equal(first, other)


def test_channels_rule_is_one_rule_shared_with_the_space_schema(tmp_path):
    """The data can feed 1 (grayscale) or 3 (RGB) channels; a space asking for 2 fails at validation, with its
    line, not later in the data pipeline."""
    from nas.arch import CHANNELS
    from nas.space import load_space

    assert CHANNELS == (1, 3)
    with pytest.raises(NasError, match="in_chans: expected 1 or 3"):
        load_data("synthetic:30", 16, 2)
    space = tmp_path / "s.yaml"
    space.write_text("name: s\ninput: {size: 16, channels: 2}\nnum_classes: 10\ntokenizer: {type: patch, "
                     "patch_size: 8}\nstages:\n- {dim: 16, heads: 2, cells: [basic]}\n")
    with pytest.raises(NasError) as e:
        load_space(space)
    assert (e.value.line, e.value.key) == (2, "input.channels") and "must be 1 or 3" in e.value.message


def test_synthetic_size_is_bounded_before_allocating():
    from nas.limits import MAX_SYNTHETIC

    with pytest.raises(NasError, match="allowed: at most 100,000"):
        load_data(f"synthetic:{MAX_SYNTHETIC + 1}", 16, 3)


def test_unreadable_image_is_reported_with_its_path_when_read(tmp_path, monkeypatch):
    """Folders above SCAN_MAX files are not scanned at start; a bad file then fails when a batch reads it."""
    monkeypatch.setattr("nas.data.SCAN_MAX", 0)
    for part in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / part / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / part / c / f"{i}.png")
    (tmp_path / "val" / "b" / "1.png").write_bytes(b"")
    d = load_data(str(tmp_path), 8, 3)
    with pytest.raises(NasError) as e:
        [d.val[i] for i in range(len(d.val))]
    bad = str(tmp_path.resolve() / "val" / "b" / "1.png")
    assert e.value.file == bad and "cannot read this image" in e.value.message
    with pytest.raises(NasError) as e:  # read in a worker process: still one line
        list(make_loader(d.val, batch_size=2, shuffle=False, num_workers=1))
    assert e.value.format().startswith(f"{bad}: cannot read this image") and "\n" not in e.value.format()

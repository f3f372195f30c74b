"""nas.data's IDX sets (``--data idx:DIR``, ``--data fashion-mnist``): the reader, the official split, the folder
lookup and every malformed file as a one-line error. The IDX files are small ones written here (60 training and 20
test images), never the Debian package's."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from nas.cli import main
from nas.data import (FASHION_MNIST_CLASSES, IDX_FILES, IDX_IMAGES, IDX_LABELS, convert_image, load_data, read_idx,
                      stratified_split)
from nas.errors import NasError

TRAIN_X, TRAIN_Y, TEST_X, TEST_Y = IDX_FILES


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 0x0000080D (D dimensions), the big-endian dimensions, the values."""
    return struct.pack(f">I{array.ndim}I", 0x0800 | array.ndim, *array.shape) + array.astype(np.uint8).tobytes()


def write(path: Path, content: bytes, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(content) if gz else content)
    return path


def idx_set(folder: Path, n_train: int = 60, n_test: int = 20, classes: int = 10, seed: int = 0,
            gz: tuple[bool, ...] = (True, False, False, True)) -> dict[str, np.ndarray]:
    """Four IDX files of random 28x28 images with balanced, shuffled labels; some gzip-compressed, some plain."""
    rng = np.random.default_rng(seed)
    arrays = {TRAIN_X: rng.integers(0, 256, (n_train, 28, 28)), TRAIN_Y: rng.permutation(np.arange(n_train) % classes),
              TEST_X: rng.integers(0, 256, (n_test, 28, 28)), TEST_Y: rng.permutation(np.arange(n_test) % classes)}
    for (name, array), packed in zip(arrays.items(), gz):
        write(folder / name, idx_bytes(array), packed)
    return {name: a.astype(np.uint8) for name, a in arrays.items()}


def one_line(e: pytest.ExceptionInfo) -> str:
    text = e.value.format()
    assert "\n" not in text and "Traceback" not in text, text
    return text


# ------------------------------------------------------------------------------------------------ the split


def test_idx_set_keeps_the_official_split_and_every_pixel(tmp_path):
    a = idx_set(tmp_path / "set")
    d = load_data(f"idx:{tmp_path / 'set'}", img_size=28, in_chans=1, seed=0, holdout=0.1)
    assert d.num_classes == 10 and d.classes == tuple(str(i) for i in range(10))
    # 6 training images per class: round(0.1 * 6) = 1 held out as search; val is the 20 test images
    assert (len(d.train), len(d.search), len(d.val)) == (50, 10, 20)
    assert sorted(d.search.targets) == list(range(10))
    tr, se = set(d.train.indices), set(d.search.indices)
    assert not tr & se and tr | se == set(range(60))
    assert d.val.indices == list(range(60, 80))  # the pool: training images, then test images in file order
    assert d.val.targets == a[TEST_Y].tolist()
    for ds in (d.train, d.search):
        assert ds.targets == a[TRAIN_Y][ds.indices].tolist()
        assert torch.equal(ds.images[ds.indices, 0], torch.from_numpy(a[TRAIN_X][ds.indices]))
    assert d.train.images.dtype == torch.uint8 and d.train.images.shape == (80, 1, 28, 28)
    x, y = d.val[3]
    expected = (torch.from_numpy(a[TEST_X][3]).float() / 255 - 0.1307) / 0.3081
    assert y == a[TEST_Y][3] and x.shape == (1, 28, 28)
    torch.testing.assert_close(x, expected[None])
    rec = d.split_record()
    assert (rec["kind"], rec["root"], rec["val_fraction"]) == ("idx", str((tmp_path / "set").resolve()), None)
    assert rec["members"]["val"] is None and rec["members"]["train"] is None  # all of t10k, all the rest
    assert rec["members"]["search"] == d.search.indices and set(rec["sha256"]) == {"train", "search", "val"}


def test_search_is_carved_like_the_builtin_data_and_val_never_moves(tmp_path):
    a = idx_set(tmp_path)
    keys = [str(i) for i in range(60)]
    for seed in (0, 1):
        d = load_data(f"idx:{tmp_path}", 28, 1, seed=seed, holdout=0.2)
        kept, held = stratified_split(a[TRAIN_Y].tolist(), keys, 0.2, seed, "search")
        assert (d.train.indices, d.search.indices) == (kept, held)
        assert d.val.indices == list(range(60, 80))
    assert load_data(f"idx:{tmp_path}", 28, 1, seed=0).split_record() != load_data(
        f"idx:{tmp_path}", 28, 1, seed=1).split_record()
    limited = load_data(f"idx:{tmp_path}", 28, 1, limit={"val": 10})
    assert sorted(limited.val.targets) == list(range(10))  # class-balanced subset of the test images
    assert limited.split_record()["members"]["val"] == limited.val.indices


def test_idx_images_take_the_builtin_conversion(tmp_path):
    a = idx_set(tmp_path)
    d = load_data(f"idx:{tmp_path}", 56, 3)
    x, _ = d.val[0]
    assert x.shape == (3, 56, 56)
    torch.testing.assert_close(x, convert_image(torch.from_numpy(a[TEST_X][0])[None], 56, 3))


def test_classes_are_the_label_numbers_up_to_the_largest(tmp_path):
    """EMNIST Letters style: labels 1..3, no 0; the class count is max + 1 and class '0' stays unused."""
    rng = np.random.default_rng(1)
    write(tmp_path / TRAIN_X, idx_bytes(rng.integers(0, 256, (12, 8, 8))))
    write(tmp_path / TRAIN_Y, idx_bytes(np.arange(12) % 3 + 1))
    write(tmp_path / TEST_X, idx_bytes(rng.integers(0, 256, (3, 8, 8))), gz=True)
    write(tmp_path / TEST_Y, idx_bytes(np.array([1, 2, 3])), gz=True)
    d = load_data(f"idx:{tmp_path}", 8, 1)
    assert d.num_classes == 4 and d.classes == ("0", "1", "2", "3") and d.val.targets == [1, 2, 3]


def test_gzip_is_told_by_content_and_plain_files_come_first(tmp_path):
    a = idx_set(tmp_path, gz=(False,) * 4)
    (tmp_path / f"{TRAIN_Y}.gz").write_bytes(b"stale, never read")  # the plain file is read
    (tmp_path / TEST_Y).rename(tmp_path / f"{TEST_Y}.gz")  # named .gz, already unpacked: still reads
    d = load_data(f"idx:{tmp_path}", 28, 1)
    assert d.val.targets == a[TEST_Y].tolist()
    assert read_idx(write(tmp_path / "x", idx_bytes(a[TEST_X]), gz=True), IDX_IMAGES).shape == (20, 28, 28)


def test_fashion_mnist_reads_nas_data_and_falls_back_to_the_debian_folder(tmp_path, monkeypatch):
    a = idx_set(tmp_path / "mine" / "fashion-mnist")
    monkeypatch.setenv("NAS_DATA", str(tmp_path / "mine"))
    monkeypatch.setattr("nas.data.FASHION_MNIST_DEBIAN", tmp_path / "debian")
    d = load_data("fashion-mnist", 28, 1)
    assert d.classes == FASHION_MNIST_CLASSES and d.classes[9] == "Ankle boot"
    assert d.split_record()["kind"] == "fashion-mnist" and d.val.targets == a[TEST_Y].tolist()
    assert d.split_record()["root"] == str((tmp_path / "mine" / "fashion-mnist").resolve())
    # the same set elsewhere: the same split, the same digests
    assert d.split_record()["sha256"] == load_data(f"idx:{tmp_path / 'mine' / 'fashion-mnist'}", 28, 1
                                                   ).split_record()["sha256"]
    idx_set(tmp_path / "debian", seed=1)
    (tmp_path / "mine" / "fashion-mnist" / TEST_X).unlink()  # incomplete: passed over
    d = load_data("FASHION-MNIST", 28, 1)
    assert d.split_record()["root"] == str((tmp_path / "debian").resolve())


def test_fashion_mnist_not_found_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr("nas.data.FASHION_MNIST_DEBIAN", tmp_path / "debian")
    monkeypatch.delenv("NAS_DATA", raising=False)
    with pytest.raises(NasError) as e:
        load_data("fashion-mnist", 28, 1)
    text = one_line(e)
    assert f"{tmp_path / 'debian'} (no such folder) ($NAS_DATA is not set)" in text
    assert "apt-get install dataset-fashion-mnist" in text and f"{TRAIN_X}.gz" in text
    idx_set(tmp_path / "nd" / "fashion-mnist")
    next((tmp_path / "nd" / "fashion-mnist").glob(f"{TEST_Y}*")).unlink()
    monkeypatch.setenv("NAS_DATA", str(tmp_path / "nd"))
    with pytest.raises(NasError) as e:
        load_data("fashion-mnist", 28, 1)
    assert f"{tmp_path / 'nd' / 'fashion-mnist'} (missing {TEST_Y}[.gz]) and {tmp_path / 'debian'}" in one_line(e)


def test_fashion_mnist_labels_must_be_its_ten_classes(tmp_path, monkeypatch):
    idx_set(tmp_path / "fashion-mnist", classes=11)
    monkeypatch.setenv("NAS_DATA", str(tmp_path))
    with pytest.raises(NasError) as e:
        load_data("fashion-mnist", 28, 1)
    assert "label 10 at position" in one_line(e) and "allowed: 0..9" in one_line(e)


# ------------------------------------------------------------------------------------------------- errors


def _missing_file(t: Path) -> str:
    idx_set(t)
    next(t.glob(f"{TEST_X}*")).unlink()
    return f"(missing {TEST_X}[.gz])"


def _bad_file(name: str, content: bytes, gz: bool = False) -> Callable[[Path], str]:
    def make(t: Path) -> str:
        idx_set(t, gz=(False,) * 4)
        (t / name).unlink()
        return str(write(t / name, content, gz))
    return make


def _truncated_gzip(t: Path) -> str:
    idx_set(t, gz=(True, False, False, False))
    path = t / f"{TRAIN_X}.gz"
    path.write_bytes(path.read_bytes()[:-2000])
    return str(path)


IMAGES = np.zeros((60, 28, 28), np.uint8)
LABELS = np.arange(60) % 10
ERRORS = {
    "missing_folder": (lambda t: str(t / "nowhere"), "(no such folder); expected the four IDX files"),
    "empty_folder": (lambda t: str(t), f"(missing {TRAIN_X}[.gz], {TRAIN_Y}[.gz], {TEST_X}[.gz], {TEST_Y}[.gz])"),
    "missing_one_file": (_missing_file, "each plain or gzip-compressed"),
    "labels_as_images": (_bad_file(TRAIN_X, idx_bytes(LABELS)), "magic number is 0x00000801 (an IDX labels file: "
                                                                "are the files swapped?), expected 0x00000803"),
    "not_idx_at_all": (_bad_file(TRAIN_Y, b"<html>404</html>", gz=True), "not an IDX labels file"),
    "empty_file": (_bad_file(TEST_Y, b""), "shorter than a magic number"),
    "truncated_header": (_bad_file(TRAIN_X, idx_bytes(IMAGES)[:10]), "truncated IDX header"),
    "truncated_pixels": (_bad_file(TRAIN_X, idx_bytes(IMAGES)[:-100]), "(47,040 bytes) but only 46,940 of them"),
    "truncated_gzip": (_truncated_gzip, "gzip stream ends early"),
    "bytes_after": (_bad_file(TRAIN_Y, idx_bytes(LABELS) + b"\0"), "more bytes follow them"),
    "count_mismatch": (_bad_file(TRAIN_Y, idx_bytes(LABELS[:59]), gz=True), f"60 images but {TRAIN_Y}.gz has 59"),
    "size_mismatch": (_bad_file(TEST_X, idx_bytes(np.zeros((20, 32, 32)))), "images of 32x32, those of"),
    "absurd_count": (_bad_file(TRAIN_X, struct.pack(">IIII", IDX_IMAGES, 2**32 - 1, 28, 28)),
                     "allowed: at most 1,000,000 images and 1,073,741,824 bytes of pixels"),
    "absurd_size": (_bad_file(TRAIN_X, struct.pack(">IIII", IDX_IMAGES, 2, 65535, 65535)), "bytes of pixels"),
    "no_images": (_bad_file(TEST_X, struct.pack(">IIII", IDX_IMAGES, 0, 28, 28)), "nothing to read"),
    "test_label_unknown": (_bad_file(TEST_Y, idx_bytes(np.full(20, 10))), "label 10 at position 0; allowed: 0..9"),
    "one_class": (_bad_file(TRAIN_Y, idx_bytes(np.zeros(60))), "at least 2 classes"),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_malformed_idx_sets_are_one_line_errors_naming_the_file(name, tmp_path):
    make, needle = ERRORS[name]
    where = make(tmp_path)
    with pytest.raises(NasError) as e:
        load_data(f"idx:{tmp_path / 'nowhere' if name == 'missing_folder' else tmp_path}", 28, 1)
    text = one_line(e)
    assert needle in text and Path(where).name in text, text


def test_a_name_the_os_refuses_is_a_one_line_error():
    for spec in ("idx:/" + "a" * 5000, "/" + "a" * 5000):  # ENAMETOOLONG from stat, for IDX and ImageFolder specs
        with pytest.raises(NasError, match="File name too long"):
            load_data(spec, 28, 1)


def test_a_hostile_header_allocates_nothing(tmp_path):
    """A 16-byte file announcing 1M images of 1024x1024 is refused from its header (no 1 TB read is tried)."""
    path = write(tmp_path / "x", struct.pack(">IIII", IDX_IMAGES, 10**6, 1024, 1024), gz=True)
    with pytest.raises(NasError, match="bytes of pixels"):
        read_idx(path, IDX_IMAGES)
    with pytest.raises(NasError, match="expected 0x00000801"):
        read_idx(path, IDX_LABELS)


# ---------------------------------------------------------------------------------------------------- CLI

SPACE = """\
name: four
input: {size: 16, channels: 1}
num_classes: 10
tokenizer: {type: patch, patch_size: 8}
stages:
- {dim: 16, heads: 2, mlp_ratio: {choice: [1, 2]}, cells: [{choice: [basic, identity]}]}
"""


@pytest.mark.parametrize("command", ["train-supernet", "flops"])
def test_cli_missing_idx_folder_is_one_line_exit_2(command, tmp_path, capsys):
    """Like tests/test_bad_input.py: exit code 2, one stderr line naming the folder, nothing written."""
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    arch = tmp_path / "arch.yaml"
    arch.write_text("format: nas-arch/1\n" + SPACE.replace("{choice: [1, 2]}", "2").replace(
        "[{choice: [basic, identity]}]", "[basic]").replace("name: four\n", ""))
    argv = (["train-supernet", str(space), "--data", "idx:/nonexistent", "--out", str(tmp_path / "run")]
            if command == "train-supernet" else ["flops", str(arch), "--data", "idx:/nonexistent", "--images", "4"])
    capsys.readouterr()
    code = main(argv)
    _, err = capsys.readouterr()
    assert code == 2 and err.startswith("nas: error: ") and err.count("\n") == 1, err
    assert "/nonexistent (no such folder)" in err and TRAIN_X in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_missing_image_folder_is_one_line_before_the_default_recipe_note(tmp_path, capsys):
    """The default-recipe note is printed only once the data is known to be there (ImageFolder as IDX)."""
    arch = Path(__file__).resolve().parents[1] / "spaces" / "reference" / "deit_small.yaml"
    capsys.readouterr()
    code = main(["retrain", str(arch), "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run")])
    _, err = capsys.readouterr()
    assert code == 2 and err.startswith("nas: error: ") and err.count("\n") == 1, err
    assert "no such folder" in err and not (tmp_path / "run").exists()

"""Malformed inputs other than spaces (those are tests/space/malformed/): arch files, recipes, data folders,
weights files and command-line flags.

Every case runs the real CLI in-process and must end with exit code 2 and exactly one line on stderr that names
the file (or the flag) at fault and what is allowed, with no traceback and no internal repr, and must write
nothing outside the folder the command was told to write into.
"""
from __future__ import annotations

import pickle
import struct
import zlib
from pathlib import Path
from typing import Callable

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file, save_model

from nas.cli import main
from nas.models import build_model
from nas.space import load_arch

ARCH = """\
format: nas-arch/1
input: {size: 16, channels: 3}
num_classes: 10
tokenizer: {type: patch, patch_size: 8}
stages:
- {dim: 16, heads: 2, mlp_ratio: 2, cells: [basic]}
"""
SPACE = """\
name: four
input: {size: 16, channels: 3}
num_classes: 10
tokenizer: {type: patch, patch_size: 8}
stages:
- {dim: 16, heads: 2, mlp_ratio: {choice: [1, 2]}, cells: [{choice: [basic, identity]}]}
"""
DATA = "synthetic:30"  # 10 classes, the smallest synthetic set


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def arch_file(tmp: Path, text: str = ARCH, name: str = "arch.yaml") -> str:
    return write(tmp / name, text)


def png(path: Path, size: int = 8, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
    Image.fromarray(pixels).save(path)
    return path


def image_folder(tmp: Path, per_class: int = 4) -> Path:
    root = tmp / "images"
    for part in ("train", "val"):
        for c in ("cat", "dog"):
            for i in range(per_class):
                png(root / part / c / f"{i}.png", seed=hash((part, c, i)) % 1000)
    return root


def png_bomb(path: Path) -> Path:
    """A 30000 x 30000 PNG header (900M pixels) with no pixels: PIL refuses it as a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def weights_of(tmp: Path, text: str, name: str, **meta: str) -> str:
    path = tmp / name
    save_model(build_model(load_arch(arch_file(tmp, text, name + ".yaml"))), str(path), metadata=meta or None)
    return str(path)


# Each case: tmp -> (argv, what the error line must name, what it must say, the folder it may write into).
Case = Callable[[Path], tuple[list[str], str, str, "str | None"]]


def _flops_data(tmp: Path, data: str) -> list[str]:
    return ["flops", arch_file(tmp), "--data", data, "--images", "4"]


def _weights(tmp: Path, weights: str) -> list[str]:
    return ["flops", arch_file(tmp), "--data", DATA, "--images", "4", "--weights", weights]


def _train(tmp: Path, recipe_text: str | None = None, data: str = "synthetic:64", space: str = SPACE) -> list[str]:
    argv = ["train-supernet", write(tmp / "space.yaml", space), "--data", data, "--out", str(tmp / "run")]
    if recipe_text is not None:
        argv += ["--recipe", write(tmp / "recipe.yaml", recipe_text)]
    return argv


def _truncated_png(tmp: Path) -> tuple[list[str], str, str, None]:
    root = image_folder(tmp)
    bad = root / "train" / "dog" / "2.png"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    return _flops_data(tmp, str(root)), str(bad), "cannot read this image", None


def _image_case(tmp: Path, content: bytes | None, needle: str) -> tuple[list[str], str, str, None]:
    root = image_folder(tmp)
    bad = root / "train" / "cat" / "3.png"
    if content is None:
        png_bomb(bad)
    else:
        bad.write_bytes(content)
    return _flops_data(tmp, str(root)), str(bad), needle, None


def _missing_val(tmp: Path) -> tuple[list[str], str, str, None]:
    root = image_folder(tmp)
    for p in sorted((root / "val").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (root / "val").rmdir()
    return _flops_data(tmp, str(root)), str(root), "no val/ folder", None


def _empty_class(tmp: Path) -> tuple[list[str], str, str, None]:
    root = image_folder(tmp)
    (root / "train" / "emu").mkdir()
    (root / "val" / "emu").mkdir()
    return _flops_data(tmp, str(root)), "train/emu", "hold no images", None


def _class_mismatch(tmp: Path) -> tuple[list[str], str, str, None]:
    root = image_folder(tmp)
    png(root / "val" / "emu" / "0.png")
    return _flops_data(tmp, str(root)), str(root), "must hold the same class folders", None


def _wrong_shapes(tmp: Path) -> tuple[list[str], str, str, None]:
    w = weights_of(tmp, ARCH.replace("dim: 16", "dim: 24"), "wide.safetensors")
    return _weights(tmp, w), w, "with another shape (tokenizer.cls_token: file [1, 1, 24], the arch [1, 1, 16]", None


def _wrong_keys(tmp: Path) -> tuple[list[str], str, str, None]:
    w = weights_of(tmp, ARCH.replace("cells: [basic]", "cells: [basic, basic]"), "deep.safetensors")
    return _weights(tmp, w), w, "not in the arch (stages.0.cells.1.", None


def _supernet_weights(tmp: Path) -> tuple[list[str], str, str, None]:
    w = tmp / "supernet.safetensors"
    save_file({"blocks.0.weight": torch.zeros(2, 2)}, str(w), metadata={"space_hash": "0123456789abcdef"})
    needle = "weights of a supernet of space hash 0123456789abcdef: an arch's weights are sliced out"
    return _weights(tmp, str(w)), str(w), needle, None


def _truncated_weights(tmp: Path) -> tuple[list[str], str, str, None]:
    w = Path(weights_of(tmp, ARCH, "good.safetensors"))
    w.write_bytes(w.read_bytes()[:-64])
    return _weights(tmp, str(w)), str(w), "corrupt safetensors file", None


def _blob(tmp: Path, name: str, content: bytes) -> str:
    path = tmp / name
    path.write_bytes(content)
    return str(path)


def _torch_zip(tmp: Path) -> tuple[list[str], str, str, None]:
    path = tmp / "model.pth"
    torch.save({"w": torch.zeros(2)}, path)
    return _weights(tmp, str(path)), str(path), "as written by torch.save", None


def _existing_file_out(tmp: Path, command: str) -> tuple[list[str], str, str, str]:
    out = tmp / "taken"
    out.write_text("not a folder\n")
    space = write(tmp / "space.yaml", SPACE)
    argv = (["space", "sample", space, "-n", "2", "--out", str(out)] if command == "sample" else
            ["train-supernet", space, "--data", "synthetic:64", "--out", str(out)])
    return argv, str(out), "--out names an existing file", str(out)


def _out_under_file(tmp: Path) -> tuple[list[str], str, str, str]:
    (tmp / "taken").write_text("x\n")
    out = tmp / "taken" / "run"
    return (["train-supernet", write(tmp / "space.yaml", SPACE), "--data", "synthetic:64", "--out", str(out)],
            str(out), "which is a file", str(out))


def _fake_run(tmp: Path) -> str:
    """A run directory whose run.json lacks a key (edited by hand)."""
    run = tmp / "run"
    write(run / "run.json", '{"format": "nas-supernet-run/1", "space": {"name": "x", "file": "s.yaml"}}')
    return str(run)


def _run_with_weights(tmp: Path, content: bytes) -> str:
    """A complete run directory (run.json, space.yaml, recipe.yaml agree) whose supernet.safetensors is ``content``."""
    import json

    import yaml

    from nas.space import load_space
    from nas.train.recipe import Recipe, load_recipe

    run = tmp / "run"
    space = load_space(write(run / "space.yaml", SPACE))
    recipe = load_recipe(write(run / "recipe.yaml", yaml.safe_dump(Recipe().to_dict(), sort_keys=False)))
    info = {"format": "nas-supernet-run/1", "space": {"name": space.name, "file": "space.yaml", "hash": space.hash},
            "recipe": {"name": recipe.name, "file": None, "hash": recipe.hash()},
            "data": {"spec": DATA, "sha256": {}}, "space_overrides": {}}
    write(run / "run.json", json.dumps(info))
    (run / "supernet.safetensors").write_bytes(content)
    return str(run)


def _space_file(tmp: Path) -> str:
    return write(tmp / "space.yaml", SPACE)


# --- output folders, bounds and run files of the newer commands (issue 17) ---------------------------------------
LONG_NAME = "a" * 300        # above any file system's NAME_MAX (255 on Linux and macOS)
OUT_COMMANDS = ("search", "retrain", "train-supernet", "rank-check", "viz")


def _with_out(tmp: Path, command: str, out: str) -> list[str]:
    """``command`` with valid-looking other arguments and ``--out out``: the folder is checked before any of them."""
    first = {"search": [_space_file(tmp), "--flops", "1G"], "retrain": [arch_file(tmp), "--data", DATA],
             "train-supernet": [_space_file(tmp), "--data", DATA], "rank-check": [str(tmp / "sn"), "-n", "3"],
             "viz": [arch_file(tmp)]}[command]
    return [command, *first, "--out", out]


def _seed_huge(tmp: Path, command: str) -> list[str]:
    first = {"search": [_space_file(tmp)], "space": ["sample", _space_file(tmp)], "flops": [arch_file(tmp)],
             "rank-check": [str(tmp / "sn")], "viz": [arch_file(tmp)]}[command]
    return [command, *first, "--seed", str(2**70)]


def _run_json_edited(tmp: Path, edit: Callable[[dict], None]) -> str:
    """A complete supernet run directory (``_run_with_weights``) whose run.json is then ``edit``ed."""
    import json
    run = Path(_run_with_weights(tmp, b"not weights\n"))
    info = json.loads((run / "run.json").read_text())
    edit(info)
    (run / "run.json").write_text(json.dumps(info))
    return str(run)


def _sha256_text(info: dict) -> None:
    info["data"]["sha256"] = "abc"


def _recipe_list(info: dict) -> None:
    info["recipe"] = ["x"]


def _viz_output_is_a_folder(tmp: Path) -> tuple[list[str], str, str, str]:
    from tests.test_viz import write_run
    write_run(tmp / "run")
    (tmp / "run" / "viz" / "pareto.png").mkdir(parents=True)
    return ["viz", str(tmp / "run")], "viz/pareto.png", "a folder has this file's name", str(tmp / "run" / "viz")


CASES: dict[str, Case] = {
    # --- arch files ----------------------------------------------------------------------------------
    "arch_without_format": lambda t: (["flops", arch_file(t, ARCH.replace("format: nas-arch/1\n", ""))],
                                      "arch.yaml:1", "an arch file starts with 'format: nas-arch/1'", None),
    "arch_wrong_format": lambda t: (["flops", arch_file(t, ARCH.replace("arch/1", "arch/2"))], "arch.yaml:1: format",
                                    "expected one of nas-arch/1", None),
    "arch_with_choice": lambda t: (["flops", arch_file(t, ARCH.replace("dim: 16", "dim: {choice: [16, 32]}"))],
                                   "arch.yaml:6: stages[0].dim", "choices are not allowed in an arch file", None),
    "arch_unsafe_name": lambda t: (["flops", arch_file(t, ARCH + "name: ../../x\n")], "arch.yaml:7: name",
                                   "allowed: 1 to 64 characters", None),
    "arch_channels_two": lambda t: (["flops", arch_file(t, ARCH.replace("channels: 3", "channels: 2"))],
                                    "arch.yaml:2: input.channels", "channels must be 1 or 3", None),
    "arch_bad_score": lambda t: (["flops", arch_file(t, ARCH + "provenance: {score: high}\n")],
                                 "arch.yaml:7: provenance.score", "expected a number, got a string 'high'", None),
    "arch_top_level_list": lambda t: (["flops", arch_file(t, "- format: nas-arch/1\n")], "arch.yaml:1",
                                      "expected a mapping of keys at the top level", None),
    "arch_huge_dim_measured": lambda t: (["flops", arch_file(t, ARCH.replace("dim: 16", "dim: 10000000")), "--data",
                                          DATA], "arch.yaml", "of float32 weights), more than the", None),
    "arch_huge_tokens_measured": lambda t: (["flops", arch_file(t, ARCH.replace("size: 16", "size: 4096").replace(
        "patch_size: 8", "patch_size: 1")), "--data", DATA], "arch.yaml", "MACs per image, above the limit", None),
    # --- recipes -------------------------------------------------------------------------------------
    "recipe_list_for_mapping": lambda t: (_train(t, "optimizer: [sgd, 0.1]\n"), "recipe.yaml:1: optimizer",
                                          "expected a mapping (optimizer), got a list", None),
    "recipe_overrides_list": lambda t: (_train(t, "space_overrides: [a, b]\n"), "recipe.yaml:1: space_overrides",
                                        "got a list [a, b]", None),
    "recipe_betas_scalar": lambda t: (_train(t, "optimizer: {name: adamw, betas: 0.9}\n"),
                                      "recipe.yaml:1: optimizer.betas", "expected two numbers", None),
    "recipe_limit_list": lambda t: (_train(t, "data: {limit: [1, 2]}\n"), "recipe.yaml:1: data.limit",
                                    "expected an integer, got a list [1, 2]", None),
    "recipe_key_typo": lambda t: (_train(t, "epoch: 3\n"), "recipe.yaml:1: epoch", "did you mean 'epochs'?", None),
    "recipe_epochs_overflow": lambda t: (_train(t, "epochs: 1e400\n"), "recipe.yaml:1: epochs", "too large", None),
    "recipe_alias_bomb": lambda t: (_train(t, "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))),
        "recipe.yaml", "expands to more than 20,000 values", None),
    "recipe_is_a_folder": lambda t: (_train(t, None) + ["--recipe", str(t)], str(t), "is a folder", None),
    "recipe_override_missing_path": lambda t: (_train(t, "space_overrides:\n  stages[3].dim: 8\n"),
                                               "recipe.yaml:2: space_overrides.stages[3].dim", "is not in the file", None),
    "recipe_override_huge_dim": lambda t: (_train(t, "space_overrides:\n  stages[0].dim: 10000000\n"), "space.yaml",
                                           "with the recipe's space_overrides) has", None),
    # --- data ----------------------------------------------------------------------------------------
    "data_truncated_png": _truncated_png,
    "data_text_as_png": lambda t: _image_case(t, b"hello, not an image\n", "not an image file"),
    "data_empty_png": lambda t: _image_case(t, b"", "cannot read this image"),
    "data_decompression_bomb": lambda t: _image_case(t, None, "decompression bomb"),
    "data_missing_val": _missing_val,
    "data_empty_class": _empty_class,
    "data_class_mismatch": _class_mismatch,
    "data_file_not_folder": lambda t: (_flops_data(t, write(t / "data.txt", "x\n")), "data.txt", "not a folder", None),
    "data_missing_folder": lambda t: (_flops_data(t, str(t / "nowhere")), "nowhere", "no such folder", None),
    "data_synthetic_huge": lambda t: (_flops_data(t, "synthetic:1000000000"), "synthetic:1000000000",
                                      "allowed: at most 100,000", None),
    "data_synthetic_garbage": lambda t: (_flops_data(t, "synthetic:lots"), "synthetic:lots",
                                         "expected 'synthetic[:N[:C]]'", None),
    "data_synthetic_one_class": lambda t: (_flops_data(t, "synthetic:30:1"), "synthetic:30:1", "needs C >= 2", None),
    # --- weights -------------------------------------------------------------------------------------
    "weights_missing": lambda t: (_weights(t, str(t / "none.safetensors")), "none.safetensors", "no such file", None),
    "weights_empty": lambda t: (_weights(t, _blob(t, "empty.safetensors", b"")), "empty.safetensors", "empty", None),
    "weights_text": lambda t: (_weights(t, _blob(t, "w.safetensors", b"weights: yes\n")), "w.safetensors",
                               "a text file, not safetensors", None),
    "weights_pickle": lambda t: (_weights(t, _blob(t, "w.pkl", pickle.dumps({"w": 1}, protocol=4))), "w.pkl",
                                 "a Python pickle (never loaded", None),
    "weights_torch_save": _torch_zip,
    "weights_folder": lambda t: (_weights(t, str(t)), str(t), "is a folder", None),
    "weights_random_bytes": lambda t: (_weights(t, _blob(t, "w.bin", bytes(range(7, 255)) * 4)), "w.bin",
                                       "not a safetensors file", None),
    "weights_bad_header_json": lambda t: (_weights(t, _blob(t, "w.st", struct.pack("<Q", 4) + b"{{{{")), "w.st",
                                          "header is not JSON", None),
    "weights_wrong_shapes": _wrong_shapes,
    "weights_wrong_keys": _wrong_keys,
    "weights_of_a_supernet": _supernet_weights,
    "weights_truncated": _truncated_weights,
    # --- command-line flags --------------------------------------------------------------------------
    "flag_n_zero": lambda t: (["space", "sample", _space_file(t), "-n", "0"], "argument -n", "in [1, 10,000], got 0", None),
    "flag_n_negative": lambda t: (["space", "sample", _space_file(t), "-n", "-1"], "argument -n", "got -1", None),
    "flag_n_huge": lambda t: (["space", "sample", _space_file(t), "-n", "100000000000", "--out", str(t / "o")],
                              "argument -n", "in [1, 10,000]", str(t / "o")),
    "flag_n_above_space_size": lambda t: (["space", "sample", _space_file(t), "-n", "5", "--out", str(t / "o")],
                                          "space.yaml", "the space 'four' has 4; allowed: 1..4", str(t / "o")),
    "flag_n_not_a_number": lambda t: (["space", "sample", _space_file(t), "-n", "many"], "argument -n",
                                      "expected an integer, got 'many'", None),
    "flag_images_zero": lambda t: (_flops_data(t, DATA)[:-1] + ["0"], "argument --images", "must be an integer >= 1", None),
    "flag_debug_after_command": lambda t: (["space", "validate", _space_file(t), "--debug", "--bogus"],
                                           "unrecognized arguments: --bogus", "see 'nas --help'", None),
    "flag_no_command": lambda t: ([], "missing command", "choose one of: space, flops", None),
    "flag_space_no_action": lambda t: (["space"], "missing action", "choose one of: validate, show, sample", None),
    "flag_weights_without_data": lambda t: (["flops", arch_file(t), "--weights", "w.safetensors"], "--weights",
                                            "add --data D or drop --weights", None),
    "flag_sample_out_is_a_file": lambda t: _existing_file_out(t, "sample"),
    "flag_train_out_is_a_file": lambda t: _existing_file_out(t, "train"),
    "flag_train_out_under_a_file": _out_under_file,
    "flag_sample_out_under_a_file": lambda t: (["space", "sample", _space_file(t), "--out", write(t / "f", "x") + "/o"],
                                               "f/o", "which is a file", None),
    "flag_nul_in_out": lambda t: (["space", "sample", _space_file(t), "--out", "a\0b"], "argument --out", "NUL byte", None),
    "flag_weights_and_supernet": lambda t: (_weights(t, "w.safetensors") + ["--supernet", str(t)], "--supernet",
                                            "not both", None),
    "flag_eval_batch_size_zero": lambda t: (["eval", arch_file(t), "--supernet", str(t), "--batch-size", "0"],
                                            "argument --batch-size", "must be an integer >= 1", None),
    "run_not_a_run": lambda t: (["eval", arch_file(t), "--supernet", str(t / "nowhere")], "nowhere",
                                "not a supernet run directory", None),
    "run_json_missing_keys": lambda t: (["eval", arch_file(t), "--supernet", _fake_run(t)], "run.json: space.hash",
                                        "run.json has no 'space.hash'", None),
    "run_weights_text": lambda t: (["eval", arch_file(t), "--supernet", _run_with_weights(t, b"not weights\n")],
                                   "supernet.safetensors", "a text file, not safetensors weights", None),
    "run_weights_pickle": lambda t: (["flops", arch_file(t), "--supernet", _run_with_weights(t, pickle.dumps([1]))],
                                     "supernet.safetensors", "a Python pickle (never loaded", None),
    "flag_data_of_a_space": lambda t: (["flops", _space_file(t), "--data", DATA], "space.yaml",
                                       "give an arch file, not a space", None),
    **{f"flag_out_name_too_long_{c}": (lambda t, c=c: (_with_out(t, c, str(t / LONG_NAME)), "--out has a name of 300 "
                                                         "bytes", "per name: give a shorter --out", None))
       for c in OUT_COMMANDS},
    **{f"flag_out_path_too_long_{c}": (lambda t, c=c: (_with_out(t, c, str(t / ("abcdefghi/" * 500))), "--out is a "
                                                         "path of", "give a shorter --out (at most", None))
       for c in OUT_COMMANDS},
    **{f"flag_out_is_a_file_{c}": (lambda t, c=c: (_with_out(t, c, write(t / "taken", "x\n")), "taken",
                                                     "--out names an existing file", None))
       for c in ("rank-check", "viz", "search", "retrain")},
    "flag_viz_out_under_a_file": lambda t: (_with_out(t, "viz", write(t / "f", "x\n") + "/o"), "f/o", "which is a file",
                                            None),
    **{f"flag_seed_huge_{c}": (lambda t, c=c: (_seed_huge(t, c), "argument --seed",
                                               "in [0, 9,223,372,036,854,775,807], got 1180591620717411303424", None))
       for c in ("search", "space", "flops", "rank-check", "viz")},
    "flag_seed_negative": lambda t: (_seed_huge(t, "viz")[:-1] + ["-1"], "argument --seed", "got -1", None),
    "flag_rank_n_huge": lambda t: (["rank-check", str(t / "sn"), "-n", "100000000"], "argument -n",
                                   "in [3, 1,000], got 100000000", None),
    "flag_rank_n_two": lambda t: (["rank-check", str(t / "sn"), "-n", "2"], "argument -n", "got 2", None),
    "flag_rank_seeds_huge": lambda t: (["rank-check", str(t / "sn"), "--seeds", "1000000"], "argument --seeds",
                                       "in [1, 100]", None),
    "flag_rank_seeds_zero": lambda t: (["rank-check", str(t / "sn"), "--seeds", "0"], "argument --seeds", "got 0", None),
    "flag_rank_workers_huge": lambda t: (["rank-check", str(t / "sn"), "--workers", "100000"], "argument --workers",
                                         "got 100000", None),
    "run_json_sha256_not_a_mapping_eval": lambda t: (["eval", arch_file(t), "--supernet", _run_json_edited(t, _sha256_text)],
                                                     "run.json: data.sha256", "expected a mapping (split -> digest), "
                                                     "got a string", None),
    "run_json_recipe_a_list": lambda t: (["eval", arch_file(t), "--supernet", _run_json_edited(t, _recipe_list)],
                                         "run.json: recipe", "expected a mapping, got a list", None),
    "run_history_is_a_folder": lambda t: (["viz", str((t / "run" / "history.csv").mkdir(parents=True) or t / "run")],
                                          "run/history.csv", "history.csv is a folder", None),
    "run_viz_output_is_a_folder": _viz_output_is_a_folder,
}


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing_outside(name: str, tmp_path: Path, capsys, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # a default run directory (runs/...) would land here, and fail the check below
    argv, names, needle, out = CASES[name](tmp_path)
    capsys.readouterr()
    before = _snapshot(tmp_path)
    code = main(argv)
    stdout, err = capsys.readouterr()
    assert code == 2, (stdout, err)
    assert err.startswith("nas: error: ") and err.count("\n") == 1, err
    assert names in err and needle in err, err
    assert "Traceback" not in err and "Node(" not in err
    changed = {p for p, stat in _snapshot(tmp_path).items() if before.get(p) != stat}
    outside = {p for p in changed if out is None or not (p == out or p.startswith(out + "/"))}
    assert not outside, f"written outside {out}: {sorted(outside)}"


def test_corpus_covers_every_kind():
    kinds = {name.split("_")[0] for name in CASES}
    assert kinds == {"arch", "recipe", "data", "weights", "flag", "run"} and len(CASES) >= 80

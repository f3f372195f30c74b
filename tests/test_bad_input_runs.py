"""A failed start never poisons a run directory: after each way a start can fail (batch size, device, memory, model
build, the first images, a diverging first step, ``--out`` naming a file), the corrected command succeeds on the
same ``--out``. A committed run with a broken run.json or without its checkpoints is refused, not restarted.

Tiny on purpose: 16x16 synthetic images, width 16, one or two steps.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from nas.cli import main
from nas.errors import NasError
from nas.train import train_supernet
from tests.helpers import EVAL_RECIPE, RANK_SPACE

SPACE = """\
name: tiny
input: {size: 16, channels: 3}
num_classes: 10
tokenizer: {type: patch, patch_size: 8}
stages:
  - {dim: 16, heads: 2, mlp_ratio: 2, cells: {repeat: 2, choice: [basic, identity]}}
"""
GOOD = "epochs: 1\nbatch_size: 32\nlabel_smoothing: 0\noptimizer: {lr: 0.01}\ndevice: cpu\n"  # 44 images: 1 step
DATA = "synthetic:64"


@pytest.fixture()
def run(tmp_path: Path, capsys):
    """``run(recipe_text, data=..., out=...)`` -> (exit code, stderr) of ``nas train-supernet`` on the tiny space."""
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)

    def call(recipe: str, data: str = DATA, out: Path | None = None) -> tuple[int, str]:
        (tmp_path / "recipe.yaml").write_text(recipe)
        capsys.readouterr()
        code = main(["train-supernet", str(space), "--data", data, "--recipe", str(tmp_path / "recipe.yaml"),
                     "--out", str(out or tmp_path / "run")])
        err = capsys.readouterr().err
        return code, err
    return call


def error_line(err: str) -> str:
    """The one error line (a progress bar or a note may precede it on stderr); no traceback."""
    lines = [line for line in err.splitlines() if "nas: error: " in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0][lines[0].index("nas: error: "):]


def _fails_then_succeeds(run, tmp_path: Path, bad: str, good: str, needle: str, **kw) -> None:
    code, err = run(bad, **kw)
    assert code == 2 and needle in error_line(err), err
    assert not (tmp_path / "run" / "run.json").exists()  # nothing committed: nothing to refuse
    code, err = run(good, **kw)
    assert code == 0, err
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (tmp_path / "run" / "supernet.safetensors").exists() and info["format"] == "nas-supernet-run/1"


def test_batch_size_too_large_then_corrected(run, tmp_path):
    _fails_then_succeeds(run, tmp_path, GOOD.replace("batch_size: 32", "batch_size: 64"), GOOD,
                         "batch_size 64 is larger than the 44 training images")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_device_then_corrected(run, tmp_path):
    _fails_then_succeeds(run, tmp_path, GOOD.replace("device: cpu", "device: cuda"), GOOD,
                         "device cuda was asked for but torch sees no CUDA device")


def test_model_too_large_for_memory_then_corrected(run, tmp_path):
    _fails_then_succeeds(run, tmp_path, GOOD + "space_overrides:\n  stages[0].dim: 10000000\n", GOOD,
                         "of float32 weights), more than the")


def test_diverging_first_step_then_corrected(run, tmp_path):
    """Step 1 goes through (the loss is computed before the first update), step 2 diverges: still no commit."""
    bad = GOOD.replace("lr: 0.01", "lr: 1e30").replace("batch_size: 32", "batch_size: 8")
    _fails_then_succeeds(run, tmp_path, bad, GOOD, "lower the learning rate")


def test_model_build_failure_then_corrected(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    (tmp_path / "recipe.yaml").write_text(GOOD)

    def no_memory(space, **kwargs):
        raise MemoryError("cannot allocate the supernet")

    kw = dict(data=DATA, recipe=tmp_path / "recipe.yaml", out=tmp_path / "run", progress=False)
    with pytest.raises(MemoryError):
        train_supernet(tmp_path / "space.yaml", build=no_memory, **kw)
    assert not (tmp_path / "run" / "run.json").exists()
    assert train_supernet(tmp_path / "space.yaml", **kw).steps == 1


def _image_folder(root: Path) -> Path:
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for part, n in (("train", 10), ("val", 2)):
        for c in ("a", "b"):
            (root / part / c).mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (16, 16, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(root / part / c / f"{i}.png")
    return root


@pytest.mark.parametrize("when", ["scan", "first_step"])
def test_unreadable_first_images_then_fixed(run, tmp_path, monkeypatch, when):
    """At start (the files are scanned) or, for large folders that are not scanned, at the first step."""
    if when == "first_step":
        monkeypatch.setattr("nas.data.SCAN_MAX", 0)
    root = _image_folder(tmp_path / "images")
    recipe = GOOD.replace("batch_size: 32", "batch_size: 18")  # 18 training images: one step, every image
    bad = root / "train" / "b" / "3.png"
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 2])
    code, err = run(recipe, data=str(root))
    assert code == 2 and error_line(err).startswith(f"nas: error: {bad}: cannot read this image"), err
    assert not (tmp_path / "run" / "run.json").exists()
    bad.write_bytes(good)
    code, err = run(recipe, data=str(root))
    assert code == 0, err


def test_out_naming_a_file_then_corrected(run, tmp_path):
    out = tmp_path / "run"
    out.write_text("notes\n")
    code, err = run(GOOD)
    assert code == 2 and "--out names an existing file" in err and out.read_text() == "notes\n"
    out.unlink()
    assert run(GOOD)[0] == 0


def test_committed_run_with_incomplete_run_json_is_refused(run, tmp_path):
    assert run(GOOD)[0] == 0
    meta = tmp_path / "run" / "run.json"
    info = json.loads(meta.read_text())
    del info["recipe"]["hash"]
    meta.write_text(json.dumps(info))
    code, err = run(GOOD)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"nas: error: {meta}: recipe.hash: run.json has no 'recipe.hash'"), err


def test_deleted_checkpoints_are_refused_not_silently_restarted(run, tmp_path):
    assert run(GOOD)[0] == 0
    log = (tmp_path / "run" / "train_log.csv").read_text()
    shutil.rmtree(tmp_path / "run" / "checkpoints")
    code, err = run(GOOD)
    assert code == 2 and err.count("\n") == 1 and "holds no checkpoint" in err and "drop the 1 logged step" in err
    assert (tmp_path / "run" / "train_log.csv").read_text() == log  # the log is kept


def test_a_failure_after_some_steps_but_before_a_checkpoint_leaves_nothing_to_refuse(tmp_path):
    """Committing at the first checkpoint: a run stopped before it has nothing to resume, so any recipe starts."""
    (tmp_path / "space.yaml").write_text(SPACE)
    (tmp_path / "recipe.yaml").write_text(GOOD.replace("batch_size: 32", "batch_size: 8"))  # 5 steps

    def fail_at_step_2(state):
        if state.global_step == 2:
            raise NasError("stop")

    kw = dict(data=DATA, out=tmp_path / "run", progress=False)
    with pytest.raises(NasError, match="stop"):
        train_supernet(tmp_path / "space.yaml", recipe=tmp_path / "recipe.yaml", on_step=fail_at_step_2, **kw)
    assert not (tmp_path / "run" / "run.json").exists()
    (tmp_path / "recipe.yaml").write_text(GOOD)  # another recipe on the same --out
    r = train_supernet(tmp_path / "space.yaml", recipe=tmp_path / "recipe.yaml", **kw)
    assert r.steps == 1 and r.resumed_from is None
    rows = (tmp_path / "run" / "train_log.csv").read_text().splitlines()
    assert len(rows) == 2  # the header and the new run's one step: the stopped run's rows are gone


# --- the newer commands: rank-check and search on a trained supernet (issue 17) ---------------------------------


@pytest.fixture(scope="module")
def supernet(tmp_path_factory) -> Path:
    """A trained tiny supernet run (3 steps), shared by the tests below: they copy it before editing it."""
    root = tmp_path_factory.mktemp("supernet")
    (root / "space.yaml").write_text(RANK_SPACE)
    (root / "recipe.yaml").write_text(EVAL_RECIPE)
    train_supernet(str(root / "space.yaml"), data="synthetic:120:3", recipe=str(root / "recipe.yaml"),
                   out=root / "sn", progress=False)
    return root


def _cli(capsys, argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


def test_rank_check_band_outside_the_space_then_corrected(supernet, tmp_path, capsys):
    """Refused from the space's exact MACs range before any draw, writing nothing; the corrected run then works."""
    out = tmp_path / "rc"
    argv = ["rank-check", str(supernet / "sn"), "-n", "3", "--seeds", "1", "--out", str(out)]
    code, err = _cli(capsys, argv + ["--band", "100G:200G"])
    line = error_line(err)
    assert code == 2 and "--band 100.0G:200.0G is outside the reachable MACs range of 'tiny'" in line, err
    assert "choose a band in that range" in line and not out.exists()
    code, err = _cli(capsys, argv)
    assert code == 0, err
    assert (out / "rank_check.json").exists()


def test_search_with_a_malformed_supernet_run_json_then_corrected(supernet, tmp_path, capsys):
    """A supernet run.json whose data digest is not a mapping: one line naming the file and key, no TypeError;
    once run.json is fixed the same command on the same --out runs."""
    sn = tmp_path / "sn"
    shutil.copytree(supernet / "sn", sn)
    good = (sn / "run.json").read_text()
    info = json.loads(good)
    info["data"]["sha256"] = "abc"
    (sn / "run.json").write_text(json.dumps(info))
    argv = ["search", str(supernet / "space.yaml"), "--flops", "150K", "--supernet", str(sn), "--searcher", "random",
            "--max-evals", "2", "--out", str(tmp_path / "s")]
    code, err = _cli(capsys, argv)
    assert code == 2 and error_line(err).startswith(f"nas: error: {sn / 'run.json'}: data.sha256: expected a mapping")
    (sn / "run.json").write_text(good)
    code, err = _cli(capsys, argv)
    assert code == 0, err
    for name in ("summary.json", "best.yaml"):  # an output file that is a folder: one line on resume, then fixed
        (tmp_path / "s" / name).unlink()
        (tmp_path / "s" / name).mkdir()
        code, err = _cli(capsys, argv)
        line = error_line(err)
        assert code == 2 and line.startswith(f"nas: error: {tmp_path / 's' / name}: cannot write this file"), err
        assert "a folder has this file's name" in line
        (tmp_path / "s" / name).rmdir()
        code, err = _cli(capsys, argv)
        assert code == 0 and (tmp_path / "s" / name).is_file(), err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into any folder")
@pytest.mark.parametrize("command", ["rank-check", "viz"])
def test_out_in_a_folder_this_user_cannot_write(supernet, tmp_path, capsys, command):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        target = [str(supernet / "sn"), "-n", "3"] if command == "rank-check" else [str(supernet / "space.yaml")]
        code, err = _cli(capsys, [command, *target, "--out", str(locked / "out")])
        assert code == 2 and "cannot write into" in error_line(err) and not (locked / "out").exists(), err
    finally:
        locked.chmod(0o700)

"""A failed start never poisons a run directory: after each way a start can fail (batch size, device, memory, model
build, the first images, a diverging first step, ``--out`` naming a file), the corrected command succeeds on the
same ``--out``. A committed run with a broken run.json or without its checkpoints is refused, not restarted.

Tiny on purpose: 16x16 synthetic images, width 16, one or two steps.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from nas.cli import main
from nas.errors import NasError
from nas.train import train_supernet

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

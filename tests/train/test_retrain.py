"""Retraining one arch on the shared loop: it learns, resumes bitwise after SIGKILL, uses the model's own objective
(CF-ViT's two passes), starts from inherited weights, refuses a changed run; the recipe's arch overrides."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_model

from nas.cli import main
from nas.errors import NasError
from nas.models import build_model
from nas.space import load_arch
from nas.train import retrain
from nas.train.recipe import RECIPES, default_recipe, load_recipe

ROOT = Path(__file__).resolve().parents[2]
DATA = "synthetic:64"  # 16x16 RGB, 10 classes: 44 training images -> 5 steps of 8 per epoch
ARCH = """\
format: nas-arch/1
name: tiny
input: {size: 16, channels: 3}
num_classes: 1000   # the data has 10 classes: retraining sets 10
tokenizer: {type: patch, patch_size: 4}
stages:
  - {dim: 16, heads: 2, mlp_ratio: 2, cells: [basic, shared_pair]}
  - {dim: 24, heads: 2, mlp_ratio: 2, cells: [basic]}
pooling: {type: 1d, kernel: 3}
head: cls
"""
# Every RNG the trainer checkpoints is exercised: numpy (mixup), torch (model init, cutmix boxes, drop path).
RECIPE = """\
seed: 0
epochs: 3
batch_size: 8
optimizer: {name: adamw, lr: 1.6e-1, lr_base_batch: 512, weight_decay: 0.05}   # 2.5e-3 at batch 8
schedule: {name: cosine, min_lr: 1e-5, warmup_epochs: 1, warmup_lr: 1e-4}
label_smoothing: 0.1
drop_path: 0.1
mixup: {mixup_alpha: 0.8, cutmix_alpha: 1.0, prob: 0.5}
checkpoint: {every_steps: 4, keep: 2}
device: cpu
"""
STEPS = 15


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Bitwise equality across processes needs the same kernels: one thread here and in the subprocess."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("retrain")
    (d / "tiny.yaml").write_text(ARCH)
    (d / "recipe.yaml").write_text(RECIPE)
    return {"arch": d / "tiny.yaml", "recipe": d / "recipe.yaml", "dir": d}


def _retrain(files: dict[str, Path], out: Path, **kw):
    return retrain(files["arch"], data=DATA, recipe=files["recipe"], out=out, progress=False, **kw)


@pytest.fixture(scope="module")
def reference(files) -> dict:
    out = files["dir"] / "reference"
    r = _retrain(files, out)
    return {"out": out, "result": r, "weights": load_file(out / "final.safetensors"),
            "rows": (out / "train_log.csv").read_text().splitlines()}


def _losses(out: Path) -> list[float]:
    return [float(line.split(",")[2]) for line in (out / "train_log.csv").read_text().splitlines()[1:]]


def test_trains_and_reports_validation_accuracy(files, reference):
    r, out = reference["result"], reference["out"]
    assert (r.steps, r.epochs, r.resumed_from) == (STEPS, 3, None)
    assert r.arch.num_classes == 10 and r.arch.name == "tiny"  # num_classes from the data
    info = json.loads((out / "run.json").read_text())
    assert info["format"] == "nas-retrain-run/1" and info["arch"]["hash"] == r.arch.hash()
    assert info["space_overrides"] == {"num_classes": 10} and info["init"] == "scratch"
    assert load_arch(out / "arch.yaml") == r.arch  # the resolved arch reads back
    metrics = json.loads((out / "metrics.json").read_text())
    # the reported accuracy is the final weights' on val, recomputed here independently
    model = build_model(r.arch).eval()
    model.load_state_dict(reference["weights"])
    from nas.data import load_data
    val = load_data(DATA, 16, 3, seed=0, holdout=0.1).val
    x = torch.stack([val[i][0] for i in range(len(val))])
    y = torch.tensor([val[i][1] for i in range(len(val))])
    with torch.no_grad():
        top1 = float((model(x).argmax(-1) == y).float().mean())
    assert metrics["val_top1"] == pytest.approx(top1) == pytest.approx(r.val_top1)
    assert metrics["val_images"] == len(val) == 10 and metrics["macs_mean"] is None  # a static arch
    # lr scaled from the recipe's 512-image lr: 0.16 * 8 / 512 = 2.5e-3, reached at the end of the warm-up epoch;
    # timm's cosine (no warm-up prefix) at step 5 of 15: min_lr + (2.5e-3 - min_lr) * (1 + cos(pi / 3)) / 2
    lrs = [float(row.split(",")[4]) for row in reference["rows"][1:]]
    assert lrs[0] == pytest.approx(1e-4) and lrs[4] == pytest.approx(1e-4 + 4 * (2.5e-3 - 1e-4) / 5, rel=1e-4)
    assert lrs[5] == pytest.approx(1e-5 + (2.5e-3 - 1e-5) * 0.75, rel=1e-4)


def test_loss_decreases(files, tmp_path):
    """Without mixup or drop path the training loss falls from chance (ln 10 = 2.30) by more than noise."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.replace("mixup: {mixup_alpha: 0.8, cutmix_alpha: 1.0, prob: 0.5}\n", "")
                      .replace("drop_path: 0.1", "drop_path: 0").replace("epochs: 3", "epochs: 6"))
    retrain(files["arch"], data=DATA, recipe=recipe, out=tmp_path / "run", progress=False)
    losses = _losses(tmp_path / "run")
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first > 2.2 and last < first - 0.3, losses  # measured: 2.30 -> 1.87


def test_sigkill_and_resume_is_bitwise_identical(files, reference):
    out = files["dir"] / "killed"
    script = ("import os, signal, torch\n"
              "torch.set_num_threads(1)\n"
              "from nas.cli import main\n"
              "from nas.train import loop\n"
              "step = loop.Trainer.step\n"
              "def dying_step(self, x, y):\n"
              "    if self.state.global_step == 11:\n"  # mid-epoch 3, after the checkpoint at step 8
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              "    return step(self, x, y)\n"
              "loop.Trainer.step = dying_step\n"
              f"main(['retrain', {str(files['arch'])!r}, '--data', {DATA!r}, '--recipe', {str(files['recipe'])!r}, "
              f"'--out', {str(out)!r}])\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["ckpt-000000008", "ckpt-000000010"]
    assert not (out / "final.safetensors").exists()
    # the same command resumes and ends with the uninterrupted run's weights and log
    assert main(["retrain", str(files["arch"]), "--data", DATA, "--recipe", str(files["recipe"]),
                 "--out", str(out)]) == 0
    weights = load_file(out / "final.safetensors")
    assert weights.keys() == reference["weights"].keys()
    for k, v in weights.items():
        assert torch.equal(v, reference["weights"][k]), k
    strip = lambda rows: [",".join(r.split(",")[:5]) for r in rows]  # img_per_s differs
    assert strip((out / "train_log.csv").read_text().splitlines()) == strip(reference["rows"])
    assert json.loads((out / "metrics.json").read_text())["val_top1"] == reference["result"].val_top1


def test_changed_recipe_arch_or_init_on_the_same_out_is_refused(files, reference, tmp_path, capsys):
    out = str(reference["out"])
    other = tmp_path / "r.yaml"
    other.write_text(RECIPE.replace("epochs: 3", "epochs: 4"))
    arch = tmp_path / "a.yaml"
    arch.write_text(ARCH.replace("dim: 24", "dim: 32"))
    for argv, message in (([str(files["arch"]), "--recipe", str(other)], "recipe.hash: cannot resume"),
                          ([str(arch), "--recipe", str(files["recipe"])], "arch.hash: cannot resume")):
        capsys.readouterr()
        assert main(["retrain", *argv, "--data", DATA, "--out", out]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"nas: error: {out}/run.json: {message}"), err
    # a supernet run directory is not a retraining's
    (tmp_path / "sn").mkdir()
    (tmp_path / "sn" / "run.json").write_text(json.dumps({"format": "nas-supernet-run/1"}))
    assert main(["retrain", str(files["arch"]), "--data", DATA, "--recipe", str(files["recipe"]),
                 "--out", str(tmp_path / "sn")]) == 2
    assert "not a nas-retrain-run/1 run file (it is a nas-supernet-run/1 run)" in capsys.readouterr().err


def test_init_inherited_loads_the_exported_weights(files, tmp_path):
    """The first forward of the retraining is the inherited model's; a proxy export is found next to best.yaml."""
    arch = load_arch(files["arch"], overrides={"num_classes": 10})
    torch.manual_seed(123)
    inherited = build_model(arch).eval()
    (tmp_path / "best.proxy.yaml").write_text(ARCH)
    save_model(inherited, str(tmp_path / "best.proxy.safetensors"))
    target = tmp_path / "best.yaml"  # the target arch of a proxy search: 4x the input, inherits through its proxy
    target.write_text(ARCH.replace("size: 16", "size: 64").replace("patch_size: 4", "patch_size: 16"))
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        expected = inherited(x)
    seen = []
    from nas.train import loop
    original = loop.Trainer.__init__

    def spy(self, *a, **kw):
        original(self, *a, **kw)
        with torch.no_grad():
            seen.append(self.model.eval()(x))  # before any step: the loaded weights

    loop.Trainer.__init__ = spy
    try:
        r = retrain(target, data=DATA, recipe=files["recipe"], out=tmp_path / "run", init="inherited", progress=False)
    finally:
        loop.Trainer.__init__ = original
    assert torch.equal(seen[0], expected)
    assert r.arch == arch  # the proxy was trained
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["init"].startswith("inherited:") and info["arch"]["file"].endswith("best.proxy.yaml")
    # scratch on the same --out is a changed run
    with pytest.raises(NasError, match="started with --init inherited"):
        retrain(tmp_path / "best.proxy.yaml", data=DATA, recipe=files["recipe"], out=tmp_path / "run", progress=False)
    # weights of another arch are refused with one line naming the file
    (tmp_path / "wide.yaml").write_text(ARCH.replace("dim: 24", "dim: 32"))
    (tmp_path / "wide.safetensors").write_bytes((tmp_path / "best.proxy.safetensors").read_bytes())
    with pytest.raises(NasError, match="the weights do not fit"):
        retrain(tmp_path / "wide.yaml", data=DATA, recipe=files["recipe"], out=tmp_path / "run2", init="inherited",
                progress=False)
    with pytest.raises(NasError, match="no exported weights next to the arch file"):
        retrain(files["arch"], data=DATA, recipe=files["recipe"], out=tmp_path / "run3", init="inherited",
                progress=False)


CF_ARCH = """\
format: nas-arch/1
input: {size: 16, channels: 3}
num_classes: 10
tokenizer: {type: coarse_fine, patch_size: 4, coarse_grid: 2, alpha: 0.5, exit_threshold: 0.6}
head: cls
stages:
  - {dim: 16, heads: 2, mlp_ratio: 2, cells: [basic, basic]}
"""


def test_cf_vit_trains_with_its_two_pass_objective_and_reports_mean_macs(tmp_path):
    """Each step's loss is CF-ViT's: CE(fine) + KL(fine || coarse), both passes on every image, the fine pass on all
    fine tokens during the warm-up; val reports the mean MACs of the early-exit inference."""
    (tmp_path / "cf.yaml").write_text(CF_ARCH)
    (tmp_path / "r.yaml").write_text("epochs: 1\nbatch_size: 8\nlabel_smoothing: 0\ndevice: cpu\n"
                                     "optimizer: {name: adamw, lr: 1e-3}\ncoarse_fine: {warmup_fraction: 0.5}\n")
    from nas.train import loop
    checked = []
    original = loop.Trainer.step

    def step(self, x, y):
        model = self.model
        with torch.no_grad():
            coarse, fine = model.forward_train(x, warmup=self.state.global_step / 5 < 0.5)
            logp, pf, pc = fine.log_softmax(-1), fine.softmax(-1), coarse.softmax(-1)
            expected = -logp.gather(1, y[:, None]).mean() + (pf * (pf.log() - pc.log())).sum(-1).mean()
        loss, acc, lr, arch = original(self, x, y)
        checked.append((loss, float(expected), acc, float((fine.argmax(-1) == y).float().mean())))
        return loss, acc, lr, arch

    loop.Trainer.step = step
    try:
        r = retrain(tmp_path / "cf.yaml", data=DATA, recipe=tmp_path / "r.yaml", out=tmp_path / "run", progress=False)
    finally:
        loop.Trainer.step = original
    assert len(checked) == 5
    for loss, expected, acc, fine_acc in checked:
        assert loss == pytest.approx(expected, abs=1e-5) and acc == fine_acc
    from nas.cost import cost
    c = cost(r.arch)
    assert r.macs_mean is not None and c.macs_min <= r.macs_mean <= c.macs_max
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["macs_mean"] == r.macs_mean


def test_recipe_overrides_make_the_proxy_of_a_target_arch(tmp_path):
    """A 224 px, 1000-class target under the CPU recipe: 32 px, patch 8, quarter widths (multiples of the heads),
    10 classes from the data; the searched difference between stage widths is kept."""
    from nas.train.retrain import resolve_arch

    target = tmp_path / "best.yaml"
    target.write_text(ARCH.replace("size: 16", "size: 224").replace("patch_size: 4", "patch_size: 16")
                      .replace("dim: 16, heads: 2", "dim: 192, heads: 3").replace("dim: 24, heads: 2", "dim: 288, heads: 8"))
    rc = load_recipe(RECIPES / "retrain_cpu.yaml")
    arch, splits, overrides = resolve_arch(str(target), "synthetic:40", rc)
    assert (arch.img_size, arch.tokenizer.patch_size, arch.num_classes) == (32, 8, 10)
    assert [s.dim for s in arch.stages] == [48, 72]  # 192/4 = 48 (3 heads), 288/4 = 72 (8 heads)
    assert overrides["stages[1].dim"] == 72
    (tmp_path / "choice.yaml").write_text("space_overrides:\n  stages[0].dim: {choice: [32, 48]}\n")
    with pytest.raises(NasError) as e:
        resolve_arch(str(target), "synthetic:40", load_recipe(tmp_path / "choice.yaml"))
    assert e.value.file == str(tmp_path / "choice.yaml") and e.value.key == "space_overrides.stages[0].dim"
    (tmp_path / "wm.yaml").write_text("width_multiplier: 0.5\n")
    with pytest.raises(NasError, match="width_multiplier narrows the arch of a retraining"):
        from nas.train.spos import resolve
        resolve(str(ROOT / "spaces" / "psvit_tiny.yaml"), "synthetic:40", load_recipe(tmp_path / "wm.yaml"))


def test_default_recipes_follow_the_data():
    assert default_recipe("retrain", "builtin") == RECIPES / "retrain_cpu.yaml"
    assert default_recipe("retrain", "/data/imagenet") == RECIPES / "retrain_deit.yaml"
    assert default_recipe("supernet", "synthetic:64") is None  # the PSViT recipe, Recipe()
    assert default_recipe("supernet", "builtin").name in ("cpu_supernet.yaml", "demo.yaml")
    deit = load_recipe(RECIPES / "retrain_deit.yaml")
    # DeiT (arXiv 2012.12877): AdamW 5e-4 x batch/512, wd 0.05, cosine with 5 warm-up epochs, 300 epochs,
    # label smoothing 0.1, RandAugment m9, mixup 0.8, cutmix 1.0, drop path 0.1
    assert (deit.optimizer.name, deit.lr, deit.optimizer.weight_decay) == ("adamw", 5e-4 * deit.batch_size / 512, 0.05)
    assert (deit.schedule.name, deit.schedule.warmup_epochs, deit.epochs) == ("cosine", 5, 300)
    assert (deit.label_smoothing, deit.mixup.mixup_alpha, deit.mixup.cutmix_alpha, deit.drop_path) == (0.1, 0.8, 1.0, 0.1)
    assert deit.augment.auto_augment == "rand-m9-mstd0.5-inc1"


def test_cli_says_which_default_recipe_it_chose(capsys):
    import argparse

    from nas.cli import _recipe
    ns = argparse.Namespace
    assert _recipe(ns(recipe=None, data="builtin", space="psvit_tiny"), "supernet") == str(default_recipe("supernet", "builtin"))
    assert "nas: recipe " in capsys.readouterr().err
    # a space that ships its own CPU recipe gets it
    assert _recipe(ns(recipe=None, data="builtin", space="all_four"), "supernet") == str(RECIPES / "cpu_supernet_all_four.yaml")
    capsys.readouterr()
    assert _recipe(ns(recipe=None, data="synthetic:64", space="psvit_tiny"), "supernet") is None  # Recipe(), unchanged
    assert capsys.readouterr().err == ""
    assert _recipe(argparse.Namespace(recipe="r.yaml", data="builtin"), "retrain") == "r.yaml"


@pytest.mark.parametrize("text, line, key, fragment", [
    ("augment:\n  auto_augment: rand-m9-bogus7\n", 2, "augment.auto_augment", "timm cannot build auto_augment"),
    ("augment: {re_prob: 2}\n", 1, "augment.re_prob", "in [0.0, 1.0], got 2.0"),
    ("optimizer:\n  lr_scaling: sqrt\n", 2, "optimizer.lr_scaling", "needs lr_base_batch"),
    ("width_multiplier: 0\n", 1, "width_multiplier", "in (0.0, 16.0], got 0.0"),
    ("optimizer: {lr: 1e-3, lr_base_batch: 512}\nbatch_size: 8\nschedule: {min_lr: 1e-4}\n", 3, "schedule.min_lr",
     "above the optimizer lr 1.5625e-05 (scaled to batch_size 8)"),
])
def test_new_recipe_keys_are_validated_with_their_line(tmp_path, text, line, key, fragment):
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(NasError) as e:
        load_recipe(tmp_path / "r.yaml")
    assert (e.value.line, e.value.key) == (line, key) and fragment in e.value.message, e.value.format()

"""SPOS supernet training with the real ``nas.supernet.Supernet`` on a tiny space and synthetic data.

Acceptance: a run killed with SIGKILL, or stopped by SIGINT mid-epoch, and resumed ends with bitwise the same
weights (and CSV log rows) as an uninterrupted run; corrupted checkpoints and leftovers do not break resume;
the run directory refuses another space, recipe or data; FLOPs-bin sampling evens out the MACs bins.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nas.cli import main
from nas.cost import cost
from nas.errors import NasError
from nas.space import load_space
from nas.train import train_supernet
from nas.train.sampler import FlopsBinSampler, UniformSampler, make_sampler
from tests.helpers import tiny_space

ROOT = Path(__file__).resolve().parents[2]
DATA = "synthetic:64"  # 16x16 RGB, 10 classes: 44 training images -> 5 steps of 8 per epoch
SPACE = tiny_space(1000)  # the data has 10 classes: the trainer sets 10
# Every RNG the trainer checkpoints is exercised: numpy (mixup), torch (model init, cutmix boxes, drop path), the
# arch sampler.
RECIPE = """\
seed: 0
epochs: 2
batch_size: 8
optimizer: {name: sgd, lr: 0.05, momentum: 0.9, nesterov: true, weight_decay: 1e-4}
schedule: {name: cosine, min_lr: 0, warmup_epochs: 1, warmup_lr: 1e-3}
label_smoothing: 0.1
drop_path: 0.1
mixup: {mixup_alpha: 0.8, cutmix_alpha: 1.0, prob: 0.8}
sampler: {type: flops_bins, bins: 3, max_tries: 10}
grad_clip: 5.0
device: cpu   # bitwise resume is promised on CPU
"""
STEPS = 10


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Bitwise equality across processes needs the same kernels: one thread here and in the subprocess."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("spos")
    (d / "space.yaml").write_text(SPACE)
    (d / "recipe.yaml").write_text(RECIPE)
    return {"space": d / "space.yaml", "recipe": d / "recipe.yaml", "dir": d}


def _train(files: dict[str, Path], out: Path, **kw):
    return train_supernet(files["space"], data=DATA, recipe=files["recipe"], out=out, progress=False, **kw)


@pytest.fixture(scope="module")
def reference(files) -> dict:
    """An uninterrupted run: its final weights and CSV rows."""
    out = files["dir"] / "reference"
    r = _train(files, out)
    assert (r.steps, r.epochs, r.resumed_from) == (STEPS, 2, None)
    return {"out": out, "weights": load_file(out / "supernet.safetensors"), "rows": _rows(out),
            "epochs": _epoch_means(out), "loss": r.loss, "acc": r.acc}


def _epoch_means(out: Path) -> list[tuple[str, str, str]]:
    """(epoch, mean loss, mean acc) of the epoch summaries in train.log."""
    return re.findall(r"epoch (\d+)/\d+: loss (\S+) acc (\S+)", (out / "train.log").read_text())


def _rows(out: Path) -> list[dict]:
    with open(out / "train_log.csv") as f:
        return [{k: v for k, v in row.items() if k != "img_per_s"} for row in csv.DictReader(f)]


def _assert_same_run(out: Path, reference: dict) -> None:
    weights = load_file(out / "supernet.safetensors")
    assert weights.keys() == reference["weights"].keys()
    for k, v in weights.items():
        assert torch.equal(v, reference["weights"][k]), k
    assert _rows(out) == reference["rows"]  # every step once, same loss/acc/lr/arch/MACs


def _interrupt_at(step: int):
    def hook(state):
        if state.global_step == step:
            signal.raise_signal(signal.SIGINT)  # a real Ctrl-C, delivered to the trainer's handler
    return hook


def test_reference_run_directory(files, reference):
    out = reference["out"]
    info = json.loads((out / "run.json").read_text())
    space = load_space(out / "space.yaml")  # the resolved space reloads with the same hash
    assert space.hash == info["space"]["hash"] and space.template()["num_classes"] == 10
    assert info["data"]["spec"] == DATA
    split = json.loads((out / "data_split.json").read_text())
    assert split["sizes"]["train"] == 44 and split["num_classes"] == 10
    assert [p.name for p in (out / "checkpoints").iterdir()] != []
    steps = [int(r["step"]) for r in reference["rows"]]
    assert steps == list(range(1, STEPS + 1))
    assert [r["epoch"] for r in reference["rows"]] == ["1"] * 5 + ["2"] * 5
    # warmup over epoch 1 (5 steps) from 1e-3 to 0.05, then cosine to 0 (timm, stepped per update)
    lrs = [float(r["lr"]) for r in reference["rows"]]
    assert lrs[0] == pytest.approx(1e-3) and lrs[1] == pytest.approx(1e-3 + (0.05 - 1e-3) / 5)
    assert lrs[-1] == pytest.approx(0.5 * 0.05 * (1 + torch.cos(torch.tensor(torch.pi * 9 / 10)).item()), rel=1e-5)
    for r in reference["rows"]:  # the logged MACs are the sampled arch's analytic cost
        assert int(r["macs"]) > 0 and len(r["arch"]) == 16
    assert "epoch 2/2" in (out / "train.log").read_text()


def test_sigkill_and_resume_is_bitwise_identical(files, reference):
    out = files["dir"] / "killed"
    script = ("import os, signal, sys, torch\n"
              "torch.set_num_threads(1)\n"
              "from nas.train import train_supernet\n"
              "def hook(state):\n"
              "    if state.global_step == 7:\n"  # mid-epoch 2, after the epoch-1 checkpoint at step 5
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              f"train_supernet({str(files['space'])!r}, data={DATA!r}, recipe={str(files['recipe'])!r}, "
              f"out={str(out)!r}, progress=False, on_step=hook)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["ckpt-000000005"]
    assert not (out / "supernet.safetensors").exists()
    assert len(_rows(out)) == 7  # rows of steps 6 and 7 were logged but not checkpointed
    r = _train(files, out)
    assert r.resumed_from == 5 and r.steps == STEPS
    _assert_same_run(out, reference)


def test_sigint_mid_epoch_checkpoints_and_resumes_identically(files, reference):
    out = files["dir"] / "sigint"
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)  # SIG_IGN in a background job
    with pytest.raises(KeyboardInterrupt):
        _train(files, out, on_step=_interrupt_at(3))
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers restored
    state = json.loads((out / "checkpoints" / "ckpt-000000003" / "state.json").read_text())
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (0, 3, 3)
    losses = [float(row["loss"]) for row in _rows(out)]
    assert state["loss_sum"] == pytest.approx(sum(losses), rel=1e-5)  # the running sums of the epoch so far
    r = _train(files, out)
    assert r.resumed_from == 3
    _assert_same_run(out, reference)
    # the epoch-1 summary after the resume is the mean over all 5 steps of epoch 1, not over steps 4 and 5 only
    means = reference["epochs"]
    assert _epoch_means(out) == means and len(means) == 2
    assert float(means[0][1]) == pytest.approx(sum(float(r["loss"]) for r in reference["rows"][:5]) / 5, abs=1e-4)
    assert (r.loss, r.acc) == (reference["loss"], reference["acc"])


def test_corrupted_checkpoint_and_leftovers_do_not_break_resume(files, reference, capsys):
    out = files["dir"] / "corrupt"
    with pytest.raises(KeyboardInterrupt):
        _train(files, out, on_step=_interrupt_at(7))
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["ckpt-000000005", "ckpt-000000007"]
    weights = ckpts / "ckpt-000000007" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: len(weights.read_bytes()) // 2])  # torn newest checkpoint
    (ckpts / ".tmp-ckpt-000000008-4242").mkdir()  # a writer killed mid-checkpoint
    (ckpts / ".tmp-ckpt-000000008-4242" / "model.safetensors").write_bytes(b"partial")
    (out / ".tmp-train_log.csv.4242").write_text("epoch,st")
    with open(out / "train_log.csv", "a") as f:
        f.write("2,8,2.30")  # a torn last CSV line
    capsys.readouterr()
    assert main(["train-supernet", str(files["space"]), "--data", DATA, "--recipe", str(files["recipe"]),
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "ckpt-000000007 is invalid (model.safetensors does not match its sha256" in captured.err
    assert "resumed from step 5" in captured.out
    _assert_same_run(out, reference)
    assert not list(ckpts.glob(".tmp-*"))


def test_run_directory_refuses_other_space_recipe_or_data(files, reference, tmp_path, capsys):
    out = str(reference["out"])
    other_recipe = tmp_path / "r.yaml"
    other_recipe.write_text(RECIPE.replace("lr: 0.05", "lr: 0.06"))
    other_space = tmp_path / "s.yaml"
    other_space.write_text(SPACE.replace("mlp_ratio: 2\n", "mlp_ratio: 3\n", 1))
    cases = [(["--recipe", str(other_recipe), "--data", DATA], "recipe.hash: cannot resume"),
             (["--recipe", str(files["recipe"]), "--data", "synthetic:80"], "data.sha256: cannot resume"),
             ([str(other_space), "--recipe", str(files["recipe"]), "--data", DATA], "space.hash: cannot resume")]
    for args, message in cases:
        space = [] if args[0].endswith(".yaml") and "s.yaml" in args[0] else [str(files["space"])]
        capsys.readouterr()
        assert main(["train-supernet", *space, *args, "--out", out]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"nas: error: {out}/run.json: {message}"), err
    # the same command again: already complete, weights untouched
    assert main(["train-supernet", str(files["space"]), "--data", DATA, "--recipe", str(files["recipe"]),
                 "--out", out, "--resume"]) == 0
    assert "already complete" in (reference["out"] / "train.log").read_text()
    assert load_file(reference["out"] / "supernet.safetensors").keys() == reference["weights"].keys()
    # --resume needs a run to resume
    assert main(["train-supernet", str(files["space"]), "--data", DATA, "--out", str(tmp_path / "empty"),
                 "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_diverging_loss_and_oversized_batch_are_clear_errors(files, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 1\nbatch_size: 8\nlabel_smoothing: 0\noptimizer:\n  lr: 1e30\n")
    with pytest.raises(NasError) as e:
        train_supernet(files["space"], data=DATA, recipe=recipe, out=tmp_path / "run", progress=False)
    assert (e.value.line, e.value.key) == (5, "optimizer.lr") and "lower the learning rate" in e.value.message
    recipe.write_text("epochs: 1\nbatch_size: 64\n")
    with pytest.raises(NasError, match="batch_size 64 is larger than the 44 training images"):
        train_supernet(files["space"], data=DATA, recipe=recipe, out=tmp_path / "run2", progress=False)


# --- arch sampling ------------------------------------------------------------------------------------
BINS_SPACE = """\
name: bins
input: {size: 16, channels: 3}
num_classes: 10
tokenizer: {type: patch, patch_size: 8}
stages:
  - {dim: 16, heads: 2, mlp_ratio: 2, cells: {repeat: 8, choice: [basic, identity]}}
"""


@pytest.fixture(scope="module")
def bins_space(tmp_path_factory):
    path = tmp_path_factory.mktemp("bins") / "bins.yaml"
    path.write_text(BINS_SPACE)
    return load_space(path)


def test_flops_bins_even_out_what_uniform_sampling_skews(bins_space):
    # MACs = base + k * layer for k basic cells of 8: uniform draws k ~ Binomial(8, 1/2). Four equal MACs bins
    # hold k in {0,1}, {2,3}, {4,5}, {6,7,8}: uniform sampling gives them 9, 84, 126, 37 out of 256.
    n = 1000
    uniform = make_sampler(bins_space, "uniform", seed=0)
    binned = make_sampler(bins_space, "flops_bins", seed=0, bins=4, max_tries=100)
    assert isinstance(binned, FlopsBinSampler) and type(uniform) is UniformSampler
    u = Counter(binned.bin_of(cost(uniform.sample()).macs) for _ in range(n))
    b = Counter(binned.bin_of(cost(binned.sample()).macs) for _ in range(n))
    assert u[0] < 0.07 * n and u[2] > 0.4 * n  # expected 35 and 492
    assert all(0.2 * n <= b[i] <= 0.3 * n for i in range(4)), b  # expected 250 each
    assert sum(binned.hits) + sum(binned.misses) == n and sum(binned.misses) < 0.03 * n


def test_empty_bins_yield_the_closest_draw_and_count_misses(bins_space):
    s = FlopsBinSampler(bins_space, seed=1, bins=32, max_tries=20)
    layer = (s.hi - s.lo) // 8
    reachable = {s.bin_of(s.lo + k * layer) for k in range(9)}  # 9 MACs values: bins 0, 4, ..., 28, 31
    assert reachable == {0, 4, 8, 12, 16, 20, 24, 28, 31}
    for _ in range(300):
        macs = cost(s.sample()).macs
        assert (macs - s.lo) % layer == 0
    assert all(s.hits[i] == 0 for i in range(32) if i not in reachable)
    assert sum(s.misses[i] for i in range(32) if i not in reachable) > 150  # ~23/32 of the draws
    assert "misses" in s.stats()


def test_sampler_state_round_trip(bins_space):
    a = make_sampler(bins_space, "flops_bins", seed=3, bins=4)
    [a.sample() for _ in range(5)]
    state = json.loads(json.dumps(a.state_dict()))  # as stored in state.json
    expected = [a.sample() for _ in range(5)]
    b = make_sampler(bins_space, "flops_bins", seed=99, bins=4)
    b.load_state_dict(state)
    assert [b.sample() for _ in range(5)] == expected and b.hits == a.hits


# --- the training objective ------------------------------------------------------------------------------------
CF_SPACE = """\
name: tiny_cf
input: {size: 16, channels: 3}
num_classes: 10
tokenizer: {type: coarse_fine, patch_size: 4, coarse_grid: 2, alpha: 0.5, exit_threshold: 0.0}
head: cls
stages:
  - dim: {choice: [16, 24]}
    heads: 2
    mlp_ratio: 2
    cells: [basic, {choice: [shared_pair, basic]}, basic]
"""


def test_cf_vit_steps_train_both_passes_with_the_paper_loss_and_warm_up(tmp_path):
    """A SPOS step on a CF-ViT path: loss = label-smoothed CE(fine) + KL(fine || coarse) (batchmean), the fine pass
    on all fine tokens for the first 2/3 of the steps, region selection after; every tensor on the path gets a
    finite gradient, the fine-only ones too (eta = 0: inference would exit every image after the coarse pass).
    The optimiser keeps cls token and position tables out of weight decay."""
    from nas.train.recipe import OptimizerCfg, Recipe
    from nas.train.spos import SposTrainer, resolve

    (tmp_path / "cf.yaml").write_text(CF_SPACE)
    rc = Recipe(epochs=3, batch_size=4, label_smoothing=0.1, device="cpu",
                optimizer=OptimizerCfg("adamw", lr=1e-3, weight_decay=0.05))
    assert rc.mechanisms["coarse_fine"].warmup_fraction == 2 / 3  # the paper's schedule by default
    space, splits, _ = resolve(str(tmp_path / "cf.yaml"), DATA, rc)
    trainer = SposTrainer(space, splits, rc, tmp_path / "run", progress=False)
    supernet = trainer.model
    no_decay = {"tokenizer.cls_token", "tokenizer.pos_embed", "tokenizer.pos_embed_coarse"}
    assert supernet.no_weight_decay() == no_decay
    name = {id(p): n for n, p in supernet.named_parameters()}
    assert no_decay <= {name[id(p)] for g in trainer.optimizer.param_groups if g["weight_decay"] == 0
                        for p in g["params"]}
    arch = next(a for a in (space.sample(s) for s in range(50)) if a.stages[0].dim == 16)
    trainer.sampler.sample = lambda: arch  # one fixed path, narrower than the supernet
    x, y = next(iter(trainer.loader))
    total = rc.epochs * trainer.steps_per_epoch                     # 3 x 11 steps: warm-up is steps 0..21
    for step, warmup in ((0, True), (math.ceil(total * 2 / 3) - 1, True), (math.ceil(total * 2 / 3), False)):
        trainer.state.global_step = step
        with torch.no_grad():
            coarse, fine = supernet.extract(arch).forward_train(x, warmup=warmup)  # weights before the step
            logp, pf, pc = fine.log_softmax(-1), fine.softmax(-1), coarse.softmax(-1)
            ce = -0.9 * logp.gather(1, y[:, None]).mean() - 0.1 * logp.mean()
            expected = ce + (pf * (pf.log() - pc.log())).sum(-1).mean()
        loss, acc, _, got_arch = trainer.step(x, y)
        assert got_arch == arch and loss == pytest.approx(float(expected), abs=1e-6)
        assert acc == float((fine.argmax(-1) == y).float().mean())
        for key in supernet.subnet_state_dict(arch):
            p = supernet.get_parameter(key) if key in name.values() else None
            if p is not None:
                assert p.grad is not None and bool(torch.isfinite(p.grad).all()), key
                if key.startswith(("tokenizer.pos_embed", "reuse.")) or warmup:
                    assert p.grad.abs().sum() > 0, key

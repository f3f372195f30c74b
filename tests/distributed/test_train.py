"""Supernet training and retraining on Ray (``nas.distributed.train``) against single-process runs.

Acceptance: ``nas train-supernet --ray-address 127.0.0.1:PORT --num-workers 2`` on a real head keeps both ranks'
weights identical at every checkpoint and ends equal (float tolerance) to one process on the same global batch,
training the same arch at every step; a run resumes on another number of workers and still ends equal;
``nas retrain`` on 2 workers equals the single-process retraining. Unit tests: the arch of a step is a pure
function of (seed, step) and FLOPs bins stay balanced; the ranks' shards of a global batch are that batch; the
refusals are one line.
"""
from __future__ import annotations

import csv
import json
import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, load_model

from nas.cli import main
from nas.cost import cost
from nas.distributed.train import REPLICAS_LOG, weights_digest
from nas.errors import NasError
from nas.space import load_space, save_arch
from nas.train import retrain, train_supernet
from nas.train.sampler import FlopsBinSampler, make_sampler
from nas.train.spos import SposPath, supernet_job
from tests.distributed.conftest import head_env
from tests.helpers import tiny_space

DATA = "synthetic:64"  # 16x16 RGB, 10 classes: 44 training images -> 5 global batches of 8 per epoch
SPACE = tiny_space(10)
# No dropout, drop path, mixup or augmentation: N ranks of batch 8/N then compute what one process does on 8
# (up to float summation order). Weight decay and momentum would move tensors off the path if DDP gave them zeros.
RECIPE = """\
seed: 0
epochs: 2
batch_size: 8
optimizer: {name: sgd, lr: 0.05, momentum: 0.9, nesterov: true, weight_decay: 1e-2}
schedule: {name: cosine, min_lr: 0, warmup_epochs: 1, warmup_lr: 1e-3}
label_smoothing: 0.1
sampler: {type: flops_bins, bins: 3, max_tries: 10}
grad_clip: 5.0
device: cpu
"""
STEPS = 10
ATOL = 1e-5


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("raytrain")
    (d / "space.yaml").write_text(SPACE)
    (d / "recipe.yaml").write_text(RECIPE)
    (d / "recipe_b4.yaml").write_text(RECIPE.replace("batch_size: 8", "batch_size: 4"))
    (d / "recipe_auto.yaml").write_text(RECIPE.replace("device: cpu", "device: auto"))
    arch = load_space(d / "space.yaml").sample(random.Random(1))
    save_arch(arch, d / "arch.yaml")
    return {"space": d / "space.yaml", "recipe": d / "recipe.yaml", "recipe_b4": d / "recipe_b4.yaml",
            "recipe_auto": d / "recipe_auto.yaml", "arch": d / "arch.yaml", "dir": d}


def _rows(out: Path) -> list[dict]:
    with open(out / "train_log.csv") as f:
        return list(csv.DictReader(f))


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < ATOL, worst


def _assert_same_training(out: Path, ref: Path, weights: str = "supernet.safetensors") -> None:
    """Same weights (float tolerance), the same arch at every step, the same logged losses."""
    _assert_close(load_file(out / weights), load_file(ref / weights))
    rows, ref_rows = _rows(out), _rows(ref)
    assert [r["arch"] for r in rows] == [r["arch"] for r in ref_rows] and len(rows) == STEPS
    for r, s in zip(rows, ref_rows):
        assert float(r["loss"]) == pytest.approx(float(s["loss"]), abs=1e-4)
        assert float(r["acc"]) == pytest.approx(float(s["acc"]), abs=1e-6)


def _cli(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas.cli", *args], env=head_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def reference(files) -> Path:
    """The single-process supernet run (no Ray), through the CLI in a fresh process that must not import ray."""
    out = files["dir"] / "reference"
    code = ("import sys\nfrom nas.cli import main\n"
            f"rc = main(['train-supernet', {str(files['space'])!r}, '--data', {DATA!r}, '--recipe', "
            f"{str(files['recipe'])!r}, '--out', {str(out)!r}])\n"
            "print('ray imported:', 'ray' in sys.modules)\nsys.exit(rc)\n")
    p = subprocess.run([sys.executable, "-c", code], env=head_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "ray imported: False" in p.stdout
    return out


# --- the arch of a step ------------------------------------------------------------------------------
def test_arch_of_step_is_a_pure_function_of_seed_and_step(files):
    space = load_space(files["space"])
    a, b = make_sampler(space, "flops_bins", seed=0, bins=3), make_sampler(space, "flops_bins", seed=0, bins=3)
    steps = list(range(40))
    forward = [a.at(t) for t in steps]
    backward = [b.at(t) for t in reversed(steps)][::-1]  # another order, another history of the generator
    assert forward == backward
    assert len({x.hash() for x in forward}) > 10  # different steps draw different archs
    other_seed = make_sampler(space, "flops_bins", seed=1, bins=3)
    assert [other_seed.at(t) for t in steps] != forward
    path = SposPath(make_sampler(space, "uniform", seed=0))
    assert [path.arch(t) for t in (5, 3, 5)][0] == path.arch(5)


def test_stateless_flops_bins_stay_balanced(files):
    space = load_space(files["space"])
    s = make_sampler(space, "flops_bins", seed=0, bins=3, max_tries=20)
    assert isinstance(s, FlopsBinSampler)
    n = 600
    counts = Counter(s.bin_of(cost(s.at(t)).macs) for t in range(n))
    assert all(abs(counts[i] / n - 1 / 3) < 0.07 for i in range(3)), counts  # binomial sd 1.9 points
    assert sum(s.hits) + sum(s.misses) == n and s.misses == [0, 0, 0]
    state = json.loads(json.dumps(SposPath(s).state_dict()))  # as a checkpoint stores it
    fresh = SposPath(make_sampler(space, "flops_bins", seed=0, bins=3))
    fresh.load_state_dict(state)
    assert fresh.sampler.hits == s.hits


def test_checkpoint_of_a_stateful_sampler_is_refused(files):
    path = SposPath(make_sampler(load_space(files["space"]), "uniform", seed=0))
    with pytest.raises(NasError, match="one sampler stream"):
        path.load_state_dict({"rng": [3, [0] * 625, None]})  # what earlier versions stored


# --- sharding ----------------------------------------------------------------------------------------
def _batches(trainer, epoch: int) -> list[list[bytes]]:
    trainer.loader.set_epoch(epoch)
    out = []
    for x, _ in list(trainer.loader)[: trainer.steps_per_epoch]:
        out.append([img.numpy().tobytes() for img in x])
    return out


@pytest.mark.parametrize("data,recipe,batch", [(DATA, "recipe", 8), ("synthetic:70", "recipe_b4", 4)])
def test_ranks_share_each_global_batch(files, data, recipe, batch):
    """The union of the ranks' k-th batches is the single-process k-th batch, for 1, 2 and 4 ranks; the epoch
    has the same number of steps whatever the number of ranks (44 or 49 images: a rank's share is padded)."""
    job = supernet_job(files["space"], data, files[recipe], files["dir"] / "unused", progress=False)
    one = job.make()
    assert one.steps_per_epoch == len(one.loader.dataset) // batch
    for world in (2, 4):
        ranks = [job.make(replicas=(r, world)) for r in range(world)]
        assert {t.steps_per_epoch for t in ranks} == {one.steps_per_epoch}
        for epoch in (0, 1):
            single = _batches(one, epoch)
            sharded = [_batches(t, epoch) for t in ranks]
            for k, global_batch in enumerate(single):
                union = [img for shard in sharded for img in shard[k]]
                assert len(union) == batch and Counter(union) == Counter(global_batch)


def test_batch_not_divisible_by_workers_is_refused(files):
    job = supernet_job(files["space"], DATA, files["recipe"], files["dir"] / "unused", progress=False)
    with pytest.raises(NasError, match=r"batch_size 8 is the global batch.*divisible.*3") as e:
        job.make(replicas=(0, 3))
    assert e.value.key == "batch_size" and "\n" not in e.value.format()


@pytest.mark.parametrize("flags,expected", [
    (["--num-workers", "2"], "--num-workers needs --ray-address"),
    (["--use-gpu"], "--use-gpu needs --ray-address"),
    (["--num-workers", "2", "--max-failures", "1"], "--num-workers and --max-failures need --ray-address"),
    (["--ray-address", "nowhere"], "--ray-address 'nowhere': expected 'local'"),
    (["--ray-address", "local", "--num-workers", "3"], "batch_size 8 is the global batch"),
    (["--ray-address", "local", "--use-gpu"], "device cpu, but --use-gpu"),
])
def test_cli_refusals_are_one_line(files, capsys, flags, expected):
    for command in (["train-supernet", str(files["space"])], ["retrain", str(files["arch"])]):
        rc = main([*command, "--data", DATA, "--recipe", str(files["recipe"]), "--out",
                   str(files["dir"] / "refused"), *flags])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and expected in err[-1] and err[-1].startswith("nas: error:"), err
        assert not (files["dir"] / "refused" / "run.json").exists()


# --- on a real Ray head ----------------------------------------------------------------------------------
def _ray_train(files, out: Path, ray_head: str, workers: int = 2, extra: tuple[str, ...] = ()) -> str:
    p = _cli(["train-supernet", str(files["space"]), "--data", DATA, "--recipe", str(files["recipe"]), "--out",
              str(out), "--ray-address", ray_head, "--num-workers", str(workers), *extra])
    assert p.returncode == 0, p.stderr[-4000:]
    return p.stdout + p.stderr


@pytest.fixture(scope="module")
def two_workers(files, ray_head) -> tuple[Path, str]:
    out = files["dir"] / "two"
    return out, _ray_train(files, out, ray_head)


def test_two_workers_equal_one_process(files, reference, two_workers):
    out, log = two_workers
    assert "2 worker(s)" in log and "epoch 2/2: loss" in log  # the driver shows rank 0's epoch lines
    assert "10 steps over 2 epochs" in log
    lines = [json.loads(x) for x in (out / REPLICAS_LOG).read_text().splitlines()]
    assert [x["step"] for x in lines] == [5, 10]  # one line per checkpoint (epoch ends)
    space = load_space(out / "space.yaml")
    from nas.supernet import Supernet
    for x in lines:
        assert x["world_size"] == 2 and len(set(x["weights_sha256"])) == 1  # both ranks hold the same weights
        model = Supernet(space)  # the digest is that of the weights rank 0 wrote in that checkpoint
        load_model(model, out / "checkpoints" / f"ckpt-{x['step']:09d}" / "model.safetensors")
        assert weights_digest(model) == x["weights_sha256"][0]
    _assert_same_training(out, reference)
    assert (out / "ray").is_dir() and json.loads((out / "run.json").read_text())["space"]["hash"] == space.hash


def test_two_worker_run_resumes_on_one_process(files, reference, two_workers):
    """A 2-worker run stopped after its first checkpoint (its later checkpoint removed, as if killed before it),
    finished by one process without Ray."""
    out2 = files["dir"] / "two-then-one"
    shutil.copytree(two_workers[0], out2)
    shutil.rmtree(out2 / "checkpoints" / "ckpt-000000010")
    (out2 / "supernet.safetensors").unlink()
    r = train_supernet(files["space"], DATA, files["recipe"], out2, progress=False)
    assert r.resumed_from == 5 and r.steps == STEPS
    _assert_same_training(out2, reference)


@pytest.mark.slow
def test_one_process_run_resumes_on_two_workers(files, reference, ray_head):
    out1 = files["dir"] / "one-then-two"

    def stop(state):
        if state.global_step == 7:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train_supernet(files["space"], DATA, files["recipe"], out1, progress=False, on_step=stop)
    assert sorted(p.name for p in (out1 / "checkpoints").iterdir()) == ["ckpt-000000005"]
    log = _ray_train(files, out1, ray_head)
    assert "resumed from" in log and "global step 5" in log and "resumed from step 5" in log
    _assert_same_training(out1, reference)


def test_use_gpu_on_a_cluster_without_gpus(files, ray_head):
    p = _cli(["train-supernet", str(files["space"]), "--data", DATA, "--recipe", str(files["recipe_auto"]), "--out",
              str(files["dir"] / "gpu"), "--ray-address", ray_head, "--use-gpu"], timeout=120)
    assert p.returncode == 2
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("nas: error:") and "has no GPU; drop --use-gpu" in last, p.stderr[-2000:]
    assert not (files["dir"] / "gpu" / "run.json").exists()


def test_retrain_on_two_workers_equals_one_process(files, ray_head):
    ref = files["dir"] / "retrain-one"
    r = retrain(files["arch"], DATA, files["recipe"], ref, progress=False)
    out = files["dir"] / "retrain-two"
    p = _cli(["retrain", str(files["arch"]), "--data", DATA, "--recipe", str(files["recipe"]), "--out", str(out),
              "--ray-address", ray_head, "--num-workers", "2"])
    assert p.returncode == 0, p.stderr[-4000:]
    assert "val top-1" in p.stdout and "val top-1" in p.stderr  # the result line, and rank 0's log line
    _assert_same_training(out, ref, "final.safetensors")
    got, want = json.loads((out / "metrics.json").read_text()), json.loads((ref / "metrics.json").read_text())
    assert got["val_loss"] == pytest.approx(want["val_loss"], abs=1e-4) and got["val_images"] == r.val_images
    assert abs(got["val_top1"] - r.val_top1) <= 1 / r.val_images


def _train_workers(address: str) -> list:
    """The Ray Train worker processes of the head at ``address`` (children of its raylet), never another head's."""
    import psutil

    port = address.rsplit(":", 1)[1]
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "raylet" in cmd and f":{port}" in cmd:
            found += [c for c in p.children(recursive=True) if "RayTrainWorker" in " ".join(c.cmdline() or [])]
    return found


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_training_resumes(files, ray_head):
    """SIGKILL of a worker after the first checkpoint: Ray Train starts a new worker group, which resumes from the
    run directory's newest checkpoint; the run ends equal to an uninterrupted single-process run."""
    import signal
    import time

    recipe = files["dir"] / "recipe_long.yaml"
    recipe.write_text(RECIPE.replace("epochs: 2", "epochs: 3") + "checkpoint: {every_steps: 10}\n")
    data = "synthetic:1000"  # 720 training images: 90 steps per epoch
    ref = files["dir"] / "long-one"
    train_supernet(files["space"], data, recipe, ref, progress=False)
    out = files["dir"] / "long-two"
    cmd = [sys.executable, "-m", "nas.cli", "train-supernet", str(files["space"]), "--data", data, "--recipe",
           str(recipe), "--out", str(out), "--ray-address", ray_head, "--num-workers", "2", "--max-failures", "2"]
    proc = subprocess.Popen(cmd, env=head_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not list((out / "checkpoints").glob("ckpt-*")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        workers = _train_workers(ray_head)
        assert workers, "no Ray Train worker found"
        workers[-1].send_signal(signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-4000:]
    assert "resumed from" in (out / "train.log").read_text()  # the new worker group took the last checkpoint
    _assert_close(load_file(out / "supernet.safetensors"), load_file(ref / "supernet.safetensors"))
    assert [r["arch"] for r in _rows(out)] == [r["arch"] for r in _rows(ref)]


def test_worker_paths(files, tmp_path, monkeypatch):
    """Absolute paths for the workers, except files a shipped working directory holds (each node has its copy)."""
    from nas.distributed.train import _worker_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "s.yaml").write_text(SPACE)
    args = {"space": "spaces/s.yaml", "recipe": str(files["recipe"]), "data": DATA, "out": "runs/x"}
    shipped = _worker_paths(args, working_dir=True)
    assert shipped["space"] == "spaces/s.yaml" and shipped["recipe"] == str(files["recipe"].resolve())
    assert shipped["data"] == DATA and shipped["out"] == "runs/x"  # the caller makes the run directory absolute
    assert _worker_paths(args, working_dir=False)["space"] == str(tmp_path.resolve() / "spaces" / "s.yaml")


# --- DDP and the tensors a path leaves unused ------------------------------------------------------------
def _one_ddp_step(rank: int, world: int, port: int, files: dict, out: str) -> None:
    """Rank ``rank`` of a gloo group: the supernet trainer's first step through DDP; its gradients to a file."""
    import os

    import torch.distributed as dist
    from safetensors.torch import save_file
    from torch.nn.parallel import DistributedDataParallel

    from nas.distributed.train import _mean_over_ranks

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        trainer = supernet_job(files["space"], DATA, files["recipe"], Path(out), progress=False).make(
            replicas=(rank, world))
        trainer.training_loss = DistributedDataParallel(trainer.training_loss, find_unused_parameters=True)
        trainer.reduce = _mean_over_ranks
        trainer.loader.set_epoch(0)
        for (x, y), _ in zip(trainer.loader, range(3)):  # three paths: an earlier path's grads must not linger
            trainer.step(x, y)
        grads = {n: p.grad.contiguous() for n, p in trainer.model.named_parameters() if p.grad is not None}
        save_file(grads, f"{out}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes; the end-to-end equality above (weight decay 1e-2) depends on it too
def test_ddp_gives_no_gradient_to_tensors_off_the_path(files, tmp_path):
    """Through DDP, the tensors the step's path leaves unused keep ``grad None`` on every rank (so weight decay and
    momentum leave them alone) and the others get the single-process gradient of the global batch."""
    import torch.multiprocessing as mp

    from tests.distributed.conftest import free_port

    mp.spawn(_one_ddp_step, args=(2, free_port(), files, str(tmp_path)), nprocs=2, join=True)
    single = supernet_job(files["space"], DATA, files["recipe"], tmp_path / "single", progress=False).make()
    single.loader.set_epoch(0)
    for (x, y), _ in zip(single.loader, range(3)):
        single.step(x, y)
    want = {n: p.grad for n, p in single.model.named_parameters() if p.grad is not None}
    every = dict(single.model.named_parameters())
    assert 0 < len(want) < len(every)  # the last path used some tensors and left others
    for rank in (0, 1):
        got = load_file(tmp_path / f"rank{rank}.safetensors")
        assert got.keys() == want.keys()  # None exactly where one process has None
        _assert_close(got, want)


@pytest.mark.slow
def test_a_user_error_on_the_workers_is_one_line(files, ray_head):
    """A non-finite loss on the workers, retried once like any failure, ends as the one-line error it was."""
    recipe = files["dir"] / "recipe_nan.yaml"
    recipe.write_text(RECIPE.replace("lr: 0.05", "lr: 1.0e+12"))
    p = _cli(["train-supernet", str(files["space"]), "--data", DATA, "--recipe", str(recipe), "--out",
              str(files["dir"] / "nan"), "--ray-address", ray_head, "--num-workers", "2", "--max-failures", "1"])
    assert p.returncode == 2
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith(f"nas: error: {recipe}:4: optimizer.lr: the training loss is nan"), p.stderr[-3000:]

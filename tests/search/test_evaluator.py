"""Evaluator: scores equal an independent computation on ``extract``-ed subnets over the search split (disjoint
from train and val), caching, BatchNorm recalibration, measured mean MACs of data-dependent archs, the
``nas eval`` / ``nas flops --supernet`` commands and target -> proxy mapping."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nas.cli import main
from nas.cost import cost
from nas.data import load_data
from nas.errors import NasError
from nas.space import load_space, save_arch
from nas.space.proxy import check_proxy, to_proxy
from nas.supernet import Supernet, recalibrate_bn
from nas.supernet.run import load_supernet_run
from nas.supernet.scoring import Evaluator
from nas.train import train_supernet
from tests.helpers import EVAL_RECIPE, tiny_space

DATA = "synthetic:200:5"  # 16x16 RGB, 5 classes: val 40, search 40 (holdout 0.25), train 120
STATIC = tiny_space(5)
PROGRESSIVE = """\
name: tiny_ps
input: {size: 16, channels: 3}
num_classes: 5
tokenizer: {type: progressive, points: 2, iterations: {choice: [1, 2]}, share_weights: {choice: [false, true]}}
head: cls
qkv_bias: false
stages:
  - dim: {choice: [16, 32]}
    heads: 2
    mlp_ratio: 2
    cells: [{choice: [basic, identity]}, basic]
"""
COARSE_FINE = """\
name: tiny_cf
input: {size: 16, channels: 3}
num_classes: 5
tokenizer: {type: coarse_fine, patch_size: 4, coarse_grid: 2, alpha: {choice: [0.25, 1.0]},
            exit_threshold: {choice: [0.22, 0.3, 1.0]}}
head: cls
stages:
  - dim: 16
    heads: 2
    mlp_ratio: 2
    cells: [basic, {choice: [basic, identity]}, basic]
"""
RECIPE = EVAL_RECIPE


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def _supernet(tmp: Path, text: str, seed: int = 0):
    space = load_space(_write(tmp, "space.yaml", text))
    torch.manual_seed(seed)
    return space, Supernet(space).eval()


def _splits(space, holdout: float = 0.25):
    t = space.template()
    return load_data(DATA, t["input"]["size"], t["input"]["channels"], seed=0, holdout=holdout)


def _reference(model: torch.nn.Module, dataset) -> tuple[float, float, list[int]]:
    """Top-1, mean cross-entropy and per-image MACs of ``model`` on every image of ``dataset``, one at a time
    (no batching, no preloading: independent of the evaluator)."""
    correct, loss, macs = 0, 0.0, []
    model.eval()
    with torch.no_grad():
        for i in range(len(dataset)):
            x, y = dataset[i]
            logits = model(x[None])
            correct += int(logits.argmax(-1).item() == y)
            loss += F.cross_entropy(logits, torch.tensor([y])).item()
            if getattr(model, "last_macs", None) is not None:
                macs.append(int(torch.as_tensor(model.last_macs).reshape(-1)[0]))
    return correct / len(dataset), loss / len(dataset), macs


def test_scores_equal_extracted_subnet_on_the_search_split(tmp_path):
    space, supernet = _supernet(tmp_path, STATIC)
    splits = _splits(space)
    ev = Evaluator(supernet, splits, batch_size=16)  # ragged last batch: 40 = 16 + 16 + 8
    rng = random.Random(0)
    for arch in [space.sample(rng) for _ in range(4)]:
        e = ev(arch)
        top1, loss, _ = _reference(supernet.extract(arch), splits.search)
        assert e.score == pytest.approx(top1, abs=1e-12) and 0 <= e.score <= 1
        assert e.loss == pytest.approx(loss, rel=1e-5) and e.objective == -e.loss
        c = cost(arch)
        assert (e.arch_hash, e.macs, e.params, e.macs_mean) == (arch.hash(), c.macs, c.params, None)
        assert e.seconds > 0


def test_scores_the_search_split_disjoint_from_train_and_val(tmp_path):
    space, supernet = _supernet(tmp_path, STATIC)
    splits = _splits(space)
    record = splits.split_record()["members"]
    search, val = set(record["search"]), set(record["val"])
    train = set(splits.train.indices)
    assert search and not search & val and not search & train
    ev = Evaluator(supernet, splits)
    assert ev.num_images == len(search)
    images = torch.cat([x for x, _ in ev.batches()])
    expected = torch.stack([splits.search[i][0] for i in range(len(splits.search))])
    assert torch.equal(images, expected)
    assert Evaluator(supernet, splits, "val").num_images == len(val)
    with pytest.raises(NasError, match="never scored on training images"):
        Evaluator(supernet, splits, "train")


def test_cache_by_arch_hash(tmp_path):
    space, supernet = _supernet(tmp_path, STATIC)
    ev = Evaluator(supernet, _splits(space))
    a, b = space.sample(1), space.sample(2)
    first = ev(a)
    assert ev(a) is first and ev(a.__class__.from_dict(a.to_dict())) is first  # an equal arch object hits too
    ev(b)
    assert len(ev) == 2 and set(ev.cache) == {a.hash(), b.hash()}


def test_batchnorm_is_recalibrated_on_training_batches(tmp_path):
    space, supernet = _supernet(tmp_path, PROGRESSIVE)
    splits = _splits(space)
    arch = space.sample(0)
    stats = supernet.batchnorm_stats(arch)
    assert stats, "the progressive tokenizer's stem has BatchNorm"
    with torch.no_grad():  # statistics far from the data's: a score without recalibration would suffer
        for _, s in stats:
            s["running_mean"].fill_(3.0)
            s["running_var"].fill_(0.01)
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    ev = Evaluator(supernet, splits, batch_size=16, bn_batches=2)
    e = ev(arch)
    # independently: a copy recalibrated on the first two batches of the seeded training order
    from nas.data import make_loader
    loader = make_loader(splits.train, 16, shuffle=True, seed=0, drop_last=False)
    batches = [x for x, _ in list(loader)[:2]]
    model = recalibrate_bn(supernet.extract(arch), batches)
    top1, loss, _ = _reference(model, splits.search)
    assert e.score == pytest.approx(top1, abs=1e-12) and e.loss == pytest.approx(loss, rel=1e-5)
    stale_top1, stale_loss, _ = _reference(supernet.extract(arch), splits.search)
    assert stale_loss != pytest.approx(loss, rel=1e-3)  # recalibration changed the numbers
    after = supernet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the supernet's own statistics untouched


def test_data_dependent_archs_report_measured_mean_macs(tmp_path):
    space, supernet = _supernet(tmp_path, COARSE_FINE)
    splits = _splits(space)
    ev = Evaluator(supernet, splits, batch_size=16)
    means = set()
    for vec in ([0, 0, 0], [0, 1, 0], [1, 1, 1], [1, 2, 0]):
        arch = space.decode(vec)
        e = ev(arch)
        top1, loss, macs = _reference(supernet.extract(arch), splits.search)
        assert e.macs_mean == round(sum(macs) / len(macs))
        assert cost(arch).macs_min <= e.macs_mean <= e.macs == cost(arch).macs_max
        assert e.score == pytest.approx(top1, abs=1e-12) and e.loss == pytest.approx(loss, rel=1e-5)
        means.add(e.macs_mean)
    assert len(means) > 2  # the thresholds and alpha change the mean


# --- supernet runs, the CLI, target and proxy -----------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A supernet trained for one epoch on a proxy of ``target.yaml`` (stage 0 at width 16 instead of 32)."""
    d = tmp_path_factory.mktemp("run")
    target = _write(d, "target.yaml", STATIC.replace("dim: 16\n    heads: 2\n    mlp_ratio: 2",
                                                     "dim: 32\n    heads: 2\n    mlp_ratio: 2"))
    recipe = _write(d, "recipe.yaml", RECIPE + "space_overrides:\n  stages[0].dim: 16\n")
    train_supernet(str(target), data=DATA, recipe=str(recipe), out=d / "run", progress=False)
    return d


def test_load_supernet_run(run):
    r = load_supernet_run(run / "run")
    assert r.data == DATA and r.recipe.epochs == 1 and r.space.template()["stages"][0]["dim"] == 16
    assert r.space.hash == json.loads((run / "run" / "run.json").read_text())["space"]["hash"]
    assert not r.supernet.training
    assert r.target_space().template()["stages"][0]["dim"] == 32
    unfinished = run / "unfinished"
    shutil.copytree(run / "run", unfinished)
    (unfinished / "supernet.safetensors").unlink()
    with pytest.raises(NasError, match="training has not finished"):
        load_supernet_run(unfinished)


def test_eval_cli_scores_proxy_and_target_archs(run, capsys, monkeypatch):
    monkeypatch.chdir(run.parent)  # run.json records the target file as given to training
    r = load_supernet_run(run / "run")
    target = r.target_space()
    arch = target.sample(3)
    proxy = to_proxy(arch, target, r.space)
    assert proxy.stages[0].dim == 16 and proxy.stages[1] == arch.stages[1]
    save_arch(arch, run / "target_arch.yaml")
    save_arch(proxy, run / "proxy_arch.yaml")
    expected = Evaluator(r.supernet, r.splits())(proxy)
    for file in ("proxy_arch.yaml", "target_arch.yaml"):
        assert main(["eval", str(run / file), "--supernet", str(run / "run"), "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["split"] == "search" and out["images"] == 40
        assert (out["score"], out["loss"], out["macs"]) == (expected.score, expected.loss, expected.macs)
    assert out["target_macs"] == cost(arch).macs > expected.macs
    assert main(["eval", str(run / "proxy_arch.yaml"), "--supernet", str(run / "run"), "--split", "val",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 40
    assert main(["eval", str(run / "proxy_arch.yaml"), "--supernet", str(run / "nowhere")]) == 2
    assert "no run.json" in capsys.readouterr().err


def test_flops_cli_with_supernet_weights(run, capsys):
    r = load_supernet_run(run / "run")
    arch = r.space.sample(0)
    save_arch(arch, run / "a.yaml")
    assert main(["flops", str(run / "a.yaml"), "--supernet", str(run / "run"), "--data", DATA, "--images", "20",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["macs_mean"] == out["macs"] == cost(arch).macs and out["images"] == 20
    target_arch = r.target_space().sample(0)
    save_arch(target_arch, run / "t.yaml")
    assert main(["flops", str(run / "t.yaml"), "--supernet", str(run / "run"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    proxy = to_proxy(target_arch, r.target_space(), r.space)
    assert out["macs"] == cost(target_arch).macs and out["measured_on"] == "proxy"
    assert out["macs_mean"] == out["proxy_macs"] == cost(proxy).macs


def test_proxy_with_other_dimensions_is_refused(tmp_path):
    target = load_space(_write(tmp_path, "t.yaml", STATIC))
    same = load_space(_write(tmp_path, "t.yaml", STATIC), overrides={"stages[1].dim": {"choice": [8, 12]}})
    check_proxy(target, same)
    more = load_space(_write(tmp_path, "t.yaml", STATIC), overrides={"stages[1].dim": {"choice": [8, 12, 16]}})
    with pytest.raises(NasError, match=r"stages\[1\]\.dim has 2 values .* 3 values"):
        check_proxy(target, more)
    fewer = load_space(_write(tmp_path, "t.yaml", STATIC), overrides={"stages[1].heads": 2})
    with pytest.raises(NasError, match=r"no dimension stages\[1\]\.heads"):
        to_proxy(target.sample(0), target, fewer)

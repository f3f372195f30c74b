"""Checkpoints: atomic commits, exact state round trips without pickles, corrupted and partial checkpoints."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from safetensors.torch import load_file
from torch import nn

from nas.errors import NasError
from nas.train import checkpoint as ck


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    for _ in range(steps):
        x = torch.randn(5, 4)  # draws from the global RNG: a restored RNG must give the same batches
        loss = model(x).square().mean() + float(np.random.rand()) + random.random()
        opt.zero_grad()
        loss.backward()
        opt.step()


def _save(folder: Path, step: int, model: nn.Module, opt: torch.optim.Optimizer, keep: int = 2) -> Path:
    opt_js, tensors = ck.optimizer_state(opt, model)
    rng_js, rng_t = ck.rng_state()
    return ck.save_checkpoint(folder, step, model, {"optimizer": opt_js, "rng": rng_js}, {**tensors, **rng_t}, keep)


def _restore(folder: Path, model: nn.Module, opt: torch.optim.Optimizer) -> ck.Checkpoint:
    c = ck.load_latest(folder)
    assert c is not None
    c.load_model(model)
    t = c.tensors()
    ck.load_optimizer_state(opt, model, c.state["optimizer"], t)
    ck.set_rng_state(c.state["rng"], t)
    return c


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
    lambda p: torch.optim.AdamW(p, lr=1e-2),  # tensor 'step' scalars, two buffers per parameter
], ids=["sgd", "adamw"])
def test_round_trip_continues_bitwise(tmp_path: Path, make_opt):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    a = _model()
    opt_a = make_opt(a.parameters())
    _train(a, opt_a, 3)
    _save(tmp_path, 3, a, opt_a)
    _train(a, opt_a, 4)  # the uninterrupted continuation

    b = _model(seed=7)  # other weights and RNG state: everything must come from the checkpoint
    opt_b = make_opt(b.parameters())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    c = _restore(tmp_path, b, opt_b)
    assert c.step == 3
    _train(b, opt_b, 4)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name  # weights, BN running stats and num_batches_tracked


def test_optimizer_state_follows_parameter_names_not_positions(tmp_path: Path):
    """A model that registers its parameters in another order, with an optimiser that groups them in another
    order, gets every buffer back on the parameter of the same name and continues bitwise."""
    class Net(nn.Module):  # Linear 4->8, ReLU, Linear 8->3, named "inp" and "out", registered in either order
        def __init__(self, out_first: bool) -> None:
            super().__init__()
            layers = {"inp": nn.Linear(4, 8), "out": nn.Linear(8, 3)}
            for name in (("out", "inp") if out_first else ("inp", "out")):
                self.add_module(name, layers[name])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.inp(x).relu())

    def groups(m: nn.Module) -> list[dict]:  # weight decay on matrices only, like timm: two groups
        named = list(m.named_parameters())
        return [{"params": [p for n, p in named if p.ndim > 1], "weight_decay": 1e-2},
                {"params": [p for n, p in named if p.ndim <= 1], "weight_decay": 0.0}]

    def train(m: nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        for _ in range(3):
            loss = m(torch.randn(5, 4, generator=g)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    torch.manual_seed(0)
    a = Net(out_first=False)
    opt_a = torch.optim.AdamW(groups(a), lr=1e-2)
    train(a, opt_a, 1)
    js, tensors = ck.optimizer_state(opt_a, a)
    b = Net(out_first=True)
    assert [n for n, _ in b.named_parameters()] != [n for n, _ in a.named_parameters()]
    b.load_state_dict(a.state_dict())
    opt_b = torch.optim.AdamW(groups(b)[::-1], lr=1e-2)  # groups in the other order too
    stored = safetensors.torch.load(safetensors.torch.save(tensors))  # as a checkpoint holds them (copies)
    ck.load_optimizer_state(opt_b, b, json.loads(json.dumps(js)), stored)
    train(a, opt_a, 2)
    train(b, opt_b, 2)
    for name, p in a.named_parameters():
        assert torch.equal(p, b.get_parameter(name)), name
    c = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))  # another model: a clear error
    with pytest.raises(ValueError, match="lacks|matches no group"):
        ck.load_optimizer_state(torch.optim.AdamW(c.parameters()), c, js, tensors)


def test_layout_is_json_and_safetensors_only(tmp_path: Path):
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    _train(m, opt, 1)
    path = _save(tmp_path, 1, m, opt)
    assert path.name == "ckpt-000000001"
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "state.json", "state.safetensors"]
    state = json.loads((path / "state.json").read_text())
    assert state["format"] == ck.CKPT_FORMAT and state["global_step"] == 1
    assert state["files"]["model.safetensors"] == ck.sha256_file(path / "model.safetensors")
    weights = load_file(path / "model.safetensors")
    assert set(weights) == set(m.state_dict()) and torch.equal(weights["3.weight"], m.state_dict()["3.weight"])
    tensors = load_file(path / "state.safetensors")
    assert {"rng.torch", "optim/0.weight/momentum_buffer", "optim/3.bias/momentum_buffer"} <= set(tensors)
    assert state["optimizer"]["param_groups"][0]["params"] == ["0.weight", "0.bias", "1.weight", "1.bias",
                                                               "3.weight", "3.bias"]


def test_keep_prunes_old_checkpoints(tmp_path: Path):
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for step in (2, 4, 6, 8):
        _save(tmp_path, step, m, opt, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000006", "ckpt-000000008"]


def test_killed_writer_leaves_previous_checkpoint(tmp_path: Path, monkeypatch):
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    _train(m, opt, 1)
    _save(tmp_path, 1, m, opt)
    before = m.state_dict()["0.weight"].clone()
    _train(m, opt, 1)

    def die(*args):  # the process "dies" right before the commit rename
        raise KeyboardInterrupt
    monkeypatch.setattr(ck.os, "rename", die)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 2, m, opt)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-000000001"]  # no temp folder left either
    fresh = _model(seed=3)
    c = _restore(tmp_path, fresh, torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9))
    assert c.step == 1 and torch.equal(fresh.state_dict()["0.weight"], before)


def test_leftovers_and_corruption_fall_back_to_the_last_good_checkpoint(tmp_path: Path, capsys):
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    _save(tmp_path, 1, m, opt, keep=5)
    good = m.state_dict()["0.weight"].clone()
    _train(m, opt, 1)
    _save(tmp_path, 2, m, opt, keep=5)
    _save(tmp_path, 3, m, opt, keep=5)
    # a writer killed mid-way (SIGKILL): a temp folder with a partial file, and a temp file
    (tmp_path / ".tmp-ckpt-000000004-999").mkdir()
    (tmp_path / ".tmp-ckpt-000000004-999" / "model.safetensors").write_bytes(b"\x00" * 10)
    (tmp_path / ".tmp-x.json.999").write_text("{")
    # bit rot in the newest two: a truncated weights file, an unparsable state.json
    w = tmp_path / "ckpt-000000003" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-7])
    (tmp_path / "ckpt-000000002" / "state.json").write_text('{"format": "nas-checkpoint/1", "files": {')
    fresh = _model(seed=5)
    c = _restore(tmp_path, fresh, torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9))
    assert c.step == 1 and torch.equal(fresh.state_dict()["0.weight"], good)
    err = capsys.readouterr().err
    assert "ckpt-000000003 is invalid (model.safetensors does not match its sha256" in err
    assert "ckpt-000000002 is invalid (state.json unreadable" in err
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["broken-ckpt-000000002-%d" % os.getpid(), "broken-ckpt-000000003-%d" % os.getpid(),
                     "ckpt-000000001"]
    assert ck.load_latest(tmp_path).step == 1  # broken ones are never read again


def test_no_valid_checkpoint_is_an_error_not_a_silent_restart(tmp_path: Path):
    m = _model()
    _save(tmp_path, 1, m, torch.optim.SGD(m.parameters(), lr=0.1))
    (tmp_path / "ckpt-000000001" / "state.safetensors").unlink()
    with pytest.raises(NasError, match="no valid checkpoint: ckpt-000000001: state.safetensors is missing"):
        ck.load_latest(tmp_path)
    assert (tmp_path / "ckpt-000000001").is_dir()  # nothing renamed
    assert ck.load_latest(tmp_path / "nothing-here") is None

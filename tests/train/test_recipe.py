"""Recipes: the PSViT defaults, round trips, and malformed files rejected with file:line via the CLI (exit 2)."""
from __future__ import annotations

from pathlib import Path

import pytest

from nas.mechanisms.coarse_fine import CoarseFineTraining
import yaml

from nas.cli import main
from nas.errors import NasError
from nas.train.recipe import Recipe, load_recipe

ROOT = Path(__file__).resolve().parents[2]


def test_default_recipe_is_psvit_section_4_1():
    r = Recipe()
    # PSViT (arXiv 2108.03428) sec. 4.1: Nesterov SGD, momentum 0.9, lr 0.2 cosine to 0, batch 1024, L2 1e-4,
    # 100 epochs, label smoothing 0.1; SPOS uniform single-path sampling.
    assert (r.optimizer.name, r.optimizer.nesterov, r.optimizer.momentum, r.optimizer.lr) == ("sgd", True, 0.9, 0.2)
    assert (r.schedule.name, r.schedule.min_lr, r.schedule.warmup_epochs) == ("cosine", 0.0, 0)
    assert (r.batch_size, r.optimizer.weight_decay, r.epochs, r.label_smoothing) == (1024, 1e-4, 100, 0.1)
    assert r.sampler.type == "uniform" and not r.mixup.active
    assert r.drop_path == 0 and r.mechanisms["coarse_fine"].warmup_fraction == 2 / 3  # none stated; CF-ViT's paper: 2/3
    assert r.optimizer.timm_kwargs() == {"opt": "sgd", "lr": 0.2, "weight_decay": 1e-4, "momentum": 0.9}


def test_shipped_recipes_load_and_spos_file_equals_the_defaults():
    spos = load_recipe(ROOT / "recipes" / "spos_supernet.yaml")
    assert spos == Recipe(name=spos.name, description=spos.description)
    assert spos.hash() == Recipe().hash()  # name and description are not part of the hash
    demo = load_recipe(ROOT / "recipes" / "demo.yaml")
    assert demo.epochs <= 2 and demo.space_overrides["input.size"] <= 32
    assert demo.hash() != spos.hash()


def test_round_trip_through_yaml(tmp_path: Path):
    text = """
name: x
seed: 3
epochs: 4
batch_size: 6
optimizer: {name: adamw, lr: 5e-4, weight_decay: 0.05, betas: [0.8, 0.99]}
schedule: {name: cosine, min_lr: 1e-6, warmup_epochs: 1, warmup_lr: 1e-7}
mixup: {mixup_alpha: 0.8, cutmix_alpha: 1.0}
sampler: {type: flops_bins, bins: 5, max_tries: 7}
data: {holdout: 0.2, limit: {train: 100, val: 10}, num_workers: 1}
checkpoint: {every_steps: 3, keep: 4}
drop_path: 0.1
coarse_fine: {warmup_fraction: 0.5}
space_overrides: {input.size: 16}
"""
    (tmp_path / "a.yaml").write_text(text)
    a = load_recipe(tmp_path / "a.yaml")
    assert a.optimizer.betas == (0.8, 0.99) and a.data.limit == {"train": 100, "val": 10}
    assert a.optimizer.timm_kwargs()["opt"] == "adamw" and a.mixup.active
    assert a.model_kwargs() == {"drop_path": 0.1, "options": {"coarse_fine": CoarseFineTraining(0.5)}}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(a.to_dict()))
    b = load_recipe(tmp_path / "b.yaml")
    assert a == b and a.hash() == b.hash()
    assert Recipe(seed=1).hash() != Recipe().hash()


BAD = [  # (recipe text, line, key, message fragment)
    ("epochs: 2\nbatchsize: 8\n", 2, "batchsize", "did you mean 'batch_size'?"),
    ("epochs: 2\noptimizer:\n  name: sgd\n  lr: -0.1\n", 4, "optimizer.lr", "must be a number > 0.0, got -0.1"),
    ("optimizer: {lr: fast}\n", 1, "optimizer.lr", "expected a number, got a string 'fast'"),
    ("epochs: two\n", 1, "epochs", "expected an integer"),
    ("optimizer: {name: adamw, momentum: 0.9}\n", 1, "optimizer.momentum", "unknown key 'momentum'"),
    ("optimizer: {name: sgd, momentum: 1.0}\n", 1, "optimizer.momentum", "must be below 1.0"),
    ("optimizer: {name: rmsprop}\n", 1, "optimizer.name", "expected one of sgd, adamw"),
    ("label_smoothing: 1\n", 1, "label_smoothing", "must be below 1.0"),
    ("sampler: {type: flops_bin}\n", 1, "sampler.type", "did you mean 'flops_bins'?"),
    ("sampler: {type: uniform, bins: 4}\n", 1, "sampler.bins", "unknown key 'bins'"),
    ("epochs: 3\nschedule:\n  warmup_epochs: 3\n", 3, "schedule.warmup_epochs", "must be below epochs 3"),
    ("batch_size: 7\nmixup: {mixup_alpha: 0.8}\n", 1, "batch_size", "even batch_size"),
    ("data: {limit: {train: 0}}\n", 1, "data.limit.train", "must be an integer >= 1"),
    ("data: {limit: {tran: 5}}\n", 1, "data.limit.tran", "did you mean 'train'?"),
    ("device: gpu\n", 1, "device", "expected one of auto, cpu, cuda"),
    ("drop_path: 1\n", 1, "drop_path", "must be below 1.0"),
    ("drop_path: -0.1\n", 1, "drop_path", "must be a number >= 0.0"),
    ("coarse_fine: {warmup_fraction: 1.5}\n", 1, "coarse_fine.warmup_fraction", "must be a number in [0.0, 1.0]"),
    ("coarse_fine: {warmup: 0.5}\n", 1, "coarse_fine.warmup", "unknown key 'warmup' (allowed here: warmup_fraction)"),
    ("seed: 1\nseed: 2\n", 2, "seed", "duplicate key"),
    ("- a\n- b\n", 1, None, "expected a mapping"),
]


@pytest.mark.parametrize("text,line,key,fragment", BAD, ids=[b[2] or "list" for b in BAD])
def test_malformed_recipe_cli_error(tmp_path: Path, capsys, text: str, line: int, key: str | None, fragment: str):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    # the recipe is checked before the space or the data are touched: the space file need not exist
    assert main(["train-supernet", str(tmp_path / "space.yaml"), "--recipe", str(recipe),
                 "--out", str(tmp_path / "run")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert err.startswith(f"nas: error: {recipe}:{line}: " + (f"{key}: " if key else "")), err
    assert fragment in err, err
    assert not (tmp_path / "run").exists()


def test_bad_space_override_points_at_the_recipe(tmp_path: Path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 1\nspace_overrides:\n  input.size: 3\n  tokenizer.patch: 4\n")
    with pytest.raises(NasError) as e:
        from nas.train.spos import resolve
        resolve(str(ROOT / "spaces" / "psvit_tiny.yaml"), "synthetic:30", load_recipe(recipe))
    assert (e.value.file, e.value.line, e.value.key) == (str(recipe), 4, "space_overrides.tokenizer.patch")
    recipe.write_text("epochs: 1\nspace_overrides:\n  input.size: 3\n")
    with pytest.raises(NasError) as e:
        resolve(str(ROOT / "spaces" / "psvit_tiny.yaml"), "synthetic:30", load_recipe(recipe))
    assert (e.value.line, e.value.key) == (3, "space_overrides.input.size")
    assert "[4, 4096], got 3" in e.value.message

"""The tokenizer as a searchable choice (``tokenizer: {choice: [{type: patch, ...}, ...]}``) and ``all_four``:
conditional dimensions, exact size and bounds, sampling, encoding, the cost of every option, the supernet."""
from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest
import torch

from nas.cli import main
from nas.cost import cost
from nas.models import build_model
from nas.space import load_space, sample_distinct
from nas.train.recipe import load_recipe
from tests.helpers import count_macs

ROOT = Path(__file__).resolve().parents[2]
ALL_FOUR = ROOT / "spaces" / "all_four.yaml"

# all_four's structure at the proxy scale, small enough to enumerate (every vector)
SMALL = """\
name: small_four
input: {size: 32, channels: 3}
num_classes: 10
tokenizer:
  choice:
    - {type: patch, patch_size: {choice: [4, 8]}}
    - {type: progressive, points: {choice: [4, 6]}, iterations: {choice: [1, 2]}}
    - {type: coarse_fine, patch_size: 4, coarse_grid: 4, alpha: {choice: [0.5, 0.75]}, exit_threshold: 1.0}
stages:
  - {dim: {choice: [16, 32]}, heads: 2, mlp_ratio: {choice: [1.0, 2.0]},
     cells: [basic, {choice: [basic, shared_pair, identity]}, {choice: [basic, shared_pair]}]}
ats: {blocks: {subset: [2]}, keep: {choice: [0.5, 1.0]}}
"""


@pytest.fixture()
def small(tmp_path: Path):
    path = tmp_path / "small_four.yaml"
    path.write_text(SMALL)
    return load_space(path)


def every_arch(space):
    return {space.decode(list(v)) for v in itertools.product(*(range(len(d.values)) for d in space.dims))}


def test_size_counts_archs_not_vectors(small):
    archs = every_arch(small)
    # patch 2 sizes, progressive 2 x 2, coarse_fine 2 alphas; the body 2 x 2 x 3 x 2; ATS (block x keep) 2 x 2 with
    # patch and progressive only (coarse_fine is not reducible: the ATS dimensions are inactive there)
    assert small.size() == len(archs) == (2 + 4) * 24 * 4 + 2 * 24
    assert sorted(set(sample_distinct(small, small.size(), seed=1)), key=lambda a: a.hash()) == sorted(
        archs, key=lambda a: a.hash())
    assert {a.tokenizer.type for a in archs} == {"patch", "progressive", "coarse_fine"}
    assert all(a.reduction is None for a in archs if a.tokenizer.type == "coarse_fine")


def test_bounds_equal_brute_force(small):
    costs = [cost(a) for a in every_arch(small)]
    assert small.cost_bounds() == {"min_macs": min(c.macs for c in costs), "max_macs": max(c.macs for c in costs),
                                   "min_params": min(c.params for c in costs),
                                   "max_params": max(c.params for c in costs)}
    for key, arch in small.extreme_archs().items():
        c = cost(arch)
        assert (c.macs if key.endswith("macs") else c.params) == small.cost_bounds()[key]


def test_encode_decode_and_conditional_dimensions(small):
    for arch in every_arch(small):
        vec = small.encode(arch)
        assert small.decode(vec) == arch
        active = small.active(vec)
        assert all(v == 0 for v, a in zip(vec, active) if not a)  # inactive dimensions are written as 0
    paths = {d.path: i for i, d in enumerate(small.dims)}
    assert small.dims[paths["tokenizer"]].values == ("patch", "progressive", "coarse_fine")
    assert small.conditions[paths["tokenizer.choice[1].points"]] == (paths["tokenizer"], frozenset({1}))
    assert small.conditions[paths["ats.keep"]] == (paths["tokenizer"], frozenset({0, 1}))
    assert small.conditions[paths["stages[0].dim"]] is None


def test_mutation_moves_active_dimensions_only(small):
    arch = next(a for a in every_arch(small) if a.tokenizer.type == "patch")
    seen = set()
    for seed in range(200):
        child = small.mutate(arch, prob=1.0, seed=seed)
        before, after = small.encode(arch), small.encode(child)
        active = small.active(before)
        changed = {i for i, (x, y) in enumerate(zip(before, after)) if x != y}
        assert all(active[i] for i in changed)
        seen.add(child.tokenizer.type)
    assert seen == {"progressive", "coarse_fine"}  # prob 1: the tokenizer always moves to another option


def test_all_four_validates_and_samples_every_tokenizer(capsys):
    assert main(["space", "validate", str(ALL_FOUR)]) == 0
    assert main(["space", "show", str(ALL_FOUR)]) == 0
    out = capsys.readouterr().out
    assert "archs over" in out and "MACs" in out
    space = load_space(ALL_FOUR)
    counts = Counter(space.sample(seed).tokenizer.type for seed in range(200))
    assert set(counts) == {"patch", "progressive", "coarse_fine"}, counts
    assert space.data_dependent()


def test_all_four_proxy_recipe_keeps_the_dimensions():
    from nas.search.proxy import check_proxy, to_proxy

    target = load_space(ALL_FOUR)
    rc = load_recipe(ROOT / "recipes" / "cpu_supernet_all_four.yaml")
    proxy = load_space(ALL_FOUR, overrides=rc.space_overrides)
    check_proxy(target, proxy)
    for seed in range(30):
        arch = target.sample(seed)
        p = to_proxy(arch, target, proxy)
        assert (p.tokenizer.type, p.reduction is None) == (arch.tokenizer.type, arch.reduction is None)


@pytest.mark.parametrize("seed", range(6))
def test_cost_equals_an_independent_count(small, seed):
    """Params of the built model and FlopCounter MACs per image (CF-ViT: both passes, exit_threshold 1.0 never
    exits; MACs for archs where ATS acts in no cell, so that the worst case is what runs)."""
    rng = __import__("random").Random(seed)
    for arch in rng.sample(sorted(every_arch(small), key=lambda a: a.hash()), 6):
        c = cost(arch)
        model = build_model(arch).eval()
        assert c.params == sum(p.numel() for p in model.parameters())
        if arch.reduction is None or not arch.reduction.blocks:
            assert count_macs(model, torch.randn(1, 3, 32, 32)) == c.macs, arch


def test_supernet_paths_equal_extracted_models_for_every_tokenizer(small):
    from nas.supernet import Supernet

    torch.manual_seed(0)
    net = Supernet(small).eval()
    keys = {k.split(".")[1] for k in net.state_dict() if k.startswith("tokenizer.")}
    assert keys == {"patch4", "patch8", "progressive", "coarse_fine"}  # one tokenizer per weights name
    assert not any(k.startswith("tokenizer.") and k.split(".")[1] not in keys for k in net.state_dict())
    x = torch.randn(2, 3, 32, 32)
    seen = Counter()
    for seed in range(40):
        arch = small.sample(seed)
        with torch.no_grad():
            assert torch.equal(net(x, arch), net.extract(arch).eval()(x)), arch
        seen[arch.tokenizer.type] += 1
    assert set(seen) == {"patch", "progressive", "coarse_fine"}


def test_optuna_suggests_inactive_dimensions_not_at_all(small):
    optuna = pytest.importorskip("optuna")
    from types import SimpleNamespace

    from nas.search.optuna_search import suggest_vector

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        vec = suggest_vector(trial, SimpleNamespace(space=small))
        active = small.active(vec)
        suggested = set(trial.params)
        for d, a in zip(small.dims, active):
            assert (d.path in suggested) == (a and len(d.values) > 1), d.path
        study.tell(trial, 0.0)


@pytest.mark.parametrize("text, line, key, message", [
    ("    - {type: patch, patch_size: 4}\n    - {type: patch, patch_size: 8}\n", 7, "tokenizer.choice[1]",
     "two options of type patch"),
    ("    - {type: patch, patch_size: 5}\n    - {type: progressive}\n", 6, "tokenizer.choice[0].patch_size",
     "not divisible by patch_size 5"),
    ("    - {type: patch, patch_size: 4}\n    - {type: coarse_fine, patch_size: 4, coarse_grid: 3}\n", 7,
     "tokenizer.choice[1].coarse_grid", "coarse_grid 3 needs input size"),
])
def test_bad_options_name_their_line_and_key(tmp_path: Path, capsys, text, line, key, message):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\ninput: {size: 32, channels: 3}\nnum_classes: 10\ntokenizer:\n  choice:\n" + text
                    + "stages:\n  - {dim: 16, heads: 2, cells: [basic]}\n")
    assert main(["space", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"nas: error: {path}:{line}: {key}: "), err
    assert message in err


def test_a_reduction_needs_a_reducible_option(tmp_path: Path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\ninput: {size: 32, channels: 3}\nnum_classes: 10\ntokenizer:\n  choice:\n"
                    "    - {type: coarse_fine, patch_size: 4, coarse_grid: 4, alpha: {choice: [0.5, 1.0]}}\n"
                    "stages:\n  - {dim: 16, heads: 2, cells: [basic]}\nats: {blocks: [0], keep: 0.5}\n")
    assert main(["space", "validate", str(path)]) == 2
    assert "ats" in capsys.readouterr().err


def test_search_over_a_choice_of_tokenizers_reports_the_winners(tmp_path: Path, capsys):
    """The whole job on the small space: a 1-epoch supernet on synthetic data (every path with its own objective),
    evolution, exports whose inherited weights load into the standalone model, and the table's tokenizer line."""
    from safetensors.torch import load_file

    from nas.space import load_arch

    space = tmp_path / "small_four.yaml"
    space.write_text(SMALL)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 1\nbatch_size: 16\noptimizer: {name: adamw, lr: 1e-3, weight_decay: 0.05}\n"
                      "schedule: {name: none}\nlabel_smoothing: 0.0\ndevice: cpu\n")
    search = tmp_path / "s.yaml"
    search.write_text("searcher: evolution\nmax_evals: 12\nbatch_size: 64\n"
                      "evolution: {population: 6, generations: 2, parents: 3, mutations: 2, crossovers: 2, "
                      "mutation_prob: 0.3}\n")
    b = load_space(space).cost_bounds()
    out = tmp_path / "run"
    assert main(["search", str(space), "--flops", str(b["max_macs"]), "--data", "synthetic:96", "--recipe",
                 str(recipe), "--search-recipe", str(search), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("tokenizer: winner"))
    best = load_arch(out / "best.yaml")
    assert best.tokenizer.type in line and "best random" in line
    model = build_model(best)
    model.load_state_dict(load_file(out / "best.safetensors"))
    assert cost(best).params == sum(p.numel() for p in model.parameters())


def test_all_four_has_cpu_defaults_on_the_builtin_data():
    from nas.search.job import default_search_recipe
    from nas.train.recipe import default_recipe

    assert default_recipe("supernet", "builtin", "all_four").name == "cpu_supernet_all_four.yaml"
    assert default_recipe("supernet", "builtin", "psvit_tiny").name == "cpu_supernet.yaml"
    assert default_recipe("supernet", "synthetic:64", "all_four") is None  # other data: the paper's recipe
    assert default_search_recipe("all_four", None).name == "search_cpu_all_four.yaml"
    assert default_search_recipe("all_four", "optuna") is None  # asked for another searcher: its defaults
    assert default_search_recipe("psvit_tiny", None) is None


def test_a_pickled_space_decodes_the_same(small):
    """Ray actors and deepcopy get a copy of the space: its leaves are new objects (dimension lookup by id)."""
    import copy
    import pickle

    for other in (pickle.loads(pickle.dumps(small)), copy.deepcopy(small)):
        for seed in range(20):
            vec = small.encode(small.sample(seed))
            assert other.decode(vec) == small.decode(vec)
        assert other.cost_bounds() == small.cost_bounds()

"""SearchSpace: exact size, encode/decode, operators, hashing, arch files and cost bounds."""
from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

import nas
from nas.space import load_arch, load_space, save_arch

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "spaces").glob("*.yaml"))

TINY = """
name: tiny
input: {size: 32, channels: 3}
num_classes: 10
tokenizer: {type: patch, patch_size: 8}
pooling: {type: 1d, kernel: {choice: [1, 3]}}
stages:
  - dim: {choice: [16, 32]}
    heads: {choice: [1, 2]}
    mlp_ratio: 2
    cells: {repeat: 2, choice: [basic, shared_pair, identity]}
  - dim: 48
    heads: 2
    mlp_ratio: {choice: [2, 4]}
    cells: [basic, {choice: [basic, shared_pair]}]
ats: {blocks: {subset: [2, 3]}, keep: {choice: [0.5, 1.0]}}
"""


@pytest.fixture
def tiny(tmp_path: Path) -> nas.SearchSpace:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return load_space(path)


def all_archs(space):
    for vec in itertools.product(*(range(len(d.values)) for d in space.dims)):
        yield space.decode(list(vec))


def test_size_is_exact_count_of_distinct_archs(tiny):
    # 2 kernels * 2 dims * 2 heads * 3^2 cells * 2 ratios * 2 cells * 2^2 subset * 2 keeps
    assert tiny.size() == 2 * 2 * 2 * 9 * 2 * 2 * 4 * 2
    assert len({a.hash() for a in all_archs(tiny)}) == tiny.size()


def test_encode_decode_round_trip(tiny):
    rng = random.Random(0)
    for _ in range(50):
        arch = tiny.sample(rng)
        vec = tiny.encode(arch)
        assert tiny.decode(vec) == arch and arch in tiny


def test_sample_is_seeded_and_reaches_every_value(tiny):
    assert tiny.sample(7) == tiny.sample(7)
    rng = random.Random(1)
    seen = [set() for _ in tiny.dims]
    for _ in range(300):
        for i, v in enumerate(tiny.encode(tiny.sample(rng))):
            seen[i].add(v)
    assert all(len(s) == len(d.values) for s, d in zip(seen, tiny.dims))


def test_mutate_changes_only_with_probability(tiny):
    arch = tiny.sample(0)
    assert tiny.mutate(arch, 0.0, 1) == arch
    mutated = tiny.mutate(arch, 1.0, 1)
    # prob 1: every dimension moves to a different value
    assert all(x != y for x, y in zip(tiny.encode(arch), tiny.encode(mutated)))


def test_crossover_takes_each_dimension_from_a_parent(tiny):
    a, b = tiny.sample(1), tiny.sample(2)
    for seed in range(10):
        child = tiny.crossover(a, b, seed)
        assert all(c in (x, y) for c, x, y in zip(tiny.encode(child), tiny.encode(a), tiny.encode(b)))


def test_arch_outside_space_is_rejected(tiny):
    arch = tiny.sample(0)
    other = nas.Arch.from_dict({**arch.to_dict(), "num_classes": 11})
    assert other not in tiny
    with pytest.raises(ValueError, match="num_classes"):
        tiny.encode(other)


def test_space_hash_ignores_name_and_formatting(tmp_path: Path, tiny):
    path = tmp_path / "renamed.yaml"
    path.write_text(TINY.replace("name: tiny", "name: other\n# a comment").replace("{size: 32, channels: 3}",
                                                                                    "\n  size: 32\n  channels: 3"))
    assert load_space(path).hash == tiny.hash
    path.write_text(TINY.replace("num_classes: 10", "num_classes: 100"))
    assert load_space(path).hash != tiny.hash


def test_arch_file_round_trips_exactly(tmp_path: Path, tiny):
    for seed in range(5):
        arch = tiny.sample(seed)
        save_arch(arch, tmp_path / "a.yaml")
        back = load_arch(tmp_path / "a.yaml")
        assert back == arch and back.provenance == arch.provenance and back.hash() == arch.hash()
        assert back.provenance.space == "tiny" and back.provenance.space_hash == tiny.hash


def test_arch_file_rejects_choices(tmp_path: Path, tiny):
    path = tmp_path / "a.yaml"
    save_arch(tiny.sample(0), path)
    path.write_text(path.read_text().replace("head: cls", "head: {choice: [cls, gap]}"))
    with pytest.raises(nas.NasError, match="head"):
        load_arch(path)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_spaces_load_and_sample(path: Path):
    space = load_space(path)
    assert space.size() > 1
    for seed in range(3):
        assert space.sample(seed) in space


@pytest.mark.parametrize("name", ["psvit_tiny", "psvit_2d_tiny"])
def test_shipped_psvit_spaces_contain_1_3g(name: str):
    bounds = load_space(ROOT / "spaces" / f"{name}.yaml").cost_bounds()
    assert bounds["min_macs"] < 1.3e9 < bounds["max_macs"]


def test_psvit_tiny_structure():
    space = load_space(ROOT / "spaces" / "psvit_tiny.yaml")
    arch = space.sample(0)
    assert len(arch.stages) == 3 and all(len(s.cells) == 6 for s in arch.stages)
    assert arch.pooling.type == "1d" and arch.stages[-1].cells[-1] == "basic"
    # 3^17 cell choices (the last cell is fixed), 2 dims, 2 heads, 2 mlp ratios
    assert space.size() == 3**17 * 8

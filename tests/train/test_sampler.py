"""The FLOPs-bin sampler on every shipped space: each MACs bin gets its share of the draws (the ends of the
range included, which uniform sampling almost never reaches), and its state round-trips exactly."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from nas.cost import cost
from nas.space import load_space
from nas.train.sampler import FlopsBinSampler, make_sampler

SPACES = sorted((Path(__file__).resolve().parents[2] / "spaces").glob("*.yaml"))


def shares(sampler: FlopsBinSampler, n: int) -> list[float]:
    counts = Counter(sampler.bin_of(cost(sampler.sample()).macs) for _ in range(n))
    return [counts[i] / n for i in range(sampler.bins)]


def check_shares(path: Path, n: int, tolerance: float) -> None:
    sampler = make_sampler(load_space(path), "flops_bins", seed=0, bins=10)
    got = shares(sampler, n)
    assert all(abs(s - 0.1) <= tolerance for s in got), [round(s, 3) for s in got]
    assert sum(sampler.misses) == 0 and sum(sampler.hits) == n


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_every_bin_gets_its_share(path: Path):
    check_shares(path, 1500, 0.03)  # binomial sd 0.8 points: the tolerance is 3.9 sd


@pytest.mark.slow
@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_every_bin_gets_its_share_over_5000_draws(path: Path):
    check_shares(path, 5000, 0.02)  # binomial sd 0.4 points


def test_uniform_sampling_misses_the_ends_that_bins_reach():
    space = load_space(next(p for p in SPACES if p.stem == "psvit_tiny"))
    binned = make_sampler(space, "flops_bins", seed=0, bins=10)
    uniform = make_sampler(space, "uniform", seed=0)
    u = Counter(binned.bin_of(cost(uniform.sample()).macs) for _ in range(1000))
    assert u[0] == 0 and u[9] == 0  # sums of many independent choices stay near the middle
    b = shares(binned, 1000)
    assert b[0] > 0.07 and b[9] > 0.07


def test_state_round_trip_resumes_exactly():
    space = load_space(next(p for p in SPACES if p.stem == "combined"))
    a = make_sampler(space, "flops_bins", seed=3, bins=10)
    [a.sample() for _ in range(20)]
    state = json.loads(json.dumps(a.state_dict()))  # as stored in a checkpoint's state.json
    expected = [a.sample() for _ in range(20)]
    b = make_sampler(space, "flops_bins", seed=99, bins=10)
    b.load_state_dict(state)
    assert [b.sample() for _ in range(20)] == expected and b.hits == a.hits and b.misses == a.misses

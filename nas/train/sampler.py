"""Which path of the supernet trains at each step: SPOS single-path sampling, with a checkpointable state.

- ``uniform``: ``space.sample(rng)``, every dimension independently uniform (SPOS, PSViT section 3.3).
- ``flops_bins``: [min_macs, max_macs] of the space (the exact ``space.cost_bounds()``) is cut into ``bins``
  equal-width bins; each step picks a bin uniformly, then an arch inside it. Uniform sampling concentrates on
  mid-sized archs (a sum of many independent choices) and almost never reaches the ends of the range; this
  spreads training over the whole MACs range, as SPOS's FLOPs-aware sampling does.

How an arch inside bin b is found (``FlopsBinSampler.sample``): draw a uniform arch x; if it lies in b, take
it. Otherwise walk from x towards the extreme arch on b's side (``space.extreme_archs()``: the min-MACs arch
when x is above b, the max-MACs arch when below), copying the dimensions in which they differ one at a time
in a random order. The walk starts outside b on one side and ends on b's side of the range or inside it (the
extreme arch lies in the first or last bin), so it crosses b; bisection over the number of copied dimensions
finds the crossing in about log2(dimensions) cost evaluations. When one copied dimension jumps over the
whole bin, the walk keeps what it copied before that dimension, drops it and bisects the remaining ones; when
nothing is left to cross the bin, it starts again from a new uniform draw, at most ``max_tries`` times.

What it guarantees: every draw whose bin holds an arch reachable this way returns an arch in that bin, so each
such bin gets its share 1/bins of the draws up to binomial noise (the tests check every shipped space over
5,000 draws); a draw costs a uniform sample plus a few cost evaluations (well under 1 ms on the shipped
spaces). Within a bin the archs are spread by the random start and order, not uniform over the bin.

The arch of training step ``t`` (``at(t)``) is a pure function of ``(seed, t)``: the sampler's generator is
reseeded with ``f"{seed}|{t}"`` before the draw. Every rank of a data-parallel run then trains the same path at
every step without a broadcast, a run on one process and a run on N workers of the same global batch train the
same archs, and a resume needs no generator state. The bin of a step is drawn by the same generator, so the
bins keep their share 1/bins of the steps (independent draws instead of one stream: the same binomial noise).

Decision where the papers are silent (empty bins): when ``max_tries`` walks miss the chosen bin (the bin holds
no arch, or only archs the walks jump over), the arch closest in MACs to the bin among those evaluated is used
and the miss is counted per bin (``misses``, reported in the run log). Training never stalls or fails on an
empty bin; its share goes to the archs nearest to it. ``sample()`` draws the next arch of one ``random.Random``
stream (stateful: ``state_dict`` round-trips it); training uses ``at(t)``, whose only state is the hit and miss
counts (``counters``), kept in checkpoints for the run log.
"""
from __future__ import annotations

import random
from typing import Any

from nas.arch import Arch
from nas.cost import cost
from nas.errors import NasError
from nas.space import SearchSpace


class UniformSampler:
    """One uniformly sampled arch per call."""

    def __init__(self, space: SearchSpace, seed: int | str) -> None:
        self.space, self.seed, self.rng = space, seed, random.Random(seed)

    def sample(self) -> Arch:
        return self.space.sample(self.rng)

    def at(self, step: int) -> Arch:
        """The arch of training step ``step``: ``sample()`` after reseeding with ``(seed, step)`` alone."""
        self.rng.seed(f"{self.seed}|{step}")  # str seeds hash with sha512: stable across versions and machines
        return self.sample()

    def counters(self) -> dict[str, Any]:
        """What ``at`` leaves behind: statistics for the run log (none for uniform sampling)."""
        return {}

    def load_counters(self, state: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))

    def stats(self) -> str:
        return ""


class FlopsBinSampler(UniformSampler):
    """A MACs bin uniformly, then an arch inside it by a walk towards an extreme arch (see the module docstring)."""

    def __init__(self, space: SearchSpace, seed: int | str, bins: int = 10, max_tries: int = 100) -> None:
        if bins < 1 or max_tries < 1:
            raise NasError(f"flops_bins sampler: bins and max_tries must be >= 1, got {bins} and {max_tries}")
        super().__init__(space, seed)
        b, ends = space.cost_bounds(), space.extreme_archs()
        self.lo, self.hi = b["min_macs"], b["max_macs"]
        self.ends = (space.encode(ends["min_macs"]), space.encode(ends["max_macs"]))  # walk targets: down, up
        self.bins, self.max_tries = bins, max_tries
        self.end_bins = (0, self.bin_of(self.hi))
        self.hits, self.misses = [0] * bins, [0] * bins

    def bin_of(self, macs: int) -> int:
        """Bin ``i`` covers [lo + i*w, lo + (i+1)*w), the last one includes ``hi``."""
        if self.hi == self.lo:
            return 0
        return min(max((macs - self.lo) * self.bins // (self.hi - self.lo), 0), self.bins - 1)

    def _distance(self, macs: int, b: int) -> float:
        lo = self.lo + (self.hi - self.lo) * b / self.bins
        hi = self.lo + (self.hi - self.lo) * (b + 1) / self.bins
        return max(lo - macs, macs - hi, 0.0)

    def _walk(self, b: int) -> tuple[Arch, int]:
        """One try: a uniform draw, then bisection along its walk towards the extreme arch on bin b's side.

        Returns (arch, its bin): an arch in bin b, or the closest to b the walk saw. When a single dimension
        jumps over b, the walk keeps the dimensions copied before it, drops that one and bisects the rest.
        """
        space, rng = self.space, self.rng
        vec = [rng.randrange(len(d.values)) for d in space.dims]

        def side(v: list[int]) -> tuple[Arch, int]:         # the arch and its bin relative to b
            a = space.decode(v)
            return a, self.bin_of(cost(a).macs) - b

        arch, s = side(vec)
        closest = (arch, s)
        if s == 0:
            return arch, b
        down = s > 0
        target = self.ends[0 if down else 1]
        rest = [i for i, (x, y) in enumerate(zip(vec, target)) if x != y]
        rng.shuffle(rest)
        end: tuple[Arch, int] | None = (space.decode(target), self.end_bins[0 if down else 1] - b)

        def copied(j: int) -> list[int]:                     # ``vec`` with the first j dimensions of ``rest`` copied
            v = list(vec)
            for i in rest[:j]:
                v[i] = target[i]
            return v

        while rest:
            a_end, s_end = end if end is not None else side(copied(len(rest)))
            if s_end == 0:
                return a_end, b
            if (s_end > 0) == down:                            # the rest of the walk cannot cross b
                break
            lo, hi, s_lo = 0, len(rest), s                     # side(lo) is the start's side, side(hi) is b's other
            while hi - lo > 1:
                mid = (lo + hi) // 2
                a, s_mid = side(copied(mid))
                if s_mid == 0:
                    return a, b
                if abs(s_mid) < abs(closest[1]):
                    closest = (a, s_mid)
                if (s_mid > 0) == down:
                    lo, s_lo = mid, s_mid
                else:
                    hi = mid
            vec, s = copied(lo), s_lo                           # rest[lo] jumps over b: drop it, bisect the others
            rest, end = rest[lo + 1:], None
        return closest[0], b + closest[1]

    def sample(self) -> Arch:
        return self.sample_bin(self.rng.randrange(self.bins))

    def sample_bin(self, b: int) -> Arch:
        """An arch in bin ``b`` (or the closest one found, counted as a miss)."""
        best: tuple[float, Arch] | None = None
        for _ in range(self.max_tries):
            arch, got = self._walk(b)
            if got == b:
                self.hits[b] += 1
                return arch
            d = self._distance(cost(arch).macs, b)
            if best is None or d < best[0]:
                best = (d, arch)
        self.misses[b] += 1
        return best[1]  # type: ignore[index]  # set: max_tries >= 1

    def counters(self) -> dict[str, Any]:
        return {"hits": list(self.hits), "misses": list(self.misses)}

    def load_counters(self, state: dict[str, Any]) -> None:
        self.hits, self.misses = list(state["hits"]), list(state["misses"])

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **self.counters()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.load_counters(state)

    def stats(self) -> str:
        missed = sum(self.misses)
        return (f"flops bins: hits {self.hits}" + (f", misses {self.misses} (the closest draw was used)"
                                                  if missed else ""))


def make_sampler(space: SearchSpace, kind: str, seed: int, bins: int = 10, max_tries: int = 100) -> UniformSampler:
    """The sampler a recipe names; its RNG stream is separate from the model's (seeded by ``'<seed>|arch'``; the arch
    of step ``t`` by ``'<seed>|arch|<t>'``)."""
    key = f"{seed}|arch"  # str seeds hash with sha512 in CPython: stable across versions and machines
    if kind == "uniform":
        return UniformSampler(space, key)
    if kind == "flops_bins":
        return FlopsBinSampler(space, key, bins, max_tries)
    raise ValueError(f"unknown sampler {kind!r}; allowed: uniform, flops_bins")

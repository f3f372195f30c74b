"""Which path of the supernet trains at each step: SPOS single-path sampling, with a checkpointable state.

- ``uniform``: ``space.sample(rng)``, every dimension independently uniform (SPOS, PSViT section 3.3).
- ``flops_bins``: [min_macs, max_macs] of the space (``space.cost_bounds()``) is cut into ``bins`` equal-width
  bins; each step picks a bin uniformly, then draws uniform archs until one falls in the bin (rejection
  sampling, at most ``max_tries`` draws). Uniform sampling concentrates on mid-sized archs (a sum of many
  independent choices); this spreads training over the whole MACs range, as SPOS's FLOPs-aware sampling does.

Decision where the brief was silent (empty bins): when ``max_tries`` draws miss the chosen bin (the bin holds no
arch, or too few to hit), the draw closest in MACs to the bin is used and the miss is counted per bin (``misses``,
reported in the run log). Training never stalls or fails on an empty bin; its share goes to the archs nearest to
it, i.e. to the extremes of the range. Both samplers draw from one ``random.Random`` whose state is saved in every
checkpoint, so a resumed run samples the same archs an uninterrupted one would.
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
        self.space, self.rng = space, random.Random(seed)

    def sample(self) -> Arch:
        return self.space.sample(self.rng)

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))

    def stats(self) -> str:
        return ""


class FlopsBinSampler(UniformSampler):
    """A MACs bin uniformly, then a uniform arch inside it by rejection (see the module docstring)."""

    def __init__(self, space: SearchSpace, seed: int | str, bins: int = 10, max_tries: int = 100) -> None:
        if bins < 1 or max_tries < 1:
            raise NasError(f"flops_bins sampler: bins and max_tries must be >= 1, got {bins} and {max_tries}")
        super().__init__(space, seed)
        b = space.cost_bounds()
        self.lo, self.hi = b["min_macs"], b["max_macs"]
        self.bins, self.max_tries = bins, max_tries
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

    def sample(self) -> Arch:
        b = self.rng.randrange(self.bins)
        best: tuple[float, Arch] | None = None
        for _ in range(self.max_tries):
            arch = self.space.sample(self.rng)
            macs = cost(arch).macs
            if self.bin_of(macs) == b:
                self.hits[b] += 1
                return arch
            d = self._distance(macs, b)
            if best is None or d < best[0]:
                best = (d, arch)
        self.misses[b] += 1
        return best[1]  # type: ignore[index]  # set: max_tries >= 1

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "hits": list(self.hits), "misses": list(self.misses)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.hits, self.misses = list(state["hits"]), list(state["misses"])

    def stats(self) -> str:
        missed = sum(self.misses)
        return (f"flops bins: hits {self.hits}" + (f", misses {self.misses} (the closest draw was used)"
                                                  if missed else ""))


def make_sampler(space: SearchSpace, kind: str, seed: int, bins: int = 10, max_tries: int = 100) -> UniformSampler:
    """The sampler a recipe names; its RNG stream is separate from the model's (seeded by ``'<seed>|arch'``)."""
    key = f"{seed}|arch"  # str seeds hash with sha512 in CPython: stable across versions and machines
    if kind == "uniform":
        return UniformSampler(space, key)
    if kind == "flops_bins":
        return FlopsBinSampler(space, key, bins, max_tries)
    raise ValueError(f"unknown sampler {kind!r}; allowed: uniform, flops_bins")

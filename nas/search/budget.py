"""Budgets: an upper bound or a band on MACs, parameters and/or predicted latency of the *target* arch.

``--flops 1.3G`` bounds MACs from above, ``--flops 1.15G:1.3G`` is a band; ``--params 6M`` and
``--params 5M:6M`` likewise, and ``--latency 8ms`` / ``--latency 6ms:8ms`` on the latency that a table made
on the target device predicts (``--latency-table FILE``, ``nas.latency``). Without flags the space's own
``budget:`` applies (an upper bound). MACs are ``Cost.macs`` (the worst case of a data-dependent arch) when
``on == "worst"``, and the mean MACs per image measured on the search split with the inherited weights when
``on == "mean"`` (how the ATS and CF-ViT papers report their costs). Parameters never depend on the data.

``Budget.check_reachable`` compares the budget with the exact range of the target space
(``SearchSpace.cost_bounds``) and raises a one-line ``NasError`` naming that range when no arch can meet it,
before anything is trained.

Decisions where the papers are silent:

- A band is inclusive at both ends; an upper bound alone has no lower end (0).
- For a mean budget only the upper end of the range can be checked up front (the mean of an arch is at most
  its worst case, so a band starting above the space's largest worst case is unreachable); the lower end of
  the mean range is only known after measuring.
- Latency is predicted, never measured during the search: the table's prediction for the target arch at the
  table's batch size (the worst case of a data-dependent arch), checked before any evaluation like MACs. A
  table without ``--latency`` records the predicted latency of every candidate and bounds nothing.
- The run-directory label of a budget (``label``) names the resolved budget, so ``--flops 1.3G`` and the
  space's own ``budget: {macs: 1.3G}`` resume the same run.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nas.errors import NasError
from nas.space.schema import human, parse_size

if TYPE_CHECKING:
    from nas.arch import Arch
    from nas.latency import LatencyTable

BUDGET_ON = ("worst", "mean")
_MS = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|us|µs)?\s*")
_UNIT_MS = {"ms": 1.0, None: 1.0, "s": 1e3, "us": 1e-3, "µs": 1e-3}


def parse_ms(text: str) -> float:
    """'8ms' -> 8.0; '0.008s', '8000us' and '8' (milliseconds) likewise. ValueError for anything else."""
    m = _MS.fullmatch(str(text))
    if not m or not math.isfinite(float(m.group(1))):
        raise ValueError(f"{text!r} is not a duration (e.g. 8ms, 0.008s, 8000us)")
    return float(m.group(1)) * _UNIT_MS[m.group(2)]


def parse_latency(text: str, flag: str = "--latency") -> tuple[float, float]:
    """'8ms' -> (0, 8.0); '6ms:8ms' -> (6.0, 8.0) milliseconds. Raises NasError naming ``flag``."""
    lo_text, sep, hi_text = str(text).partition(":")
    try:
        lo, hi = (0.0, parse_ms(lo_text)) if not sep else (parse_ms(lo_text), parse_ms(hi_text))
    except ValueError as e:
        raise NasError(f"{flag} {text!r}: {e}; give an upper bound (8ms) or a band (6ms:8ms)") from None
    if hi <= 0:
        raise NasError(f"{flag} {text!r}: the upper end must be above 0 ms")
    if lo > hi:
        raise NasError(f"{flag} {text!r}: the band's lower end {lo:g} ms is above its upper end {hi:g} ms")
    return lo, hi


def parse_range(text: str, flag: str) -> tuple[int, int]:
    """'1.3G' -> (0, 1.3e9); '1.15G:1.3G' -> (1.15e9, 1.3e9). Raises NasError naming ``flag``."""
    lo_text, sep, hi_text = str(text).partition(":")
    try:
        if not sep:
            return 0, parse_size(lo_text)
        lo, hi = parse_size(lo_text), parse_size(hi_text)
    except ValueError as e:
        raise NasError(f"{flag} {text!r}: {e}; give an upper bound (1.3G) or a band (1.15G:1.3G)") from None
    if lo > hi:
        raise NasError(f"{flag} {text!r}: the band's lower end {human(lo)} is above its upper end {human(hi)}")
    return lo, hi


@dataclass(frozen=True)
class Budget:
    """Inclusive bands ``[lo, hi]`` on MACs and params (``None``: unbounded); ``on``: worst | mean MACs;
    ``latency`` a band in milliseconds on the prediction of ``table`` (``nas.latency.LatencyTable``), which
    without ``latency`` only records the prediction."""
    macs: tuple[int, int] | None = None
    params: tuple[int, int] | None = None
    on: str = "worst"
    latency: tuple[float, float] | None = None
    table: "LatencyTable | None" = field(default=None, compare=False, repr=False)

    @classmethod
    def resolve(cls, flops: str | None, params: str | None, space_budget: dict[str, int],
                on: str = "worst", latency: str | None = None, table: "LatencyTable | None" = None) -> "Budget":
        """From the CLI flags, else from the space's ``budget:`` (an upper bound per key)."""
        if on not in BUDGET_ON:
            raise NasError(f"--budget-on {on!r}: expected one of {', '.join(BUDGET_ON)}")
        lat = None if latency is None else parse_latency(latency)
        if lat is not None and table is None:
            raise NasError(f"--latency {latency} needs --latency-table FILE: the table of block times on the target "
                           "device that predicts latency (make one with `nas latency-table SPACE --device cpu "
                           "--batch 1 --out FILE`)")
        if flops is None and params is None and lat is None:
            if not space_budget:
                raise NasError("no budget: give --flops (e.g. 1.3G or 1.15G:1.3G), --params and/or --latency, or "
                               "add `budget: {macs: ...}` to the space file")
            m, p = space_budget.get("macs"), space_budget.get("params")
            return cls(None if m is None else (0, m), None if p is None else (0, p), on, None, table)
        return cls(None if flops is None else parse_range(flops, "--flops"),
                   None if params is None else parse_range(params, "--params"), on, lat, table)

    def predict(self, arch: "Arch") -> float | None:
        """The table's predicted latency (ms) of the target ``arch``; None without a table."""
        return None if self.table is None else self.table.predict(arch)

    # --- description ---------------------------------------------------------------------------------
    def label(self) -> str:
        """Short run-directory label: '1.3G', '1.15G-1.3G', '1.3G_p6M' (params prefixed with p)."""
        def one(band: tuple[int, int]) -> str:
            return human(band[1]) if band[0] == 0 else f"{human(band[0])}-{human(band[1])}"
        parts = ([] if self.macs is None else [one(self.macs)]) + ([] if self.params is None else
                                                                    ["p" + one(self.params)])
        if self.latency is not None:
            lo, hi = self.latency
            parts.append(f"{hi:g}ms" if lo == 0 else f"{lo:g}ms-{hi:g}ms")
        return "_".join(parts) + ("_mean" if self.on == "mean" else "")

    def describe(self) -> str:
        """'MACs <= 1.3G (worst case), params in [5M, 6M]'."""
        def one(name: str, band: tuple[int, int]) -> str:
            return f"{name} <= {human(band[1])}" if band[0] == 0 else f"{name} in [{human(band[0])}, {human(band[1])}]"
        out = []
        if self.macs is not None:
            out.append(one("MACs", self.macs) + f" ({'mean per image' if self.on == 'mean' else 'worst case'})")
        if self.params is not None:
            out.append(one("params", self.params))
        if self.latency is not None:
            lo, hi = self.latency
            out.append((f"latency <= {hi:g} ms" if lo == 0 else f"latency in [{lo:g} ms, {hi:g} ms]")
                       + f" (predicted, {self.table.describe()})")
        elif self.table is not None:
            out.append(f"latency recorded (predicted, {self.table.describe()})")
        return ", ".join(out)

    def to_dict(self) -> dict[str, Any]:
        d = {"macs": None if self.macs is None else list(self.macs),
             "params": None if self.params is None else list(self.params), "on": self.on}
        if self.table is not None:  # absent otherwise: run.json of a search without latency is as it was
            d.update(latency_ms=None if self.latency is None else list(self.latency), latency_table=self.table.hash())
        return d

    # --- checks --------------------------------------------------------------------------------------
    @staticmethod
    def _excess(band: tuple[int, int] | None, value: float) -> float:
        """How far ``value`` lies outside ``band``, relative to the band's upper end (0 inside)."""
        if band is None:
            return 0.0
        lo, hi = band
        return max(lo - value, value - hi, 0) / hi

    def violation(self, macs: float, params: int, ms: float | None = None) -> float:
        """0 when (macs, params, predicted ms) meet the budget, else the relative distance outside it (Optuna
        constraint). ``ms`` is needed when the budget bounds latency."""
        return (self._excess(self.macs, macs) + self._excess(self.params, params)
                + (0.0 if self.latency is None else self._excess(self.latency, _needed(ms))))

    def admits(self, macs: float, params: int, ms: float | None = None) -> bool:
        return self.violation(macs, params, ms) == 0

    def may_admit(self, macs_min: int, macs_max: int, params: int, ms: float | None = None) -> bool:
        """Before measuring: can an arch whose per-image MACs lie in [macs_min, macs_max] meet the budget?
        Exact for ``worst`` (macs_max is what is bounded); for ``mean``, the mean lies in that interval.
        ``ms``: the predicted latency (``predict``), bounded as it is."""
        if self.latency is not None and self._excess(self.latency, _needed(ms)) > 0:
            return False
        if self.on == "worst":
            return self.admits(macs_max, params, ms)
        if self._excess(self.params, params) > 0:
            return False
        return self.macs is None or (macs_min <= self.macs[1] and macs_max >= self.macs[0])

    def check_reachable(self, bounds: dict[str, int], where: str | None = None) -> None:
        """Raise NasError (one line, naming the reachable range) when no arch of the space can meet this
        budget; ``bounds`` are ``SearchSpace.cost_bounds()`` of the target space."""
        checks = [("--flops", "MACs", self.macs, bounds["min_macs"], bounds["max_macs"]),
                  ("--params", "params", self.params, bounds["min_params"], bounds["max_params"])]
        for flag, name, band, lo, hi in checks:
            if band is None:
                continue
            # mean MACs can lie below the smallest worst case: only the upper end of the range is known
            low_known = not (name == "MACs" and self.on == "mean")
            if band[0] > hi or (low_known and band[1] < lo):
                want = human(band[1]) if band[0] == 0 else f"{human(band[0])}:{human(band[1])}"
                raise NasError(f"{flag} {want} is outside the space's reachable {name} range "
                               f"{human(lo)} .. {human(hi)} (worst case per image); choose a budget in that range",
                               file=where)
        if self.latency is not None:
            lo, hi = bounds["min_latency"], bounds["max_latency"]
            if self.latency[0] > hi or self.latency[1] < lo:
                a, b = self.latency
                want = f"{b:g}ms" if a == 0 else f"{a:g}ms:{b:g}ms"
                raise NasError(f"--latency {want} is outside the space's reachable latency range {lo:.2f} ms .. "
                               f"{hi:.2f} ms (predicted by the table, {self.table.describe()}); choose a budget in "
                               "that range", file=where)


def _needed(ms: float | None) -> float:
    if ms is None:
        raise ValueError("a latency budget needs the predicted latency of the arch (Budget.predict)")
    return ms

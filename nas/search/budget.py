"""Budgets: an upper bound or a band on MACs and/or parameters of the *target* arch.

``--flops 1.3G`` bounds MACs from above, ``--flops 1.15G:1.3G`` is a band; ``--params 6M`` and
``--params 5M:6M`` likewise. Without flags the space's own ``budget:`` applies (an upper bound). MACs are
``Cost.macs`` (the worst case of a data-dependent arch) when ``on == "worst"``, and the mean MACs per image
measured on the search split with the inherited weights when ``on == "mean"`` (how the ATS and CF-ViT
papers report their costs). Parameters never depend on the data.

``Budget.check_reachable`` compares the budget with the exact range of the target space
(``SearchSpace.cost_bounds``) and raises a one-line ``NasError`` naming that range when no arch can meet it,
before anything is trained.

Decisions where the papers are silent:

- A band is inclusive at both ends; an upper bound alone has no lower end (0).
- For a mean budget only the upper end of the range can be checked up front (the mean of an arch is at most
  its worst case, so a band starting above the space's largest worst case is unreachable); the lower end of
  the mean range is only known after measuring.
- The run-directory label of a budget (``label``) names the resolved budget, so ``--flops 1.3G`` and the
  space's own ``budget: {macs: 1.3G}`` resume the same run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nas.errors import NasError
from nas.space.schema import human, parse_size

BUDGET_ON = ("worst", "mean")


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
    """Inclusive bands ``[lo, hi]`` on MACs and params (``None``: unbounded); ``on``: worst | mean MACs."""
    macs: tuple[int, int] | None = None
    params: tuple[int, int] | None = None
    on: str = "worst"

    @classmethod
    def resolve(cls, flops: str | None, params: str | None, space_budget: dict[str, int],
                on: str = "worst") -> "Budget":
        """From the CLI flags, else from the space's ``budget:`` (an upper bound per key)."""
        if on not in BUDGET_ON:
            raise NasError(f"--budget-on {on!r}: expected one of {', '.join(BUDGET_ON)}")
        if flops is None and params is None:
            if not space_budget:
                raise NasError("no budget: give --flops (e.g. 1.3G or 1.15G:1.3G) and/or --params, or add "
                               "`budget: {macs: ...}` to the space file")
            m, p = space_budget.get("macs"), space_budget.get("params")
            return cls(None if m is None else (0, m), None if p is None else (0, p), on)
        return cls(None if flops is None else parse_range(flops, "--flops"),
                   None if params is None else parse_range(params, "--params"), on)

    # --- description ---------------------------------------------------------------------------------
    def label(self) -> str:
        """Short run-directory label: '1.3G', '1.15G-1.3G', '1.3G_p6M' (params prefixed with p)."""
        def one(band: tuple[int, int]) -> str:
            return human(band[1]) if band[0] == 0 else f"{human(band[0])}-{human(band[1])}"
        parts = ([] if self.macs is None else [one(self.macs)]) + ([] if self.params is None else
                                                                    ["p" + one(self.params)])
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
        return ", ".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"macs": None if self.macs is None else list(self.macs),
                "params": None if self.params is None else list(self.params), "on": self.on}

    # --- checks --------------------------------------------------------------------------------------
    @staticmethod
    def _excess(band: tuple[int, int] | None, value: float) -> float:
        """How far ``value`` lies outside ``band``, relative to the band's upper end (0 inside)."""
        if band is None:
            return 0.0
        lo, hi = band
        return max(lo - value, value - hi, 0) / hi

    def violation(self, macs: float, params: int) -> float:
        """0 when (macs, params) meet the budget, else the relative distance outside it (Optuna constraint)."""
        return self._excess(self.macs, macs) + self._excess(self.params, params)

    def admits(self, macs: float, params: int) -> bool:
        return self.violation(macs, params) == 0

    def may_admit(self, macs_min: int, macs_max: int, params: int) -> bool:
        """Before measuring: can an arch whose per-image MACs lie in [macs_min, macs_max] meet the budget?
        Exact for ``worst`` (macs_max is what is bounded); for ``mean``, the mean lies in that interval."""
        if self.on == "worst":
            return self.admits(macs_max, params)
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

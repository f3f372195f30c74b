"""ATS: adaptive token sampling (arXiv 2111.15667; docs/mechanisms.md section 2): the torch-free half.

In the last layer of each cell in ``blocks``, ATS keeps cls plus the patch tokens drawn by inverse-transform
sampling over the cls-attention significance scores (``nas.mechanisms.ats.model``). Parameter-free.

The budget (``ats_budget``): with ``keep`` (ratio rho) the paper's K = max(round(rho N), 8), capped at N; with ``k``
the number of quantiles drawn is ``k`` whatever N is, as in the ATS authors' code: their DeiT-S (NUM_TOKENS = 197,
cls included) draws 196 quantiles in every ATS block, also after earlier blocks dropped tokens, i.e. ``k: 196``.
Duplicates merge, so the tokens kept are K' <= min(K, N) (``ats_max_kept``); at least one is kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from nas.errors import NasError
from nas.mechanisms import Reduction, register
from nas.space.schema import Reader, integer, number

MIN_TOKENS = 8
"""The paper's floor on K_n in the ratio rule K_n = max(round(rho * N_in), 8)."""


@dataclass(frozen=True)
class ATS:
    """ATS in the cells listed in ``blocks`` (global cell indices, counted over all stages in order; ATS acts in
    the last layer of each listed cell). Exactly one of ``keep`` (ratio rho: K = max(round(rho * N_in), 8), N_in
    the patch tokens entering, at most N_in) and ``k`` (a fixed number of quantiles) is set."""
    blocks: tuple[int, ...]
    keep: float | None = None
    k: int | None = None


def check_ats_budget(keep: float | None, k: int | None) -> None:
    if (keep is None) == (k is None):
        raise NasError(f"ATS needs exactly one of keep (ratio) and k (token count); got keep={keep!r}, k={k!r}",
                       key="ats")
    if keep is not None and not (isinstance(keep, (int, float)) and not isinstance(keep, bool) and 0 < keep <= 1):
        raise NasError(f"ATS keep must be a ratio in (0, 1]; got {keep!r}", key="ats.keep")
    if k is not None and not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
        raise NasError(f"ATS k must be an integer >= 1 (quantiles drawn); got {k!r}", key="ats.k")


def ats_budget(n_patches: int, keep: float | None = None, k: int | None = None) -> int:
    """K, the quantiles an ATS block draws for an image with ``n_patches`` real patch tokens entering.

    ``keep``: min(max(round(rho N), 8), N) (``round`` is Python's, half to even); ``k``: k, whatever N is.
    """
    check_ats_budget(keep, k)
    if k is not None:
        return k
    return min(max(round(n_patches * keep), MIN_TOKENS), n_patches)


def ats_max_kept(n_patches: int, keep: float | None = None, k: int | None = None) -> int:
    """The most patch tokens an ATS block can keep: K' <= min(K, N) (duplicate draws merge)."""
    return min(ats_budget(n_patches, keep, k), n_patches)


class AdaptiveTokenSampling(Reduction):
    name, config, model, picture = "ats", ATS, "nas.mechanisms.ats.model", "nas.mechanisms.ats.picture"

    def read(self, r: Reader, choosable: Callable) -> dict[str, Any]:
        r.allow("blocks", "keep", "k")
        if r.has("keep") == r.has("k"):
            raise r.node.error("give exactly one of 'keep' (ratio rho in (0, 1]) or 'k' (patch tokens kept)")
        if r.has("keep"):
            return {"keep": r.take("keep", choosable(number(0.0, 1.0, lo_open=True)))}
        return {"k": r.take("k", choosable(integer(1)))}

    def check(self, arch: Any) -> None:
        check_ats_budget(arch.reduction.keep, arch.reduction.k)

    def to_dict(self, cfg: ATS) -> dict[str, Any]:
        return {"blocks": list(cfg.blocks), **({"keep": cfg.keep} if cfg.keep is not None else {"k": cfg.k})}

    def from_dict(self, d: dict[str, Any]) -> ATS:
        return ATS(tuple(d["blocks"]), d.get("keep"), d.get("k"))

    def budget(self, cfg: ATS) -> dict[str, Any]:
        return {"keep": cfg.keep} if cfg.keep is not None else {"k": cfg.k}

    def max_kept(self, cfg: Any, n_patches: int) -> int:
        return ats_max_kept(n_patches, cfg.keep, cfg.k)

    def min_kept(self, cfg: Any, n_patches: int) -> int:
        return min(1, n_patches)  # inverse-transform sampling keeps at least one token


MECHANISM = register(AdaptiveTokenSampling())

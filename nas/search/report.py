"""What ``nas search`` reports at the end: the winner against random search's best, with the noise between them.

    summary(result) -> dict     # summary.json
    table(result) -> str        # the table ``nas search`` prints

Two comparisons are made on the images themselves (``nas.supernet.scoring.Evaluator.per_image``: every arch is
scored on the same images in the same order, so differences are paired; ``nas.stats.paired_difference``):

- ``versus(per_image, winner, baseline)``: the winner minus the best random candidate on the validation split,
  top-1 (paired bootstrap CI, McNemar's exact p) and loss (paired bootstrap CI, sign-flip p). When the CI covers
  0 the table says "within noise": on a few thousand images two subnets of one budget rarely differ beyond it.
- ``cheapest_within_noise(...)``: the evaluated in-budget candidate with the fewest (budget) MACs whose search
  loss is not worse than the winner's beyond noise (the CI of its loss minus the winner's reaches 0 or below).
  A user who sees that a 1.07G arch is as good as the 1.29G winner wants to know.

Decisions where the papers are silent:

- The scan for the cheapest candidate goes up in MACs and stops at the first one within noise. Candidates
  whose mean search loss is more than ``SKIP_SE`` paired standard errors above the winner's are skipped
  without re-scoring (a CI's half-width is about 2 of them). The paired standard error is the largest of those
  of the ``PAIRED_SE_FROM`` candidates nearest the winner in loss: subnets of one supernet err on the same
  images, so it is several times below the unpaired one (on the main job: about 0.002 against 0.013 in loss).
  At most ``MAX_CHECKS`` candidates are re-scored, and the summary says when the scan stopped there.
- "Within noise" is per comparison: scanning many candidates and naming the first within noise favours finding
  one (no correction for multiple comparisons); it answers "is there a cheaper arch the data cannot tell from
  the winner", not "which arch is best".
- Evaluators injected by tests give no per-image outcomes: the comparisons are then left out and said to be.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

from nas.arch import Arch
from nas.search.budget import human
from nas.search.history import Candidate
from nas.stats import paired_difference

if TYPE_CHECKING:
    from nas.supernet.scoring import PerImage

PerImageFn = Callable[[Arch], "PerImage"]
SKIP_SE = 3.0         # candidates further above the winner's loss than this many paired standard errors are skipped
PAIRED_SE_FROM = 5    # the paired standard error is estimated from this many candidates nearest the winner
MAX_CHECKS = 50


def versus(per_image: PerImageFn, a: Arch, b: Arch) -> dict[str, Any]:
    """``a`` minus ``b`` on every image of one split: ``{"top1": ..., "loss": ..., "images": N}`` (each a
    ``nas.stats.Difference.to_json()``)."""
    pa, pb = per_image(a), per_image(b)
    return {"images": len(pa.loss),
            "top1": paired_difference(pa.correct.double().numpy(), pb.correct.double().numpy(), "top1").to_json(),
            "loss": paired_difference(pa.loss.numpy(), pb.loss.numpy(), "loss").to_json()}


def cheapest_within_noise(per_image: PerImageFn, winner: Candidate, candidates: list[Candidate],
                          arch_of: Callable[[Candidate], Arch], macs_of: Callable[[Candidate], int]) -> dict[str, Any]:
    """The in-budget candidate with the fewest ``macs_of`` MACs whose search loss is not worse than the winner's
    beyond noise (paired on the search split), with its difference; ``{"arch_hash": None, ...}`` when none is
    cheaper than the winner. ``per_image`` scores on the search split; ``arch_of`` gives a candidate's scored
    (proxy) arch."""
    ref = per_image(arch_of(winner)).loss.numpy()
    feasible = [c for c in candidates if c.feasible and c.arch_hash != winner.arch_hash]
    # the paired standard error, from the candidates nearest the winner in loss (subnets of one supernet err on
    # the same images, so it is far below the unpaired one); the largest of them, to skip nothing in doubt
    nearest = sorted(feasible, key=lambda c: (c.loss, c.arch_hash))[:PAIRED_SE_FROM]
    sd = max((float((per_image(arch_of(c)).loss.numpy() - ref).std(ddof=1)) for c in nearest), default=0.0)
    se = sd / math.sqrt(len(ref))
    cheaper = sorted((c for c in feasible if macs_of(c) < macs_of(winner)),
                     key=lambda c: (macs_of(c), c.loss, c.arch_hash))
    checked = 0
    for c in cheaper:
        if c.loss - winner.loss > SKIP_SE * se:
            continue
        if checked == MAX_CHECKS:
            return {"arch_hash": None, "checked": checked, "stopped_at_max_checks": True}
        checked += 1
        d = paired_difference(per_image(arch_of(c)).loss.numpy(), ref, "loss")
        if d.within_noise or d.estimate <= 0:
            return {"arch_hash": c.arch_hash, "macs": macs_of(c), "target_params": c.target_params, "loss": c.loss,
                    "score": c.score, "vs_winner_loss": d.to_json(), "checked": checked}
    return {"arch_hash": None, "checked": checked, "stopped_at_max_checks": False}


def summary(r: Any) -> dict[str, Any]:
    """``summary.json`` of ``r``, a ``nas.search.runner.SearchResult``."""
    def cand(c: Candidate | None) -> dict[str, Any] | None:
        return None if c is None else c.to_json()
    return {"space": r.space.name, "space_hash": r.space.hash, "budget": r.budget.to_dict(),
            "budget_text": r.budget.describe(), "searcher": r.searcher, "best": cand(r.best),
            "val_score": r.val_score, "baseline": cand(r.baseline), "baseline_val_score": r.baseline_val_score,
            "winner_vs_baseline_val": r.versus_baseline, "cheapest_within_noise": r.cheapest,
            "candidates": len(r.candidates), "new_evals": r.new_evals, "seconds": round(r.seconds, 1),
            "notes": r.notes, "files": [p.name for p in r.files]}


def _diff(d: dict[str, Any], scale: float, unit: str, digits: int) -> str:
    lo, hi = d["ci"]
    return (f"{d['difference'] * scale:+.{digits}f} [{lo * scale:+.{digits}f}, {hi * scale:+.{digits}f}]{unit}, "
            f"p {d['p']:.2g}")


def comparison_lines(r: Any) -> list[str]:
    """The table's lines on the winner against random search's best, and on the cheapest candidate within noise."""
    lines = []
    v = r.versus_baseline
    if v is not None:
        t, loss = v["top1"], v["loss"]
        noise = t["within_noise"] and loss["within_noise"]
        lines.append(f"  winner - best random, val split ({v['images']:,} images, paired, 95% CI): top-1 "
                     f"{_diff(t, 100, ' points', 1)}; loss {_diff(loss, 1, '', 4)}: "
                     + ("within noise" if noise else "beyond noise on " + " and ".join(
                         k for k, d in (("top-1", t), ("loss", loss)) if not d["within_noise"])))
    c = r.cheapest
    if c is not None:
        if c.get("arch_hash"):
            d = c["vs_winner_loss"]
            lines.append(f"  cheapest within noise of the winner (search loss, paired): {c['arch_hash']} "
                         f"{human(c['macs'])} MACs, {human(c['target_params'])} params, loss {c['loss']:.4f} "
                         f"({_diff(d, 1, '', 4)} vs the winner)")
        else:
            lines.append("  cheapest within noise of the winner (search loss, paired): none cheaper"
                         + (f" among the {c['checked']} re-scored (stopped there)" if c.get("stopped_at_max_checks")
                            else ""))
    return lines


def table(r: Any) -> str:
    """The final table printed by ``nas search``."""
    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.4f}"
    rows = [("", "arch", "target MACs", "params", "search top-1", "search loss", "val top-1"),
            (f"winner ({r.searcher})", r.best.arch_hash, human(r.best.target_macs), human(r.best.target_params),
             fmt(r.best.score), fmt(r.best.loss), fmt(r.val_score))]
    if r.baseline is not None:
        rows.append((f"best of {r.baseline_evals} random", r.baseline.arch_hash, human(r.baseline.target_macs),
                     human(r.baseline.target_params), fmt(r.baseline.score), fmt(r.baseline.loss),
                     fmt(r.baseline_val_score)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"nas search {r.space.name}: {r.budget.describe()}, {r.searcher}; {len(r.candidates)} candidates "
             f"({r.new_evals} evaluated now), {r.seconds:.0f} s -> {r.run_dir}"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines += comparison_lines(r)
    lines += [f"  note: {n}" for n in r.notes]
    lines.append("  files: " + ", ".join(sorted({p.name if p.parent == r.run_dir else f"{p.parent.name}/"
                                                for p in r.files})))
    return "\n".join(lines)

"""What ``nas search`` reports at the end: the winner against random search's best, with the noise between them.

    result = finish(job, run_dir, found, scoring, supernet, log, t0)   # -> SearchResult, every file written
    summary(result) -> dict     # summary.json
    table(result) -> str        # the table ``nas search`` prints

``finish`` re-scores the winner and the baseline's best on the validation split, makes the paired comparisons
below, exports the winner (``nas.export``: best.yaml and its inherited weights, ``--top K`` more, pareto.csv,
the front of search loss against MACs), writes summary.json, draws the pictures (``nas.search.plots``:
pareto.png and best_so_far.png, both of the search loss, the key the search ranks by) and logs the table.

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
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from nas.arch import Arch, Provenance
from nas.errors import NasError
from nas.mechanisms import tokenizer
from nas.search.budget import Budget, human
from nas.search.history import Candidate, best, rank_key
from nas.space import SearchSpace
from nas.stats import paired_difference

if TYPE_CHECKING:
    from nas.search.backend import Scoring, Trained
    from nas.supernet.scoring import PerImage
    from nas.search.job import SearchJob

PerImageFn = Callable[[Arch], "PerImage"]
SKIP_SE = 3.0         # candidates further above the winner's loss than this many paired standard errors are skipped
PAIRED_SE_FROM = 5    # the paired standard error is estimated from this many candidates nearest the winner
MAX_CHECKS = 50


@dataclass(frozen=True)
class Found:
    """What the searcher and the baseline beside it found."""
    candidates: list[Candidate]             # every candidate the searcher asked for, in order
    new_evals: int                          # evaluated by this invocation (the rest came from the history)
    baseline_ran: bool                      # whether the random baseline ran beside the searcher
    baseline: Candidate | None              # the best of its first len(candidates) candidates
    baseline_evals: int


@dataclass
class SearchResult:
    run_dir: Path
    space: SearchSpace
    budget: Budget
    searcher: str
    best: Candidate
    best_arch: Arch                         # target arch, with provenance
    candidates: list[Candidate]             # every evaluated candidate of the search, in order
    new_evals: int                          # evaluated by this invocation (the rest came from the history)
    baseline: Candidate | None = None       # the best of the same number of random candidates
    val_score: float | None = None          # winner's top-1 on the validation split
    baseline_val_score: float | None = None
    baseline_evals: int = 0                 # random candidates the baseline scored (as many as the search's)
    versus_baseline: dict[str, Any] | None = None  # winner - baseline on val, paired (``versus``)
    cheapest: dict[str, Any] | None = None  # the cheapest candidate within noise (``cheapest_within_noise``)
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def finish(job: "SearchJob", run_dir: Path, found: "Found", scoring: "Scoring", supernet: "Trained | None",
           log: Callable[[str], None], t0: float) -> SearchResult:
    """The search's result, every file of it written (see the module docstring); ``t0`` when the job began."""
    pm, bud = job.proxy, job.budget
    winner = best(found.candidates)
    if winner is None:
        raise NasError(f"none of the {len(found.candidates)} evaluated candidates met the budget ({bud.describe()}) "
                       f"on their measured mean MACs; widen the budget or use --budget-on worst")
    log(f"search: {len(found.candidates)} candidates ({found.new_evals} evaluated now), best {winner.arch_hash} "
        f"score {winner.score:.4f} target MACs {human(winner.target_macs)}")
    r = SearchResult(run_dir, job.target, bud, job.searcher, winner, _target_arch(job.target, winner, bud),
                     found.candidates, found.new_evals, notes=list(job.notes))
    proxy_of = lambda c: pm.to_proxy(job.target.decode(c.vector))  # noqa: E731 - the scored arch of a candidate

    # both winners on the validation split
    r.val_score = float(scoring.val(proxy_of(winner)).score)
    if found.baseline_ran:
        r.baseline, r.baseline_evals = found.baseline, found.baseline_evals
        if r.baseline is not None:
            r.baseline_val_score = float(scoring.val(proxy_of(r.baseline)).score)

    # the paired comparisons on the images themselves
    on_search, on_val = scoring.per_image("search"), scoring.per_image("val")
    if on_search is None or on_val is None:
        r.notes.append("the evaluator gives no per-image outcomes: paired comparisons left out")
    else:
        if r.baseline is not None:
            r.versus_baseline = versus(on_val, proxy_of(r.best), proxy_of(r.baseline))
        r.cheapest = cheapest_within_noise(on_search, r.best, r.candidates, proxy_of, lambda c: budget_macs(c, bud),
                                           lambda c: budget_cost(c, bud))
        log(f"paired comparisons: winner vs baseline {r.versus_baseline}; cheapest within noise {r.cheapest}")

    if supernet is not None:  # what makes the scored space a proxy, for the exports' header
        overrides = supernet.overrides
    else:
        overrides = dict(job.training.space_overrides) if job.training is not None else {}
    r.files = [run_dir / "history.csv", *([run_dir / "baseline.csv"] if found.baseline_ran else []),
               *_export(r, pm, None if supernet is None else supernet.supernet, job.top, job.seed, overrides)]
    r.seconds = time.perf_counter() - t0
    from nas.export import write_json
    from nas.search.plots import visualize_search
    r.files.append(write_json(summary(r), run_dir / "summary.json"))
    r.files += visualize_search(run_dir, out=run_dir)  # pareto.png, best_so_far.png (reads summary.json)
    log(table(r))
    return r


def budget_macs(c: Candidate, bud: Budget) -> int:
    """The MACs the budget bounds: the measured mean or the worst case."""
    return c.macs_mean if bud.on == "mean" and c.macs_mean is not None else c.target_macs


def budget_cost(c: Candidate, bud: Budget) -> float:
    """The cost a candidate is cheap or dear by: its predicted latency under a latency budget, else
    ``budget_macs``."""
    if bud.latency is not None and c.target_latency_ms is not None:
        return c.target_latency_ms
    return budget_macs(c, bud)


def _target_arch(target: SearchSpace, c: Candidate, bud: Budget) -> Arch:
    t = bud.table
    return replace(target.decode(c.vector), provenance=Provenance(
        space=target.name, space_hash=target.hash, budget_macs=None if bud.macs is None else bud.macs[1],
        budget_params=None if bud.params is None else bud.params[1],
        budget_latency_ms=None if bud.latency is None else bud.latency[1], latency_ms=c.target_latency_ms,
        latency_table=None if t is None else f"{Path(t.file).name if t.file else 'table'} ({t.hash()})",
        score=c.score))


def _export(res: SearchResult, pm: Any, supernet: Any, top: int, seed: int, overrides: dict[str, Any]) -> list[Path]:
    """best.yaml (+ weights), ``top`` more into ``top/``, and pareto.csv."""
    from nas.export import export_arch, write_pareto_csv
    from nas.search.plots import pareto_front

    run, target, bud = res.run_dir, res.space, res.budget
    ranked = sorted((c for c in res.candidates if c.feasible), key=rank_key)
    files: list[Path] = []
    for i, c in enumerate(ranked[:top + 1]):
        arch = _target_arch(target, c, bud)
        proxy_arch = None if pm.is_identity else pm.to_proxy(arch)
        header = [f"{'best' if i == 0 else f'rank {i + 1}'} of search {run.name}: target arch ({target.name}, space "
                  f"hash {target.hash}); retrain it with `nas retrain`",
                  f"target MACs {c.target_macs} ({human(c.target_macs)}, worst case), params {c.target_params} "
                  f"({human(c.target_params)})" + (f", mean MACs {c.macs_mean}" if pm.is_identity and c.macs_mean
                                                   else ""),
                  *([f"predicted latency {c.target_latency_ms:.2f} ms per forward, {bud.table.describe()} (table "
                     f"{bud.table.file}); measure it with `nas latency`"] if c.target_latency_ms is not None else []),
                  f"budget: {bud.describe()}; searcher {res.searcher}, seed {seed}",
                  f"score: top-1 {c.score:.6f} on the search split (loss {c.loss:.6f}), inherited supernet weights"]
        if proxy_arch is not None:
            header.append(f"scored on a proxy (space hash {pm.proxy.hash}, overrides {overrides}): the inherited "
                          f"weights fit {'best' if i == 0 else 'this'}.proxy.yaml, not this arch")
        folder, stem = (run, "best") if i == 0 else (run / "top", f"rank{i + 1:02d}-{c.arch_hash}")
        pprov = Provenance(space=pm.proxy.name, space_hash=pm.proxy.hash, score=c.score)
        files += export_arch(folder, stem, arch, proxy_arch, arch.provenance, header, supernet, pprov)
    feas = [c for c in res.candidates if c.feasible]
    front = [feas[i] for i in pareto_front([(budget_cost(c, bud), c.loss) for c in feas])]  # lower is better
    files.append(write_pareto_csv([{"arch_hash": c.arch_hash, "score": repr(c.score), "loss": repr(c.loss),
                                    "objective": repr(c.objective), "macs": budget_macs(c, bud),
                                    "params": c.target_params,
                                    **({} if bud.table is None else {"latency_ms": repr(c.target_latency_ms)}),
                                    "feasible": int(c.feasible),
                                    "vector": "-".join(map(str, c.vector))} for c in front], run / "pareto.csv"))
    return files


def versus(per_image: PerImageFn, a: Arch, b: Arch) -> dict[str, Any]:
    """``a`` minus ``b`` on every image of one split: ``{"top1": ..., "loss": ..., "images": N}`` (each a
    ``nas.stats.Difference.to_json()``)."""
    pa, pb = per_image(a), per_image(b)
    return {"images": len(pa.loss),
            "top1": paired_difference(pa.correct.double().numpy(), pb.correct.double().numpy(), "top1").to_json(),
            "loss": paired_difference(pa.loss.numpy(), pb.loss.numpy(), "loss").to_json()}


def cheapest_within_noise(per_image: PerImageFn, winner: Candidate, candidates: list[Candidate],
                          arch_of: Callable[[Candidate], Arch], macs_of: Callable[[Candidate], int],
                          cost_of: Callable[[Candidate], float] | None = None) -> dict[str, Any]:
    """The in-budget candidate with the lowest cost (``cost_of``, default ``macs_of``: the predicted latency under
    a latency budget, ``budget_cost``) whose search loss is not worse than the winner's beyond noise (paired on
    the search split), with its difference; ``{"arch_hash": None, ...}`` when none is cheaper than the winner.
    ``per_image`` scores on the search split; ``arch_of`` gives a candidate's scored (proxy) arch."""
    cost_of = cost_of or macs_of
    ref = per_image(arch_of(winner)).loss.numpy()
    feasible = [c for c in candidates if c.feasible and c.arch_hash != winner.arch_hash]
    # the paired standard error, from the candidates nearest the winner in loss (subnets of one supernet err on
    # the same images, so it is far below the unpaired one); the largest of them, to skip nothing in doubt
    nearest = sorted(feasible, key=lambda c: (c.loss, c.arch_hash))[:PAIRED_SE_FROM]
    sd = max((float((per_image(arch_of(c)).loss.numpy() - ref).std(ddof=1)) for c in nearest), default=0.0)
    se = sd / math.sqrt(len(ref))
    cheaper = sorted((c for c in feasible if cost_of(c) < cost_of(winner)),
                     key=lambda c: (cost_of(c), c.loss, c.arch_hash))
    checked = 0
    for c in cheaper:
        if c.loss - winner.loss > SKIP_SE * se:
            continue
        if checked == MAX_CHECKS:
            return {"arch_hash": None, "checked": checked, "stopped_at_max_checks": True}
        checked += 1
        d = paired_difference(per_image(arch_of(c)).loss.numpy(), ref, "loss")
        if d.within_noise or d.estimate <= 0:
            return {"arch_hash": c.arch_hash, "macs": macs_of(c), "target_params": c.target_params,
                    "latency_ms": c.target_latency_ms, "loss": c.loss, "score": c.score,
                    "vs_winner_loss": d.to_json(), "checked": checked}
    return {"arch_hash": None, "checked": checked, "stopped_at_max_checks": False}


def summary(r: Any) -> dict[str, Any]:
    """``summary.json`` of ``r``, a ``nas.search.runner.SearchResult``."""
    def cand(c: Candidate | None) -> dict[str, Any] | None:
        return None if c is None else c.to_json()
    return {"space": r.space.name, "space_hash": r.space.hash, "budget": r.budget.to_dict(),
            "budget_text": r.budget.describe(), "searcher": r.searcher, "best": cand(r.best),
            "best_tokenizer": tokenizer(r.best_arch.tokenizer).to_dict(r.best_arch.tokenizer),
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
            ms = c.get("latency_ms") if r.budget.latency is not None else None
            lines.append(f"  {'fastest' if ms is not None else 'cheapest'} within noise of the winner (search loss, "
                         f"paired): {c['arch_hash']} " + (f"{ms:.2f} ms (predicted), " if ms is not None else "")
                         + f"{human(c['macs'])} MACs, {human(c['target_params'])} params, loss {c['loss']:.4f} "
                         f"({_diff(d, 1, '', 4)} vs the winner)")
        else:
            lines.append("  cheapest within noise of the winner (search loss, paired): none cheaper"
                         + (f" among the {c['checked']} re-scored (stopped there)" if c.get("stopped_at_max_checks")
                            else ""))
    return lines


def tokenizer_text(arch: Arch) -> str:
    """'progressive (points 10, iterations 2, share_weights False)': an arch's tokenizer, for the table."""
    d = tokenizer(arch.tokenizer).to_dict(arch.tokenizer)
    return f"{d.pop('type')} (" + ", ".join(f"{k} {v}" for k, v in d.items()) + ")"


def tokenizer_lines(r: Any) -> list[str]:
    """With a choice of tokenizers: which one the winner (and random search's best) chose."""
    if len(r.space.tokenizer_types()) < 2:
        return []
    line = f"  tokenizer: winner {tokenizer_text(r.best_arch)}"
    if r.baseline is not None:
        line += f"; best random {tokenizer_text(r.space.decode(r.baseline.vector))}"
    return [line]


def table(r: Any) -> str:
    """The final table printed by ``nas search``."""
    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.4f}"
    def ms(c: Candidate) -> tuple[str, ...]:  # the predicted latency, with a latency table
        if r.budget.table is None:
            return ()
        return ("-" if c.target_latency_ms is None else f"{c.target_latency_ms:.2f} ms",)
    rows = [("", "arch", "target MACs", "params", *(() if r.budget.table is None else ("latency (pred.)",)),
             "search top-1", "search loss", "val top-1"),
            (f"winner ({r.searcher})", r.best.arch_hash, human(r.best.target_macs), human(r.best.target_params),
             *ms(r.best), fmt(r.best.score), fmt(r.best.loss), fmt(r.val_score))]
    if r.baseline is not None:
        rows.append((f"best of {r.baseline_evals} random", r.baseline.arch_hash, human(r.baseline.target_macs),
                     human(r.baseline.target_params), *ms(r.baseline), fmt(r.baseline.score), fmt(r.baseline.loss),
                     fmt(r.baseline_val_score)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"nas search {r.space.name}: {r.budget.describe()}, {r.searcher}; {len(r.candidates)} candidates "
             f"({r.new_evals} evaluated now), {r.seconds:.0f} s -> {r.run_dir}"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines += tokenizer_lines(r)
    lines += comparison_lines(r)
    lines += [f"  note: {n}" for n in r.notes]
    lines.append("  files: " + ", ".join(sorted({p.name if p.parent == r.run_dir else f"{p.parent.name}/"
                                                for p in r.files})))
    return "\n".join(lines)

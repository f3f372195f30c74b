"""Searchers on a tiny space with a fake evaluator: budgets and bands respected, each arch evaluated once,
the optimum against brute force, same seed same result, proxies and changed runs refused."""
from __future__ import annotations

import csv
import itertools
import json
import os
import random
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from nas.cli import main
from nas.cost import cost
from nas.errors import NasError
from nas.search.backend import Injected
from nas.search.history import History
from nas.search.recipe import SearchRecipe
from nas.search.runner import search
from nas.search.searchers import SEARCHERS, Searcher, searcher
from nas.space import load_arch, load_space
from nas.space.schema import integer
from tests.search.helpers import SMALL_EVOLUTION, TINY, TINY_CF, FakeEvaluator, fake_score, write

BAND = (300_000, 600_000)
ROOT = Path(__file__).resolve().parents[2]


def fake(space, split):
    return FakeEvaluator(space, split)


def run(tmp: Path, searcher: str, out: str | None = None, **kw):
    space = kw.pop("space", None) or write(tmp, "tiny.yaml", TINY)
    if searcher == "evolution" and "search_recipe" not in kw:
        kw["search_recipe"] = write(tmp, "evo.yaml", SMALL_EVOLUTION)
    else:
        kw.setdefault("searcher", searcher)
    kw.setdefault("flops", f"{BAND[0]}:{BAND[1]}")
    return search(space, out=tmp / (out or searcher), progress=False, backend=Injected(kw.pop("evaluator", fake)), **kw)


def all_archs(space):
    return [space.decode(v) for v in itertools.product(*(range(len(d.values)) for d in space.dims))]


@pytest.mark.parametrize("searcher", list(SEARCHERS))
def test_searcher_respects_the_band_and_evaluates_each_arch_once(tmp_path: Path, searcher: str):
    r = run(tmp_path, searcher, max_evals=12)
    space = load_space(tmp_path / "tiny.yaml")
    rows = list(History(r.run_dir / "history.csv"))
    assert 0 < len(rows) <= 12 + 1 and len({c.arch_hash for c in rows}) == len(rows)
    for c in rows:  # the recorded target cost is the arch's own, and inside the band
        arch = space.decode(c.vector)
        assert arch.hash() == c.arch_hash and cost(arch).macs == c.target_macs
        assert BAND[0] <= c.target_macs <= BAND[1] and c.feasible
        assert c.score == pytest.approx(fake_score(arch))
    best = load_arch(r.run_dir / "best.yaml")
    assert BAND[0] <= cost(best).macs <= BAND[1] and best.hash() == r.best.arch_hash
    assert best.provenance.space_hash == space.hash and best.provenance.score == r.best.score
    assert max(c.score for c in rows) == r.best.score
    for f in ("history.csv", "pareto.csv", "pareto.png", "summary.json", "search.log", "run.json"):
        assert (r.run_dir / f).stat().st_size > 0
    front = list(csv.DictReader(open(r.run_dir / "pareto.csv")))
    macs = [int(row["macs"]) for row in front]
    scores = [float(row["score"]) for row in front]
    assert macs == sorted(macs) and scores == sorted(scores) and float(front[-1]["score"]) == r.best.score


@dataclass(frozen=True)
class FirstCfg:
    """A toy searcher's settings: score the first ``draws`` new in-budget archs of a seeded draw."""
    draws: int = 3
    FIELDS: ClassVar[dict] = {"draws": integer(1, 100)}


def first_k(obj, cfg: FirstCfg, ctx) -> list:
    rng = random.Random(ctx.seed)
    archs = [a for a in (obj.propose(lambda: obj.space.sample(rng), ctx.max_tries) for _ in range(cfg.draws)) if a]
    obj.evaluate_many(archs, range(len(archs)))
    return list(obj.requested)


def test_a_registered_searcher_is_known_to_the_recipe_the_job_and_the_cli(tmp_path: Path, monkeypatch):
    """Adding a searcher: its module (here: above), one registry entry, its recipe file. Nothing else."""
    monkeypatch.setitem(SEARCHERS, "first", Searcher(FirstCfg, first_k))
    recipe = write(tmp_path, "first.yaml", "searcher: first\nmax_evals: 10\nfirst: {draws: 4}\n")
    space = write(tmp_path, "tiny.yaml", TINY)
    kw = dict(flops=f"{BAND[0]}:{BAND[1]}", progress=False, backend=Injected(fake))
    r = search(space, search_recipe=recipe, out=tmp_path / "first", **kw)
    assert r.searcher == "first" and len(r.candidates) == 4 and r.baseline_evals == 4
    bad = write(tmp_path, "bad.yaml", "searcher: first\nfirst: {draws: 0}\n")
    with pytest.raises(NasError, match=r"bad.yaml:2: first.draws: must be an integer in \[1, 100\]"):
        search(space, search_recipe=bad, out=tmp_path / "bad", **kw)


def test_an_unregistered_searcher_is_refused_everywhere(tmp_path: Path, capsys: pytest.CaptureFixture):
    with pytest.raises(NasError, match="searcher 'tpe': expected one of evolution, optuna, nsga2, random"):
        searcher("tpe")
    with pytest.raises(NasError, match="searcher 'tpe'"):
        SearchRecipe("tpe")
    with pytest.raises(NasError, match="--searcher 'tpe'"):
        run(tmp_path, "tpe")
    assert main(["search", str(write(tmp_path, "tiny.yaml", TINY)), "--searcher", "tpe"]) == 2
    assert "invalid choice: 'tpe'" in capsys.readouterr().err


def test_exhaustive_random_search_finds_the_brute_force_optimum(tmp_path: Path):
    space = load_space(write(tmp_path, "tiny.yaml", TINY))
    feasible = [a for a in all_archs(space) if BAND[0] <= cost(a).macs <= BAND[1]]
    r = run(tmp_path, "random", max_evals=10_000)
    assert len(r.candidates) == len(feasible)  # the whole band, each arch once, nothing outside it
    assert r.best.score == max(fake_score(a) for a in feasible)


def test_params_band_and_top_k_exports(tmp_path: Path):
    r = run(tmp_path, "evolution", flops=None, params="10K:30K", top=2)
    assert all(10_000 <= c.target_params <= 30_000 for c in r.candidates)
    tops = sorted((r.run_dir / "top").glob("rank*.yaml"))
    assert [p.name[:6] for p in tops] == ["rank02", "rank03"]
    assert all(10_000 <= cost(load_arch(p)).params <= 30_000 for p in tops)


def test_same_seed_same_search_other_seed_other_search(tmp_path: Path):
    a, b = run(tmp_path, "evolution", "a"), run(tmp_path, "evolution", "b")
    assert [c.arch_hash for c in a.candidates] == [c.arch_hash for c in b.candidates]
    assert a.best == b.best
    c = run(tmp_path, "evolution", "c", seed=1)
    assert [x.arch_hash for x in c.candidates] != [x.arch_hash for x in a.candidates]


def test_evolution_generations_follow_the_recipe(tmp_path: Path):
    r = run(tmp_path, "evolution", max_evals=40)
    gens = [c.generation_or_trial for c in r.candidates]
    assert gens == sorted(gens) and set(gens) <= set(range(5)) and gens.count(0) == 10


def test_infeasible_budget_is_one_line_with_the_range_before_anything_runs(tmp_path: Path, capsys):
    space = write(tmp_path, "tiny.yaml", TINY)
    out = tmp_path / "never"
    assert main(["search", str(space), "--flops", "1K", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    b = load_space(space).cost_bounds()
    assert err.count("\n") == 0 and "reachable MACs range 12.4K .. 839.3K" in err
    assert b["min_macs"] == 12_448 and not out.exists()
    # refused before torch is even imported (the check needs only the analytic cost)
    code = (f"import sys\nfrom nas.cli import main\nrc = main(['search', {str(space)!r}, '--flops', '1K'])\n"
            f"assert rc == 2 and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:3]")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-1500:]


def test_proxy_with_other_dimensions_is_refused(tmp_path: Path):
    for override, what in (("stages[0].dim: 16", "r.yaml: stages[0].dim: the proxy space has no dimension "
                                                 "stages[0].dim"),
                            ("stages[0].dim: {choice: [8, 16]}", "r.yaml: stages[0].dim: dimension stages[0].dim has "
                                                                 "3 values [16, 24, 32] in the target")):
        rec = write(tmp_path, "r.yaml", f"space_overrides:\n  {override}\n")
        with pytest.raises(NasError, match=re.escape(what)):
            run(tmp_path, "random", recipe=rec)
    ok = write(tmp_path, "ok.yaml", "space_overrides:\n  stages[0].dim: {choice: [8, 12, 16]}\n")
    r = run(tmp_path, "random", "proxy", recipe=ok, max_evals=5)
    assert "proxy" in " ".join(r.notes) and not (r.run_dir / "best.proxy.safetensors").exists()


def test_changed_budget_or_searcher_on_a_run_directory_is_refused(tmp_path: Path):
    run(tmp_path, "random", "x", max_evals=4)
    with pytest.raises(NasError, match="another budget"):
        run(tmp_path, "random", "x", max_evals=4, flops="600K")
    with pytest.raises(NasError, match="another searcher"):
        run(tmp_path, "evolution", "x", max_evals=4)
    with pytest.raises(NasError, match="another search recipe"):
        run(tmp_path, "random", "x", max_evals=5)
    assert run(tmp_path, "random", "x", max_evals=4).new_evals == 0  # the same command resumes (all cached)
    with pytest.raises(NasError, match="--storage holds an Optuna study"):
        run(tmp_path, "random", "z", storage="sqlite:///x.db")
    with pytest.raises(NasError, match="is not a database URL"):
        run(tmp_path, "optuna", "z", storage="not a url")
    first = run(tmp_path, "optuna", "y", max_evals=5)
    again = run(tmp_path, "optuna", "y", max_evals=5)  # resumes from the study: nothing evaluated again
    assert again.new_evals == 0 and again.best == first.best


def test_budget_on_mean_changes_which_cf_vit_archs_are_feasible(tmp_path: Path):
    space = load_space(write(tmp_path, "cf.yaml", TINY_CF))
    archs = all_archs(space)
    costs = [cost(a) for a in archs]
    limit = sorted(c.macs for c in costs)[len(costs) // 2]
    worst = run(tmp_path, "random", "worst", space=tmp_path / "cf.yaml", flops=str(limit), max_evals=1000,
                budget_on="worst")
    mean = run(tmp_path, "random", "mean", space=tmp_path / "cf.yaml", flops=str(limit), max_evals=1000)
    assert json.loads((mean.run_dir / "run.json").read_text())["budget"]["on"] == "mean"  # the default here
    w = {c.arch_hash for c in worst.candidates}
    m = {c.arch_hash for c in mean.candidates if c.feasible}
    assert w == {a.hash() for a, c in zip(archs, costs) if c.macs <= limit}
    assert m == {a.hash() for a, c in zip(archs, costs) if (c.macs_min + c.macs_max) // 2 <= limit}
    assert w < m  # early exit (threshold < 1) lets archs whose worst case breaks the budget in on the mean


def test_mean_budget_with_a_proxy_is_refused(tmp_path: Path):
    write(tmp_path, "cf.yaml", TINY_CF)
    rec = write(tmp_path, "r.yaml", "space_overrides:\n  stages[0].dim: 8\n")
    with pytest.raises(NasError, match="--budget-on mean .* trained on the target space itself"):
        run(tmp_path, "random", space=tmp_path / "cf.yaml", flops="10M", budget_on="mean", recipe=rec)

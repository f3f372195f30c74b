"""Search recipes: shipped files equal the defaults; unknown keys and bad values are file:line errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from nas.errors import NasError
from nas.search.recipe import SearchRecipe, load_search_recipe
from nas.search.searchers import SEARCHERS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("searcher", SEARCHERS)
def test_shipped_recipe_equals_the_defaults(searcher: str):
    r = load_search_recipe(ROOT / "recipes" / f"search_{searcher}.yaml")
    assert r.searcher == searcher and r.hash() == SearchRecipe(searcher).hash()
    assert load_search_recipe(None, searcher).hash() == r.hash()  # --searcher X == its recipe: same run


def test_defaults_are_spos_autoformer():
    e = SearchRecipe().settings
    assert (e.population, e.generations, e.parents, e.mutations, e.crossovers, e.mutation_prob) == \
        (50, 20, 10, 25, 25, 0.1)
    assert SearchRecipe().max_evals == 1000


@pytest.mark.parametrize("text, match", [
    ("searcher: evolution\nevolutoin: {population: 4}\n", r":2: evolutoin: unknown key 'evolutoin'; did you mean "
                                                          r"'evolution'\?"),
    ("searcher: random\noptuna: {n_startup_trials: 3}\n", r":2: optuna: section 'optuna' does not apply"),
    ("evolution: {population: 4, parents: 5}\n", "parents 5 must not exceed the population 4"),
    ("evolution: {mutatoin_prob: 0.5}\n", "did you mean 'mutation_prob'"),
    ("max_evals: 0\n", r":1: max_evals: must be an integer in \[1, "),
    ("searcher: tpe\n", "searcher"),
])
def test_bad_recipes_are_located_errors(tmp_path: Path, text: str, match: str):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    with pytest.raises(NasError, match=match):
        load_search_recipe(p)


def test_searcher_flag_must_agree_with_the_recipe():
    with pytest.raises(NasError, match="--searcher optuna disagrees"):
        load_search_recipe(ROOT / "recipes" / "search_evolution.yaml", "optuna")

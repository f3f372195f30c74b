"""``nas search`` under bad input: each way a start can fail is one line with exit 2, writes no run.json, and the
corrected command then succeeds on the same ``--out``; flags that cannot apply are refused; nothing is unbounded;
a failing search leaves no thread running.

Tiny on purpose: the 16x16 space of ``tests/test_bad_input_runs.py``, synthetic data, a few evaluations.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from nas.cli import main
from nas.errors import NasError
from nas.search.backend import Injected
from nas.search.runner import search
from tests.search.helpers import TINY, FakeEvaluator, write
from tests.test_bad_input_runs import GOOD, SPACE, error_line

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    """The tiny space with its whole MACs range as its budget, a one-step recipe, a 3-evaluation random search."""
    from nas.space import load_space
    hi = load_space(write(tmp_path, "space.yaml", SPACE)).cost_bounds()["max_macs"]
    return {"space": write(tmp_path, "space.yaml", SPACE + f"budget: {{macs: {hi}}}\n"),
            "recipe": write(tmp_path, "recipe.yaml", GOOD),
            "random": write(tmp_path, "random.yaml", "searcher: random\nmax_evals: 3\nbatch_size: 16\n"),
            "out": tmp_path / "run"}


def nas(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def search_args(f: dict[str, Path], *extra) -> list:
    return ["search", f["space"], "--data", "synthetic:64", "--recipe", f["recipe"], "--search-recipe", f["random"],
            "--out", f["out"], *extra]


def test_an_empty_band_fails_before_the_run_directory_then_the_corrected_budget_runs(files, capsys):
    from nas.space import load_space
    lo = load_space(files["space"]).cost_bounds()["min_macs"]
    code, err = nas(capsys, *search_args(files, "--flops", f"{lo + 1}:{lo + 2}"))
    assert code == 2 and "no arch of the space met the budget" in error_line(err), err
    assert not (files["out"] / "run.json").exists()
    code, err = nas(capsys, *search_args(files))  # the corrected command: the space's budget
    assert code == 0, err
    assert json.loads((files["out"] / "run.json").read_text())["format"] == "nas-search-run/1"


def test_a_broken_supernet_then_the_good_one(files, tmp_path, capsys):
    good = tmp_path / "sup"
    assert nas(capsys, "train-supernet", files["space"], "--data", "synthetic:64", "--recipe", files["recipe"],
               "--out", good)[0] == 0
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ("run.json", "space.yaml", "recipe.yaml", "data_split.json"):
        (broken / f).write_bytes((good / f).read_bytes())
    weights = (good / "supernet.safetensors").read_bytes()
    (broken / "supernet.safetensors").write_bytes(weights[:len(weights) // 2])
    args = ["search", files["space"], "--search-recipe", files["random"], "--out", files["out"]]
    code, err = nas(capsys, *args, "--supernet", broken)
    assert code == 2 and "supernet.safetensors" in error_line(err), err
    assert not (files["out"] / "run.json").exists()
    code, err = nas(capsys, *args, "--supernet", good)
    assert code == 0, err


@pytest.mark.parametrize("flag", [["--data", "synthetic:64"], ["--recipe", "cpu_supernet"],
                                  ["--recipe", "missing.yaml"]])
def test_data_and_recipe_cannot_apply_with_supernet(files, capsys, flag):
    code, err = nas(capsys, "search", files["space"], "--supernet", files["out"], *flag, "--out", files["out"])
    line = error_line(err)
    assert code == 2 and flag[0] in line and "--supernet" in line, err
    assert not files["out"].exists()


@pytest.mark.parametrize("flag, value, needle", [
    ("--max-evals", "1000000000000", "--max-evals: must be an integer in [1, 100,000]"),
    ("--max-evals", "0", "--max-evals: must be an integer in [1, 100,000]"),
    ("--top", "-1", "--top: must be an integer in [0, 100,000]"),
    ("--top", "10000000", "--top: must be an integer in [0, 100,000]"),
])
def test_unbounded_counts_are_refused_at_once(files, capsys, flag, value, needle):
    code, err = nas(capsys, *search_args(files, flag, value))
    assert code == 2 and needle in error_line(err), err
    assert not files["out"].exists()


def test_the_library_bounds_the_same_counts(tmp_path):
    space = write(tmp_path, "tiny.yaml", TINY)
    for kw, needle in (({"max_evals": 10**12}, "--max-evals must be an integer in"),
                       ({"top": 10**7}, "--top must be an integer in"), ({"seed": 2**70}, "--seed must be")):
        with pytest.raises(NasError, match=needle):
            search(space, out=tmp_path / "x", progress=False, backend=Injected(FakeEvaluator), **kw)
    assert not (tmp_path / "x").exists()


def test_a_storage_optuna_cannot_open_is_one_line_before_any_work(files, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'missing' / 'folder' / 'study.db'}"
    code, err = nas(capsys, *search_args(files, "--searcher", "optuna", "--search-recipe", ROOT / "recipes" /
                                         "search_optuna.yaml", "--storage", url))
    # --search-recipe given twice: argparse keeps the last (optuna)
    line = error_line(err)
    assert code == 2 and "--storage" in line and "Background on this error" not in err, err
    assert not files["out"].exists()


def test_a_failing_search_joins_its_baseline_thread_before_the_error_goes_up(tmp_path):
    """The searcher fails; the random baseline beside it is stopped and joined (no thread left inside torch at
    exit: that aborted the interpreter with 'terminate called without an active exception')."""
    space = write(tmp_path, "tiny.yaml", TINY)
    started = threading.Event()

    def evaluator(s, split):
        fake = FakeEvaluator(s, split, sleep=0.01)
        if split != "search":
            return fake
        calls = {"n": 0}

        def evaluate(arch):
            calls["n"] += 1
            started.set()
            if threading.current_thread() is threading.main_thread() and calls["n"] > 3:
                raise RuntimeError("the searcher's evaluator broke")
            return fake(arch)
        return evaluate

    recipe = write(tmp_path, "evo.yaml", "searcher: evolution\nmax_evals: 50\n"
                   "evolution: {population: 10, generations: 5, parents: 3, mutations: 4, crossovers: 4}\n")
    before = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="broke"):
        search(space, search_recipe=recipe, out=tmp_path / "e", progress=False, backend=Injected(evaluator))
    assert started.is_set()
    assert not [t for t in set(threading.enumerate()) - before if t.name == "nas-random-baseline"]


def test_the_cli_exits_cleanly_when_the_search_fails_beside_its_baseline(tmp_path):
    """The same through a real interpreter exit: exit 2, no abort (134), no traceback."""
    space = write(tmp_path, "tiny.yaml", TINY)
    url = "postgresql://nobody@127.0.0.1:1/none"
    proc = subprocess.run([sys.executable, "-m", "nas.cli", "search", str(space), "--searcher", "optuna",
                           "--storage", url, "--out", str(tmp_path / "o"), "--max-evals", "5"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "--storage" in error_line(proc.stderr)


def test_without_data_the_plan_uses_the_builtin_data(files):
    """``nas search SPACE`` with no --data (the main job): the built-in data, resolved once for training."""
    from nas.search.job import plan
    job = plan(files["space"], recipe=files["recipe"])
    assert job.data == "builtin" and job.resolved is not None and job.resolved[1].num_classes == 10
    assert job.train_id() == {"recipe_hash": job.training.hash(), "data": "builtin"}


def test_an_evaluation_a_resume_would_refuse_is_never_written(tmp_path):
    """A broken evaluator's nan top-1 stops the search at once; the history keeps only the rows before it, each
    one a resume accepts."""
    space = write(tmp_path, "tiny.yaml", TINY)

    def evaluator(s, split):
        fake = FakeEvaluator(s, split)

        def evaluate(arch):
            e = fake(arch)
            return dataclasses.replace(e, score=float("nan")) if len(fake.calls) == 3 else e
        return evaluate

    with pytest.raises(NasError, match=r"history.csv: arch [0-9a-f]{16}: the evaluation cannot be recorded"):
        search(space, searcher="random", max_evals=10, out=tmp_path / "r", progress=False, backend=Injected(evaluator))
    from nas.search.history import read_history
    assert len(read_history(tmp_path / "r" / "history.csv")) == 2

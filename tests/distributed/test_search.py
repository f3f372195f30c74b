"""``nas search --ray-address``: candidates scored on Ray actors of a real head give the run a local search gives
(same history apart from timings, same best arch), also when an actor's process is SIGKILLed mid-evaluation;
Optuna on Ray evaluates each arch once and keeps its study in the run's storage."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from nas.cli import main
from nas.search.history import Candidate, best, read_history
from nas.space import load_arch, load_space
from nas.train import train_supernet
from tests.distributed.conftest import head_env
from tests.helpers import EVAL_RECIPE

# PS-ViT's progressive tokenizer has BatchNorm in its stem: the recalibration batches travel to the actors too
SPACE = """\
name: tiny_ray
input: {size: 16, channels: 3}
num_classes: 5
tokenizer: {type: progressive, points: 2, iterations: {choice: [1, 2]}, share_weights: {choice: [false, true]}}
head: cls
qkv_bias: false
stages:
  - dim: {choice: [16, 32]}
    heads: 2
    mlp_ratio: {choice: [1, 2]}
    cells: [{choice: [basic, identity]}, {choice: [basic, shared_pair]}]
"""
"""2 x 2 x 2 x 2 x 2 x 2 = 64 archs."""
RECIPE = EVAL_RECIPE
DATA = "synthetic:160:5"
EVOLUTION = """\
searcher: evolution
max_evals: 20
batch_size: 64
evolution: {population: 8, generations: 3, parents: 3, mutations: 3, crossovers: 3, mutation_prob: 0.3}
"""
OPTUNA = """\
searcher: optuna
max_evals: 12
batch_size: 64
baseline: false
optuna: {n_startup_trials: 4}
"""
TIMEOUT = 300


def nas(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``nas ARGS`` in its own process joined to the head (the loopback settings before ``import ray``)."""
    out = subprocess.run([sys.executable, "-c", "import sys; from nas.cli import main; sys.exit(main())",
                          *map(str, args)], env={**head_env(), **(env or {})}, capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def same_rows(a: list[Candidate], b: list[Candidate]) -> None:
    """Every column but the timing equal, row for row."""
    assert [replace(c, seconds=0.0) for c in a] == [replace(c, seconds=0.0) for c in b]


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny trained supernet, the arguments of a search on it, and the local search's run directory."""
    d = tmp_path_factory.mktemp("ray_search")
    (d / "space.yaml").write_text(SPACE)
    (d / "recipe.yaml").write_text(RECIPE)
    (d / "evolution.yaml").write_text(EVOLUTION)
    (d / "optuna.yaml").write_text(OPTUNA)
    train_supernet(str(d / "space.yaml"), data=DATA, recipe=str(d / "recipe.yaml"), out=d / "supernet",
                   progress=False)
    b = load_space(d / "space.yaml").cost_bounds()
    limit = (b["min_macs"] + 3 * b["max_macs"]) // 4
    args = [d / "space.yaml", "--supernet", d / "supernet", "--flops", limit, "--seed", 3]
    assert main(["search", *map(str, args), "--search-recipe", str(d / "evolution.yaml"), "--out",
                 str(d / "local")]) == 0
    return {"dir": d, "args": args, "local": d / "local"}


def test_evolution_on_ray_equals_the_local_search(job: dict, ray_head: str) -> None:
    d = job["dir"]
    out = d / "ray"
    nas("search", *job["args"], "--search-recipe", d / "evolution.yaml", "--out", out, "--ray-address", ray_head,
        "--num-workers", 2)
    local = read_history(job["local"] / "history.csv")
    assert len(local) == 20 and len({c.arch_hash for c in local}) == 20
    same_rows(read_history(out / "history.csv"), local)
    same_rows(read_history(out / "baseline.csv"), read_history(job["local"] / "baseline.csv"))
    assert load_arch(out / "best.yaml") == load_arch(job["local"] / "best.yaml")
    assert "ray: 2 evaluation actors" in (out / "search.log").read_text()


def test_a_killed_actor_loses_and_repeats_nothing(job: dict, ray_head: str, tmp_path: Path) -> None:
    """The first actor to reach its 3rd evaluation SIGKILLs itself in the middle of it: Ray restarts the actor,
    retries the evaluation, and the search records every candidate exactly once."""
    d, out, marker = job["dir"], tmp_path / "ray", tmp_path / "killed"
    nas("search", *job["args"], "--search-recipe", d / "evolution.yaml", "--out", out, "--ray-address", ray_head,
        "--num-workers", 2, "--max-retries", 2, env={"NAS_TEST_KILL_ACTOR": f"3:{marker}"})
    assert marker.exists()  # the kill happened
    rows = read_history(out / "history.csv")
    assert len({c.arch_hash for c in rows}) == len(rows) == 20
    same_rows(rows, read_history(job["local"] / "history.csv"))
    assert load_arch(out / "best.yaml") == load_arch(job["local"] / "best.yaml")


def test_a_worker_dead_past_max_retries_stops_the_search_in_one_line_and_the_rerun_resumes(
        job: dict, ray_head: str, tmp_path: Path) -> None:
    """With ``--max-retries 0`` the killed actor is not restarted: the search ends with exit 2 and one line
    naming ``--max-retries``; the same command then resumes and ends as the local search did."""
    d, out, marker = job["dir"], tmp_path / "ray", tmp_path / "killed"
    args = ["search", *job["args"], "--search-recipe", d / "evolution.yaml", "--out", out, "--ray-address", ray_head,
            "--num-workers", 2, "--max-retries", 0]
    failed = subprocess.run([sys.executable, "-c", "import sys; from nas.cli import main; sys.exit(main())",
                             *map(str, args)], env={**head_env(), "NAS_TEST_KILL_ACTOR": f"3:{marker}"},
                            capture_output=True, text=True, timeout=TIMEOUT)
    errors = [line for line in failed.stderr.splitlines() if line.startswith("nas: error: ")]
    assert failed.returncode == 2 and marker.exists() and "Traceback" not in failed.stderr, failed.stderr[-3000:]
    assert len(errors) == 1 and "died more than --max-retries 0 times" in errors[0], failed.stderr[-3000:]
    nas(*args)  # the marker exists: no second kill
    rows = read_history(out / "history.csv")
    assert len({c.arch_hash for c in rows}) == len(rows) == 20
    same_rows(rows, read_history(job["local"] / "history.csv"))


def test_num_workers_needs_a_ray_address(job: dict, capsys: pytest.CaptureFixture) -> None:
    assert main(["search", *map(str, job["args"]), "--num-workers", "2", "--out", str(job["dir"] / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--num-workers" in err and "--ray-address" in err


def check_optuna_run(out: Path, local: list[Candidate]) -> list[Candidate]:
    """12 distinct archs in the history, the same in the study (one study, every trial told), scores equal to
    the local evaluator's where the local search scored the same arch, and the winner the history's best."""
    import optuna

    rows = read_history(out / "history.csv")
    assert len(rows) == len({c.arch_hash for c in rows}) == 12
    url = f"sqlite:///{out / 'study.db'}"
    (name,) = optuna.get_all_study_names(url)
    trials = optuna.load_study(study_name=name, storage=url).trials
    assert all(t.state == optuna.trial.TrialState.COMPLETE or t.state == optuna.trial.TrialState.FAIL
               for t in trials)
    stored = [t.user_attrs["candidate"]["arch_hash"] for t in trials if "candidate" in t.user_attrs]
    assert len(stored) == len(set(stored)) and set(stored) <= {c.arch_hash for c in rows}
    by_hash = {c.arch_hash: c for c in local}
    both = [c for c in rows if c.arch_hash in by_hash]
    assert all((c.score, c.loss) == (by_hash[c.arch_hash].score, by_hash[c.arch_hash].loss) for c in both)
    assert load_arch(out / "best.yaml").hash() == best(rows).arch_hash
    return rows


def test_optuna_on_ray_evaluates_each_arch_once(job: dict, ray_head: str, tmp_path: Path) -> None:
    """Through Ray Tune's OptunaSearch (default workers: the head's 2 CPUs): no arch evaluated twice, the
    study in the run's storage, Tune's files inside the run directory."""
    out = tmp_path / "optuna"
    nas("search", *job["args"], "--search-recipe", job["dir"] / "optuna.yaml", "--out", out, "--ray-address",
        ray_head)
    check_optuna_run(out, read_history(job["local"] / "history.csv"))
    assert "ray: 2 evaluation actors" in (out / "search.log").read_text()
    assert (out / "tune" / "optuna").is_dir()


@pytest.mark.slow
def test_optuna_on_ray_resumes_after_the_driver_is_killed(job: dict, ray_head: str, tmp_path: Path) -> None:
    """SIGKILL the driver once a few candidates are in: the same command finishes the search with no candidate
    lost (the first ones are still there) or evaluated again."""
    out = tmp_path / "optuna"
    cmd = [sys.executable, "-c", "import sys; from nas.cli import main; sys.exit(main())", "search",
           *map(str, job["args"]), "--search-recipe", str(job["dir"] / "optuna.yaml"), "--out", str(out),
           "--ray-address", ray_head]
    driver = subprocess.Popen(cmd, env=head_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.time() + TIMEOUT
        while len(read_history(out / "history.csv")) < 4:
            assert driver.poll() is None and time.time() < deadline, "the search ended before it was killed"
            time.sleep(0.1)
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(30)
    before = read_history(out / "history.csv")
    assert 4 <= len(before) < 12
    nas(*cmd[3:])
    rows = check_optuna_run(out, read_history(job["local"] / "history.csv"))
    assert rows[:len(before)] == before

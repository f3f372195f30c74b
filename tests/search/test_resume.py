"""Kill-and-resume: a search SIGKILLed mid-way and run again loses and repeats no evaluation and ends with the
same history and best as an uninterrupted run; two Optuna workers on one SQLite study evaluate no arch twice."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nas.search.history import best, read_history
from nas.search.backend import Injected
from nas.search.runner import search
from tests.search.helpers import SMALL_EVOLUTION, TINY, FakeEvaluator, write

ROOT = Path(__file__).resolve().parents[2]


def worker(**kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "tests.search.worker", json.dumps(kw)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def rows(path: Path) -> list[str]:
    return [c.arch_hash for c in read_history(path)]


def test_sigkill_mid_search_then_resume_loses_and_repeats_nothing(tmp_path: Path):
    space, rec = write(tmp_path, "tiny.yaml", TINY), write(tmp_path, "evo.yaml", SMALL_EVOLUTION)
    kw = {"space": str(space), "flops": "300K:600K", "search_recipe": str(rec)}
    reference = search(**kw, out=tmp_path / "ref", progress=False, backend=Injected(lambda s, split: FakeEvaluator(s, split)))
    out = tmp_path / "killed"
    p = worker(**kw, out=str(out), sleep=0.05)
    deadline = time.time() + 60
    while len(rows(out / "history.csv")) < 12 and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert p.poll() is None, p.communicate()[1][-2000:]
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    before = rows(out / "history.csv")
    assert 12 <= len(before) < len(reference.candidates), "the kill must land mid-search"
    evaluators: list[FakeEvaluator] = []

    def make(s, split):
        evaluators.append(FakeEvaluator(s, split))
        return evaluators[-1]
    resumed = search(**kw, out=out, progress=False, backend=Injected(make))
    after = rows(out / "history.csv")
    assert after[:len(before)] == before                      # nothing lost
    assert len(set(after)) == len(after)                      # nothing evaluated twice
    assert after == [c.arch_hash for c in reference.candidates]  # the very same search
    search_calls = evaluators[0].calls
    assert not set(search_calls) & {h for h in before} and all(n == 1 for n in search_calls.values())
    assert resumed.new_evals == len(after) - len(before)
    assert resumed.best == reference.best


TPE = ("searcher: optuna\nmax_evals: 12\nbaseline: false\n"
       "optuna: {n_startup_trials: 4, heartbeat_interval: 1, grace_period: 3}\n")


def check_shared_work(tmp_path: Path) -> None:
    a, b = rows(tmp_path / "w0" / "history.csv"), rows(tmp_path / "w1" / "history.csv")
    assert a and b, "both workers evaluated"
    assert len(set(a + b)) == len(a + b), "an arch was evaluated by both workers or twice by one"
    assert 12 <= len(a + b) <= 13  # the study's budget, at most one past it per extra worker
    # each reports the study's best when it finished: the one finishing last, the best of all
    reported = {json.loads((tmp_path / w / "summary.json").read_text())["best"]["arch_hash"] for w in ("w0", "w1")}
    union = read_history(tmp_path / "w0" / "history.csv") + read_history(tmp_path / "w1" / "history.csv")
    assert best(union).arch_hash in reported


def test_two_optuna_workers_on_one_sqlite_study_evaluate_no_arch_twice(tmp_path: Path):
    """Two workers in threads (each its own storage connection, heartbeat and history): the claim protocol is
    the storage's, so this is the two-process case without two torch imports."""
    kw = {"space": write(tmp_path, "tiny.yaml", TINY), "flops": "300K:600K",
          "search_recipe": write(tmp_path, "tpe.yaml", TPE), "storage": f"sqlite:///{tmp_path / 'shared.db'}"}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            search(**kw, out=tmp_path / f"w{i}", progress=False,
                   backend=Injected(lambda s, split: FakeEvaluator(s, split, sleep=0.1)))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    check_shared_work(tmp_path)


@pytest.mark.slow
def test_two_optuna_worker_processes_on_one_sqlite_study_evaluate_no_arch_twice(tmp_path: Path):
    kw = {"space": str(write(tmp_path, "tiny.yaml", TINY)), "flops": "300K:600K",
          "search_recipe": str(write(tmp_path, "tpe.yaml", TPE)), "storage": f"sqlite:///{tmp_path / 'shared.db'}",
          "sleep": 0.1}
    procs = [worker(**kw, out=str(tmp_path / f"w{i}")) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    check_shared_work(tmp_path)

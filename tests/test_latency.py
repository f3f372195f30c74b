"""Latency: the blocks of an arch and of a space, the table file, the predictor, latency budgets in a search, and the
two commands. Tables here are fakes with known times (no timing is asserted), or real ones made on tiny spaces with
one timed run per block (their values are only checked for form)."""
from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import pytest
import torch

from nas.cli import main
from nas.errors import NasError
from nas.latency import Block, LatencyTable, Timing, arch_blocks, load_table, make_table
from nas.latency.table import check_environment, environment
from nas.latency.timing import block_module, space_blocks
from nas.search.backend import Injected
from nas.search.budget import Budget, parse_latency
from nas.search.history import COLUMNS, LEGACY_COLUMNS, History, read_history
from nas.search.job import plan
from nas.search.runner import search
from nas.space import load_arch, load_space, sample_distinct
from tests.search.helpers import SMALL_EVOLUTION, FakeEvaluator, write
from tests.space.test_tokenizer_choice import SMALL

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "spaces").glob("*.yaml"))

POOL = """\
name: tiny_pool
input: {size: 16, channels: 3}
num_classes: 10
tokenizer: {type: patch, patch_size: 4}
pooling: {type: 1d, kernel: 3}
head: cls
stages:
  - {dim: 16, heads: 2, mlp_ratio: 2, cells: {repeat: 2, choice: [basic, shared_pair, identity]}}
  - {dim: {choice: [16, 24]}, heads: 2, mlp_ratio: {choice: [1, 2]},
     cells: [{choice: [basic, shared_pair, identity]}, basic]}
"""
"""4x4 patches + cls = 17 tokens, 1d pooling to 1 + 8 = 9; 9 x 2 x 2 x 3 = 108 archs."""


def fake_ms(b: Block) -> float:
    """A known, block-dependent time in [0.1, 1.1) ms."""
    return 0.1 + int(hashlib.sha256(b.key().encode()).hexdigest()[:6], 16) / 2**24


def fake_table(space, fixed: float = 0.25, **env) -> LatencyTable:
    here = {**environment("cpu", torch.get_num_threads(), 1), **env}
    return LatencyTable(here, {b: Timing(fake_ms(b), fake_ms(b), fake_ms(b), 1) for b in space_blocks(space)}, fixed,
                        space.name, space.hash)


def every_arch(space):
    return {space.decode(list(v)) for v in itertools.product(*(range(len(d.values)) for d in space.dims))}


@pytest.fixture()
def pool(tmp_path: Path):
    return load_space(write(tmp_path, "pool.yaml", POOL))


# --- blocks -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_the_blocks_of_a_space_cover_every_sampled_arch(path):
    space = load_space(path)
    blocks = set(space_blocks(space))
    for arch in sample_distinct(space, min(60, space.size()), seed=3):
        missing = [str(b) for b in arch_blocks(arch) if b not in blocks]
        assert not missing, missing


def test_the_blocks_of_a_small_space_are_exactly_those_of_its_archs(tmp_path):
    space = load_space(write(tmp_path, "small.yaml", SMALL))
    used = {b for a in every_arch(space) for b in arch_blocks(a)}
    assert used == set(space_blocks(space))
    kinds = {b.kind for b in used}
    assert kinds == {"tokenizer", "layer", "reduce", "head"}
    assert {b.get("attn") for b in used if b.kind == "layer"} == {"own", "map", "shared"}
    assert {dict(b.get("tokenizer"))["type"] for b in used if b.kind == "tokenizer"} == {"patch", "progressive",
                                                                                         "coarse_fine"}


def test_prediction_is_the_sum_of_the_tables_entries_by_hand(pool):
    arch = pool.decode([0, 1, 1, 1, 2])  # stage 0 basic, shared_pair; stage 1 dim 24, mlp 2, identity + basic
    assert [st.cells for st in arch.stages] == [("basic", "shared_pair"), ("identity", "basic")]
    assert (arch.stages[1].dim, arch.stages[1].hidden) == (24, 48)
    table = fake_table(pool, fixed=0.25)
    tok = Block.of("tokenizer", tokenizer={"type": "patch", "patch_size": 4}, img=16, chans=3, dim=16, heads=2,
                   hidden=32, qkv_bias=True, cls=True)
    layer = lambda attn, n, d, h: Block.of("layer", attn=attn, tokens=n, dim=d, heads=2, hidden=h,  # noqa: E731
                                           qkv_bias=True)
    by_hand = [tok, layer("own", 17, 16, 32), layer("map", 17, 16, 32), layer("shared", 17, 16, 32),
               Block.of("pooling", type="1d", kernel=3, tokens=17, side=4, dim_in=16, dim_out=24, cls=True),
               layer("own", 9, 24, 48), Block.of("head", head="cls", tokens=9, dim=24, classes=10)]
    assert arch_blocks(arch) == by_hand
    assert table.predict(arch) == pytest.approx(0.25 + sum(fake_ms(b) for b in by_hand))


def test_a_missing_block_is_an_error_naming_it(pool):
    table = fake_table(pool)
    arch = pool.decode([1, 0, 0, 0, 0])
    gone = next(b for b in arch_blocks(arch) if b.kind == "layer" and b.get("attn") == "shared")
    del table.entries[gone]
    table.file = "t.json"
    with pytest.raises(NasError) as e:
        table.predict(arch)
    assert str(gone) in str(e.value) and e.value.file == "t.json" and "nas latency-table" in str(e.value)
    with pytest.raises(NasError, match="no time for block layer"):
        pool.latency_bounds(table)  # the space's bounds look up every block


def test_latency_bounds_are_exact(tmp_path):
    space = load_space(write(tmp_path, "small.yaml", SMALL))
    table = fake_table(space, fixed=0.5)
    found = space.latency_bounds(table)
    predicted = [table.predict(a) for a in every_arch(space)]
    assert found["min_latency"][0] == pytest.approx(min(predicted))
    assert found["max_latency"][0] == pytest.approx(max(predicted))
    for name, (value, arch) in found.items():
        assert table.predict(arch) == pytest.approx(value), name


# --- the table file -----------------------------------------------------------------------------------------
def test_make_table_writes_a_table_that_covers_the_space_and_resumes(tmp_path, monkeypatch):
    space_file = write(tmp_path, "pool.yaml", POOL)
    out = tmp_path / "t.json"
    import nas.latency.timing as timing
    real, calls = timing.raw_times, []

    def dies(*a, **k):  # killed after 5 timings
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(timing, "raw_times", dies)
    with pytest.raises(KeyboardInterrupt):
        make_table(str(space_file), out, reps=1, rounds=1, calibrate=1, progress=False)
    partial = [json.loads(line) for line in (tmp_path / "t.json.partial").read_text().splitlines()[1:]]
    assert len(partial) == 5 and not out.exists()
    monkeypatch.setattr(timing, "raw_times", real)
    t = make_table(str(space_file), out, reps=1, rounds=1, calibrate=1, progress=False)
    assert not (tmp_path / "t.json.partial").exists()
    kept = {row["key"].split("|", 1)[1]: row["value"][0] for row in partial}
    assert all(t.entries[Block.from_dict(json.loads(k))].ms == ms for k, ms in kept.items())  # not timed again
    loaded = load_table(out)
    space = load_space(space_file)
    assert set(loaded.entries) == set(space_blocks(space)) and loaded.hash() == t.hash()
    c = loaded.calibration[0]
    assert loaded.fixed_ms == pytest.approx(c["measured_ms"] - c["blocks_ms"])
    assert set(loaded.environment) >= {"device", "machine", "threads", "batch", "torch", "timm", "nas", "python"}
    arch = space.sample(0)
    assert loaded.predict(arch) == pytest.approx(loaded.fixed_ms + sum(loaded.entries[b].ms for b in arch_blocks(arch)))


def test_every_block_kind_builds_and_runs(tmp_path):
    space = load_space(write(tmp_path, "small.yaml", SMALL))
    for b in space_blocks(space):
        module, x = block_module(b, batch=2)
        with torch.inference_mode():
            module(x)


@pytest.mark.parametrize("text, key", [
    ("{not json", None), ('{"format": "other"}', "format"),
    ('{"format": "nas-latency-table/1", "environment": {"device": "cpu"}}', "environment"),
])
def test_a_bad_table_file_is_one_error_naming_the_file(tmp_path, text, key):
    path = write(tmp_path, "t.json", text)
    with pytest.raises(NasError) as e:
        load_table(path)
    assert e.value.file == str(path) and e.value.key == key
    assert (e.value.line == 1) == (key is None)


def test_a_table_from_elsewhere_warns_naming_the_difference(pool):
    assert check_environment(fake_table(pool)) is None
    warning = check_environment(fake_table(pool, threads=99, torch="0.1"))
    assert "threads 99 (here " in warning and "torch 0.1" in warning and "\n" not in warning


# --- budgets ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, band", [("8ms", (0, 8.0)), ("8", (0, 8.0)), ("0.008s", (0, 8.0)),
                                        ("8000us", (0, 8.0)), ("6ms:8ms", (6.0, 8.0)), ("6:8", (6.0, 8.0))])
def test_latency_budgets_parse(text, band):
    assert parse_latency(text) == pytest.approx(band)


@pytest.mark.parametrize("text, says", [("fast", "is not a duration"), ("8ms:6ms", "lower end 8 ms is above"),
                                        ("0ms", "above 0 ms"), ("8 hours", "is not a duration")])
def test_bad_latency_budgets_are_one_error_naming_the_flag(text, says):
    with pytest.raises(NasError, match=says) as e:
        parse_latency(text)
    assert str(e.value).startswith(f"--latency {text!r}") and "\n" not in str(e.value)


def test_a_latency_band_admits_like_a_macs_band(pool):
    b = Budget.resolve("10M", None, {}, latency="2ms:3ms", table=fake_table(pool))
    assert b.admits(1e6, 100, 2.5) and b.admits(1e6, 100, 2.0) and b.admits(1e6, 100, 3.0)
    assert not b.admits(1e6, 100, 1.9) and not b.admits(1e6, 100, 3.1) and not b.admits(2e7, 100, 2.5)
    assert b.violation(1e6, 100, 3.3) == pytest.approx(0.1)
    assert b.may_admit(0, 1e6, 100, 2.5) and not b.may_admit(0, 1e6, 100, 4.0)
    assert b.label() == "10M_2ms-3ms" and "latency in [2 ms, 3 ms] (predicted" in b.describe()
    assert b.to_dict()["latency_ms"] == [2.0, 3.0] and b.to_dict()["latency_table"] == b.table.hash()
    with pytest.raises(NasError, match="--latency 3ms needs --latency-table"):
        Budget.resolve(None, None, {}, latency="3ms")


def test_an_unreachable_latency_budget_fails_before_anything_naming_the_range(tmp_path, pool):
    table = fake_table(pool)
    table.save(tmp_path / "t.json")
    lo, hi = (pool.latency_bounds(table)[k][0] for k in ("min_latency", "max_latency"))
    for text in (f"{lo / 2:.4f}ms", f"{hi + 1:.4f}ms:{hi + 2:.4f}ms"):
        with pytest.raises(NasError, match=f"reachable latency range {lo:.2f} ms .. {hi:.2f} ms"):
            plan(pool.file, latency=text, latency_table=tmp_path / "t.json", trains=False)


# --- a search under a latency budget ------------------------------------------------------------------------
def run(tmp_path: Path, out: str, **kw):
    space, rec = Path(load_space(write(tmp_path, "pool.yaml", POOL)).file), write(tmp_path, "evo.yaml", SMALL_EVOLUTION)
    return search(str(space), search_recipe=str(rec), out=tmp_path / out, progress=False,
                  backend=Injected(lambda s, split: FakeEvaluator(s, split)), **kw)


def test_a_latency_budgeted_search_keeps_its_budget_records_it_and_resumes(tmp_path, pool):
    table = fake_table(pool)
    table.save(tmp_path / "t.json")
    lo, hi = (pool.latency_bounds(table)[k][0] for k in ("min_latency", "max_latency"))
    band = f"{lo + (hi - lo) * 0.3:.3f}ms:{lo + (hi - lo) * 0.6:.3f}ms"
    a, b = parse_latency(band)
    r = run(tmp_path, "run", latency=band, latency_table=str(tmp_path / "t.json"))
    rows = read_history(tmp_path / "run" / "history.csv")
    assert rows and all(c.target_latency_ms == pytest.approx(table.predict(pool.decode(c.vector))) for c in rows)
    assert all(a <= c.target_latency_ms <= b for c in rows if c.feasible)
    assert all(c.feasible for c in rows)  # checked before evaluation: nothing outside was evaluated
    best = load_arch(tmp_path / "run" / "best.yaml")
    assert best.provenance.budget_latency_ms == b and best.provenance.latency_ms == r.best.target_latency_ms
    assert table.hash() in best.provenance.latency_table
    assert "latency_ms" in (tmp_path / "run" / "pareto.csv").read_text().splitlines()[0]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["budget"]["latency_ms"] == [a, b]
    again = run(tmp_path, "run", latency=band, latency_table=str(tmp_path / "t.json"))
    assert again.new_evals == 0 and again.best.arch_hash == r.best.arch_hash
    assert read_history(tmp_path / "run" / "history.csv") == rows
    with pytest.raises(NasError, match="budget"):  # another band is another run
        run(tmp_path, "run", latency=f"{b:.3f}ms", latency_table=str(tmp_path / "t.json"))
    fake_table(pool, fixed=9.0).save(tmp_path / "t2.json")   # another table predicts otherwise: refused too
    with pytest.raises(NasError, match="budget"):
        run(tmp_path, "run", latency=band, latency_table=str(tmp_path / "t2.json"))


def test_latency_combines_with_macs_and_a_table_alone_only_records(tmp_path, pool):
    table = fake_table(pool)
    table.save(tmp_path / "t.json")
    hi = pool.latency_bounds(table)["max_latency"][0]
    r = run(tmp_path, "both", flops="150K", latency=f"{hi * 0.8:.3f}ms", latency_table=str(tmp_path / "t.json"))
    assert all(c.target_macs <= 150_000 and c.target_latency_ms <= hi * 0.8 for c in r.candidates if c.feasible)
    r = run(tmp_path, "record", flops="150K", latency_table=str(tmp_path / "t.json"))
    assert all(c.target_latency_ms is not None for c in r.candidates) and r.budget.latency is None


def test_a_history_from_before_latency_budgets_reads_and_appends(tmp_path, pool):
    path = tmp_path / "history.csv"
    old = ",".join(LEGACY_COLUMNS) + "\n"
    arch = pool.sample(0)
    row = [arch.hash(), "0", "0.5", "0.7", "0.5", "10", "20", "", "10", "20", "1", "0.1000",
           "-".join(map(str, pool.encode(arch)))]
    path.write_text(old + ",".join(row) + "\n")
    [c] = read_history(path, pool)
    assert c.target_latency_ms is None and c.score == 0.5
    h = History(path, pool)
    h.append(c)
    h.close()
    assert path.read_text().splitlines()[0] == ",".join(LEGACY_COLUMNS) and len(read_history(path, pool)) == 2
    assert len(COLUMNS) == len(LEGACY_COLUMNS) + 1


# --- the commands -------------------------------------------------------------------------------------------
def test_nas_latency_and_latency_table_on_a_tiny_space(tmp_path, capsys):
    space = write(tmp_path, "pool.yaml", POOL)
    out = tmp_path / "table.json"
    assert main(["latency-table", str(space), "--out", str(out), "--reps", "1", "--rounds", "1",
                 "--calibrate", "1"]) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"{out}: ") and "predicted range" in line
    assert main(["space", "sample", str(space), "--out", str(tmp_path / "a")]) == 0
    arch = next((tmp_path / "a").glob("*.yaml"))
    capsys.readouterr()
    assert main(["latency", str(arch), "--reps", "3", "--table", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["batch"] == 1 and info["device"] == "cpu" and info["runs"] == 3 and info["ms"] > 0
    assert info["predicted_ms"] == pytest.approx(load_table(out).predict(load_arch(arch)))
    assert main(["latency", str(arch), "--reps", "2"]) == 0
    text = capsys.readouterr().out
    assert "ms per forward of batch 1 on cpu" in text and "threads, torch" in text


def test_the_commands_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    space = write(tmp_path, "pool.yaml", POOL)
    cases = [["latency", str(tmp_path / "missing.yaml")],
             ["latency", str(space), "--batch", "0"],
             ["latency-table", str(space), "--device", "tpu"],
             ["search", str(space), "--latency", "5ms"],
             ["search", str(space), "--latency", "5ms", "--latency-table", str(tmp_path / "missing.json")],
             ["search", str(space), "--latency", "soon", "--latency-table", str(tmp_path / "missing.json")]]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("nas: error: ") and "\n" not in err, (argv, err)

"""A resumed search never silently drops or trusts a bad history row: every line of ``history.csv`` and
``baseline.csv`` is checked, a bad one is a one-line error naming file:line with the file left byte for byte as
it was; only a torn last line (a killed writer) is dropped, and the resumed search equals the uninterrupted one."""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Callable

import pytest

from nas.cli import main
from nas.errors import NasError
from nas.search.backend import Injected
from nas.search.history import COLUMNS, DAMAGED, History, read_history
from nas.search.report import SearchResult
from nas.search.runner import search
from nas.space import load_space
from tests.search.helpers import SMALL_EVOLUTION, TINY, FakeEvaluator, write

KEPT = 9     # the header and 8 rows are kept of a finished run's history: a resume evaluates the rest
BAD = 5      # the line damaged, with good rows after it
HEADER = ",".join(COLUMNS)


def fake() -> Injected:
    return Injected(lambda space, split: FakeEvaluator(space, split))


def run(tmp: Path, out: Path) -> SearchResult:
    return search(tmp / "tiny.yaml", flops="300K:600K", search_recipe=tmp / "evo.yaml", out=out, progress=False,
                  backend=fake())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, SearchResult]:
    """A finished search (its history and its random baseline's), run once for the module."""
    tmp = tmp_path_factory.mktemp("ref")
    write(tmp, "tiny.yaml", TINY)
    write(tmp, "evo.yaml", SMALL_EVOLUTION)
    return tmp, run(tmp, tmp / "ref")


def cut(ref: Path, out: Path, tail: str = "") -> None:
    """``out``: the reference run with the first ``KEPT`` lines of each history kept, then ``tail`` appended."""
    shutil.copytree(ref, out)
    for name in ("history.csv", "baseline.csv"):
        lines = (ref / name).read_text().splitlines(keepends=True)
        assert len(lines) > KEPT + 2
        (out / name).write_text("".join(lines[:KEPT]) + tail)


def field(name: str, value: Callable[[str], str]) -> Callable[[list[str], int], None]:
    """A damage: the column ``name`` of line BAD set to ``value(old)``."""
    def damage(lines: list[str], _: int) -> None:
        row = lines[BAD - 1].split(",")
        row[COLUMNS.index(name)] = value(row[COLUMNS.index(name)])
        lines[BAD - 1] = ",".join(row)
    return damage


def other_hash(lines: list[str], _: int) -> None:
    lines[BAD - 1] = lines[BAD].split(",")[0] + lines[BAD - 1][16:]


def line(text: str, at: int = BAD) -> Callable[[list[str], int], None]:
    def damage(lines: list[str], _: int) -> None:
        lines[at - 1] = text
    return damage


def insert_header(lines: list[str], _: int) -> None:
    lines.insert(BAD - 1, HEADER)


DAMAGES = {  # what is done to line BAD (or line 1), the line reported, what the error says
    "garbage text": (line("garbage text"), BAD, "1 column(s), expected 14"),
    "duplicated header": (insert_header, BAD, "a second header line"),
    "no header": (line("score,loss", at=1), 1, "the first line is not the history header (arch_hash,"),
    "nan score": (field("score", lambda _: "nan"), BAD, "score 'nan' is not a finite number in [0, 1]"),
    "score above 1": (field("score", lambda _: "1.5"), BAD, "score '1.5' is not a finite number in [0, 1]"),
    "inf loss": (field("loss", lambda _: "inf"), BAD, "loss 'inf' is not a finite number"),
    "nan objective": (field("objective", lambda _: "nan"), BAD, "objective 'nan' is not a finite number"),
    "wrong column count": (line("a,b,c,d,e,f,g,h,i,j,k,l"), BAD, "12 column(s), expected 14"),
    "fractional macs": (field("macs", lambda v: v + ".5"), BAD, "macs '"),
    "vector too short": (field("vector", lambda v: v.rsplit("-", 1)[0]), BAD,
                         "vector has 4 entries, the space has 5 dimensions"),
    "index out of range": (field("vector", lambda v: "9" + v[1:]), BAD, "vector[0] = 9 is out of range"),
    "hash that does not match": (other_hash, BAD, "is not the hash of the arch its vector decodes to"),
    "bad feasible flag": (field("feasible", lambda _: "2"), BAD, "feasible '2' is not 0 or 1"),
}
NEEDS_SPACE = {"vector too short", "index out of range", "hash that does not match"}


@pytest.mark.parametrize("name", ["history.csv", "baseline.csv"])
@pytest.mark.parametrize("kind", list(DAMAGES))
def test_a_bad_row_stops_the_resume_and_changes_nothing(reference, tmp_path, kind, name):
    tmp, _ = reference
    out = tmp_path / "run"
    cut(tmp / "ref", out)
    damage, at, says = DAMAGES[kind]
    lines = (out / name).read_text().splitlines()
    damage(lines, at)
    (out / name).write_text("\n".join(lines) + "\n")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(NasError) as e:
        run(tmp, out)
    path = out / name
    assert (e.value.file, e.value.line) == (str(path), at)
    msg = str(e.value)
    assert msg.startswith(f"{path}:{at}: ") and says in msg and msg.endswith(f"; {DAMAGED}") and "\n" not in msg, msg
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"}      # nothing rewritten, nothing dropped
    if kind not in NEEDS_SPACE:  # the pictures read through the same checks (all but the space's)
        with pytest.raises(NasError, match=f"^{re.escape(str(path))}:{at}: "):
            read_history(path)


def test_the_cli_exits_2_with_one_line(reference, tmp_path, capsys, monkeypatch):
    tmp, _ = reference
    out = tmp_path / "run"
    cut(tmp / "ref", out)
    lines = (out / "history.csv").read_text().splitlines(keepends=True)
    text = "".join(lines[:3] + ["garbage\n"] + lines[3:])
    (out / "history.csv").write_text(text)
    bad = 4
    monkeypatch.setattr("nas.search.runner.Local", fake)
    capsys.readouterr()
    code = main(["search", str(tmp / "tiny.yaml"), "--flops", "300K:600K", "--search-recipe", str(tmp / "evo.yaml"),
                 "--out", str(out)])
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if "nas: error: " in x]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"nas: error: {out / 'history.csv'}:{bad}: 1 column(s), expected 14; "), err
    assert (out / "history.csv").read_text() == text
    assert main(["viz", str(out), "--out", str(tmp_path / "viz")]) == 2           # the pictures too
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"nas: error: {out / 'history.csv'}:{bad}: "), err


def test_a_torn_last_line_is_dropped_and_the_resume_equals_the_uninterrupted_run(reference, tmp_path):
    tmp, ref = reference
    out = tmp_path / "run"
    torn = (tmp / "ref" / "history.csv").read_text().splitlines(keepends=True)[KEPT][:30]
    cut(tmp / "ref", out, tail=torn)
    resumed = run(tmp, out)
    assert resumed.new_evals == len(ref.candidates) - (KEPT - 1)
    assert resumed.candidates == ref.candidates and resumed.best == ref.best and resumed.baseline == ref.baseline
    for name in ("history.csv", "baseline.csv"):
        assert (out / name).read_bytes() == (tmp / "ref" / name).read_bytes()


def test_a_finished_run_resumes_with_its_histories_untouched(reference, tmp_path):
    tmp, ref = reference
    out = tmp_path / "run"
    shutil.copytree(tmp / "ref", out)
    again = run(tmp, out)
    assert again.new_evals == 0 and again.candidates == ref.candidates and again.best == ref.best
    for name in ("history.csv", "baseline.csv"):
        assert (out / name).read_bytes() == (tmp / "ref" / name).read_bytes()


def test_every_row_of_a_real_history_passes_the_space_check(reference):
    tmp, ref = reference
    rows = read_history(tmp / "ref" / "history.csv", load_space(tmp / "tiny.yaml"))
    assert rows == ref.candidates


def test_a_file_without_a_complete_header_line_is_no_torn_history(tmp_path):
    """The header is written whole: a file with no newline at all is not a killed writer's, and is kept."""
    path = tmp_path / "history.csv"
    path.write_text("some notes")
    with pytest.raises(NasError, match=f"^{re.escape(str(path))}:1: the first line is not the history header"):
        History(path)
    assert path.read_text() == "some notes"
    path.write_text("")                              # an empty file is an empty history: the header written
    history = History(path)
    history.close()
    assert len(history) == 0 and path.read_text() == HEADER + "\n"

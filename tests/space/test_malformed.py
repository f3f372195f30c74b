"""Every file in malformed/ must fail validation with exit code 2 and one line naming file:line and key.

Each file's first line says what is expected: ``# expect: <line> <key.path or -> <message substring>``.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nas.cli import main

CORPUS = sorted((Path(__file__).parent / "malformed").glob("*.yaml"))


def expectation(path: Path) -> tuple[int, str, str]:
    first = path.read_text().splitlines()[0]
    line, key, message = first.removeprefix("# expect: ").split(" ", 2)
    return int(line), key, message


def test_corpus_is_large():
    assert len(CORPUS) >= 25


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_malformed_space_is_rejected_with_location(path: Path, capsys):
    line, key, message = expectation(path)
    assert main(["space", "validate", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1, err
    prefix = f"nas: error: {path}:{line}: " + ("" if key == "-" else f"{key}: ")
    assert err.startswith(prefix), f"{err!r} does not start with {prefix!r}"
    assert message in err


@pytest.mark.parametrize("name", ["python_tag", "yaml_syntax_error", "indivisible_heads"])
def test_cli_process_prints_no_traceback(name: str):
    path = Path(__file__).parent / "malformed" / f"{name}.yaml"
    proc = subprocess.run([sys.executable, "-m", "nas.cli", "space", "validate", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_python_tag_is_never_executed(tmp_path: Path):
    marker = tmp_path / "pwned"
    space = tmp_path / "evil.yaml"
    space.write_text(f"name: x\nnum_classes: !!python/object/apply:os.system ['touch {marker}']\n")
    assert main(["space", "validate", str(space)]) == 2
    assert not marker.exists()

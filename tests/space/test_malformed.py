"""Every file in malformed/ must fail validation with exit code 2 and one line naming file:line and key.

Each file's first line says what is expected: ``# expect: <line> <key.path or -> <message substring>``.
The corpus covers resource exhaustion (alias bombs, recursive aliases, deep nesting, huge ranges and choices,
too many cells), unsafe names, and messages that must say what is allowed without internal reprs.
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
    assert len(CORPUS) >= 60


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
    assert "Traceback" not in err and "Node(" not in err


@pytest.mark.parametrize("name", ["python_tag", "yaml_syntax_error", "indivisible_heads", "alias_bomb",
                                  "recursive_alias", "deep_nesting", "huge_range"])
def test_cli_process_prints_no_traceback(name: str):
    """In a real process, with a timeout as a hang guard (an alias bomb used to run until killed)."""
    path = Path(__file__).parent / "malformed" / f"{name}.yaml"
    proc = subprocess.run([sys.executable, "-m", "nas.cli", "space", "validate", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_python_tag_is_never_executed(tmp_path: Path):
    marker = tmp_path / "pwned"
    space = tmp_path / "evil.yaml"
    space.write_text(f"name: x\nnum_classes: !!python/object/apply:os.system ['touch {marker}']\n")
    assert main(["space", "validate", str(space)]) == 2
    assert not marker.exists()


@pytest.mark.parametrize("case", ["too_large", "not_utf8", "folder", "nul_in_path"])
def test_unreadable_space_files(case: str, tmp_path: Path, capsys):
    path = tmp_path / "space.yaml"
    if case == "too_large":  # bounded before it is read: 2 MiB of comments
        path.write_text("name: x\n" + ("# padding\n" * 200_000))
        needle = "bytes is too large; allowed: at most 1,048,576 bytes"
    elif case == "not_utf8":
        path.write_bytes(b"name: \xff\xfe\n")
        needle = "not UTF-8 text"
    elif case == "folder":
        path.mkdir()
        needle = "is a folder; expected a YAML file"
    else:
        path = tmp_path / "a\0b.yaml"
        needle = "NUL byte"
    assert main(["space", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err
    if case != "nul_in_path":
        assert err.startswith(f"nas: error: {path}: ")

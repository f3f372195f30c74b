"""nas.atomic: all-or-nothing writes."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from nas.atomic import atomic_write


def test_atomic_write_keeps_old_content_on_failure(tmp_path: Path, monkeypatch):
    path = tmp_path / "a.txt"
    atomic_write(path, "old")

    def die(*args):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", die)
    with pytest.raises(OSError):
        atomic_write(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    atomic_write(path, b"new")
    assert path.read_text() == "new"

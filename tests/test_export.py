"""Exports: arch files with a comment header read back unchanged."""
from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

from nas.arch import Provenance
from nas.export import save_arch_with_header
from nas.space import load_arch
from tests.helpers import random_arch


def test_arch_file_with_header_reads_back_equal(tmp_path: Path):
    arch = random_arch(random.Random(1))
    arch = replace(arch, provenance=Provenance(space="s", space_hash="0123456789abcdef", budget_macs=10, score=0.5))
    path = save_arch_with_header(arch, tmp_path / "a.yaml", ["line one", "line two: with a colon"])
    back = load_arch(path)
    assert back == arch and back.provenance == arch.provenance
    assert path.read_text().startswith("# line one\n# line two")

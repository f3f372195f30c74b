"""Exports: the Pareto front against brute force; arch files with a header read back unchanged."""
from __future__ import annotations

import random
from pathlib import Path

from nas.arch import Provenance
from nas.export import pareto_front, save_arch_with_header
from nas.space import load_arch
from tests.helpers import random_arch


def test_pareto_front_is_the_set_of_non_dominated_points():
    rng = random.Random(0)
    for _ in range(50):
        pts = [(rng.randint(0, 20), rng.randint(0, 20)) for _ in range(rng.randint(1, 30))]
        dominated = {i for i, (m, s) in enumerate(pts) for (m2, s2) in pts
                     if m2 <= m and s2 >= s and (m2, s2) != (m, s)}
        front = pareto_front(pts)
        assert {pts[i] for i in front} == {p for i, p in enumerate(pts) if i not in dominated}
        assert [pts[i][0] for i in front] == sorted(pts[i][0] for i in front)


def test_arch_file_with_header_reads_back_equal(tmp_path: Path):
    arch = random_arch(random.Random(1))
    from dataclasses import replace
    arch = replace(arch, provenance=Provenance(space="s", space_hash="0123456789abcdef", budget_macs=10, score=0.5))
    path = save_arch_with_header(arch, tmp_path / "a.yaml", ["line one", "line two: with a colon"])
    back = load_arch(path)
    assert back == arch and back.provenance == arch.provenance
    assert path.read_text().startswith("# line one\n# line two")

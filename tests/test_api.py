"""The public API: every name in ``nas.__all__`` is stable whatever was imported before it."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_snippet() -> str:
    """The README's Python snippet, verbatim."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README.md has no ```python block"
    return blocks[0]


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_readme_snippet_runs_verbatim_and_names_stay_stable():
    check = readme_snippet() + """
import nas, nas.cost, nas.models, nas.space, nas.supernet, nas.measure
from nas import *
for name in nas.__all__:
    assert not type(getattr(nas, name)).__name__ == "module", name
a = space.sample(seed=1)
c1 = nas.cost(a)
m = nas.build_model(a)
c2 = nas.cost(a)
assert isinstance(c1, nas.Cost) and c1 == c2, (c1, c2)
assert isinstance(cost(a), Cost)
assert nas.load_space is load_space and nas.build_model is build_model
print("ok")
"""
    r = run(check)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]


def test_each_export_called_twice_around_build_model(tmp_path):
    arch_file = tmp_path / "a.yaml"
    code = f"""
import nas
space = nas.load_space("spaces/psvit_tiny.yaml", overrides={{"input.size": 32, "tokenizer.patch_size": 8}})
for _ in range(2):
    a = space.sample(seed=0)
    assert isinstance(nas.cost(a), nas.Cost)
    nas.save_arch(a, {str(arch_file)!r})
    assert nas.load_arch({str(arch_file)!r}) == a
    model = nas.build_model(a)
    assert isinstance(nas.cost(a), nas.Cost)
    sn = nas.Supernet(space)
    assert isinstance(nas.SearchSpace, type) and isinstance(nas.Arch, type) and issubclass(nas.NasError, Exception)
print("ok")
"""
    r = run(code)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_dir_lists_the_api_only():
    r = run("import nas; print(' '.join(dir(nas)))")
    names = set(r.stdout.split())
    assert set(__import__("nas").__all__) <= names
    assert not names & {"Any", "annotations", "importlib", "_importlib"}

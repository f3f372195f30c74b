"""Import structure: the cost model and the space DSL load without torch, no module of ``nas`` is in an import
circle (function-level lazy imports count as edges: a circle is a circle whenever it closes), and no module
imports one of a higher layer (``LAYERS``)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nas"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``nas`` modules it imports anywhere in its body (``from a import b`` counts ``a.b`` when
    ``a.b`` is a module, else ``a``). A package's own ``__init__`` running first is not an edge."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
                    base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            graph[mod] |= {t for t in targets if t in files and t != mod}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_circle_in_nas():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_lazy_circles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    graph = import_graph()
    assert "nas.arch" in graph["nas.cost"] and "nas.shapes" in graph["nas.cost"]


def test_cost_and_space_do_not_import_torch():
    code = ("import nas.cost, nas.space, nas.shapes, nas.mechanisms, sys; nas.mechanisms.tokenizers(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_cli_reads_spaces_and_arch_files_without_torch():
    code = ("import sys; from nas.cli import main; "
            "assert main(['space', 'validate', 'spaces/psvit_tiny.yaml']) == 0; "
            "assert main(['space', 'show', 'spaces/combined.yaml', '--json']) == 0; "
            "assert main(['flops', 'spaces/reference/deit_small.yaml']) == 0; "
            "assert main(['flops', 'spaces/ats_deit_small.yaml']) == 0; "
            "assert main(['flops', 'missing.yaml']) == 2; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_cost_imports_no_model():
    graph = import_graph()
    for mod in ("nas.cost", "nas.shapes", "nas.arch", "nas.mechanisms"):
        assert not {m for m in graph[mod] if m.startswith("nas.models") or m.endswith((".model", ".picture"))}, mod


# --- layers: a module imports only modules of its own layer or below ------------------------------------------
LAYERS: list[tuple[str, ...]] = [
    ("nas.errors", "nas.atomic", "nas.limits", "nas.stats", "nas.shipped"),
    # torch-free descriptions and configs: archs, shapes, cost, spaces, recipes, run-directory metadata
    ("nas.mechanisms", "nas.arch", "nas.shapes", "nas.cost", "nas.space", "nas.train.recipe", "nas.train.rundir",
     "nas.latency.blocks", "nas.latency.table"),
    ("nas.models", "nas.weights", "nas.data", "nas.measure", "nas.latency"),
    ("nas.supernet",),
    ("nas.train",),
    ("nas.export", "nas.viz"),
    ("nas.search",),
    ("nas.distributed",),
    ("nas.cli", "nas"),
]
"""Bottom to top. A module is in the layer of the longest name above that is it or a package holding it; a
mechanism's torch half (``nas.mechanisms.<name>.model``) is in the layer of ``nas.models``, its picture
(``nas.mechanisms.<name>.picture``) in that of ``nas.viz``."""


def layer(mod: str) -> int:
    """The index in ``LAYERS`` of ``mod`` (longest matching prefix wins: ``nas.train.recipe`` before ``nas.train``)."""
    parts = mod.split(".")
    if parts[:2] == ["nas", "mechanisms"] and len(parts) == 4 and parts[3] in ("model", "picture"):
        mod = {"model": "nas.models", "picture": "nas.viz"}[parts[3]]
    best, depth = None, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            inside = mod.startswith(name + ".") and name != "nas"  # "nas" is the package's __init__ only
            if (mod == name or inside) and name.count(".") > depth:
                best, depth = i, name.count(".")
    assert best is not None, f"{mod} has no layer: add it to LAYERS"
    return best


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every edge from a module to a module of a higher layer, as 'a -> b'."""
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer(b) > layer(a))


def test_layers_are_kept_apart():
    assert upward_imports(import_graph()) == []


def test_search_does_not_import_distributed():
    """Execution is passed to the search (``nas.search.backend``); Ray's backend lives above it."""
    graph = import_graph()
    assert sorted(f"{a} -> {b}" for a, t in graph.items() if a.startswith("nas.search")
                  for b in t if b.startswith("nas.distributed")) == []


def test_viz_does_not_import_search():
    assert not {m for m in import_graph()["nas.viz"] if m.startswith("nas.search")}


def test_supernet_imports_no_job():
    """``nas.supernet`` (the supernet, its runs, scoring) is used by the jobs, never the other way round."""
    graph = import_graph()
    jobs = ("nas.search", "nas.viz", "nas.distributed", "nas.cli")
    assert sorted(f"{a} -> {b}" for a, t in graph.items() if a.startswith("nas.supernet")
                  for b in t if b.startswith(jobs)) == []


def test_the_layer_check_finds_upward_imports():
    assert layer("nas.train.recipe") < layer("nas.models") < layer("nas.train.loop") < layer("nas.search.runner")
    assert upward_imports({"nas.models.vit": {"nas.train.loop", "nas.arch"}}) == ["nas.models.vit -> nas.train.loop"]
    with pytest.raises(AssertionError, match="no layer"):
        layer("nas.newmodule")

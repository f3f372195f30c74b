"""Import structure: the cost model and the space DSL load without torch, and no module of ``nas`` is in an
import circle (function-level lazy imports count as edges: a circle is a circle whenever it closes)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

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
    code = "import nas.cost, nas.space, nas.shapes, sys; assert 'torch' not in sys.modules, 'torch imported'"
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
    for mod in ("nas.cost", "nas.shapes", "nas.arch"):
        assert not {m for m in graph[mod] if m.startswith("nas.models")}, mod

"""The package's modules import each other without a cycle (issue 22).

A cycle makes the import order matter (a module half-initialised when the other reads it) and, worse for a
reader, means no file can be understood before the others. Every `import ssd...` and `from ssd... import`
counts, also those inside functions (a lazy import hides a cycle from Python, not from the reader).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ssd"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The ssd modules that `path` imports anywhere in its body. `from X import m` of a submodule m counts as
    importing X.m (as `from X.m import f` does; package X's __init__ runs first in both cases, as a parent);
    `from X import f` of anything else counts as importing X."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    found.discard(module_name(path))
    return found


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imported_modules(f, modules) for f in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle as [a, b, ..., a], or [] when the graph has none (depth-first search, colours)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_find_cycle_on_small_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"b"}}) == ["b", "b"]
    assert find_cycle({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) == []  # a diamond is no cycle


def test_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "ssd.structures.boxes" in graph["ssd.modeling.priors"] or graph["ssd.modeling.priors"] == set()
    # train.py's recipe step reads the backbone shapes through a function-level import; it must be seen.
    assert "ssd.modeling.build" in graph["ssd.engine.recipe"]


def test_ssd_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50, sorted(graph)  # every module was parsed
    cycle = find_cycle(graph)
    assert not cycle, "import cycle in ssd/: " + " -> ".join(cycle)

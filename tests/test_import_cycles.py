"""No import cycle inside a package: each package's module-level import graph is acyclic.

Imports inside functions are lazy by design (they break no load order) and are not counted.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

PACKAGES = ["regionrank.storage", "regionrank.extractors", "regionrank.encoders", "regionrank.index", "regionrank.flows"]


def module_import_graph(package: str) -> dict[str, set[str]]:
    """``module -> modules of package`` that it imports at module level (statements outside functions)."""
    pkg = importlib.import_module(package)
    names = {m.name for m in pkgutil.walk_packages(pkg.__path__, package + ".")} | {package}
    graph: dict[str, set[str]] = {}
    for name in sorted(names):
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None
        tree = ast.parse(Path(spec.origin).read_text())
        deps: set[str] = set()
        for node in tree.body:  # module level only: imports inside functions are lazy by design
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module if node.level == 0 else importlib.util.resolve_name("." * node.level + node.module, package)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            deps |= {t for t in targets if t in names and t != name}
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


@pytest.mark.parametrize("package", PACKAGES)
def test_module_level_import_graph_is_acyclic(package: str) -> None:
    graph = module_import_graph(package)
    assert len(graph) > 5
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_find_cycle_reports_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None



"""The model registry, and the encoders package's module-level import graph being acyclic."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

from regionrank.encoders import registry
from regionrank.encoders.scan_model import MeanPoolBaseline, ScanModel
from regionrank.encoders.teran import TeranModel


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


@pytest.mark.parametrize("package", ["regionrank.encoders"])
def test_module_level_import_graph_is_acyclic(package: str) -> None:
    graph = module_import_graph(package)
    assert len(graph) > 5
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_find_cycle_reports_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_registry_maps_every_family_and_config() -> None:
    assert registry.MODEL_FAMILIES == {"teran": TeranModel, "scan": ScanModel, "scan-meanpool": MeanPoolBaseline}
    for name in registry.list_models():
        assert registry.family_of_config(registry.get_model_cfg(name)).kind == registry.get_model_cfg(name).get("kind", "teran")
    spec = registry.load_scan_spec("scan-coco-t2i-lse")
    assert spec.family is ScanModel and spec.name == "scan-coco-t2i-lse" and "vocab_size" not in spec.arch
    with pytest.raises(ValueError, match="known kinds"):
        registry.model_family("clip")
    with pytest.raises(TypeError, match="model_name_or_cfg"):
        registry.family_of_config(3)


def test_every_model_class_declares_the_protocol() -> None:
    from regionrank.encoders.grounded import GroundedEncoder
    from regionrank.encoders.protocol import CheckpointableModel, RetrievalModel

    for cls in (TeranModel, ScanModel, MeanPoolBaseline, GroundedEncoder):
        for member in ("encoder_name", "embed_dim", "fingerprint", "embed_image_records", "embed_caption_texts",
                       "score_encoded"):
            assert hasattr(cls, member) or member == "embed_dim", (cls, member)
    for cls in registry.MODEL_FAMILIES.values():
        for member in ("kind", "checkpoint_config", "save_checkpoint_files", "from_checkpoint", "feature_dim"):
            assert hasattr(cls, member), (cls, member)
    assert RetrievalModel is not CheckpointableModel

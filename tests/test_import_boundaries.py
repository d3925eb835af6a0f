"""Dependency direction (HOUSE_STYLE §2), checked in fresh interpreters and statically."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> third-party / project top-level names it must never load
FORBIDDEN = {
    "storage": {"torch", "prefect", "faiss", "extractors", "encoders", "index", "flows", "transformers"},
    "extractors": {"prefect", "faiss", "encoders", "index", "flows"},
    "encoders": {"prefect", "faiss", "extractors", "index", "flows"},
    "index": {"prefect", "encoders", "extractors", "flows", "torch"},
}

_PROBE = """
import importlib, pkgutil, sys
pkg = importlib.import_module({pkg!r})
for m in pkgutil.walk_packages(pkg.__path__, prefix={pkg!r} + "."):
    importlib.import_module(m.name)
bad = sorted(n for n in {forbidden!r} if n in sys.modules)
print(",".join(bad))
"""


@pytest.mark.parametrize("pkg", sorted(FORBIDDEN))
def test_importing_package_loads_nothing_forbidden(pkg: str) -> None:
    code = _PROBE.format(pkg=pkg, forbidden=sorted(FORBIDDEN[pkg]))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    loaded = [n for n in out.stdout.strip().split(",") if n]
    assert loaded == [], f"importing {pkg} loaded {loaded}"


def test_only_index_loads_faiss_and_only_flows_loads_prefect() -> None:
    code = _PROBE.format(pkg="index", forbidden=["faiss"])
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "faiss", "index is the package that wraps faiss: it should load it"


def _imported_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("pkg", sorted(FORBIDDEN) + ["flows"])
def test_static_imports_respect_boundaries(pkg: str) -> None:
    forbidden = FORBIDDEN.get(pkg, set()) | ({"faiss"} if pkg != "index" else set()) | ({"prefect"} if pkg != "flows" else set())
    offenders = []
    for path in sorted((ROOT / pkg).rglob("*.py")):
        bad = _imported_names(path) & forbidden
        if bad:
            offenders.append(f"{path.relative_to(ROOT)}: {sorted(bad)}")
    assert offenders == [], "imports crossing package boundaries (even inside functions):\n" + "\n".join(offenders)

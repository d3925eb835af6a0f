"""Dependency direction (HOUSE_STYLE §2), checked in fresh interpreters and statically.

The five folders import as ``regionrank.<folder>``; a bare ``import storage`` anywhere is a defect (a
``dask worker``'s local directory holds a ``storage/`` folder that would shadow it).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("storage", "extractors", "encoders", "index", "flows")
THIRD_PARTY = {"torch", "prefect", "faiss", "transformers"}

# package -> third-party / project names it must never load
FORBIDDEN = {
    "storage": {"torch", "prefect", "faiss", "transformers",
                "regionrank.extractors", "regionrank.encoders", "regionrank.index", "regionrank.flows"},
    "extractors": {"prefect", "faiss", "regionrank.encoders", "regionrank.index", "regionrank.flows"},
    "encoders": {"prefect", "faiss", "regionrank.extractors", "regionrank.index", "regionrank.flows"},
    "index": {"prefect", "torch", "regionrank.encoders", "regionrank.extractors", "regionrank.flows"},
}

_PROBE = """
import importlib, pkgutil, sys
pkg = importlib.import_module({pkg!r})
for m in pkgutil.walk_packages(pkg.__path__, prefix={pkg!r} + "."):
    importlib.import_module(m.name)
bad = sorted(n for n in {forbidden!r} if n in sys.modules)
print(",".join(bad))
"""


def _probe(pkg: str, forbidden: set[str], cwd: Path) -> list[str]:
    code = _PROBE.format(pkg=f"regionrank.{pkg}", forbidden=sorted(forbidden))
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return [n for n in out.stdout.strip().split(",") if n]


@pytest.mark.parametrize("pkg", sorted(FORBIDDEN))
def test_importing_package_loads_nothing_forbidden(pkg: str, tmp_path: Path) -> None:
    # from another folder: the installed mapping is what resolves regionrank.<pkg>, not the checkout's cwd
    loaded = _probe(pkg, FORBIDDEN[pkg], tmp_path)
    assert loaded == [], f"importing regionrank.{pkg} loaded {loaded}"


def test_only_index_loads_faiss_and_only_flows_loads_prefect(tmp_path: Path) -> None:
    assert _probe("index", {"faiss"}, tmp_path) == ["faiss"], "index is the package that wraps faiss: it should load it"


def test_shadowing_folders_do_not_hide_the_packages(tmp_path: Path) -> None:
    """A folder named like a package on sys.path (a dask worker's ``storage/`` spill folder) hides nothing."""
    for name in PACKAGES:
        (tmp_path / name).mkdir()
    code = ("import sys; sys.path.insert(0, '.')\n"
            "from regionrank.storage import RegionRecord\n"
            "import regionrank.flows.cli, regionrank.index, regionrank.encoders, regionrank.extractors\n"
            "print(RegionRecord.__module__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "regionrank.storage.records"


def _imported_names(path: Path) -> set[str]:
    """Every module an ``import`` names, ``from regionrank import index`` giving ``regionrank.index``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "regionrank":
                names.update(f"regionrank.{a.name}" for a in node.names)
    return names


def _crosses(name: str, forbidden: set[str]) -> bool:
    return any(name == f or name.startswith(f + ".") for f in forbidden)


@pytest.mark.parametrize("pkg", sorted(FORBIDDEN) + ["flows"])
def test_static_imports_respect_boundaries(pkg: str) -> None:
    forbidden = FORBIDDEN.get(pkg, set()) | ({"faiss"} if pkg != "index" else set()) | ({"prefect"} if pkg != "flows" else set())
    offenders = []
    for path in sorted((ROOT / pkg).rglob("*.py")):
        bad = sorted(n for n in _imported_names(path) if _crosses(n, forbidden))
        if bad:
            offenders.append(f"{path.relative_to(ROOT)}: {bad}")
    assert offenders == [], "imports crossing package boundaries (even inside functions):\n" + "\n".join(offenders)


def test_no_bare_package_imports() -> None:
    """Code, tests and benches import ``regionrank.<pkg>``, never the bare folder name."""
    offenders = []
    for folder in (*PACKAGES, "tests", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            bare = sorted(n for n in _imported_names(path) if n.split(".")[0] in PACKAGES)
            if bare:
                offenders.append(f"{path.relative_to(ROOT)}: {bare}")
    assert offenders == [], "bare imports (use regionrank.<pkg>):\n" + "\n".join(offenders)


def test_the_cli_loads_no_heavy_library_at_import(tmp_path: Path) -> None:
    """The package roots load their names lazily: ``regionrank --help`` and a search answered by the running
    service import the CLI without faiss, pyarrow, torch, transformers or prefect."""
    code = ("import sys\nimport regionrank.flows.cli\n"
            "print(','.join(sorted(n for n in ('faiss', 'pyarrow', 'torch', 'transformers', 'prefect') if n in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""

"""Every benchmark is a module of the ``bench`` package: it runs as ``python -m bench.<name>`` from the
repository root, imports only through ``regionrank`` and never edits ``sys.path``. No bench is run here."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHES = sorted(p.stem for p in (REPO / "bench").glob("*.py") if p.stem != "__init__")
# private imports a bench still needs, until a public name replaces them
PRIVATE_ALLOWED: set[tuple[str, str]] = set()


def test_every_stage_has_a_bench() -> None:
    assert {"encoders", "extract", "flows", "gpu_check", "index", "real", "scale", "search", "storage"} <= set(BENCHES)
    assert (REPO / "bench" / "__init__.py").is_file()


@pytest.mark.parametrize("name", BENCHES)
def test_bench_imports_and_its_help_exits_zero(name: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", f"bench.{name}", "--help"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.startswith(f"usage: python -m bench.{name}"), proc.stdout[:200]


@pytest.mark.parametrize("name", BENCHES)
def test_bench_uses_no_sys_path_edits_or_private_modules(name: str) -> None:
    tree = ast.parse((REPO / "bench" / f"{name}.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name):
            assert node.value.id != "sys", f"bench/{name}.py:{node.lineno} touches sys.path"
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("regionrank"):
            private = [part for part in node.module.split(".") if part.startswith("_")]
            private += [a.name for a in node.names if a.name.startswith("_")]
            if private and (name, node.module) not in PRIVATE_ALLOWED:
                raise AssertionError(f"bench/{name}.py:{node.lineno} imports private {private} from {node.module}")


def test_gpu_check_on_a_cpu_machine_says_what_it_skipped_and_exits_zero() -> None:
    """The one GPU script runs everywhere: without CUDA it skips each step, with the reason, quickly."""
    import json

    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CPU behaviour cannot be observed here")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["device"] is None and not result["errors"]
    assert set(result["skipped"]) == {"extraction", "scan", "faiss_gpu", "two_stage_gpu", "pytest_gpu"}
    assert all(result["skipped"].values())
    for step in result["skipped"]:
        assert f"{step}: skipped" in proc.stdout
    assert result["wall_s"] < 60

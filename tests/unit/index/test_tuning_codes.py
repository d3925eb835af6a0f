"""A compressed (IVF-PQ) region index is tuned against exhaustive search of its own codes: the first
stage scores the codes, so that is what nprobe must find."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from regionrank.index.build import build_vector_index
from regionrank.index.tuning import DecodedRows, RecallProbe, exact_knn

SPEC = "IVF16,PQ4x4"  # 4-bit PQ: tiny codebooks train in well under a second


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(40, 16))
    x = centres[rng.integers(0, 40, 4000)] + 0.35 * rng.normal(size=(4000, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return x, np.arange(10_000, 14_000, dtype=np.int64)


@pytest.fixture(scope="module")
def built(data):
    x, ids = data
    return build_vector_index(x, ids, spec=SPEC, target_recall=0.95, k=10, n_tune_queries=200, kind="region",
                              truth="codes")


def test_the_probe_ground_truth_is_exhaustive_search_of_the_codes(data, built) -> None:
    x, ids = data
    ann, info, probe = built
    decoded = DecodedRows(ann, x)
    assert decoded[:].shape == x.shape and np.allclose(decoded[5], decoded[:][5])
    assert not np.allclose(decoded[:], x, atol=1e-3)  # PQ really loses something
    scores, found = exact_knn(decoded[:], ids, probe.queries, probe.gt_ids.shape[1] + 1)
    for row in range(len(probe.queries)):
        want = [i for i in found[row] if i != probe.self_ids[row]][: probe.gt_ids.shape[1]]
        assert set(want[: probe.k]) == set(probe.gt_ids[row, : probe.k]) or np.isclose(
            scores[row, probe.k - 1], scores[row, probe.k])  # equal only up to exact ties at rank k
    assert info.truth == "codes" and probe.truth == "codes"


def test_codes_truth_reaches_the_target_without_probing_every_list(data, built) -> None:
    x, ids = data
    ann, info, probe = built
    assert info.target_met and info.measured_recall >= 0.95
    assert info.search_value < 16  # fewer than all lists
    ann.set_search_param(16)  # every list: exhaustive search of the codes finds the codes' neighbours
    assert probe.measure(ann) > 0.99
    exact = RecallProbe.create(x, ids, np.sort(np.unique(np.searchsorted(ids, probe.self_ids))), k=10)
    assert exact.measure(ann) < 0.9  # against exact neighbours PQ plateaus below any useful target


def test_the_probe_keeps_its_truth_through_save_and_load(built, tmp_path: Path) -> None:
    _, _, probe = built
    probe.save(tmp_path / "p.npz")
    again = RecallProbe.load(tmp_path / "p.npz")
    assert again.truth == "codes" and np.array_equal(again.gt_ids, probe.gt_ids)


def test_codes_truth_needs_an_index_with_codes(data) -> None:
    x, ids = data
    with pytest.raises(ValueError, match="PQ"):
        build_vector_index(x[:500], ids[:500], spec="IVF4,Flat", truth="codes")
    with pytest.raises(ValueError, match="truth"):
        build_vector_index(x[:500], ids[:500], spec="Flat", truth="decoded")


def test_small_decodes_run_on_one_thread_and_give_the_same_vectors(data, built) -> None:
    from regionrank.index import faiss_module

    x, _ = data
    ann, _, _ = built
    faiss = faiss_module()
    codes = ann.encode_standalone(x)
    before = faiss.omp_get_max_threads()
    small = ann.decode_standalone(codes[:100])
    assert faiss.omp_get_max_threads() == before  # the caller's setting is restored
    assert np.array_equal(small, ann._cpu.sa_decode(codes[:100]))  # faiss's own decoder, default threads
    assert np.array_equal(small, ann.decode_standalone(codes)[:100])

"""A compressed (IVF-PQ) region index is tuned against exhaustive search of its own codes: the first
stage scores the codes, so that is what nprobe must find."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index_testdata import Scene, write_images

from regionrank import index
from regionrank.index.build import build_vector_index
from regionrank.index.tuning import DecodedRows, RecallProbe, exact_knn

SPEC = "IVF16,PQ4x4"  # 4-bit PQ: tiny codebooks train in well under a second


def assert_same_top_k(probe: RecallProbe, row: int, found: np.ndarray, scores: np.ndarray) -> None:
    """The probe's top-k of query ``row`` is the exhaustive one (leave-one-out), or differs from it only
    by an exact tie at rank k (float sums: within 1e-6)."""
    others = found != probe.self_ids[row]
    want, want_scores = found[others][: probe.k + 1], scores[others][: probe.k + 1]
    assert set(want[: probe.k]) == set(probe.gt_ids[row, : probe.k]) or (
        abs(want_scores[probe.k - 1] - want_scores[probe.k]) <= 1e-6
        and set(want[: probe.k - 1]) <= set(probe.gt_ids[row, : probe.k]))


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
        assert_same_top_k(probe, row, found[row], scores[row])
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


def test_an_add_keeps_the_codes_ground_truth_exact(tmp_path: Path) -> None:
    """After add_images the compressed region index's probe still holds exhaustive search of the codes of
    every indexed region (the added ones encoded and decoded, not their exact vectors)."""
    records = Scene(seed=11).images(700)
    store = write_images(tmp_path / "emb", records)
    index.build_indexes(store, tmp_path / "idx", specs={"region": SPEC}, region_layout="codes",
                        image_ids=[r.image_id for r in records[:600]])
    manifest = index.add_images(tmp_path / "idx", store, [r.image_id for r in records[600:]], auto_rebuild=False)
    assert manifest.region_layout == "codes" and manifest.indexes["region"].truth == "codes"
    handle = index.open_index(tmp_path / "idx")
    probe = RecallProbe.load(handle.path / "region.probe.npz")
    assert probe.truth == "codes"
    ids = handle.idmap.region_ids(handle.idmap.lookup([r.image_id for r in records]))
    # the vectors as the store holds them (float16), which is what the index encoded
    x = np.concatenate([np.asarray(r.region_embeddings, np.float16) for r in records]).astype(np.float32)
    scores, found = exact_knn(DecodedRows(handle.indexes["region"], x)[:], ids, probe.queries, probe.gt_ids.shape[1] + 1)
    valid = np.flatnonzero((probe.gt_ids >= 0).sum(1) >= probe.k)
    assert len(valid) > 0
    for row in valid:
        assert_same_top_k(probe, row, found[row], scores[row])

"""Re-ranking: the adaptive depth, the estimate gap of the stop rule, estimate order, and a re-ranker
that offers scores without attention maps."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
from index_testdata import (
    QUERIES,
    BagOfWordsEncoder,
    EstimatingScanReranker,
    NumpyScanReranker,
    Scene,
    mrsw_loop,
    scan_t2i,
    write_images,
)

from regionrank import index
from regionrank.index.search import exhaustive_search
from regionrank.storage.records import ImageEmbeddingRecord, QueryEmbedding


def test_adaptive_re_ranking_depth_recovers_what_a_fixed_depth_misses(built, scene: Scene) -> None:
    idx, store, records = built
    enc = BagOfWordsEncoder(scene.prototypes)
    kw = dict(rerank_k=10, fusion="weighted", fusion_weight=0.3, global_k=0)
    fixed = index.Searcher(idx, store, enc, NumpyScanReranker(), **kw)
    adaptive = index.Searcher(idx, store, enc, NumpyScanReranker(), max_rerank_k=len(records), **kw)
    agree_fixed, agree_adaptive, depths = [], [], []
    for q in QUERIES:
        ref = {h.image_id for h in exhaustive_search(enc.encode_query(q), records, NumpyScanReranker(), 10,
                                                     fusion="weighted", fusion_weight=0.3)}
        agree_fixed.append(len({h.image_id for h in fixed.search(q, 10)} & ref) / 10)
        agree_adaptive.append(len({h.image_id for h in adaptive.search(q, 10)} & ref) / 10)
        assert fixed.last_stats.reranked == 10
        depths.append(adaptive.last_stats.reranked)
    assert np.mean(agree_adaptive) == 1.0 and np.mean(agree_fixed) < 1.0, (agree_fixed, agree_adaptive)
    # it stops once MrSw rules the rest out: far fewer than every candidate is re-ranked
    assert all(d % 10 == 0 for d in depths) and max(depths) < len(records) / 2, depths
    with pytest.raises(ValueError, match="max_rerank_k"):
        index.Searcher(idx, store, enc, NumpyScanReranker(), rerank_k=10, max_rerank_k=5)


def crowd_scene(scene: Scene, n_plain: int = 300, n_crowd: int = 12) -> list[ImageEmbeddingRecord]:
    """Plain scene images plus "crowds": several noisy instances of concept 1. Each instance matches
    "c1" less well than a clean region (lower MrSw), but SCAN's attention averages them into a closer
    attended vector (higher SCAN): the case where MrSw order hides what the re-ranker wants."""
    records = scene.images(n_plain)
    rng = np.random.default_rng(5)
    for j in range(n_crowd):
        r = 5
        regions = scene.prototypes[[1] * r] + 0.55 * rng.standard_normal((r, scene.dim))
        regions /= np.linalg.norm(regions, axis=1, keepdims=True)
        boxes = np.tile(np.array([[0, 0, 10, 10]], np.float32), (r, 1))
        records.append(ImageEmbeddingRecord(image_id=f"crowd{j:03d}", uri="", boxes=boxes, region_embeddings=regions,
                                            global_embedding=regions.mean(0) / np.linalg.norm(regions.mean(0))))
    return records


def test_estimate_gap_keeps_re_ranking_when_the_estimate_underrates_candidates(tmp_path: Path, scene: Scene) -> None:
    """The estimate ignores the attended vector's norm, so it underrates the crowds; the stop rule adds
    the largest gap seen between score and estimate, and keeps re-ranking until the crowds are in."""
    store = write_images(tmp_path / "emb", crowd_scene(scene))
    records = list(store.iter_records())  # float16 as stored, what the search reads
    index.build_indexes(store, tmp_path / "idx")
    enc = BagOfWordsEncoder(scene.prototypes)
    kw = dict(rerank_k=10, fusion="scan", global_k=0)
    estimating = EstimatingScanReranker()
    adaptive = index.Searcher(tmp_path / "idx", store, enc, estimating, max_rerank_k=len(records), **kw)
    fixed = index.Searcher(tmp_path / "idx", store, enc, estimating, use_estimates=False, **kw)
    assert adaptive.estimator is estimating and fixed.estimator is None
    for q in ["c1", "c1 c5"]:
        query = enc.encode_query(q)
        ref = exhaustive_search(query, records, NumpyScanReranker(), 10, fusion="scan")
        assert sum(h.image_id.startswith("crowd") for h in ref) >= (3 if q == "c1" else 2)  # crowds win under SCAN
        words = query.word_embeddings
        mrsw_top = sorted(records, key=lambda r: -mrsw_loop(words, np.asarray(r.region_embeddings, np.float32)))[:10]
        assert {r.image_id for r in mrsw_top} != {h.image_id for h in ref}  # ... and MrSw's top 10 is not theirs
        hits = adaptive.search(q, 10)
        assert [h.image_id for h in hits] == [h.image_id for h in ref]
        assert [h.score for h in hits] == pytest.approx([h.score for h in ref], abs=1e-5)
        assert 10 < adaptive.last_stats.reranked < len(records)
        assert {h.image_id for h in fixed.search(q, 10)} != {h.image_id for h in ref}
    assert estimating.estimated > 0


def test_estimates_stop_adaptive_re_ranking_early_without_losing_agreement(built, scene: Scene) -> None:
    idx, store, records = built
    enc = BagOfWordsEncoder(scene.prototypes)
    kw = dict(rerank_k=10, max_rerank_k=len(records), fusion="weighted", fusion_weight=0.3, global_k=0)
    by_estimate = index.Searcher(idx, store, enc, EstimatingScanReranker(), **kw)
    by_mrsw = index.Searcher(idx, store, enc, EstimatingScanReranker(), use_estimates=False, **kw)
    depth_est, depth_mrsw = [], []
    for q in QUERIES:
        ref = [h.image_id for h in exhaustive_search(enc.encode_query(q), records, NumpyScanReranker(), 10,
                                                     fusion="weighted", fusion_weight=0.3)]
        assert {h.image_id for h in by_estimate.search(q, 10)} == set(ref)
        assert {h.image_id for h in by_mrsw.search(q, 10)} == set(ref)
        depth_est.append(by_estimate.last_stats.reranked)
        depth_mrsw.append(by_mrsw.last_stats.reranked)
    assert sum(depth_est) < sum(depth_mrsw), (depth_est, depth_mrsw)


class ScoresOnlyReranker(NumpyScanReranker):
    """Also offers scores() (no maps); counts which face was asked for how many candidates."""

    def __init__(self) -> None:
        super().__init__()
        self.scored = 0

    def scores(self, query: QueryEmbedding, candidates: Sequence[ImageEmbeddingRecord]) -> np.ndarray:
        self.scored += len(candidates)
        words = np.asarray(query.word_embeddings, np.float32)
        return np.array([scan_t2i(words, np.asarray(c.region_embeddings, np.float32))[0] for c in candidates], np.float32)


def test_scores_only_reranker_is_asked_for_maps_of_the_hits_alone(built, scene: Scene) -> None:
    idx, store, records = built
    enc = BagOfWordsEncoder(scene.prototypes)
    plain, lean = NumpyScanReranker(), ScoresOnlyReranker()
    kw = dict(rerank_k=30, fusion="weighted", fusion_weight=0.4)
    for q in QUERIES[:3]:
        a = index.Searcher(idx, store, enc, plain, **kw).search(q, 5)
        b = index.Searcher(idx, store, enc, lean, **kw).search(q, 5)
        assert [h.image_id for h in a] == [h.image_id for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-6)
        for ha, hb in zip(a, b, strict=True):
            np.testing.assert_allclose(ha.word_region_weights, hb.word_region_weights, atol=1e-6)
            assert [e.weight for e in ha.explanation] == pytest.approx([e.weight for e in hb.explanation], abs=1e-6)
    assert lean.scored == plain.candidates_seen and lean.candidates_seen == 3 * 5  # maps for the 5 hits only
    ref = exhaustive_search(enc.encode_query("c1 c5"), records, ScoresOnlyReranker(), 5, fusion="weighted", fusion_weight=0.4)
    assert [h.image_id for h in ref] == [h.image_id for h in
                                         exhaustive_search(enc.encode_query("c1 c5"), records, plain, 5, fusion="weighted", fusion_weight=0.4)]

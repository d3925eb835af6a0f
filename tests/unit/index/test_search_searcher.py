"""The Searcher facade against exhaustive scoring, stage scores against direct formulas, explanations,
errors, SearchParams wiring and search without re-ranking (rerank_k=0)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pytest
from index_testdata import QUERIES, BagOfWordsEncoder, EstimatingScanReranker, NumpyScanReranker, Scene, mrsw_loop, scan_t2i

from regionrank import index
from regionrank.index.search import RerankOutput, SearchParams, exhaustive_search, fuse_scores
from regionrank.storage.records import ImageEmbeddingRecord, QueryEmbedding


@pytest.mark.parametrize("fusion", ["scan", "weighted"])
def test_two_stage_agrees_with_exhaustive_scoring(built, scene: Scene, fusion: str) -> None:
    idx, store, _ = built
    enc, rr = BagOfWordsEncoder(scene.prototypes), NumpyScanReranker()
    searcher = index.Searcher(idx, store, enc, rr, rerank_k=100, fusion=fusion, fusion_weight=0.7)
    agree = []
    for q in QUERIES:
        hits = searcher.search(q, k=10)
        ref = exhaustive_search(enc.encode_query(q), store.iter_records(), rr, 10, fusion=fusion, fusion_weight=0.7)
        assert len(hits) == 10
        agree.append(len({h.image_id for h in hits} & {h.image_id for h in ref}) / 10)
        assert hits[0].image_id == ref[0].image_id and hits[0].score == pytest.approx(ref[0].score, abs=1e-5)
    assert np.mean(agree) >= 0.95, agree


def test_re_ranking_every_image_reproduces_exhaustive_scoring_exactly(built, scene: Scene) -> None:
    idx, store, records = built
    enc, rr = BagOfWordsEncoder(scene.prototypes), NumpyScanReranker()
    searcher = index.Searcher(idx, store, enc, rr, rerank_k=len(records), n_candidates=len(records), region_k=4000)
    for q in QUERIES[:3]:
        hits = searcher.search(q, k=10)
        ref = exhaustive_search(enc.encode_query(q), store.iter_records(), rr, 10)
        assert [h.image_id for h in hits] == [h.image_id for h in ref]
        np.testing.assert_allclose([h.score for h in hits], [h.score for h in ref], rtol=1e-6)


def test_stage_scores_and_explanations_follow_the_formulas(built, scene: Scene) -> None:
    idx, store, records = built
    by_id = {r.image_id: r for r in store.iter_records()}
    enc, rr = BagOfWordsEncoder(scene.prototypes), NumpyScanReranker()
    searcher = index.Searcher(idx, store, enc, rr, rerank_k=30, fusion="weighted", fusion_weight=0.25)
    q = enc.encode_query("c3 c12 c30")
    hits = searcher.search("c3 c12 c30", k=5)
    assert rr.calls == 1 and rr.candidates_seen == 30
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    for h in hits:
        rec = by_id[h.image_id]
        regions = np.asarray(rec.region_embeddings, np.float32)
        scan, alpha = scan_t2i(q.word_embeddings, regions)
        mrsw = mrsw_loop(q.word_embeddings, regions)
        assert h.stage_scores["mrsw"] == pytest.approx(mrsw, abs=1e-5)
        assert h.stage_scores["scan"] == pytest.approx(scan, abs=1e-5)
        assert h.score == pytest.approx(0.25 * scan + 0.75 * mrsw / 3, abs=1e-5)
        assert h.stage_scores["first"] >= h.stage_scores["mrsw"] - 1e-4  # the MaxSim bound bounds MrSw
        assert h.uri == rec.uri and h.boxes.shape == (rec.num_regions, 4)
        assert [e.token for e in h.explanation] == ["c3", "c12", "c30"]
        for w, e in enumerate(h.explanation):
            sims = regions @ q.word_embeddings[w]
            assert e.region == int(np.argmax(sims)) or (e.region == -1 and sims.max() <= 0)  # the MrSw match
            assert e.weight == pytest.approx(float(alpha[w, e.region]), abs=1e-5)
            assert e.box == pytest.approx(tuple(rec.boxes[e.region]))
            assert e.similarity == pytest.approx(float(np.max(regions @ q.word_embeddings[w])), abs=1e-5) or e.similarity == 0.0


def test_mrsw_only_search_equals_brute_force_mrsw(built, scene: Scene) -> None:
    idx, store, _ = built
    all_recs = list(store.iter_records())
    enc = BagOfWordsEncoder(scene.prototypes)
    searcher = index.Searcher(idx, store, enc, None, fusion="mrsw")
    for q in QUERIES:
        words = enc.encode_query(q).word_embeddings
        ref = sorted(all_recs, key=lambda r: -mrsw_loop(words, np.asarray(r.region_embeddings, np.float32)))[:10]
        hits = searcher.search(q, k=10)
        assert [h.image_id for h in hits] == [r.image_id for r in ref]
        assert "scan" not in hits[0].stage_scores
        # without a re-ranker the explanation weight is the clipped MrSw similarity
        e = hits[0].explanation[0]
        assert e.weight == pytest.approx(min(max(e.similarity, 0.0), 1.0), abs=1e-5)


class BadReranker:
    def rerank(self, query: QueryEmbedding, candidates: Sequence[ImageEmbeddingRecord]) -> RerankOutput:
        return RerankOutput(scores=np.zeros(len(candidates) + 1, np.float32))


def test_errors(built, scene: Scene) -> None:
    idx, store, _ = built
    enc = BagOfWordsEncoder(scene.prototypes)
    with pytest.raises(ValueError, match="needs a reranker"):
        index.Searcher(idx, store, enc)
    with pytest.raises(ValueError, match="unknown fusion"):
        index.Searcher(idx, store, enc, NumpyScanReranker(), fusion="max")
    with pytest.raises(ValueError, match="expected \\(40,\\)"):
        index.Searcher(idx, store, enc, BadReranker(), rerank_k=40).search("c1", 5)
    with pytest.raises(ValueError, match="caption_index_dir"):
        index.Searcher(idx, store, enc, fusion="mrsw").search_captions("img000001", 3)
    with pytest.raises(ValueError, match="fusion weight"):
        fuse_scores(np.zeros(2), np.zeros(2), 2, fusion="weighted", weight=2.0)


def test_preloaded_regions_give_the_same_hits(built, scene: Scene) -> None:
    idx, store, _ = built
    enc = BagOfWordsEncoder(scene.prototypes)
    mapped = index.Searcher(idx, store, enc, EstimatingScanReranker(), rerank_k=20)
    ram = index.Searcher(idx, store, enc, EstimatingScanReranker(), rerank_k=20, preload_regions=True)
    assert ram.regions is not None and ram.regions.vectors[0].dtype == np.float32
    for q in QUERIES:
        a, b = mapped.search(q, 10), ram.search(q, 10)
        assert [h.image_id for h in a] == [h.image_id for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-6)


def test_rerank_k_0_answers_with_exact_mrsw_whatever_the_fusion(built, scene: Scene) -> None:
    idx, store, _ = built
    all_recs = list(store.iter_records())
    enc, rr = BagOfWordsEncoder(scene.prototypes), EstimatingScanReranker()
    with_reranker = index.Searcher(idx, store, enc, rr, params=SearchParams(rerank_k=0))  # fusion: the default, "weighted"
    without = index.Searcher(idx, store, enc, None, rerank_k=0, fusion="scan")  # no re-ranker needed
    assert with_reranker.reranker is None and with_reranker.estimator is None
    for q in QUERIES:
        words = enc.encode_query(q).word_embeddings
        exact = {r.image_id: mrsw_loop(words, np.asarray(r.region_embeddings, np.float32)) for r in all_recs}
        ref = sorted(exact, key=lambda i: -exact[i])[:10]
        for searcher in (with_reranker, without):
            hits = searcher.search(q, k=10)
            assert [h.image_id for h in hits] == ref
            assert searcher.last_stats.reranked == 0
            for h in hits:
                assert "scan" not in h.stage_scores
                assert h.score == h.stage_scores["mrsw"] == pytest.approx(exact[h.image_id], abs=1e-5)
    assert rr.calls == 0 and rr.estimated == 0


def test_searcher_takes_search_params_and_keyword_overrides(built, scene: Scene) -> None:
    idx, store, _ = built
    enc = BagOfWordsEncoder(scene.prototypes)
    s = index.Searcher(idx, store, enc, NumpyScanReranker(), params=SearchParams(k=4, rerank_k=30), fusion="scan")
    assert s.params == SearchParams(k=4, rerank_k=30, fusion="scan")
    assert len(s.search("c1 c5")) == 4  # k defaults to params.k
    assert index.Searcher(idx, store, enc, NumpyScanReranker()).params == SearchParams()
    with pytest.raises(TypeError, match="rerank_depth"):
        index.Searcher(idx, store, enc, NumpyScanReranker(), rerank_depth=3)
    with pytest.raises(ValueError, match="region_k"):
        index.Searcher(idx, store, enc, NumpyScanReranker(), region_k=0)


def test_the_global_search_thread_runs_under_the_callers_faiss_threads(built, scene: Scene, monkeypatch) -> None:
    """OpenMP settings are per thread: a caller that caps its faiss threads (a service answering one
    query a core) must not get faiss's default back in the thread the global search runs in."""
    import threading

    idx, store, _ = built
    searcher = index.Searcher(idx, store, BagOfWordsEncoder(scene.prototypes), EstimatingScanReranker(), rerank_k=20)
    faiss = index.faiss_module()
    seen: list[tuple[str, int]] = []
    real = type(searcher.first_stage).global_candidates

    def spy(self, query):  # type: ignore[no-untyped-def]
        seen.append((threading.current_thread().name, faiss.omp_get_max_threads()))
        return real(self, query)

    monkeypatch.setattr(type(searcher.first_stage), "global_candidates", spy)
    before = faiss.omp_get_max_threads()
    try:
        for threads in (1, 3):
            faiss.omp_set_num_threads(threads)
            searcher.search(QUERIES[0], 5)
            assert seen[-1][0].startswith("global-search") and seen[-1][1] == threads
    finally:
        faiss.omp_set_num_threads(before)

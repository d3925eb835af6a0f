"""Second stage of the text-to-image search: the injected re-ranker scores the best candidates, and
the adaptive loop keeps re-ranking ``rerank_k`` more while an unseen candidate could still enter the
top ``k``. Also the checks on what a re-ranker returns."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from regionrank.index.search.first_stage import FirstStage, RoundState
from regionrank.index.search.fusion import fuse_scores, gap_weight
from regionrank.index.search.pool import CandidatePool
from regionrank.index.search.types import Reranker, RerankOutput, ScoringReranker
from regionrank.storage.records import ImageEmbeddingRecord, QueryEmbedding

__all__ = ["AdaptiveReranking", "check_rerank_output", "hit_attention", "rerank_scores"]


def rerank_scores(
    reranker: Reranker, query: QueryEmbedding, candidates: Sequence[ImageEmbeddingRecord]
) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """The re-ranker's scores of the candidates, and its attention maps when they came for free: its
    ``scores(query, candidates)`` when it is a :class:`ScoringReranker` (no maps: SCAN's cost about as
    much again as its scores), else ``rerank(...)`` (scores and maps)."""
    if isinstance(reranker, ScoringReranker):
        return _check_scores(reranker.scores(query, candidates), len(candidates)), None
    out = reranker.rerank(query, candidates)
    scores = check_rerank_output(out, np.shape(query.word_embeddings)[0], candidates)
    return scores, None if out.word_region_weights is None else list(out.word_region_weights)


def _check_scores(scores: Any, n: int) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float32)
    if scores.shape != (n,):
        raise ValueError(f"reranker returned scores of shape {tuple(scores.shape)} for {n} candidates; expected ({n},)")
    return scores


def check_rerank_output(out: RerankOutput, n_words: int, records: Sequence[ImageEmbeddingRecord]) -> np.ndarray:
    """The scores of a re-ranker's output, after checking its shapes against the candidates."""
    n = len(records)
    scores = _check_scores(out.scores, n)
    if out.word_region_weights is not None:
        if len(out.word_region_weights) != n:
            raise ValueError(f"reranker returned {len(out.word_region_weights)} weight matrices for {n} candidates")
        for w, rec in zip(out.word_region_weights, records, strict=True):
            if np.shape(w) != (n_words, rec.num_regions):
                raise ValueError(
                    f"reranker weights for image {rec.image_id!r} have shape {np.shape(w)}; "
                    f"expected ({n_words}, {rec.num_regions}) (query words x regions)"
                )
    return scores


def hit_attention(
    reranker: Reranker, query: QueryEmbedding, records: list[ImageEmbeddingRecord], final: np.ndarray, k: int
) -> list[np.ndarray | None] | None:
    """The re-ranker's attention maps of the ``k`` hits only (``None`` for the other re-ranked
    candidates, which are never shown), or ``None`` when it gives none."""
    best = np.argsort(-final, kind="stable")[:k]
    hits = [records[i] for i in best]
    out = reranker.rerank(query, hits)
    check_rerank_output(out, np.shape(query.word_embeddings)[0], hits)
    if out.word_region_weights is None:
        return None
    weights: list[np.ndarray | None] = [None] * len(records)
    for i, w in zip(best.tolist(), out.word_region_weights, strict=True):
        weights[i] = w
    return weights


class AdaptiveReranking:
    """Re-ranks a pool ``rerank_k`` at a time (best :meth:`FirstStage.rerank_key` first) while an
    unseen candidate could still enter the top ``k``, up to ``max_rerank_k``.

    An unseen candidate's re-ranker score is taken to be at most its estimate plus the largest amount
    by which a seen score exceeded its estimate (with an estimator), or at most the best score seen
    (without): a heuristic stop, since no bound on the re-ranker is known. Each deeper step asks the
    first stage to certify the new depth (the pool may grow; rows keep their positions).
    """

    def __init__(self, first: FirstStage, reranker: Reranker) -> None:
        self.first = first
        self.reranker = reranker
        self.params = first.params

    def _fuse(self, mrsw: np.ndarray, scan: np.ndarray, n_words: int) -> np.ndarray:
        return fuse_scores(mrsw, scan, n_words, fusion=self.params.fusion, weight=self.params.fusion_weight)

    def run(self, pool: CandidatePool, state: RoundState, depth: int, k: int) -> tuple[np.ndarray, np.ndarray, list[Any] | None]:
        """Returns ``(pool rows re-ranked, their re-ranker scores, their attention maps or None)``."""
        first, p = self.first, self.params
        n_words = state.words.shape[0]
        rows = np.zeros(0, np.int64)
        scan_parts: list[np.ndarray] = []
        maps: list[Any] | None = []
        while True:
            key = first.rerank_key(pool)
            seen = np.zeros(len(pool.ids), dtype=bool)
            seen[rows] = True
            remaining = np.flatnonzero(~seen)
            chunk = remaining[np.argsort(-key[remaining], kind="stable")][: max(depth - len(rows), 0)]
            if chunk.size:
                recs = first.records(pool.ids[chunk], state.cache)
                first.refine(pool, chunk, recs)  # compressed layout: exact MrSw of what is re-ranked
                scores, chunk_maps = rerank_scores(self.reranker, state.query, recs)
                scan_parts.append(scores)
                maps = None if maps is None or chunk_maps is None else [*maps, *chunk_maps]
                rows = np.concatenate([rows, chunk])
            seen[chunk] = True
            rest = np.flatnonzero(~seen)
            if depth >= p.rerank_limit or not rest.size:
                break
            scan_done = np.concatenate(scan_parts)
            fused = self._fuse(pool.mrsw(rows), scan_done, n_words)
            kth = np.sort(fused)[-k] if len(rows) >= k else -np.inf
            reach_out = float("-inf")
            if first.estimator is not None:
                gap = max(0.0, float(np.max(scan_done - pool.est[rows])))
                optimistic = pool.est[rest] + gap
                if first.bounder is not None:  # candidates never scored: their fused-estimate bound plus the gap,
                    # or their MrSw bound with the best score seen (MrSw order's rule), whichever is lower
                    by_mrsw = self._fuse(np.array([state.outside], np.float32), scan_done.max(keepdims=True), n_words)[0]
                    reach_out = min(state.outside_est + gap_weight(p.fusion, p.fusion_weight) * gap, float(by_mrsw))
            else:
                optimistic = np.full(rest.size, scan_done.max(), np.float32)
            reach = self._fuse(pool.scores[rest], optimistic, n_words)
            if max(float(reach.max()), reach_out) < kth:  # no unseen candidate can enter the top k (under the heuristic)
                break
            depth = min(depth + p.rerank_k, p.rerank_limit)
            first.certify(pool, state, depth)
        scan = np.concatenate(scan_parts) if scan_parts else np.zeros(0, np.float32)
        return rows, scan, maps

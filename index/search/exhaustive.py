"""The reference the two-stage search approximates: exact MrSw and the re-ranker on every image."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from regionrank.index.alignment import mrsw_align
from regionrank.index.search.fusion import fuse_scores
from regionrank.index.search.hits import make_hits
from regionrank.index.search.params import SearchParams
from regionrank.index.search.rerank import rerank_scores
from regionrank.index.search.types import Fusion, Reranker, SearchHit
from regionrank.storage.records import ImageEmbeddingRecord, QueryEmbedding

__all__ = ["exhaustive_search"]


def exhaustive_search(
    query: QueryEmbedding,
    records: Iterable[ImageEmbeddingRecord],
    reranker: Reranker | None,
    k: int = SearchParams.k,
    *,
    fusion: Fusion = SearchParams.fusion,
    fusion_weight: float = SearchParams.fusion_weight,
    pad_regions_to: int | None = SearchParams.pad_regions_to,
    batch: int = 1024,
) -> list[SearchHit]:
    """Exact MrSw and the re-ranker on *every* image (the defaults are :class:`SearchParams`').

    Args:
        query: the encoded query.
        records: every image (e.g. ``store.iter_records()``), streamed in batches of ``batch``.
        reranker / fusion / fusion_weight / pad_regions_to: as for :class:`index.Searcher`.
        k: results to return.

    Returns:
        The top ``k`` by the fused score, as :class:`SearchHit` (``stage_scores["first"]`` = MrSw).
    """
    words = np.asarray(query.word_embeddings, np.float32)
    best: list[tuple[float, ImageEmbeddingRecord, float, float | None]] = []

    def flush(chunk: list[ImageEmbeddingRecord]) -> None:
        mrsw = mrsw_align(words, [r.region_embeddings for r in chunk], pad_regions_to=pad_regions_to)
        scan = None
        if reranker is not None and fusion != "mrsw":
            scan = rerank_scores(reranker, query, chunk)[0]
        final = fuse_scores(mrsw.scores, scan, words.shape[0], fusion=fusion, weight=fusion_weight)
        for i in np.argsort(-final, kind="stable")[:k]:
            best.append((float(final[i]), chunk[i], float(mrsw.scores[i]), None if scan is None else float(scan[i])))
        best.sort(key=lambda t: -t[0])
        del best[k:]

    chunk: list[ImageEmbeddingRecord] = []
    for rec in records:
        chunk.append(rec)
        if len(chunk) == batch:
            flush(chunk)
            chunk = []
    if chunk:
        flush(chunk)
    top = [t[1] for t in best]
    mrsw = mrsw_align(words, [r.region_embeddings for r in top], pad_regions_to=pad_regions_to)
    final = np.array([t[0] for t in best], dtype=np.float32)
    scan_arr = None if not best or best[0][3] is None else np.array([t[3] for t in best], dtype=np.float32)
    return make_hits(query, top, final, mrsw, mrsw.scores, scan_arr, None, k)

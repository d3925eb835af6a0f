"""The :class:`Searcher` facade: opens an index version once, wires the first stage, the re-ranker and
the hit builder together, and offers text-to-image and image-to-text search."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from regionrank.index._faiss import import_faiss, omp_threads
from regionrank.index.handle import IndexHandle, open_index
from regionrank.index.source import open_embedding_source
from regionrank.index.regions import RegionMatrix
from regionrank.index.search.captions import caption_search
from regionrank.index.search.first_stage import FirstStage, RoundState
from regionrank.index.search.fusion import fuse_scores
from regionrank.index.search.hits import make_hits
from regionrank.index.search.params import SearchParams
from regionrank.index.search.pool import CandidatePool
from regionrank.index.search.rerank import AdaptiveReranking, hit_attention
from regionrank.index.search.types import CaptionHit, QueryEncoder, Reranker, ScoreEstimator, SearchHit, SearchStats
from regionrank.storage.records import ImageEmbeddingRecord, QueryEmbedding

__all__ = ["Searcher"]


class Searcher:
    """Two-stage text-to-image search over a published index, plus image-to-text over captions.

    Stage 1 (:class:`index.search.first_stage.FirstStage`) gathers candidates from the region index
    (per query word, the ``region_k`` nearest regions) and the global index, scores them by exact
    TERAN MrSw and deepens until the re-ranked set is provably the exhaustive MrSw top-``rerank_k``
    with respect to the region index's lists (exactly so for a Flat index). Stage 2
    (:class:`index.search.rerank.AdaptiveReranking`) re-ranks the best ``rerank_k`` with the
    :class:`Reranker` and fuses the scores (:func:`fuse_scores`); with ``max_rerank_k > rerank_k``
    it keeps re-ranking while a next candidate could still enter the top ``k`` (a heuristic stop).
    With ``rerank_k=0`` there is no stage 2: hits are ranked and scored by exact MrSw.

    Args:
        index_dir: a directory made by :func:`index.build_indexes`.
        embeddings: the ``storage.ImageEmbeddingStore`` (or its path) the index was built from.
        query_encoder: a :class:`QueryEncoder`.
        reranker: a :class:`Reranker`, or ``None`` (then ``fusion`` must be ``"mrsw"`` or
            ``rerank_k`` 0). A :class:`ScoreEstimator` re-ranker orders the re-ranking by its estimate
            (``use_estimates``).
        params: the :class:`SearchParams` (default ``SearchParams()``); keyword ``overrides``
            (``rerank_k=30``, ``fusion="scan"``, ...) replace single fields of it.
        caption_index_dir / captions: a caption index (:func:`index.build_caption_indexes`) and its
            ``CaptionEmbeddingStore``, for :meth:`search_captions`.
        version: the index version to open (default: current); ngpu: GPUs to search on.
    """

    def __init__(
        self,
        index_dir: str | Path,
        embeddings: Any,
        query_encoder: QueryEncoder,
        reranker: Reranker | None = None,
        *,
        params: SearchParams | None = None,
        caption_index_dir: str | Path | None = None,
        captions: Any = None,
        version: int | None = None,
        ngpu: int = 0,
        **overrides: Any,
    ) -> None:
        params = dataclasses.replace(params or SearchParams(), **overrides)
        if reranker is None and params.reranks and params.fusion != "mrsw":
            raise ValueError(f"fusion={params.fusion!r} needs a reranker; pass reranker=..., fusion='mrsw' "
                             f"or rerank_k=0 (no re-ranking)")
        self.params = params
        self.handle: IndexHandle = open_index(index_dir, version, ngpu=ngpu)
        if self.handle.manifest.corpus != "images":
            raise ValueError(f"{index_dir} indexes {self.handle.manifest.corpus}, not images; pass an image index")
        self.embeddings = open_embedding_source(embeddings, "images")
        self.query_encoder = query_encoder
        self.reranker = reranker if params.reranks else None
        estimator = (self.reranker if params.use_estimates and params.fusion != "mrsw"
                     and isinstance(self.reranker, ScoreEstimator) else None)
        self.first_stage = FirstStage(self.handle, self.embeddings, params, estimator, ngpu=ngpu)
        self.last_stats = SearchStats()
        self._global_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.caption_handle: IndexHandle | None = None
        self.captions = None
        if caption_index_dir is not None:
            if captions is None:
                raise ValueError("caption_index_dir needs captions= (the CaptionEmbeddingStore it was built from)")
            self.caption_handle = open_index(caption_index_dir, ngpu=ngpu)
            self.captions = open_embedding_source(captions, "captions")

    @property
    def estimator(self) -> ScoreEstimator | None:
        """The re-ranker's estimator face the search uses, or ``None``."""
        return self.first_stage.estimator

    @property
    def regions(self) -> RegionMatrix | None:
        """The region matrix candidates are read from, or ``None`` (then the embedding store)."""
        return self.first_stage.regions

    def candidates(self, query: QueryEmbedding) -> dict[str, float]:
        """Stage 1 of one round at ``region_k`` (no deepening): ``image_id -> first-stage score``."""
        return self.first_stage.candidates(query)

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._global_executor is None:
            self._global_executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="global-search")
            weakref.finalize(self, self._global_executor.shutdown, wait=False)  # no thread outlives its searcher
        return self._global_executor

    def search(self, text: str, k: int | None = None) -> list[SearchHit]:
        """Text-to-image search.

        Args:
            text: the query.
            k: results to return (default ``params.k``).

        Returns:
            Up to ``k`` :class:`SearchHit`, best first; :attr:`last_stats` describes the search.
        """
        return self.search_embedding(self.query_encoder.encode_query(text), k)

    def search_embedding(self, query: QueryEmbedding, k: int | None = None) -> list[SearchHit]:
        """:meth:`search` for an already encoded query."""
        k = self.params.k if k is None else k
        if k <= 0:
            raise ValueError(f"k must be positive; got {k}")
        first = self.first_stage
        state = RoundState(query)
        pool = CandidatePool(query, state.words.shape[0])
        depth = max(self.params.rerank_k, k) if self.reranker is not None else k
        # the global search (one query: one thread in faiss) runs beside the region rounds (faiss and
        # numpy release the GIL); its candidates join the pool after, which can only raise the threshold
        if first.has_regions and state.words.shape[0] and first.uses_global(query):
            # under the caller's faiss thread count: OpenMP settings are per thread, and a service that
            # caps each query's threads (to answer several at once) must not get the default back here
            threads = import_faiss().omp_get_max_threads()
            future = self._executor().submit(_with_faiss_threads, threads, first.global_candidates, query)
            first.certify(pool, state, depth)
            first.score_new(pool, state, *future.result())
        else:
            first.score_new(pool, state, *first.global_candidates(query))
            first.certify(pool, state, depth)
        stats = SearchStats(source="region_matrix" if first.regions is not None else "embeddings")
        self.last_stats = stats
        if not len(pool.ids):
            return []
        top, records, final, scan, weights = self._rank(pool, state, depth, k, stats)
        stats.region_k, stats.candidate_ids = state.region_k, pool.ids.copy()
        stats.outside_bound, stats.certified = float(state.outside), bool(state.certified)
        stats.scored_from = "codes" if first.codec is not None else "vectors"
        stats.code_error_bound, stats.certified_exact = first.exact_bound(pool, state, depth)
        stats.certificate = "none" if not stats.certified else "decoded" if first.codec is not None else "exact"
        return make_hits(query, records, final, pool.alignment(top), pool.first[top], scan, weights, k)

    def _rank(self, pool: CandidatePool, state: RoundState, depth: int, k: int, stats: SearchStats) -> tuple[
            np.ndarray, list[ImageEmbeddingRecord], np.ndarray, np.ndarray | None, list[np.ndarray | None] | None]:
        """``(pool rows of the hits, their records, final scores, re-ranker scores or None, attention maps
        or None)``; rows past the re-ranked ones have NaN re-ranker scores."""
        first, p = self.first_stage, self.params
        n_words = state.words.shape[0]
        if self.reranker is None:  # no re-ranking: exact MrSw decides, whatever the fusion
            # with codes, the best by decoded MrSw (a margin of 4k, at least 64) are re-scored exactly first
            top = np.argsort(-pool.scores, kind="stable")[: k if first.codec is None else max(4 * k, 64)]
            records = first.records(pool.ids[top], state.cache)
            first.refine(pool, top, records)
            best = np.argsort(-pool.mrsw(top), kind="stable")[:k]
            top, records = top[best], [records[i] for i in best]
            final = fuse_scores(pool.mrsw(top), None, n_words, fusion="mrsw", weight=0.0)
            return top, records, final, None, None
        rows, scan, maps = AdaptiveReranking(first, self.reranker).run(pool, state, depth, k)
        stats.reranked = len(rows)
        records = first.records(pool.ids[rows], state.cache)
        final = fuse_scores(pool.mrsw(rows), scan, n_words, fusion=p.fusion, weight=p.fusion_weight)
        weights = maps if maps is not None else hit_attention(self.reranker, state.query, records, final, k)
        if len(rows) >= k:
            return rows, records, final, scan, weights
        # fewer re-ranked than asked for: the rest follow in MrSw order (ALBEF's -100); the pool may have grown
        order = np.argsort(-pool.scores, kind="stable")
        rest = order[~np.isin(order, rows)][: k - len(rows)]
        rest_records = first.records(pool.ids[rest], state.cache)
        first.refine(pool, rest, rest_records)
        records.extend(rest_records)
        final = np.concatenate([final, np.min(final) - 1.0 - np.arange(len(rest), dtype=np.float32)])
        scan = np.concatenate([scan, np.full(len(rest), np.nan, np.float32)])
        weights = None if weights is None else [*weights, *([None] * len(rest))]
        return np.concatenate([rows, rest]), records, final, scan, weights

    def search_captions(self, image_id: str, k: int = 10, *, word_k: int = 64, n_candidates: int = 256) -> list[CaptionHit]:
        """Image-to-text search: captions for a stored image, by MaxSim over caption word vectors then
        exact MrSw (sum over the caption's words of the max over the image's regions).

        Args:
            image_id: an image in the embedding store.
            k: captions to return.
            word_k: nearest caption words retrieved per region.
            n_candidates: captions scored exactly.

        Raises:
            ValueError: the searcher was made without a caption index.
            KeyError: ``image_id`` is not in the embedding store.
        """
        if self.caption_handle is None or self.captions is None:
            raise ValueError("search_captions needs Searcher(..., caption_index_dir=..., captions=...)")
        (image,) = self.embeddings.get([image_id])
        return caption_search(image, self.caption_handle, self.captions, k, word_k=word_k, n_candidates=n_candidates,
                              pad_regions_to=self.params.pad_regions_to)


def _with_faiss_threads(threads: int, fn: Any, *args: Any) -> Any:
    with omp_threads(threads):
        return fn(*args)

"""First stage of the text-to-image search: candidate generation and its completeness proof.

Per query word the region index gives the nearest regions; an image's MaxSim upper bound sums its
words' best retrieved similarities (:func:`index.alignment.maxsim_word_bounds`), and the global index
adds the images nearest the query's global vector. Candidates are scored by exact TERAN MrSw into a
:class:`CandidatePool`. The depth is *certified*: while the bound on every image not retrieved (the
sum of each word's smallest retrieved similarity) exceeds the ``depth``-th exact MrSw, ``region_k``
doubles (up to ``max_region_k``). Within a round, candidates are scored best bound first down to
Fagin's threshold: in MrSw, or, with a :class:`BoundedScoreEstimator`, in fused-estimate space.

With the compressed region layout (``index.spec.choose_region_layout``) candidates are scored from the
region index's own PQ codes, decoded: the index's search scores are exactly the cosines with the decoded
vectors (up to float rounding), so the proof holds for the decoded MrSw; :meth:`FirstStage.exact_bound`
widens it to exact MrSw by the stored reconstruction errors, and the rows read at full precision are
re-scored exactly (:meth:`FirstStage.refine`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from regionrank.index.alignment import maxsim_word_bounds, mrsw_align, mrsw_from_sims, word_region_sims
from regionrank.index.handle import IndexHandle
from regionrank.index.regions import RegionMatrix
from regionrank.index.search.fusion import fuse_scores
from regionrank.index.search.params import SearchParams
from regionrank.index.search.pool import CandidatePool
from regionrank.index.search.types import BoundedScoreEstimator, ScoreEstimator
from regionrank.storage.records import ImageEmbeddingRecord, QueryEmbedding

__all__ = ["FirstStage", "RegionRound", "RoundState"]

_GPU_MAX_K = 2048  # the largest k faiss's GPU indexes select
_ROUNDING = 1e-4  # per query word: float32 rounding between a decoded cosine, the index's score and the exact one


@dataclass
class RegionRound:
    """What one region-index round at one depth offers.

    Attributes:
        ids: int ids of the live candidates, best MaxSim bound first.
        bounds: ``float32[N]`` their MaxSim upper bounds of MrSw.
        word_bounds: ``float32[N, L]`` the per-word parts of those bounds.
        outside: upper bound of the MrSw of every image not among ``ids``.
        outside_est: upper bound of the fused estimate of those images (``+inf`` without a bound).
        retrieved: region results the index returned (a deeper round that retrieves no more is the end).
    """

    ids: np.ndarray
    bounds: np.ndarray
    word_bounds: np.ndarray
    outside: float
    outside_est: float
    retrieved: int


@dataclass
class RoundState:
    """Where the first stage stands for one query (one search; rounds deepen it).

    Attributes:
        query: the encoded query; words: its word vectors as ``float32[L, E]``.
        region_k: depth of the last round (0: no round yet).
        retrieved: region results of the last round (-1: none).
        exhausted: a deeper round retrieved nothing more.
        certified: the pool provably holds the exact top at the depth last asked for.
        outside / outside_est: bounds of the MrSw / fused estimate of every image not scored.
        fetched: ``(scores, items)`` of the one deep search prefix rounds read from.
        last: the last :class:`RegionRound` (scored again, down to a new threshold, when the depth grows).
        cache: records read from the embedding store for this query, by int id.
    """

    query: QueryEmbedding
    region_k: int = 0
    retrieved: int = -1
    exhausted: bool = False
    certified: bool = False
    outside: float = float("inf")
    outside_est: float = float("inf")
    fetched: tuple[np.ndarray, np.ndarray] | None = None
    last: RegionRound | None = None
    cache: dict[int, ImageEmbeddingRecord] = field(default_factory=dict)
    words: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.words = np.asarray(self.query.word_embeddings, np.float32)


class FirstStage:
    """Candidate generation over one opened image index version, scored by exact MrSw.

    Args:
        handle: the opened index version; embeddings: the store it was built from (records are read
            from it when the version has no region matrix or ``use_region_matrix`` is off).
        params: the search's :class:`SearchParams`.
        estimator: the re-ranker's :class:`ScoreEstimator` face, or ``None``.
        ngpu: GPUs the handle searches on (faiss's GPU k-selection stops at 2048).
    """

    def __init__(self, handle: IndexHandle, embeddings: Any, params: SearchParams, estimator: ScoreEstimator | None,
                 *, ngpu: int = 0) -> None:
        self.handle = handle
        self.embeddings = embeddings
        self.params = params
        self.estimator = estimator
        self.bounder = estimator if isinstance(estimator, BoundedScoreEstimator) else None
        regions = handle.regions if params.use_region_matrix else None
        self.regions: RegionMatrix | None = regions.preloaded() if params.preload_regions and regions is not None else regions
        region_index = handle.indexes.get("region")
        # compressed layout: the region index decodes the codes the region matrix holds
        self.codec = region_index if self.regions is not None and self.regions.compressed else None
        # inverted-file and flat searches cost about the same at any depth and return prefixes of a deeper search
        self.prefix_rounds = region_index is not None and region_index.spec.family in ("flat", "ivf")
        self.max_search_k = _GPU_MAX_K if ngpu else None

    @property
    def has_regions(self) -> bool:
        return "region" in self.handle.indexes

    def region_round(self, words: np.ndarray, region_k: int, state: RoundState | None = None) -> RegionRound:
        """One round at depth ``region_k``.

        On an inverted-file or flat region index the top ``region_k`` is a prefix of a deeper result,
        so the first round of a search fetches ``max_region_k`` once (kept in ``state``) and every
        deepening round reads a prefix of it. A graph index (HNSW) searches deeper at a cost that grows
        with ``k``: one search per round. Without ``state`` the round searches at ``region_k`` and
        computes no fused-estimate bound.
        """
        h, p = self.handle, self.params
        if self.max_search_k is not None:
            region_k = min(region_k, self.max_search_k)
        if state is not None and self.prefix_rounds:
            if state.fetched is None:
                state.fetched = h.search_multi(words, min(p.max_region_k, self.max_search_k or p.max_region_k))[:2]
            fetched_scores, fetched_items = state.fetched
            scores, items = fetched_scores[:, :region_k], fetched_items[:, :region_k]
        else:
            scores, items, _ = h.search_multi(words, region_k)
        ids, word_bounds, floor = maxsim_word_bounds(scores, items, clip_at_zero=p.pad_regions_to is not None)
        bounds = word_bounds.sum(axis=1, dtype=np.float32)
        outside = float(floor.sum())
        outside_est = float("inf")
        if state is not None:
            outside_est = float(self.fused_bound(state.query, floor[None], np.array([outside], np.float32))[0])
        n_cand = p.n_candidates
        if n_cand is not None and len(ids) > n_cand:
            outside = max(outside, float(bounds[n_cand]))  # dropped images are bounded by their MaxSim bound
            if state is not None:
                outside_est = max(outside_est, float(self.fused_bound(state.query, word_bounds[n_cand:], bounds[n_cand:]).max()))
            ids, bounds, word_bounds = ids[:n_cand], bounds[:n_cand], word_bounds[:n_cand]
        alive = h.idmap.alive[ids]
        return RegionRound(ids=ids[alive], bounds=bounds[alive], word_bounds=word_bounds[alive], outside=outside,
                           outside_est=outside_est, retrieved=int((items >= 0).sum()))

    def fused_bound(self, query: QueryEmbedding, word_bounds: np.ndarray, mrsw_bounds: np.ndarray) -> np.ndarray:
        """Upper bound of the fused estimate from per-word cosine bounds (``+inf`` without a bound)."""
        est = None if self.bounder is None else self.bounder.estimate_bound(query, word_bounds)
        if est is None:
            return np.full(len(mrsw_bounds), np.inf, np.float32)
        return fuse_scores(mrsw_bounds, np.asarray(est, np.float32), word_bounds.shape[1], fusion=self.params.fusion,
                           weight=self.params.fusion_weight)

    def rerank_key(self, pool: CandidatePool) -> np.ndarray:
        """The order candidates are re-ranked in: the fused estimate when there is one, else MrSw."""
        if self.estimator is None:
            return pool.scores
        return fuse_scores(pool.scores, pool.est, pool.best_sim.shape[1], fusion=self.params.fusion,
                           weight=self.params.fusion_weight)

    def kth_fused_estimate(self, pool: CandidatePool, depth: int) -> float:
        if len(pool.ids) < depth:
            return float("-inf")
        key = self.rerank_key(pool)
        return float(np.partition(key, len(key) - depth)[len(key) - depth])

    def candidates(self, query: QueryEmbedding) -> dict[str, float]:
        """One round at ``region_k`` (no deepening): ``image_id -> first-stage score`` (MaxSim bound, or
        the global cosine if larger)."""
        out: dict[str, float] = {}
        words = np.asarray(query.word_embeddings, dtype=np.float32)
        if self.has_regions and words.shape[0]:
            rnd = self.region_round(words, self.params.region_k)
            out.update({self.handle.idmap.image_id(int(i)): float(b) for i, b in zip(rnd.ids, rnd.bounds, strict=True)})
        for i, s in zip(*self.global_candidates(query), strict=True):
            image_id = self.handle.idmap.image_id(int(i))
            out[image_id] = max(out.get(image_id, -np.inf), float(s))
        return out

    def uses_global(self, query: QueryEmbedding) -> bool:
        return "global" in self.handle.indexes and bool(self.params.global_k) and query.global_embedding is not None

    def global_candidates(self, query: QueryEmbedding) -> tuple[np.ndarray, np.ndarray]:
        """``(int ids, global cosines)`` of the images nearest the query's global vector."""
        if not self.uses_global(query):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        scores_g, ids_g = self.handle.search_global(np.asarray(query.global_embedding, np.float32)[None], self.params.global_k)
        row = np.asarray(ids_g[0], np.int64)
        ids = row[row >= 0]
        return ids, np.asarray(scores_g[0][: len(ids)], np.float32)

    def score_new(self, pool: CandidatePool, state: RoundState, ids: np.ndarray, first: np.ndarray,
                  depth: int | None = None, chunk: int = 256) -> float:
        """Exact MrSw of the ids not yet in ``pool``; raise the first-stage score of the others.

        With ``depth``, ``ids`` come sorted by decreasing MaxSim bound and are scored in chunks until the
        next bound falls below the pool's ``depth``-th exact score (Fagin's threshold: none of the rest
        can enter the top ``depth``); returns that next bound (``-inf`` when every id was scored).
        """
        new, first_new, _ = pool.split_new(ids, first)
        if depth is None:
            self._score(pool, state, new, first_new)
            return float("-inf")
        for c0 in range(0, len(new), chunk):
            if c0 and first_new[c0] < pool.kth_score(depth):
                return float(first_new[c0])
            self._score(pool, state, new[c0 : c0 + chunk], first_new[c0 : c0 + chunk])
        return float("-inf")

    def _score_bounded(self, pool: CandidatePool, state: RoundState, rnd: RegionRound, depth: int,
                       chunk: int = 256) -> tuple[float, float]:
        """:meth:`score_new` with the threshold in fused-estimate space: the round's ids not in the pool
        are scored best fused bound first until the next bound is below the pool's ``depth``-th fused
        estimate. Returns ``(fused bound, MrSw bound)`` of the ids left unscored (``-inf``: none)."""
        new, first_new, is_new = pool.split_new(rnd.ids, rnd.bounds)
        upper = self.fused_bound(pool.query, rnd.word_bounds[is_new], first_new)
        order = np.argsort(-upper, kind="stable")
        new, first_new, upper = new[order], first_new[order], upper[order]
        for c0 in range(0, len(new), chunk):
            if c0 and upper[c0] < self.kth_fused_estimate(pool, depth):
                return float(upper[c0]), float(first_new[c0:].max())
            self._score(pool, state, new[c0 : c0 + chunk], first_new[c0 : c0 + chunk])
        return float("-inf"), float("-inf")

    def _score(self, pool: CandidatePool, state: RoundState, new: np.ndarray, first_new: np.ndarray) -> None:
        if not new.size:
            return
        words = state.words
        if self.codec is not None and self.regions is not None:
            codes, counts = self.regions.gather_codes(new)
            stacked = self.codec.decode_standalone(codes)
        elif self.regions is not None:
            stacked, counts = self.regions.gather(new, float32=True)
        else:
            recs = self.embeddings.get([self.handle.idmap.image_id(int(i)) for i in new])
            state.cache.update(zip(new.tolist(), recs, strict=True))
            counts = np.array([r.num_regions for r in recs], dtype=np.int64)
            stacked = (np.concatenate([np.asarray(r.region_embeddings) for r in recs if r.num_regions])
                       if counts.any() else np.zeros((0, words.shape[1]), np.float32))
        sims = word_region_sims(words, stacked, counts)
        al = mrsw_from_sims(sims, counts, pad_regions_to=self.params.pad_regions_to)
        est = None if self.estimator is None else self.estimator.estimate(pool.query, sims, counts)
        pool.add(new, first_new, al, est)

    def records(self, ids: np.ndarray, cache: dict[int, ImageEmbeddingRecord]) -> list[ImageEmbeddingRecord]:
        """The records of these int ids (from the region matrix, else the store through ``cache``)."""
        if self.regions is not None:
            return self.regions.records(ids)
        missing = [int(i) for i in ids if int(i) not in cache]
        if missing:
            cache.update(zip(missing, self.embeddings.get([self.handle.idmap.image_id(i) for i in missing]), strict=True))
        return [cache[int(i)] for i in ids]

    def refine(self, pool: CandidatePool, rows: np.ndarray, records: list[ImageEmbeddingRecord]) -> None:
        """With codes, record the exact MrSw of these pool rows from their full-precision ``records``."""
        if self.codec is None or not len(rows):
            return
        al = mrsw_align(np.asarray(pool.query.word_embeddings, np.float32), [r.region_embeddings for r in records],
                        pad_regions_to=self.params.pad_regions_to)
        pool.refine(rows, al)

    def error_scale(self, query: QueryEmbedding) -> float:
        """``sum_w |q_w|``: a region reconstruction error of ``eps`` moves MrSw by at most ``eps`` times this."""
        words = np.asarray(query.word_embeddings, np.float64)
        return float(np.linalg.norm(words, axis=1).sum()) if words.size else 0.0

    def exact_bound(self, pool: CandidatePool, state: RoundState, depth: int) -> tuple[float, bool]:
        """``(code error bound, certified on exact MrSw)`` of a finished first stage (see ``SearchStats``).

        Exact MrSw of image i is within ``scale * eps_i + L * 1e-4`` of its decoded MrSw (each word's term
        is a max of cosines, each moved by at most ``|q_w| * eps_i``; the zero fill's clip is 1-Lipschitz).
        So every image outside the pool has exact MrSw at most ``outside + scale * max eps + slack`` and a
        pooled one at least its decoded MrSw less its own bound (its exact MrSw where refined).
        """
        if self.codec is None or self.regions is None:
            return 0.0, bool(self.has_regions and state.outside <= pool.kth_score(depth))
        scale = self.error_scale(pool.query)
        slack = _ROUNDING * state.words.shape[0]
        bound = scale * float(self.regions.code_error.max(initial=0.0)) + slack
        if len(pool.ids) < depth or not self.has_regions:
            return bound, False
        lower = pool.scores - (scale * self.regions.code_error[pool.ids] + slack)
        refined = np.fromiter(pool.exact, np.int64, count=len(pool.exact))
        lower[refined] = pool.mrsw(refined)
        kth = float(np.partition(lower, len(lower) - depth)[len(lower) - depth])
        return bound, bool(state.outside + bound <= kth)

    def certify(self, pool: CandidatePool, state: RoundState, depth: int) -> None:
        """Deepen the region search until the pool provably holds the exact top-``depth`` (in MrSw, or
        in fused estimate with a bounded estimator), or ``max_region_k`` is reached."""
        if not self.has_regions or not state.words.shape[0]:
            return
        while True:
            last = state.last
            if last is not None and self.bounder is not None:  # Fagin's threshold on the fused estimate
                pruned_est, pruned = self._score_bounded(pool, state, last, depth)
                state.outside = max(last.outside, pruned)
                state.outside_est = max(last.outside_est, pruned_est)
            elif last is not None:  # score what the last round offers down to the threshold
                # with estimates but no bound the whole union is scored: low in MrSw may be high under the re-ranker
                prune = None if self.estimator is not None else depth
                state.outside = max(last.outside, self.score_new(pool, state, last.ids, last.bounds, prune))
            if self.bounder is not None:
                state.certified = state.outside_est <= self.kth_fused_estimate(pool, depth)
            else:
                state.certified = state.outside <= pool.kth_score(depth)
            if state.certified or state.region_k >= self.params.max_region_k or state.exhausted:
                return
            region_k = self.params.region_k if state.region_k == 0 else min(2 * state.region_k, self.params.max_region_k)
            rnd = self.region_round(state.words, region_k, state)
            state.exhausted = rnd.retrieved <= state.retrieved  # a deeper search found nothing more
            state.region_k, state.retrieved, state.last = region_k, rnd.retrieved, rnd

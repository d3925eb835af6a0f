"""Two-stage text-to-image search (MaxSim/global candidates -> exact TERAN MrSw -> SCAN re-rank ->
fused score) and image-to-text search over an indexed caption corpus.

``index`` must not import ``encoders``: the text encoder and the re-ranker come in through the
:class:`QueryEncoder` and :class:`Reranker` protocols, which ``encoders`` implements structurally and
``flows`` wires in.
"""

from __future__ import annotations

import concurrent.futures
import logging
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Protocol, Sequence, runtime_checkable

import numpy as np

from regionrank.index.alignment import Alignment, maxsim_word_bounds, mrsw_align, mrsw_from_sims, word_region_sims
from regionrank.index.handle import IndexHandle, open_index
from regionrank.index.spec import IndexSpec
from regionrank.storage.records import CaptionEmbeddingRecord, ImageEmbeddingRecord, QueryEmbedding

__all__ = [
    "CaptionHit",
    "Fusion",
    "QueryEncoder",
    "RerankOutput",
    "Reranker",
    "ScoreEstimator",
    "SearchHit",
    "SearchStats",
    "Searcher",
    "WordExplanation",
    "exhaustive_search",
    "fuse_scores",
    "rerank_scores",
]

logger = logging.getLogger(__name__)

Fusion = Literal["scan", "mrsw", "weighted"]
_GPU_MAX_K = 2048  # the largest k faiss's GPU indexes select


@runtime_checkable
class QueryEncoder(Protocol):
    """Encodes a text query (TERAN text branch): word vectors ``[L, E]`` and an optional global vector."""

    def encode_query(self, text: str) -> QueryEmbedding: ...


@dataclass
class RerankOutput:
    """What a :class:`Reranker` returns for K candidates.

    Attributes:
        scores: ``float[K]`` higher = better (e.g. SCAN t2i LogSumExp scores).
        word_region_weights: per candidate, ``float[L, R_k]`` attention of each query word over the
            candidate's regions (SCAN's alpha), or ``None``; used for explanations and heatmaps.
    """

    scores: np.ndarray
    word_region_weights: list[np.ndarray] | None = None


@runtime_checkable
class Reranker(Protocol):
    """Scores candidates against a query (SCAN stacked cross attention, run by ``encoders``).

    A re-ranker may also offer ``scores(query, candidates) -> float[K]``, the same scores without the
    attention maps; the search then scores with it and asks ``rerank`` only for the hits it returns.
    """

    def rerank(self, query: QueryEmbedding, candidates: Sequence[ImageEmbeddingRecord]) -> RerankOutput: ...


@runtime_checkable
class ScoreEstimator(Protocol):
    """Optional second face of a :class:`Reranker`: a cheap estimate of its scores for many candidates
    from the word-region cosines the first stage computes anyway for exact MrSw.

    ``estimate(query, sims, counts)`` gets ``sims float32[sum(counts), L]`` (candidate after candidate,
    one column per query word) and ``counts int[N]``, and returns ``float[N]``. The search re-ranks
    candidates in the order of the fused estimate instead of MrSw order (``encoders``' SCAN re-ranker
    implements it: SCAN with the attended vectors' norm taken as 1).

    It may also offer ``estimate_bound(query, word_max) -> float[N] | None``: an upper bound of the
    estimate of a candidate whose best cosine with word w is at most ``word_max[n, w]``. With it the
    first stage scores a round's candidates best bound first and stops where no unscored candidate can
    reach the ``depth``-th fused estimate (Fagin's threshold in the fused-estimate space), instead of
    scoring the whole union.
    """

    def estimate(self, query: QueryEmbedding, sims: np.ndarray, counts: np.ndarray) -> np.ndarray: ...


@dataclass
class WordExplanation:
    """Why an image matched one query word.

    Attributes:
        token: the query token.
        region: index of the best region in the image's region list (``-1``: none; zero fill won).
        box: ``(x1, y1, x2, y2)`` of that region in original pixels, or ``None``.
        weight: the re-ranker's attention on that region when available, else the region's MrSw
            similarity clipped to ``[0, 1]``.
        similarity: the cosine between the word and that region (the MrSw term).
    """

    token: str
    region: int
    box: tuple[float, float, float, float] | None
    weight: float
    similarity: float


@dataclass
class SearchHit:
    """One text-to-image result.

    Attributes:
        image_id / uri: the image.
        score: the final (fused) score, used for ranking.
        stage_scores: ``{"first": ..., "mrsw": ..., "scan": ...}``: the first-stage bound (MaxSim upper
            bound, or the global cosine), exact MrSw, and the re-ranker's score (absent when not re-ranked).
        explanation: one :class:`WordExplanation` per query word.
        boxes: ``float32[R, 4]`` the image's region boxes (for heatmaps).
        word_region_weights: ``float32[L, R]`` per-word weights over regions (re-ranker attention, or
            MrSw similarities clipped at 0 when there is no re-ranker), for heatmaps.
        width / height: image size in pixels when known (0 otherwise).
    """

    image_id: str
    uri: str
    score: float
    stage_scores: dict[str, float]
    explanation: list[WordExplanation]
    boxes: np.ndarray
    word_region_weights: np.ndarray
    width: int = 0
    height: int = 0


@dataclass
class CaptionHit:
    """One image-to-text result: the caption, its exact MrSw score and the first-stage bound."""

    caption_id: str
    image_id: str
    text: str
    score: float
    stage_scores: dict[str, float] = field(default_factory=dict)


def fuse_scores(mrsw: np.ndarray, scan: np.ndarray | None, n_words: int, *, fusion: Fusion, weight: float) -> np.ndarray:
    """The final score of re-ranked candidates.

    * ``"scan"``: the re-ranker's score only (ALBEF style: the re-ranker decides).
    * ``"mrsw"``: exact MrSw only (no re-ranker needed).
    * ``"weighted"``: ``weight * scan + (1 - weight) * mrsw / n_words`` (BLIP style sum). MrSw is a sum
      over words; dividing by the word count (TERAN's ``MrAVGw``) puts it on the cosine scale of the
      re-ranker's per-word relevances, as ALGORITHMS.md §7.3 asks before fusing.

    Args:
        mrsw: ``float[K]``; scan: ``float[K]`` or ``None``; n_words: query word count (>= 1).
    """
    if fusion == "mrsw":
        return np.asarray(mrsw, dtype=np.float32)
    if scan is None:
        raise ValueError(f"fusion={fusion!r} needs a reranker; pass one to Searcher or use fusion='mrsw'")
    if fusion == "scan":
        return np.asarray(scan, dtype=np.float32)
    if fusion == "weighted":
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"fusion weight must be in [0, 1]; got {weight}")
        return (weight * np.asarray(scan, np.float64) + (1 - weight) * np.asarray(mrsw, np.float64) / max(n_words, 1)).astype(np.float32)
    raise ValueError(f"unknown fusion {fusion!r}; expected 'scan', 'mrsw' or 'weighted'")


def rerank_scores(
    reranker: Reranker, query: QueryEmbedding, candidates: Sequence[ImageEmbeddingRecord]
) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """The re-ranker's scores of the candidates, and its attention maps when they came for free: its
    ``scores(query, candidates)`` when it has one (no maps: SCAN's cost about as much again as its
    scores), else ``rerank(...)`` (scores and maps)."""
    scores_only = getattr(reranker, "scores", None)
    if callable(scores_only):
        return _check_scores(scores_only(query, candidates), len(candidates)), None
    out = reranker.rerank(query, candidates)
    scores = _check_rerank(out, len(candidates), np.shape(query.word_embeddings)[0], candidates)
    return scores, None if out.word_region_weights is None else list(out.word_region_weights)


def _check_scores(scores: Any, n: int) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float32)
    if scores.shape != (n,):
        raise ValueError(f"reranker returned scores of shape {tuple(scores.shape)} for {n} candidates; expected ({n},)")
    return scores


def _check_rerank(out: RerankOutput, n: int, n_words: int, records: Sequence[ImageEmbeddingRecord]) -> np.ndarray:
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


def _make_hits(
    query: QueryEmbedding, records: Sequence[ImageEmbeddingRecord], final: np.ndarray, mrsw: Any,
    first: np.ndarray, scan: np.ndarray | None, weights: Sequence[np.ndarray | None] | None, k: int,
) -> list[SearchHit]:
    order = np.argsort(-final, kind="stable")[:k]
    hits = []
    for i in order:
        rec = records[i]
        attention = weights[i] if weights is not None else None
        # The explained region of a word is its MrSw match (highest cosine: "cup" -> the cup). SCAN's
        # attention is normalised over the query words first (ALGORITHMS.md quirk 4), so its argmax can
        # sit on a region that is only relatively closer to this word than to the others; it is kept as
        # the weight of that region and as the heatmap.
        best = mrsw.best_region[i]
        if attention is not None:
            wr = np.asarray(attention, dtype=np.float32)
        else:
            sims = np.asarray(rec.region_embeddings, np.float32) @ np.asarray(query.word_embeddings, np.float32).T
            wr = np.clip(sims.T, 0.0, 1.0) if rec.num_regions else np.zeros((len(query.tokens), 0), np.float32)
        expl = []
        for w, token in enumerate(query.tokens):
            r = int(best[w])
            box = tuple(float(v) for v in rec.boxes[r]) if r >= 0 else None
            expl.append(WordExplanation(
                token=token, region=r, box=box,  # type: ignore[arg-type]
                weight=float(wr[w, r]) if r >= 0 else 0.0, similarity=float(mrsw.best_sim[i, w]),
            ))
        stage = {"first": float(first[i]), "mrsw": float(mrsw.scores[i])}
        if scan is not None:
            stage["scan"] = float(scan[i])
        hits.append(SearchHit(
            image_id=rec.image_id, uri=rec.uri, score=float(final[i]), stage_scores=stage, explanation=expl,
            boxes=rec.boxes, word_region_weights=wr, width=rec.width, height=rec.height,
        ))
    return hits


@dataclass
class SearchStats:
    """What one :meth:`Searcher.search` did (benchmarks and diagnostics read it from ``last_stats``).

    Attributes:
        region_k: nearest regions retrieved per query word when the first stage stopped deepening.
        candidate_ids: int ids of every image scored by exact MrSw (the first stage's output).
        outside_bound: upper bound of the MrSw score of every image *not* retrieved (with respect to
            the region index's lists; exact for a Flat index).
        certified: whether ``outside_bound`` is at most the exact MrSw of the ``reranked``-th candidate,
            i.e. the re-ranked set is the exhaustive MrSw top-``reranked`` (ties aside).
        reranked: candidates the re-ranker scored.
        source: ``"region_matrix"`` (the index version's memory-mapped vectors) or ``"embeddings"``.
    """

    region_k: int = 0
    candidate_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    outside_bound: float = float("nan")
    certified: bool = False
    reranked: int = 0
    source: str = ""


class _Pool:
    """Candidates scored by exact MrSw so far (grows while the first stage deepens)."""

    def __init__(self, query: QueryEmbedding, n_words: int) -> None:
        self.query = query
        self.pos: dict[int, int] = {}
        self.ids = np.zeros(0, np.int64)
        self.first = np.zeros(0, np.float32)
        self.scores = np.zeros(0, np.float32)
        self.best_region = np.zeros((0, n_words), np.int64)
        self.best_sim = np.zeros((0, n_words), np.float32)
        self.est = np.zeros(0, np.float32)  # the re-ranker's estimate (NaN without an estimator)

    def add(self, ids: np.ndarray, first: np.ndarray, al: Any, est: np.ndarray | None = None) -> None:
        self.pos.update({int(i): len(self.pos) + j for j, i in enumerate(ids)})
        self.ids = np.concatenate([self.ids, ids])
        self.first = np.concatenate([self.first, first.astype(np.float32)])
        self.scores = np.concatenate([self.scores, al.scores])
        self.best_region = np.concatenate([self.best_region, al.best_region])
        self.best_sim = np.concatenate([self.best_sim, al.best_sim])
        est = np.full(len(ids), np.nan, np.float32) if est is None else np.asarray(est, np.float32)
        if est.shape != (len(ids),):
            raise ValueError(f"the re-ranker's estimate has shape {tuple(est.shape)} for {len(ids)} candidates; expected ({len(ids)},)")
        self.est = np.concatenate([self.est, est])

    def split_new(self, ids: np.ndarray, first: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raise the first-stage score of the ids already pooled; return ``(new ids, their first-stage
        scores, the mask of new ids in ids)``."""
        is_new = np.array([int(i) not in self.pos for i in ids], dtype=bool)
        self.raise_first(ids[~is_new], first[~is_new])
        return ids[is_new], first[is_new], is_new

    def raise_first(self, ids: np.ndarray, first: np.ndarray) -> None:
        rows = np.array([self.pos[int(i)] for i in ids], dtype=np.int64)
        if rows.size:
            np.maximum.at(self.first, rows, first.astype(np.float32))

    def kth_score(self, k: int) -> float:
        """The k-th best exact MrSw in the pool (``-inf`` when it holds fewer than k)."""
        if k <= 0 or len(self.ids) < k:
            return float("-inf")
        return float(np.partition(self.scores, len(self.scores) - k)[len(self.scores) - k])


class Searcher:
    """Two-stage text-to-image search over a published index, plus image-to-text over captions.

    Stage 1 gathers candidates from the region index (per query word, the ``region_k`` nearest
    regions; images ranked by the MaxSim upper bound of :func:`index.alignment.maxsim_candidates`)
    and the global index (the query's global vector), and scores them by exact TERAN MrSw. The depth
    is *certified*: while the bound on every image not retrieved (the sum of each word's smallest
    retrieved similarity) exceeds the exact MrSw of the ``rerank_k``-th candidate, ``region_k``
    doubles (up to ``max_region_k``), so the re-ranked set is the exhaustive MrSw top-``rerank_k``
    with respect to the region index's lists (exactly so for a Flat index). Stage 2 re-ranks the
    MrSw top ``rerank_k`` with the :class:`Reranker` and fuses the scores (:func:`fuse_scores`);
    with ``max_rerank_k > rerank_k`` it keeps re-ranking the next ``rerank_k`` while the next
    candidate, given its MrSw and the highest re-ranker score seen so far, could still enter the
    top ``k`` (a heuristic stop: it assumes no unseen candidate beats the best re-ranker score seen).

    Region vectors come from the index version's memory-mapped region matrix
    (:class:`index.regions.RegionMatrix`) when it has one and ``use_region_matrix`` is on, else
    from ``embeddings``.

    Args:
        index_dir: a directory made by :func:`index.build_indexes`.
        embeddings: the ``storage.ImageEmbeddingStore`` (or its path) the index was built from.
        query_encoder: a :class:`QueryEncoder`.
        reranker: a :class:`Reranker`, or ``None`` (then ``fusion`` must be ``"mrsw"``).
        rerank_k: candidates re-ranked (100-256 is typical; ALBEF/BLIP use 128-256).
        max_rerank_k: adaptive re-ranking depth limit (default ``rerank_k``: no adaptation).
        n_candidates: cap on the images scored exactly per round (default: the whole MaxSim union,
            ColBERT's "score the union"; the dropped images' bound enters the certificate).
        region_k: nearest regions retrieved per query word in the first round.
        max_region_k: the deepest ``region_k`` the certificate may ask for.
        global_k: nearest images retrieved by global vector (0 disables the global index).
        fusion: ``"scan"``, ``"weighted"`` or ``"mrsw"``; fusion_weight: the weight of the re-ranker.
        pad_regions_to: TERAN's zero fill (see :func:`index.alignment.mrsw_align`); 36 follows the
            reference evaluation, ``None`` disables it.
        use_region_matrix: read candidates from the version's region matrix when it has one.
        preload_regions: decode the region matrix into float32 RAM when the searcher opens (4 bytes
            per region and dimension), so the second stage skips the per-query float16 decode; for a
            long-lived search service with the memory to spare.
        use_estimates: when the re-ranker is also a :class:`ScoreEstimator`, estimate its score for
            every candidate from the MrSw cosines and re-rank in the order of the fused estimate (the
            union of each round is then scored whole, without MrSw threshold pruning, since a candidate
            low in MrSw can be high under the re-ranker).
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
        rerank_k: int = 128,
        max_rerank_k: int | None = None,
        n_candidates: int | None = None,
        region_k: int = 256,
        max_region_k: int = 4096,
        global_k: int = 128,
        fusion: Fusion = "scan",
        fusion_weight: float = 0.5,
        pad_regions_to: int | None = 36,
        use_region_matrix: bool = True,
        use_estimates: bool = True,
        preload_regions: bool = False,
        caption_index_dir: str | Path | None = None,
        captions: Any = None,
        version: int | None = None,
        ngpu: int = 0,
    ) -> None:
        from regionrank.index.source import open_embedding_source as _open_source

        if reranker is None and fusion != "mrsw":
            raise ValueError(f"fusion={fusion!r} needs a reranker; pass reranker=... or fusion='mrsw'")
        if rerank_k <= 0 or region_k <= 0 or global_k < 0:
            raise ValueError(f"rerank_k and region_k must be positive, global_k >= 0; got {rerank_k}, {region_k}, {global_k}")
        if max_rerank_k is not None and max_rerank_k < rerank_k:
            raise ValueError(f"max_rerank_k ({max_rerank_k}) must be >= rerank_k ({rerank_k})")
        if max_region_k < region_k:
            raise ValueError(f"max_region_k ({max_region_k}) must be >= region_k ({region_k})")
        if n_candidates is not None and n_candidates <= 0:
            raise ValueError(f"n_candidates must be positive (or None for the whole union); got {n_candidates}")
        if fusion not in ("scan", "mrsw", "weighted"):
            raise ValueError(f"unknown fusion {fusion!r}; expected 'scan', 'mrsw' or 'weighted'")
        self.handle: IndexHandle = open_index(index_dir, version, ngpu=ngpu)
        if self.handle.manifest.corpus != "images":
            raise ValueError(f"{index_dir} indexes {self.handle.manifest.corpus}, not images; pass an image index")
        self.embeddings = _open_source(embeddings, "images")
        self.query_encoder = query_encoder
        self.reranker = reranker
        self.rerank_k = rerank_k
        self.max_rerank_k = max_rerank_k or rerank_k
        self.n_candidates = n_candidates
        self.region_k = region_k
        self.max_region_k = max_region_k
        self.global_k = global_k
        self.fusion: Fusion = fusion
        self.fusion_weight = fusion_weight
        self.pad_regions_to = pad_regions_to
        self.regions = self.handle.regions if use_region_matrix else None
        if preload_regions and self.regions is not None:
            self.regions = self.regions.preloaded()
        region_info = self.handle.manifest.indexes.get("region")
        self._prefix_rounds = region_info is not None and IndexSpec.parse(region_info.spec).family in ("flat", "ivf")
        self._max_search_k = _GPU_MAX_K if ngpu else None  # faiss GPU k-selection stops at 2048
        self.estimator: ScoreEstimator | None = (
            reranker if use_estimates and fusion != "mrsw" and isinstance(reranker, ScoreEstimator) else None
        )
        self._bounded = self.estimator is not None and callable(getattr(self.estimator, "estimate_bound", None))
        self.last_stats = SearchStats()
        self._global_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.caption_handle: IndexHandle | None = None
        self.captions = None
        if caption_index_dir is not None:
            if captions is None:
                raise ValueError("caption_index_dir needs captions= (the CaptionEmbeddingStore it was built from)")
            self.caption_handle = open_index(caption_index_dir, ngpu=ngpu)
            self.captions = _open_source(captions, "captions")

    def _region_round(
        self, words: np.ndarray, region_k: int, state: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray, float, int]:
        """One first-stage round: ``(int ids, MaxSim bounds, outside bound, results retrieved)``.

        On an inverted-file or flat region index a search costs about the same at any depth (it scans
        the same lists), and the top ``region_k`` is a prefix of a deeper result, so the first round
        fetches ``max_region_k`` once (kept in ``state``) and every deepening round reads a prefix of
        it. A graph index (HNSW) searches deeper at a cost that grows with ``k``: one search per round.
        """
        h = self.handle
        if self._max_search_k is not None:
            region_k = min(region_k, self._max_search_k)
        if state is not None and self._prefix_rounds:
            if state.get("fetched") is None:
                state["fetched"] = h.search_multi(words, min(self.max_region_k, self._max_search_k or self.max_region_k))[:2]
            fetched_scores, fetched_items = state["fetched"]
            scores, items = fetched_scores[:, :region_k], fetched_items[:, :region_k]
        else:
            scores, items, _ = h.search_multi(words, region_k)
        ids, word_bounds, floor = maxsim_word_bounds(scores, items, clip_at_zero=self.pad_regions_to is not None)
        bounds = word_bounds.sum(axis=1, dtype=np.float32)
        outside = float(floor.sum())
        if state is not None:
            state["round_outside_est"] = float(self._fused_bound(state["query"], floor[None], np.array([outside], np.float32))[0])
        if self.n_candidates is not None and len(ids) > self.n_candidates:
            outside = max(outside, float(bounds[self.n_candidates]))  # dropped images are bounded by their MaxSim bound
            if state is not None:
                dropped = self._fused_bound(state["query"], word_bounds[self.n_candidates :], bounds[self.n_candidates :])
                state["round_outside_est"] = max(state["round_outside_est"], float(dropped.max()))
            ids, bounds, word_bounds = ids[: self.n_candidates], bounds[: self.n_candidates], word_bounds[: self.n_candidates]
        alive = h.idmap.alive[ids]
        if state is not None:
            state["round_word_bounds"] = word_bounds[alive]
        return ids[alive], bounds[alive], outside, int((items >= 0).sum())

    def _fused_bound(self, query: QueryEmbedding, word_bounds: np.ndarray, mrsw_bounds: np.ndarray) -> np.ndarray:
        """Upper bound of the fused estimate from per-word cosine bounds (``+inf`` without a bound)."""
        est = None
        if self._bounded:
            est = self.estimator.estimate_bound(query, word_bounds)  # type: ignore[union-attr]
        if est is None:
            return np.full(len(mrsw_bounds), np.inf, np.float32)
        return fuse_scores(mrsw_bounds, np.asarray(est, np.float32), word_bounds.shape[1], fusion=self.fusion,
                           weight=self.fusion_weight)

    def _gap_weight(self) -> float:
        """How much a re-ranker score above its estimate moves the fused score (per unit)."""
        return 1.0 if self.fusion == "scan" else self.fusion_weight

    def candidates(self, query: QueryEmbedding) -> dict[str, float]:
        """Stage 1 of one round at ``region_k`` (no deepening): ``image_id -> first-stage score``
        (MaxSim bound, or the global cosine if larger)."""
        out: dict[str, float] = {}
        words = np.asarray(query.word_embeddings, dtype=np.float32)
        if "region" in self.handle.indexes and words.shape[0]:
            ids, bounds, _, _ = self._region_round(words, self.region_k)
            out.update({self.handle.idmap.image_id(int(i)): float(b) for i, b in zip(ids, bounds, strict=True)})
        for i, s in zip(*self._global_candidates(query), strict=True):
            image_id = self.handle.idmap.image_id(int(i))
            out[image_id] = max(out.get(image_id, -np.inf), float(s))
        return out

    def _uses_global(self, query: QueryEmbedding) -> bool:
        return "global" in self.handle.indexes and bool(self.global_k) and query.global_embedding is not None

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._global_executor is None:
            self._global_executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="global-search")
            weakref.finalize(self, self._global_executor.shutdown, wait=False)  # no thread outlives its searcher
        return self._global_executor

    def _global_candidates(self, query: QueryEmbedding) -> tuple[np.ndarray, np.ndarray]:
        h = self.handle
        if not self._uses_global(query):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        scores_g, ids_g = h.search_global(np.asarray(query.global_embedding, np.float32)[None], self.global_k)
        row = np.asarray(ids_g[0], np.int64)
        ids = row[row >= 0]
        return ids, np.asarray(scores_g[0][: len(ids)], np.float32)

    def _score_new(
        self, pool: _Pool, ids: np.ndarray, first: np.ndarray, words: np.ndarray, cache: dict[int, ImageEmbeddingRecord],
        depth: int | None = None, chunk: int = 256,
    ) -> float:
        """Exact MrSw of the ids not yet in ``pool``; raise the first-stage score of the others.

        With ``depth``, ``ids`` come sorted by decreasing MaxSim bound and are scored in chunks until the
        next bound falls below the pool's ``depth``-th exact score (Fagin's threshold: none of the rest
        can enter the top ``depth``); returns that next bound (``-inf`` when every id was scored).
        """
        new, first_new, _ = pool.split_new(ids, first)
        if depth is None:
            self._score(pool, new, first_new, words, cache)
            return float("-inf")
        for c0 in range(0, len(new), chunk):
            if c0 and first_new[c0] < pool.kth_score(depth):
                return float(first_new[c0])
            self._score(pool, new[c0 : c0 + chunk], first_new[c0 : c0 + chunk], words, cache)
        return float("-inf")

    def _score_bounded(
        self, pool: _Pool, ids: np.ndarray, first: np.ndarray, word_bounds: np.ndarray, words: np.ndarray,
        cache: dict[int, ImageEmbeddingRecord], depth: int, chunk: int = 256,
    ) -> tuple[float, float]:
        """:meth:`_score_new` with the threshold in fused-estimate space: the ids not in the pool are
        scored best fused bound first until the next bound is below the pool's ``depth``-th fused
        estimate. Returns ``(fused bound, MrSw bound)`` of the ids left unscored (``-inf``: none)."""
        new, first_new, is_new = pool.split_new(ids, first)
        upper = self._fused_bound(pool.query, word_bounds[is_new], first_new)
        order = np.argsort(-upper, kind="stable")
        new, first_new, upper = new[order], first_new[order], upper[order]
        for c0 in range(0, len(new), chunk):
            if c0 and upper[c0] < self._kth_fused_estimate(pool, depth):
                return float(upper[c0]), float(first_new[c0:].max())
            self._score(pool, new[c0 : c0 + chunk], first_new[c0 : c0 + chunk], words, cache)
        return float("-inf"), float("-inf")

    def _kth_fused_estimate(self, pool: _Pool, depth: int) -> float:
        if len(pool.ids) < depth:
            return float("-inf")
        key = self._rerank_key(pool, pool.best_sim.shape[1])
        return float(np.partition(key, len(key) - depth)[len(key) - depth])

    def _score(self, pool: _Pool, new: np.ndarray, first_new: np.ndarray, words: np.ndarray, cache: dict[int, ImageEmbeddingRecord]) -> None:
        if not new.size:
            return
        if self.regions is not None:
            stacked, counts = self.regions.gather(new, float32=True)
        else:
            recs = self.embeddings.get([self.handle.idmap.image_id(int(i)) for i in new])
            cache.update(zip(new.tolist(), recs, strict=True))
            counts = np.array([r.num_regions for r in recs], dtype=np.int64)
            stacked = (np.concatenate([np.asarray(r.region_embeddings) for r in recs if r.num_regions])
                       if counts.any() else np.zeros((0, words.shape[1]), np.float32))
        sims = word_region_sims(words, stacked, counts)
        al = mrsw_from_sims(sims, counts, pad_regions_to=self.pad_regions_to)
        est = None if self.estimator is None else self.estimator.estimate(pool.query, sims, counts)
        pool.add(new, first_new, al, est)

    def _records(self, ids: np.ndarray, cache: dict[int, ImageEmbeddingRecord]) -> list[ImageEmbeddingRecord]:
        if self.regions is not None:
            return self.regions.records(ids)
        missing = [int(i) for i in ids if int(i) not in cache]
        if missing:
            cache.update(zip(missing, self.embeddings.get([self.handle.idmap.image_id(i) for i in missing]), strict=True))
        return [cache[int(i)] for i in ids]

    def _certify(self, pool: _Pool, words: np.ndarray, depth: int, state: dict[str, Any], cache: dict[int, ImageEmbeddingRecord]) -> None:
        """Deepen the region search until the pool provably holds the exact MrSw top-``depth``."""
        if "region" not in self.handle.indexes or not words.shape[0]:
            return
        while True:
            if state.get("round_ids") is not None and self._bounded:  # Fagin's threshold on the fused estimate
                pruned_est, pruned = self._score_bounded(pool, state["round_ids"], state["round_bounds"],
                                                         state["round_word_bounds"], words, cache, depth)
                state["outside"] = max(state["round_outside"], pruned)
                state["outside_est"] = max(state["round_outside_est"], pruned_est)
            elif state.get("round_ids") is not None:  # score what the last round offers down to the threshold
                # with estimates but no bound the whole union is scored: low in MrSw may be high under the re-ranker
                prune = None if self.estimator is not None else depth
                pruned = self._score_new(pool, state["round_ids"], state["round_bounds"], words, cache, prune)
                state["outside"] = max(state["round_outside"], pruned)
            if (state["outside_est"] <= self._kth_fused_estimate(pool, depth)) if self._bounded else (
                    state["outside"] <= pool.kth_score(depth)):
                state["certified"] = True
                return
            state["certified"] = False
            if state["region_k"] >= self.max_region_k or state["exhausted"]:
                return
            region_k = self.region_k if state["region_k"] == 0 else min(2 * state["region_k"], self.max_region_k)
            ids, bounds, outside, retrieved = self._region_round(words, region_k, state)
            state["exhausted"] = retrieved <= state["retrieved"]  # a deeper search found nothing more
            state.update(region_k=region_k, round_outside=outside, round_ids=ids, round_bounds=bounds, retrieved=retrieved)

    def search(self, text: str, k: int = 10) -> list[SearchHit]:
        """Text-to-image search.

        Args:
            text: the query.
            k: results to return.

        Returns:
            Up to ``k`` :class:`SearchHit`, best first; :attr:`last_stats` describes the search.
        """
        return self.search_embedding(self.query_encoder.encode_query(text), k)

    def search_embedding(self, query: QueryEmbedding, k: int = 10) -> list[SearchHit]:
        """:meth:`search` for an already encoded query."""
        if k <= 0:
            raise ValueError(f"k must be positive; got {k}")
        words = np.asarray(query.word_embeddings, np.float32)
        pool, cache = _Pool(query, words.shape[0]), {}
        state: dict[str, Any] = {"region_k": 0, "outside": float("inf"), "outside_est": float("inf"), "retrieved": -1,
                                 "exhausted": False, "certified": False, "query": query}
        depth = max(self.rerank_k, k) if self.reranker is not None else k
        # the global search (one query: one thread in faiss) runs beside the region rounds (faiss and
        # numpy release the GIL); its candidates join the pool after, which can only raise the threshold
        if "region" in self.handle.indexes and words.shape[0] and self._uses_global(query):
            future = self._executor().submit(self._global_candidates, query)
            self._certify(pool, words, depth, state, cache)
            g_ids, g_scores = future.result()
            self._score_new(pool, g_ids, g_scores, words, cache)
        else:
            g_ids, g_scores = self._global_candidates(query)
            self._score_new(pool, g_ids, g_scores, words, cache)
            self._certify(pool, words, depth, state, cache)
        stats = SearchStats(source="region_matrix" if self.regions is not None else "embeddings")
        self.last_stats = stats
        if not len(pool.ids):
            return []
        order = np.argsort(-pool.scores, kind="stable")
        n_words = words.shape[0]
        if self.reranker is None:
            top = order[:k]
            final = fuse_scores(pool.scores[top], None, n_words, fusion="mrsw", weight=0.0)
            scan, weights, records = None, None, self._records(pool.ids[top], cache)
        else:
            rows, scan_top, maps = self._rerank_pool(query, pool, words, depth, k, state, cache)
            done = len(rows)
            records = self._records(pool.ids[rows], cache)
            final = fuse_scores(pool.scores[rows], scan_top, n_words, fusion=self.fusion, weight=self.fusion_weight)
            weights = maps if maps is not None else self._hit_weights(query, records, final, k)
            scan, top = scan_top, rows
            if done < k:  # fewer re-ranked than asked for: the rest follow in MrSw order (ALBEF's -100)
                order = np.argsort(-pool.scores, kind="stable")
                rest = order[~np.isin(order, rows)][: k - done]
                records.extend(self._records(pool.ids[rest], cache))
                final = np.concatenate([final, np.min(final) - 1.0 - np.arange(len(rest), dtype=np.float32)])
                scan = np.concatenate([scan_top, np.full(len(rest), np.nan, np.float32)])
                weights = None if weights is None else [*weights, *([None] * len(rest))]
                top = np.concatenate([top, rest])
            stats.reranked = done
        stats.region_k, stats.candidate_ids = state["region_k"], pool.ids.copy()
        stats.outside_bound, stats.certified = float(state["outside"]), bool(state["certified"])
        al = Alignment(scores=pool.scores[top], best_region=pool.best_region[top], best_sim=pool.best_sim[top])
        hits = _make_hits(query, records, final, al, pool.first[top], scan, weights, k)
        for h in hits:
            if "scan" in h.stage_scores and np.isnan(h.stage_scores["scan"]):
                del h.stage_scores["scan"]
        return hits

    def _rerank_key(self, pool: _Pool, n_words: int) -> np.ndarray:
        """The order candidates are re-ranked in: the fused estimate when there is one, else MrSw."""
        if self.estimator is None:
            return pool.scores
        return fuse_scores(pool.scores, pool.est, n_words, fusion=self.fusion, weight=self.fusion_weight)

    def _rerank_pool(
        self, query: QueryEmbedding, pool: _Pool, words: np.ndarray, depth: int, k: int, state: dict[str, Any],
        cache: dict[int, ImageEmbeddingRecord],
    ) -> tuple[np.ndarray, np.ndarray, list[Any] | None]:
        """Re-rank the pool ``rerank_k`` at a time (best :meth:`_rerank_key` first) while an unseen
        candidate could still enter the top ``k``.

        An unseen candidate's re-ranker score is taken to be at most its estimate plus the largest
        amount by which a seen score exceeded its estimate (with an estimator), or at most the best
        score seen (without): a heuristic stop, since no bound on the re-ranker is known.

        Returns ``(pool rows re-ranked, their re-ranker scores, their attention maps or None)``.
        """
        assert self.reranker is not None
        n_words = words.shape[0]
        rows = np.zeros(0, np.int64)
        scan_parts: list[np.ndarray] = []
        maps: list[Any] | None = []
        while True:
            key = self._rerank_key(pool, n_words)
            seen = np.zeros(len(pool.ids), dtype=bool)
            seen[rows] = True
            remaining = np.flatnonzero(~seen)
            chunk = remaining[np.argsort(-key[remaining], kind="stable")][: max(depth - len(rows), 0)]
            if chunk.size:
                recs = self._records(pool.ids[chunk], cache)
                scores, chunk_maps = rerank_scores(self.reranker, query, recs)
                scan_parts.append(scores)
                maps = None if maps is None or chunk_maps is None else [*maps, *chunk_maps]
                rows = np.concatenate([rows, chunk])
            seen[chunk] = True
            rest = np.flatnonzero(~seen)
            if depth >= self.max_rerank_k or not rest.size:
                break
            scan_done = np.concatenate(scan_parts)
            fused = fuse_scores(pool.scores[rows], scan_done, n_words, fusion=self.fusion, weight=self.fusion_weight)
            kth = np.sort(fused)[-k] if len(rows) >= k else -np.inf
            reach_out = float("-inf")
            if self.estimator is not None:
                gap = max(0.0, float(np.max(scan_done - pool.est[rows])))
                optimistic = pool.est[rest] + gap
                if self._bounded:  # candidates never scored: their fused-estimate bound plus the gap, or their
                    # MrSw bound with the best score seen (MrSw order's rule), whichever is lower
                    by_mrsw = fuse_scores(np.array([state["outside"]], np.float32), scan_done.max(keepdims=True), n_words,
                                          fusion=self.fusion, weight=self.fusion_weight)[0]
                    reach_out = min(state["outside_est"] + self._gap_weight() * gap, float(by_mrsw))
            else:
                optimistic = np.full(rest.size, scan_done.max(), np.float32)
            reach = fuse_scores(pool.scores[rest], optimistic, n_words, fusion=self.fusion, weight=self.fusion_weight)
            if max(float(reach.max()), reach_out) < kth:  # no unseen candidate can enter the top k (under the heuristic)
                break
            depth = min(depth + self.rerank_k, self.max_rerank_k)
            self._certify(pool, words, depth, state, cache)  # the pool may grow; rows keep their positions
        scan = np.concatenate(scan_parts) if scan_parts else np.zeros(0, np.float32)
        return rows, scan, maps

    def _hit_weights(
        self, query: QueryEmbedding, records: list[ImageEmbeddingRecord], final: np.ndarray, k: int
    ) -> list[np.ndarray | None] | None:
        """The re-ranker's attention maps of the ``k`` hits only (``None`` for the other re-ranked
        candidates, which are never shown), or ``None`` when it gives none."""
        assert self.reranker is not None
        best = np.argsort(-final, kind="stable")[:k]
        hits = [records[i] for i in best]
        out = self.reranker.rerank(query, hits)
        _check_rerank(out, len(hits), np.shape(query.word_embeddings)[0], hits)
        if out.word_region_weights is None:
            return None
        weights: list[np.ndarray | None] = [None] * len(records)
        for i, w in zip(best.tolist(), out.word_region_weights, strict=True):
            weights[i] = w
        return weights

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
                              pad_regions_to=self.pad_regions_to)


def caption_search(
    image: ImageEmbeddingRecord, handle: IndexHandle, captions: Any, k: int, *, word_k: int = 64,
    n_candidates: int = 256, pad_regions_to: int | None = 36,
) -> list[CaptionHit]:
    """Image-to-text search of one image over a caption index (see :meth:`Searcher.search_captions`)."""
    regions = np.asarray(image.region_embeddings, np.float32)
    cand: dict[int, float] = {}
    if "word" in handle.indexes and regions.shape[0]:
        scores, items, slots = handle.search_multi(regions, word_k)
        # per (caption, word slot): the best region similarity; a caption's bound sums its retrieved words
        best: dict[tuple[int, int], float] = {}
        for s, c, w in zip(scores.ravel(), items.ravel(), slots.ravel(), strict=True):
            if c >= 0 and handle.idmap.alive[c]:
                key = (int(c), int(w))
                best[key] = max(best.get(key, -np.inf), float(s))
        for (c, _), s in best.items():
            cand[c] = cand.get(c, 0.0) + s
    if "global" in handle.indexes and image.global_embedding is not None:
        scores_g, ids_g = handle.search_global(np.asarray(image.global_embedding, np.float32)[None], n_candidates)
        for s, c in zip(scores_g[0], ids_g[0], strict=True):
            if c >= 0:
                cand[int(c)] = max(cand.get(int(c), -np.inf), float(s))
    if not cand:
        return []
    top = sorted(cand, key=lambda c: -cand[c])[:n_candidates]
    records: list[CaptionEmbeddingRecord] = captions.get([handle.idmap.image_id(c) for c in top])
    exact = np.array([
        mrsw_align(np.asarray(r.word_embeddings, np.float32), [regions], pad_regions_to=pad_regions_to).scores[0]
        for r in records
    ], dtype=np.float32)
    order = np.argsort(-exact, kind="stable")[:k]
    return [
        CaptionHit(caption_id=records[i].caption_id, image_id=records[i].image_id, text=records[i].text,
                   score=float(exact[i]), stage_scores={"first": cand[top[i]], "mrsw": float(exact[i])})
        for i in order
    ]


def exhaustive_search(
    query: QueryEmbedding,
    records: Iterable[ImageEmbeddingRecord],
    reranker: Reranker | None,
    k: int = 10,
    *,
    fusion: Fusion = "scan",
    fusion_weight: float = 0.5,
    pad_regions_to: int | None = 36,
    batch: int = 1024,
) -> list[SearchHit]:
    """The reference the two-stage search approximates: exact MrSw and the re-ranker on *every* image.

    Args:
        query: the encoded query.
        records: every image (e.g. ``store.iter_records()``), streamed in batches of ``batch``.
        reranker / fusion / fusion_weight / pad_regions_to: as for :class:`Searcher`.
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
    return _make_hits(query, top, final, mrsw, mrsw.scores, scan_arr, None, k)

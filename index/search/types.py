"""What the two-stage search exchanges with the rest of the project: the protocols ``encoders``
implements structurally (query encoder, re-ranker and its optional faces) and the hit and statistics
types the search returns.

``index`` must not import ``encoders``: the text encoder and the re-ranker come in through these
protocols, and ``flows`` wires the real objects in. An optional capability is a protocol of its own
(:class:`ScoringReranker`, :class:`ScoreEstimator`, :class:`BoundedScoreEstimator`), detected with
``isinstance`` (all are ``runtime_checkable``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from regionrank.index.search.params import Fusion  # defined beside SearchParams, which imports no numpy
from regionrank.storage.records import ImageEmbeddingRecord, QueryEmbedding

__all__ = [
    "BoundedScoreEstimator",
    "CaptionHit",
    "Fusion",
    "QueryEncoder",
    "RerankOutput",
    "Reranker",
    "ScoreEstimator",
    "ScoringReranker",
    "SearchHit",
    "SearchStats",
    "WordExplanation",
]


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
    """Scores candidates against a query (SCAN stacked cross attention, run by ``encoders``)."""

    def rerank(self, query: QueryEmbedding, candidates: Sequence[ImageEmbeddingRecord]) -> RerankOutput: ...


@runtime_checkable
class ScoringReranker(Reranker, Protocol):
    """A :class:`Reranker` that also gives its scores without the attention maps (SCAN's maps cost
    about as much again as its scores): the search scores with ``scores`` and asks ``rerank`` only
    for the hits it returns."""

    def scores(self, query: QueryEmbedding, candidates: Sequence[ImageEmbeddingRecord]) -> np.ndarray: ...


@runtime_checkable
class ScoreEstimator(Protocol):
    """Optional second face of a :class:`Reranker`: a cheap estimate of its scores for many candidates
    from the word-region cosines the first stage computes anyway for exact MrSw.

    ``estimate(query, sims, counts)`` gets ``sims float32[sum(counts), L]`` (candidate after candidate,
    one column per query word) and ``counts int[N]``, and returns ``float[N]``. The search re-ranks
    candidates in the order of the fused estimate instead of MrSw order (``encoders``' SCAN re-ranker
    implements it: SCAN with the attended vectors' norm taken as 1).
    """

    def estimate(self, query: QueryEmbedding, sims: np.ndarray, counts: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class BoundedScoreEstimator(ScoreEstimator, Protocol):
    """A :class:`ScoreEstimator` that also bounds its estimate.

    ``estimate_bound(query, word_max) -> float[N] | None``: an upper bound of the estimate of a
    candidate whose best cosine with word w is at most ``word_max[n, w]`` (``None``: no bound for this
    query). With it the first stage scores a round's candidates best bound first and stops where no
    unscored candidate can reach the ``depth``-th fused estimate (Fagin's threshold in the
    fused-estimate space), instead of scoring the whole union.
    """

    def estimate_bound(self, query: QueryEmbedding, word_max: np.ndarray) -> np.ndarray | None: ...


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
            bound, or the global cosine), exact MrSw, and the re-ranker's score. ``"scan"`` is absent
            when the hit was not re-ranked (``rerank_k=0``, no re-ranker, or a hit past the re-ranked
            ones); a search without re-ranking ranks by exact MrSw, so ``score == stage_scores["mrsw"]``
            whatever the fusion.
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
        scored_from: what the first stage's MrSw (and the estimates) were computed from: ``"vectors"``
            (float16/float32 region vectors: ``certified`` is about exact MrSw) or ``"codes"`` (the
            compressed layout's decoded PQ codes: ``certified`` is then about the *decoded* MrSw only,
            an approximation of the exact order; the re-ranked candidates and hits are re-scored exactly).
        code_error_bound: with codes, the largest amount by which any image's exact MrSw can differ from
            its decoded MrSw for this query (``sum_w |q_w| * max_i eps_i``, ``eps_i`` the image's largest
            region reconstruction error, plus float rounding); ``0.0`` with vectors.
        certified_exact: whether the pool provably holds the exhaustive *exact* MrSw top-``depth``: with
            vectors, ``certified`` of an MrSw certificate; with codes, the decoded proof widened by the
            error bound (outside bound + ``code_error_bound`` at most the ``depth``-th exact-score lower
            bound in the pool), which the loose bound rarely allows unless the search went deep; like
            ``certified``, with respect to the lists the region index probes (``depth`` = ``max(rerank_k, k)``
            with a re-ranker, ``k`` without).
        certificate: the statement in words: ``"exact"`` (certified on exact MrSw or fused estimates from
            exact vectors), ``"decoded"`` (certified on decoded codes only: approximate), ``"none"``.
    """

    region_k: int = 0
    candidate_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    outside_bound: float = float("nan")
    certified: bool = False
    reranked: int = 0
    source: str = ""
    scored_from: str = "vectors"
    code_error_bound: float = 0.0
    certified_exact: bool = False
    certificate: str = "none"

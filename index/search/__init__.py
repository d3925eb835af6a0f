"""Two-stage text-to-image search (MaxSim/global candidates -> exact TERAN MrSw -> injected re-ranker
-> fused score) and image-to-text search, split by role as ColBERT splits search:

* ``types``: the protocols ``encoders`` implements (query encoder, re-ranker and its optional faces)
  and the hit and statistics types;
* ``params``: :class:`SearchParams`, the tuning knobs with their one set of defaults and checks;
* ``first_stage`` (with ``pool``): candidate generation, exact MrSw and the completeness proof;
* ``fusion`` and ``rerank``: the fused score, the re-ranker calls and the adaptive re-rank loop;
* ``hits``: scored candidates -> :class:`SearchHit` with per-word explanations;
* ``searcher``: the :class:`Searcher` facade; ``captions``: image-to-text search;
  ``exhaustive``: the exhaustive reference.
"""

from regionrank.index.search.captions import caption_search
from regionrank.index.search.exhaustive import exhaustive_search
from regionrank.index.search.fusion import fuse_scores
from regionrank.index.search.params import SearchParams
from regionrank.index.search.rerank import rerank_scores
from regionrank.index.search.searcher import Searcher
from regionrank.index.search.types import (
    BoundedScoreEstimator,
    CaptionHit,
    Fusion,
    QueryEncoder,
    RerankOutput,
    Reranker,
    ScoreEstimator,
    ScoringReranker,
    SearchHit,
    SearchStats,
    WordExplanation,
)

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
    "SearchParams",
    "SearchStats",
    "Searcher",
    "WordExplanation",
    "caption_search",
    "exhaustive_search",
    "fuse_scores",
    "rerank_scores",
]

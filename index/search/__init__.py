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

from __future__ import annotations

from regionrank.storage.lazy import lazy_exports

# name -> (module, attribute): each loads on first access, so importing one submodule (say
# ``search.params`` for the CLI's defaults) does not load faiss and every other module
_LAZY: dict[str, tuple[str, str]] = {
    "BoundedScoreEstimator": ("regionrank.index.search.types", "BoundedScoreEstimator"),
    "caption_search": ("regionrank.index.search.captions", "caption_search"),
    "CaptionHit": ("regionrank.index.search.types", "CaptionHit"),
    "exhaustive_search": ("regionrank.index.search.exhaustive", "exhaustive_search"),
    "fuse_scores": ("regionrank.index.search.fusion", "fuse_scores"),
    "Fusion": ("regionrank.index.search.types", "Fusion"),
    "QueryEncoder": ("regionrank.index.search.types", "QueryEncoder"),
    "rerank_scores": ("regionrank.index.search.rerank", "rerank_scores"),
    "Reranker": ("regionrank.index.search.types", "Reranker"),
    "RerankOutput": ("regionrank.index.search.types", "RerankOutput"),
    "ScoreEstimator": ("regionrank.index.search.types", "ScoreEstimator"),
    "ScoringReranker": ("regionrank.index.search.types", "ScoringReranker"),
    "Searcher": ("regionrank.index.search.searcher", "Searcher"),
    "SearchHit": ("regionrank.index.search.types", "SearchHit"),
    "SearchParams": ("regionrank.index.search.params", "SearchParams"),
    "SearchStats": ("regionrank.index.search.types", "SearchStats"),
    "WordExplanation": ("regionrank.index.search.types", "WordExplanation"),
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

"""The search protocols: structural, and each optional re-ranker face detected by isinstance."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from index_testdata import BagOfWordsEncoder, EstimatingScanReranker, NumpyScanReranker, Scene

from regionrank.index.search import BoundedScoreEstimator, QueryEncoder, Reranker, ScoreEstimator, ScoringReranker
from regionrank.storage.records import ImageEmbeddingRecord, QueryEmbedding


def test_protocols_are_structural(scene: Scene) -> None:
    assert isinstance(BagOfWordsEncoder(scene.prototypes), QueryEncoder)
    assert isinstance(NumpyScanReranker(), Reranker)


class MapsFreeReranker(NumpyScanReranker):
    def scores(self, query: QueryEmbedding, candidates: Sequence[ImageEmbeddingRecord]) -> np.ndarray:
        return self.rerank(query, candidates).scores


class UnboundedEstimator:
    def estimate(self, query: QueryEmbedding, sims: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return np.zeros(len(counts), np.float32)


def test_optional_re_ranker_faces_are_declared_protocols() -> None:
    plain, lean, estimating = NumpyScanReranker(), MapsFreeReranker(), EstimatingScanReranker()
    assert isinstance(lean, ScoringReranker) and not isinstance(plain, ScoringReranker)
    assert not isinstance(estimating, ScoringReranker)
    assert isinstance(estimating, ScoreEstimator) and isinstance(estimating, BoundedScoreEstimator)
    assert not isinstance(plain, ScoreEstimator)
    assert isinstance(UnboundedEstimator(), ScoreEstimator) and not isinstance(UnboundedEstimator(), BoundedScoreEstimator)
    assert not isinstance(UnboundedEstimator(), Reranker)

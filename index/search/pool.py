"""The candidate pool of one query: every image scored by exact MrSw so far, with its first-stage
score, its best region per word and the re-ranker's estimate (it grows while the first stage deepens)."""

from __future__ import annotations

import numpy as np

from regionrank.index.alignment import Alignment
from regionrank.storage.records import QueryEmbedding

__all__ = ["CandidatePool"]


class CandidatePool:
    """Candidates scored by exact MrSw so far, in the order they were scored (rows keep their place)."""

    def __init__(self, query: QueryEmbedding, n_words: int) -> None:
        self.query = query
        self.pos: dict[int, int] = {}
        self.ids = np.zeros(0, np.int64)
        self.first = np.zeros(0, np.float32)
        self.scores = np.zeros(0, np.float32)
        self.best_region = np.zeros((0, n_words), np.int64)
        self.best_sim = np.zeros((0, n_words), np.float32)
        self.est = np.zeros(0, np.float32)  # the re-ranker's estimate (NaN without an estimator)

    def add(self, ids: np.ndarray, first: np.ndarray, al: Alignment, est: np.ndarray | None = None) -> None:
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

    def alignment(self, rows: np.ndarray) -> Alignment:
        """The pooled MrSw alignment of these rows."""
        return Alignment(scores=self.scores[rows], best_region=self.best_region[rows], best_sim=self.best_sim[rows])

"""The candidate pool of one query: every image scored by MrSw so far, with its first-stage score, its
best region per word and the re-ranker's estimate (it grows while the first stage deepens).

With the compressed region layout the pool's MrSw comes from decoded codes; the rows later read at full
precision (the re-ranked candidates and the hits) get their exact alignment as an overlay
(:meth:`CandidatePool.refine`), so the first stage's proof keeps comparing decoded scores with decoded
bounds while the final scores are exact."""

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
        self.exact: dict[int, tuple[float, np.ndarray, np.ndarray]] = {}  # row -> exact (score, best region, best sim)

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

    def refine(self, rows: np.ndarray, al: Alignment) -> None:
        """Record the exact (full-precision) alignment of these rows, over their decoded one."""
        for j, row in enumerate(np.asarray(rows, np.int64).tolist()):
            self.exact[row] = (float(al.scores[j]), al.best_region[j], al.best_sim[j])

    def mrsw(self, rows: np.ndarray) -> np.ndarray:
        """``float32[len(rows)]`` MrSw of these rows: exact where refined, else as pooled."""
        out = self.scores[rows].astype(np.float32)
        if self.exact:
            for j, row in enumerate(np.asarray(rows, np.int64).tolist()):
                if row in self.exact:
                    out[j] = self.exact[row][0]
        return out

    def alignment(self, rows: np.ndarray) -> Alignment:
        """The MrSw alignment of these rows (exact where refined)."""
        al = Alignment(scores=self.mrsw(rows), best_region=self.best_region[rows].copy(), best_sim=self.best_sim[rows].copy())
        for j, row in enumerate(np.asarray(rows, np.int64).tolist()):
            if row in self.exact:
                al.best_region[j], al.best_sim[j] = self.exact[row][1], self.exact[row][2]
        return al

"""Exact ground truth, recall@k, search-parameter tuning to a target recall, and recall probes that
stay exact under incremental adds and removals (used to detect recall drift).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from index.ann import AnnIndex

__all__ = ["RecallProbe", "TuneResult", "exact_knn", "recall_at_k", "tune_search_param"]


def exact_knn(xb: np.ndarray, ids: np.ndarray, xq: np.ndarray, k: int, *, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product k-NN by brute force, streaming ``xb`` in chunks.

    Args:
        xb: ``float[N, D]`` database vectors (float16 is cast per chunk).
        ids: ``int64[N]`` the id of each row of ``xb``.
        xq: ``float32[Q, D]`` queries.
        k: neighbours per query (``k > N`` pads with ``-inf`` / ``-1``).

    Returns:
        ``(scores float32[Q, k], ids int64[Q, k])`` sorted by decreasing score.
    """
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    q = xq.shape[0]
    best_s = np.full((q, k), -np.inf, dtype=np.float32)
    best_i = np.full((q, k), -1, dtype=np.int64)
    ids = np.asarray(ids, dtype=np.int64)
    for start in range(0, xb.shape[0], chunk):
        block = np.asarray(xb[start : start + chunk], dtype=np.float32)
        s = xq @ block.T  # [Q, chunk]
        best_s, best_i = _merge_topk(best_s, best_i, s, np.broadcast_to(ids[start : start + chunk], s.shape), k)
    return best_s, best_i


def _merge_topk(s1: np.ndarray, i1: np.ndarray, s2: np.ndarray, i2: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = np.concatenate([s1, s2], axis=1)
    i = np.concatenate([i1, i2], axis=1)
    kk = min(k, s.shape[1])
    part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
    ps = np.take_along_axis(s, part, axis=1)
    order = np.argsort(-ps, axis=1, kind="stable")
    out_s = np.take_along_axis(ps, order, axis=1)
    out_i = np.take_along_axis(np.take_along_axis(i, part, axis=1), order, axis=1)
    if kk < k:
        out_s = np.pad(out_s, ((0, 0), (0, k - kk)), constant_values=-np.inf)
        out_i = np.pad(out_i, ((0, 0), (0, k - kk)), constant_values=-1)
    return out_s.astype(np.float32), out_i.astype(np.int64)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of ``|found[:k] ∩ truth[:k]| / k`` (ids ``-1`` never count).

    Args:
        found: ``int64[Q, >=k]`` ids returned by the approximate index.
        truth: ``int64[Q, >=k]`` exact ids.
    """
    if found.shape[0] != truth.shape[0]:
        raise ValueError(f"found and truth disagree on the query count: {found.shape[0]} vs {truth.shape[0]}")
    if found.shape[0] == 0:
        return float("nan")
    hits = 0
    for f, t in zip(found[:, :k], truth[:, :k], strict=True):
        hits += len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist()))
    return hits / (k * found.shape[0])


def drop_self(ids: np.ndarray, scores: np.ndarray, self_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out: remove each query's own id from its row and keep the first ``k`` (``-1`` padded)."""
    out_i = np.full((ids.shape[0], k), -1, dtype=np.int64)
    out_s = np.full((ids.shape[0], k), -np.inf, dtype=np.float32)
    for r in range(ids.shape[0]):
        keep = (ids[r] != self_ids[r]) & (ids[r] >= 0)
        row_i, row_s = ids[r][keep][:k], scores[r][keep][:k]
        out_i[r, : len(row_i)] = row_i
        out_s[r, : len(row_s)] = row_s
    return out_i, out_s


@dataclass
class TuneResult:
    """Outcome of :func:`tune_search_param`: the chosen value, its recall, and what was tried."""

    param: str | None
    value: int | None
    recall: float
    target_met: bool
    tried: dict[int, float]


def tune_search_param(
    ann: AnnIndex, xq: np.ndarray, self_ids: np.ndarray, true_ids: np.ndarray, *, k: int, target_recall: float
) -> TuneResult:
    """Pick the smallest ``nprobe`` / ``efSearch`` whose recall@k on ``xq`` reaches ``target_recall``.

    Recall is monotone in the parameter, so this is a binary search over
    :meth:`IndexSpec.search_param_grid`. When even the largest value misses the target, that value is
    kept and ``target_met`` is False (the manifest records it; callers log it).

    Args:
        ann: the built index (its search parameter is left set to the chosen value).
        xq: ``float32[Q, D]`` held-out queries.
        self_ids: ``int64[Q]`` the id each query has in the index (leave-one-out), or ``-1``.
        true_ids: ``int64[Q, k]`` exact neighbours without the query itself.
        k: recall depth.
        target_recall: in ``(0, 1]``.
    """
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1]; got {target_recall}")
    param = ann.spec.search_param
    if param is None:
        return TuneResult(param=None, value=None, recall=1.0, target_met=True, tried={})
    grid = ann.spec.search_param_grid()
    tried: dict[int, float] = {}

    def measure(value: int) -> float:
        if value not in tried:
            ann.set_search_param(value)
            scores, ids = ann.search(xq, k + 1)
            found, _ = drop_self(ids, scores, self_ids, k)
            tried[value] = recall_at_k(found, true_ids, k)
        return tried[value]

    lo, hi = 0, len(grid) - 1
    if measure(grid[hi]) < target_recall:
        chosen = grid[hi]
    else:
        while lo < hi:
            mid = (lo + hi) // 2
            if measure(grid[mid]) >= target_recall:
                hi = mid
            else:
                lo = mid + 1
        chosen = grid[lo]
    ann.set_search_param(chosen)
    return TuneResult(param=param, value=chosen, recall=measure(chosen), target_met=tried[chosen] >= target_recall, tried=tried)


@dataclass
class RecallProbe:
    """Held-out queries with exact neighbours kept deep enough to stay exact under adds and removals.

    ``gt_ids[q]`` holds the exact top-``depth`` neighbours (self excluded) of query ``q`` among the
    indexed vectors. Adding vectors merges their exact scores in; removing vectors drops them. Any
    vector not listed scores at most the last listed score, so the first ``k`` remaining entries stay
    the exact top-k as long as a row keeps at least ``k`` (rows that fall below are retired).

    Attributes:
        queries: ``float32[P, D]``; self_ids: ``int64[P]``; gt_ids: ``int64[P, depth]`` (-1 = empty);
        gt_scores: ``float32[P, depth]``; k: recall depth.
    """

    queries: np.ndarray
    self_ids: np.ndarray
    gt_ids: np.ndarray
    gt_scores: np.ndarray
    k: int

    @classmethod
    def create(cls, xb: np.ndarray, ids: np.ndarray, query_rows: np.ndarray, *, k: int, depth: int | None = None) -> RecallProbe:
        """Build a probe from database rows ``query_rows`` of ``xb`` (leave-one-out queries)."""
        depth = depth or 3 * k
        queries = np.asarray(xb[query_rows], dtype=np.float32)
        self_ids = np.asarray(ids, dtype=np.int64)[query_rows]
        scores, found = exact_knn(xb, ids, queries, depth + 1)
        gt_ids, gt_scores = drop_self(found, scores, self_ids, depth)
        return cls(queries=queries, self_ids=self_ids, gt_ids=gt_ids, gt_scores=gt_scores, k=k)

    @classmethod
    def from_queries(cls, xb: np.ndarray, ids: np.ndarray, queries: np.ndarray, *, k: int, depth: int | None = None) -> RecallProbe:
        """Build a probe from external queries (e.g. caption word vectors for a region index: the
        cross-modal queries the index will really serve, ALGORITHMS.md §8)."""
        depth = depth or 3 * k
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != xb.shape[1] or queries.shape[0] == 0:
            raise ValueError(f"tuning queries must have shape (Q > 0, {xb.shape[1]}); got {tuple(queries.shape)}")
        scores, found = exact_knn(xb, ids, queries, depth)
        return cls(queries=queries, self_ids=np.full(len(queries), -1, np.int64), gt_ids=found, gt_scores=scores, k=k)

    @property
    def n_valid(self) -> int:
        return int(((self.gt_ids >= 0).sum(axis=1) >= self.k).sum())

    def add(self, x: np.ndarray, ids: np.ndarray) -> None:
        """Merge newly indexed vectors ``x`` (``float[n, D]``) with ids ``ids`` into the ground truth."""
        if len(ids) == 0:
            return
        depth = self.gt_ids.shape[1]
        scores = self.queries @ np.asarray(x, dtype=np.float32).T
        self.gt_scores, self.gt_ids = _merge_topk(
            self.gt_scores, self.gt_ids, scores, np.broadcast_to(np.asarray(ids, dtype=np.int64), scores.shape), depth
        )

    def remove(self, ids: np.ndarray) -> None:
        """Drop removed ids from the ground truth (rows keep their order, holes move to the end)."""
        gone = np.isin(self.gt_ids, np.asarray(ids, dtype=np.int64))
        if not gone.any():
            return
        scores = np.where(gone, -np.inf, self.gt_scores).astype(np.float32)
        ids_ = np.where(gone, -1, self.gt_ids)
        order = np.argsort(-scores, axis=1, kind="stable")
        self.gt_scores = np.take_along_axis(scores, order, axis=1)
        self.gt_ids = np.take_along_axis(ids_, order, axis=1)

    def measure(self, ann: AnnIndex) -> float:
        """Recall@k of ``ann`` (with its current search parameter) on the rows still valid; NaN if none."""
        valid = (self.gt_ids >= 0).sum(axis=1) >= self.k
        if not valid.any():
            return float("nan")
        scores, found = ann.search(self.queries[valid], self.k + 1)
        found, _ = drop_self(found, scores, self.self_ids[valid], self.k)
        return recall_at_k(found, self.gt_ids[valid], self.k)

    def save(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, queries=self.queries, self_ids=self.self_ids, gt_ids=self.gt_ids, gt_scores=self.gt_scores, k=self.k)

    @classmethod
    def load(cls, path: Path) -> RecallProbe:
        with np.load(path) as z:
            return cls(
                queries=z["queries"], self_ids=z["self_ids"], gt_ids=z["gt_ids"], gt_scores=z["gt_scores"], k=int(z["k"])
            )


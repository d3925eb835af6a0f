"""Exact ground truth, recall@k, search-parameter tuning to a target recall, and recall probes that
stay exact under incremental adds and removals (used to detect recall drift).

Tuning picks the cheapest setting whose recall on held-out queries *certifiably* reaches the target
(a 95 % lower confidence bound, not the point estimate), with more queries the closer the target is
to 1; for IVF,Flat the recall of every ``nprobe`` is computed from list membership before one search
confirms the choice. A probe keeps the index's results, so that after an add or a removal an IVF
index's recall is re-measured from the change alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from regionrank.index.ann import AnnIndex

__all__ = [
    "DecodedRows",
    "RecallProbe",
    "TuneResult",
    "count_hits",
    "exact_knn",
    "ivf_flat_predicted_hits",
    "recall_at_k",
    "recall_lower_bound",
    "tune_queries_needed",
    "tune_search_param",
]

CONFIDENCE_Z = 1.645  # one-sided 95 %
CERTIFY_MISSES = 12  # see tune_queries_needed
MAX_TUNE_QUERIES = 4000


def exact_knn(xb: np.ndarray, ids: np.ndarray, xq: np.ndarray, k: int, *, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product k-NN by brute force, streaming ``xb`` in chunks.

    Each chunk goes through faiss's exhaustive ``knn`` (a BLAS product and a heap per query: ~4x faster
    than ``argpartition`` over the score matrix, which dominated), then the chunks' top-k are merged.

    Args:
        xb: ``float[N, D]`` database vectors (float16 is cast per chunk).
        ids: ``int64[N]`` the id of each row of ``xb``.
        xq: ``float32[Q, D]`` queries.
        k: neighbours per query (``k > N`` pads with ``-inf`` / ``-1``).

    Returns:
        ``(scores float32[Q, k], ids int64[Q, k])`` sorted by decreasing score.
    """
    from regionrank.index._faiss import import_faiss

    faiss = import_faiss()
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    q = xq.shape[0]
    best_s = np.full((q, k), -np.inf, dtype=np.float32)
    best_i = np.full((q, k), -1, dtype=np.int64)
    ids = np.asarray(ids, dtype=np.int64)
    for start in range(0, xb.shape[0], chunk):
        block = np.ascontiguousarray(xb[start : start + chunk], dtype=np.float32)
        s, local = faiss.knn(xq, block, min(k, block.shape[0]), metric=faiss.METRIC_INNER_PRODUCT)
        found = local >= 0
        s = np.where(found, s, -np.inf).astype(np.float32)
        i = np.where(found, ids[start : start + chunk][np.where(found, local, 0)], -1)
        best_s, best_i = _merge_topk(best_s, best_i, s, i, k)
    return best_s, best_i


class DecodedRows:
    """The rows of ``xb`` as ``codec`` stores them: encoded and decoded again, a chunk at a time when
    sliced (never the whole decoded matrix at once), for ground truth over a compressed index's codes.

    Args:
        codec: an :class:`~regionrank.index.ann.AnnIndex` with standalone codes (IVF-PQ).
        xb: ``float[N, D]`` the original vectors.
    """

    def __init__(self, codec: AnnIndex, xb: np.ndarray) -> None:
        self.codec, self.xb = codec, xb

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.xb.shape)  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(self.xb.shape[0])

    def __getitem__(self, rows: Any) -> np.ndarray:
        x = np.asarray(self.xb[rows], dtype=np.float32)
        single = x.ndim == 1
        out = self.codec.decode_standalone(self.codec.encode_standalone(np.atleast_2d(x)))
        return out[0] if single else out


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
    return count_hits(found, truth, k) / (k * found.shape[0])


def count_hits(found: np.ndarray, truth: np.ndarray, k: int) -> int:
    """``sum over queries of |found[:k] ∩ truth[:k]|`` (ids ``-1`` never count)."""
    hits = 0
    for f, t in zip(found[:, :k], truth[:, :k], strict=True):
        hits += len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist()))
    return hits


def recall_lower_bound(hits: int, slots: int, *, z: float = CONFIDENCE_Z) -> float:
    """One-sided lower confidence bound on recall from ``hits`` of ``slots`` neighbours (Wilson score).

    Each of the ``Q * k`` true neighbours of the tuning queries is one trial. The bound treats them as
    independent; neighbours of one query are correlated, so it is somewhat optimistic, but it turns
    "the sample reached the target" into "the sample leaves little doubt the target is reached", which
    the point estimate cannot say when the target is within a handful of misses of 1.
    """
    if slots <= 0:
        return float("nan")
    p = hits / slots
    z2 = z * z
    centre = p + z2 / (2 * slots)
    margin = z * math.sqrt(p * (1 - p) / slots + z2 / (4 * slots * slots))
    return max(0.0, (centre - margin) / (1 + z2 / slots))


def tune_queries_needed(target_recall: float, k: int, minimum: int, maximum: int = MAX_TUNE_QUERIES) -> int:
    """Tuning queries enough to certify ``target_recall`` (see :func:`recall_lower_bound`).

    A setting with half the allowed miss rate expects ``CERTIFY_MISSES / 2`` misses among
    ``CERTIFY_MISSES / (1 - target)`` neighbours, and then its lower bound clears the target. A target
    of 1 can only be certified by an exhaustive search, so it gets ``minimum``.
    """
    if target_recall >= 1.0:
        return minimum
    needed = math.ceil(round(CERTIFY_MISSES / (k * (1.0 - target_recall)), 6))  # round: 12 / 0.005 is 2400.0000001
    return int(max(minimum, min(maximum, needed)))


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
    """Outcome of :func:`tune_search_param`.

    Attributes:
        param / value: the tuned parameter and its chosen value (``None`` for exact indexes).
        recall: recall@k measured on the probe at ``value``.
        recall_lower: its one-sided 95 % lower bound (:func:`recall_lower_bound`; 1 for exact search).
        certified: whether ``recall_lower >= target`` (the value is the smallest that certifies it).
        target_met: whether ``recall >= target``.
        tried: recall measured (searched) per probed value.
        predicted: recall per grid value computed without searching (IVF,Flat; :func:`ivf_flat_predicted_hits`).
    """

    param: str | None
    value: int | None
    recall: float
    target_met: bool
    tried: dict[int, float]
    recall_lower: float = 1.0
    certified: bool = True
    predicted: dict[int, float] = field(default_factory=dict)


def tune_search_param(ann: AnnIndex, probe: RecallProbe, *, target_recall: float) -> TuneResult:
    """Pick the smallest ``nprobe`` / ``efSearch`` whose recall@k on the probe *certifiably* reaches the target.

    "Certifiably" means the 95 % lower bound of the measured recall (:func:`recall_lower_bound`) clears
    ``target_recall``; an exhaustive setting (IVF,Flat probing every list) is exact and always does.
    A value whose point estimate just touches a high target (0 misses in 5,000 neighbours "is" 1.0)
    does not generalise to other queries; the bound needs a margin the sample can vouch for (pair it
    with :func:`tune_queries_needed`). When nothing certifies, the smallest value whose point estimate
    reaches the target is taken, else the largest value (``target_met`` False; callers log it).

    Recall is monotone in the parameter, and search cost grows with it, so values are searched from
    the cheap end: every other grid value (a doubling) until one qualifies, then the one in between.
    For IVF,Flat with a flat quantiser the recall of every value is first computed without searching
    (:func:`ivf_flat_predicted_hits`), and searching starts at the predicted choice, stepping up only
    if the real search falls short (score ties). The probe is left holding the results at the chosen
    value (for exact updates, :meth:`RecallProbe.refresh`).

    Args:
        ann: the built index (its search parameter is left set to the chosen value).
        probe: held-out queries with exact neighbours (:class:`RecallProbe`).
        target_recall: in ``(0, 1]``.
    """
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1]; got {target_recall}")
    param = ann.spec.search_param
    if param is None:
        probe.found = probe.found_scores = probe.found_value = None
        return TuneResult(param=None, value=None, recall=1.0, target_met=True, tried={})
    grid = ann.spec.search_param_grid()
    tried: dict[int, float] = {}
    lower: dict[int, float] = {}
    results: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def bound(value: int, hits: int, slots: int) -> float:
        return 1.0 if ann.spec.is_exact_at(value) else recall_lower_bound(hits, slots)

    def measure(i: int) -> tuple[float, float]:
        value = grid[i]
        if value not in tried:
            ann.set_search_param(value)
            results[value] = probe.search(ann)
            hits, slots = probe.hits(results[value][1], results[value][0])
            tried[value] = hits / slots if slots else float("nan")
            lower[value] = bound(value, hits, slots)
        return tried[value], lower[value]

    counts = ivf_flat_predicted_hits(ann, probe, grid)
    predicted = {v: (h / n if n else float("nan"), bound(v, h, n)) for v, (h, n) in (counts or {}).items()}

    def smallest(ok: Any) -> int | None:
        if predicted:  # search from the predicted choice upwards
            start = next((i for i, v in enumerate(grid) if ok(*predicted[v])), None)
            return None if start is None else next((i for i in range(start, len(grid)) if ok(*measure(i))), None)
        i, failed = 0, -1
        while not ok(*measure(i)):
            if i == len(grid) - 1:
                return None
            failed, i = i, min(i + 2, len(grid) - 1)
        if i - 1 > failed and ok(*measure(i - 1)):
            i -= 1
        return i

    chosen = smallest(lambda recall, low: low >= target_recall)
    certified = chosen is not None
    if chosen is None:
        chosen = smallest(lambda recall, low: recall >= target_recall)
    i = len(grid) - 1 if chosen is None else chosen
    measure(i)
    value = grid[i]
    ann.set_search_param(value)
    probe.found_scores, probe.found = results[value]
    probe.found_value = value
    return TuneResult(param=param, value=value, recall=tried[value], target_met=tried[value] >= target_recall,
                      tried=tried, recall_lower=lower[value], certified=certified,
                      predicted={v: r for v, (r, _) in predicted.items()})


def ivf_flat_predicted_hits(ann: AnnIndex, probe: RecallProbe, values: list[int]) -> dict[int, tuple[int, int]] | None:
    """``value -> (hits, slots)`` of an IVF,Flat index at each ``nprobe`` in ``values``, without searching.

    With exact scores, the search at ``nprobe`` returns every true neighbour whose list is among the
    ``nprobe`` lists nearest the query (they outscore everything else it scans), and no other. So the
    hits are counted from each true neighbour's list and each query's ranking of the lists: one
    quantiser search instead of one scan per value. ``None`` for other indexes (PQ/SQ scores are
    approximate, an HNSW quantiser ranks lists approximately). Up to score ties, this equals
    :meth:`RecallProbe.hits` of a real search.
    """
    from regionrank.index._faiss import import_faiss

    spec = ann.spec
    if spec.family != "ivf" or spec.encoding != "flat" or spec.hnsw_m or spec.opq_m:
        return None
    faiss = import_faiss()
    ivf = faiss.extract_index_ivf(ann.faiss_index)
    lists = ivf.invlists
    sizes = np.array([lists.list_size(j) for j in range(ivf.nlist)], dtype=np.int64)
    stored = np.concatenate([faiss.rev_swig_ptr(lists.get_ids(j), int(sizes[j])).copy() if sizes[j] else
                             np.zeros(0, np.int64) for j in range(ivf.nlist)])
    owner = np.repeat(np.arange(ivf.nlist), sizes)
    order = np.argsort(stored, kind="stable")
    stored, owner = stored[order], owner[order]
    valid = probe._valid()
    truth = probe.gt_ids[valid, : probe.k]
    at = np.clip(np.searchsorted(stored, truth), 0, max(len(stored) - 1, 0))
    known = (stored[at] == truth) if len(stored) else np.zeros(truth.shape, bool)
    _, ranking = ivf.quantizer.search(np.ascontiguousarray(probe.queries[valid]), ivf.nlist)
    rank = np.empty_like(ranking)
    np.put_along_axis(rank, ranking, np.arange(ivf.nlist)[None, :], axis=1)
    truth_rank = np.where(known, np.take_along_axis(rank, owner[at], axis=1), ivf.nlist)
    slots = probe.k * int(valid.sum())
    return {v: (int((truth_rank < v).sum()), slots) for v in values}


@dataclass
class RecallProbe:
    """Held-out queries with exact neighbours kept deep enough to stay exact under adds and removals.

    ``gt_ids[q]`` holds the exact top-``depth`` neighbours (self excluded) of query ``q`` among the
    indexed vectors. Adding vectors merges their exact scores in; removing vectors drops them. Any
    vector not listed scores at most the last listed score, so the first ``k`` remaining entries stay
    the exact top-k as long as a row keeps at least ``k`` (rows that fall below are retired).

    The probe also keeps what the index returned for each query (``found``, top-``k + 1`` before the
    query itself is dropped), so that after an add or a removal :meth:`refresh` re-measures recall
    exactly without searching every query again (IVF; see :meth:`refresh`).

    Attributes:
        queries: ``float32[P, D]``; self_ids: ``int64[P]``; gt_ids: ``int64[P, depth]`` (-1 = empty);
        gt_scores: ``float32[P, depth]``; k: recall depth; found / found_scores: ``[P, k + 1]`` the
        index's last results (``None`` until measured), at search value ``found_value``.
    """

    queries: np.ndarray
    self_ids: np.ndarray
    gt_ids: np.ndarray
    gt_scores: np.ndarray
    k: int
    found: np.ndarray | None = None
    found_scores: np.ndarray | None = None
    found_value: int | None = None
    truth: str = "exact"

    @classmethod
    def create(cls, xb: np.ndarray, ids: np.ndarray, query_rows: np.ndarray, *, k: int, depth: int | None = None,
               truth_xb: Any = None, truth: str = "exact") -> RecallProbe:
        """Build a probe from database rows ``query_rows`` of ``xb`` (leave-one-out queries).

        ``truth_xb`` (same rows as ``xb``, e.g. a :class:`DecodedRows` view) is what the ground truth is
        searched in, when it is not ``xb`` itself; ``truth`` names it (``"codes"``)."""
        depth = depth or 3 * k
        queries = np.asarray(xb[query_rows], dtype=np.float32)
        self_ids = np.asarray(ids, dtype=np.int64)[query_rows]
        scores, found = exact_knn(xb if truth_xb is None else truth_xb, ids, queries, depth + 1)
        gt_ids, gt_scores = drop_self(found, scores, self_ids, depth)
        return cls(queries=queries, self_ids=self_ids, gt_ids=gt_ids, gt_scores=gt_scores, k=k, truth=truth)

    @classmethod
    def from_queries(cls, xb: np.ndarray, ids: np.ndarray, queries: np.ndarray, *, k: int, depth: int | None = None,
                     truth: str = "exact") -> RecallProbe:
        """Build a probe from external queries (e.g. caption word vectors for a region index: the
        cross-modal queries the index will really serve, ALGORITHMS.md §8)."""
        depth = depth or 3 * k
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != xb.shape[1] or queries.shape[0] == 0:
            raise ValueError(f"tuning queries must have shape (Q > 0, {xb.shape[1]}); got {tuple(queries.shape)}")
        scores, found = exact_knn(xb, ids, queries, depth)
        return cls(queries=queries, self_ids=np.full(len(queries), -1, np.int64), gt_ids=found, gt_scores=scores, k=k,
                   truth=truth)

    @property
    def n_valid(self) -> int:
        return int(self._valid().sum())

    def _valid(self) -> np.ndarray:
        return (self.gt_ids >= 0).sum(axis=1) >= self.k

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

    def search(self, ann: AnnIndex, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``ann``'s top-``k + 1`` ``(scores, ids)`` for every probe query (or ``rows`` of them)."""
        return ann.search(self.queries if rows is None else self.queries[rows], self.k + 1)

    def hits(self, found: np.ndarray, scores: np.ndarray) -> tuple[int, int]:
        """``(true neighbours found, true neighbours)`` over the valid rows, for ``[P, k + 1]`` results."""
        valid = self._valid()
        got, got_scores = drop_self(found[valid], scores[valid], self.self_ids[valid], self.k)
        slots = self.k * int(valid.sum())
        if self.truth != "codes":
            return count_hits(got, self.gt_ids[valid], self.k), slots
        # over codes the index's scores are the truth's scores (up to float sums), and coarse codes tie
        # exactly: a result scoring at least the k-th true score is a true neighbour whatever its id
        kth = self.gt_scores[valid][:, self.k - 1 : self.k]
        tol = 1e-5 * np.maximum(1.0, np.abs(kth))
        by_id = (got[:, : self.k, None] == self.gt_ids[valid][:, None, : self.k]).any(axis=2)
        ok = (got[:, : self.k] >= 0) & (by_id | (got_scores[:, : self.k] >= kth - tol))
        return int(ok.sum()), slots

    def _recall(self) -> float:
        assert self.found is not None and self.found_scores is not None
        hits, slots = self.hits(self.found, self.found_scores)
        return hits / slots if slots else float("nan")

    def measure(self, ann: AnnIndex) -> float:
        """Recall@k of ``ann`` (with its current search parameter) on the rows still valid; NaN if none.
        Keeps the results for :meth:`refresh`."""
        self.found_scores, self.found = self.search(ann)
        self.found_value = ann.search_value
        return self._recall()

    def refresh(
        self, ann: AnnIndex, *, added: np.ndarray | None = None, removed: np.ndarray | None = None,
        added_vectors: np.ndarray | None = None,
    ) -> float:
        """Recall@k after ``added`` ids were added to (or ``removed`` ids removed from) ``ann``, exactly
        what :meth:`measure` would return, at the cost of the change rather than of every query.

        For IVF (:attr:`AnnIndex.deterministic_update`) a query's new results are its kept results
        merged with its best among the added vectors (:meth:`AnnIndex.search_among`; pass their
        ``added_vectors`` to index them apart instead of scanning the whole index), and only queries
        that lost a kept result to a removal are searched again. Other indexes, or a probe without kept
        results, are measured in full. Call after :meth:`add` / :meth:`remove` updated the ground truth.
        """
        kept = self.found is not None and self.found_scores is not None and self.found_value == ann.search_value
        if not kept or not ann.deterministic_update:
            return self.measure(ann)
        assert self.found is not None and self.found_scores is not None
        if added is not None and len(added):
            s, i = ann.search_among(self.queries, self.k + 1, np.asarray(added, dtype=np.int64), added_vectors)
            self.found_scores, self.found = _merge_topk(self.found_scores, self.found, s, i, self.k + 1)
        if removed is not None and len(removed):
            stale = np.flatnonzero(np.isin(self.found, np.asarray(removed, dtype=np.int64)).any(axis=1))
            if len(stale):
                s, i = self.search(ann, stale)
                self.found_scores[stale], self.found[stale] = s, i
        return self._recall()

    def save(self, path: Path) -> None:
        extra = {} if self.found is None else {"found": self.found, "found_scores": self.found_scores,
                                               "found_value": -1 if self.found_value is None else self.found_value}
        with open(path, "wb") as f:
            np.savez(f, queries=self.queries, self_ids=self.self_ids, gt_ids=self.gt_ids, gt_scores=self.gt_scores,
                     k=self.k, truth=np.array(self.truth), **extra)

    @classmethod
    def load(cls, path: Path) -> RecallProbe:
        with np.load(path) as z:
            return cls(
                queries=z["queries"], self_ids=z["self_ids"], gt_ids=z["gt_ids"], gt_scores=z["gt_scores"], k=int(z["k"]),
                found=z["found"] if "found" in z else None, found_scores=z["found_scores"] if "found_scores" in z else None,
                found_value=int(z["found_value"]) if "found_value" in z and int(z["found_value"]) >= 0 else None,
                truth=str(z["truth"]) if "truth" in z else "exact",
            )

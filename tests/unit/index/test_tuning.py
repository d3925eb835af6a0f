"""Exact k-NN, recall@k, tuning to a target recall, and recall probes under adds and removals."""

from __future__ import annotations

import numpy as np
import pytest

from regionrank.index.ann import AnnIndex
from regionrank.index.spec import IndexSpec
from regionrank.index.tuning import (
    RecallProbe,
    drop_self,
    exact_knn,
    ivf_flat_predicted_hits,
    recall_at_k,
    recall_lower_bound,
    tune_queries_needed,
    tune_search_param,
)


def clustered(rng: np.random.Generator, n: int, d: int = 16, centers: int = 30, noise: float = 0.3) -> np.ndarray:
    c = rng.standard_normal((centers, d))
    x = c[rng.integers(0, centers, n)] + noise * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(xb: np.ndarray, ids: np.ndarray, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: score every pair in a loop, sort each row."""
    out_s, out_i = [], []
    for q in xq:
        s = np.array([float(np.dot(q, v)) for v in xb])
        order = np.argsort(-s, kind="stable")[:k]
        out_s.append(s[order])
        out_i.append(ids[order])
    return np.array(out_s, np.float32), np.array(out_i)


def test_exact_knn_matches_brute_force_across_chunks() -> None:
    rng = np.random.default_rng(0)
    xb, xq = clustered(rng, 500), clustered(rng, 7)
    ids = rng.permutation(10_000)[:500].astype(np.int64)
    s, i = exact_knn(xb, ids, xq, 10, chunk=64)
    ref_s, ref_i = brute_force(xb, ids, xq, 10)
    np.testing.assert_allclose(s, ref_s, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(i, ref_i)


def test_exact_knn_pads_when_k_exceeds_n() -> None:
    rng = np.random.default_rng(1)
    s, i = exact_knn(clustered(rng, 3), np.arange(3), clustered(rng, 2), 5)
    assert (i[:, 3:] == -1).all() and np.isneginf(s[:, 3:]).all() and (i[:, :3] >= 0).all()


def test_recall_at_k_equals_a_set_reference() -> None:
    found = np.array([[1, 2, 3], [4, 5, -1], [7, 8, 9]])
    truth = np.array([[3, 2, 1], [4, 6, 7], [1, 2, 3]])
    ref = np.mean([len(set(f[f >= 0]) & set(t)) / 3 for f, t in zip(found, truth)])
    assert recall_at_k(found, truth, 3) == pytest.approx(ref)
    assert recall_at_k(found, truth, 3) == pytest.approx((3 + 1 + 0) / 9)


def test_drop_self_removes_the_query_and_keeps_order() -> None:
    ids = np.array([[5, 1, 2, 3], [9, 8, 7, 6]])
    scores = np.array([[1.0, 0.9, 0.8, 0.7], [1.0, 0.5, 0.4, 0.3]], np.float32)
    out_i, out_s = drop_self(ids, scores, np.array([5, 7]), 3)
    np.testing.assert_array_equal(out_i, [[1, 2, 3], [9, 8, 6]])
    np.testing.assert_allclose(out_s, [[0.9, 0.8, 0.7], [1.0, 0.5, 0.3]])


@pytest.mark.parametrize("key", ["IVF64,Flat", "HNSW16"])
@pytest.mark.parametrize("target", [0.8, 0.97])
def test_tuning_reaches_the_target_with_the_smallest_grid_value(key: str, target: float) -> None:
    rng = np.random.default_rng(2)
    xb = clustered(rng, 4000)
    ids = np.arange(len(xb), dtype=np.int64)
    ann = AnnIndex.create(IndexSpec.parse(key), xb.shape[1])
    ann.train(xb)
    ann.add(xb, ids)
    probe = RecallProbe.create(xb, ids, np.arange(0, 4000, 20), k=10)
    res = tune_search_param(ann, probe, target_recall=target)
    assert res.target_met and res.recall >= target and res.certified and target <= res.recall_lower <= res.recall
    assert ann.search_value == res.value
    grid = ann.spec.search_param_grid()
    smaller = [v for v in grid if v < res.value]
    slots = 10 * probe.n_valid
    recall = {**res.predicted, **res.tried}  # IVF,Flat: every value predicted, the choice searched
    # every smaller value that was measured failed to certify the target (its lower bound is below it)
    assert all(recall_lower_bound(round(recall[v] * slots), slots) < target for v in smaller if v in recall)
    if smaller:
        assert smaller[-1] in recall
    # the recall reported is the recall measured independently now
    assert probe.measure(ann) == pytest.approx(res.recall)


def test_recall_lower_bound_is_the_wilson_score_bound() -> None:
    assert recall_lower_bound(5000, 5000) == pytest.approx(5000 / (5000 + 1.645**2))
    # p = 0.9, n = 100: the textbook Wilson interval
    p, n, z = 0.9, 100, 1.645
    ref = (p + z * z / (2 * n) - z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)
    assert recall_lower_bound(90, 100) == pytest.approx(ref)
    assert recall_lower_bound(90, 100) < recall_lower_bound(900, 1000) < 0.9
    assert recall_lower_bound(0, 10) == 0.0


def test_tune_queries_grow_with_the_target() -> None:
    assert tune_queries_needed(0.95, 10, 500) == 500
    assert tune_queries_needed(0.9995, 10, 500) == 2400  # 12 misses allowed among 24,000 neighbours
    assert tune_queries_needed(0.99999, 10, 500) == 4000  # capped
    assert tune_queries_needed(1.0, 10, 500) == 500  # only an exhaustive search certifies 1


def test_a_point_estimate_at_the_target_is_not_enough_close_to_1() -> None:
    rng = np.random.default_rng(6)
    xb = clustered(rng, 4000)
    ids = np.arange(len(xb), dtype=np.int64)
    ann = AnnIndex.create(IndexSpec.parse("IVF64,Flat"), xb.shape[1])
    ann.train(xb)
    ann.add(xb, ids)
    probe = RecallProbe.create(xb, ids, np.arange(0, 4000, 20), k=10)
    res = tune_search_param(ann, probe, target_recall=0.999)
    assert res.certified and res.recall_lower >= 0.999
    # some smaller value already had every neighbour of the 200 queries: the sample alone cannot vouch for it
    assert any(r >= 0.999 for v, r in res.predicted.items() if v < res.value)
    assert list(res.tried) == [res.value]  # predicted, then one search confirmed it
    # a target of 1 is certified by probing every list (exact), never by a sample
    exact = tune_search_param(ann, probe, target_recall=1.0)
    assert exact.value == 64 and exact.certified and exact.recall == 1.0
    hnsw = AnnIndex.create(IndexSpec.parse("HNSW16"), xb.shape[1])
    hnsw.add(xb, ids)
    res = tune_search_param(hnsw, probe, target_recall=1.0)
    assert not res.certified and (res.target_met or res.value == hnsw.spec.search_param_grid()[-1])


def test_ivf_flat_recall_is_predicted_exactly_without_searching() -> None:
    rng = np.random.default_rng(8)
    xb = clustered(rng, 3000, centers=60, noise=0.5)
    ids = rng.permutation(10**6)[:3000].astype(np.int64)
    ann = AnnIndex.create(IndexSpec.parse("IVF48,Flat"), xb.shape[1])
    ann.train(xb)
    ann.add(xb, ids)
    grid = ann.spec.search_param_grid()
    for probe in (RecallProbe.create(xb, ids, np.arange(0, 3000, 7), k=10),
                  RecallProbe.from_queries(xb, ids, clustered(rng, 300, centers=60, noise=0.5), k=10)):
        predicted = ivf_flat_predicted_hits(ann, probe, grid)
        assert predicted is not None and predicted[grid[0]][0] < predicted[grid[-1]][0]
        for v in grid:
            ann.set_search_param(v)
            scores, found = probe.search(ann)
            assert predicted[v] == probe.hits(found, scores), v
    for key in ("HNSW16", "IVF16,SQ8", "Flat"):
        other = AnnIndex.create(IndexSpec.parse(key), xb.shape[1])
        assert ivf_flat_predicted_hits(other, probe, [1]) is None


@pytest.mark.parametrize("key", ["IVF32,Flat", "OPQ8_16,IVF32,PQ8x4", "HNSW16"])
def test_refresh_equals_a_full_measurement_after_adds_and_removes(key: str) -> None:
    rng = np.random.default_rng(7)
    xb = clustered(rng, 3000)
    ids = np.arange(3000, dtype=np.int64) * 3
    ann = AnnIndex.create(IndexSpec.parse(key), xb.shape[1])
    ann.train(xb[:2000])
    ann.add(xb[:2000], ids[:2000])
    probe = RecallProbe.create(xb[:2000], ids[:2000], np.arange(0, 2000, 10), k=10)
    tune_search_param(ann, probe, target_recall=0.9)
    searched: list[int] = []
    search = ann.search
    ann.search = lambda xq, k: (searched.append(len(xq)), search(xq, k))[1]  # type: ignore[method-assign]
    for step in range(3):
        searched.clear()
        if step == 1:
            gone = ids[rng.choice(2500, 300, replace=False)]
            ann.remove(gone)
            probe.remove(gone)
            got = probe.refresh(ann, removed=gone)
        else:
            new = slice(2000 + 500 * (step // 2), 2500 + 500 * (step // 2))
            ann.add(xb[new], ids[new])
            probe.add(xb[new], ids[new])
            # the first add indexes the new vectors apart, the second scans the index through a selector
            got = probe.refresh(ann, added=ids[new], added_vectors=xb[new] if step == 0 else None)
        if ann.deterministic_update:  # IVF: after an add no query is searched again, after a removal a few
            assert sum(searched) == 0 if step != 1 else 0 < sum(searched) < len(probe.queries)
        else:
            assert searched == [len(probe.queries)]
        kept = probe.found.copy()
        assert got == probe.measure(ann)  # the same recall as searching every query again
        same = [set(a) == set(b) for a, b in zip(kept, probe.found)]
        assert np.mean(same) >= 0.99  # the same results, up to ties


def test_probe_stays_exact_under_adds_and_removes() -> None:
    rng = np.random.default_rng(3)
    xb = clustered(rng, 1200)
    ids = np.arange(1200, dtype=np.int64) * 7
    live = np.zeros(1200, bool)
    live[:800] = True
    probe = RecallProbe.create(xb[:800], ids[:800], np.arange(0, 800, 40), k=5, depth=12)
    probe.add(xb[800:1000], ids[800:1000])
    live[800:1000] = True
    gone = ids[rng.choice(1000, 150, replace=False)]
    probe.remove(gone)
    live[np.isin(ids, gone)] = False
    probe.add(xb[1000:], ids[1000:])
    live[1000:] = True
    s, i = exact_knn(xb[live], ids[live], probe.queries, 6)
    truth, _ = drop_self(i, s, probe.self_ids, 5)
    valid = (probe.gt_ids >= 0).sum(axis=1) >= 5
    assert valid.sum() >= 15
    for q in np.flatnonzero(valid):
        np.testing.assert_array_equal(probe.gt_ids[q, :5], truth[q])


def test_probe_round_trips(tmp_path) -> None:
    rng = np.random.default_rng(4)
    xb = clustered(rng, 100)
    probe = RecallProbe.create(xb, np.arange(100), np.arange(10), k=3)
    probe.save(tmp_path / "p.npz")
    back = RecallProbe.load(tmp_path / "p.npz")
    assert back.k == 3
    np.testing.assert_array_equal(back.gt_ids, probe.gt_ids)
    np.testing.assert_array_equal(back.queries, probe.queries)


@pytest.mark.slow
@pytest.mark.parametrize(("n", "family"), [(30_000, "hnsw"), (120_000, "ivf")])
def test_automatic_choice_meets_the_target_on_fresh_queries_at_scale(n: int, family: str) -> None:
    from regionrank.index.build import build_vector_index

    rng = np.random.default_rng(5)
    centres = rng.standard_normal((n // 50, 64))
    def sample(m: int) -> np.ndarray:
        x = centres[rng.integers(0, len(centres), m)] + 0.5 * rng.standard_normal((m, 64))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    xb, xq = sample(n), sample(500)
    ann, info, _ = build_vector_index(xb, np.arange(n), target_recall=0.95, k=10)
    assert ann.spec.family == family and info.target_met
    _, truth = exact_knn(xb, np.arange(n), xq, 10)
    _, found = ann.search(xq, 10)
    # queries never seen in tuning still reach the target, up to sampling noise
    assert recall_at_k(found, truth, 10) >= 0.93

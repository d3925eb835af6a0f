"""MrSw against a per-pair loop (with TERAN's zero fill), and the MaxSim candidate bound."""

from __future__ import annotations

import numpy as np
import pytest

from regionrank.index.alignment import maxsim_candidates, mrsw_align
from regionrank.index.tuning import exact_knn


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def mrsw_reference(words: np.ndarray, regions: np.ndarray, pad_to: int | None) -> float:
    """TERAN's formula written out: pad the region set with zero rows, A = <v_r, t_w>, sum_w max_r A."""
    if pad_to is not None and regions.shape[0] < pad_to:
        regions = np.concatenate([regions, np.zeros((pad_to - regions.shape[0], regions.shape[1]), np.float32)])
    total = 0.0
    for t in words:
        sims = [float(np.dot(v, t)) for v in regions]
        total += max(sims) if sims else 0.0
    return total


@pytest.mark.parametrize("pad_to", [None, 6])
def test_mrsw_equals_the_loop_including_zero_fill(pad_to: int | None) -> None:
    rng = np.random.default_rng(0)
    words = unit(rng.standard_normal((5, 8)))
    regions = [unit(rng.standard_normal((r, 8))) for r in (1, 3, 6, 0, 2)]
    regions.append(-np.tile(words[:1], (2, 1)))  # every similarity to word 0 negative-ish: zero fill matters
    al = mrsw_align(words, regions, pad_regions_to=pad_to)
    ref = [mrsw_reference(words, r, pad_to) for r in regions]
    np.testing.assert_allclose(al.scores, ref, rtol=1e-5, atol=1e-6)
    for i, r in enumerate(regions):
        for w in range(len(words)):
            b = al.best_region[i, w]
            if b >= 0:
                assert al.best_sim[i, w] == pytest.approx(float(r[b] @ words[w]), abs=1e-6)
            else:  # no regions, or the zero fill won
                assert al.best_sim[i, w] == 0.0
    # zero fill changes the score only for images with fewer regions than the padding
    if pad_to is not None:
        plain = mrsw_align(words, regions, pad_regions_to=None)
        assert al.scores[-1] > plain.scores[-1]
        assert al.scores[2] == pytest.approx(plain.scores[2])  # 6 regions: nothing padded


def test_mrsw_rejects_dimension_mismatch() -> None:
    with pytest.raises(ValueError, match="dimension"):
        mrsw_align(np.ones((2, 4), np.float32), [np.ones((3, 5), np.float32)])


def test_maxsim_bound_is_an_upper_bound_and_keeps_the_best_images() -> None:
    """With exact per-word k-NN, the bound dominates the exact MrSw of every image (retrieved or not)."""
    rng = np.random.default_rng(1)
    n_img, d = 300, 16
    protos = unit(rng.standard_normal((20, d)))
    counts = rng.integers(2, 7, n_img)
    regions = [unit(protos[rng.integers(0, 20, c)] + 0.3 * rng.standard_normal((c, d))) for c in counts]
    owner = np.repeat(np.arange(n_img), counts)
    words = unit(protos[[3, 7, 11]] + 0.05 * rng.standard_normal((3, d)))
    scores, rid = exact_knn(np.concatenate(regions), np.arange(owner.size), words, 40)
    items = owner[rid]
    ids, bounds, outside = maxsim_candidates(scores, items, n_candidates=n_img)
    exact = mrsw_align(words, regions).scores
    bound_of = dict(zip(ids.tolist(), bounds.tolist()))
    for i in range(n_img):
        assert exact[i] <= bound_of.get(i, outside) + 1e-5
    assert np.all(np.diff(bounds) <= 0)
    # the true top-10 images are all among the candidates ranked above the outside bound
    top10 = np.argsort(-exact)[:10]
    kept = set(ids[bounds >= exact[top10].min()].tolist())
    assert set(top10.tolist()) <= kept


def test_maxsim_candidates_handles_missing_results() -> None:
    scores = np.array([[0.9, 0.5, -np.inf]], np.float32)
    items = np.array([[4, 2, -1]])
    ids, bounds, outside = maxsim_candidates(scores, items, 5)
    np.testing.assert_array_equal(ids, [4, 2])
    np.testing.assert_allclose(bounds, [0.9, 0.5])
    # the row came back short of k: the index has nothing more for this word, so nothing outside can score
    assert outside == pytest.approx(-1.0)
    assert maxsim_candidates(scores, items, 5, clip_at_zero=True)[2] == 0.0
    full = np.array([[0.9, 0.5, 0.4]], np.float32), np.array([[4, 2, 7]])
    assert maxsim_candidates(*full, 5)[2] == pytest.approx(0.4)  # a full row: its last similarity bounds the rest
    ids, _, _ = maxsim_candidates(scores, np.full((1, 3), -1), 5)
    assert ids.size == 0


@pytest.mark.parametrize("pad_to", [None, 36, 4])
def test_stacked_mrsw_equals_the_per_item_form_with_ties_and_empty_items(pad_to: int | None) -> None:
    from regionrank.index.alignment import mrsw_align_stacked

    rng = np.random.default_rng(3)
    words = rng.standard_normal((3, 8)).astype(np.float32)
    regions = [rng.standard_normal((int(r), 8)).astype(np.float16) for r in (4, 0, 1, 6, 3)]
    regions[3][4] = regions[3][1]  # a tie: the first region holding the maximum is reported, as np.argmax does
    al = mrsw_align(words, regions, pad_regions_to=pad_to)
    st = mrsw_align_stacked(words, np.concatenate([r for r in regions if len(r)]), np.array([len(r) for r in regions]),
                            pad_regions_to=pad_to)
    np.testing.assert_array_equal(st.scores, al.scores)
    np.testing.assert_array_equal(st.best_region, al.best_region)
    for i, r in enumerate(regions):
        sims = np.asarray(r, np.float32) @ words.T
        for w in range(3):
            if len(r) and (pad_to is None or len(r) >= pad_to or sims[:, w].max() >= 0):
                assert al.best_region[i, w] == int(np.argmax(sims[:, w]))
            else:
                assert al.best_region[i, w] == -1
    with pytest.raises(ValueError, match="counts sum"):
        mrsw_align_stacked(words, np.zeros((3, 8), np.float32), np.array([1, 1]))

"""Tests for encoders.evaluation against the references' loops (with a stable sort)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regionrank.encoders.evaluation import (
    blockwise_similarity,
    evaluate,
    evaluate_folds,
    evaluate_protocol,
    i2t,
    t2i,
)


def _ref_i2t(s: np.ndarray, caption_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ranks, top1 = [], []
    for i in range(s.shape[0]):
        gts = np.flatnonzero(caption_image == i)
        if gts.size == 0:
            continue
        inds = np.argsort(-s[i], kind="stable")
        ranks.append(min(int(np.where(inds == g)[0][0]) for g in gts))
        top1.append(inds[0])
    return np.array(ranks), np.array(top1)


def _ref_t2i(s: np.ndarray, caption_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ranks, top1 = [], []
    for c in range(s.shape[1]):
        inds = np.argsort(-s[:, c], kind="stable")
        ranks.append(int(np.where(inds == caption_image[c])[0][0]))
        top1.append(inds[0])
    return np.array(ranks), np.array(top1)


def _ref_metrics(ranks: np.ndarray) -> dict[str, float]:
    n = len(ranks)
    return {
        "r1": 100.0 * len(np.where(ranks < 1)[0]) / n,
        "r5": 100.0 * len(np.where(ranks < 5)[0]) / n,
        "r10": 100.0 * len(np.where(ranks < 10)[0]) / n,
        "medr": np.floor(np.median(ranks)) + 1,
        "meanr": ranks.mean() + 1,
    }


def _noisy_sims(gen: np.random.Generator, n: int, k: int = 5, quantise: bool = False) -> np.ndarray:
    s = gen.normal(size=(n, k * n))
    s[np.arange(k * n) // k, np.arange(k * n)] += 1.5  # make the metrics non-trivial
    if quantise:  # many exact ties
        s = np.round(s, 0)
    return s


@pytest.mark.parametrize("quantise", [False, True])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_matches_reference_loops(quantise: bool, as_tensor: bool) -> None:
    gen = np.random.default_rng(0)
    s = _noisy_sims(gen, 40, quantise=quantise)
    cap_img = np.arange(200) // 5
    arg = torch.tensor(s, dtype=torch.float64) if as_tensor else s.astype(np.float32)
    ref = s if as_tensor else s.astype(np.float32)
    a, b = i2t(arg), t2i(arg)
    ra, ta = _ref_i2t(ref, cap_img)
    rb, tb = _ref_t2i(ref, cap_img)
    np.testing.assert_array_equal(a["ranks"], ra)
    np.testing.assert_array_equal(a["top1"], ta)
    np.testing.assert_array_equal(b["ranks"], rb)
    np.testing.assert_array_equal(b["top1"], tb)
    for k, v in _ref_metrics(ra).items():
        assert a[k] == pytest.approx(v)
    for k, v in _ref_metrics(rb).items():
        assert b[k] == pytest.approx(v)


def test_general_mapping_with_uneven_captions_and_gallery_only_images() -> None:
    gen = np.random.default_rng(1)
    n_img, n_cap = 30, 70
    cap_img = gen.integers(0, 25, size=n_cap)  # images 25..29 have no captions
    s = np.round(gen.normal(size=(n_img, n_cap)), 1)
    a = i2t(s, caption_image=cap_img)
    ra, ta = _ref_i2t(s, cap_img)
    np.testing.assert_array_equal(a["ranks"], ra)
    np.testing.assert_array_equal(a["top1"], ta)
    np.testing.assert_array_equal(a["queries"], np.unique(cap_img))
    b = t2i(s, caption_image=cap_img)
    np.testing.assert_array_equal(b["ranks"], _ref_t2i(s, cap_img)[0])
    # captions_per_image != 5
    s3 = _noisy_sims(gen, 12, k=3)
    np.testing.assert_array_equal(i2t(s3, captions_per_image=3)["ranks"], _ref_i2t(s3, np.arange(36) // 3)[0])


def test_tie_break_is_stable_by_index() -> None:
    s = np.zeros((2, 10))  # every score tied
    a = i2t(s)
    np.testing.assert_array_equal(a["ranks"], [0, 5])  # image 1's first caption (5) has 5 tied captions ahead
    b = t2i(s)
    np.testing.assert_array_equal(b["ranks"], [0] * 5 + [1] * 5)


def test_perfect_scores() -> None:
    s = np.kron(np.eye(4), np.ones((1, 5)))
    res = evaluate(s)
    assert res["i2t"]["r1"] == 100.0 and res["t2i"]["r1"] == 100.0 and res["rsum"] == 600.0
    assert res["i2t"]["medr"] == 1.0 and res["t2i"]["meanr"] == 1.0


def test_folds_average_and_rsum_not_the_reference_quirk() -> None:
    gen = np.random.default_rng(2)
    s = _noisy_sims(gen, 50)
    res = evaluate_folds(s, 5)
    per_fold = [evaluate(s[f * 10 : (f + 1) * 10, f * 50 : (f + 1) * 50]) for f in range(5)]
    for d in ("i2t", "t2i"):
        for k in ("r1", "r5", "r10", "medr", "meanr"):
            assert res[d][k] == pytest.approx(np.mean([p[d][k] for p in per_fold]))
    assert res["rsum"] == pytest.approx(np.mean([p["rsum"] for p in per_fold]))
    quirk = 6 * np.mean([(p["i2t"]["r1"] + p["i2t"]["r5"] + p["i2t"]["r10"]) / 3 for p in per_fold])
    assert res["rsum"] != pytest.approx(quirk)


def test_blockwise_equals_matrix_and_scorer_protocol() -> None:
    gen = np.random.default_rng(3)
    full = _noisy_sims(gen, 23).astype(np.float32)
    calls: list[tuple[int, int]] = []

    def scorer(ii: np.ndarray, cc: np.ndarray) -> torch.Tensor:
        calls.append((ii.size, cc.size))
        return torch.from_numpy(full[np.ix_(ii, cc)])

    got = blockwise_similarity(scorer, np.arange(23), np.arange(115), image_block=7, caption_block=40)
    np.testing.assert_array_equal(got, full)
    assert max(c[0] for c in calls) <= 7 and max(c[1] for c in calls) <= 40
    folds_scorer = evaluate_folds(scorer, 1, n_images=23, image_block=5, caption_block=17)
    folds_matrix = evaluate_folds(full, 1)
    assert folds_scorer["rsum"] == folds_matrix["rsum"]


def test_protocol_coco1k_with_scorer_scores_only_fold_blocks() -> None:
    seen: list[tuple[int, int, int, int]] = []

    def scorer(ii: np.ndarray, cc: np.ndarray) -> np.ndarray:
        seen.append((int(ii.min()), int(ii.max()), int(cc.min()), int(cc.max())))
        # deterministic: own image's captions score 1, image (i+1) % n's captions 2 (always wins)
        owner = cc[None, :] // 5
        s = np.where(owner == ii[:, None], 1.0, 0.0)
        return np.where(owner == (ii[:, None] + 1) % 5000, 2.0, s)

    res = evaluate_protocol(scorer, "coco1k", image_block=500, caption_block=2500)
    assert all(i0 // 1000 == i1 // 1000 == c0 // 5000 == c1 // 5000 for i0, i1, c0, c1 in seen)
    # caption of image o loses to image o-1 unless o-1 lies outside the fold (o = fold start):
    # one caption owner in 1000 per fold ranks first. Image i's captions lose to image i+1's five
    # captions unless i is the fold's last image.
    assert res["t2i"]["r1"] == pytest.approx(0.1)
    assert res["i2t"]["r1"] == pytest.approx(0.1) and res["i2t"]["r5"] == pytest.approx(0.1)
    assert res["i2t"]["r10"] == pytest.approx(100.0)
    assert res["t2i"]["r5"] == pytest.approx(100.0) and res["t2i"]["medr"] == 2.0
    assert res["rsum"] == pytest.approx(0.1 + 0.1 + 100.0 + 0.1 + 100.0 + 100.0)
    assert res["protocol"] == "coco1k"


def test_errors() -> None:
    with pytest.raises(ValueError, match="captions_per_image"):
        i2t(np.zeros((3, 10)))
    with pytest.raises(ValueError, match="NaN"):
        t2i(np.full((1, 5), np.nan))
    with pytest.raises(ValueError, match="caption_image"):
        i2t(np.zeros((3, 4)), caption_image=np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="protocol"):
        evaluate_protocol(np.zeros((2, 10)), "coco2k")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1000, 5000"):
        evaluate_protocol(np.zeros((2, 10)), "f30k1k")
    with pytest.raises(ValueError, match="folds"):
        evaluate_folds(np.zeros((7, 35)), 2)
    with pytest.raises(ValueError, match="scorer returned shape"):
        blockwise_similarity(lambda i, c: np.zeros((1, 1)), [0, 1], [0, 1])

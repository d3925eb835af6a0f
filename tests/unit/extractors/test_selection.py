"""Bottom-up region selection against a slow reference loop (ALGORITHMS.md §1.3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regionrank.extractors.selection import bottom_up_max_conf, select_bottom_up


def _nms_reference(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    """Greedy NMS written out (exclusive-corner IoU, like torchvision)."""
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while order:
        i = order.pop(0)
        keep.append(i)
        rest = []
        for j in order:
            iw = max(0.0, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]))
            ih = max(0.0, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]))
            inter = iw * ih
            if inter / (area[i] + area[j] - inter) <= thresh:
                rest.append(j)
        order = rest
    return keep


def _reference(boxes: np.ndarray, probs: np.ndarray, conf: float, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """generate_tsv.py's loop, verbatim in spirit."""
    max_conf = np.zeros(boxes.shape[0], dtype=np.float64)
    for k in range(1, probs.shape[1]):
        kept = _nms_reference(boxes, probs[:, k], 0.3)
        max_conf[kept] = np.maximum(max_conf[kept], probs[kept, k])
    sel = np.where(max_conf >= conf)[0]
    if len(sel) < lo:
        sel = np.argsort(-max_conf, kind="stable")[:lo]
    elif len(sel) > hi:
        sel = np.argsort(-max_conf, kind="stable")[:hi]
    return sel, max_conf


def _problem(rng: np.random.Generator, n: int, c: int, peak: float) -> tuple[np.ndarray, np.ndarray]:
    xy = rng.uniform(0, 200, size=(n, 2))
    wh = rng.uniform(10, 120, size=(n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    logits = rng.normal(size=(n, c)) * peak
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs = (probs / probs.sum(1, keepdims=True)).astype(np.float32)
    return boxes, probs


@pytest.mark.parametrize(
    ("n", "c", "peak", "lo", "hi"),
    [
        (60, 12, 3.0, 10, 100),  # thresholded count within the bounds: proposal order
        (80, 6, 6.0, 5, 20),  # too many pass: top max_conf
        (50, 40, 0.5, 10, 100),  # almost nothing passes 0.2: exact fallback with no score floor
        (70, 9, 2.5, 36, 36),  # fixed 36
    ],
)
def test_selection_equals_reference_loop(rng, n, c, peak, lo, hi):
    boxes, probs = _problem(rng, n, c, peak)
    want_sel, want_conf = _reference(boxes, probs, 0.2, lo, hi)
    got = select_bottom_up(torch.from_numpy(boxes), torch.from_numpy(probs), min_boxes=lo, max_boxes=hi)
    assert got.keep.tolist() == want_sel.tolist()
    passed = want_conf >= 0.2
    np.testing.assert_allclose(got.max_conf.numpy()[passed], want_conf[passed], rtol=0, atol=1e-7)
    if passed.sum() < lo:  # the fallback ranks sub-threshold values: they must all be exact
        np.testing.assert_allclose(got.max_conf.numpy(), want_conf, rtol=0, atol=1e-7)


def test_score_floor_is_exact_above_the_floor(rng):
    boxes, probs = _problem(rng, 90, 15, 2.0)
    full = bottom_up_max_conf(torch.from_numpy(boxes), torch.from_numpy(probs))
    floored = bottom_up_max_conf(torch.from_numpy(boxes), torch.from_numpy(probs), score_floor=0.2)
    above = full >= 0.2
    assert above.any()
    assert torch.equal(floored[above], full[above])
    assert torch.all(floored[~above] == 0)


def test_background_column_is_ignored(rng):
    boxes, probs = _problem(rng, 20, 5, 1.0)
    probs[:, 0] = 0.99  # background never counts
    conf = bottom_up_max_conf(torch.from_numpy(boxes), torch.from_numpy(probs))
    assert float(conf.max()) <= float(probs[:, 1:].max())


def test_bad_bounds_raise():
    with pytest.raises(ValueError, match="min_boxes"):
        select_bottom_up(torch.zeros(3, 4), torch.zeros(3, 2), min_boxes=5, max_boxes=2)


def test_per_class_nms_equals_torchvision_nms_per_class(rng):
    from torchvision.ops import nms

    from regionrank.extractors.selection import per_class_nms

    boxes, probs = _problem(rng, 40, 8, 1.5)
    scores = torch.from_numpy(probs.T.copy())  # [K, R]
    valid = scores >= 0.05
    keep = per_class_nms(torch.from_numpy(boxes), scores, valid, 0.5)
    for k in range(scores.shape[0]):
        idx = valid[k].nonzero(as_tuple=True)[0]
        want = set(idx[nms(torch.from_numpy(boxes)[idx], scores[k, idx], 0.5)].tolist())
        assert set(keep[k].nonzero(as_tuple=True)[0].tolist()) == want

"""Bottom-up region selection (ALGORITHMS.md §1.3), vectorised.

The reference (``tools/generate_tsv.py: get_detections_from_im``) loops over the
1600 foreground classes, runs NMS (IoU 0.3) on the *raw proposals* scored by that
class, and keeps for every proposal the best class probability among the classes
where it survived (``max_conf``). Proposals with ``max_conf >= 0.2`` are kept in
proposal order; fewer than ``min_boxes`` or more than ``max_boxes`` fall back to
the top ``max_conf`` values in descending order.

Here the 1600 NMS runs are one ``torchvision.ops.batched_nms`` call over
``(proposal, class)`` pairs. Pairs below a score floor are dropped first: a
pair's NMS outcome depends only on higher-scored pairs of its class, so every
``max_conf >= floor`` is exact and every smaller one comes out as 0. When fewer
than ``min_boxes`` proposals reach the floor the smaller values matter for the
fallback, and the computation is repeated with no floor (exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import batched_nms

__all__ = ["BottomUpSelection", "bottom_up_max_conf", "select_bottom_up"]


@dataclass
class BottomUpSelection:
    """Result of :func:`select_bottom_up` for one image.

    Args:
        keep: ``int64[n]`` indices into the proposals, in emission order.
        max_conf: ``float32[R]`` the reference ``max_conf``: exact wherever it is
            ``>= conf_thresh``; smaller values are exact only when the fallback had to
            rank them (fewer than ``min_boxes`` passed), else reported as 0.
    """

    keep: torch.Tensor
    max_conf: torch.Tensor


def bottom_up_max_conf(
    boxes: torch.Tensor, probs: torch.Tensor, *, nms_iou: float = 0.3, score_floor: float = 0.0
) -> torch.Tensor:
    """``max_conf`` of the reference loop: best class probability among the classes where a box survives NMS.

    Args:
        boxes: ``FloatTensor[R, 4]`` proposals ``(x1, y1, x2, y2)``.
        probs: ``FloatTensor[R, C]`` class softmax; column 0 is background and is ignored.
        nms_iou: per-class NMS IoU threshold (reference: 0.3).
        score_floor: pairs with probability below it are not considered (see the
            module docstring for when that is exact); 0 considers every pair.

    Returns:
        ``FloatTensor[R]`` (dtype of ``probs``); 0 where no class kept the box.
    """
    if probs.ndim != 2 or probs.shape[0] != boxes.shape[0]:
        raise ValueError(f"probs must be (R, C) with R={boxes.shape[0]}; got {tuple(probs.shape)}")
    fg = probs[:, 1:]
    max_conf = torch.zeros(boxes.shape[0], dtype=probs.dtype, device=probs.device)
    if fg.numel() == 0:
        return max_conf
    mask = fg >= score_floor if score_floor > 0 else torch.ones_like(fg, dtype=torch.bool)
    box_idx, cls_idx = mask.nonzero(as_tuple=True)
    if box_idx.numel() == 0:
        return max_conf
    scores = fg[box_idx, cls_idx]
    kept = batched_nms(boxes[box_idx].float(), scores.float(), cls_idx, nms_iou)
    max_conf.scatter_reduce_(0, box_idx[kept], scores[kept], reduce="amax", include_self=True)
    return max_conf


def select_bottom_up(
    boxes: torch.Tensor,
    probs: torch.Tensor,
    *,
    nms_iou: float = 0.3,
    conf_thresh: float = 0.2,
    min_boxes: int = 10,
    max_boxes: int = 100,
) -> BottomUpSelection:
    """Pick the regions of one image exactly as the bottom-up reference does.

    Args:
        boxes: ``FloatTensor[R, 4]`` raw proposals in any pixel frame (IoU is scale-free).
        probs: ``FloatTensor[R, C]`` class softmax, column 0 background.
        nms_iou: per-class NMS IoU (0.3).
        conf_thresh: keep proposals with ``max_conf >= conf_thresh`` (0.2).
        min_boxes / max_boxes: adaptive bounds (10 / 100), or 36 / 36 for fixed 36.

    Returns:
        :class:`BottomUpSelection`; ``keep`` is in proposal order when the
        thresholded count lies within the bounds, else by descending ``max_conf``
        (exact ties by proposal index; the reference reverses an unstable
        numpy argsort, so its order among exact ties is arbitrary). At most ``R``
        boxes are returned.
    """
    if min_boxes < 0 or max_boxes < min_boxes:
        raise ValueError(f"need 0 <= min_boxes <= max_boxes; got min_boxes={min_boxes}, max_boxes={max_boxes}")
    floor = conf_thresh
    max_conf = bottom_up_max_conf(boxes, probs, nms_iou=nms_iou, score_floor=floor)
    if int((max_conf >= floor).sum()) < min(min_boxes, boxes.shape[0]) and floor > 0:
        max_conf = bottom_up_max_conf(boxes, probs, nms_iou=nms_iou, score_floor=0.0)
    sel = (max_conf >= conf_thresh).nonzero(as_tuple=True)[0]
    if sel.numel() < min_boxes or sel.numel() > max_boxes:
        k = min(min_boxes if sel.numel() < min_boxes else max_boxes, boxes.shape[0])
        # stable descending sort: ties keep proposal order, like numpy's argsort on -max_conf
        order = torch.sort(max_conf, descending=True, stable=True).indices
        sel = order[:k]
    return BottomUpSelection(keep=sel, max_conf=max_conf)

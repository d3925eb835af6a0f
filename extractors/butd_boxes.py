"""Box conventions of the bottom-up RPN: Caffe's (py-faster-rcnn) and detectron2's (airsplay's fork).

The converted bottom-up checkpoints run under two sets of box conventions, and the same weights
give different proposals under each:

==========================  ======================================  =====================================
stage                       ``"caffe"`` (peteanderson80, MILVLG)     ``"detectron2"`` (airsplay's fork)
==========================  ======================================  =====================================
anchors                     ratio-major, centred on 7.5 px, sides   size-major, centred on 0 px, sides
                            rounded (``generate_anchors``)          ``sqrt(size**2 / ratio)`` unrounded
box decoding                ``w = x2 - x1 + 1``                     ``w = x2 - x1``
clipping                    to ``[0, W - 1]``                       to ``[0, W]``
small boxes                 sides < ``rpn_min_size * scale`` out     empty boxes (side <= 0) out
pre-NMS top-k               after clipping and the size filter      before them
IoU (RPN NMS)               inclusive (``+1``), network pixels      exclusive
IoU (region selection)      inclusive (``+1``), *original* pixels   exclusive (scale-free)
given boxes                 pooled as given (times the scale)       clipped to ``[0, W]`` first
==========================  ======================================  =====================================

The selection row follows ``generate_tsv.py`` (and MILVLG's ``save_roi_features``): the
proposals are divided by the image scale *before* the per-class NMS, so the ``+1`` is one
original-image pixel. The given-box row follows Caffe's ``im_detect(net, im, boxes)`` and MILVLG's
``bbox_feats`` mode (no clipping) and airsplay's given-box notebook (clipping).

``"caffe"`` is the original model (ALGORITHMS.md §1.1, §1.5) and the default; ``"detectron2"``
reproduces airsplay/py-bottom-up-attention on its own checkpoints (proven against its outputs in
``tests/unit/extractors/test_butd_reference.py``). The RPN head's channels follow the anchor order
of the convention, so a checkpoint is tied to one: see :func:`rpn_channel_permutation`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torchvision.ops import nms

__all__ = [
    "BoxConvention",
    "caffe_anchors",
    "cell_anchors",
    "decode_proposals",
    "detectron2_anchors",
    "given_rois",
    "iou_boxes",
    "selection_boxes",
    "rpn_channel_permutation",
    "select_proposals",
]

BoxConvention = Literal["caffe", "detectron2"]
BOX_CONVENTIONS = ("caffe", "detectron2")
_CLAMP = math.log(1000.0 / 16)


def caffe_anchors(
    base_size: int = 16, ratios: Sequence[float] = (0.5, 1.0, 2.0), scales: Sequence[float] = (4, 8, 16, 32)
) -> torch.Tensor:
    """py-faster-rcnn's ``generate_anchors``: ``FloatTensor[len(ratios) * len(scales), 4]``, ratio-major.

    Anchors are centred on ``(base_size - 1) / 2`` with inclusive corners, widths
    rounded as in the reference (``ws = round(sqrt(base_size**2 / ratio))``).
    """
    ctr = 0.5 * (base_size - 1)
    size = float(base_size * base_size)
    out = []
    for r in ratios:
        ws = np.round(np.sqrt(size / r))
        hs = np.round(ws * r)
        for s in scales:
            w, h = ws * s, hs * s
            out.append([ctr - 0.5 * (w - 1), ctr - 0.5 * (h - 1), ctr + 0.5 * (w - 1), ctr + 0.5 * (h - 1)])
    return torch.tensor(out, dtype=torch.float32)


def detectron2_anchors(sizes: Sequence[float], ratios: Sequence[float] = (0.5, 1.0, 2.0)) -> torch.Tensor:
    """detectron2's ``DefaultAnchorGenerator.generate_cell_anchors``: size-major, centred on 0, unrounded."""
    out = []
    for size in sizes:
        area = float(size) ** 2
        for r in ratios:
            w = math.sqrt(area / r)
            h = r * w
            out.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(out, dtype=torch.float32)


def cell_anchors(convention: BoxConvention, scales: Sequence[float], ratios: Sequence[float]) -> torch.Tensor:
    """The anchors of one feature-map cell, in the channel order of the RPN head of ``convention``."""
    if convention == "caffe":
        return caffe_anchors(16, ratios, scales)
    return detectron2_anchors([16 * s for s in scales], ratios)


def rpn_channel_permutation(num_scales: int, num_ratios: int) -> torch.Tensor:
    """Index that reorders size-major anchor channels (detectron2) into ratio-major ones (Caffe)."""
    return torch.tensor([s * num_ratios + r for r in range(num_ratios) for s in range(num_scales)])


def decode_proposals(convention: BoxConvention, anchors: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Apply RPN deltas ``(dx, dy, dw, dh)`` to anchors (py-faster-rcnn ``bbox_transform_inv`` or detectron2's)."""
    one = 1.0 if convention == "caffe" else 0.0
    widths = anchors[:, 2] - anchors[:, 0] + one
    heights = anchors[:, 3] - anchors[:, 1] + one
    ctr_x = anchors[:, 0] + 0.5 * widths
    ctr_y = anchors[:, 1] + 0.5 * heights
    # py-faster-rcnn does not clamp; detectron2's clamp only guards exp() against wild deltas.
    dw, dh = deltas[:, 2].clamp(max=_CLAMP), deltas[:, 3].clamp(max=_CLAMP)
    px, py = deltas[:, 0] * widths + ctr_x, deltas[:, 1] * heights + ctr_y
    pw, ph = torch.exp(dw) * widths, torch.exp(dh) * heights
    return torch.stack([px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph], dim=1)


def clip_boxes(convention: BoxConvention, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Clip to the image: ``[0, W - 1]`` (Caffe, inclusive corners) or ``[0, W]`` (detectron2)."""
    one = 1.0 if convention == "caffe" else 0.0
    out = boxes.clone()
    out[:, 0::2] = out[:, 0::2].clamp(0, width - one)
    out[:, 1::2] = out[:, 1::2].clamp(0, height - one)
    return out


def iou_boxes(convention: BoxConvention, boxes: torch.Tensor) -> torch.Tensor:
    """Boxes whose exclusive IoU (torchvision's) equals the convention's IoU of ``boxes``."""
    if convention == "caffe":
        return boxes + boxes.new_tensor([0.0, 0.0, 1.0, 1.0])
    return boxes


def selection_boxes(convention: BoxConvention, rois: torch.Tensor, scale: float) -> torch.Tensor:
    """Boxes for the per-class NMS of the region selection: IoU in original pixels (``rois / scale``), as the references."""
    return iou_boxes(convention, rois / scale)


def given_rois(convention: BoxConvention, boxes: torch.Tensor, scale: float, height: int, width: int) -> torch.Tensor:
    """RoIs (network pixels) of user-given boxes in original pixels: scaled, and clipped under ``"detectron2"`` only."""
    rois = boxes * scale
    return clip_boxes(convention, rois, height, width) if convention == "detectron2" else rois


def select_proposals(
    convention: BoxConvention,
    anchors: torch.Tensor,
    deltas: torch.Tensor,
    scores: torch.Tensor,
    *,
    image_hw: tuple[int, int],
    min_size: float,
    pre_nms_top_n: int,
    nms_thresh: float,
    post_nms_top_n: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RPN proposals of one image in network pixels, objectness order: ``(boxes [P, 4], scores [P])``.

    Args:
        convention: ``"caffe"`` or ``"detectron2"`` (see the module table).
        anchors / deltas / scores: ``[N, 4]``, ``[N, 4]``, ``[N]`` over all anchors of the image.
        image_hw: network input size.
        min_size: smallest proposal side in network pixels (``"caffe"`` only; detectron2 drops empty boxes).
        pre_nms_top_n / nms_thresh / post_nms_top_n: 6000 / 0.7 / 300 in the reference.
    """
    height, width = image_hw
    if convention == "detectron2":
        # detectron2 sorts (unstably) and cuts before clipping; stable here for reproducible ties
        order = torch.sort(scores, descending=True, stable=True).indices[:pre_nms_top_n]
        boxes = clip_boxes(convention, decode_proposals(convention, anchors[order], deltas[order]), height, width)
        scores = scores[order]
        keep = ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
        boxes, scores = boxes[keep], scores[keep]
    else:
        boxes = clip_boxes(convention, decode_proposals(convention, anchors, deltas), height, width)
        keep = ((boxes[:, 2] - boxes[:, 0] + 1) >= min_size) & ((boxes[:, 3] - boxes[:, 1] + 1) >= min_size)
        boxes, scores = boxes[keep], scores[keep]
        # stable sort: equal objectness keeps anchor order, so CPU runs are reproducible bit for bit
        order = torch.sort(scores, descending=True, stable=True).indices[:pre_nms_top_n]
        boxes, scores = boxes[order], scores[order]
    kept = nms(iou_boxes(convention, boxes), scores, nms_thresh)[:post_nms_top_n]
    return boxes[kept], scores[kept]

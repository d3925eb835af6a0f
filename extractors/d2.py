"""``detectron2``: bottom-up style region features from any detectron2 R-CNN, where detectron2 is installed.

detectron2 is not on PyPI (ENVIRONMENT.md §5) and is imported only inside
:func:`create_detectron2_detector`; without it a ``RuntimeError`` explains how to
install it. Tested (``slow``) against airsplay/py-bottom-up-attention, a detectron2
fork, made importable from a snapshot with its C++ extension stubbed
(``tests/unit/extractors/test_d2_reference.py``; skipped without the snapshot).

Given a detectron2 config file and a local checkpoint (e.g. MILVLG's
detectron2-trained ``bua-d2-frcn-r101.pth`` with its own config, or any C4 / FPN
Faster R-CNN), it runs backbone -> proposal generator -> box head on the *raw
proposals* and applies the bottom-up selection of ALGORITHMS.md §1.3
(per-class NMS, confidence, adaptive count). Like ``butd-r101-c4``, every
returned box is the RoI its feature was pooled from (quirk #1), so box and
feature always belong together. ``class_ids`` are detectron2's contiguous ids
(``0..K-1``, background excluded); detectron2 keeps background in the last
probability column, which is moved first for the selection. A predictor with an
attribute head (airsplay's ``faster_rcnn_from_caffe_attr``: it returns class
scores, attribute scores and deltas) also gives ``attr_ids`` (``0..A-1``, the
last, "no attribute", column excluded) and their probabilities.

Both detectron2 APIs are served: the current one (``box_predictor.predict_probs``)
and the fork's older one (no ``predict_probs``: the class probabilities are the
softmax over all columns, which is what ``predict_probs`` computes for softmax
classifiers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from regionrank.extractors.detector import (
    Detections,
    PreparedImage,
    StageTimer,
    register_detector,
    rgb_to_tensor,
    timed,
    weights_sha256,
)
from regionrank.extractors.selection import select_bottom_up

__all__ = ["D2Preprocessor", "Detectron2Detector", "create_detectron2_detector"]

INSTALL_HINT = (
    "detectron2 is not installed (and is not on PyPI). Build it from source on a machine with network access "
    "and a C++/CUDA toolchain: pip install --no-build-isolation "
    "'git+https://github.com/facebookresearch/detectron2.git'; or use detector='butd-r101-c4', "
    "which needs only torchvision"
)


def _import_detectron2() -> Any:
    try:
        import detectron2  # noqa: F401
        from detectron2 import checkpoint, config, modeling
    except ImportError as exc:
        raise RuntimeError(INSTALL_HINT) from exc
    return config, modeling, checkpoint


@dataclass(frozen=True)
class D2Preprocessor:
    """detectron2's test-time ``ResizeShortestEdge`` + channel order; picklable. Normalisation is the model's."""

    min_size: int = 600
    max_size: int = 1000
    input_format: str = "BGR"

    def scale_for(self, width: int, height: int) -> float:
        s = self.min_size / min(width, height)
        if max(width, height) * s > self.max_size:
            s = self.max_size / max(width, height)
        return s

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        s = self.scale_for(width, height)
        return int(height * s + 0.5), int(width * s + 0.5)

    def __call__(self, rgb: np.ndarray) -> PreparedImage:
        x = rgb_to_tensor(rgb, bgr=self.input_format == "BGR")  # [3, H, W]
        height, width = rgb.shape[:2]
        out_h, out_w = self.target_size(width, height)
        x = F.interpolate(x[None], size=(out_h, out_w), mode="bilinear", align_corners=False)[0]
        return PreparedImage(tensor=x.contiguous(), scale=self.scale_for(width, height), width=width, height=height)


class Detectron2Detector:
    """A detectron2 R-CNN wrapped in the common output contract (bottom-up selection on raw proposals)."""

    name = "detectron2"

    def __init__(self, model: Any, d2cfg: Any, *, weights_hash: str, device: torch.device | str,
                 conf_thresh: float, min_boxes: int, max_boxes: int, nms_thresh: float) -> None:  # fmt: skip
        self.model = model.eval()
        self.device = torch.device(device)
        self.weights_hash = weights_hash
        self.conf_thresh, self.min_boxes, self.max_boxes, self.nms_thresh = conf_thresh, min_boxes, max_boxes, nms_thresh
        self._pre = D2Preprocessor(int(d2cfg.INPUT.MIN_SIZE_TEST), int(d2cfg.INPUT.MAX_SIZE_TEST), str(d2cfg.INPUT.FORMAT))
        heads = model.roi_heads
        predictor = heads.box_predictor
        self.feature_dim = int(predictor.cls_score.in_features)
        self.config: dict[str, Any] = {
            "detector": self.name,
            "d2_config": d2cfg.dump(),
            "conf_thresh": conf_thresh,
            "min_boxes": min_boxes,
            "max_boxes": max_boxes,
            "nms_thresh": nms_thresh,
            "box_mode": "raw-proposals",
        }

    @property
    def preprocessor(self) -> D2Preprocessor:
        return self._pre

    def _pool(self, features: dict[str, torch.Tensor], proposal_boxes: list[Any]) -> torch.Tensor:
        heads = self.model.roi_heads
        if hasattr(heads, "_shared_roi_transform"):  # C4: Res5ROIHeads
            x = heads._shared_roi_transform([features[f] for f in heads.in_features], proposal_boxes)
            return x.mean(dim=(2, 3))
        x = heads.box_pooler([features[f] for f in heads.box_in_features], proposal_boxes)  # FPN: StandardROIHeads
        return heads.box_head(x)

    @torch.inference_mode()
    def detect(self, images: Sequence[PreparedImage], timer: StageTimer | None = None) -> list[Detections]:
        """Run the detectron2 model stage by stage and select regions the bottom-up way."""
        model = self.model
        batched = [{"image": im.tensor.to(self.device), "height": im.height, "width": im.width} for im in images]
        with timed(timer, "trunk"):
            image_list = model.preprocess_image(batched)
            features = model.backbone(image_list.tensor)
        with timed(timer, "rpn"):
            proposals, _ = model.proposal_generator(image_list, features, None)
        with timed(timer, "roi_head"):
            boxes = [p.proposal_boxes for p in proposals]
            pooled = self._pool(features, boxes).float()
            probs, attr_probs = _probabilities(model.roi_heads.box_predictor, pooled, proposals)
        out, start = [], 0
        with timed(timer, "nms"):
            for im, b, p in zip(images, boxes, probs, strict=True):
                n = len(b)
                f = pooled[start : start + n]
                a = attr_probs[start : start + n] if attr_probs is not None else None
                start += n
                p = torch.cat([p[:, -1:], p[:, :-1]], dim=1).float()  # background first, as in Caffe
                rois = b.tensor.float()
                sel = select_bottom_up(rois, p, nms_iou=self.nms_thresh, conf_thresh=self.conf_thresh,
                                       min_boxes=self.min_boxes, max_boxes=self.max_boxes).keep  # fmt: skip
                h, w = im.tensor.shape[-2:]
                ratio = rois.new_tensor([im.width / w, im.height / h] * 2)
                scores, ids = p[sel, 1:].max(dim=1)
                attr_ids = attr_scores = None
                if a is not None:  # the last column is "no attribute"
                    best = a[sel, :-1].max(dim=1)
                    attr_ids, attr_scores = best.indices.cpu().numpy(), best.values.cpu().numpy()
                out.append(Detections(boxes=(rois[sel] * ratio).cpu().numpy(), features=f[sel].cpu().numpy(),
                                      class_ids=ids.cpu().numpy(), class_scores=scores.cpu().numpy(),
                                      attr_ids=attr_ids, attr_scores=attr_scores))  # fmt: skip
        return out


def _probabilities(predictor: Any, pooled: torch.Tensor, proposals: Sequence[Any]) -> tuple[Sequence[torch.Tensor], torch.Tensor | None]:
    """Class probabilities per image (detectron2's column order, background last) and attribute
    probabilities of all RoIs (``None`` without an attribute head)."""
    predictions = predictor(pooled)
    attr_probs = predictions[1].float().softmax(dim=-1) if len(predictions) == 3 else None
    if hasattr(predictor, "predict_probs") and len(predictions) == 2:
        return predictor.predict_probs(predictions, proposals), None
    probs = predictions[0].float().softmax(dim=-1)
    return probs.split([len(p) for p in proposals]), attr_probs


def create_detectron2_detector(
    *,
    weights: str | Path | None = None,
    device: torch.device | str = "cpu",
    config_file: str | Path | None = None,
    conf_thresh: float = 0.2,
    min_boxes: int = 10,
    max_boxes: int = 100,
    nms_thresh: float = 0.3,
    seed: int | None = None,
) -> Detectron2Detector:
    """Build the ``detectron2`` backend.

    Args:
        weights: local detectron2 checkpoint (required: a random detectron2 model is of no use).
        device: torch device.
        config_file: the detectron2 YAML config the checkpoint was trained with (required).
        conf_thresh / min_boxes / max_boxes / nms_thresh: bottom-up selection (§1.3).
        seed: accepted for a uniform call signature; unused (there is no random-init mode).

    Raises:
        RuntimeError: detectron2 is not installed (says how to install it).
        ValueError: ``weights`` or ``config_file`` missing.
        FileNotFoundError: a given file does not exist.
    """
    config, modeling, checkpoint = _import_detectron2()
    if config_file is None or weights is None:
        raise ValueError("the detectron2 backend needs config_file= (a detectron2 YAML) and weights= (a local checkpoint)")
    for p in (config_file, weights):
        if not Path(p).is_file():
            raise FileNotFoundError(f"{str(p)!r} does not exist; pass a local file")
    cfg = config.get_cfg()
    cfg.merge_from_file(str(config_file))
    cfg.MODEL.DEVICE = str(torch.device(device))
    cfg.MODEL.WEIGHTS = str(weights)
    cfg.freeze()
    model = modeling.build_model(cfg)
    checkpoint.DetectionCheckpointer(model).load(str(weights))
    return Detectron2Detector(model, cfg, weights_hash=weights_sha256(weights), device=device,
                              conf_thresh=conf_thresh, min_boxes=min_boxes, max_boxes=max_boxes, nms_thresh=nms_thresh)  # fmt: skip


register_detector("detectron2", create_detectron2_detector)

"""``torchvision-frcnn-r50-fpn``: torchvision's COCO Faster R-CNN v2 as a region-feature detector.

Runs the stages one by one (ENVIRONMENT.md §5.2, option 1): backbone -> RPN ->
RoI heads (class-specific regression, per-class NMS, COCO labels), then
**re-pools exactly the final regressed boxes** through the model's own
``box_roi_pool`` + ``box_head`` (``FastRCNNConvFCHead``, 1024-d). So every feature belongs to the box it is returned with; the
original bottom-up export pooled the raw RoIs instead, which this model's
regressed boxes are not.

Selection follows the bottom-up rule on the detections: keep scores >=
``conf_thresh``, at least ``min_boxes`` (top scores) and at most ``max_boxes``.

Padding: inputs are zero-padded (after normalisation) to a multiple of 32, as
torchvision does. A batch only ever holds images of one network size, so every
image is padded exactly as it would be alone: batching does not change features
beyond kernel rounding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.detection import fasterrcnn_resnet50_fpn_v2
from torchvision.models.detection.faster_rcnn import FasterRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.resnet import Bottleneck

from regionrank.extractors.detector import (
    Detections,
    PreparedImage,
    StageTimer,
    register_detector,
    rgb_to_tensor,
    timed,
    weights_sha256,
)

__all__ = ["TorchvisionFrcnnDetector", "TorchvisionPreprocessor", "create_torchvision_frcnn"]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_WEIGHTS_PREFIX = "torchvision:"


@dataclass(frozen=True)
class TorchvisionPreprocessor:
    """``GeneralizedRCNNTransform``'s normalise + resize, done in the loader workers; picklable.

    ``s = min(min_size / short, max_size / long)``; bilinear resize to
    ``floor(s * H) x floor(s * W)`` (torchvision's ``recompute_scale_factor`` rule).
    Batch padding to a multiple of 32 happens in the detector.
    """

    min_size: int = 800
    max_size: int = 1333

    def scale_for(self, width: int, height: int) -> float:
        return min(self.min_size / min(width, height), self.max_size / max(width, height))

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        s = self.scale_for(width, height)
        return max(1, int(height * s)), max(1, int(width * s))

    def __call__(self, rgb: np.ndarray) -> PreparedImage:
        x = rgb_to_tensor(rgb).div_(255.0)  # [3, H, W]
        height, width = rgb.shape[:2]
        x = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
        out_h, out_w = self.target_size(width, height)
        x = F.interpolate(x[None], size=(out_h, out_w), mode="bilinear", align_corners=False)[0]
        return PreparedImage(tensor=x.contiguous(), scale=self.scale_for(width, height), width=width, height=height)


class TorchvisionFrcnnDetector:
    """Faster R-CNN R50-FPN v2 (91 COCO ids, torchvision's category indexing) with re-pooled box features."""

    name = "torchvision-frcnn-r50-fpn"

    def __init__(
        self,
        model: FasterRCNN,
        *,
        weights_hash: str,
        device: torch.device | str = "cpu",
        min_size: int = 800,
        max_size: int = 1333,
        conf_thresh: float = 0.2,
        min_boxes: int = 10,
        max_boxes: int = 100,
        nms_thresh: float = 0.5,
    ) -> None:
        if not 0 < min_boxes <= max_boxes:
            raise ValueError(f"need 0 < min_boxes <= max_boxes; got {min_boxes}, {max_boxes}")
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        # Keep every candidate down to score 0 so the adaptive rule can fill min_boxes.
        self.model.roi_heads.score_thresh = 0.0
        self.model.roi_heads.nms_thresh = nms_thresh
        self.model.roi_heads.detections_per_img = max_boxes
        self.weights_hash = weights_hash
        self.conf_thresh, self.min_boxes, self.max_boxes = conf_thresh, min_boxes, max_boxes
        self._pre = TorchvisionPreprocessor(min_size, max_size)
        self.feature_dim = int(self.model.roi_heads.box_predictor.cls_score.in_features)
        self.amp_dtype = torch.bfloat16 if self.device.type == "cuda" else None
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        self.config: dict[str, Any] = {
            "detector": self.name,
            "min_size": min_size,
            "max_size": max_size,
            "conf_thresh": conf_thresh,
            "min_boxes": min_boxes,
            "max_boxes": max_boxes,
            "nms_thresh": nms_thresh,
            "feature_dim": self.feature_dim,
            "box_mode": "regressed-repooled",
            "roi_op": "multiscale-roialign-7x7",
            "amp": "bfloat16" if self.amp_dtype else None,
        }

    @property
    def preprocessor(self) -> TorchvisionPreprocessor:
        return self._pre

    @torch.inference_mode()
    def detect(self, images: Sequence[PreparedImage], timer: StageTimer | None = None) -> list[Detections]:
        """Detect and re-pool; images of equal size share a forward pass (padded to a multiple of 32 like torchvision)."""
        results: dict[int, Detections] = {}
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(im.shape_key, []).append(i)
        for idxs in groups.values():
            for i, d in zip(idxs, self._detect_group([images[i] for i in idxs], timer), strict=True):
                results[i] = d
        return [results[i] for i in range(len(images))]

    def _detect_group(self, images: Sequence[PreparedImage], timer: StageTimer | None) -> list[Detections]:
        model = self.model
        x = torch.stack([im.tensor for im in images]).to(self.device)  # [N, 3, H, W]
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (32 - w % 32) % 32, 0, (32 - h % 32) % 32))
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        image_list = ImageList(x, [(int(h), int(w))] * len(images))
        amp = torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype else torch.autocast("cpu", enabled=False)
        with amp:
            with timed(timer, "trunk"):
                feats = model.backbone(image_list.tensors)
            with timed(timer, "rpn"):
                proposals, _ = model.rpn(image_list, feats)
            with timed(timer, "roi_head"):
                dets, _ = model.roi_heads(feats, proposals, image_list.image_sizes)
                boxes = [d["boxes"] for d in dets]
                pooled = model.roi_heads.box_roi_pool(feats, boxes, image_list.image_sizes)
                box_feats = model.roi_heads.box_head(pooled).float()  # [sum n_i, 1024]
        out = []
        start = 0
        for im, d in zip(images, dets, strict=True):
            n = d["boxes"].shape[0]
            f = box_feats[start : start + n]
            start += n
            scores = d["scores"].float()
            keep = (scores >= self.conf_thresh).nonzero(as_tuple=True)[0]
            if keep.numel() < self.min_boxes:
                keep = torch.arange(min(self.min_boxes, n), device=scores.device)  # already score-sorted
            ratio = torch.tensor([im.width / w, im.height / h] * 2, device=scores.device)
            out.append(
                Detections(
                    boxes=(d["boxes"][keep].float() * ratio).cpu().numpy(),
                    features=f[keep].cpu().numpy(),
                    class_ids=d["labels"][keep].cpu().numpy(),
                    class_scores=scores[keep].cpu().numpy(),
                )
            )
        return out


def create_torchvision_frcnn(
    *,
    weights: str | Path | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    **cfg: Any,
) -> TorchvisionFrcnnDetector:
    """Build ``torchvision-frcnn-r50-fpn``.

    Args:
        weights: a local state-dict file of ``fasterrcnn_resnet50_fpn_v2``;
            ``"torchvision:COCO_V1"`` to use torchvision's weights API (downloads;
            only on a connected machine); ``None`` = seeded random init with
            zero-init residuals (tests; logs a warning).
        device: torch device.
        seed: seed of the random initialisation.
        **cfg: ``min_size``, ``max_size``, ``conf_thresh``, ``min_boxes``, ``max_boxes``, ``nms_thresh``.

    Raises:
        ValueError: unknown option or weights name.
        FileNotFoundError: ``weights`` file missing.
    """
    known = {"min_size", "max_size", "conf_thresh", "min_boxes", "max_boxes", "nms_thresh"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown torchvision-frcnn-r50-fpn option(s) {unknown}; known: {sorted(known | {'seed'})}")
    if isinstance(weights, str) and weights.startswith(TORCHVISION_WEIGHTS_PREFIX):
        from torchvision.models.detection import FasterRCNN_ResNet50_FPN_V2_Weights

        tag = weights[len(TORCHVISION_WEIGHTS_PREFIX) :]
        try:
            enum = FasterRCNN_ResNet50_FPN_V2_Weights[tag]
        except KeyError:
            raise ValueError(
                f"unknown torchvision weights {tag!r}; known: {[w.name for w in FasterRCNN_ResNet50_FPN_V2_Weights]}"
            ) from None
        model = fasterrcnn_resnet50_fpn_v2(weights=enum)
        return TorchvisionFrcnnDetector(model, weights_hash=f"torchvision:{enum}", device=device, **cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=91)
    if weights is None:
        logger.warning("torchvision-frcnn-r50-fpn: no weights given, random initialisation (seed %d)", seed)
        for m in model.backbone.body.modules():
            if isinstance(m, Bottleneck):
                torch.nn.init.zeros_(m.bn3.weight)
        weights_hash = f"random-init-seed-{seed}"
    else:
        state = torch.load(Path(weights), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"{str(weights)!r} does not fit fasterrcnn_resnet50_fpn_v2: missing {result.missing_keys[:10]}, "
                f"unexpected {result.unexpected_keys[:10]}"
            )
        weights_hash = weights_sha256(weights)
    return TorchvisionFrcnnDetector(model, weights_hash=weights_hash, device=device, **cfg)


register_detector("torchvision-frcnn-r50-fpn", create_torchvision_frcnn)

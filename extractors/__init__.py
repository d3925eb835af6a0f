"""regionrank extractors: image decoding, detector backends (registry), region selection, pooled region features.

Public API::

    list_detectors() -> list[str]
    get_detector(name, *, weights=None, device="cpu", **cfg) -> Detector
    extract(images, store, *, detector="butd-r101-c4", weights=None, device="cpu", ...,
            given_boxes=None) -> ExtractReport
    read_boxes_file(path) -> GivenBoxes          # JSON lines {"image": PATH_OR_ID, "boxes": [[x1, y1, x2, y2], ...]}

Backends: ``butd-r101-c4`` (bottom-up attention, the default), ``torchvision-frcnn-r50-fpn``,
``detectron2`` (only where detectron2 is installed) and ``ssd-mobilenet-coco`` (demo, real
pretrained weights from the ``demo`` extra).
"""

from regionrank.extractors.decode import DecodeLimits, ImageDecodeError, decode_image
from regionrank.extractors.detector import (
    BoxDescriber,
    Detections,
    Detector,
    PreparedImage,
    Preprocessor,
    StageTimer,
    config_hash,
    get_detector,
    list_detectors,
    register_detector,
)
from regionrank.extractors.given_boxes import GivenBoxes, read_boxes_file
from regionrank.extractors.pipeline import ExtractReport, extract, list_images

__all__ = [
    "BoxDescriber",
    "DecodeLimits",
    "Detections",
    "Detector",
    "ExtractReport",
    "GivenBoxes",
    "ImageDecodeError",
    "PreparedImage",
    "Preprocessor",
    "StageTimer",
    "config_hash",
    "decode_image",
    "extract",
    "get_detector",
    "list_detectors",
    "list_images",
    "read_boxes_file",
    "register_detector",
]

"""Human-readable names for detector class and attribute ids.

* COCO: the 90-id table of the TensorFlow object-detection label map
  (``mscoco_label_map.pbtxt``; 80 categories, ids with gaps), used by
  ``ssd-mobilenet-coco``. Id 0 is the whole-image ``"scene"`` region that
  backend adds.
* Visual Genome (bottom-up attention): 1600 object classes and 400 attributes,
  read from the vocabulary files that ship with the bottom-up checkpoints
  (``objects_vocab.txt``, ``attributes_vocab.txt``; one entry per line, line
  ``k`` is id ``k + 1``, id 0 being background / "no attribute"). They are not
  bundled here: pass their paths.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SCENE_CLASS_ID", "SCENE_LABEL", "coco_label_names", "load_vg_attributes", "load_vg_objects"]

SCENE_CLASS_ID = 0
SCENE_LABEL = "scene"

_COCO = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
    8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign",
    14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep",
    21: "cow", 22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe", 27: "backpack",
    28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee", 35: "skis",
    36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat", 40: "baseball glove",
    41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass",
    47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza",
    60: "donut", 61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed",
    67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 74: "mouse", 75: "remote",
    76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster", 81: "sink",
    82: "refrigerator", 84: "book", 85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear",
    89: "hair drier", 90: "toothbrush",
}  # fmt: skip


def coco_label_names(*, include_scene: bool = True) -> dict[int, str]:
    """COCO category id -> name (80 entries with gaps up to 90), plus ``0: "scene"`` by default."""
    names = dict(_COCO)
    if include_scene:
        names = {SCENE_CLASS_ID: SCENE_LABEL, **names}
    return names


def _load_vocab(path: str | Path | None, what: str, expected: int) -> dict[int, str]:
    if path is None:
        raise FileNotFoundError(
            f"no {what} vocabulary given: pass the path of the bottom-up '{what}_vocab.txt' "
            f"({expected} lines; it ships with the bottom-up-attention checkpoints and is not bundled)"
        )
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} vocabulary {str(p)!r} does not exist; pass the path of '{what}_vocab.txt'")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln]
    if len(lines) != expected:
        raise ValueError(f"{what} vocabulary {str(p)!r} has {len(lines)} entries; expected {expected} (one per line)")
    # A line may hold synonyms separated by commas ("man,person"); the first is the name.
    return {i + 1: ln.split(",")[0].strip() for i, ln in enumerate(lines)}


def load_vg_objects(path: str | Path | None, *, expected: int = 1600) -> dict[int, str]:
    """Visual Genome object class id (1..1600) -> name, from ``objects_vocab.txt``.

    Raises:
        FileNotFoundError: ``path`` is ``None`` or missing.
        ValueError: the file does not have ``expected`` non-empty lines.
    """
    return _load_vocab(path, "objects", expected)


def load_vg_attributes(path: str | Path | None, *, expected: int = 400) -> dict[int, str]:
    """Visual Genome attribute id (1..400) -> name, from ``attributes_vocab.txt``.

    Raises:
        FileNotFoundError: ``path`` is ``None`` or missing.
        ValueError: the file does not have ``expected`` non-empty lines.
    """
    return _load_vocab(path, "attributes", expected)

"""Helpers shared by the ``butd-r101-c4`` reference tests (airsplay and MILVLG fixtures)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torchvision.ops import box_iou

from regionrank.extractors.detector import PreparedImage

REFERENCE = Path(__file__).resolve().parents[2] / "fixtures" / "reference"
IMAGES = ["000000000802", "000000011813"]
FEATURE_REL_TOL = 1e-4
PROB_ABS_TOL = 1e-4
BOX_IOU, BOX_FRACTION = 0.99, 0.99
SMALL = {"min_size": 160, "max_size": 256, "rpn_post_nms_top_n": 300}


def weights_module() -> ModuleType:
    """``tests/fixtures/reference/butd_weights.py`` (numpy only), which rebuilds the fixture weights."""
    spec = importlib.util.spec_from_file_location("butd_weights", REFERENCE / "butd_weights.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return dict(z)


def prepared(z: dict[str, np.ndarray]) -> PreparedImage:
    """The fixture's network input as a :class:`PreparedImage` (original size from the scale)."""
    rgb_h, rgb_w = (round(s / float(z["scale"])) for s in z["input"].shape[1:])
    return PreparedImage(tensor=torch.from_numpy(z["input"]), scale=float(z["scale"]), width=rgb_w, height=rgb_h)


def best_iou(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """For every box of ``ours``, its best IoU with a box of ``ref``."""
    return box_iou(torch.from_numpy(ours), torch.from_numpy(ref)).max(dim=1).values.numpy()


def rel_error(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Relative L2 error per row."""
    return np.linalg.norm(ours - ref, axis=1) / np.linalg.norm(ref, axis=1)

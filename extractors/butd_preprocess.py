"""Caffe pre-processing of the bottom-up detector (ALGORITHMS.md §1.2): BGR, means, one cv2-exact bilinear resize."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from regionrank.extractors.detector import PreparedImage, rgb_to_tensor

__all__ = ["CAFFE_PIXEL_MEANS_BGR", "CaffePreprocessor", "resize_like_cv2"]

CAFFE_PIXEL_MEANS_BGR = (102.9801, 115.9465, 122.7717)


@dataclass(frozen=True)
class CaffePreprocessor:
    """Caffe pre-processing of the bottom-up reference (ALGORITHMS.md §1.2); picklable.

    ``s = min_size / min(H, W)``, or ``max_size / max(H, W)`` when
    ``round(s * max(H, W)) > max_size``; both axes resized by ``s`` with bilinear
    interpolation (no antialiasing, like ``cv2.INTER_LINEAR``) to
    ``round(s * H) x round(s * W)`` as ``cv2.resize(fx=s, fy=s)`` does it
    (:func:`resize_like_cv2`).

    Args:
        min_size: target shorter side (600).
        max_size: cap on the longer side (1000).
        pixel_means_bgr: subtracted per channel, BGR order.
    """

    min_size: int = 600
    max_size: int = 1000
    pixel_means_bgr: tuple[float, float, float] = CAFFE_PIXEL_MEANS_BGR

    def scale_for(self, width: int, height: int) -> float:
        short, long = min(width, height), max(width, height)
        s = self.min_size / short
        if round(s * long) > self.max_size:
            s = self.max_size / long
        return s

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        s = self.scale_for(width, height)
        return max(1, round(s * height)), max(1, round(s * width))

    def __call__(self, rgb: np.ndarray) -> PreparedImage:
        bgr = rgb_to_tensor(rgb, bgr=True)  # [3, H, W]
        height, width = rgb.shape[:2]
        bgr -= torch.tensor(self.pixel_means_bgr, dtype=torch.float32).view(3, 1, 1)
        out_h, out_w = self.target_size(width, height)
        if (out_h, out_w) != (height, width):
            bgr = resize_like_cv2(bgr, self.scale_for(width, height), out_h, out_w)
        return PreparedImage(tensor=bgr.contiguous(), scale=self.scale_for(width, height), width=width, height=height)


def _cv2_taps(n_in: int, n_out: int, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) / scale - 0.5).clamp(min=0.0)
    i0 = src.floor()
    frac = (src - i0).float()
    i0 = i0.long().clamp(max=n_in - 1)
    return i0, (i0 + 1).clamp(max=n_in - 1), frac


def resize_like_cv2(image: torch.Tensor, scale: float, out_h: int, out_w: int) -> torch.Tensor:
    """Bilinear resize of ``FloatTensor[C, H, W]`` as ``cv2.resize(im, None, fx=scale, fy=scale, INTER_LINEAR)``.

    The reference pre-processing (``generate_tsv.py``, MILVLG) maps output pixel
    ``i`` to source ``(i + 0.5) / scale - 0.5`` (clamped at 0 and at the last
    pixel) with the *requested* scale, and rounds the output size;
    ``F.interpolate(size=...)`` maps with ``in / out`` instead, which moved
    pixels by up to a source pixel (max abs difference 100 on a 640 x 424 image).
    """
    y0, y1, fy = _cv2_taps(image.shape[1], out_h, scale)
    x0, x1, fx = _cv2_taps(image.shape[2], out_w, scale)
    rows = image[:, y0] * (1 - fy)[None, :, None] + image[:, y1] * fy[None, :, None]
    return rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx

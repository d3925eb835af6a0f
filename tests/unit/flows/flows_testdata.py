"""Helpers of the flows tests that run the real stages: a tiny bottom-up config and noise photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

TINY_BUTD = {"blocks": [1, 1, 1, 1], "rpn_pre_nms_top_n": 200, "rpn_post_nms_top_n": 30, "min_size": 64, "max_size": 96,
             "min_boxes": 2, "max_boxes": 6}
"""``butd-r101-c4`` options of a network small enough for unit tests (random init, seed 0)."""


def write_photos(folder: Path, n: int) -> list[Path]:
    """``n`` seeded 96x72 noise PNGs ``img0.png``... in ``folder`` (distinct bytes, one network input size)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)).save(paths[-1])
    return paths

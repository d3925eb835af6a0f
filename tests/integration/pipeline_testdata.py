"""Helpers of the integration tests: deadline polling, tiny synthetic photos, a tiny bottom-up config."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw


def wait_for(predicate: Callable[[], Any], *, timeout: float = 120.0, interval: float = 0.25, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value; raise TimeoutError with the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}; last observed: {last!r}")


def stop_process_group(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM the process group a test started (``start_new_session=True``); SIGKILL it if it lingers."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def make_images(folder: Path, n: int, *, seed: int, size: tuple[int, int] = (96, 72), start: int = 0) -> list[Path]:
    """Tiny synthetic photos: coloured rectangles and ellipses on a noisy background (distinct bytes each)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        im = Image.fromarray(arr)
        d = ImageDraw.Draw(im)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, size[0] // 2)), int(rng.integers(0, size[1] // 2))
            x1, y1 = x0 + int(rng.integers(10, size[0] // 2)), y0 + int(rng.integers(10, size[1] // 2))
            colour = tuple(int(c) for c in rng.integers(0, 255, 3))
            (d.rectangle if rng.random() < 0.5 else d.ellipse)([x0, y0, x1, y1], fill=colour)
        p = folder / f"img{i:03d}.png"
        im.save(p)
        paths.append(p)
    return paths


TINY_BUTD = {"blocks": [1, 1, 1, 1], "rpn_pre_nms_top_n": 200, "rpn_post_nms_top_n": 30, "min_size": 64, "max_size": 96,
             "min_boxes": 2, "max_boxes": 6}

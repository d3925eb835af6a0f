"""One real Prefect API server per test run (a `prefect server start` process on a free loopback port).

Tests talk to it through PREFECT_API_URL; the flow heartbeat is off. `wait_for` polls
with a deadline instead of sleeping a fixed time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
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


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from flows.server import start_local_server

    home = tmp_path_factory.mktemp("prefect-server-home")
    server = start_local_server(home, timeout=240)
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    old = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url  # for subprocesses started by tests
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield server
    finally:
        if old is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = old
        server.stop()


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

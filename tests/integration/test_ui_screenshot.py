"""The Prefect UI, for real: a finished pipeline run rendered by headless Chromium."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.integration
def test_prefect_ui_screenshot_of_a_finished_run(tmp_path: Path) -> None:
    if shutil.which("chromium") is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    pytest.importorskip("cv2", reason="the demo extra provides the pretrained detector this run uses")
    from PIL import Image

    from regionrank.flows.screenshot import screenshot_pipeline_run

    shots = screenshot_pipeline_run(tmp_path / "shots", ROOT / "examples" / "photos", tmp_path / "work")
    for shot in shots:
        im = Image.open(shot).convert("L")
        assert im.size == (1600, 1000)
        # a rendered page, not a blank frame: many distinct grey levels
        assert len(np.unique(np.asarray(im))) > 50, shot

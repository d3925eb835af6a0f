"""render_heatmap on a synthetic image: size, pixels changed inside the attended box only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from regionrank.index.heatmap import render_heatmap
from regionrank.index.search import SearchHit, WordExplanation


def make_hit(width: int = 200, height: int = 100) -> SearchHit:
    boxes = np.array([[10, 10, 60, 50], [120, 40, 190, 90], [70, 5, 100, 30]], np.float32)
    weights = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8]], np.float32)  # word 0 -> box 0, word 1 -> box 2
    expl = [WordExplanation("dog", 0, tuple(boxes[0]), 0.9, 0.8), WordExplanation("ball", 2, tuple(boxes[2]), 0.8, 0.7)]
    return SearchHit(image_id="x", uri="x.png", score=1.0, stage_scores={}, explanation=expl, boxes=boxes,
                     word_region_weights=weights, width=width, height=height)


@pytest.fixture
def image_path(tmp_path: Path) -> Path:
    p = tmp_path / "img.png"
    Image.new("RGB", (200, 100), (40, 40, 40)).save(p)
    return p


def test_grid_has_one_panel_per_word_and_colours_the_top_box(tmp_path: Path, image_path: Path) -> None:
    out = tmp_path / "out" / "hm.png"
    fig = render_heatmap(image_path, make_hit(), out, panel_width=200, columns=2)
    assert out.is_file() and Image.open(out).size == fig.size == (400, 100 + 18)
    a = np.asarray(fig).astype(int)
    top = 18
    # panel 0 (word "dog"): inside box 0 changed, far from every box unchanged
    assert np.abs(a[top + 35, 35] - 40).sum() > 60
    assert (a[top + 80, 100] == 40).all()
    # the weight-0.1 box is drawn fainter than the top box; the weight-0 box not at all
    inside_weak = np.abs(a[top + 70, 150] - 40).sum()
    assert 0 < inside_weak < np.abs(a[top + 35, 35] - 40).sum()
    assert (a[top + 20, 85] == 40).all()
    # panel 1 (word "ball"): box 2 coloured, box 0 untouched
    assert np.abs(a[top + 20, 200 + 85] - 40).sum() > 60
    assert (a[top + 35, 200 + 35] == 40).all()


def test_boxes_are_rescaled_to_the_file_size(tmp_path: Path) -> None:
    p = tmp_path / "small.png"
    Image.new("RGB", (100, 50), (40, 40, 40)).save(p)  # half the size the boxes were detected on
    fig = render_heatmap(p, make_hit(), None, layout="overlay", panel_width=100)
    a = np.asarray(fig).astype(int)
    assert fig.size == (100, 50 + 18)
    assert np.abs(a[18 + 17, 17] - 40).sum() > 60  # centre of box 0 at half scale
    assert (a[18 + 45, 50] == 40).all()


def test_errors(tmp_path: Path, image_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.png"):
        render_heatmap(tmp_path / "missing.png", make_hit())
    bad = make_hit()
    bad.word_region_weights = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="expected \\(2, 3\\)"):
        render_heatmap(image_path, bad)
    with pytest.raises(ValueError, match="layout"):
        render_heatmap(image_path, make_hit(), layout="mosaic")  # type: ignore[arg-type]

"""Render a search hit as a per-word attention figure (PIL), like the SCAN project page: for each
query word, the image with the regions it attends to filled with an alpha proportional to the weight,
outlined, and labelled with the word."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from regionrank.index.search.types import SearchHit

__all__ = ["render_heatmap"]

_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]
_LABEL_H = 18


def render_heatmap(
    image_path: str | Path,
    hit: SearchHit,
    out_path: str | Path | None = None,
    *,
    layout: Literal["grid", "overlay"] = "grid",
    top_regions: int = 3,
    max_alpha: int = 170,
    panel_width: int = 384,
    columns: int = 3,
) -> Image.Image:
    """Draw each query word's attended regions of ``hit`` on its image.

    Args:
        image_path: the image file of ``hit`` (any format PIL reads).
        hit: a :class:`index.search.SearchHit` (uses ``explanation``, ``boxes``, ``word_region_weights``,
            ``width`` / ``height``; boxes are in original pixels and are rescaled if the file differs).
        out_path: where to save the figure (format from the suffix), or ``None`` to only return it.
        layout: ``"grid"`` = one panel per word; ``"overlay"`` = every word on one panel, one colour each.
        top_regions: regions drawn per word (the highest weights; zero weights are never drawn).
        max_alpha: fill alpha (0-255) of the region with the word's highest weight; others scale linearly.
        panel_width: width in pixels of each panel (the image is resized, aspect kept).
        columns: panels per row in the grid layout.

    Returns:
        The figure as an RGB ``PIL.Image.Image``.

    Raises:
        FileNotFoundError: ``image_path`` does not exist.
        ValueError: ``hit`` has no words, or its weights do not match its boxes.
    """
    from PIL import Image, ImageDraw, ImageFont

    path = Path(image_path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist (hit {hit.image_id!r}, uri {hit.uri!r})")
    weights = np.asarray(hit.word_region_weights, dtype=np.float32)
    n_words = len(hit.explanation)
    if n_words == 0:
        raise ValueError(f"hit {hit.image_id!r} has no query words to draw")
    if weights.shape != (n_words, len(hit.boxes)):
        raise ValueError(f"word_region_weights has shape {weights.shape}; expected ({n_words}, {len(hit.boxes)})")
    with Image.open(path) as im:
        base = im.convert("RGB")
    src_w, src_h = (hit.width, hit.height) if hit.width > 0 and hit.height > 0 else base.size
    scale = panel_width / base.width
    panel_h = max(1, round(base.height * scale))
    base = base.resize((panel_width, panel_h), Image.Resampling.BILINEAR)
    sx, sy = panel_width / src_w, panel_h / src_h
    font = ImageFont.load_default()

    def draw_word(canvas: Image.Image, w: int, color: tuple[int, int, int]) -> None:
        overlay = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
        d = ImageDraw.Draw(overlay)
        row = weights[w]
        peak = float(row.max()) if row.size else 0.0
        if peak <= 0:
            return
        for r in np.argsort(-row, kind="stable")[:top_regions]:
            if row[r] <= 0:
                continue
            x1, y1, x2, y2 = hit.boxes[r]
            box = (x1 * sx, y1 * sy, x2 * sx, y2 * sy)
            alpha = int(round(max_alpha * float(row[r]) / peak))
            d.rectangle(box, fill=(*color, alpha), outline=(*color, 255), width=2)
            d.text((box[0] + 3, box[1] + 2), hit.explanation[w].token, fill=(255, 255, 255, 255), font=font)
        canvas.alpha_composite(overlay)

    if layout == "overlay":
        canvas = base.convert("RGBA")
        for w in range(n_words):
            draw_word(canvas, w, _PALETTE[w % len(_PALETTE)])
        fig = Image.new("RGB", (panel_width, panel_h + _LABEL_H), (255, 255, 255))
        fig.paste(canvas.convert("RGB"), (0, _LABEL_H))
        ImageDraw.Draw(fig).text((4, 3), " ".join(e.token for e in hit.explanation), fill=(0, 0, 0), font=font)
    elif layout == "grid":
        cols = max(1, min(columns, n_words))
        rows = math.ceil(n_words / cols)
        fig = Image.new("RGB", (cols * panel_width, rows * (panel_h + _LABEL_H)), (255, 255, 255))
        for w in range(n_words):
            canvas = base.convert("RGBA")
            draw_word(canvas, w, _PALETTE[0])
            x, y = (w % cols) * panel_width, (w // cols) * (panel_h + _LABEL_H)
            fig.paste(canvas.convert("RGB"), (x, y + _LABEL_H))
            e = hit.explanation[w]
            ImageDraw.Draw(fig).text((x + 4, y + 3), f"{e.token}  ({e.weight:.2f})", fill=(0, 0, 0), font=font)
    else:
        raise ValueError(f"layout must be 'grid' or 'overlay'; got {layout!r}")
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        fig.save(out_path)
    return fig

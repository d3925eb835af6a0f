"""Given boxes: regions a user supplies instead of detecting them (MILVLG's ``bbox_feats`` mode).

Holds the boxes file reader (:func:`read_boxes_file`, JSON lines ``{"image": PATH_OR_IMAGE_ID,
"boxes": [[x1, y1, x2, y2], ...]}`` in original pixels), :class:`GivenBoxes` (those entries matched
to a run's inputs by path or by content id), the check of each box against its image
(:func:`check_boxes_inside`) and the provenance of a record described from given boxes
(:func:`given_boxes_config`). :func:`extractors.extract` uses them; detectors describe the boxes
(:class:`extractors.detector.BoxDescriber`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "GivenBoxes",
    "GivenBoxesEntry",
    "as_given_boxes",
    "check_boxes_inside",
    "given_boxes_config",
    "read_boxes_file",
]

_IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")
_FORMAT = '{"image": PATH_OR_IMAGE_ID, "boxes": [[x1, y1, x2, y2], ...]}'


def _norm_path(path: str | os.PathLike[str]) -> str:
    return os.path.normpath(os.path.abspath(os.fspath(path)))


@dataclass(frozen=True)
class GivenBoxesEntry:
    """The boxes given for one image.

    Attributes:
        key: the image as the user named it: a path (relative to the current folder, or absolute)
            or a content id (64 hex characters, :func:`storage.image_id_for_bytes`).
        boxes: ``float32[n, 4]`` ``(x1, y1, x2, y2)`` in original-image pixels, ``x1 <= x2``, ``y1 <= y2``.
        where: where the entry came from, for error messages (``boxes.jsonl:3``).
    """

    key: str
    boxes: np.ndarray = field(repr=False)
    where: str

    @property
    def is_image_id(self) -> bool:
        return bool(_IMAGE_ID.match(self.key))


def _boxes_array(value: Any, where: str) -> np.ndarray:
    """``value`` as ``float32[n, 4]`` with finite, non-negative, ordered corners (else a ValueError naming ``where``)."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: boxes must be a list of [x1, y1, x2, y2] numbers; got {value!r}") from exc
    if arr.size == 0:
        raise ValueError(f"{where}: no boxes given; give at least one [x1, y1, x2, y2] or leave this image out")
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{where}: boxes must be a list of [x1, y1, x2, y2]; got shape {arr.shape}")
    for i, box in enumerate(arr):
        values = [float(v) for v in box]
        if not np.isfinite(box).all() or (box < 0).any():
            raise ValueError(f"{where}: box {i} {values} has a negative or non-finite coordinate; "
                             f"boxes are original-image pixels, 0 <= x1 <= x2 <= width")  # fmt: skip
        if box[2] < box[0] or box[3] < box[1]:
            raise ValueError(f"{where}: box {i} {values} is inverted (x2 < x1 or y2 < y1); "
                             f"write each box as [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2")  # fmt: skip
    return arr.astype(np.float32)


class GivenBoxes:
    """Boxes given for some images of a run, looked up by input path or by content id.

    A path key matches an input whose path names the same file (both made absolute, so
    ``photos/a.jpg`` and ``./photos/a.jpg`` agree); a 64-hex key also matches the input
    whose bytes have that id.

    Raises:
        ValueError: two entries name the same image (both named).
    """

    def __init__(self, entries: Iterable[GivenBoxesEntry]) -> None:
        self.entries: list[GivenBoxesEntry] = []
        self._by_path: dict[str, GivenBoxesEntry] = {}
        self._by_id: dict[str, GivenBoxesEntry] = {}
        for e in entries:
            table, name = (self._by_id, e.key) if e.is_image_id else (self._by_path, _norm_path(e.key))
            if name in table:
                raise ValueError(f"{e.where}: image {e.key!r} already has boxes at {table[name].where}; "
                                 f"give each image once, with all its boxes in one list")  # fmt: skip
            table[name] = e
            self.entries.append(e)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str | os.PathLike[str], Any]) -> GivenBoxes:
        """From ``{path or image id: boxes}`` (each ``float[n, 4]`` in original pixels), every box checked.

        Raises:
            ValueError: a malformed, empty, negative or inverted box list (the key and box named).
        """
        entries = []
        for k, v in mapping.items():
            key = os.fspath(k)
            where = f"given_boxes[{key!r}]"
            entries.append(GivenBoxesEntry(key, _boxes_array(v, where), where))
        return cls(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, uri: str, image_id: str) -> GivenBoxesEntry | None:
        """The entry naming the input at ``uri`` (by path) or with content id ``image_id``, if any."""
        return self._by_path.get(_norm_path(uri)) or self._by_id.get(image_id)

    def path_keys_not_in(self, uris: Sequence[str]) -> list[GivenBoxesEntry]:
        """Entries named by a path that is none of ``uris`` (content ids are left out: only reading the files tells)."""
        inputs = {_norm_path(u) for u in uris}
        return [e for e in self._by_path.values() if _norm_path(e.key) not in inputs]

    def require_paths_among(self, uris: Sequence[str]) -> None:
        """Refuse entries named by a path that is none of ``uris`` (the run's inputs).

        Raises:
            ValueError: the first such entry (where it came from, and how many more), with the fix.
        """
        stray = self.path_keys_not_in(uris)
        if stray:
            more = f" (and {len(stray) - 1} more)" if len(stray) > 1 else ""
            raise ValueError(f"{stray[0].where}: image {stray[0].key!r} is not among the images of this run{more}; "
                             f"pass its folder or file to the run too, or correct its path (relative to the current "
                             f"folder, or absolute)")  # fmt: skip

    def restricted_to(self, uris: Sequence[str]) -> GivenBoxes:
        """The entries that may concern ``uris``: their path keys, and every content id (a chunk of a run)."""
        inputs = {_norm_path(u) for u in uris}
        return GivenBoxes(e for e in self.entries if e.is_image_id or _norm_path(e.key) in inputs)


def read_boxes_file(path: str | os.PathLike[str]) -> GivenBoxes:
    """Read a boxes file: one JSON object per line, ``{"image": PATH_OR_IMAGE_ID, "boxes": [[x1, y1, x2, y2], ...]}``.

    Boxes are in original-image pixels (``0 <= x1 <= x2``, ``0 <= y1 <= y2``; the upper bounds,
    width and height, are checked when the image is read: :func:`check_boxes_inside`). Blank
    lines are skipped. Image paths are taken relative to the current folder, as image arguments are.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a line that is not such an object, a bad box, or an image named twice
            (the message names the file, the line and the value, and says how to fix it).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"boxes file {str(p)!r} does not exist; pass a JSON-lines file of {_FORMAT}")
    entries = []
    with open(p, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{p}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg}); each line must be {_FORMAT}") from exc
            if not isinstance(obj, dict) or set(obj) != {"image", "boxes"}:
                got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
                raise ValueError(f"{where}: expected an object with exactly the keys 'image' and 'boxes', got {got}; "
                                 f"each line must be {_FORMAT}")  # fmt: skip
            if not isinstance(obj["image"], str) or not obj["image"]:
                raise ValueError(f"{where}: 'image' must be an image path or a 64-hex image id; got {obj['image']!r}")
            entries.append(GivenBoxesEntry(obj["image"], _boxes_array(obj["boxes"], where), where))
    return GivenBoxes(entries)


def as_given_boxes(given: GivenBoxes | Mapping[str | os.PathLike[str], Any] | None) -> GivenBoxes | None:
    """``given`` as :class:`GivenBoxes` (a mapping is checked), or ``None`` when nothing is given."""
    if given is None:
        return None
    out = given if isinstance(given, GivenBoxes) else GivenBoxes.from_mapping(given)
    return out if len(out) else None


def check_boxes_inside(entry: GivenBoxesEntry, width: int, height: int, uri: str) -> None:
    """Every box of ``entry`` lies in the ``width x height`` image at ``uri`` (``x2 <= width``, ``y2 <= height``).

    Raises:
        ValueError: the first box outside, with the image size and the fix.
    """
    outside = np.nonzero((entry.boxes[:, 2] > width) | (entry.boxes[:, 3] > height))[0]
    if len(outside):
        i = int(outside[0])
        raise ValueError(
            f"{entry.where}: box {i} {[float(v) for v in entry.boxes[i]]} lies outside image {uri!r} "
            f"({width}x{height} pixels after EXIF orientation); give boxes in original-image pixels, "
            f"x2 <= {width} and y2 <= {height}"
        )


def given_boxes_config(config: Mapping[str, Any], boxes: np.ndarray) -> dict[str, Any]:
    """A detector's ``config`` for records described from ``boxes``: its ``config_hash`` says so and names the boxes."""
    digest = hashlib.sha256(np.ascontiguousarray(boxes, dtype="<f4").tobytes()).hexdigest()
    return {**config, "box_mode": "given-boxes", "given_boxes_sha256": digest}

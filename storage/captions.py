"""The caption table and readers for the caption formats people hold.

* Karpathy split JSON (``dataset_coco.json``, ``dataset_flickr30k.json``): one entry per
  image with ``filename``, ``split`` and ``sentences[].raw``.
* SCAN precomp captions: ``{split}_caps.txt`` with five consecutive lines per image and
  ``{split}_ids.txt`` with the image ids.

Captions point at images by content hash (``image_id``). When the image files are at
hand their bytes are hashed; otherwise a namespaced external id is used, the same one
the feature importers use, so captions and imported features line up.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from regionrank.storage.hashing import external_image_id, image_id_for_file
from regionrank.storage.records import Caption
from regionrank.storage.schema import CAPTION_TABLE_SCHEMA

__all__ = ["read_caption_table", "read_karpathy_json", "read_scan_captions", "write_caption_table"]


def _missing(path: Path, what: str) -> FileNotFoundError:
    return FileNotFoundError(f"{what} not found: {path}; check the path (and the dataset folder layout)")


def read_karpathy_json(
    path: str | os.PathLike[str],
    *,
    images_root: str | os.PathLike[str] | None = None,
    splits: Iterable[str] | None = None,
    namespace: str | None = None,
) -> list[Caption]:
    """Read a Karpathy split JSON into caption rows.

    Args:
        path: ``dataset_coco.json`` / ``dataset_flickr30k.json`` (or a subset in that format).
        images_root: folder holding the images (``filepath/filename`` or ``filename`` inside it).
            When given, each image's id is the sha256 of its bytes, matching the region store;
            images missing from the folder raise.
        splits: keep only these splits (``train``, ``restval``, ``val``, ``test``); all by default.
        namespace: namespace for external ids when ``images_root`` is None (default: the
            JSON's ``dataset`` field, e.g. ``coco``); the feature importers use the same ids.

    Returns:
        Captions in file order; ``caption_id`` is the JSON's ``sentid`` (or ``<imgid>_<k>``).

    Raises:
        FileNotFoundError: the JSON, or an image under ``images_root``, is missing.
        ValueError: the JSON is not in Karpathy format.
    """
    p = Path(path)
    if not p.is_file():
        raise _missing(p, "Karpathy caption JSON")
    try:
        data = json.loads(p.read_text())
        images = data["images"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{p} is not a Karpathy split JSON (expected an object with an 'images' list): {exc}") from exc
    keep = set(splits) if splits is not None else None
    ns = namespace or str(data.get("dataset", p.stem))
    root = Path(images_root) if images_root is not None else None
    out: list[Caption] = []
    for entry in images:
        split = str(entry.get("split", ""))
        if keep is not None and split not in keep:
            continue
        filename = str(entry["filename"])
        if root is not None:
            candidates = [root / str(entry.get("filepath", "")) / filename, root / filename]
            img_path = next((c for c in candidates if c.is_file()), None)
            if img_path is None:
                raise _missing(candidates[-1], f"image for {filename!r}")
            image_id = image_id_for_file(img_path)
        else:
            image_id = external_image_id(ns, entry.get("cocoid", entry.get("imgid", filename)))
        for k, sent in enumerate(entry.get("sentences", [])):
            cap_id = str(sent.get("sentid", f"{entry.get('imgid', filename)}_{k}"))
            out.append(Caption(image_id=image_id, caption_id=cap_id, text=str(sent["raw"]).strip(), split=split, filename=filename))
    return out


def read_scan_captions(folder: str | os.PathLike[str], split: str, *, namespace: str, captions_per_image: int = 5) -> list[Caption]:
    """Read SCAN precomp captions ``{split}_caps.txt`` (+ ``{split}_ids.txt``).

    Caption j belongs to image j // captions_per_image. Image ids come from
    ``{split}_ids.txt`` (one per image, or one per caption as some dumps have) and are
    turned into external ids with ``namespace``; without an ids file the image's index
    is used.

    Raises:
        FileNotFoundError: ``{split}_caps.txt`` is missing.
        ValueError: the caption count is not a multiple of ``captions_per_image``, or the
            ids file disagrees with it.
    """
    root = Path(folder)
    caps_path = root / f"{split}_caps.txt"
    if not caps_path.is_file():
        raise _missing(caps_path, f"SCAN caption file for split {split!r}")
    lines = [ln.strip() for ln in caps_path.read_text().splitlines() if ln.strip()]
    if len(lines) % captions_per_image:
        raise ValueError(
            f"{caps_path} has {len(lines)} captions, not a multiple of {captions_per_image} per image; "
            f"pass the right captions_per_image"
        )
    n_images = len(lines) // captions_per_image
    ids_path = root / f"{split}_ids.txt"
    if ids_path.is_file():
        raw_ids = [ln.strip() for ln in ids_path.read_text().splitlines() if ln.strip()]
        if len(raw_ids) == len(lines) and n_images != len(lines):
            raw_ids = raw_ids[::captions_per_image]
        if len(raw_ids) != n_images:
            raise ValueError(f"{ids_path} has {len(raw_ids)} ids but {caps_path} describes {n_images} images")
    else:
        raw_ids = [str(i) for i in range(n_images)]
    return [
        Caption(
            image_id=external_image_id(namespace, raw_ids[j // captions_per_image]),
            caption_id=f"{split}_{j}",
            text=text,
            split=split,
        )
        for j, text in enumerate(lines)
    ]


def write_caption_table(path: str | os.PathLike[str], captions: Sequence[Caption]) -> Path:
    """Write captions to a Parquet caption table, atomically. Caption ids must be unique."""
    seen: set[str] = set()
    for c in captions:
        if c.caption_id in seen:
            raise ValueError(f"duplicate caption_id {c.caption_id!r} (image_id={c.image_id!r}); caption ids must be unique")
        seen.add(c.caption_id)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "image_id": [c.image_id for c in captions],
            "caption_id": [c.caption_id for c in captions],
            "text": [c.text for c in captions],
            "split": [c.split for c in captions],
            "filename": [c.filename for c in captions],
        },
        schema=CAPTION_TABLE_SCHEMA,
    )
    tmp = p.with_name(p.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, p)
    return p


def read_caption_table(path: str | os.PathLike[str], *, split: str | Iterable[str] | None = None) -> list[Caption]:
    """Read a caption table written by :func:`write_caption_table`, optionally one split or several."""
    p = Path(path)
    if not p.is_file():
        raise _missing(p, "caption table")
    t = pq.read_table(p)
    rows = t.to_pylist()
    keep = {split} if isinstance(split, str) else (set(split) if split is not None else None)
    return [
        Caption(r["image_id"], r["caption_id"], r["text"], r.get("split") or "", r.get("filename") or "")
        for r in rows
        if keep is None or (r.get("split") or "") in keep
    ]

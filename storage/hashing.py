"""Content-hash image ids: the sha256 of an image file's bytes, as lowercase hex.

The id depends only on the bytes, so the same photo under two names or in two
folders is stored once, and a re-run over the same inputs writes nothing new.
Features imported from formats that carry no image bytes get a namespaced id
(:func:`external_image_id`), documented as such.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["external_image_id", "image_id_for_bytes", "image_id_for_file", "is_image_id"]

_CHUNK = 1 << 20


def image_id_for_bytes(data: bytes) -> str:
    """Return the sha256 hex digest of ``data`` (64 lowercase hex characters)."""
    return hashlib.sha256(data).hexdigest()


def image_id_for_file(path: str | os.PathLike[str]) -> str:
    """Return the sha256 hex digest of the file at ``path``, read in 1 MiB chunks.

    Raises:
        FileNotFoundError: the file does not exist.
        PermissionError: the file cannot be read.
    """
    h = hashlib.sha256()
    with open(Path(path), "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def external_image_id(namespace: str, original_id: str | int) -> str:
    """Id for features imported without their image bytes (SCAN precomp, TSV, npz).

    ``sha256("<namespace>:<original_id>")``. Prefer :func:`image_id_for_file` when the
    image files are at hand: importers accept an images folder for that reason.
    """
    if not namespace:
        raise ValueError("namespace must be non-empty, e.g. 'coco' or 'f30k'")
    return hashlib.sha256(f"{namespace}:{original_id}".encode()).hexdigest()


def is_image_id(value: str) -> bool:
    """True when ``value`` looks like a sha256 hex digest."""
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)

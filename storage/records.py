"""Record types that cross stage boundaries.

Extractors produce :class:`RegionRecord`; encoders read them and produce
:class:`ImageEmbeddingRecord` / :class:`CaptionEmbeddingRecord`; the index reads
those and a query encoder produces :class:`QueryEmbedding`. Nothing else (no
tensors, no models) travels between stages. Arrays are numpy; validation of
shapes and dtypes happens here, once, with errors that name the offending
record and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

__all__ = [
    "Caption",
    "CaptionEmbeddingRecord",
    "ImageEmbeddingRecord",
    "QueryEmbedding",
    "RegionRecord",
]


def _as_matrix(name: str, value: Any, cols: int | None, owner: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 2 or (cols is not None and arr.shape[1] != cols):
        want = f"(n, {cols})" if cols is not None else "(n, D)"
        raise ValueError(f"{name} must have shape {want}; got {tuple(arr.shape)} for {owner}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(
            f"{name} must be a floating-point array; got dtype {arr.dtype} for {owner} "
            f"(cast with .astype(np.float32))"
        )
    return arr


def _as_vector(name: str, value: Any, n: int, dtype: type, owner: str) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one per region); got {tuple(arr.shape)} for {owner}")
    return arr.astype(dtype, copy=False)


@dataclass(eq=False)
class RegionRecord:
    """Detected regions of one image.

    Args:
        image_id: sha256 hex digest of the image file's bytes (see ``storage.hashing``).
        uri: where the image came from (path or URI); informational.
        width: original image width in pixels.
        height: original image height in pixels.
        boxes: ``float32[n, 4]`` ``(x1, y1, x2, y2)`` in original-image pixels.
        features: ``float[n, D]`` pooled region features; stored as float16.
        class_ids: ``int32[n]`` detector class ids, or ``None`` when the detector has no classes.
        class_scores: ``float32[n]`` confidences of ``class_ids``, or ``None``.
        attr_ids: ``int32[n]`` attribute ids (bottom-up: 400 Visual Genome attributes), or ``None``.
        attr_scores: ``float32[n]`` confidences of ``attr_ids``, or ``None``.
        detector / config_hash / weights_hash: provenance, filled by the shard writer when empty.
        created_at: filled by the shard writer when ``None``.
    """

    image_id: str
    uri: str
    width: int
    height: int
    boxes: np.ndarray
    features: np.ndarray
    class_ids: np.ndarray | None = None
    class_scores: np.ndarray | None = None
    attr_ids: np.ndarray | None = None
    attr_scores: np.ndarray | None = None
    detector: str = ""
    config_hash: str = ""
    weights_hash: str = ""
    created_at: datetime | None = None

    def __post_init__(self) -> None:
        owner = f"image_id={self.image_id!r}"
        if not isinstance(self.image_id, str) or not self.image_id:
            raise ValueError(f"image_id must be a non-empty string; got {self.image_id!r} (uri={self.uri!r})")
        self.boxes = _as_matrix("boxes", self.boxes, 4, owner).astype(np.float32, copy=False)
        self.features = _as_matrix("features", self.features, None, owner)
        if self.boxes.shape[0] != self.features.shape[0]:
            raise ValueError(
                f"boxes and features disagree on the region count for {owner}: "
                f"{self.boxes.shape[0]} boxes vs {self.features.shape[0]} feature rows; "
                f"pool exactly one feature row per box"
            )
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"width and height must be positive; got {self.width}x{self.height} for {owner}")
        self.width, self.height = int(self.width), int(self.height)
        n = self.boxes.shape[0]
        self.class_ids = _as_vector("class_ids", self.class_ids, n, np.int32, owner)
        self.class_scores = _as_vector("class_scores", self.class_scores, n, np.float32, owner)
        self.attr_ids = _as_vector("attr_ids", self.attr_ids, n, np.int32, owner)
        self.attr_scores = _as_vector("attr_scores", self.attr_scores, n, np.float32, owner)

    @property
    def num_regions(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])


@dataclass(eq=False)
class ImageEmbeddingRecord:
    """Encoded regions of one image, in the joint image-text space.

    Args:
        image_id: the image's content hash (same id as its :class:`RegionRecord`).
        uri: where the image came from.
        boxes: ``float32[n, 4]`` region boxes in original pixels (kept for explanations).
        region_embeddings: ``float[n, E]`` L2-normalised region vectors; stored as float16.
        global_embedding: ``float[E]`` L2-normalised image vector, or ``None``.
        width / height: original image size in pixels (0 when unknown).
        labels: optional human-readable label per region (zero-shot label-grounded encoders).
    """

    image_id: str
    uri: str
    boxes: np.ndarray
    region_embeddings: np.ndarray
    global_embedding: np.ndarray | None = None
    width: int = 0
    height: int = 0
    labels: list[str] | None = None
    encoder: str = ""
    encoder_hash: str = ""
    created_at: datetime | None = None

    def __post_init__(self) -> None:
        owner = f"image_id={self.image_id!r}"
        self.boxes = _as_matrix("boxes", self.boxes, 4, owner).astype(np.float32, copy=False)
        self.region_embeddings = _as_matrix("region_embeddings", self.region_embeddings, None, owner)
        if self.boxes.shape[0] != self.region_embeddings.shape[0]:
            raise ValueError(
                f"boxes and region_embeddings disagree on the region count for {owner}: "
                f"{self.boxes.shape[0]} vs {self.region_embeddings.shape[0]}"
            )
        if self.global_embedding is not None:
            g = np.asarray(self.global_embedding)
            if g.shape != (self.region_embeddings.shape[1],):
                raise ValueError(
                    f"global_embedding must have shape ({self.region_embeddings.shape[1]},); "
                    f"got {tuple(g.shape)} for {owner}"
                )
            self.global_embedding = g
        if self.labels is not None and len(self.labels) != self.boxes.shape[0]:
            raise ValueError(f"labels must have one entry per region for {owner}; got {len(self.labels)}")

    @property
    def num_regions(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def embed_dim(self) -> int:
        return int(self.region_embeddings.shape[1])


@dataclass(eq=False)
class CaptionEmbeddingRecord:
    """Encoded words of one caption.

    Args:
        caption_id: unique caption id (string).
        image_id: the image the caption describes ("" when unknown).
        text: the raw caption.
        tokens: the tokens that ``word_embeddings`` rows belong to (after any trimming).
        word_embeddings: ``float[L, E]`` L2-normalised; stored as float16.
        global_embedding: ``float[E]`` or ``None``.
    """

    caption_id: str
    image_id: str
    text: str
    tokens: list[str]
    word_embeddings: np.ndarray
    global_embedding: np.ndarray | None = None
    encoder: str = ""
    encoder_hash: str = ""
    created_at: datetime | None = None

    def __post_init__(self) -> None:
        owner = f"caption_id={self.caption_id!r}"
        self.word_embeddings = _as_matrix("word_embeddings", self.word_embeddings, None, owner)
        if len(self.tokens) != self.word_embeddings.shape[0]:
            raise ValueError(
                f"tokens and word_embeddings disagree for {owner}: "
                f"{len(self.tokens)} tokens vs {self.word_embeddings.shape[0]} rows"
            )
        if self.global_embedding is not None:
            g = np.asarray(self.global_embedding)
            if g.shape != (self.word_embeddings.shape[1],):
                raise ValueError(
                    f"global_embedding must have shape ({self.word_embeddings.shape[1]},); "
                    f"got {tuple(g.shape)} for {owner}"
                )
            self.global_embedding = g

    @property
    def embed_dim(self) -> int:
        return int(self.word_embeddings.shape[1])


@dataclass(eq=False)
class QueryEmbedding:
    """A text query encoded for search (produced by a query encoder, consumed by ``index``).

    Args:
        text: the query as typed.
        tokens: one entry per row of ``word_embeddings``.
        word_embeddings: ``float32[L, E]`` L2-normalised word vectors.
        global_embedding: ``float32[E]`` L2-normalised sentence vector, or ``None``.
    """

    text: str
    tokens: list[str]
    word_embeddings: np.ndarray
    global_embedding: np.ndarray | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.word_embeddings = _as_matrix("word_embeddings", self.word_embeddings, None, f"query {self.text!r}")
        if len(self.tokens) != self.word_embeddings.shape[0]:
            raise ValueError(
                f"tokens and word_embeddings disagree for query {self.text!r}: "
                f"{len(self.tokens)} vs {self.word_embeddings.shape[0]}"
            )


@dataclass(frozen=True)
class Caption:
    """One row of the caption table."""

    image_id: str
    caption_id: str
    text: str
    split: str = ""
    filename: str = ""

"""The embedding source an index is built from (a ``storage.ImageEmbeddingStore`` /
``CaptionEmbeddingStore``, seen through the :class:`EmbeddingSource` protocol), and the gathering of its
vectors into matrices for building and updating indexes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Protocol, Sequence

import numpy as np

from regionrank.index.regions import RegionSegment

__all__ = ["MULTI_KIND", "Corpus", "EmbeddingSource", "GatheredVectors", "gather_vectors", "open_embedding_source"]

Corpus = Literal["images", "captions"]
MULTI_KIND: dict[str, str] = {"images": "region", "captions": "word"}
"""The multi-vector index kind of each corpus: image regions, caption words."""


class EmbeddingSource(Protocol):
    """What the index reads from ``storage.ImageEmbeddingStore`` / ``CaptionEmbeddingStore``."""

    @property
    def root(self) -> str: ...

    def ids(self) -> list[str]: ...

    def get(self, keys: Sequence[str]) -> list[Any]: ...

    def iter_records(self, *, batch_size: int = 256) -> Any: ...


def open_embedding_source(source: Any, corpus: Corpus) -> EmbeddingSource:
    """An :class:`EmbeddingSource` for ``source``: the store itself, or the store at a path.

    Args:
        source: an object with ``get`` and ``iter_records`` (a store), or the path of a store.
        corpus: ``"images"`` opens an ``ImageEmbeddingStore``, ``"captions"`` a ``CaptionEmbeddingStore``.

    Raises:
        TypeError: ``source`` is neither a store nor a path.
    """
    if hasattr(source, "get") and hasattr(source, "iter_records"):
        return source  # type: ignore[no-any-return]
    if isinstance(source, (str, Path)):
        from regionrank import storage
        cls = storage.ImageEmbeddingStore if corpus == "images" else storage.CaptionEmbeddingStore
        return cls(source)  # type: ignore[no-any-return]
    raise TypeError(
        f"embeddings must be a storage.ImageEmbeddingStore / CaptionEmbeddingStore or a path to one; "
        f"got {type(source).__name__}"
    )


@dataclass
class GatheredVectors:
    """Item vectors gathered from a store (float16 to halve peak memory; cast per chunk when used)."""

    item_ids: list[str] = field(default_factory=list)
    global_vecs: list[np.ndarray | None] = field(default_factory=list)
    multi_vecs: list[np.ndarray] = field(default_factory=list)
    encoder: str = ""
    encoder_hash: str = ""
    images: list[Any] = field(default_factory=list)  # (boxes, uri, width, height) per image, for the region matrix

    def add(self, item_id: str, global_vec: np.ndarray | None, multi: np.ndarray, encoder: str, encoder_hash: str) -> None:
        self.item_ids.append(item_id)
        self.global_vecs.append(None if global_vec is None else np.asarray(global_vec, dtype=np.float16))
        self.multi_vecs.append(np.asarray(multi, dtype=np.float16))
        self.encoder = self.encoder or encoder
        self.encoder_hash = self.encoder_hash or encoder_hash

    def region_segment(self, int_ids: np.ndarray) -> RegionSegment:
        """The gathered images as a region-matrix segment (image corpus only)."""
        seg = RegionSegment()
        for i, multi, (boxes, uri, width, height) in zip(int_ids, self.multi_vecs, self.images, strict=True):
            seg.add(int(i), multi, boxes, uri, width, height)
        return seg

    @property
    def n_multi(self) -> list[int]:
        return [m.shape[0] for m in self.multi_vecs]

    def global_matrix(self) -> np.ndarray:
        missing = [i for i, g in zip(self.item_ids, self.global_vecs, strict=True) if g is None]
        if missing:
            raise ValueError(
                f"{len(missing)} items have no global_embedding (first: {missing[0]!r}); build with "
                f"kind=('region',) / ('word',) or re-encode with an encoder that emits global vectors"
            )
        return np.stack(self.global_vecs) if self.global_vecs else np.zeros((0, 0), np.float16)  # type: ignore[arg-type]

    def multi_matrix(self) -> np.ndarray:
        return np.concatenate(self.multi_vecs) if self.multi_vecs else np.zeros((0, 0), np.float16)


def _record_vectors(rec: Any, corpus: Corpus) -> tuple[str, np.ndarray | None, np.ndarray]:
    if corpus == "images":
        return rec.image_id, rec.global_embedding, rec.region_embeddings
    return rec.caption_id, rec.global_embedding, rec.word_embeddings


def gather_vectors(
    source: EmbeddingSource, corpus: Corpus, item_ids: Sequence[str] | None, chunk: int = 2048
) -> GatheredVectors:
    """Read the vectors of ``item_ids`` (default: every item, in store order) from ``source``.

    Raises:
        KeyError: an id is not in the store.
    """
    out = GatheredVectors()
    if item_ids is None:
        records: Iterable[Any] = source.iter_records(batch_size=256)
    else:
        records = (r for s in range(0, len(item_ids), chunk) for r in source.get(list(item_ids[s : s + chunk])))
    for rec in records:
        item_id, g, multi = _record_vectors(rec, corpus)
        out.add(item_id, g, multi, getattr(rec, "encoder", ""), getattr(rec, "encoder_hash", ""))
        if corpus == "images":
            out.images.append((rec.boxes, rec.uri, rec.width, rec.height))
    return out

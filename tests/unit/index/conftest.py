"""Fixtures for the index tests (data helpers live in ``index_testdata.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from index_testdata import Scene, unit, write_images

from regionrank import index
from regionrank.storage import CaptionEmbeddingStore, ImageEmbeddingStore
from regionrank.storage.records import CaptionEmbeddingRecord, ImageEmbeddingRecord


@pytest.fixture
def scene() -> Scene:
    return Scene(seed=0)


@pytest.fixture
def image_store(tmp_path: Path, scene: Scene) -> tuple[ImageEmbeddingStore, list[ImageEmbeddingRecord]]:
    records = scene.images(600)
    return write_images(tmp_path / "emb", records), records


@pytest.fixture
def caption_store(
    tmp_path: Path, scene: Scene
) -> tuple[CaptionEmbeddingStore, list[CaptionEmbeddingRecord], list[ImageEmbeddingRecord]]:
    """Two captions per image of a 200-image scene: each names 2-4 of the image's concepts."""
    records = []
    images = scene.images(200, start=10_000)
    for img in images:
        for j in range(2):
            labels = scene.rng.choice(img.labels, size=min(len(img.labels), int(scene.rng.integers(2, 5))), replace=False)
            words = unit(scene.prototypes[[int(t[1:]) for t in labels]] + 0.1 * scene.rng.standard_normal((len(labels), scene.dim)))
            records.append(CaptionEmbeddingRecord(
                caption_id=f"{img.image_id}-{j}", image_id=img.image_id, text=" ".join(labels), tokens=list(labels),
                word_embeddings=words.astype(np.float32), global_embedding=unit(words.mean(0)).astype(np.float32),
            ))
    store = CaptionEmbeddingStore(tmp_path / "caps")
    with store.writer(encoder="synthetic", encoder_hash="0", embed_dim=scene.dim) as w:
        for rec in records:
            w.write(rec)
    return CaptionEmbeddingStore(tmp_path / "caps"), records, images


@pytest.fixture
def built(tmp_path: Path, image_store) -> tuple[Path, ImageEmbeddingStore, list[ImageEmbeddingRecord]]:
    """The 600-image scene with auto-chosen (Flat) global and region indexes."""
    store, records = image_store
    index.build_indexes(store, tmp_path / "idx")
    return tmp_path / "idx", store, records

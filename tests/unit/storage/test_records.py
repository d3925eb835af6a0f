"""Record types: dtype coercion, shape checks, and errors that name the offending record."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from regionrank.storage import Caption, CaptionEmbeddingRecord, ImageEmbeddingRecord, QueryEmbedding, RegionRecord

IMAGE_ID = "ab" * 32


def _boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, 50, size=(n, 2))
    return np.concatenate([xy, xy + rng.uniform(1, 40, size=(n, 2))], axis=1)  # float64 on purpose


def test_region_record_coerces_dtypes_and_keeps_features(rng: np.random.Generator) -> None:
    feats = rng.standard_normal((3, 8))  # float64: the codec casts to float16, the record keeps it
    rec = RegionRecord(
        image_id=IMAGE_ID, uri="a.jpg", width=np.int64(640), height=480.0, boxes=_boxes(rng, 3), features=feats,
        class_ids=np.array([1, 2, 3], np.int64), class_scores=[0.5, 0.25, 1.0], attr_ids=[4, 5, 6], attr_scores=None,
    )
    assert rec.boxes.dtype == np.float32 and rec.boxes.shape == (3, 4)
    assert rec.features is not None and rec.features.dtype == np.float64
    np.testing.assert_array_equal(rec.features, feats)
    assert rec.class_ids is not None and rec.class_ids.dtype == np.int32
    assert rec.class_scores is not None and rec.class_scores.dtype == np.float32
    assert rec.attr_ids is not None and rec.attr_ids.dtype == np.int32 and rec.attr_scores is None
    assert (rec.width, rec.height) == (640, 480) and type(rec.width) is int and type(rec.height) is int
    assert (rec.num_regions, rec.feature_dim) == (3, 8)


def test_region_record_with_no_regions_is_valid() -> None:
    rec = RegionRecord(IMAGE_ID, "empty.jpg", 10, 10, np.zeros((0, 4)), np.zeros((0, 16), np.float32))
    assert (rec.num_regions, rec.feature_dim) == (0, 16)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"image_id": ""}, ValueError, r"image_id must be a non-empty string; got '' \(uri='a.jpg'\)"),
        ({"boxes": np.zeros((2, 3))}, ValueError, r"boxes must have shape \(n, 4\); got \(2, 3\) for image_id='(ab)+'"),
        ({"width": 0}, ValueError, r"width and height must be positive; got 0x20"),
        ({"height": -3}, ValueError, r"got 30x-3"),
        ({"attr_scores": np.zeros((2, 1))}, ValueError, r"attr_scores must have shape \(2,\) \(one per region\); got \(2, 1\)"),
        ({"boxes": np.zeros((2, 4), np.int32)}, TypeError, r"boxes must be a floating-point array; got dtype int32"),
    ],
)
def test_region_record_errors_name_the_bad_value(change: dict, error: type, match: str) -> None:
    fields = {"image_id": IMAGE_ID, "uri": "a.jpg", "width": 30, "height": 20,
              "boxes": np.zeros((2, 4), np.float32), "features": np.zeros((2, 8), np.float32)}
    with pytest.raises(error, match=match):
        RegionRecord(**{**fields, **change})


def test_image_embedding_record_checks_counts_and_global_width(rng: np.random.Generator) -> None:
    regs = rng.standard_normal((4, 6)).astype(np.float32)
    rec = ImageEmbeddingRecord(IMAGE_ID, "a.jpg", _boxes(rng, 4), regs, global_embedding=regs[0].tolist(),
                               labels=["dog", "cat", "sky", "tree"])
    assert (rec.num_regions, rec.embed_dim) == (4, 6) and rec.boxes.dtype == np.float32
    assert isinstance(rec.global_embedding, np.ndarray) and rec.global_embedding.shape == (6,)
    with pytest.raises(ValueError, match=r"boxes and region_embeddings disagree .*image_id='(ab)+'.*4 vs 3"):
        ImageEmbeddingRecord(IMAGE_ID, "a.jpg", _boxes(rng, 4), regs[:3])
    with pytest.raises(ValueError, match=r"global_embedding must have shape \(6,\); got \(5,\)"):
        ImageEmbeddingRecord(IMAGE_ID, "a.jpg", _boxes(rng, 4), regs, global_embedding=np.zeros(5))
    with pytest.raises(ValueError, match=r"labels must have one entry per region .*got 2"):
        ImageEmbeddingRecord(IMAGE_ID, "a.jpg", _boxes(rng, 4), regs, labels=["dog", "cat"])


def test_caption_embedding_record_checks_tokens_and_global_width(rng: np.random.Generator) -> None:
    words = rng.standard_normal((3, 5)).astype(np.float32)
    rec = CaptionEmbeddingRecord("c1", IMAGE_ID, "a red car", ["a", "red", "car"], words, global_embedding=np.ones(5))
    assert rec.embed_dim == 5
    with pytest.raises(ValueError, match=r"tokens and word_embeddings disagree for caption_id='c1': 2 tokens vs 3 rows"):
        CaptionEmbeddingRecord("c1", IMAGE_ID, "a red car", ["red", "car"], words)
    with pytest.raises(ValueError, match=r"global_embedding must have shape \(5,\); got \(1, 5\) for caption_id='c1'"):
        CaptionEmbeddingRecord("c1", IMAGE_ID, "a red car", ["a", "red", "car"], words, global_embedding=np.ones((1, 5)))
    with pytest.raises(TypeError, match=r"word_embeddings must be a floating-point array; got dtype int64"):
        CaptionEmbeddingRecord("c1", IMAGE_ID, "a red car", ["a", "red", "car"], np.ones((3, 5), np.int64))


def test_query_embedding_names_the_query_and_has_independent_extras() -> None:
    q1 = QueryEmbedding("red car", ["red", "car"], np.ones((2, 4), np.float32))
    q2 = QueryEmbedding("blue car", ["blue", "car"], np.ones((2, 4), np.float32))
    q1.extras["k"] = 1
    assert q2.extras == {}
    with pytest.raises(ValueError, match=r"tokens and word_embeddings disagree for query 'red car': 1 vs 2"):
        QueryEmbedding("red car", ["red"], np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"word_embeddings must have shape \(n, D\); got \(4,\) for query 'red car'"):
        QueryEmbedding("red car", ["red", "car"], np.ones(4, np.float32))


def test_caption_is_a_frozen_value() -> None:
    c = Caption(IMAGE_ID, "c1", "a dog")
    assert c == Caption(IMAGE_ID, "c1", "a dog", split="", filename="")
    assert hash(c) == hash(Caption(IMAGE_ID, "c1", "a dog"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(c, "text", "a cat")

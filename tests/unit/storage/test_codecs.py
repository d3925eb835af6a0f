"""Codecs: record <-> Arrow batch round trips, float16 error bounds, range checks, optional columns."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest

from regionrank.storage import (
    CAPTION_EMBEDDING_SCHEMA_V1,
    IMAGE_EMBEDDING_SCHEMA_V1,
    REGION_SCHEMA_V1,
    CaptionEmbeddingRecord,
    ImageEmbeddingRecord,
    RegionRecord,
)
from regionrank.storage.codecs import CAPTION_EMBEDDINGS, IMAGE_EMBEDDINGS, REGIONS

F16_MAX = float(np.finfo(np.float16).max)  # 65504
F16_REL = 2.0**-11  # round-to-nearest relative error of float16 (10 stored mantissa bits)
F16_SUBNORMAL_ABS = 2.0**-25  # half the smallest float16 subnormal step


def _region(rng: np.random.Generator, i: int, n: int, dim: int, classes: bool) -> RegionRecord:
    xy = rng.uniform(0, 300, size=(n, 2)).astype(np.float32)
    return RegionRecord(
        image_id=f"{i:064x}", uri=f"img{i}.jpg", width=640, height=480,
        boxes=np.concatenate([xy, xy + rng.uniform(1, 80, size=(n, 2)).astype(np.float32)], axis=1),
        features=(rng.standard_normal((n, dim)) * 10.0 ** rng.uniform(-6, 4, size=(n, dim))).astype(np.float32),
        class_ids=rng.integers(0, 1601, n) if classes else None, class_scores=rng.random(n) if classes else None,
        attr_ids=rng.integers(0, 401, n) if classes else None, attr_scores=rng.random(n) if classes else None,
        detector="det", config_hash="cfg", weights_hash="w",
    )


def test_region_round_trip_within_float16_error_bound(rng: np.random.Generator) -> None:
    dim = 12
    recs = [_region(rng, 0, 5, dim, True), _region(rng, 1, 0, dim, False), _region(rng, 2, 7, dim, False)]
    recs[2].class_ids = np.arange(7, dtype=np.int32)  # one optional column present, its neighbours absent
    batch = REGIONS.encode(recs, dim)
    assert batch.schema.equals(REGION_SCHEMA_V1) and batch.num_rows == 3
    assert batch.column("num_regions").to_pylist() == [5, 0, 7]
    assert batch.column("class_ids").is_null().to_pylist() == [False, True, False]
    back = REGIONS.decode(batch, dim)
    for orig, got in zip(recs, back):
        assert got.image_id == orig.image_id and (got.uri, got.width, got.height) == (orig.uri, 640, 480)
        assert got.features.dtype == np.float16 and got.features.shape == (orig.num_regions, dim)
        np.testing.assert_array_equal(got.boxes, orig.boxes)  # float32 is stored exactly
        err = np.abs(got.features.astype(np.float64) - orig.features.astype(np.float64))
        assert np.all(err <= np.maximum(np.abs(orig.features) * F16_REL, F16_SUBNORMAL_ABS))
        np.testing.assert_array_equal(got.features, orig.features.astype(np.float16))
        for name in ("class_ids", "class_scores", "attr_ids", "attr_scores"):
            want, have = getattr(orig, name), getattr(got, name)
            assert (want is None) == (have is None), name
            if want is not None:
                np.testing.assert_array_equal(have, want)
                assert have.dtype == want.dtype, name
        assert (got.detector, got.config_hash, got.weights_hash) == ("det", "cfg", "w")
    assert back[1].boxes.shape == (0, 4) and back[1].features.shape == (0, dim)


def test_created_at_is_filled_with_utc_now_only_when_missing(rng: np.random.Generator) -> None:
    given = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    a, b = _region(rng, 0, 2, 4, False), _region(rng, 1, 2, 4, False)
    a.created_at = given
    before = datetime.now(timezone.utc)
    back = REGIONS.decode(REGIONS.encode([a, b], 4), 4)
    assert back[0].created_at == given
    assert back[1].created_at is not None and back[1].created_at >= before.replace(microsecond=0)
    assert back[1].created_at.tzinfo is not None


@pytest.mark.parametrize(("value", "match"), [(F16_MAX * 1.01, r"beyond float16 range \(max \|x\| = 6\.6"),
                                               (np.nan, r"NaN or inf"), (-np.inf, r"NaN or inf")])
def test_unstorable_features_are_refused_naming_the_record(rng: np.random.Generator, value: float, match: str) -> None:
    bad = _region(rng, 9, 3, 4, False)
    bad.features[1, 2] = value
    with pytest.raises(ValueError, match=rf"features of image_id='0+9' .*{match}|{match}.*image_id='0+9'"):
        REGIONS.encode([_region(rng, 1, 2, 4, False), bad], 4)


def test_float16_max_itself_is_storable(rng: np.random.Generator) -> None:
    rec = _region(rng, 0, 2, 4, False)
    rec.features[0, 0], rec.features[1, 3] = F16_MAX, -F16_MAX
    back = REGIONS.decode(REGIONS.encode([rec], 4), 4)[0]
    assert back.features[0, 0] == F16_MAX and back.features[1, 3] == -F16_MAX


def test_regions_decode_a_batch_without_optional_columns(rng: np.random.Generator) -> None:
    batch = REGIONS.encode([_region(rng, i, 3, 4, True) for i in range(2)], 4)
    keep = [n for n in batch.schema.names if n not in ("class_ids", "class_scores", "attr_ids", "attr_scores", "uri")]
    old = pa.RecordBatch.from_arrays([batch.column(n) for n in keep], names=keep)
    back = REGIONS.decode(old, 4)
    assert [r.image_id for r in back] == [f"{i:064x}" for i in range(2)]
    assert all(r.class_ids is None and r.attr_scores is None and r.uri == "" for r in back)


def test_image_embedding_round_trip(rng: np.random.Generator) -> None:
    dim = 6
    recs = [
        ImageEmbeddingRecord(f"{i:064x}", f"i{i}.jpg", rng.uniform(0, 9, (n, 4)), rng.standard_normal((n, dim)).astype(np.float32),
                             global_embedding=rng.standard_normal(dim) if i == 0 else None, width=64, height=32,
                             labels=[f"l{j}" for j in range(n)] if i == 1 else None, encoder="enc", encoder_hash="h")
        for i, n in enumerate((3, 2, 0))
    ]
    batch = IMAGE_EMBEDDINGS.encode(recs, dim)
    assert batch.schema.equals(IMAGE_EMBEDDING_SCHEMA_V1)
    back = IMAGE_EMBEDDINGS.decode(batch, dim)
    for orig, got in zip(recs, back):
        assert got.region_embeddings.dtype == np.float16 and got.region_embeddings.shape == (orig.num_regions, dim)
        np.testing.assert_array_equal(got.region_embeddings, orig.region_embeddings.astype(np.float16))
        np.testing.assert_array_equal(got.boxes, orig.boxes)
        assert got.labels == orig.labels and (got.width, got.height, got.encoder, got.encoder_hash) == (64, 32, "enc", "h")
    assert back[0].global_embedding is not None and back[0].global_embedding.shape == (dim,)
    np.testing.assert_array_equal(back[0].global_embedding, np.asarray(recs[0].global_embedding).astype(np.float16))
    assert back[1].global_embedding is None
    assert [IMAGE_EMBEDDINGS.key_of(r) for r in back] == [r.image_id for r in recs]
    assert IMAGE_EMBEDDINGS.dim_of(back[0]) == dim


def test_caption_embedding_round_trip_counts_words(rng: np.random.Generator) -> None:
    dim = 5
    recs = [CaptionEmbeddingRecord(f"c{i}", "ab" * 32, " ".join(toks), toks, rng.standard_normal((len(toks), dim)),
                                   global_embedding=rng.standard_normal(dim) if i else None)
            for i, toks in enumerate((["a", "dog"], ["two", "red", "cars"], []))]
    batch = CAPTION_EMBEDDINGS.encode(recs, dim)
    assert batch.schema.equals(CAPTION_EMBEDDING_SCHEMA_V1)
    assert batch.column("num_words").to_pylist() == [2, 3, 0]
    back = CAPTION_EMBEDDINGS.decode(batch, dim)
    for orig, got in zip(recs, back):
        assert (got.caption_id, got.image_id, got.text, got.tokens) == (orig.caption_id, orig.image_id, orig.text, orig.tokens)
        np.testing.assert_array_equal(got.word_embeddings, orig.word_embeddings.astype(np.float16))
        assert got.word_embeddings.shape == (len(orig.tokens), dim)
    assert back[0].global_embedding is None and back[1].global_embedding is not None
    assert [CAPTION_EMBEDDINGS.key_of(r) for r in back] == ["c0", "c1", "c2"]


def test_codecs_describe_their_shard_kind() -> None:
    assert [(c.kind, c.prefix, c.key, c.matrix_column) for c in (REGIONS, IMAGE_EMBEDDINGS, CAPTION_EMBEDDINGS)] == [
        ("regions", "regions", "image_id", "features"),
        ("image_embeddings", "images", "image_id", "region_embeddings"),
        ("caption_embeddings", "captions", "caption_id", "word_embeddings"),
    ]
    for codec in (REGIONS, IMAGE_EMBEDDINGS, CAPTION_EMBEDDINGS):
        assert codec.matrix_column in codec.schema.names and codec.key in codec.schema.names
        assert codec.producer_column in codec.schema.names

"""Shard stores: round trips, atomic publish, resume, lookups, bad input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from regionrank.storage import (
    CAPTION_EMBEDDING_SCHEMA_V1,
    IMAGE_EMBEDDING_SCHEMA_V1,
    REGION_SCHEMA_V1,
    SCHEMA_VERSION,
    CaptionEmbeddingRecord,
    CaptionEmbeddingStore,
    CorruptShardError,
    ImageEmbeddingRecord,
    ImageEmbeddingStore,
    RegionRecord,
    RegionStore,
    StoreLockedError,
)


def make_region(rng: np.random.Generator, i: int, n: int = 5, dim: int = 16, classes: bool = True) -> RegionRecord:
    xy = rng.uniform(0, 50, size=(n, 2)).astype(np.float32)
    wh = rng.uniform(1, 40, size=(n, 2)).astype(np.float32)
    return RegionRecord(
        image_id=f"{i:064x}", uri=f"img{i}.jpg", width=120, height=90,
        boxes=np.concatenate([xy, xy + wh], axis=1), features=rng.standard_normal((n, dim)).astype(np.float32),
        class_ids=rng.integers(0, 1601, n) if classes else None, class_scores=rng.random(n) if classes else None,
        attr_ids=rng.integers(0, 401, n) if classes else None, attr_scores=rng.random(n) if classes else None,
    )


def write(store: RegionStore, records, **kw) -> object:
    kw.setdefault("rows_per_shard", 4)
    with store.writer(detector="det", config_hash="cfg1", weights_hash="w1", feature_dim=records[0].feature_dim, **kw) as w:
        for r in records:
            w.write(r)
    return w


def _names_types(schema: pa.Schema) -> list[tuple[str, str]]:
    return [(f.name, str(f.type)) for f in schema]


def test_region_round_trip_keeps_every_field(tmp_path: Path, rng: np.random.Generator) -> None:
    recs = [make_region(rng, i, n=3 + i % 4, classes=i % 2 == 0) for i in range(10)]
    w = write(RegionStore(tmp_path), recs)
    assert w.stats.written == 10 and len(w.stats.shards) == 3
    store = RegionStore(tmp_path)
    got = store.get([r.image_id for r in recs[::-1]])
    for want, have in zip(recs[::-1], got):
        assert have.image_id == want.image_id and have.uri == want.uri
        assert (have.width, have.height, have.num_regions) == (want.width, want.height, want.num_regions)
        np.testing.assert_array_equal(have.boxes, want.boxes)
        assert have.features.dtype == np.float16
        np.testing.assert_array_equal(have.features, want.features.astype(np.float16))  # f16 is bit-exact
        for name in ("class_ids", "class_scores", "attr_ids", "attr_scores"):
            a, b = getattr(want, name), getattr(have, name)
            assert (a is None) == (b is None), name
            if a is not None:
                np.testing.assert_array_equal(b, a.astype(b.dtype))
        assert (have.detector, have.config_hash, have.weights_hash) == ("det", "cfg1", "w1")
        assert have.created_at is not None


def test_schema_and_metadata_on_disk(tmp_path: Path, rng: np.random.Generator) -> None:
    write(RegionStore(tmp_path), [make_region(rng, i, dim=24) for i in range(3)])
    shard = sorted(tmp_path.glob("regions-*.parquet"))[0]
    assert shard.name == "regions-00000.parquet"
    schema = pq.read_schema(shard)
    assert _names_types(schema) == _names_types(REGION_SCHEMA_V1)
    assert schema.metadata[b"regionrank.schema_version"] == str(SCHEMA_VERSION).encode()
    assert schema.metadata[b"regionrank.dim"] == b"24"
    assert pq.ParquetFile(shard).metadata.row_group(0).column(6).compression == "ZSTD"


def test_rerun_writes_nothing_new_and_missing_reports_work(tmp_path: Path, rng: np.random.Generator) -> None:
    recs = [make_region(rng, i) for i in range(6)]
    write(RegionStore(tmp_path), recs[:4])
    before = sorted(p.name for p in tmp_path.iterdir())
    store = RegionStore(tmp_path)
    assert store.missing([r.image_id for r in recs]) == [recs[4].image_id, recs[5].image_id]
    w = write(store, recs)
    assert (w.stats.written, w.stats.skipped_existing) == (2, 4)
    w2 = write(RegionStore(tmp_path), recs)
    assert (w2.stats.written, w2.stats.skipped_existing, w2.stats.shards) == (0, 6, [])
    assert len(RegionStore(tmp_path)) == 6 and len(before) < len(list(tmp_path.iterdir()))
    assert RegionStore(tmp_path).missing([recs[0].image_id], producer="other-config") == [recs[0].image_id]


def test_crash_mid_run_publishes_completed_rows_and_resumes(tmp_path: Path, rng: np.random.Generator) -> None:
    recs = [make_region(rng, i) for i in range(9)]
    store = RegionStore(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with store.writer(detector="d", config_hash="c", weights_hash="w", feature_dim=16, rows_per_shard=4) as w:
            for i, r in enumerate(recs):
                if i == 6:
                    raise KeyboardInterrupt
                w.write(r)
    assert not list(tmp_path.glob("*.tmp"))
    assert len(RegionStore(tmp_path)) == 6
    w = write(RegionStore(tmp_path), recs)
    assert (w.stats.written, w.stats.skipped_existing) == (3, 6)


def test_killed_writer_leaves_no_visible_partial_shard(tmp_path: Path, rng: np.random.Generator) -> None:
    write(RegionStore(tmp_path), [make_region(rng, i) for i in range(4)])
    (tmp_path / "regions-00001.parquet.tmp").write_bytes(b"PAR1 half a shard")  # what kill -9 leaves
    store = RegionStore(tmp_path)
    assert len(store) == 4 and store.corrupt_shards == []
    write(store, [make_region(rng, 10)])
    assert not list(tmp_path.glob("*.tmp")) and len(RegionStore(tmp_path)) == 5


def test_duplicate_in_one_batch_is_rejected(tmp_path: Path, rng: np.random.Generator) -> None:
    r = make_region(rng, 1)
    with pytest.raises(ValueError, match=r"duplicate image_id='0+1'.*de-duplicate"):
        write(RegionStore(tmp_path), [r, make_region(rng, 1)])


def test_bad_records_name_the_offender(rng: np.random.Generator) -> None:
    good = make_region(rng, 7)
    with pytest.raises(ValueError, match=r"features must have shape.*got \(5,\).*image_id='0+7'"):
        RegionRecord(good.image_id, "u", 10, 10, good.boxes, np.zeros(5, np.float32))
    with pytest.raises(TypeError, match=r"floating-point.*int64.*astype"):
        RegionRecord(good.image_id, "u", 10, 10, good.boxes, np.zeros((5, 4), np.int64))
    with pytest.raises(ValueError, match=r"5 boxes vs 3 feature rows"):
        RegionRecord(good.image_id, "u", 10, 10, good.boxes, np.zeros((3, 16), np.float32))
    with pytest.raises(ValueError, match=r"class_ids must have shape \(5,\)"):
        RegionRecord(good.image_id, "u", 10, 10, good.boxes, good.features, class_ids=np.zeros(2))


def test_width_mismatch_and_out_of_range_values(tmp_path: Path, rng: np.random.Generator) -> None:
    store = RegionStore(tmp_path)
    write(store, [make_region(rng, 0, dim=16)])
    with pytest.raises(ValueError, match=r"width 16.*dim=32"):
        write(RegionStore(tmp_path), [make_region(rng, 1, dim=32)])
    huge = make_region(rng, 2)
    huge.features[0, 0] = 1e6
    with pytest.raises(ValueError, match=r"float16 range"):
        write(RegionStore(tmp_path), [huge])
    with pytest.raises(ValueError, match=r"width 8, this writer stores 16"):
        with RegionStore(tmp_path).writer(detector="d", config_hash="c", weights_hash="w", feature_dim=16) as w:
            w.write(make_region(rng, 3, dim=8))
    assert len(RegionStore(tmp_path)) == 1


def test_future_schema_version_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    write(RegionStore(tmp_path), [make_region(rng, i) for i in range(2)])
    shard = tmp_path / "regions-00000.parquet"
    t = pq.read_table(shard)
    meta = dict(t.schema.metadata)
    meta[b"regionrank.schema_version"] = b"99"
    pq.write_table(t.replace_schema_metadata(meta), shard)
    with pytest.raises(ValueError, match=r"schema version 99.*upgrade regionrank"):
        RegionStore(tmp_path).get([f"{0:064x}"])


def test_truncated_shard_is_reported_and_others_stay_readable(tmp_path: Path, rng: np.random.Generator) -> None:
    recs = [make_region(rng, i) for i in range(8)]
    write(RegionStore(tmp_path), recs)  # two shards of 4
    bad = tmp_path / "regions-00001.parquet"
    bad.write_bytes(bad.read_bytes()[:200])
    store = RegionStore(tmp_path)
    assert store.corrupt_shards == ["regions-00001.parquet"]
    assert [r.image_id for r in store.get([recs[0].image_id, recs[3].image_id])] == [recs[0].image_id, recs[3].image_id]
    assert store.missing([r.image_id for r in recs]) == [r.image_id for r in recs[4:]]
    with pytest.raises(CorruptShardError, match=r"regions-00001.parquet.*Delete it and re-run"):
        store._open("regions-00001.parquet")


def test_read_rows_projects_columns_in_key_order(tmp_path: Path, rng: np.random.Generator) -> None:
    recs = [make_region(rng, i, n=2 + i) for i in range(7)]
    write(RegionStore(tmp_path), recs)  # shards of 4: keys below span both
    keys = [recs[5].image_id, recs[0].image_id, recs[3].image_id, recs[6].image_id]
    t = RegionStore(tmp_path).read_rows(keys, columns=["image_id", "num_regions"])
    assert t.schema.names == ["image_id", "num_regions"]
    assert t.column("image_id").to_pylist() == keys
    assert t.column("num_regions").to_pylist() == [7, 2, 5, 8]
    assert RegionStore(tmp_path).read_rows([], columns=["num_regions"]).num_rows == 0


def test_unknown_ids_raise_keyerror_listing_them(tmp_path: Path, rng: np.random.Generator) -> None:
    write(RegionStore(tmp_path), [make_region(rng, 0)])
    with pytest.raises(KeyError, match=r"1 image_id\(s\) not in store.*'nope'"):
        RegionStore(tmp_path).get(["nope"])


def test_concurrent_writers_publish_distinct_shards(tmp_path: Path, rng: np.random.Generator) -> None:
    recs = [make_region(rng, i) for i in range(10)]
    a = RegionStore(tmp_path).writer(detector="d", config_hash="c", weights_hash="w", feature_dim=16, rows_per_shard=2)
    b = RegionStore(tmp_path).writer(detector="d", config_hash="c", weights_hash="w", feature_dim=16, rows_per_shard=2)
    with a, b:  # interleaved, as two mapped tasks or two Dask workers would
        for i, r in enumerate(recs):
            (a if i % 2 else b).write(r)
    shards = sorted(p.name for p in tmp_path.glob("regions-*.parquet"))
    assert len(shards) == 6 and len(set(shards)) == 6 and not list(tmp_path.glob("*.tmp"))
    store = RegionStore(tmp_path)
    assert sorted(store.ids()) == sorted(r.image_id for r in recs)
    assert [r.image_id for r in store.get([recs[7].image_id])] == [recs[7].image_id]


def test_short_lock_timeout_names_the_holder(tmp_path: Path, rng: np.random.Generator) -> None:
    from regionrank.storage import exclusive_lock

    with exclusive_lock(tmp_path / ".write.lock"):
        with pytest.raises(StoreLockedError, match=r"another writer holds the lock.*pid \d+"):
            with RegionStore(tmp_path).writer(detector="d", config_hash="c", weights_hash="w", feature_dim=16, lock_timeout=0.2):
                pass
    with RegionStore(tmp_path).writer(detector="d", config_hash="c", weights_hash="w", feature_dim=16) as w:  # released
        w.write(make_region(rng, 0))


def test_live_writers_temporary_files_survive_a_new_writer(tmp_path: Path, rng: np.random.Generator) -> None:
    store = RegionStore(tmp_path)
    with store.writer(detector="d", config_hash="c", weights_hash="w", feature_dim=16, rows_per_shard=4) as w:
        w.write(make_region(rng, 0))
        w._flush_row_group()  # a shard in progress: its .tmp exists
        (tmp,) = tmp_path.glob("*.tmp")
        with RegionStore(tmp_path).writer(detector="d", config_hash="c", weights_hash="w", feature_dim=16):
            pass
        assert tmp.exists(), "a second writer must not delete a live writer's temporary shard"
    assert len(RegionStore(tmp_path)) == 1


def test_iteration_projection_and_failures(tmp_path: Path, rng: np.random.Generator) -> None:
    recs = [make_region(rng, i) for i in range(7)]
    store = RegionStore(tmp_path)
    with store.writer(detector="d", config_hash="c", weights_hash="w", feature_dim=16, rows_per_shard=3) as w:
        for r in recs:
            w.write(r)
        w.add_failure("broken.jpg", "truncated JPEG")
    store = RegionStore(tmp_path)
    assert [r.image_id for r in store.iter_records(batch_size=2)] == [r.image_id for r in recs]
    batches = list(store.iter_batches(columns=["image_id", "num_regions"]))
    assert all(b.schema.names == ["image_id", "num_regions"] for b in batches)
    assert sum(b.num_rows for b in batches) == 7
    (fail,) = store.failures()
    assert fail["uri"] == "broken.jpg" and fail["reason"] == "truncated JPEG"
    assert store.locate(recs[4].image_id) == ("regions-00001.parquet", 1)


def test_catalog_is_a_cache_rebuilt_from_shards(tmp_path: Path, rng: np.random.Generator) -> None:
    recs = [make_region(rng, i) for i in range(5)]
    write(RegionStore(tmp_path), recs)
    len(RegionStore(tmp_path))
    assert (tmp_path / "_catalog.parquet").exists()
    (tmp_path / "_catalog.parquet").write_bytes(b"garbage")
    assert RegionStore(tmp_path).ids() == [r.image_id for r in recs]
    os.remove(tmp_path / "regions-00000.parquet")
    assert RegionStore(tmp_path).ids() == [r.image_id for r in recs[4:]]


def test_embedding_stores_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    imgs = [
        ImageEmbeddingRecord(image_id=f"{i:064x}", uri=f"u{i}", boxes=np.tile(np.array([0, 0, 5, 5], np.float32), (i + 1, 1)),
                             region_embeddings=rng.standard_normal((i + 1, 8)), global_embedding=rng.standard_normal(8) if i else None,
                             width=10, height=10, labels=[f"l{k}" for k in range(i + 1)] if i % 2 else None)
        for i in range(4)
    ]
    store = ImageEmbeddingStore(tmp_path / "img")
    with store.writer(encoder="teran-test", encoder_hash="h", embed_dim=8) as w:
        for r in imgs:
            w.write(r)
    got = ImageEmbeddingStore(tmp_path / "img").get([r.image_id for r in imgs])
    for a, b in zip(imgs, got):
        np.testing.assert_array_equal(b.region_embeddings, a.region_embeddings.astype(np.float16))
        assert (a.global_embedding is None) == (b.global_embedding is None) and a.labels == b.labels
        assert b.encoder == "teran-test"
    assert _names_types(pq.read_schema(next((tmp_path / "img").glob("images-*.parquet")))) == _names_types(IMAGE_EMBEDDING_SCHEMA_V1)

    caps = [CaptionEmbeddingRecord(caption_id=f"c{i}", image_id=imgs[i // 2].image_id, text=f"a cat {i}", tokens=["a", "cat"],
                                   word_embeddings=rng.standard_normal((2, 8)), global_embedding=rng.standard_normal(8)) for i in range(6)]
    cstore = CaptionEmbeddingStore(tmp_path / "cap")
    with cstore.writer(encoder="e", encoder_hash="h", embed_dim=8) as w:
        for c in caps:
            w.write(c)
    (c3,) = CaptionEmbeddingStore(tmp_path / "cap").get(["c3"])
    assert c3.tokens == ["a", "cat"] and c3.image_id == imgs[1].image_id
    np.testing.assert_array_equal(c3.word_embeddings, caps[3].word_embeddings.astype(np.float16))
    assert _names_types(pq.read_schema(next((tmp_path / "cap").glob("captions-*.parquet")))) == _names_types(CAPTION_EMBEDDING_SCHEMA_V1)
    with pytest.raises(ValueError, match=r"holds 'image_embeddings' shards"):
        RegionStore(tmp_path / "img")._open("images-00000.parquet") if False else _open_wrong(tmp_path)


def _open_wrong(tmp_path: Path) -> None:
    (tmp_path / "img" / "images-00000.parquet").rename(tmp_path / "img" / "regions-00000.parquet")
    RegionStore(tmp_path / "img").get([f"{0:064x}"])


def test_fsspec_uri_location_round_trip(rng: np.random.Generator) -> None:
    pytest.importorskip("fsspec")
    recs = [make_region(rng, i) for i in range(5)]
    root = "memory://regionrank-test/regions"
    w = write(RegionStore(root), recs)
    assert w.stats.written == 5
    store = RegionStore(root)
    assert store.ids() == [r.image_id for r in recs]
    np.testing.assert_array_equal(store.get([recs[2].image_id])[0].boxes, recs[2].boxes)
    assert store.missing([recs[0].image_id, "x"]) == ["x"]

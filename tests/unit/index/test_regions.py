"""The region matrix: written with every image index version, read by id through memory maps, grown
by hard-linked segments on incremental adds, and read by the two-stage search instead of the store."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from index_testdata import BagOfWordsEncoder, NumpyScanReranker, Scene, write_images

from regionrank import index
from regionrank.index.regions import REGIONS_DIR, RegionMatrix

QUERIES = ["c1 c5", "c3 c12 c30", "c7 c8", "c20 c21 c22 c23"]


def _same_record(a, b) -> None:
    assert a.image_id == b.image_id and a.uri == b.uri and (a.width, a.height) == (b.width, b.height)
    np.testing.assert_array_equal(np.asarray(a.region_embeddings, np.float16), np.asarray(b.region_embeddings, np.float16))
    np.testing.assert_array_equal(a.boxes, b.boxes)


def test_build_writes_a_region_matrix_equal_to_the_store(tmp_path: Path, image_store) -> None:
    store, records = image_store
    index.build_indexes(store, tmp_path / "idx")
    h = index.open_index(tmp_path / "idx")
    assert isinstance(h.regions, RegionMatrix) and len(h.regions) == len(records)
    ids = [records[i].image_id for i in (5, 0, 599, 17)]
    for got, want in zip(h.regions.get(ids), store.get(ids), strict=True):
        _same_record(got, want)
    stacked, counts = h.regions.gather(h.idmap.lookup(ids))
    np.testing.assert_array_equal(stacked, np.concatenate([np.asarray(r.region_embeddings, np.float16) for r in store.get(ids)]))
    assert counts.tolist() == [r.num_regions for r in store.get(ids)]
    assert isinstance(h.regions.vectors[0].base, np.memmap)  # a plain view of the map: not read into memory
    decoded, _ = h.regions.gather(h.idmap.lookup(ids), float32=True)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, stacked.astype(np.float32))
    with pytest.raises(KeyError, match="nope"):
        h.regions.get(["nope"])


def test_adds_append_hard_linked_segments_and_rebuilds_start_over(tmp_path: Path, scene: Scene) -> None:
    first, extra = scene.images(300), scene.images(40, start=300)
    store = write_images(tmp_path / "emb", first + extra)
    idx = tmp_path / "idx"
    index.build_indexes(store, idx, image_ids=[r.image_id for r in first])
    v1 = index.open_index(idx).path
    index.add_images(idx, store, [r.image_id for r in extra])
    h = index.open_index(idx)
    seg_files = sorted(p.name for p in (h.path / REGIONS_DIR).glob("seg-*.vectors.npy"))
    assert seg_files == ["seg-000001.vectors.npy", "seg-000002.vectors.npy"]
    # the first segment is the previous version's file, linked, not rewritten
    assert (h.path / REGIONS_DIR / seg_files[0]).stat().st_ino == (v1 / REGIONS_DIR / seg_files[0]).stat().st_ino
    ids = [first[3].image_id, extra[0].image_id, extra[-1].image_id, first[-1].image_id]
    for got, want in zip(h.regions.get(ids), store.get(ids), strict=True):
        _same_record(got, want)
    stacked, _ = h.regions.gather(h.idmap.lookup(ids))  # one gather across both segments, in order
    np.testing.assert_array_equal(stacked, np.concatenate([np.asarray(r.region_embeddings, np.float16) for r in store.get(ids)]))
    # a removal publishes a version that still links both segments; the search excludes the dead image
    index.remove_images(idx, [extra[0].image_id])
    h = index.open_index(idx)
    assert len(list((h.path / REGIONS_DIR).glob("seg-*.vectors.npy"))) == 2
    # a full rebuild writes one fresh segment
    index.build_indexes(store, idx)
    h = index.open_index(idx)
    assert [p.name for p in (h.path / REGIONS_DIR).glob("seg-*.vectors.npy")] == ["seg-000001.vectors.npy"]
    assert len(h.regions) == len(first) + len(extra)


def test_search_from_the_region_matrix_equals_search_from_the_store(tmp_path: Path, image_store, scene: Scene) -> None:
    store, _ = image_store
    index.build_indexes(store, tmp_path / "idx")
    enc, rr = BagOfWordsEncoder(scene.prototypes), NumpyScanReranker()
    matrix = index.Searcher(tmp_path / "idx", store, enc, rr, rerank_k=30, fusion="weighted")
    parquet = index.Searcher(tmp_path / "idx", store, enc, rr, rerank_k=30, fusion="weighted", use_region_matrix=False)
    assert matrix.regions is not None and parquet.regions is None
    for q in QUERIES:
        a, b = matrix.search(q, 10), parquet.search(q, 10)
        assert matrix.last_stats.source == "region_matrix" and parquet.last_stats.source == "embeddings"
        assert [h.image_id for h in a] == [h.image_id for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=1e-6)
        assert [h.uri for h in a] == [h.uri for h in b]
        np.testing.assert_array_equal(a[0].boxes, b[0].boxes)
        assert [e.box for e in a[0].explanation] == [e.box for e in b[0].explanation]


def test_a_version_without_a_matrix_falls_back_to_the_store_and_stays_without_one(tmp_path: Path, scene: Scene) -> None:
    first, extra = scene.images(200), scene.images(20, start=200)
    store = write_images(tmp_path / "emb", first + extra)
    idx = tmp_path / "idx"
    index.build_indexes(store, idx, image_ids=[r.image_id for r in first])
    vdir = index.open_index(idx).path
    shutil.rmtree(vdir / REGIONS_DIR)  # as published before region matrices existed (and so before checksums)
    old = index.Manifest.read(vdir)
    old.files = {}
    old.write(vdir)
    enc = BagOfWordsEncoder(scene.prototypes)
    s = index.Searcher(idx, store, enc, fusion="mrsw")
    assert s.regions is None and len(s.search("c1 c5", 5)) == 5 and s.last_stats.source == "embeddings"
    index.add_images(idx, store, [r.image_id for r in extra])
    assert index.open_index(idx).regions is None  # never a matrix missing the older images


def test_preloaded_region_matrix_gathers_the_same_vectors_in_float32(tmp_path: Path, image_store) -> None:
    store, records = image_store
    index.build_indexes(store, tmp_path / "idx")
    h = index.open_index(tmp_path / "idx")
    ram = h.regions.preloaded(chunk=100)
    assert ram.vectors[0].dtype == np.float32 and not isinstance(ram.vectors[0].base, np.memmap)
    ids = h.idmap.lookup([records[i].image_id for i in (3, 599, 0)])
    mapped, counts = h.regions.gather(ids)
    dense, counts2 = ram.gather(ids, float32=True)
    np.testing.assert_array_equal(dense, mapped.astype(np.float32))
    assert counts.tolist() == counts2.tolist()
    assert h.regions.vectors[0].dtype == np.float16  # the original stays mapped

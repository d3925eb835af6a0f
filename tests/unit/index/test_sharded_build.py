"""Sharded builds (index.shards): shard tasks + merge give the one-shot build's version (same ids, same
indexes, same search results, same region matrix), atomically, with checksums over the shard tasks' files."""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path

import numpy as np
import pytest

from regionrank import index
from regionrank.index.ann import AnnIndex
from regionrank.index.shards import ShardSlice, plan_slices, shard_map, shard_task_bytes
from regionrank.index.spec import IndexSpec
from regionrank.index.tuning import RecallProbe
from regionrank.index.version import VersionedDir
from regionrank.storage import ImageEmbeddingStore
from regionrank.storage.records import ImageEmbeddingRecord

from index_testdata import BagOfWordsEncoder, QUERIES, Scene, unit


def write_store(root: Path, records: list[ImageEmbeddingRecord], rows_per_shard: int = 128) -> ImageEmbeddingStore:
    store = ImageEmbeddingStore(root)
    with store.writer(encoder="synthetic", encoder_hash="0", embed_dim=records[0].embed_dim,
                      rows_per_shard=rows_per_shard) as w:
        for rec in records:
            w.write(rec)
    return ImageEmbeddingStore(root)


@pytest.fixture
def store(tmp_path: Path) -> tuple[ImageEmbeddingStore, list[ImageEmbeddingRecord]]:
    records = Scene(seed=3).images(400)
    return write_store(tmp_path / "emb", records), records  # 4 store shards of 128, 128, 128, 16 images


def assert_same_version(a: Path, b: Path, records: list[ImageEmbeddingRecord], *, byte_equal: bool = True) -> None:
    """Two published versions hold the same ids, indexes, probes and region matrix, and search alike."""
    ha, hb = index.open_index(a), index.open_index(b)
    assert ha.idmap.image_ids == hb.idmap.image_ids
    np.testing.assert_array_equal(ha.idmap.n_regions, hb.idmap.n_regions)
    ma, mb = ha.manifest, hb.manifest
    assert ma.indexes.keys() == mb.indexes.keys() and ma.region_layout == mb.region_layout
    assert (ma.encoder, ma.encoder_hash, ma.n_items, ma.embed_dim) == (mb.encoder, mb.encoder_hash, mb.n_items, mb.embed_dim)
    rng = np.random.default_rng(5)
    region_q = unit(np.concatenate([np.asarray(r.region_embeddings, np.float32)[:1] for r in records[::7]])
                    + 0.2 * rng.standard_normal((len(records[::7]), records[0].embed_dim))).astype(np.float32)
    for kind, ia in ma.indexes.items():
        ib = mb.indexes[kind]
        for field in ("spec", "n_vectors", "train_size", "search_param", "search_value", "measured_recall", "tried",
                      "tune_queries", "memory_bytes"):
            assert getattr(ia, field) == getattr(ib, field), (kind, field)
        if byte_equal:
            assert (ha.path / ia.file).read_bytes() == (hb.path / ib.file).read_bytes(), kind
        pa_, pb = RecallProbe.load(ha.path / f"{kind}.probe.npz"), RecallProbe.load(hb.path / f"{kind}.probe.npz")
        np.testing.assert_array_equal(pa_.queries, pb.queries)
        np.testing.assert_array_equal(pa_.gt_ids, pb.gt_ids)
        np.testing.assert_array_equal(pa_.gt_scores, pb.gt_scores)
        sa, ida = ha.indexes[kind].search(region_q, 25)
        sb, idb = hb.indexes[kind].search(region_q, 25)
        np.testing.assert_array_equal(ida, idb)
        np.testing.assert_array_equal(sa, sb)
    ra, rb = ha.regions, hb.regions
    assert ra is not None and rb is not None and len(ra) == len(rb) == len(records)
    every = np.arange(len(records))
    va, ca = ra.gather(every)
    vb, cb = rb.gather(every)
    np.testing.assert_array_equal(va, vb)
    np.testing.assert_array_equal(ca, cb)
    for x, y in zip(ra.records(every[::37]), rb.records(every[::37]), strict=True):
        assert (x.image_id, x.uri, x.width, x.height) == (y.image_id, y.uri, y.width, y.height)
        np.testing.assert_array_equal(x.boxes, y.boxes)
    if ra.compressed:
        np.testing.assert_array_equal(ra.gather_codes(every)[0], rb.gather_codes(every)[0])
        np.testing.assert_array_equal(ra.code_error, rb.code_error)


@pytest.mark.parametrize("specs", [{}, {"global": "IVF8,Flat", "region": "IVF32,Flat"}], ids=["flat", "ivf"])
def test_sharded_build_equals_one_shot(tmp_path: Path, store, specs: dict[str, str]) -> None:
    st, records = store
    one = index.build_indexes(st, tmp_path / "one", specs=specs, n_tune_queries=80)
    sharded = index.build_indexes(st, tmp_path / "sharded", specs=specs, n_tune_queries=80, executor=map,
                                  shard_vectors=300)
    assert sharded.sharded["tasks"] >= 8  # ~2200 regions in slices of <= 300, cut at the 4 store shards
    assert one.sharded == {}
    assert sharded.indexes["region"].spec == (specs.get("region") or "Flat")
    assert_same_version(tmp_path / "one", tmp_path / "sharded", records)
    # the two-stage search answers alike, scores included
    enc = BagOfWordsEncoder(Scene(seed=3).prototypes)
    s1 = index.Searcher(tmp_path / "one", st, enc, None, rerank_k=0)
    s2 = index.Searcher(tmp_path / "sharded", st, enc, None, rerank_k=0)
    for q in QUERIES:
        h1, h2 = s1.search(q, 10), s2.search(q, 10)
        assert [(h.image_id, h.score) for h in h1] == [(h.image_id, h.score) for h in h2]
        assert s1.last_stats.certified == s2.last_stats.certified


def test_sharded_build_of_the_compressed_layout_and_given_queries(tmp_path: Path, store) -> None:
    st, records = store
    words = unit(np.random.default_rng(1).standard_normal((40, records[0].embed_dim))).astype(np.float32)
    kw = dict(specs={"region": "IVF16,PQ8x4"}, region_layout="codes", n_tune_queries=60, kind=("region",),
              tuning_queries={"region": words})
    one = index.build_indexes(st, tmp_path / "one", **kw)
    sharded = index.build_indexes(st, tmp_path / "sharded", executor=map, shard_vectors=500, **kw)
    assert one.region_layout == sharded.region_layout == "codes"
    assert sharded.indexes["region"].tuned_on == "40 given queries"
    assert_same_version(tmp_path / "one", tmp_path / "sharded", records)


def test_sharded_caption_build_equals_one_shot(tmp_path: Path, caption_store) -> None:
    st, _, _ = caption_store
    one = index.build_caption_indexes(st, tmp_path / "one", n_tune_queries=50)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        sharded = index.build_caption_indexes(st, tmp_path / "sharded", n_tune_queries=50, executor=pool,
                                              shard_vectors=200)
    assert sharded.sharded["tasks"] > 1
    ha, hb = index.open_index(tmp_path / "one"), index.open_index(tmp_path / "sharded")
    assert ha.idmap.image_ids == hb.idmap.image_ids and one.n_items == sharded.n_items
    for kind in ("global", "word"):
        assert (ha.path / f"{kind}.faiss").read_bytes() == (hb.path / f"{kind}.faiss").read_bytes()
    assert ha.regions is None and hb.regions is None  # captions have no region matrix


def test_version_is_checksummed_and_atomic(tmp_path: Path, store) -> None:
    st, _ = store
    m = index.build_indexes(st, tmp_path / "idx", executor=map, shard_vectors=400)
    vdir = VersionedDir(tmp_path / "idx").path()
    segments = json.loads((vdir / "regions" / "segments.json").read_text())["segments"]
    assert len(segments) == m.sharded["tasks"]
    on_disk = {p.relative_to(vdir).as_posix() for p in vdir.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(m.files) == on_disk and not any(name.startswith("_shards") for name in on_disk)
    assert all(f"regions/{s}.vectors.npy" in m.files for s in segments)
    assert index.verify_version(tmp_path / "idx", thorough=True) == []
    victim = vdir / "regions" / f"{segments[1]}.vectors.npy"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert index.verify_version(tmp_path / "idx", thorough=True) == [
        f"regions/{segments[1]}.vectors.npy: sha256 differs from the one recorded when published (overwritten or corrupted)"
    ]


def test_a_failing_shard_task_publishes_nothing(tmp_path: Path, store) -> None:
    st, _ = store
    calls: list[str] = []

    def flaky_map(fn, items):  # the add pass fails after its first task wrote its files
        out = []
        for i, item in enumerate(items):
            calls.append(fn.__name__)
            if fn.__name__ == "_add_task" and i == 1:
                raise OSError("worker lost")
            out.append(fn(item))
        return out

    with pytest.raises(OSError, match="worker lost"):
        index.build_indexes(st, tmp_path / "idx", executor=flaky_map, shard_vectors=400)
    assert "_sample_task" in calls and "_add_task" in calls
    vd = VersionedDir(tmp_path / "idx")
    assert vd.versions() == [] and vd.current() is None
    assert list(vd.versions_dir.iterdir()) == []  # the staged directory is gone, shard files and all


def test_sharded_rebuild_and_incremental_add_through_update_or_build(tmp_path: Path, store) -> None:
    st, records = store
    ids = [r.image_id for r in records]
    m1 = index.update_or_build(tmp_path / "idx", st, None, executor=map, shard_vectors=400,
                               specs={"region": "IVF16,Flat"}, n_tune_queries=60)
    assert m1.version == 1 and m1.sharded["tasks"] > 1
    # an incremental add goes to the merged index (nothing new: no version)
    assert index.update_or_build(tmp_path / "idx", st, ids[:5], executor=map).version == 1
    index.remove_images(tmp_path / "idx", ids[:50])
    m3 = index.update_or_build(tmp_path / "idx", st, ids[:50], executor=map)
    assert m3.version == 3 and m3.n_items == len(ids) and m3.history[-1] == "add 50"
    m4 = index.update_or_build(tmp_path / "idx", st, ids, rebuild=True, executor=map, n_tune_queries=60,
                               specs={"region": "IVF16,Flat"})
    assert m4.version == 4 and m4.history == ["build"] and m4.sharded["tasks"] == 4  # one per store shard
    h = index.open_index(tmp_path / "idx")
    rec = records[3]
    _, img, slot = h.search_multi(np.asarray(rec.region_embeddings, np.float32), 1)
    assert [h.idmap.image_id(i) for i in img[:, 0]] == [rec.image_id] * rec.num_regions
    np.testing.assert_array_equal(slot[:, 0], np.arange(rec.num_regions))


@pytest.mark.parametrize("key", ["Flat", "IVF16,Flat", "IVF16,PQ8x4", pytest.param("OPQ4_32,IVF16,PQ8x4", marks=pytest.mark.slow),
                                 "HNSW8"])
def test_merge_shard_equals_adding_in_one_go(tmp_path: Path, key: str) -> None:
    rng = np.random.default_rng(0)
    x = unit(rng.standard_normal((1200, 32))).astype(np.float32)
    ids = np.arange(1200, dtype=np.int64) * 3 + 7
    spec = IndexSpec.parse(key)
    whole = AnnIndex.create(spec, 32)
    merged = AnnIndex.create(spec, 32)
    if spec.needs_training:
        whole.train(x[:1024], seed=0)
        merged.train(x[:1024], seed=0)
    whole.add(x, ids)
    for s, (a, b) in enumerate([(0, 500), (500, 501), (501, 1200)]):
        shard = AnnIndex.shard_of(spec, 32, merged.trained_bytes())
        shard.add(x[a:b], ids[a:b])
        shard.save(tmp_path / f"s{s}.faiss")
        assert merged.merge_shard(tmp_path / f"s{s}.faiss") == b - a
    assert merged.ntotal == whole.ntotal == 1200
    if spec.family == "ivf":
        whole.set_search_param(4)
        merged.set_search_param(4)
    sw, iw = whole.search(x[::50], 10)
    sm, im = merged.search(x[::50], 10)
    if spec.family == "hnsw":  # the graph is rebuilt by re-adding: every vector is found, not the same graph
        assert (im[:, 0] == ids[::50]).all()
        return
    np.testing.assert_array_equal(iw, im)
    np.testing.assert_array_equal(sw, sm)


def test_plan_slices_cuts_at_store_shards_and_the_vector_bound() -> None:
    counts = np.array([3, 3, 3, 10, 2, 2, 2], np.int64)
    shards = ["a", "a", "a", "a", "b", "b", "b"]
    ids = [f"i{j}" for j in range(7)]
    plan = plan_slices(ids, counts, shards, np.arange(7), shard_vectors=6)
    assert [s.item_ids for s in plan] == [("i0", "i1"), ("i2",), ("i3",), ("i4", "i5", "i6")]
    assert [s.first_row for s in plan] == [0, 6, 9, 19] and [s.first_item for s in plan] == [0, 2, 3, 4]
    assert [s.index for s in plan] == [0, 1, 2, 3] and plan[2].n_vectors == 10  # an item over the bound: alone
    by_items = plan_slices(ids, counts, shards, np.arange(7), shard_vectors=2, by_vectors=False)
    assert [len(s.item_ids) for s in by_items] == [2, 2, 2, 1]
    with pytest.raises(ValueError, match="shard_vectors must be positive"):
        plan_slices(ids, counts, shards, np.arange(7), shard_vectors=0)
    assert isinstance(plan[0], ShardSlice)


def test_shard_map_accepts_executors_and_refuses_others() -> None:
    square = lambda v: v * v  # noqa: E731
    assert shard_map(None)(square, [1, 2, 3]) == [1, 4, 9]
    assert shard_map(map)(square, [1, 2, 3]) == [1, 4, 9]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        assert shard_map(pool)(square, [1, 2, 3]) == [1, 4, 9]
    with pytest.raises(TypeError, match="executor must be a distributed.Client"):
        shard_map(42)


def test_shard_task_bytes_grows_with_the_slice_not_the_collection() -> None:
    ivf = IndexSpec.parse("IVF1024,Flat")
    small, big = shard_task_bytes(1 << 16, 256, ivf), shard_task_bytes(1 << 18, 256, ivf)
    # per vector: 6 d float16 bytes + the IVF,Flat code (4 d) + its id and bookkeeping
    assert big - small == (3 << 16) * (6 * 256 + 16 + 4 * 256 + 8)
    pq = IndexSpec.parse("OPQ32_128,IVF1024,PQ32")
    assert shard_task_bytes(1 << 18, 256, pq, codes_bytes=34) < big


def test_sharded_build_refuses_a_source_that_is_not_a_store(tmp_path: Path, store) -> None:
    st, records = store

    class Listed:  # an EmbeddingSource without a store's catalog
        root = str(tmp_path / "nowhere")

        def ids(self):
            return [r.image_id for r in records]

        def get(self, keys):
            return st.get(keys)

        def iter_records(self, *, batch_size=256):
            return iter(st.get(self.ids()))

    with pytest.raises(TypeError, match="has no read_rows"):
        index.build_indexes(Listed(), tmp_path / "idx", executor=map)


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_dask_local_cluster_build_and_reindex(tmp_path: Path, processes: bool) -> None:
    distributed = pytest.importorskip("distributed")
    records = Scene(seed=3).images(400)
    st = write_store(tmp_path / "emb", records[:300])
    one = index.build_indexes(st, tmp_path / "one", specs={"region": "IVF16,Flat"}, n_tune_queries=60)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=processes, dashboard_address=None,
                                  silence_logs=50) as cluster, distributed.Client(cluster) as client:
        m1 = index.update_or_build(tmp_path / "idx", st, None, executor=client, shard_vectors=400,
                                   specs={"region": "IVF16,Flat"}, n_tune_queries=60)
        ran_on = client.run(lambda: __import__("sys").modules.get("regionrank.index.shards") is not None)
        with st.writer(encoder="synthetic", encoder_hash="0", embed_dim=records[0].embed_dim) as w:
            for rec in records[300:]:  # a new batch arrives in the store
                w.write(rec)
        m2 = index.update_or_build(tmp_path / "idx", st, [r.image_id for r in records[250:]], executor=client)
    assert m1.sharded["tasks"] > 2 and m1.sharded["worker_peak_rss_bytes"] > 0 and m1.sharded["task_bytes_bound"] > 0
    if processes:
        assert all(ran_on.values()), "the shard tasks should have run in both worker processes"
    ha, hb = index.open_index(tmp_path / "one"), index.open_index(tmp_path / "idx", 1)
    assert one.n_items == m1.n_items == 300
    for kind in ("global", "region"):
        assert (ha.path / f"{kind}.faiss").read_bytes() == (hb.path / f"{kind}.faiss").read_bytes()
    assert m2.version == 2 and m2.n_items == 400 and m2.history == ["build", "add 100 (50 already indexed)"]
    assert index.verify_version(tmp_path / "idx", thorough=True) == []
    h = index.open_index(tmp_path / "idx")
    _, img, _ = h.search_multi(np.asarray(records[399].region_embeddings, np.float32), 1)
    assert {h.idmap.image_id(i) for i in img[:, 0]} == {records[399].image_id}

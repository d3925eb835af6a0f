"""build_indexes / add_images / remove_images / open_index / versions / rollback on real shard stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from regionrank import index
from regionrank.index.tuning import RecallProbe, exact_knn
from regionrank.index.version import IndexBusyError, VersionedDir
from regionrank.storage import ImageEmbeddingStore
from regionrank.storage.records import ImageEmbeddingRecord

from index_testdata import Scene, lock_held_elsewhere, write_images


def exact_global(records: list[ImageEmbeddingRecord], q: np.ndarray, k: int) -> list[list[str]]:
    xb = np.stack([np.asarray(r.global_embedding, np.float32) for r in records])
    scores = q @ xb.T
    return [[records[j].image_id for j in np.argsort(-row, kind="stable")[:k]] for row in scores]


def f16(records: list[ImageEmbeddingRecord]) -> list[ImageEmbeddingRecord]:
    """What the store returns: vectors rounded to float16."""
    for r in records:
        r.global_embedding = np.asarray(r.global_embedding, np.float16).astype(np.float32)
        r.region_embeddings = np.asarray(r.region_embeddings, np.float16).astype(np.float32)
    return records


def test_build_auto_chooses_flat_and_records_everything(tmp_path: Path, image_store) -> None:
    store, records = image_store
    m = index.build_indexes(store, tmp_path / "idx", seed=0)
    assert m.version == 1 and m.corpus == "images" and m.n_items == len(records) and m.embed_dim == 32
    assert m.encoder == "synthetic" and m.history == ["build"]
    g, r = m.indexes["global"], m.indexes["region"]
    assert g.spec == "Flat" and g.chosen_by == "auto" and g.measured_recall == 1.0 and g.target_met
    assert g.n_vectors == len(records) and r.n_vectors == sum(x.num_regions for x in records)
    assert g.memory_bytes > 0 and g.memory_budget == 4 * 2**30
    vdir = VersionedDir(tmp_path / "idx").path()
    assert {p.name for p in vdir.iterdir()} >= {"manifest.json", "global.faiss", "region.faiss", "ids.txt", "idmap.npz"}
    assert index.Manifest.read(vdir) == m
    h = index.open_index(tmp_path / "idx")
    q = np.stack([np.asarray(records[i].global_embedding, np.float32) for i in (3, 50, 400)])
    _, got_int = h.search_global(q, 5)
    got = [[h.idmap.image_id(i) for i in row if i >= 0] for row in got_int]
    assert got == exact_global(f16(records), q, 5)
    # the region index maps every region back to its image and slot
    rec = records[7]
    s, img, slot = h.search_multi(np.asarray(rec.region_embeddings, np.float32), 1)
    assert [h.idmap.image_id(i) for i in img[:, 0]] == [rec.image_id] * rec.num_regions
    np.testing.assert_array_equal(slot[:, 0], np.arange(rec.num_regions))


@pytest.mark.parametrize("specs", [{"global": "HNSW16", "region": "IVF32,Flat"}, {"global": "IVF16,Flat", "region": "HNSW8"}])
def test_build_tunes_approximate_indexes_to_the_target(tmp_path: Path, image_store, specs: dict[str, str]) -> None:
    store, _ = image_store
    m = index.build_indexes(store, tmp_path / "idx", specs=specs, target_recall=0.9, k=10, n_tune_queries=200)
    for kind, key in specs.items():
        info = m.indexes[kind]
        assert info.spec == key and info.chosen_by == "user"
        assert info.search_value is not None and info.measured_recall >= 0.9 and info.target_met
        # an independent measurement on the published, memory-mapped index gives the same recall
        h = index.open_index(tmp_path / "idx")
        probe = RecallProbe.load(h.path / f"{kind}.probe.npz")
        assert probe.measure(h.indexes[kind]) == pytest.approx(info.measured_recall)


def test_add_then_remove_matches_exact_search(tmp_path: Path, scene: Scene) -> None:
    records = scene.images(300)
    store = write_images(tmp_path / "emb", records)
    ids = [r.image_id for r in records]
    m1 = index.build_indexes(store, tmp_path / "idx", image_ids=ids[:200], specs={"region": "IVF16,Flat"}, n_tune_queries=100)
    assert m1.n_items == 200
    m2 = index.add_images(tmp_path / "idx", store, ids[150:260])  # 50 already indexed: skipped
    assert m2.version == 2 and m2.n_items == 260 and m2.history == ["build", "add 60 (50 already indexed)"]
    assert index.add_images(tmp_path / "idx", store, ids[:10]).version == 2  # nothing new: no new version
    assert [m.version for m in index.versions(tmp_path / "idx")][-1] == 2
    assert m2.indexes["region"].n_at_train == m1.indexes["region"].n_vectors  # no retraining
    m3 = index.remove_images(tmp_path / "idx", ids[:40] + ["not-there"])
    assert m3.version == 3 and m3.n_items == 220 and m3.history[-1] == "remove 40"
    alive = f16(records[40:260])
    h = index.open_index(tmp_path / "idx")
    q = np.stack([np.asarray(r.global_embedding, np.float32) for r in records[:60]])  # removed + kept
    _, got_int = h.search_global(q, 8)
    got = [[h.idmap.image_id(i) for i in row if i >= 0] for row in got_int]
    assert got == exact_global(alive, q, 8)
    reg = np.concatenate([r.region_embeddings for r in alive]).astype(np.float32)
    owners = np.repeat([r.image_id for r in alive], [r.num_regions for r in alive])
    _, img, _ = h.search_multi(q[:10], 1)
    _, ref = exact_knn(reg, np.arange(len(reg)), q[:10], 1)
    recall1 = np.mean([h.idmap.image_id(a) == owners[b] for a, b in zip(img[:, 0], ref[:, 0])])
    assert recall1 >= 0.9  # IVF with the tuned nprobe
    assert not set(h.idmap.image_id(i) for i in img.ravel() if i >= 0) & set(ids[:40])
    # re-adding a removed image brings it back under its old int id
    old = index.open_index(tmp_path / "idx", version=1).idmap.lookup([ids[0]])[0]
    m4 = index.add_images(tmp_path / "idx", store, [ids[0]])
    assert m4.n_items == 221 and index.open_index(tmp_path / "idx").idmap.lookup([ids[0]])[0] == old


def test_growth_triggers_a_rebuild_or_flags_it(tmp_path: Path, scene: Scene) -> None:
    records = scene.images(250)
    store = write_images(tmp_path / "emb", records)
    ids = [r.image_id for r in records]
    kw = dict(kind=("global",), growth_factor=1.5, specs={"global": "HNSW8"}, n_tune_queries=50)
    index.build_indexes(store, tmp_path / "a", image_ids=ids[:100], **kw)
    index.build_indexes(store, tmp_path / "b", image_ids=ids[:100], **kw)
    flagged = index.add_images(tmp_path / "b", store, ids[100:200], auto_rebuild=False)
    assert flagged.rebuild_due is not None and "1.5 x 100" in flagged.rebuild_due
    rebuilt = index.add_images(tmp_path / "a", store, ids[100:200])
    assert rebuilt.rebuild_due is None and rebuilt.history[-1].startswith("rebuild: global: 200 vectors")
    assert rebuilt.indexes["global"].n_at_train == 200 and rebuilt.n_items == 200
    assert rebuilt.build["growth_factor"] == 1.5  # the rebuild reused the original parameters


def test_recall_drift_triggers_a_rebuild(tmp_path: Path, image_store, monkeypatch: pytest.MonkeyPatch) -> None:
    store, records = image_store
    ids = [r.image_id for r in records]
    index.build_indexes(store, tmp_path / "idx", kind=("global",), image_ids=ids[:500], specs={"global": "IVF16,Flat"},
                        target_recall=0.9, n_tune_queries=100)
    monkeypatch.setattr(RecallProbe, "refresh", lambda self, ann, **changed: 0.5)
    m = index.add_images(tmp_path / "idx", store, ids[500:510], auto_rebuild=False)
    assert "drifted below 0.9 - 0.02" in (m.rebuild_due or "")
    assert m.indexes["global"].current_recall == 0.5


def test_tombstones_trigger_a_rebuild_when_embeddings_are_given(tmp_path: Path, image_store) -> None:
    store, records = image_store
    ids = [r.image_id for r in records]
    index.build_indexes(store, tmp_path / "idx", kind=("global",), specs={"global": "HNSW8"}, n_tune_queries=50)
    m = index.remove_images(tmp_path / "idx", ids[:150])
    assert m.indexes["global"].tombstones == 150 and "tombstones" in (m.rebuild_due or "")
    m = index.remove_images(tmp_path / "idx", ids[150:160], embeddings=store)
    assert m.history[-1].startswith("rebuild:") and m.indexes["global"].tombstones == 0 and m.n_items == 440


def test_versions_and_rollback(tmp_path: Path, image_store) -> None:
    store, records = image_store
    ids = [r.image_id for r in records]
    index.build_indexes(store, tmp_path / "idx", kind=("global",), image_ids=ids[:300])
    index.add_images(tmp_path / "idx", store, ids[300:400])
    assert [m.n_items for m in index.versions(tmp_path / "idx")] == [300, 400]
    assert index.rollback(tmp_path / "idx").version == 1
    assert index.open_index(tmp_path / "idx").manifest.n_items == 300
    m = index.add_images(tmp_path / "idx", store, ids[400:410])
    assert m.version == 3 and m.parent_version == 1 and m.n_items == 310


def test_a_busy_index_fails_clearly(tmp_path: Path, image_store) -> None:
    store, records = image_store
    index.build_indexes(store, tmp_path / "idx", kind=("global",), image_ids=[r.image_id for r in records[:50]])
    with lock_held_elsewhere(tmp_path / "idx"), pytest.raises(IndexBusyError, match="locked by another publisher"):
        index.add_images(tmp_path / "idx", store, [records[60].image_id], lock_timeout=0.1)
    assert index.open_index(tmp_path / "idx").manifest.version == 1


def test_input_errors(tmp_path: Path, scene: Scene) -> None:
    recs = scene.images(20)
    for r in recs[:3]:
        r.global_embedding = None
    store = write_images(tmp_path / "emb", recs)
    with pytest.raises(ValueError, match="no global_embedding"):
        index.build_indexes(store, tmp_path / "idx")
    with pytest.raises(ValueError, match="subset of"):
        index.build_indexes(store, tmp_path / "idx", kind=("word",))
    with pytest.raises(ValueError, match="target_recall"):
        index.build_indexes(store, tmp_path / "idx", target_recall=1.5)
    with pytest.raises(FileNotFoundError, match="no index has been published"):
        index.open_index(tmp_path / "nothing")
    with pytest.raises(ValueError, match="holds no images"):
        index.build_indexes(ImageEmbeddingStore(tmp_path / "empty"), tmp_path / "idx2")
    with pytest.raises(TypeError, match="ImageEmbeddingStore"):
        index.build_indexes(42, tmp_path / "idx3")
    m = index.build_indexes(str(tmp_path / "emb"), tmp_path / "idx4", kind=("region",))  # a path works too
    assert set(m.indexes) == {"region"}


def test_tuning_on_given_queries(tmp_path: Path, image_store, scene: Scene) -> None:
    store, records = image_store
    words = (scene.prototypes[np.arange(40) % len(scene.prototypes)] + 0.05).astype(np.float32)
    words /= np.linalg.norm(words, axis=1, keepdims=True)
    m = index.build_indexes(store, tmp_path / "idx", kind=("region",), specs={"region": "IVF32,Flat"},
                            target_recall=0.9, tuning_queries={"region": words})
    info = m.indexes["region"]
    assert info.tuned_on == "40 given queries" and info.measured_recall >= 0.9
    h = index.open_index(tmp_path / "idx")
    reg = np.concatenate([np.asarray(r.region_embeddings, np.float16) for r in records]).astype(np.float32)
    rids = h.idmap.region_ids(h.idmap.lookup([r.image_id for r in records]))
    _, truth = exact_knn(reg, rids, words, 10)
    _, found = h.indexes["region"].search(words, 10)
    hits = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    assert hits == pytest.approx(info.measured_recall)
    with pytest.raises(ValueError, match="tuning_queries has kinds"):
        index.build_indexes(store, tmp_path / "idx2", kind=("global",), tuning_queries={"region": words})

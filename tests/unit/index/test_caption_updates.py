"""add_captions / remove_captions on a caption index: the image-index guarantees, for the caption corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from regionrank import index
from regionrank.index.tuning import RecallProbe
from regionrank.storage.records import CaptionEmbeddingRecord

from index_testdata import BagOfWordsEncoder, write_images


def mrsw(words: np.ndarray, regions: np.ndarray) -> float:
    """Sum over words of the best region (regions padded with zeros, as the searcher scores them)."""
    return float(np.maximum((np.asarray(words, np.float32) @ np.asarray(regions, np.float32).T).max(axis=1), 0.0).sum())


def global_top1(h: index.IndexHandle, rec: CaptionEmbeddingRecord) -> str:
    _, ids = h.search_global(np.asarray(rec.global_embedding, np.float32)[None], 1)
    return h.idmap.image_id(int(ids[0][0]))


def test_add_then_remove_captions(tmp_path: Path, caption_store) -> None:
    captions, records, _ = caption_store
    ids = [r.caption_id for r in records]
    m1 = index.build_caption_indexes(captions, tmp_path / "cap", caption_ids=ids[:300], specs={"word": "IVF16,Flat"},
                                     n_tune_queries=100)
    assert m1.corpus == "captions" and m1.n_items == 300
    m2 = index.add_captions(tmp_path / "cap", captions, ids[250:])  # 50 already indexed: skipped
    assert m2.version == 2 and m2.n_items == 400 and m2.history == ["build", "add 100 (50 already indexed)"]
    assert index.add_captions(tmp_path / "cap", captions, ids[:10]).version == 2  # nothing new: no new version
    word = m2.indexes["word"]
    assert word.n_at_train == m1.indexes["word"].n_vectors  # no retraining
    assert word.n_vectors == sum(len(r.tokens) for r in records)
    h = index.open_index(tmp_path / "cap")
    assert (h.path / "word.faiss.trained").is_file()  # kept for the next update's exact refresh
    # the probe's recall was updated exactly: an independent measurement on the published index agrees
    assert RecallProbe.load(h.path / "word.probe.npz").measure(h.indexes["word"]) == pytest.approx(word.current_recall)
    for rec in records[300:320]:
        assert global_top1(h, rec) == rec.caption_id
        _, item, slot = h.search_multi(np.asarray(rec.word_embeddings, np.float32), 1)
        assert [h.idmap.image_id(i) for i in item[:, 0]] == [rec.caption_id] * len(rec.tokens)
        np.testing.assert_array_equal(slot[:, 0], np.arange(len(rec.tokens)))
    m3 = index.remove_captions(tmp_path / "cap", ids[:40] + ["not-there"])
    assert m3.version == 3 and m3.n_items == 360 and m3.history[-1] == "remove 40"
    h = index.open_index(tmp_path / "cap")
    gone = set(ids[:40])
    for rec in records[:40]:
        assert global_top1(h, rec) not in gone
        _, item, _ = h.search_multi(np.asarray(rec.word_embeddings, np.float32), 5)
        assert not {h.idmap.image_id(i) for i in item.ravel() if i >= 0} & gone
    assert RecallProbe.load(h.path / "word.probe.npz").measure(h.indexes["word"]) == pytest.approx(
        m3.indexes["word"].current_recall)
    assert index.rollback(tmp_path / "cap").n_items == 400
    assert index.open_index(tmp_path / "cap").manifest.version == 2


def test_search_captions_sees_added_and_not_removed_captions(tmp_path: Path, caption_store) -> None:
    captions, records, images = caption_store
    img_store = write_images(tmp_path / "imgs", images)
    index.build_indexes(img_store, tmp_path / "img-idx", kind=("global",))
    stored = {r.caption_id: r for r in captions.iter_records()}
    regions = {r.image_id: r.region_embeddings for r in img_store.iter_records()}
    # an image whose best caption (of all 400) is one of its own
    image_id, best = next(
        (img.image_id, top) for img in images
        if (top := max(stored, key=lambda c: mrsw(stored[c].word_embeddings, regions[img.image_id])))
        .startswith(img.image_id)
    )
    first = [c for c in stored if c != best]
    index.build_caption_indexes(captions, tmp_path / "cap", caption_ids=first)
    enc = BagOfWordsEncoder(np.eye(32, dtype=np.float32))

    def hits() -> list[str]:
        searcher = index.Searcher(tmp_path / "img-idx", img_store, enc, fusion="mrsw",
                                  caption_index_dir=tmp_path / "cap", captions=captions)
        return [h.caption_id for h in searcher.search_captions(image_id, k=5)]

    assert best not in hits()
    index.add_captions(tmp_path / "cap", captions, [best])
    assert hits()[0] == best
    index.remove_captions(tmp_path / "cap", [best])
    assert best not in hits()


def test_updates_refuse_the_other_corpus(tmp_path: Path, caption_store) -> None:
    captions, records, images = caption_store
    img_store = write_images(tmp_path / "imgs", images)
    index.build_indexes(img_store, tmp_path / "img-idx", kind=("global",), image_ids=[i.image_id for i in images[:100]])
    index.build_caption_indexes(captions, tmp_path / "cap", caption_ids=[r.caption_id for r in records[:100]])
    with pytest.raises(ValueError, match="index of images, not of captions; update it with index.add_images"):
        index.add_captions(tmp_path / "img-idx", captions, [records[200].caption_id])
    with pytest.raises(ValueError, match="index of images, not of captions"):
        index.remove_captions(tmp_path / "img-idx", [images[0].image_id])
    with pytest.raises(ValueError, match="index of captions, not of images; update it with index.add_captions"):
        index.add_images(tmp_path / "cap", img_store, [images[150].image_id])
    with pytest.raises(ValueError, match="index of captions, not of images"):
        index.remove_images(tmp_path / "cap", [records[0].caption_id])
    assert index.open_index(tmp_path / "img-idx").version == 1 and index.open_index(tmp_path / "cap").version == 1


def test_caption_growth_drift_and_tombstones_trigger_rebuilds(tmp_path: Path, caption_store,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    captions, records, _ = caption_store
    ids = [r.caption_id for r in records]
    kw = dict(kind=("global",), growth_factor=1.5, specs={"global": "HNSW8"}, n_tune_queries=50)
    index.build_caption_indexes(captions, tmp_path / "a", caption_ids=ids[:100], **kw)
    index.build_caption_indexes(captions, tmp_path / "b", caption_ids=ids[:100], **kw)
    flagged = index.add_captions(tmp_path / "b", captions, ids[100:200], auto_rebuild=False)
    assert flagged.rebuild_due is not None and "1.5 x 100" in flagged.rebuild_due
    rebuilt = index.add_captions(tmp_path / "a", captions, ids[100:200])
    assert rebuilt.history[-1].startswith("rebuild: global: 200 vectors") and rebuilt.corpus == "captions"
    assert rebuilt.indexes["global"].n_at_train == 200 and rebuilt.build["growth_factor"] == 1.5
    # removals: HNSW tombstones, then a rebuild once the store is given
    m = index.remove_captions(tmp_path / "a", ids[:50])
    assert m.indexes["global"].tombstones == 50 and "tombstones" in (m.rebuild_due or "")
    m = index.remove_captions(tmp_path / "a", ids[50:55], captions=captions)
    assert m.history[-1].startswith("rebuild:") and m.indexes["global"].tombstones == 0 and m.n_items == 145
    # recall drift
    index.build_caption_indexes(captions, tmp_path / "c", kind=("word",), caption_ids=ids[:300],
                                specs={"word": "IVF16,Flat"}, target_recall=0.9, n_tune_queries=100)
    monkeypatch.setattr(RecallProbe, "refresh", lambda self, ann, **changed: 0.5)
    m = index.add_captions(tmp_path / "c", captions, ids[300:310], auto_rebuild=False)
    assert "drifted below 0.9 - 0.02" in (m.rebuild_due or "") and m.indexes["word"].current_recall == 0.5

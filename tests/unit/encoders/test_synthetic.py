"""Tests for encoders.synthetic: determinism, chunking, twin structure, captions, store round trip."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from regionrank.encoders.synthetic import (
    iter_compositional_chunks,
    make_compositional_dataset,
    twin_accuracy,
    write_to_store,
)

_NP = re.compile(r"a (\w+) (\w+)")
_REL = re.compile(r"a (\w+) (\w+) (left of|right of|above|below) a (\w+) (\w+)")


def _small(**kw):
    return make_compositional_dataset(60, feature_dim=32, **kw)


def test_deterministic_and_seed_dependent() -> None:
    a, b, c = _small(seed=3), _small(seed=3), _small(seed=4)
    assert a.captions == b.captions and a.image_ids == b.image_ids
    assert all(np.array_equal(x, y) for x, y in zip(a.region_feats, b.region_feats, strict=True))
    assert a.captions != c.captions and set(a.image_ids).isdisjoint(c.image_ids)
    # prototypes are shared across seeds: the same (object, attribute) gives close features
    key_a = {(int(o), int(t)): f for fs, os_, ts in zip(a.region_feats, a.objects, a.attributes, strict=True) for f, o, t in zip(fs, os_, ts, strict=True)}
    shared = [(f, key_a[(int(o), int(t))]) for fs, os_, ts in zip(c.region_feats, c.objects, c.attributes, strict=True)
              for f, o, t in zip(fs, os_, ts, strict=True) if (int(o), int(t)) in key_a]
    assert shared
    cos = [float(x @ y / np.linalg.norm(x) / np.linalg.norm(y)) for x, y in shared]
    assert np.mean(cos) > 0.4


def test_chunks_equal_in_memory_dataset() -> None:
    full = make_compositional_dataset(51, feature_dim=16, seed=1)
    chunks = list(iter_compositional_chunks(51, chunk_size=10, feature_dim=16, seed=1))
    assert [c.offset for c in chunks] == list(range(0, 51, 10))
    assert sum((c.captions for c in chunks), []) == full.captions
    assert sum((c.caption_regions for c in chunks), []) == full.caption_regions
    assert sum((c.image_ids for c in chunks), []) == full.image_ids
    np.testing.assert_array_equal(np.concatenate([c.twin for c in chunks]), full.twin)
    np.testing.assert_array_equal(np.concatenate([f for c in chunks for f in c.region_feats]), np.concatenate(full.region_feats))
    with pytest.raises(ValueError, match="even"):
        next(iter_compositional_chunks(10, chunk_size=3))


def test_structure_shapes_and_layout() -> None:
    ds = make_compositional_dataset(41, feature_dim=24, regions_per_image=(3, 6), seed=2)
    assert len(ds) == 41 and len(ds.captions) == 205 and ds.feature_dim == 24
    np.testing.assert_array_equal(ds.caption_image, np.arange(205) // 5)
    lens = ds.region_lens
    assert lens.min() >= 3 and lens.max() <= 6
    feats, boxes, plens = ds.padded()
    assert feats.shape == (41, lens.max(), 24) and boxes.shape == (41, lens.max(), 4)
    np.testing.assert_array_equal(plens, lens)
    for i in range(41):
        assert np.all(feats[i, lens[i] :] == 0)
        b = ds.boxes[i]
        assert np.all(b[:, 0] < b[:, 2]) and np.all(b[:, 1] < b[:, 3])
        assert np.all(b[:, [0, 2]] <= ds.widths[i]) and np.all(b[:, [1, 3]] <= ds.heights[i]) and np.all(b >= 0)
        assert len(set(ds.objects[i].tolist())) == lens[i] and len(set(ds.attributes[i].tolist())) == lens[i]
    t, tl = ds.tensors()
    assert t.dtype == torch.float32 and tl.tolist() == lens.tolist()
    fixed = make_compositional_dataset(6, feature_dim=8, regions_per_image=4)
    assert fixed.region_lens.tolist() == [4] * 6


def test_captions_describe_their_image_and_geometry() -> None:
    ds = make_compositional_dataset(80, feature_dim=8, seed=5)
    n_rel = 0
    for text, img, mentioned in zip(ds.captions, ds.caption_image, ds.caption_regions, strict=True):
        names = {(ds.attribute_names[a], ds.object_names[o]): r for r, (o, a) in enumerate(zip(ds.objects[img], ds.attributes[img], strict=True))}
        phrases = _NP.findall(text.replace("a photo of ", "").replace("an image with ", ""))
        assert phrases and all(p in names for p in phrases), (text, names)
        assert [names[p] for p in phrases] == list(mentioned)  # ground-truth grounding, in mention order
        m = _REL.search(text)
        if m:
            n_rel += 1
            ba, bb = ds.boxes[img][names[m.group(1, 2)]], ds.boxes[img][names[m.group(4, 5)]]
            dx = (bb[0] + bb[2] - ba[0] - ba[2]) / 2
            dy = (bb[1] + bb[3] - ba[1] - ba[3]) / 2
            want = ("left of" if dx > 0 else "right of") if abs(dx) >= abs(dy) else ("above" if dy > 0 else "below")
            assert m.group(3) == want, text
    assert n_rel > 100


def test_twins_swap_attributes_and_defeat_global_pooling() -> None:
    ds = make_compositional_dataset(200, feature_dim=256, seed=6)
    pairs = ds.twin_pairs()
    assert 25 < len(pairs) < 75  # about half of the 100 groups
    for a, b in pairs:
        assert ds.twin[a] == b and ds.twin[b] == a
        np.testing.assert_array_equal(ds.objects[a], ds.objects[b])
        assert np.all(ds.attributes[a] != ds.attributes[b])
        assert sorted(ds.attributes[a].tolist()) == sorted(ds.attributes[b].tolist())
        assert np.abs(ds.boxes[a] - ds.boxes[b]).max() <= 0.05 * max(ds.widths[a], ds.heights[a])
    # without noise the mean region feature of twins is identical: global pooling cannot separate them
    clean = make_compositional_dataset(200, feature_dim=256, seed=6, noise=0.0)
    mean = np.stack([f.mean(0) for f in clean.region_feats])
    np.testing.assert_allclose(mean[pairs[:, 0]], mean[pairs[:, 1]], atol=1e-5)
    lone = np.flatnonzero(clean.twin < 0)
    assert np.linalg.norm(mean[lone[:-1]] - mean[lone[1:]], axis=1).min() > 1.0
    # while the regions themselves differ (attribute bound to another object)
    assert min(np.abs(clean.region_feats[a] - clean.region_feats[b]).max() for a, b in pairs) > 0.5
    # ... and a bag-of-words of the captions is the same multiset of (attribute, object) words
    for a, b in pairs[:5]:
        assert sorted(ds.attribute_names[x] for x in ds.attributes[a]) == sorted(ds.attribute_names[x] for x in ds.attributes[b])


def test_binding_ceiling_equals_phrase_count_from_text() -> None:
    from regionrank.encoders.synthetic import binding_ceiling

    ds = make_compositional_dataset(120, feature_dim=4, seed=9, n_objects=10, n_attributes=8, regions_per_image=(2, 5))
    held = [{(ds.attribute_names[a], ds.object_names[o]) for o, a in zip(ds.objects[i], ds.attributes[i], strict=True)} for i in range(120)]
    shares = []
    for text in ds.captions:
        named = set(_NP.findall(text.replace("a photo of ", "").replace("an image with ", "")))
        shares.append(1 / sum(named <= h for h in held))
    assert binding_ceiling(ds) == pytest.approx(100 * np.mean(shares))
    assert binding_ceiling(ds) < 100.0


def test_twin_accuracy_oracle_and_chance() -> None:
    ds = make_compositional_dataset(40, feature_dim=8, seed=7)
    oracle = np.zeros((40, 200))
    for img in range(40):  # count the caption's (attribute, object) phrases present in the image
        names = {(ds.attribute_names[a], ds.object_names[o]) for o, a in zip(ds.objects[img], ds.attributes[img], strict=True)}
        for c, text in enumerate(ds.captions):
            phrases = _NP.findall(text.replace("a photo of ", "").replace("an image with ", ""))
            oracle[img, c] = np.mean([p in names for p in phrases])
    acc = twin_accuracy(oracle, ds)
    assert acc["t2i"] == 1.0 and acc["i2t"] == 1.0 and acc["pairs"] == len(ds.twin_pairs())
    flat = twin_accuracy(torch.zeros(40, 200), ds)
    assert flat["t2i"] == 0.5 and flat["i2t"] == 0.5
    with pytest.raises(ValueError, match="shape"):
        twin_accuracy(np.zeros((3, 3)), ds)
    with pytest.raises(ValueError, match="no twin"):
        twin_accuracy(np.zeros((4, 20)), make_compositional_dataset(4, feature_dim=4, hard_negatives=False))


def test_write_to_store_roundtrip(tmp_path) -> None:
    from regionrank.storage import RegionStore, read_caption_table

    ds = make_compositional_dataset(9, feature_dim=16, seed=8)
    ids, caps = write_to_store(ds, tmp_path / "regions", tmp_path / "caps.parquet", split="test", rows_per_shard=4)
    store = RegionStore(tmp_path / "regions")
    assert sorted(store.ids()) == sorted(ids) and store.feature_dim == 16
    for rec, i in zip(store.get([ids[3], ids[0]]), (3, 0), strict=True):
        np.testing.assert_allclose(rec.features.astype(np.float32), ds.region_feats[i], rtol=1e-3, atol=1e-2)
        np.testing.assert_allclose(rec.boxes, ds.boxes[i])
        assert rec.class_ids.tolist() == ds.objects[i].tolist() and rec.attr_ids.tolist() == ds.attributes[i].tolist()
        assert (rec.width, rec.height) == (ds.widths[i], ds.heights[i])
    table = read_caption_table(tmp_path / "caps.parquet")
    assert [c.text for c in table] == ds.captions and all(c.split == "test" for c in table)
    assert [c.image_id for c in table] == [ids[i] for i in ds.caption_image]
    assert len({c.caption_id for c in table}) == 45 and table == caps
    # idempotent: a second write skips stored images
    write_to_store(ds, tmp_path / "regions", tmp_path / "caps.parquet")
    assert len(RegionStore(tmp_path / "regions")) == 9


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="regions_per_image"):
        make_compositional_dataset(4, regions_per_image=(1, 3))
    with pytest.raises(ValueError, match="n_attributes"):
        make_compositional_dataset(4, regions_per_image=(3, 9), n_attributes=8)
    with pytest.raises(ValueError, match="n_images"):
        make_compositional_dataset(0)


@pytest.mark.slow
def test_scan_learns_and_beats_global_pooling_on_twins(tmp_path) -> None:
    """Held-out proof of learning through the real trainer and region shards (a few CPU minutes)."""
    from regionrank.encoders.checkpoint import load_model
    from regionrank.encoders.training import train

    tr = make_compositional_dataset(1500, feature_dim=256, seed=0)
    te = make_compositional_dataset(500, feature_dim=256, seed=1)
    _, caps_tr = write_to_store(tr, tmp_path / "regions", tmp_path / "train.parquet", split="train")
    _, caps_te = write_to_store(te, tmp_path / "regions", tmp_path / "test.parquet", split="test")
    feats, region_lens = te.tensors()
    results = {}
    for kind in ("scan", "scan-meanpool"):
        cfg = {"kind": kind, "name": f"test-{kind}", "img_dim": 256, "embed_size": 128, "word_dim": 100, "lr": 5e-4}
        report = train(cfg, tmp_path / "regions", caps_tr + caps_te, tmp_path / kind, epochs=3, val_split="test",
                       val_max_images=500)
        model = load_model(report.checkpoint).eval()
        with torch.no_grad():
            tokens, lens = model.vocab.encode_batch(te.captions)
            sims = model.score(model.embed_regions(feats), region_lens, model.embed_words(tokens, lens), lens)
        results[kind] = (report.epochs[-1].val, twin_accuracy(sims, te))
    scan_val, scan_twin = results["scan"]
    pool_val, pool_twin = results["scan-meanpool"]
    assert scan_val["i2t_r1"] > 70 and scan_val["t2i_r1"] > 55, scan_val
    assert scan_twin["t2i"] > 0.9 and scan_twin["i2t"] > 0.9, scan_twin
    assert pool_twin["t2i"] < 0.7, pool_twin
    assert scan_val["rsum"] > pool_val["rsum"] + 50, (scan_val, pool_val)

"""Tests for encoders.grounded: label embeddings, query words, store writing, and a real-MiniLM check."""

from __future__ import annotations

import numpy as np
import pytest

from encoders.grounded import GroundedEncoder
from encoders.teran import alignment_scores
from encoders.text import build_random_text_model
from storage import ImageEmbeddingStore, RegionStore
from storage.records import RegionRecord

TINY_BERT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=32)
LABELS = {1: "person", 17: "cat", 18: "dog", 10: "traffic light", 58: "hot dog", 63: "couch", 3: "car"}


@pytest.fixture(scope="module")
def encoder():
    return GroundedEncoder(LABELS, text_model=build_random_text_model(TINY_BERT, seed=0))


def record(image_id, class_ids, attr_ids=None, attr_scores=None):
    n = len(class_ids)
    boxes = np.tile(np.array([[0, 0, 10, 10]], dtype=np.float32), (n, 1))
    return RegionRecord(image_id=image_id, uri="mem://" + image_id, width=20, height=20, boxes=boxes,
                        features=np.zeros((n, 4), dtype=np.float16), class_ids=np.array(class_ids),
                        attr_ids=attr_ids, attr_scores=attr_scores, detector="ssd-mobilenet-coco")


def test_region_vectors_are_label_vectors_and_global_is_their_mean(encoder):
    rec = encoder.encode_record(record("a" * 64, [17, 63, 17]))
    assert rec.labels == ["cat", "couch", "cat"]
    expected = encoder.embed_phrases(["cat", "couch", "cat"])
    np.testing.assert_array_equal(rec.region_embeddings, expected)
    np.testing.assert_allclose(np.linalg.norm(rec.region_embeddings, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(rec.boxes, np.tile([[0, 0, 10, 10]], (3, 1)))
    assert encoder.label_bag_text(rec.labels) == "a photo of 2 cat, 1 couch"
    np.testing.assert_allclose(rec.global_embedding, sentence_reference(encoder, "a photo of 2 cat, 1 couch"), atol=1e-6)
    q = encoder.encode_query("Two cats on a couch")
    np.testing.assert_allclose(q.global_embedding, sentence_reference(encoder, "Two cats on a couch"), atol=1e-6)


def sentence_reference(encoder, text):
    """Mean of all token states of the sentence ([CLS] and [SEP] included), L2-normalised."""
    import torch

    ids = encoder.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        v = encoder.text_model(input_ids=ids).last_hidden_state[0].mean(0)
    return (v / v.norm()).numpy()


def test_query_word_matches_region_label_with_cosine_one(encoder):
    q = encoder.encode_query("A cat on the couch")
    assert q.tokens == ["cat", "couch"] and q.word_embeddings.dtype == np.float32
    img = encoder.encode_record(record("b" * 64, [63, 17]))
    sims = q.word_embeddings @ img.region_embeddings.T
    np.testing.assert_allclose([sims[0, 1], sims[1, 0]], [1.0, 1.0], rtol=1e-6)


def test_query_words_merge_multiword_labels_and_drop_stop_words(encoder):
    assert encoder.query_words("The hot dog next to a traffic light") == ["hot dog", "traffic light"]
    assert encoder.query_words("hot sauce on it") == ["hot", "sauce"]
    assert encoder.query_words("on the") == ["on", "the"]  # only stop words: keep them
    with pytest.raises(ValueError, match="no words"):
        encoder.encode_query("...")


def test_attributes_prefix_labels_above_threshold():
    enc = GroundedEncoder(LABELS, attr_names={1: "red", 2: "fluffy"}, min_attr_score=0.5,
                          text_model=build_random_text_model(TINY_BERT, seed=0))
    rec = enc.encode_record(record("c" * 64, [3, 17, 18], attr_ids=np.array([1, 2, 0]),
                                   attr_scores=np.array([0.9, 0.2, 0.9])))
    assert rec.labels == ["red car", "cat", "dog"]
    np.testing.assert_array_equal(rec.region_embeddings[0], enc.embed_phrases(["red car"])[0])
    assert enc.encoder_hash != GroundedEncoder(LABELS, text_model=(enc.tokenizer, enc.text_model)).encoder_hash


def test_records_without_usable_labels_are_rejected(encoder):
    bare = RegionRecord(image_id="d" * 64, uri="x", width=5, height=5, boxes=np.zeros((1, 4), np.float32),
                        features=np.zeros((1, 4), np.float16))
    with pytest.raises(ValueError, match="has no class_ids"):
        encoder.encode_record(bare)
    with pytest.raises(ValueError, match=r"class ids \[99\]"):
        encoder.encode_record(record("e" * 64, [17, 99]))
    with pytest.raises(ValueError, match="label_names is empty"):
        GroundedEncoder({}, text_model=(encoder.tokenizer, encoder.text_model))


def test_encode_images_writes_labelled_records_and_resumes(encoder, tmp_path):
    regions = RegionStore(tmp_path / "regions")
    with regions.writer(detector="ssd-mobilenet-coco", config_hash="c", weights_hash="w", feature_dim=4) as w:
        for i, ids in enumerate([[17], [18, 1], [3, 10, 1]]):
            w.write(record(f"{i:064x}", ids))
    out = ImageEmbeddingStore(tmp_path / "img")
    rep = encoder.encode_images(regions, out, image_ids=regions.ids()[:2])
    assert (rep.written, rep.encoder) == (2, "grounded-minilm")
    from encoders.embed import encode_images

    rep = encode_images(encoder, regions, out, batch_size=1)  # the generic entry point delegates
    assert (rep.written, rep.skipped_existing) == (1, 2)
    stored = out.get([f"{2:064x}"])[0]
    assert stored.labels == ["car", "traffic light", "person"] and stored.embed_dim == 16
    np.testing.assert_allclose(stored.region_embeddings.astype(np.float32),
                               encoder.embed_phrases(stored.labels), atol=2e-3)


def test_real_minilm_gives_meaningful_zero_shot_ranking():
    enc = GroundedEncoder(LABELS)
    kitten, car = enc.embed_phrases(["kitten"])[0], enc.embed_phrases(["cat", "car"])
    assert kitten @ car[0] > kitten @ car[1] + 0.2
    images = [enc.encode_record(record(f"{i:064x}", ids)) for i, ids in enumerate([[17, 63], [18, 1], [3, 10]])]
    regions = np.zeros((3, 2, enc.embed_dim), dtype=np.float32)
    for i, im in enumerate(images):
        regions[i] = im.region_embeddings
    for query, want in [("a kitten sleeping on a sofa", 0), ("a man walking his dog", 1), ("cars at a traffic light", 2)]:
        q = enc.encode_query(query)
        scores = alignment_scores(regions, [2, 2, 2], q.word_embeddings[None], [len(q.tokens)], pooling="MrSw")
        assert int(np.argmax(scores[:, 0])) == want, (query, scores[:, 0])

"""Tests for encoders.grounded: contextual label-in-sentence and query-token vectors (default), the static
mode, store writing, and real-MiniLM checks."""

from __future__ import annotations

import numpy as np
import pytest

from regionrank.encoders.embed import write_image_embeddings
from regionrank.encoders.grounded import GroundedEncoder
from regionrank.encoders.teran import alignment_scores
from regionrank.encoders.text import build_random_text_model
from regionrank.storage import ImageEmbeddingStore, RegionStore
from regionrank.storage.records import RegionRecord

TINY_BERT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=32)
LABELS = {0: "scene", 1: "person", 17: "cat", 18: "dog", 10: "traffic light", 58: "hot dog", 63: "couch", 3: "car"}


@pytest.fixture(scope="module")
def text_model():
    return build_random_text_model(TINY_BERT, seed=0)


@pytest.fixture(scope="module")
def encoder(text_model):
    """The static mode (every word and label embedded on its own)."""
    return GroundedEncoder(LABELS, text_model=text_model, contextual=False)


@pytest.fixture(scope="module")
def contextual(text_model):
    return GroundedEncoder(LABELS, text_model=text_model)


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
    enc = GroundedEncoder(LABELS, attr_names={1: "red", 2: "fluffy"}, min_attr_score=0.5, contextual=False,
                          text_model=build_random_text_model(TINY_BERT, seed=0))
    rec = enc.encode_record(record("c" * 64, [3, 17, 18], attr_ids=np.array([1, 2, 0]),
                                   attr_scores=np.array([0.9, 0.2, 0.9])))
    assert rec.labels == ["red car", "cat", "dog"]
    np.testing.assert_array_equal(rec.region_embeddings[0], enc.embed_phrases(["red car"])[0])
    assert enc.encoder_hash != GroundedEncoder(LABELS, text_model=(enc.tokenizer, enc.text_model),
                                               contextual=False).encoder_hash


def test_records_without_usable_labels_are_rejected(encoder):
    bare = RegionRecord(image_id="d" * 64, uri="x", width=5, height=5, boxes=np.zeros((1, 4), np.float32),
                        features=np.zeros((1, 4), np.float16))
    with pytest.raises(ValueError, match="has no class_ids"):
        encoder.encode_record(bare)
    with pytest.raises(ValueError, match=r"class ids \[99\]"):
        encoder.encode_record(record("e" * 64, [17, 99]))
    with pytest.raises(ValueError, match="label_names is empty"):
        GroundedEncoder({}, text_model=(encoder.tokenizer, encoder.text_model))
    with pytest.raises(ValueError, match=r"class ids \[99\]"):
        GroundedEncoder(LABELS, text_model=(encoder.tokenizer, encoder.text_model)).encode_record(record("f" * 64, [99]))


def test_write_image_embeddings_writes_labelled_records_and_resumes(encoder, tmp_path):
    regions = RegionStore(tmp_path / "regions")
    with regions.writer(detector="ssd-mobilenet-coco", config_hash="c", weights_hash="w", feature_dim=4) as w:
        for i, ids in enumerate([[17], [18, 1], [3, 10, 1]]):
            w.write(record(f"{i:064x}", ids))
    out = ImageEmbeddingStore(tmp_path / "img")
    rep = write_image_embeddings(encoder, regions, out, image_ids=regions.ids()[:2])
    assert (rep.written, rep.encoder) == (2, "grounded-minilm")

    rep = write_image_embeddings(encoder, regions, out, batch_size=1)  # resumes with another batch size
    assert (rep.written, rep.skipped_existing) == (1, 2)
    stored = out.get([f"{2:064x}"])[0]
    assert stored.labels == ["car", "traffic light", "person"] and stored.embed_dim == 16
    np.testing.assert_allclose(stored.region_embeddings.astype(np.float32),
                               encoder.embed_phrases(stored.labels), atol=2e-3)


@pytest.mark.slow  # the real MiniLM (house style: pretrained models only in slow tests)
def test_real_minilm_gives_meaningful_zero_shot_ranking_static():
    enc = GroundedEncoder(LABELS, contextual=False)
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


# ---------------------------------------------------------------------------------------------- contextual


def token_states(enc, text):
    """Reference: the last hidden states of ``[CLS] text [SEP]`` and each token's character span."""
    import torch

    batch = enc.tokenizer(text, return_offsets_mapping=True, return_tensors="pt")
    offsets = batch.pop("offset_mapping")[0].numpy()
    with torch.no_grad():
        states = enc.text_model(input_ids=batch["input_ids"]).last_hidden_state[0].numpy()
    return states, offsets


def span_mean(states, offsets, start, end):
    inside = (offsets[:, 0] >= start) & (offsets[:, 1] <= end) & (offsets[:, 1] > offsets[:, 0])
    assert inside.any()
    v = states[inside].mean(0)
    return v / np.linalg.norm(v)


def test_contextual_regions_are_label_states_in_the_bag_sentence(contextual):
    rec = contextual.encode_record(record("1" * 64, [0, 17, 63, 17]))
    assert rec.labels == ["scene", "cat", "couch", "cat"]
    text = "a photo of two cats and a couch"
    states, offsets = token_states(contextual, text)
    cats, couch = span_mean(states, offsets, 15, 19), span_mean(states, offsets, 26, 31)
    sentence = sentence_reference(contextual, text)
    np.testing.assert_allclose(rec.region_embeddings, np.stack([sentence, cats, couch, cats]), atol=1e-5)
    np.testing.assert_allclose(rec.global_embedding, sentence, atol=1e-5)  # the scene box's vector
    np.testing.assert_allclose(np.linalg.norm(rec.region_embeddings, axis=1), 1.0, rtol=1e-5)
    # count- and context-aware: one cat alone is not the same vector as one of two cats beside a couch
    alone = contextual.encode_record(record("2" * 64, [17]))
    assert float(alone.region_embeddings[0] @ cats) < 1 - 1e-4
    np.testing.assert_allclose(alone.region_embeddings[0], span_mean(*token_states(contextual, "a photo of a cat"), 13, 16),
                               atol=1e-5)
    # no objects: the scene box is the sentence "a photo"; no regions at all is a valid (empty) record
    empty = contextual.encode_record(record("3" * 64, [0]))
    np.testing.assert_allclose(empty.region_embeddings[0], sentence_reference(contextual, "a photo"), atol=1e-5)
    assert contextual.encode_record(record("4" * 64, [])).region_embeddings.shape == (0, 16)


def test_contextual_query_words_are_token_states_of_the_query(contextual):
    text = "Two cats, on the couch!"
    q = contextual.encode_query(text)
    assert q.tokens == ["two", "cats", "couch"]  # stop words and punctuation dropped
    states, offsets = token_states(contextual, text)  # ... after encoding the whole query: vectors in context
    expected = [span_mean(states, offsets, a, b) for a, b in [(0, 3), (4, 8), (17, 22)]]
    np.testing.assert_allclose(q.word_embeddings, np.stack(expected), atol=1e-5)
    np.testing.assert_allclose(q.global_embedding, sentence_reference(contextual, text), atol=1e-5)
    # a word split into several word-pieces is one token, the mean of its pieces
    many = contextual.encode_query("skateboarding")
    assert many.tokens == ["skateboarding"] and len(contextual.tokenizer.tokenize("skateboarding")) > 1
    with pytest.raises(ValueError, match="no words"):
        contextual.encode_query("?!")


def test_contextual_keep_stopwords_and_hash(text_model, contextual, encoder):
    keeping = GroundedEncoder(LABELS, text_model=text_model, exclude_stopwords=False)
    assert keeping.query_words("Two cats on the couch") == ["two", "cats", "on", "the", "couch"]
    assert contextual.query_words("on the") == ["on", "the"]  # only stop words: keep them
    full = keeping.encode_query("Two cats on the couch")
    np.testing.assert_allclose(contextual.encode_query("Two cats on the couch").word_embeddings,
                               full.word_embeddings[[0, 1, 4]], atol=1e-6)
    # the image side does not depend on the query options; it does depend on the mode
    assert keeping.encoder_hash == contextual.encoder_hash != encoder.encoder_hash


def test_contextual_store_round_trip(contextual, tmp_path):
    regions = RegionStore(tmp_path / "regions")
    with regions.writer(detector="ssd-mobilenet-coco", config_hash="c", weights_hash="w", feature_dim=4) as w:
        for i, ids in enumerate([[0, 17], [0, 18, 1, 1]]):
            w.write(record(f"{i:064x}", ids))
    out = ImageEmbeddingStore(tmp_path / "img")
    rep = write_image_embeddings(contextual, regions, out)
    assert rep.written == 2
    stored = out.get([f"{1:064x}"])[0]
    assert stored.labels == ["scene", "dog", "person", "person"]
    np.testing.assert_allclose(stored.region_embeddings.astype(np.float32),
                               contextual.encode_record(record(f"{1:064x}", [0, 18, 1, 1])).region_embeddings, atol=2e-3)
    with pytest.raises(ValueError):  # a store written by the static mode is another encoder's
        write_image_embeddings(
            GroundedEncoder(LABELS, text_model=(contextual.tokenizer, contextual.text_model), contextual=False),
            regions, out)


@pytest.mark.slow  # the real MiniLM (house style: pretrained models only in slow tests)
def test_real_minilm_contextual_ranking_and_explanations():
    enc = GroundedEncoder(LABELS)
    images = [enc.encode_record(record(f"{i:064x}", ids))
              for i, ids in enumerate([[0, 17, 63], [0, 18, 1], [0, 3, 3, 10], [0, 1, 1, 1]])]  # fmt: skip
    width = max(im.num_regions for im in images)
    regions = np.zeros((len(images), width, enc.embed_dim), dtype=np.float32)
    for i, im in enumerate(images):
        regions[i, : im.num_regions] = im.region_embeddings
    queries = [("a kitten sleeping on a sofa", 0), ("a man walking his dog", 1), ("cars at a traffic light", 2),
               ("a group of people standing together", 3), ("a cat", 0)]
    for query, want in queries:
        q = enc.encode_query(query)
        scores = alignment_scores(regions, [width] * len(images), q.word_embeddings[None], [len(q.tokens)], pooling="MrSw")
        assert int(np.argmax(scores[:, 0])) == want, (query, scores[:, 0])
    # the explanation of "cat": its best region in the cat image is the cat box, clearly closer than the couch
    q = enc.encode_query("a cat")
    sims = q.word_embeddings[q.tokens.index("cat")] @ images[0].region_embeddings.T
    assert images[0].labels[int(np.argmax(sims))] == "cat" and sims.max() > 0.8 and sims.max() - sims[2] > 0.2

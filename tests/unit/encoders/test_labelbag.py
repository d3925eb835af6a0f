"""Tests for encoders.labelbag: label-bag text, score threshold, mean pooling vs per-sentence reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regionrank.encoders.labelbag import (
    COCO_SYNONYMS,
    LabelBagEncoder,
    label_bag_text,
    natural_bag_text,
    normalize_query_text,
    record_labels,
    sentence_embeddings,
)
from regionrank.encoders.text import build_random_text_model
from regionrank.storage.records import RegionRecord

TINY_BERT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=64)
LABELS = {0: "scene", 1: "person", 18: "dog", 64: "potted plant", 67: "dining table"}


@pytest.fixture(scope="module")
def tiny_text_model():
    return build_random_text_model(TINY_BERT, seed=0)


def record(image_id, class_ids, class_scores=None):
    n = len(class_ids)
    return RegionRecord(image_id=image_id, uri="mem://" + image_id, width=20, height=20,
                        boxes=np.tile(np.array([[0, 0, 10, 10]], dtype=np.float32), (n, 1)),
                        features=np.zeros((n, 4), dtype=np.float16), class_ids=np.array(class_ids),
                        class_scores=None if class_scores is None else np.array(class_scores, dtype=np.float32),
                        detector="ssd-mobilenet-coco")


def test_label_bag_text_counts_most_frequent_first_then_alphabetical():
    assert label_bag_text(["dog", "person", "potted plant", "person", "dog", "person"]) == (
        "a photo of 3 person, 2 dog, 1 potted plant")
    assert label_bag_text(["dog", "cat"]) == "a photo of 1 cat, 1 dog"
    assert label_bag_text(["Dog ", "dog"]) == "a photo of 2 dog"
    assert label_bag_text([]) == "a photo"
    # the order of the detections does not matter
    assert label_bag_text(["cat", "dog", "dog"]) == label_bag_text(["dog", "cat", "dog"])


def test_record_labels_threshold_is_strict_and_scene_is_excluded():
    rec = record("a" * 64, [0, 1, 18, 1, 64, 67], [1.0, 0.9, 0.4, 0.41, 0.2, 0.5])
    assert record_labels(rec, LABELS) == ["person", "person", "dining table"]
    assert record_labels(rec, LABELS, min_score=0.3) == ["person", "dog", "person", "dining table"]
    assert record_labels(rec, LABELS, exclude_class_ids=()) == ["scene", "person", "person", "dining table"]
    # without scores every detection counts
    assert record_labels(record("b" * 64, [1, 18]), LABELS) == ["person", "dog"]


def test_record_labels_errors_name_the_image():
    no_classes = RegionRecord(image_id="c" * 64, uri="x", width=2, height=2, boxes=np.zeros((1, 4), np.float32),
                              features=np.zeros((1, 4), np.float16))
    with pytest.raises(ValueError, match="has no class_ids"):
        record_labels(no_classes, LABELS)
    with pytest.raises(ValueError, match=r"class ids \[99\].*'d{64}'"):
        record_labels(record("d" * 64, [1, 99], [0.9, 0.9]), LABELS)
    # an unknown id below the threshold is never looked up
    assert record_labels(record("e" * 64, [1, 99], [0.9, 0.1]), LABELS) == ["person"]


def test_sentence_embeddings_equal_unpadded_per_sentence_mean(tiny_text_model):
    tokenizer, model = tiny_text_model
    texts = ["a photo of 2 person, 1 dog", "dog", "a man and a woman sit at a dining table with plants", "a"]
    got = sentence_embeddings(tokenizer, model, texts, batch_size=3)
    assert got.shape == (4, 16) and got.dtype == np.float32
    with torch.no_grad():
        for text, row in zip(texts, got):
            ids = torch.tensor([tokenizer(text)["input_ids"]])  # one sentence, no padding
            states = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
            ref = states.mean(dim=0)
            ref = (ref / ref.norm()).numpy()
            np.testing.assert_allclose(row, ref, rtol=1e-5, atol=1e-6)
    assert sentence_embeddings(tokenizer, model, []).shape == (0, 16)
    with pytest.raises(ValueError, match="batch_size"):
        sentence_embeddings(tokenizer, model, texts, batch_size=0)


def test_encoder_scores_are_cosines_of_bag_and_caption(tiny_text_model):
    enc = LabelBagEncoder(LABELS, text_model=tiny_text_model)
    recs = [record("f" * 64, [0, 1, 1, 18], [1.0, 0.9, 0.8, 0.3]), record("0" * 64, [0], [1.0])]
    assert enc.image_texts(recs) == ["a photo of 2 person", "a photo"]
    captions = ["two people walking", "an empty room", "a dog"]
    scores = enc.scores(recs, captions)
    img = sentence_embeddings(*tiny_text_model, ["a photo of 2 person", "a photo"])
    cap = sentence_embeddings(*tiny_text_model, captions)
    ref = np.array([[float(np.dot(i, c)) for c in cap] for i in img], dtype=np.float32)
    assert scores.shape == (2, 3)
    np.testing.assert_allclose(scores, ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="label_names is empty"):
        LabelBagEncoder({}, text_model=tiny_text_model)


def test_natural_bag_text_is_an_english_sentence_with_noun_spans():
    text, spans = natural_bag_text(["dog", "person", "potted plant", "person", "dog", "person", "umbrella"])
    assert text == "a photo of three people, two dogs, a potted plant and an umbrella"
    assert {label: text[a:b] for label, (a, b) in spans.items()} == {
        "person": "people", "dog": "dogs", "potted plant": "potted plant", "umbrella": "umbrella"}
    assert natural_bag_text(["cat"]) == ("a photo of a cat", {"cat": (13, 16)})
    assert natural_bag_text([]) == ("a photo", {})
    plurals = natural_bag_text(["bench"] * 2 + ["wine glass"] * 3 + ["knife"] * 2 + ["skis"] * 2 + ["bus"] * 12)[0]
    assert plurals == "a photo of 12 buses, three wine glasses, two benches, two knives and two skis"
    # the order of the detections does not matter; the order of the labels is label_bag_text's
    assert natural_bag_text(["cat", "dog", "dog"]) == natural_bag_text(["dog", "cat", "dog"])
    assert natural_bag_text(["cat", "dog", "dog"])[0] == "a photo of two dogs and a cat"


def test_encoder_natural_text_format(tiny_text_model):
    enc = LabelBagEncoder(LABELS, text_model=tiny_text_model, text_format="natural")
    recs = [record("f" * 64, [0, 1, 1, 18], [1.0, 0.9, 0.8, 0.5]), record("0" * 64, [0], [1.0])]
    assert enc.image_texts(recs) == ["a photo of two people and a dog", "a photo"]
    np.testing.assert_allclose(enc.embed_label_bags(recs),
                               sentence_embeddings(*tiny_text_model, enc.image_texts(recs)), atol=1e-6)
    with pytest.raises(ValueError, match="text_format must be 'counts' or 'natural'; got 'prose'"):
        LabelBagEncoder(LABELS, text_model=tiny_text_model, text_format="prose")


COCO_SUBSET = ["person", "dog", "cat", "bench", "orange", "skis", "dining table", "cell phone", "hot dog", "couch", "giraffe"]


def test_normalize_query_text_maps_synonyms_and_plurals_onto_labels():
    def norm(text):
        return normalize_query_text(text, COCO_SUBSET)

    assert norm("A man and two Women with dogs.") == "a person and two person with dog"
    assert norm("Puppies on the sofa; giraffes near benches") == "dog on the couch giraffe near bench"
    assert norm("two tables, a phone and hot dogs") == "two dining table a cell phone and hot dog"
    # label words stay as they are, even when they end in "s"; unrelated plurals stay plural
    assert norm("skis and oranges on the grass skies houses") == "skis and orange on the grass skies houses"
    # a synonym of a label that is not in the vocabulary is left alone ("sedan" -> car, not a label here)
    assert norm("a sedan") == "a sedan"
    assert normalize_query_text("a sedan", [*COCO_SUBSET, "car"]) == "a car"
    assert norm("") == ""
    # custom synonym table
    assert normalize_query_text("a pup", ["dog"], synonyms={"dog": ("pup",)}) == "a dog"


def test_coco_synonyms_name_only_coco_labels_and_never_collide():
    coco = {"person", "bicycle", "car", "motorcycle", "airplane", "bus", "truck", "boat", "bench", "cat", "dog", "horse",
            "sheep", "cow", "handbag", "skis", "sports ball", "baseball bat", "baseball glove", "tennis racket",
            "wine glass", "cup", "knife", "donut", "couch", "potted plant", "dining table", "tv", "laptop", "mouse",
            "remote", "cell phone", "oven", "refrigerator", "teddy bear", "fire hydrant", "suitcase"}
    assert set(COCO_SYNONYMS) <= coco
    words = [w for ws in COCO_SYNONYMS.values() for w in ws]
    assert len(words) == len(set(words)), "a word must name exactly one label"
    # a whole label is never remapped; words of multi-word labels are ("table" -> "dining table")
    assert not set(words) & coco, "a label must not be remapped to another one"


@pytest.mark.slow
def test_real_minilm_matches_sentence_transformers():
    """Our pooling reproduces sentence-transformers' own all-MiniLM-L6-v2 encoding (the reference)."""
    st = pytest.importorskip("sentence_transformers")
    from regionrank.encoders.text import default_text_model_path

    texts = ["a photo of 4 person, 2 potted plant", "A man riding a wave on top of a surfboard."]
    enc = LabelBagEncoder(LABELS)
    ref = st.SentenceTransformer(str(default_text_model_path()), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(enc.encode_texts(texts), ref, rtol=1e-4, atol=1e-5)

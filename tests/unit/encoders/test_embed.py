"""Tests for encoders.embed: stored embeddings equal a direct forward pass; resumable; one model per store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regionrank.encoders import embed
from regionrank.encoders.checkpoint import model_hash, save_checkpoint
from regionrank.encoders.teran import TeranCfg, TeranModel, region_batch
from regionrank.encoders.text import build_random_text_model
from regionrank.storage import CaptionEmbeddingStore, ImageEmbeddingStore, RegionStore
from regionrank.storage.records import Caption, RegionRecord

TINY_BERT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=32)


def make_model(seed=0, **changes):
    base = dict(name="teran-embed", embed_dim=8, feature_dim=6, visual_layers=1, visual_heads=2, visual_ff=8,
                top_layers=1, top_heads=2, top_ff=8, dropout=0.1, text_model="random", text_dim=16,
                text_bert_config=TINY_BERT)
    base.update(changes)
    torch.manual_seed(seed)
    tokenizer, bert = build_random_text_model(TINY_BERT, seed=seed)
    return TeranModel(TeranCfg(**base), bert, tokenizer)


@pytest.fixture
def regions(tmp_path):
    rng = np.random.default_rng(0)
    store = RegionStore(tmp_path / "regions")
    with store.writer(detector="synthetic", config_hash="c", weights_hash="w", feature_dim=6) as w:
        for i, n in enumerate([3, 1, 4, 2, 5]):
            x = rng.uniform(0, 50, size=(n, 1))
            boxes = np.concatenate([x, x, x + 20, x + 30], axis=1).astype(np.float32)
            w.write(RegionRecord(image_id=f"{i:064x}", uri=f"mem://{i}", width=120, height=90, boxes=boxes,
                                 features=rng.normal(size=(n, 6)).astype(np.float16)))
    return store


def test_write_image_embeddings_stores_what_a_direct_forward_gives(regions, tmp_path):
    model = make_model().train()  # encode must switch dropout off by itself
    out = ImageEmbeddingStore(tmp_path / "img")
    report = embed.write_image_embeddings(model, regions, out, batch_size=2)
    assert (report.total, report.written, report.skipped_existing) == (5, 5, 0)
    assert report.encoder == "teran-embed" and report.encoder_hash == model_hash(model)
    assert model.training  # the caller's mode is restored
    model.eval()
    for rec in regions.get(regions.ids()):
        with torch.no_grad():
            emb, glob = model.encode_regions(region_batch([rec]))
        (stored,) = out.get([rec.image_id])
        assert stored.region_embeddings.shape == (rec.num_regions, 8) and stored.labels is None
        np.testing.assert_array_equal(stored.boxes, rec.boxes)
        assert (stored.width, stored.height, stored.uri) == (rec.width, rec.height, rec.uri)
        # float16 on disk
        np.testing.assert_allclose(stored.region_embeddings.astype(np.float32), emb[0, 1:].numpy(), atol=2e-3)
        np.testing.assert_allclose(stored.global_embedding.astype(np.float32), glob[0].numpy(), atol=2e-3)
    again = embed.write_image_embeddings(model, regions, out)
    assert (again.written, again.skipped_existing) == (0, 5)


def test_write_image_embeddings_resumes_and_refuses_a_second_model(regions, tmp_path):
    model = make_model()
    ck = save_checkpoint(tmp_path / "ck", model)
    out = tmp_path / "img"
    first = embed.write_image_embeddings(ck, regions, out, image_ids=regions.ids()[:2])
    assert first.written == 2
    calls = []
    rest = embed.write_image_embeddings(ck, regions, out, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert (rest.written, rest.skipped_existing) == (3, 2) and calls == [(2, 3), (3, 3)]
    assert sorted(ImageEmbeddingStore(out).ids()) == sorted(regions.ids())
    with pytest.raises(ValueError, match="encoded by another model"):
        embed.write_image_embeddings(make_model(seed=1), regions, out)


def test_encode_captions_keeps_the_rows_the_alignment_uses(tmp_path):
    model = make_model().eval()
    caps = [Caption(image_id="a" * 64, caption_id="c1", text="A dog runs on the beach."),
            Caption(image_id="b" * 64, caption_id="c2", text="two cats")]
    out = CaptionEmbeddingStore(tmp_path / "cap")
    report = embed.write_caption_embeddings(model, caps, out)
    assert report.written == 2
    tokens = model.tokenize([c.text for c in caps])
    with torch.no_grad():
        words, glob = model.encode_text(tokens)
    for i, cap in enumerate(caps):
        (rec,) = out.get([cap.caption_id])
        n = int(tokens.lengths[i])
        # reference trim: [CLS], [SEP] and the last word-piece are not part of the alignment
        assert rec.tokens == tokens.tokens[i][1 : n - 2]
        np.testing.assert_allclose(rec.word_embeddings.astype(np.float32), words[i, 1 : n - 2].numpy(), atol=2e-3)
        np.testing.assert_allclose(rec.global_embedding.astype(np.float32), glob[i].numpy(), atol=2e-3)
        assert rec.image_id == cap.image_id and rec.text == cap.text
    assert out.get(["c1"])[0].tokens == ["a", "dog", "runs", "on", "the", "beach"]
    full = embed.encode_texts(make_model(reference_trim=False), ["two cats"])[0]
    assert full.tokens == ["two", "cats"]
    with pytest.raises(ValueError, match="duplicate caption_id"):
        embed.write_caption_embeddings(model, caps + caps[:1], tmp_path / "dup")


def test_scan_embeddings_include_start_and_end(regions, tmp_path):
    scan = pytest.importorskip("regionrank.encoders.scan_model")
    from regionrank.encoders.vocab import build_vocab

    vocab = build_vocab(["a red cat", "a dog"], threshold=1)
    m = scan.ScanModel(len(vocab), img_dim=6, embed_size=8, word_dim=4)
    with pytest.raises(ValueError, match="no vocabulary"):
        embed.encode_texts(m, ["a cat"])
    m.vocab = vocab
    (enc,) = embed.encode_texts(m, ["a red cat"])
    assert enc.tokens == ["<start>", "a", "red", "cat", "<end>"] and enc.global_embedding is None
    ids, lens = vocab.encode_batch(["a red cat"])
    with torch.no_grad():
        np.testing.assert_allclose(enc.word_embeddings, m.embed_words(ids, lens)[0].numpy(), rtol=1e-6)
    report = embed.write_image_embeddings(m, regions, tmp_path / "scan-img")
    assert report.encoder == "scan-t2i" and report.written == 5
    rec = ImageEmbeddingStore(tmp_path / "scan-img").get([regions.ids()[0]])[0]
    assert rec.global_embedding is None and rec.region_embeddings.shape == (3, 8)

"""Tests for encoders.teran: alignment pooling against per-pair formulas, trimming, model, registry."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from regionrank.encoders import registry, teran
from regionrank.encoders.registry import list_models, load_teran_cfg
from regionrank.encoders.teran import (
    POOLINGS,
    TeranCfg,
    TeranModel,
    alignment_scores,
    region_batch,
    spatial_features,
    trim_for_alignment,
)
from regionrank.storage.records import RegionRecord

TINY_BERT = dict(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def tiny_cfg(**changes) -> TeranCfg:
    base = dict(
        name="teran-test",
        embed_dim=16,
        feature_dim=12,
        visual_layers=1,
        visual_heads=2,
        visual_ff=32,
        top_layers=1,
        top_heads=2,
        top_ff=32,
        dropout=0.0,
        text_model="random",
        text_dim=32,
        text_bert_config=TINY_BERT,
        max_tokens=24,
    )
    base.update(changes)
    return TeranCfg(**base)


# ----------------------------------------------------------------------------------------------
# Independent reference: one (image, caption) pair at a time, plain Python loops.
# ----------------------------------------------------------------------------------------------


def ref_pair_score(v, n_r, t, n_w, pooling):
    """v: [R_pad, E], t: [W_pad, E]; padded entries of A are 0 (reference quirk)."""
    r_pad, w_pad = v.shape[0], t.shape[0]
    A = [[0.0] * w_pad for _ in range(r_pad)]
    for r in range(n_r):
        for w in range(n_w):
            A[r][w] = float(sum(a * b for a, b in zip(v[r], t[w])))
    mrsw = sum(max(A[r][w] for r in range(r_pad)) for w in range(w_pad))
    mwsr = sum(max(A[r][w] for w in range(w_pad)) for r in range(r_pad))
    total = sum(A[r][w] for r in range(r_pad) for w in range(w_pad))
    if pooling == "MrSw":
        return mrsw
    if pooling == "MwSr":
        return mwsr
    if pooling == "symm":
        return mrsw + mwsr
    if pooling == "MrAVGw":
        return mrsw / n_w
    if pooling == "sum":
        return total
    if pooling == "mean":
        return total / (r_pad * w_pad)
    assert pooling == "scan-sentences"
    if n_w == 0:
        return 0.0
    score = 0.0
    for r in range(n_r):
        logits = []
        for w in range(n_w):
            col_norm = math.sqrt(sum(max(A[rr][w], 0.0) ** 2 for rr in range(r_pad)))
            logits.append(max(A[r][w], 0.0) / max(col_norm, 1e-12))
        mx = max(logits)
        ex = [math.exp(x - mx) for x in logits]
        beta = [e / sum(ex) for e in ex]
        u = [sum(beta[w] * t[w][k] for w in range(n_w)) for k in range(len(v[r]))]
        dot = sum(a * b for a, b in zip(v[r], u))
        nv = math.sqrt(sum(a * a for a in v[r]))
        nu = math.sqrt(sum(a * a for a in u))
        score += dot / max(nv * nu, 1e-8)
    return score


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def padded_batch():
    rng = np.random.default_rng(0)
    regions = unit(rng.normal(size=(3, 5, 6)))
    words = unit(rng.normal(size=(4, 7, 6)))
    region_lens = np.array([5, 3, 1])
    word_lens = np.array([7, 4, 1, 2])
    return regions, region_lens, words, word_lens


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_alignment_scores_match_per_pair_formula(padded_batch, pooling, dtype):
    regions, region_lens, words, word_lens = padded_batch
    got = alignment_scores(regions.astype(dtype), region_lens, words.astype(dtype), word_lens, pooling=pooling)
    assert isinstance(got, np.ndarray) and got.dtype == dtype and got.shape == (3, 4)
    ref = np.array(
        [
            [ref_pair_score(regions[i], region_lens[i], words[c], word_lens[c], pooling) for c in range(4)]
            for i in range(3)
        ]
    )
    tol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_alignment_scores_torch_keeps_dtype_and_is_differentiable(padded_batch, pooling):
    regions, region_lens, words, word_lens = padded_batch
    reg = torch.tensor(regions, requires_grad=True)
    got = alignment_scores(reg, torch.tensor(region_lens), torch.tensor(words), torch.tensor(word_lens), pooling=pooling)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    np.testing.assert_allclose(
        got.detach().numpy(), alignment_scores(regions, region_lens, words, word_lens, pooling=pooling), rtol=1e-12
    )
    got.sum().backward()
    assert torch.isfinite(reg.grad).all()


def test_zero_fill_quirk_clips_negative_word_maxima_only_with_padding():
    # Every region-word similarity is negative: MrSw over an image with a padded region becomes 0 per word.
    v = np.array([[[1.0, 0.0], [1.0, 0.0]]])
    t = np.array([[[-1.0, 0.0], [-0.6, 0.8]]])
    full = alignment_scores(v, [2], t, [2], pooling="MrSw")
    padded = alignment_scores(v, [1], t, [2], pooling="MrSw")
    np.testing.assert_allclose(full, [[-1.0 - 0.6]])
    np.testing.assert_allclose(padded, [[0.0]])


def test_mean_pooling_divides_by_padded_sizes():
    rng = np.random.default_rng(1)
    v = unit(rng.normal(size=(1, 2, 4)))
    t = unit(rng.normal(size=(1, 3, 4)))
    base = alignment_scores(v, [2], t, [3], pooling="mean")
    v_pad = np.concatenate([v, np.zeros((1, 2, 4))], axis=1)  # two padded region slots
    padded = alignment_scores(v_pad, [2], t, [3], pooling="mean")
    np.testing.assert_allclose(padded, base * (2 * 3) / (4 * 3))
    np.testing.assert_allclose(base, (v[0] @ t[0].T).sum() / 6)


def test_alignment_scores_rejects_bad_inputs(padded_batch):
    regions, region_lens, words, word_lens = padded_batch
    with pytest.raises(ValueError, match="pooling must be one of"):
        alignment_scores(regions, region_lens, words, word_lens, pooling="max")
    with pytest.raises(ValueError, match="lengths must lie"):
        alignment_scores(regions, region_lens + 1, words, word_lens)
    with pytest.raises(TypeError, match="share a floating dtype"):
        alignment_scores(regions, region_lens, words.astype(np.float32), word_lens)
    with pytest.raises(ValueError, match="same E"):
        alignment_scores(regions, region_lens, words[:, :, :5], word_lens)


def test_trim_drops_cls_sep_and_last_wordpiece_with_reference_trim():
    # Caption 0: [CLS] w1 w2 w3 [SEP] (len 5); caption 1: [CLS] w1 [SEP] pad pad (len 3).
    words = torch.arange(2 * 5, dtype=torch.float64).reshape(2, 5, 1)
    regions = torch.arange(2 * 4, dtype=torch.float64).reshape(2, 4, 1)
    r, rl, w, wl = trim_for_alignment(regions, torch.tensor([4, 2]), words, torch.tensor([5, 3]))
    assert r.shape == (2, 3, 1) and rl.tolist() == [3, 1]
    assert torch.equal(r[0, :, 0], regions[0, 1:, 0])
    assert w.shape == (2, 2, 1) and wl.tolist() == [2, 0]
    assert torch.equal(w[0, :, 0], words[0, 1:3, 0])  # w1 w2 kept; w3 (last word-piece) and [SEP] dropped
    r, rl, w, wl = trim_for_alignment(regions, torch.tensor([4, 2]), words, torch.tensor([5, 3]), reference_trim=False)
    assert w.shape == (2, 3, 1) and wl.tolist() == [3, 1]
    assert torch.equal(w[0, :, 0], words[0, 1:4, 0])


def test_spatial_features_formula():
    boxes = torch.tensor([[10.0, 20.0, 60.0, 100.0]])
    got = spatial_features(boxes, torch.tensor([[200.0, 100.0]]))
    expected = torch.tensor([[0.05, 0.2, 0.3, 1.0, (0.3 - 0.05) * (1.0 - 0.2)]])
    torch.testing.assert_close(got, expected)


def make_records(rng, dim, counts):
    recs = []
    for i, n in enumerate(counts):
        x1 = rng.uniform(0, 50, size=n)
        y1 = rng.uniform(0, 40, size=n)
        boxes = np.stack([x1, y1, x1 + rng.uniform(5, 50, size=n), y1 + rng.uniform(5, 40, size=n)], axis=1)
        recs.append(
            RegionRecord(
                image_id=f"img{i}",
                uri=f"mem://{i}",
                width=100,
                height=80,
                boxes=boxes.astype(np.float32),
                features=rng.normal(size=(n, dim)).astype(np.float16),
            )
        )
    return recs


def test_region_batch_reserves_slot_zero_and_pads():
    rng = np.random.default_rng(2)
    recs = make_records(rng, 12, [3, 1])
    batch = region_batch(recs)
    assert batch.features.shape == (2, 4, 12) and batch.lengths.tolist() == [4, 2]
    assert torch.count_nonzero(batch.features[:, 0]) == 0 and torch.count_nonzero(batch.spatial[:, 0]) == 0
    torch.testing.assert_close(batch.features[0, 1:], torch.from_numpy(recs[0].features.astype(np.float32)))
    assert torch.count_nonzero(batch.features[1, 2:]) == 0
    no_slot = region_batch(recs, reserved_slot=False)
    assert no_slot.features.shape == (2, 3, 12) and no_slot.lengths.tolist() == [3, 1]
    with pytest.raises(ValueError, match="feature widths"):
        region_batch([recs[0], make_records(rng, 8, [2])[0]])


@pytest.fixture(scope="module")
def tiny_model():
    from regionrank.encoders.text import build_random_text_model

    torch.manual_seed(0)
    tokenizer, bert = build_random_text_model(TINY_BERT)
    return TeranModel(tiny_cfg(), bert, tokenizer).eval()


def test_model_outputs_unit_vectors_and_global_is_slot_zero(tiny_model):
    rng = np.random.default_rng(3)
    recs = make_records(rng, 12, [4, 2, 3])
    with torch.no_grad():
        region_emb, img_global = tiny_model.encode_regions(region_batch(recs))
        tokens = tiny_model.tokenize(["a red cat", "two dogs play in the park"])
        word_emb, cap_global = tiny_model.encode_text(tokens)
        out = tiny_model(region_batch(recs), tokens)
    assert region_emb.shape == (3, 5, 16) and word_emb.shape == (2, tokens.input_ids.shape[1], 16)
    torch.testing.assert_close(region_emb.norm(dim=-1), torch.ones(3, 5))
    torch.testing.assert_close(img_global, region_emb[:, 0])
    torch.testing.assert_close(cap_global, word_emb[:, 0])
    assert out.alignment.shape == (3, 2) and out.global_sims.shape == (3, 2)
    torch.testing.assert_close(out.global_sims, img_global @ cap_global.T)
    regions, rl, words, wl = trim_for_alignment(region_emb, torch.tensor([5, 3, 4]), word_emb, tokens.lengths)
    torch.testing.assert_close(out.alignment, alignment_scores(regions, rl, words, wl, pooling="MrSw"))


def test_region_encoding_ignores_padding_and_region_order(tiny_model):
    rng = np.random.default_rng(4)
    small, big = make_records(rng, 12, [2, 5])
    with torch.no_grad():
        alone, _ = tiny_model.encode_regions(region_batch([small]))
        batched, _ = tiny_model.encode_regions(region_batch([small, big]))
        perm = RegionRecord(
            image_id="p", uri="", width=100, height=80, boxes=small.boxes[::-1].copy(), features=small.features[::-1].copy()
        )
        permuted, _ = tiny_model.encode_regions(region_batch([perm]))
    torch.testing.assert_close(batched[0, :3], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(permuted[0, 0], alone[0, 0], atol=1e-5, rtol=1e-5)  # set model: order-free
    torch.testing.assert_close(permuted[0, 1:].flip(0), alone[0, 1:], atol=1e-5, rtol=1e-5)


def test_loss_backpropagates_to_every_trained_part(tiny_model):
    pytest.importorskip("regionrank.encoders.losses")
    rng = np.random.default_rng(5)
    model = TeranModel(tiny_model.cfg, tiny_model.text_backbone, tiny_model.tokenizer).train()
    out = model(region_batch(make_records(rng, 12, [3, 2])), model.tokenize(["a cat", "a dog on grass"]))
    loss = model.loss(out)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for part in (model.visual.spatial_map, model.visual.proj, model.text_proj, model.image_top):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads), part


def test_shared_top_reuses_text_transformer(tiny_model):
    model = TeranModel(tiny_cfg(shared_top=True), tiny_model.text_backbone, tiny_model.tokenizer)
    assert model.image_top is None
    assert not any(name.startswith("image_top") for name, _ in model.named_parameters())


def test_registry_lists_shipped_configs_with_reference_hyperparameters():
    names = list_models()
    assert {"teran-coco", "teran-f30k"} <= set(names)
    coco, f30k = load_teran_cfg("teran-coco"), load_teran_cfg("teran-f30k")
    assert (coco.batch_size, coco.warmup_iters, coco.lr, coco.lr_step_epochs, coco.lr_gamma) == (40, 0, 1e-5, 20, 0.1)
    assert (f30k.batch_size, f30k.warmup_iters) == (30, 1000)
    for cfg in (coco, f30k):
        assert (cfg.visual_layers, cfg.top_layers, cfg.embed_dim, cfg.feature_dim, cfg.pooling) == (4, 2, 1024, 2048, "MrSw")
        assert cfg.text_dim == 384 and any("MiniLM" in d for d in cfg.deviations)
        assert cfg.reference_trim and cfg.max_violation and cfg.margin == 0.2 and cfg.grad_clip == 2.0


def test_registry_rejects_unknown_names_and_keys(tmp_path):
    with pytest.raises(ValueError, match="known models: .*teran-coco"):
        registry.get_model_cfg("teran-nope")
    with pytest.raises(ValueError, match=r"unknown TeranCfg keys \['embed_size'\]; known keys"):
        load_teran_cfg({"name": "x", "embed_size": 3})
    with pytest.raises(ValueError, match="pooling must be one of"):
        tiny_cfg(pooling="max")
    cfg = tiny_cfg()
    assert TeranCfg.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="text_dim"):
        from regionrank.encoders.text import build_random_text_model

        tok, bert = build_random_text_model(dict(TINY_BERT, hidden_size=16))
        TeranModel(cfg, bert, tok)


@pytest.mark.slow
def test_create_encoder_teran_coco_with_real_minilm():
    model = registry.create_encoder("teran-coco")
    assert model.text_backbone.config.hidden_size == 384
    assert model.visual.transformer.layers[0].self_attn.embed_dim == 2048
    tokens = model.tokenize(["a man riding a horse"])
    assert tokens.tokens[0][0] == "[CLS]" and tokens.tokens[0][-1] == "[SEP]"


def test_exclude_stopwords_removes_them_before_tokenising(tiny_model):
    assert not tiny_cfg().exclude_stopwords  # reference default
    model = TeranModel(tiny_cfg(exclude_stopwords=True), tiny_model.text_backbone, tiny_model.tokenizer)
    got = model.tokenize(["A dog on the red car.", "the of a"]).tokens
    assert got[0] == tiny_model.tokenize(["dog red car"]).tokens[0]
    assert "the" in tiny_model.tokenize(["A dog on the red car."]).tokens[0]
    assert got[1] == tiny_model.tokenize(["the of a"]).tokens[0]  # only stop words: kept whole, never empty
    assert TeranCfg.from_dict(dict(tiny_cfg(exclude_stopwords=True).to_dict())).exclude_stopwords

"""Tests for encoders.adapters: query encoders and the parameter-free SCAN re-ranker."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from regionrank.encoders.adapters import GroundedQueryEncoder, ScanReranker, TeranQueryEncoder
from regionrank.encoders.embed import encode_texts
from regionrank.encoders.teran import TeranCfg, TeranModel
from regionrank.encoders.text import build_random_text_model
from regionrank.storage.records import ImageEmbeddingRecord, QueryEmbedding

pytest.importorskip("regionrank.encoders.scan_model")

TINY_BERT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=32)


def teran(reference_trim=True):
    cfg = TeranCfg(name="teran-adapt", embed_dim=8, feature_dim=6, visual_layers=1, visual_heads=2, visual_ff=8,
                   top_layers=1, top_heads=2, top_ff=8, dropout=0.0, text_model="random", text_dim=16,
                   text_bert_config=TINY_BERT, reference_trim=reference_trim)
    torch.manual_seed(0)
    tok, bert = build_random_text_model(TINY_BERT, seed=0)
    return TeranModel(cfg, bert, tok)


def test_teran_query_keeps_its_last_word_under_the_reference_trim():
    model = teran()
    enc = TeranQueryEncoder(model)
    q = enc.encode_query("a red cat")
    assert q.tokens == ["a", "red", "cat"] and q.text == "a red cat"
    (direct,) = encode_texts(model, ["a red cat ."])
    np.testing.assert_array_equal(q.word_embeddings, direct.word_embeddings)
    np.testing.assert_array_equal(q.global_embedding, direct.global_embedding)
    assert q.word_embeddings.dtype == np.float32 and q.global_embedding.shape == (8,)
    assert enc.encode_query("a red cat.").tokens == ["a", "red", "cat"]  # no second period
    assert TeranQueryEncoder(teran(reference_trim=False)).encode_query("a red cat").tokens == ["a", "red", "cat"]
    with pytest.raises(ValueError, match="empty"):
        enc.encode_query("   ")


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def ref_t2i(regions, words, lambda_softmax=9.0, lambda_lse=6.0):
    """SCAN t2i, clipped_l2norm, LogSumExp for one pair, with plain loops (ALGORITHMS.md 3.2-3.3)."""
    n_r, n_w = len(regions), len(words)
    s = [[float(regions[i] @ words[j]) for j in range(n_w)] for i in range(n_r)]
    u = [[x if x > 0 else 0.1 * x for x in row] for row in s]
    sbar = [[u[i][j] / (math.sqrt(sum(v * v for v in u[i])) + 1e-8) for j in range(n_w)] for i in range(n_r)]
    rel, alphas = [], np.zeros((n_w, n_r))
    for j in range(n_w):
        ex = [math.exp(lambda_softmax * sbar[i][j]) for i in range(n_r)]
        alpha = [e / sum(ex) for e in ex]
        alphas[j] = alpha
        a = sum(alpha[i] * regions[i] for i in range(n_r))
        rel.append(float(words[j] @ a) / max(float(np.linalg.norm(words[j]) * np.linalg.norm(a)), 1e-8))
    return math.log(sum(math.exp(lambda_lse * r) for r in rel)) / lambda_lse, alphas


def candidates(rng, counts, dim=6):
    return [ImageEmbeddingRecord(image_id=f"{i:064x}", uri="", boxes=np.zeros((n, 4), np.float32),
                                 region_embeddings=unit(rng.normal(size=(n, dim))).astype(np.float16))
            for i, n in enumerate(counts)]


def test_scan_reranker_matches_a_per_candidate_reference():
    rng = np.random.default_rng(0)
    cands = candidates(rng, [3, 1, 5, 2])
    query = QueryEmbedding(text="q", tokens=["a", "b", "c"], word_embeddings=unit(rng.normal(size=(3, 6))).astype(np.float32))
    out = ScanReranker(max_candidates_per_chunk=3).rerank(query, cands)
    assert out.scores.shape == (4,) and out.scores.dtype == np.float32
    for k, c in enumerate(cands):
        score, alpha = ref_t2i(c.region_embeddings.astype(np.float32).astype(np.float64),
                               query.word_embeddings.astype(np.float64))
        assert out.scores[k] == pytest.approx(score, abs=1e-5)
        assert out.word_region_weights[k].shape == (3, c.num_regions)
        np.testing.assert_allclose(out.word_region_weights[k], alpha, atol=1e-5)
        np.testing.assert_allclose(out.word_region_weights[k].sum(1), 1.0, rtol=1e-5)


def test_scan_reranker_i2t_direction_and_errors():
    rng = np.random.default_rng(1)
    cands = candidates(rng, [2, 4])
    query = QueryEmbedding(text="q", tokens=["x", "y"], word_embeddings=unit(rng.normal(size=(2, 6))).astype(np.float32))
    from regionrank.encoders.scan import xattn_scores

    out = ScanReranker(direction="i2t", lambda_softmax=4.0, lambda_lse=5.0).rerank(query, cands)
    for k, c in enumerate(cands):
        direct = xattn_scores(torch.from_numpy(c.region_embeddings.astype(np.float32))[None],
                              torch.from_numpy(query.word_embeddings)[None], [2], direction="i2t",
                              lambda_softmax=4.0, lambda_lse=5.0)
        assert out.scores[k] == pytest.approx(float(direct[0, 0]), abs=1e-5)
        assert out.word_region_weights[k].shape == (2, c.num_regions)
    with pytest.raises(ValueError):
        ScanReranker(direction="sideways")
    wide = QueryEmbedding(text="q", tokens=["x"], word_embeddings=np.ones((1, 5), np.float32))
    with pytest.raises(ValueError, match="5-d words"):
        ScanReranker().rerank(wide, cands)


def test_grounded_query_encoder_delegates():
    class Fake:
        def encode_query(self, text):
            return QueryEmbedding(text=text, tokens=["cat"], word_embeddings=np.ones((1, 3), np.float32))

    assert GroundedQueryEncoder(Fake()).encode_query("cat").tokens == ["cat"]


NORMS = ["softmax", "l2norm", "clipped_l2norm", "l1norm", "clipped_l1norm", "clipped", "no_norm"]


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("agg", ["LogSumExp", "Mean", "Max", "Sum"])
def test_stacked_estimates_equal_the_padded_torch_estimates(direction: str, norm: str, agg: str,
                                                             scan_estimate_oracle) -> None:
    from regionrank.encoders.scan_estimate import scan_score_estimates

    rng = np.random.default_rng(4)
    counts = np.array([5, 1, 0, 7, 3, 2])
    sims = np.tanh(rng.standard_normal((int(counts.sum()), 3))).astype(np.float32)
    got = scan_score_estimates(sims, counts, direction=direction, raw_feature_norm=norm, agg_func=agg,
                                  lambda_softmax=9.0, lambda_lse=6.0)
    lens = np.maximum(counts, 1)
    padded = np.zeros((counts.size, int(lens.max()), 3), np.float64)
    for i, (c, s0) in enumerate(zip(counts, np.cumsum(counts) - counts)):
        padded[i, :c] = sims[s0 : s0 + c]
    ref = scan_estimate_oracle(torch.from_numpy(padded), torch.from_numpy(lens), direction=direction,
                                raw_feature_norm=norm, agg_func=agg, lambda_softmax=9.0, lambda_lse=6.0)
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-6)


def test_scan_reranker_estimate_equals_the_per_candidate_estimate(scan_estimate_oracle) -> None:
    rng = np.random.default_rng(3)
    words = rng.standard_normal((3, 8)).astype(np.float32)
    words /= np.linalg.norm(words, axis=1, keepdims=True)
    query = QueryEmbedding(text="a b c", tokens=["a", "b", "c"], word_embeddings=words, global_embedding=None)
    cands = []
    for i, r in enumerate([5, 1, 0, 7, 3]):
        regions = rng.standard_normal((r, 8)).astype(np.float32) + (words[0] if i % 2 else 0)
        regions /= np.maximum(np.linalg.norm(regions, axis=1, keepdims=True), 1e-8)
        cands.append(ImageEmbeddingRecord(image_id=f"i{i}", uri="", boxes=np.zeros((r, 4), np.float32),
                                          region_embeddings=regions.reshape(r, 8)))
    counts = np.array([c.num_regions for c in cands])
    stacked = np.concatenate([c.region_embeddings for c in cands if c.num_regions])
    sims = stacked @ words.T
    for direction in ("t2i", "i2t"):
        rr = ScanReranker(direction=direction, agg_func="Mean")
        est = rr.estimate(query, sims, counts)
        assert est.shape == (5,) and est.dtype == np.float32
        for i, c in enumerate(cands):
            one = torch.from_numpy(c.region_embeddings @ words.T if c.num_regions else np.zeros((1, 3), np.float32))
            ref = scan_estimate_oracle(one[None], [max(c.num_regions, 1)], direction=direction, agg_func="Mean")
            assert est[i] == pytest.approx(float(ref[0]), abs=1e-6)
    with pytest.raises(ValueError, match="3 query words"):
        ScanReranker().estimate(query, sims[:, :2], counts)
    with pytest.raises(ValueError, match="sum\\(counts\\)=16"):
        ScanReranker().estimate(query, sims[:-1], counts)


def test_scan_reranker_scores_equal_rerank_scores_without_maps() -> None:
    rng = np.random.default_rng(9)
    words = rng.standard_normal((4, 8)).astype(np.float32)
    words /= np.linalg.norm(words, axis=1, keepdims=True)
    query = QueryEmbedding(text="a b c d", tokens=list("abcd"), word_embeddings=words, global_embedding=None)
    cands = []
    for i, r in enumerate([3, 6, 1]):
        regions = rng.standard_normal((r, 8)).astype(np.float32)
        cands.append(ImageEmbeddingRecord(image_id=f"i{i}", uri="", boxes=np.zeros((r, 4), np.float32),
                                          region_embeddings=regions / np.linalg.norm(regions, axis=1, keepdims=True)))
    for direction in ("t2i", "i2t"):
        rr = ScanReranker(direction=direction, max_candidates_per_chunk=2)
        full = rr.rerank(query, cands)
        np.testing.assert_array_equal(rr.scores(query, cands), full.scores)
        assert full.word_region_weights is not None and len(full.word_region_weights) == 3


@pytest.mark.parametrize("agg", ["LogSumExp", "Mean", "Max", "Sum"])
def test_scan_estimate_bound_bounds_the_estimate_from_per_word_maxima(agg: str) -> None:
    rng = np.random.default_rng(11)
    counts = np.array([4, 1, 9, 2])
    sims = np.tanh(rng.standard_normal((int(counts.sum()), 3))).astype(np.float32)
    query = QueryEmbedding(text="a b c", tokens=list("abc"), word_embeddings=np.eye(3, 8, dtype=np.float32), global_embedding=None)
    rr = ScanReranker(agg_func=agg)
    est = rr.estimate(query, sims, counts)
    word_max = np.maximum.reduceat(sims, np.cumsum(counts) - counts, axis=0)
    bound = rr.estimate_bound(query, word_max)
    assert bound is not None and bound.shape == (4,)
    assert bool((est <= bound + 1e-6).all())
    assert ScanReranker(direction="i2t").estimate_bound(query, word_max) is None

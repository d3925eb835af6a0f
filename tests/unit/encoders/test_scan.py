"""Tests for encoders.scan: the batched scorer against a literal port of SCAN's per-caption loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from regionrank.encoders.losses import contrastive_loss
from regionrank.encoders.scan import (
    l2norm,
    mean_pool_scores,
    xattn_i2t_attention,
    xattn_scores,
    xattn_t2i_attention,
)
from regionrank.encoders.scan_estimate import scan_score_estimates
from regionrank.encoders.scan_model import MeanPoolBaseline, ScanCfg, ScanModel

NORMS = ["softmax", "l2norm", "clipped_l2norm", "l1norm", "clipped_l1norm", "clipped", "no_norm"]
AGGS = ["LogSumExp", "Mean", "Max", "Sum"]


# ---- a literal port of kuanghuei/SCAN model.py (func_attention, xattn_score_t2i / _i2t) -------------
def _ref_func_attention(query, context, norm, smooth, eps=1e-8):
    """query (n, queryL, d), context (n, sourceL, d) -> weightedContext (n, queryL, d)."""
    batch, query_l, source_l = context.size(0), query.size(1), context.size(1)
    attn = torch.bmm(context, query.transpose(1, 2))  # (n, sourceL, queryL)
    if norm == "softmax":
        attn = torch.softmax(attn.reshape(batch * source_l, query_l), dim=1).view(batch, source_l, query_l)
    elif norm == "l2norm":
        attn = attn / (attn.pow(2).sum(dim=2, keepdim=True).sqrt() + eps)
    elif norm == "clipped_l2norm":
        attn = torch.nn.functional.leaky_relu(attn, 0.1)
        attn = attn / (attn.pow(2).sum(dim=2, keepdim=True).sqrt() + eps)
    elif norm == "l1norm":  # the reference's own (never called) l1norm formula
        attn = attn / (attn.abs().sum(dim=2, keepdim=True) + eps)
    elif norm == "clipped_l1norm":
        attn = torch.nn.functional.leaky_relu(attn, 0.1)
        attn = attn / (attn.abs().sum(dim=2, keepdim=True) + eps)
    elif norm == "clipped":
        attn = torch.nn.functional.leaky_relu(attn, 0.1)
    attn = attn.transpose(1, 2).contiguous().view(batch * query_l, source_l)
    attn = torch.softmax(attn * smooth, dim=1).view(batch, query_l, source_l)
    return torch.bmm(attn, context)  # (n, queryL, d)


def _ref_cos(x1, x2, dim, eps=1e-8):
    w12 = (x1 * x2).sum(dim)
    return w12 / (x1.norm(2, dim) * x2.norm(2, dim)).clamp(min=eps)


def _ref_agg(row_sim, agg, lambda_lse):
    if agg == "LogSumExp":
        return torch.log(row_sim.mul(lambda_lse).exp().sum(dim=1, keepdim=True)) / lambda_lse
    if agg == "Max":
        return row_sim.max(dim=1, keepdim=True)[0]
    if agg == "Sum":
        return row_sim.sum(dim=1, keepdim=True)
    return row_sim.mean(dim=1, keepdim=True)


def _ref_scores(images, captions, cap_lens, direction, norm, agg, lam_sm, lam_lse):
    """The reference's Python loop over captions (images batched), as in SCAN's xattn_score_*."""
    n_image = images.size(0)
    sims = []
    for i in range(captions.size(0)):
        cap_i = captions[i, : int(cap_lens[i])].unsqueeze(0).repeat(n_image, 1, 1)
        if direction == "t2i":
            weiContext = _ref_func_attention(cap_i, images, norm, lam_sm)
            row_sim = _ref_cos(cap_i, weiContext, dim=2)
        else:
            weiContext = _ref_func_attention(images, cap_i, norm, lam_sm)
            row_sim = _ref_cos(images, weiContext, dim=2)
        sims.append(_ref_agg(row_sim, agg, lam_lse))
    return torch.cat(sims, 1)


def _unit(gen: torch.Generator, *shape: int, dtype=torch.float64) -> torch.Tensor:
    return l2norm(torch.randn(*shape, generator=gen, dtype=dtype))


# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("norm", NORMS)
def test_batched_equals_reference_loop_all_norms(direction: str, norm: str) -> None:
    gen = torch.Generator().manual_seed(0)
    images, captions = _unit(gen, 5, 7, 16), _unit(gen, 6, 9, 16)
    cap_lens = torch.tensor([9, 3, 5, 1, 8, 4])
    lam_sm, lam_lse = (9.0, 6.0) if direction == "t2i" else (4.0, 5.0)
    got = xattn_scores(images, captions, cap_lens, direction=direction, raw_feature_norm=norm, lambda_softmax=lam_sm, lambda_lse=lam_lse)
    ref = _ref_scores(images, captions, cap_lens, direction, norm, "LogSumExp", lam_sm, lam_lse)
    assert got.dtype == torch.float64 and got.shape == (5, 6)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("agg", AGGS)
def test_batched_equals_reference_loop_all_aggs_float32_chunked(direction: str, agg: str) -> None:
    gen = torch.Generator().manual_seed(1)
    images, captions = _unit(gen, 11, 6, 32, dtype=torch.float32), _unit(gen, 13, 10, 32, dtype=torch.float32)
    cap_lens = torch.randint(1, 11, (13,), generator=gen)
    kw = dict(direction=direction, agg_func=agg, lambda_softmax=9.0, lambda_lse=6.0)
    ref = _ref_scores(images, captions, cap_lens, direction, "clipped_l2norm", agg, 9.0, 6.0)
    for chunk in (1, 7, 400, 10_000):  # chunking never changes a score (400: two caption groups of 8 and 5)
        got = xattn_scores(images, captions, cap_lens.tolist(), chunk_size=chunk, **kw)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_caption_groups_cover_sorted_captions_in_aligned_runs_of_near_equal_length() -> None:
    from regionrank.encoders.scan import _caption_groups

    lens = sorted([3] * 5 + [4] * 30 + [7] * 40 + [9] * 3)
    groups = _caption_groups(lens, 32)
    assert groups[0][0] == 0 and groups[-1][1] == len(lens)
    assert all(a[1] == b[0] for a, b in zip(groups, groups[1:]))  # contiguous, no caption lost
    sizes = [c1 - c0 for c0, c1 in groups]
    assert max(sizes) <= 32 and all(n % 8 == 0 for n in sizes[:-1])  # rows of the product stay 8-aligned
    assert all(n >= 16 for n in sizes[:-1])  # short runs are merged, not scored as narrow products
    assert _caption_groups([1, 1, 2, 2, 2, 3], 1) == [(i, i + 1) for i in range(6)]  # a tiny chunk keeps its bound


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("agg", ["LogSumExp", "Mean"])
def test_region_masks_equal_sliced_reference(direction: str, agg: str) -> None:
    gen = torch.Generator().manual_seed(2)
    images, captions = _unit(gen, 4, 8, 16), _unit(gen, 5, 6, 16)
    images[1, 3:] = 1e3  # garbage in padding must not leak
    region_lens = torch.tensor([8, 3, 5, 1])
    cap_lens = torch.tensor([6, 2, 4, 5, 3])
    got = xattn_scores(images, captions, cap_lens, direction=direction, agg_func=agg, region_lens=region_lens, chunk_size=3)
    for i in range(4):  # the reference has no region masks: slice each image to its true regions
        ref_i = _ref_scores(images[i : i + 1, : int(region_lens[i])], captions, cap_lens, direction, "clipped_l2norm", agg, 9.0, 6.0)
        torch.testing.assert_close(got[i : i + 1], ref_i, rtol=1e-9, atol=1e-10)


def _ref_estimates(images, words, direction, norm, agg, lam_sm, lam_lse):
    """The reference loop with the relevance's denominator ‖a_j‖ dropped (words/regions are unit)."""
    cap = words[None].repeat(images.size(0), 1, 1)
    if direction == "t2i":
        row = (cap * _ref_func_attention(cap, images, norm, lam_sm)).sum(2)
    else:
        row = (images * _ref_func_attention(images, cap, norm, lam_sm)).sum(2)
    return _ref_agg(row, agg, lam_lse)[:, 0]


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("agg", AGGS)
def test_score_estimates_equal_reference_without_attended_norm(direction: str, norm: str, agg: str,
                                                              scan_estimate_oracle) -> None:
    gen = torch.Generator().manual_seed(7)
    images, words = _unit(gen, 4, 7, 16), _unit(gen, 5, 16)
    region_lens = torch.tensor([7, 3, 5, 1])
    sims = images @ words.t()  # [ni, R, L]
    sims = sims * (torch.arange(7)[None, :] < region_lens[:, None])[..., None]  # padding holds 0
    got = scan_estimate_oracle(sims, region_lens, direction=direction, raw_feature_norm=norm, agg_func=agg,
                               lambda_softmax=9.0, lambda_lse=6.0)
    for i in range(4):
        ref = _ref_estimates(images[i : i + 1, : int(region_lens[i])], words, direction, norm, agg, 9.0, 6.0)
        torch.testing.assert_close(got[i : i + 1], ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("agg", AGGS)
def test_score_estimates_bound_scores_from_below_when_cosines_are_non_negative(direction: str, agg: str,
                                                                               scan_estimate_oracle) -> None:
    gen = torch.Generator().manual_seed(8)
    images = l2norm(torch.rand(6, 9, 12, generator=gen, dtype=torch.float64))  # positive orthant: cosines >= 0
    words = l2norm(torch.rand(4, 12, generator=gen, dtype=torch.float64))
    scores = xattn_scores(images, words[None], [4], direction=direction, agg_func=agg)[:, 0]
    est = scan_estimate_oracle(images @ words.t(), direction=direction, agg_func=agg)
    assert bool((est <= scores + 1e-12).all()) and bool((est < scores).any())
    stacked = (images @ words.t()).reshape(-1, 4).numpy()
    with pytest.raises(ValueError, match="sims must be"):
        scan_score_estimates(stacked, np.full(6, 8))
    with pytest.raises(ValueError, match="direction"):
        scan_score_estimates(stacked, np.full(6, 9), direction="both")


def test_gradients_match_reference() -> None:
    gen = torch.Generator().manual_seed(3)
    base_i, base_c = _unit(gen, 3, 5, 8), _unit(gen, 4, 6, 8)
    lens = torch.tensor([6, 2, 5, 3])
    grads = []
    for fn in (
        lambda a, b: xattn_scores(a, b, lens, direction="t2i"),
        lambda a, b: _ref_scores(a, b, lens, "t2i", "clipped_l2norm", "LogSumExp", 9.0, 6.0),
    ):
        a, b = base_i.clone().requires_grad_(), base_c.clone().requires_grad_()
        contrastive_loss(fn(a, b)[:3, :3], margin=0.5).backward()
        grads.append((a.grad, b.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_attention_maps() -> None:
    gen = torch.Generator().manual_seed(4)
    images, words = _unit(gen, 3, 6, 8), _unit(gen, 4, 8)
    region_lens = torch.tensor([6, 2, 4])
    att = xattn_t2i_attention(images, region_lens, words)
    assert att.shape == (3, 4, 6)
    torch.testing.assert_close(att.sum(-1), torch.ones(3, 4, dtype=torch.float64))
    assert att[1, :, 2:].abs().max() == 0 and att[2, :, 4:].abs().max() == 0
    # relevance recomputed from the map reproduces the score (Mean aggregation)
    for i in range(3):
        ctx = images[i, : int(region_lens[i])]
        attended = att[i, :, : int(region_lens[i])] @ ctx  # [L, d]
        rel = _ref_cos(words, attended, dim=1)
        score = xattn_scores(images[i : i + 1], words[None], [4], direction="t2i", agg_func="Mean", region_lens=region_lens[i : i + 1])
        assert math.isclose(rel.mean().item(), score.item(), rel_tol=1e-9)
    att2 = xattn_i2t_attention(images, None, words)
    assert att2.shape == (3, 6, 4)
    torch.testing.assert_close(att2.sum(-1), torch.ones(3, 6, dtype=torch.float64))
    # i2t with padded garbage regions: valid rows equal the reference's weights on the sliced image
    noisy = images.clone()
    noisy[1, 2:] = 50.0
    att3 = xattn_i2t_attention(noisy, region_lens, words, lambda_softmax=4.0)
    for i in range(3):
        ctx, r = words[None], int(region_lens[i])
        raw = torch.nn.functional.leaky_relu(torch.bmm(ctx, images[i : i + 1, :r].transpose(1, 2)), 0.1)  # [1, L, r]
        raw = raw / (raw.pow(2).sum(dim=2, keepdim=True).sqrt() + 1e-8)
        ref = torch.softmax(raw.transpose(1, 2) * 4.0, dim=2)[0]  # [r, L]
        torch.testing.assert_close(att3[i, :r], ref)


def test_mean_pool_scores_equals_loop() -> None:
    gen = torch.Generator().manual_seed(5)
    images, captions = _unit(gen, 3, 5, 8), _unit(gen, 4, 6, 8)
    rl, cl = [5, 2, 3], [6, 1, 3, 4]
    got = mean_pool_scores(images, captions, cl, region_lens=rl)
    for i in range(3):
        for j in range(4):
            v, t = images[i, : rl[i]].mean(0), captions[j, : cl[j]].mean(0)
            assert math.isclose(got[i, j].item(), (v @ t / (v.norm() * t.norm())).item(), rel_tol=1e-6)


def test_input_errors() -> None:
    im, cap = torch.zeros(2, 3, 4), torch.zeros(2, 5, 4)
    with pytest.raises(ValueError, match="direction"):
        xattn_scores(im, cap, [1, 1], direction="both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="raw_feature_norm"):
        xattn_scores(im, cap, [1, 1], direction="t2i", raw_feature_norm="l3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cap_lens"):
        xattn_scores(im, cap, [0, 6], direction="t2i")
    with pytest.raises(ValueError, match="region_lens"):
        xattn_scores(im, cap, [1, 1], direction="t2i", region_lens=[4, 1])
    with pytest.raises(ValueError, match="share"):
        xattn_scores(im, cap.double(), [1, 1], direction="t2i")
    with pytest.raises(TypeError, match="floating"):
        xattn_scores(im.long(), cap, [1, 1], direction="t2i")
    with pytest.raises(ValueError, match="vocab_size"):
        ScanCfg(vocab_size=3)


# ---- the model ------------------------------------------------------------------------------------------
def _tiny_model(**kw) -> ScanModel:
    torch.manual_seed(0)
    return ScanModel(20, img_dim=12, embed_size=8, word_dim=6, **kw)


def test_encoders_follow_reference() -> None:
    model = _tiny_model()
    w = model.image_encoder.fc.weight
    bound = math.sqrt(6) / math.sqrt(12 + 8)
    assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound
    assert model.image_encoder.fc.bias.abs().max() == 0
    assert model.text_encoder.embed.weight.abs().max() <= 0.1
    feats = torch.randn(2, 3, 12)
    emb = model.embed_regions(feats)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2, 3))
    tokens = torch.tensor([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0]])
    cap = model.embed_words(tokens, [4, 3])
    assert cap.shape == (2, 5, 8) and cap[0, 4].abs().max() == 0 and cap[1, 3:].abs().max() == 0
    # bi-GRU directions averaged: recompute caption 1 alone, unpadded, with the GRU directly
    out, _ = model.text_encoder.rnn(model.text_encoder.embed(tokens[1:, :3]))
    manual = l2norm((out[..., :8] + out[..., 8:]) / 2)
    torch.testing.assert_close(cap[1:, :3], manual)


def test_forward_weight_norm_variants_and_roundtrip(tmp_path) -> None:
    feats, tokens, lens = torch.randn(3, 4, 12), torch.tensor([[1, 5, 2], [1, 6, 2], [1, 2, 0]]), [3, 3, 2]
    for kw in ({}, {"weight_norm": True}, {"no_imgnorm": True, "bi_gru": False}, {"direction": "i2t", "agg_func": "Mean"}):
        model = _tiny_model(**kw)
        scores = model(feats, [4, 2, 3], tokens, lens)
        assert scores.shape == (3, 3) and torch.isfinite(scores).all()
        contrastive_loss(scores).backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)  # padded zeros give no NaN
    model = _tiny_model(direction="i2t")
    path = tmp_path / "scan.pt"
    torch.save(model.state_dict(), path)
    again = ScanModel.from_cfg(ScanCfg(**model.cfg.to_dict()), weights=path)
    torch.testing.assert_close(again(feats, None, tokens, lens), model(feats, None, tokens, lens))
    with pytest.raises(FileNotFoundError):
        ScanModel.from_cfg(model.cfg, weights=tmp_path / "missing.pt")
    base = MeanPoolBaseline(20, img_dim=12, embed_size=8, word_dim=6)
    assert base(feats, None, tokens, lens).shape == (3, 3)


# ---- vocabulary (encoders/vocab.py, part of SCAN's text side) ---------------------------------------------
def test_vocab_build_encode_roundtrip(tmp_path) -> None:
    from regionrank.encoders.vocab import SPECIAL_TOKENS, Vocabulary, build_vocab, tokenize

    assert tokenize("A red-dog, LEFT of a car.") == ["a", "red", "-", "dog", ",", "left", "of", "a", "car", "."]
    caps = ["a red dog"] * 4 + ["a blue car"] * 3 + ["the cat"] * 5
    vocab = build_vocab(caps, threshold=4)
    # counts: a 7, the 5, cat 5, red 4, dog 4 (blue/car 3 < 4 dropped); ties broken alphabetically
    assert vocab.words == [*SPECIAL_TOKENS, "a", "cat", "the", "dog", "red"]
    assert vocab.encode("A red car") == [1, 4, 8, 3, 2]
    tokens, lens = vocab.encode_batch(["the cat", "a red dog ."])
    assert tokens.tolist() == [[1, 6, 5, 2, 0, 0], [1, 4, 8, 7, 3, 2]] and lens.tolist() == [4, 6]
    again = Vocabulary.load(vocab.save(tmp_path / "v.json"))
    assert again == vocab and len(again) == 9 and again.id_to_word(5) == "cat"
    (tmp_path / "bad.json").write_text('{"words": []}')
    with pytest.raises(ValueError, match="not a regionrank vocabulary"):
        Vocabulary.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        Vocabulary.load(tmp_path / "none.json")
    with pytest.raises(ValueError, match="must start with"):
        Vocabulary(["a", "b"])


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    gen = torch.Generator().manual_seed(6)
    images, captions = _unit(gen, 9, 7, 32, dtype=torch.float32), _unit(gen, 11, 10, 32, dtype=torch.float32)
    cap_lens, region_lens = torch.randint(1, 11, (11,), generator=gen), torch.randint(1, 8, (9,), generator=gen)
    for direction in ("t2i", "i2t"):
        cpu = xattn_scores(images, captions, cap_lens, direction=direction, region_lens=region_lens)
        gpu = xattn_scores(images.cuda(), captions.cuda(), cap_lens, direction=direction, region_lens=region_lens.cuda())
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
    model = _tiny_model()
    tokens = torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]])
    feats = torch.randn(3, 4, 12, generator=gen)
    ref = model(feats, [4, 2, 3], tokens, [4, 3])
    torch.testing.assert_close(model.cuda()(feats.cuda(), [4, 2, 3], tokens.cuda(), [4, 3]).cpu(), ref, rtol=1e-4, atol=1e-4)

"""SCAN: stacked cross attention between image regions and caption words (Lee et al., ECCV 2018).

Owns the batched cross-attention scorer (:func:`xattn_scores`), the attention maps used for
explanations (:func:`xattn_t2i_attention`, :func:`xattn_i2t_attention`), SCAN's image and text
and the global-pooling baseline scorer (:func:`mean_pool_scores`) used to show what cross attention
buys, and SCAN's constants (:data:`SCAN_EPS`, :data:`CLIPPED_LEAKY_SLOPE`). The trainable model
(encoders, ``ScanModel``) is in ``encoders.scan_model``; the score estimate from raw cosines that the
two-stage search uses is in ``encoders.scan_estimate``. The math follows the reference
*code* (kuanghuei/SCAN ``model.py``), restated in ALGORITHMS.md §3; each reproduced quirk is named
where it is implemented.

Implementation notes (not in the reference; results are identical up to float rounding):

* All (image, caption) pairs of a chunk are scored at once: the raw region·word products of a
  chunk come from one matrix product ``[n_i·R, d] @ [d, n_c·L]`` instead of the reference's Python
  loop over captions.
* The attended vector ``a_j = Σ_i α_ij c_i`` is never materialised. Its dot product with the query
  is ``Σ_i α_ij s_ij`` (the raw scores already computed) and its squared norm is ``α_jᵀ G α_j``
  with ``G`` the Gram matrix of the context items (``R×R`` per image or ``L×L`` per caption), which
  costs ``C`` (context items) instead of ``d`` multiply-adds per (query, context) entry.
* Captions are processed in length order so that chunks pad little. What remains is bound by the
  one matrix product (``R·L·d`` multiply-adds per pair, the same as the reference's first ``bmm``);
  the reference pays it twice (its second ``bmm`` builds the attended vectors) plus ``d``-wide
  elementwise passes per caption. Measured speed-ups over the reference loop are therefore a few
  times at one thread, more with threads (``bench/encoders.py``), not orders of magnitude.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F

__all__ = [
    "CLIPPED_LEAKY_SLOPE",
    "DEFAULT_CHUNK_PAIRS",
    "SCAN_EPS",
    "Agg",
    "Direction",
    "RawNorm",
    "check_choice",
    "checked_lengths",
    "l2norm",
    "mean_pool_scores",
    "xattn_i2t_attention",
    "xattn_scores",
    "xattn_t2i_attention",
]

RawNorm = Literal["softmax", "l2norm", "clipped_l2norm", "l1norm", "clipped_l1norm", "clipped", "no_norm"]
Agg = Literal["LogSumExp", "Mean", "Max", "Sum"]
Direction = Literal["t2i", "i2t"]

#: SCAN's epsilon: added to norms (l2norm / l1norm) and the floor of the cosine denominator.
SCAN_EPS = 1e-8
#: Reference quirk: "clipped" norms use LeakyReLU(0.1), the paper writes ReLU.
CLIPPED_LEAKY_SLOPE = 0.1
DEFAULT_CHUNK_PAIRS = 8192  # image-caption pairs scored at once (~110 MB of activations at R=36, L=16)


def l2norm(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """SCAN's L2 normalisation ``x / (‖x‖ + 1e-8)`` (epsilon added to the norm, not inside the root).

    ``torch.linalg.vector_norm`` has a zero gradient at the zero vector (``sqrt(Σx²)`` has NaN there),
    which matters for the all-zero padded positions of the GRU output.
    """
    return x / (torch.linalg.vector_norm(x, dim=dim, keepdim=True) + SCAN_EPS)


def check_choice(name: str, value: str, allowed: Any) -> None:
    """ValueError naming ``value`` and the options unless it is one of the ``Literal`` type ``allowed``."""
    options = get_args(allowed)
    if value not in options:
        raise ValueError(f"{name} must be one of {list(options)}; got {value!r}")


def checked_lengths(name: str, lens: Any, n: int, limit: int, device: torch.device) -> torch.Tensor:
    """``lens`` as a ``LongTensor[n]`` on ``device``; ValueError unless integers in ``[1, limit]``."""
    t = torch.as_tensor(lens, device=device)
    if t.shape != (n,) or t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must be an integer sequence of length {n}; got shape {tuple(t.shape)} dtype {t.dtype}")
    t = t.long()
    if n and (int(t.min()) < 1 or int(t.max()) > limit):
        raise ValueError(f"{name} must lie in [1, {limit}] (the padded size); got range [{int(t.min())}, {int(t.max())}]")
    return t


def _normalise_raw(
    s: torch.Tensor, norm: str, query_mask: torch.Tensor | None, qdim: int, scale: float
) -> torch.Tensor:
    """Step A times ``scale``: normalise the raw scores of each context item across the query axis ``qdim``.

    Padded query items must hold raw score exactly 0 (their vectors are zeroed by the caller), so
    they add nothing to the l2/l1 norms without a masking pass; only ``softmax`` needs the mask.
    """
    if norm == "softmax":
        if query_mask is not None:
            s = s.masked_fill(~query_mask, float("-inf"))
        return torch.softmax(s, dim=qdim) * scale
    if norm.startswith("clipped"):
        s = F.leaky_relu(s, CLIPPED_LEAKY_SLOPE)
    if norm in ("clipped", "no_norm"):
        return s * scale  # per query item: padded queries never reach the aggregation
    if norm.endswith("l2norm"):
        return s / ((torch.linalg.vector_norm(s, dim=qdim, keepdim=True) + SCAN_EPS) / scale)
    # l1 variants: the reference calls an undefined ``l1norm_d`` (NameError); this is the formula of
    # its own, never-called ``l1norm`` function. There are no reference outputs to compare against.
    return s / ((s.abs().sum(dim=qdim, keepdim=True) + SCAN_EPS) / scale)


def _attention(
    s: torch.Tensor, norm: str, lambda_softmax: float, ctx_mask: torch.Tensor | None, query_mask: torch.Tensor | None,
    *, cdim: int, qdim: int,
) -> torch.Tensor:
    """Steps A and B on raw scores ``s``: weights summing to 1 over the context axis ``cdim``."""
    logits = _normalise_raw(s, norm, query_mask, qdim, lambda_softmax)
    if ctx_mask is not None:
        logits = logits.masked_fill(~ctx_mask, float("-inf"))  # padded context items get no weight
    return torch.softmax(logits, dim=cdim)


def _aggregate(rel: torch.Tensor, agg: str, lambda_lse: float, mask: torch.Tensor | None) -> torch.Tensor:
    """Aggregate relevances ``rel[..., q]`` over valid queries."""
    if agg == "LogSumExp":  # max-shifted; the reference exponentiates directly (same value)
        if mask is not None:
            rel = rel.masked_fill(~mask, float("-inf"))
        return torch.logsumexp(rel * lambda_lse, dim=-1) / lambda_lse
    if agg == "Max":
        if mask is not None:
            rel = rel.masked_fill(~mask, float("-inf"))
        return rel.max(dim=-1).values
    total = rel.sum(dim=-1) if mask is None else rel.masked_fill(~mask, 0.0).sum(dim=-1)
    if agg == "Sum":
        return total
    count = rel.new_tensor(rel.shape[-1]) if mask is None else mask.sum(dim=-1).to(rel.dtype)
    return total / count


def _relevance(
    alpha: torch.Tensor, s: torch.Tensor, g_alpha: torch.Tensor, query_norm: torch.Tensor, cdim: int
) -> torch.Tensor:
    """Cosine between each query item and its attended vector, without building the attended vector.

    ``alpha``, ``s``: weights and raw scores; ``g_alpha``: the context Gram matrix applied to ``alpha``
    along ``cdim``; ``query_norm``: ``‖q_j‖`` broadcastable to the result. SCAN's cosine:
    ``⟨x, y⟩ / max(‖x‖·‖y‖, 1e-8)``.
    """
    dot = (alpha * s).sum(dim=cdim)  # <q_j, a_j> = Σ_i α_ij <c_i, q_j>
    sq = (alpha * g_alpha).sum(dim=cdim)  # ‖a_j‖² = α_jᵀ G α_j
    norm_a = sq.clamp_min(torch.finfo(sq.dtype).tiny).sqrt()
    return dot / (query_norm * norm_a).clamp_min(SCAN_EPS)


def _validate_pair(images: torch.Tensor, captions: torch.Tensor) -> None:
    for name, t in (("images", images), ("captions", captions)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor; got {type(t).__name__}")
        if t.ndim != 3:
            raise ValueError(f"{name} must be 3-D [n, items, d]; got shape {tuple(t.shape)}")
    if images.shape[-1] != captions.shape[-1] or images.dtype != captions.dtype or images.device != captions.device:
        raise ValueError(
            f"images {tuple(images.shape)} {images.dtype} {images.device} and captions {tuple(captions.shape)} "
            f"{captions.dtype} {captions.device} must share the last dimension, dtype and device"
        )


def xattn_scores(
    images: torch.Tensor,
    captions: torch.Tensor,
    cap_lens: Any,
    *,
    direction: Direction,
    raw_feature_norm: RawNorm = "clipped_l2norm",
    agg_func: Agg = "LogSumExp",
    lambda_softmax: float = 9.0,
    lambda_lse: float = 6.0,
    region_lens: Any | None = None,
    chunk_size: int = DEFAULT_CHUNK_PAIRS,
) -> torch.Tensor:
    """SCAN similarity of every image with every caption (ALGORITHMS.md §3.2-3.3).

    For a pair, with query items ``q_j`` and context items ``c_i`` (t2i: words attend to regions;
    i2t: regions attend to words) and raw scores ``s_ij = ⟨c_i, q_j⟩``:

    A. ``raw_feature_norm`` normalises each context item's scores **across the query axis** j
       (reference quirk; "clipped" = LeakyReLU(0.1), not ReLU; l2/l1 use ``x / (‖x‖ + 1e-8)``).
    B. ``α_ij = softmax_i(lambda_softmax · s̄_ij)`` **over the context axis**.
    C. ``a_j = Σ_i α_ij c_i``; relevance ``R_j = ⟨q_j, a_j⟩ / max(‖q_j‖‖a_j‖, 1e-8)``.
    D. ``agg_func`` over the valid query items: ``LogSumExp`` = ``log(Σ exp(λ₂ R_j)) / λ₂``
       (computed max-shifted), ``Mean``, ``Max``, ``Sum``.

    Captions include ``<start>`` and ``<end>`` in the attention, as in the reference (the caller's
    encoder decides that). Padded words (beyond ``cap_lens``) and padded regions (beyond
    ``region_lens``) take no part: they are dropped from Step A's norm, get ``-inf`` before Step B's
    softmax, and are excluded from Step D. ``l1norm``/``clipped_l1norm``: the reference raises
    NameError for them; regionrank uses ``s_ij / (Σ_j |s_ij| + 1e-8)`` (on LeakyReLU(s) for
    the clipped form), the formula ALGORITHMS.md gives; there are no reference outputs for them.

    Args:
        images: ``FloatTensor[n_image, R, d]`` L2-normalised region vectors (float32 or float64).
        captions: ``FloatTensor[n_caption, L_max, d]`` L2-normalised word vectors, same dtype/device.
        cap_lens: ``int[n_caption]`` true caption lengths in ``[1, L_max]`` (list, numpy or tensor).
        direction: ``"t2i"`` (words attend to regions, aggregate over words) or ``"i2t"``.
        raw_feature_norm: Step A variant.
        agg_func: Step D variant.
        lambda_softmax: Step B inverse temperature λ₁ (SCAN: 9 for t2i, 4 for i2t).
        lambda_lse: LogSumExp λ₂ (SCAN: 6 for t2i, 5 or 20 for i2t).
        region_lens: optional ``int[n_image]`` true region counts in ``[1, R]``; None = all R valid.
        chunk_size: maximum image-caption pairs processed at once; memory per chunk is about
            ``8 · chunk_size · R · L`` floats.

    Returns:
        ``Tensor[n_image, n_caption]`` scores with the inputs' dtype and device (differentiable).

    Raises:
        TypeError / ValueError: on malformed inputs or unknown variant names (the message names the value).
    """
    _validate_pair(images, captions)
    check_choice("direction", direction, Direction)
    check_choice("raw_feature_norm", raw_feature_norm, RawNorm)
    check_choice("agg_func", agg_func, Agg)
    if lambda_softmax <= 0 or lambda_lse <= 0:
        raise ValueError(f"lambda_softmax and lambda_lse must be > 0; got {lambda_softmax}, {lambda_lse}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    n_image, n_region, _ = images.shape
    n_caption, max_len, _ = captions.shape
    dev = images.device
    cap_len = checked_lengths("cap_lens", cap_lens, n_caption, max_len, dev)
    reg_len = None if region_lens is None else checked_lengths("region_lens", region_lens, n_image, n_region, dev)
    if n_image == 0 or n_caption == 0:
        return images.new_empty(n_image, n_caption)
    # Captions sorted by length and grouped by (nearly) equal length, so hardly any padded word goes
    # through the matrix product (the one cost that grows with d); columns are restored at the end.
    order = torch.argsort(cap_len, stable=True)
    captions, cap_len = captions[order], cap_len[order]
    max_group = max(1, math.isqrt(chunk_size))
    groups = _caption_groups(cap_len.tolist(), max_group)
    # the rest of the pair budget goes to images (one query against K candidates is one K x 1 chunk)
    img_chunk = min(n_image, max(1, chunk_size // max(c1 - c0 for c0, c1 in groups)))
    img_parts = [(i0, min(i0 + img_chunk, n_image)) for i0 in range(0, n_image, img_chunk)]

    def image_part(i0: int, i1: int) -> _Items:
        r_max = n_region if reg_len is None else int(reg_len[i0:i1].max())
        if direction == "i2t":  # regions are the query side: keep the product's row width a multiple of 8
            r_max = _aligned_items(i1 - i0, r_max)
        img = _padded(images[i0:i1], r_max)  # [ni, R, d]
        r_mask = None
        if reg_len is not None or r_max > n_region:
            valid = reg_len[i0:i1] if reg_len is not None else torch.full((i1 - i0,), n_region, device=dev)
            r_mask = torch.arange(r_max, device=dev)[None, :] < valid[:, None]
            img = img * r_mask[..., None].to(img.dtype)  # padding never enters the Gram matrix
        return _Items(img, r_mask, img @ img.transpose(1, 2) if direction == "t2i" else None)

    def caption_part(c0: int, c1: int) -> _Items:
        l_max = int(cap_len[c1 - 1])
        if direction == "t2i":  # words are the query side
            l_max = _aligned_items(c1 - c0, l_max)
        w_mask = torch.arange(l_max, device=dev)[None, :] < cap_len[c0:c1, None]  # [nc, L]
        cap = _padded(captions[c0:c1], l_max) * w_mask[..., None].to(captions.dtype)  # [nc, L, d]
        return _Items(cap, w_mask, cap @ cap.transpose(1, 2) if direction == "i2t" else None)

    # The context side (the one whose Gram matrix is needed) is the outer loop, built one part at a
    # time (each Gram matrix once, memory bounded by a part); the query side is built once up front.
    if direction == "t2i":
        caps = [caption_part(c0, c1) for c0, c1 in groups]
        rows = [[_attend(img, cap, raw_feature_norm, agg_func, lambda_softmax, lambda_lse) for cap in caps]
                for img in (image_part(i0, i1) for i0, i1 in img_parts)]
    else:
        imgs = [image_part(i0, i1) for i0, i1 in img_parts]
        cols = [[_attend(cap, img, raw_feature_norm, agg_func, lambda_softmax, lambda_lse).t() for img in imgs]
                for cap in (caption_part(c0, c1) for c0, c1 in groups)]
        rows = [list(row) for row in zip(*cols)]  # rows[image part][caption group]
    out = torch.cat([torch.cat(row, dim=1) for row in rows], dim=0)
    return out[:, torch.argsort(order)]


@dataclass(frozen=True)
class _Items:
    """One side of a chunk: ``x [n, items, d]`` with padded items zeroed, its mask ``[n, items]`` (None:
    all valid), and the per-set Gram matrices ``[n, items, items]`` when this side is the context."""

    x: torch.Tensor
    mask: torch.Tensor | None
    gram: torch.Tensor | None


def _aligned_items(n_sets: int, n_items: int) -> int:
    """Smallest ``q >= n_items`` with ``n_sets * q`` a multiple of 8.

    The score product's output rows are ``n_sets * q`` floats wide; MKL's AVX-512 kernels lose a third
    of their throughput when that width is not a multiple of 8 (measured: 26-35 against 44-47
    GMAC/s at d = 1024). The extra items are zero and masked, so they change no score.
    """
    q = n_items
    while (n_sets * q) % 8:
        q += 1
    return q


def _padded(x: torch.Tensor, n_items: int) -> torch.Tensor:
    """``x[:, :n_items]``, zero-padded along dim 1 when ``x`` has fewer items."""
    return x[:, :n_items] if x.shape[1] >= n_items else F.pad(x, (0, 0, 0, n_items - x.shape[1]))


def _caption_groups(sorted_lens: list[int], max_group: int) -> list[tuple[int, int]]:
    """``[c0, c1)`` runs of (nearly) equal length in ``sorted_lens``, at most ``max_group`` long.

    A run is merged with the following lengths until it holds half of ``max_group``, and it ends
    only after a multiple of 8 captions (so the product's width ``n · L`` needs no padding, see
    :func:`_aligned_items`): padding some captions by a word or two costs less than narrow
    matrix products.
    """
    groups: list[tuple[int, int]] = []
    start, n = 0, len(sorted_lens)
    align = 8 if max_group >= 8 else 1  # a tiny chunk_size (tests) keeps its bound instead
    max_group -= max_group % align
    min_group = max(align, max_group // 2)
    while start < n:
        end = start + 1
        while end < n and end - start < max_group and (
            sorted_lens[end] == sorted_lens[start] or end - start < min_group or (end - start) % align
        ):
            end += 1
        groups.append((start, end))
        start = end
    return groups


def _attend(ctx: _Items, qry: _Items, norm: str, agg: str, lambda_softmax: float, lambda_lse: float) -> torch.Tensor:
    """Scores ``[n_a, n_b]``: every query set ``qry.x[b]`` attends to every context set ``ctx.x[a]``.

    ``ctx.x``: ``[n_a, C, d]``, ``qry.x``: ``[n_b, Q, d]``, padded items zeroed. Everything stays in the
    matrix product's own contiguous layout ``[n_a, C, n_b, Q]``: the softmax runs over dim 1 and the
    context Gram matrix is applied with one ``bmm`` (no permuted copies).
    """
    n_a, n_c, d = ctx.x.shape
    n_b, n_q, _ = qry.x.shape
    s = (ctx.x.reshape(n_a * n_c, d) @ qry.x.reshape(n_b * n_q, d).t()).view(n_a, n_c, n_b, n_q)  # [n_a, C, n_b, Q]
    ctx_ok = None if ctx.mask is None else ctx.mask[:, :, None, None]  # [n_a, C, 1, 1]
    qry_ok = None if qry.mask is None else qry.mask[None, None]  # [1, 1, n_b, Q]
    alpha = _attention(s, norm, lambda_softmax, ctx_ok, qry_ok, cdim=1, qdim=3)  # [n_a, C, n_b, Q]
    gram = ctx.gram if ctx.gram is not None else ctx.x @ ctx.x.transpose(1, 2)  # [n_a, C, C]
    g_alpha = torch.bmm(gram, alpha.reshape(n_a, n_c, n_b * n_q)).view(n_a, n_c, n_b, n_q)
    rel = _relevance(alpha, s, g_alpha, qry.x.norm(dim=-1)[None], cdim=1)  # [n_a, n_b, Q]
    return _aggregate(rel, agg, lambda_lse, None if qry.mask is None else qry.mask[None])  # [n_a, n_b]


def _one_query(
    images: torch.Tensor, region_lens: Any | None, words: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validated inputs of the attention-map functions: images with padded regions zeroed, and the mask."""
    if not isinstance(words, torch.Tensor) or words.ndim != 2:
        raise ValueError(
            f"words must be a 2-D [L, d] tensor (one caption, true length); got {getattr(words, 'shape', type(words))}"
        )
    _validate_pair(images, words[None])
    n_image, n_region, _ = images.shape
    if region_lens is None:
        return images, None
    reg_len = checked_lengths("region_lens", region_lens, n_image, n_region, images.device)
    mask = torch.arange(n_region, device=images.device)[None, :] < reg_len[:, None]  # [ni, R]
    return images * mask[..., None].to(images.dtype), mask  # padded regions score exactly 0 (see _normalise_raw)


def xattn_t2i_attention(
    images: torch.Tensor,
    region_lens: Any | None,
    words: torch.Tensor,
    *,
    raw_feature_norm: RawNorm = "clipped_l2norm",
    lambda_softmax: float = 9.0,
) -> torch.Tensor:
    """Text-to-image attention weights of one caption over the regions of each image (for heatmaps).

    Args:
        images: ``FloatTensor[n_image, R, d]`` L2-normalised region vectors.
        region_lens: ``int[n_image]`` valid regions per image, or None.
        words: ``FloatTensor[L, d]`` L2-normalised word vectors of one caption, true length only.
        raw_feature_norm / lambda_softmax: as in :func:`xattn_scores`.

    Returns:
        ``Tensor[n_image, L, R]``: ``α[i, j, r]``, the weight word ``j`` gives region ``r`` of image ``i``;
        each ``[i, j, :]`` sums to 1 and padded regions are 0.
    """
    check_choice("raw_feature_norm", raw_feature_norm, RawNorm)
    images, mask = _one_query(images, region_lens, words)
    s = (images @ words.t())[:, :, None]  # [ni, R, 1, L]: context = regions (dim 1)
    ctx = None if mask is None else mask[:, :, None, None]
    return _attention(s, raw_feature_norm, lambda_softmax, ctx, None, cdim=1, qdim=3)[:, :, 0].transpose(1, 2)


def xattn_i2t_attention(
    images: torch.Tensor,
    region_lens: Any | None,
    words: torch.Tensor,
    *,
    raw_feature_norm: RawNorm = "clipped_l2norm",
    lambda_softmax: float = 4.0,
) -> torch.Tensor:
    """Image-to-text attention weights of each region over the words of one caption.

    Args: as :func:`xattn_t2i_attention`.

    Returns:
        ``Tensor[n_image, R, L]``: ``α[i, r, j]``, the weight region ``r`` of image ``i`` gives word ``j``;
        each row sums to 1 (rows of padded regions are computed but meaningless).
    """
    check_choice("raw_feature_norm", raw_feature_norm, RawNorm)
    images, mask = _one_query(images, region_lens, words)
    s = (words @ images.reshape(-1, images.shape[-1]).t()).view(1, words.shape[0], *images.shape[:2])  # [1, L, ni, R]
    q_mask = None if mask is None else mask[None, None]
    return _attention(s, raw_feature_norm, lambda_softmax, None, q_mask, cdim=1, qdim=3)[0].permute(1, 2, 0)


def mean_pool_scores(
    images: torch.Tensor, captions: torch.Tensor, cap_lens: Any, *, region_lens: Any | None = None
) -> torch.Tensor:
    """Global-pooling baseline: cosine of the mean region vector and the mean word vector.

    Args:
        images / captions / cap_lens / region_lens: as in :func:`xattn_scores`.

    Returns:
        ``Tensor[n_image, n_caption]`` cosine similarities of ``l2norm(mean_r v_r)`` and ``l2norm(mean_w t_w)``.
    """
    _validate_pair(images, captions)
    n_image, n_region, _ = images.shape
    n_caption, max_len, _ = captions.shape
    cap_len = checked_lengths("cap_lens", cap_lens, n_caption, max_len, images.device)
    w_mask = (torch.arange(max_len, device=images.device)[None] < cap_len[:, None]).to(captions.dtype)
    cap_vec = (captions * w_mask[..., None]).sum(1) / cap_len[:, None].to(captions.dtype)
    if region_lens is None:
        img_vec = images.mean(1)
    else:
        reg_len = checked_lengths("region_lens", region_lens, n_image, n_region, images.device)
        r_mask = (torch.arange(n_region, device=images.device)[None] < reg_len[:, None]).to(images.dtype)
        img_vec = (images * r_mask[..., None]).sum(1) / reg_len[:, None].to(images.dtype)
    return l2norm(img_vec) @ l2norm(cap_vec).t()



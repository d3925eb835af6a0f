"""SCAN's score estimate from raw word-region cosines, in numpy (the two-stage search's first stage).

:func:`scan_score_estimates` is the one implementation; its constants are SCAN's own
(``encoders.scan``), and ``tests/unit/encoders`` hold the padded reference formulation it is tested against.
"""

from __future__ import annotations

import numpy as np

from regionrank.encoders.scan import CLIPPED_LEAKY_SLOPE, SCAN_EPS, Agg, Direction, RawNorm, check_choice

__all__ = ["scan_score_estimates"]


def scan_score_estimates(
    sims: np.ndarray, counts: np.ndarray, *, direction: str = "t2i", raw_feature_norm: str = "clipped_l2norm",
    agg_func: str = "LogSumExp", lambda_softmax: float = 9.0, lambda_lse: float = 6.0,
) -> np.ndarray:
    """SCAN scores of one caption against many images estimated from the raw word-region cosines alone.

    Steps A and B of ``encoders.scan.xattn_scores`` only need the raw scores ``s_ij``, and so does the
    numerator of Step C's relevance, ``<q_j, a_j> = Σ_i α_ij s_ij``. Its denominator ``‖a_j‖`` needs the
    context Gram matrix; for unit context vectors ``a_j`` is a convex combination, so ``‖a_j‖ <= 1``. This
    takes ``‖a_j‖ = 1``: each relevance is replaced by ``<q_j, a_j>``, a lower bound of it where it is
    non-negative, and Step D aggregates those (LogSumExp and Mean are monotone, so the estimate bounds
    the score from below when every relevance is non-negative). The gap is largest where the attention
    spreads over several dissimilar context items. A first stage that already holds the cosines
    (``index``'s exact MrSw) gets it for a few element-wise passes, no matrix product with ``d``.

    Computed on the stacked layout with segment reductions instead of a padded tensor: the two-stage
    search calls it on a few thousand candidates per query, where padding to the largest region count
    and small-axis reductions in torch cost more than the arithmetic.

    Args:
        sims: ``float[sum(counts), L]`` cosines, image after image (its regions' rows), one column per word.
        counts: ``int[N]`` regions of each image; a candidate without regions scores as one region of cosine 0.
        direction / raw_feature_norm / agg_func / lambda_softmax / lambda_lse: as in ``xattn_scores``.

    Returns:
        ``float32[N]`` estimated scores.

    Raises:
        ValueError: ``sims`` is not ``(sum(counts), L)``; an unknown variant name.
    """
    check_choice("direction", direction, Direction)
    check_choice("raw_feature_norm", raw_feature_norm, RawNorm)
    check_choice("agg_func", agg_func, Agg)
    counts = np.asarray(counts, dtype=np.int64)
    if sims.ndim != 2 or sims.shape[0] != int(counts.sum()):
        raise ValueError(f"sims must be (sum(counts)={int(counts.sum())}, L); got shape {tuple(sims.shape)}")
    n, n_words = counts.size, sims.shape[1]
    if n == 0:
        return np.zeros(0, np.float32)
    if (counts == 0).any():  # one zero region each, as the padded form does
        rows = np.repeat(np.arange(n), counts)
        lens = np.maximum(counts, 1)
        full = np.zeros((int(lens.sum()), n_words), np.float32)
        full[(np.cumsum(lens) - lens)[rows] + (np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts))] = sims
        sims, counts = full, lens
    starts = np.cumsum(counts) - counts
    eps, slope = SCAN_EPS, CLIPPED_LEAKY_SLOPE

    def seg_sum(x: np.ndarray) -> np.ndarray:
        return np.add.reduceat(x, starts, axis=0)

    def normalise(x: np.ndarray, over_words: bool) -> np.ndarray:  # Step A across the query axis
        if raw_feature_norm == "softmax":
            if over_words:
                e = np.exp(x - x.max(axis=1, keepdims=True))
                return e / e.sum(axis=1, keepdims=True)
            e = np.exp(x - np.repeat(np.maximum.reduceat(x, starts, axis=0), counts, axis=0))
            return e / np.repeat(seg_sum(e), counts, axis=0)
        if raw_feature_norm.startswith("clipped"):
            x = np.where(x > 0, x, slope * x)
        if raw_feature_norm in ("clipped", "no_norm"):
            return x
        if raw_feature_norm.endswith("l2norm"):
            norm = np.sqrt((x * x).sum(axis=1, keepdims=True)) if over_words else np.repeat(np.sqrt(seg_sum(x * x)), counts, axis=0)
        else:
            norm = np.abs(x).sum(axis=1, keepdims=True) if over_words else np.repeat(seg_sum(np.abs(x)), counts, axis=0)
        return x / (norm + eps)

    if direction == "t2i":  # context = regions (softmax within each image), query = words
        logits = lambda_softmax * normalise(sims, over_words=True)
        e = np.exp(logits - np.repeat(np.maximum.reduceat(logits, starts, axis=0), counts, axis=0))
        rel = seg_sum(e * sims) / seg_sum(e)  # [N, L]
        if agg_func == "LogSumExp":
            m = rel.max(axis=1, keepdims=True)
            out = (np.log(np.exp(lambda_lse * (rel - m)).sum(axis=1)) / lambda_lse + m[:, 0])
        else:
            out = {"Mean": rel.mean(axis=1), "Max": rel.max(axis=1), "Sum": rel.sum(axis=1)}[agg_func]
        return out.astype(np.float32)
    # i2t: context = words (softmax over each region's row), query = regions (aggregated within each image)
    logits = lambda_softmax * normalise(sims, over_words=False)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    rel = (e * sims).sum(axis=1) / e.sum(axis=1)  # [sum R]
    if agg_func == "LogSumExp":
        m = np.maximum.reduceat(rel, starts)
        out = np.log(np.add.reduceat(np.exp(lambda_lse * (rel - np.repeat(m, counts))), starts)) / lambda_lse + m
    elif agg_func == "Mean":
        out = np.add.reduceat(rel, starts) / counts
    elif agg_func == "Max":
        out = np.maximum.reduceat(rel, starts)
    else:
        out = np.add.reduceat(rel, starts)
    return out.astype(np.float32)

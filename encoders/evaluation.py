"""Cross-modal retrieval metrics: R@K, median/mean rank, rsum, and the standard test protocols.

Owns the recall metrics of SCAN's and TERAN's ``evaluation.py`` (ALGORITHMS.md §5): image→text
(:func:`i2t`) and text→image (:func:`t2i`) ranks from an image × caption score matrix, the
COCO 1K (5 folds) / COCO 5K / Flickr30K 1K protocols (:func:`evaluate_protocol`), and block-wise
score computation from a scorer callable (:func:`blockwise_similarity`) so that a 5K × 25K
evaluation never materialises more than one (image block, caption block) of model activations.

Ties. The references sort with an unstable ``argsort`` and reverse it, so tied candidates come out
in an arbitrary order. regionrank ranks candidates as a **stable sort on descending score**: among
tied scores the candidate with the smaller index comes first. Concretely the 0-based rank of a
ground-truth candidate ``g`` is ``#{c : s[c] > s[g]} + #{c < g : s[c] == s[g]}``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch

__all__ = [
    "PROTOCOLS",
    "Scorer",
    "blockwise_similarity",
    "evaluate",
    "evaluate_folds",
    "evaluate_protocol",
    "i2t",
    "recall_metrics",
    "t2i",
]

Scorer = Callable[[np.ndarray, np.ndarray], Any]
"""``scorer(image_idx int64[b_i], caption_idx int64[b_c]) -> float[b_i, b_c]`` (numpy or torch)."""

#: protocol name -> (number of folds, images per fold). Captions per image is 5 in all three.
PROTOCOLS: dict[str, tuple[int, int]] = {"coco1k": (5, 1000), "coco5k": (1, 5000), "f30k1k": (1, 1000)}

_RECALL_KS = (1, 5, 10)
_BLOCK = 1024  # rows/columns per vectorised rank-counting step (bounds the boolean temporaries)


def _to_numpy(sims: Any, name: str = "sims") -> np.ndarray:
    if isinstance(sims, torch.Tensor):
        sims = sims.detach().cpu()
        if sims.dtype in (torch.bfloat16,):
            sims = sims.float()
        sims = sims.numpy()
    arr = np.asarray(sims)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [n_image, n_caption] matrix; got shape {tuple(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"{name} must be floating point; got dtype {arr.dtype} (cast with .astype(np.float32))")
    if np.isnan(arr).any():
        bad = np.argwhere(np.isnan(arr))[0]
        raise ValueError(f"{name} contains NaN (first at image {bad[0]}, caption {bad[1]}); fix the scorer")
    return arr


def _caption_image_map(
    n_image: int, n_caption: int, caption_image: Any | None, captions_per_image: int | None
) -> np.ndarray:
    if caption_image is not None:
        mapping = np.asarray(caption_image)
        if mapping.shape != (n_caption,) or not np.issubdtype(mapping.dtype, np.integer):
            raise ValueError(
                f"caption_image must be an integer array of shape ({n_caption},) giving each caption's image "
                f"row; got shape {tuple(mapping.shape)} dtype {mapping.dtype}"
            )
        if n_caption and (mapping.min() < 0 or mapping.max() >= n_image):
            raise ValueError(
                f"caption_image values must lie in [0, {n_image}); got range [{mapping.min()}, {mapping.max()}]"
            )
        return mapping.astype(np.int64, copy=False)
    k = 5 if captions_per_image is None else int(captions_per_image)
    if k <= 0 or n_caption != k * n_image:
        raise ValueError(
            f"with captions_per_image={k}, a [n_image, {k} * n_image] matrix is expected (caption {k}i+j belongs "
            f"to image i); got [{n_image}, {n_caption}]. Pass captions_per_image or an explicit caption_image array."
        )
    return np.arange(n_caption, dtype=np.int64) // k


def recall_metrics(ranks: np.ndarray) -> dict[str, float]:
    """R@1/5/10 (percent), ``medr`` and ``meanr`` (1-based) from 0-based ranks, as in the references.

    Args:
        ranks: ``int[n_queries]`` 0-based rank of the first relevant candidate per query.

    Returns:
        ``{"r1", "r5", "r10", "medr", "meanr"}``; ``medr = floor(median(ranks)) + 1``,
        ``meanr = mean(ranks) + 1``.

    Raises:
        ValueError: if ``ranks`` is empty.
    """
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("ranks is empty: there are no queries to evaluate")
    out = {f"r{k}": float(100.0 * np.count_nonzero(ranks < k) / ranks.size) for k in _RECALL_KS}
    out["medr"] = float(np.floor(np.median(ranks)) + 1)
    out["meanr"] = float(ranks.mean() + 1)
    return out


def i2t(
    sims: Any, *, caption_image: Any | None = None, captions_per_image: int | None = None
) -> dict[str, Any]:
    """Image→text retrieval: each image ranks all captions.

    Args:
        sims: ``float[n_image, n_caption]`` scores (numpy array or torch tensor, float32/float64;
            higher = more similar).
        caption_image: optional ``int[n_caption]``: the image row each caption belongs to. Images
            without any caption are gallery-only and are not queries.
        captions_per_image: without ``caption_image``, caption ``k*i + j`` belongs to image ``i``;
            default 5 (COCO / Flickr30K layout).

    Returns:
        ``r1, r5, r10`` (percent), ``medr``, ``meanr``, plus ``ranks`` (``int64[n_query]``, 0-based
        rank of the best-ranked ground-truth caption), ``top1`` (``int64[n_query]``, the top caption)
        and ``queries`` (``int64[n_query]``, the image rows used as queries).

    Raises:
        ValueError / TypeError: on a malformed matrix or mapping (the message names the fix).
    """
    arr = _to_numpy(sims)
    n_image, n_caption = arr.shape
    mapping = _caption_image_map(n_image, n_caption, caption_image, captions_per_image)
    cols = np.arange(n_caption, dtype=np.int64)
    gt_scores = arr[mapping, cols]  # [n_caption]: each caption's score with its own image
    best = np.full(n_image, -np.inf, dtype=np.float64)
    np.maximum.at(best, mapping, gt_scores.astype(np.float64))
    is_best = gt_scores.astype(np.float64) == best[mapping]
    first_best = np.full(n_image, n_caption, dtype=np.int64)  # smallest index among the tied best GTs
    np.minimum.at(first_best, mapping[is_best], cols[is_best])
    queries = np.flatnonzero(first_best < n_caption)
    ranks = np.empty(queries.size, dtype=np.int64)
    top1 = np.empty(queries.size, dtype=np.int64)
    for start in range(0, queries.size, _BLOCK):
        q = queries[start : start + _BLOCK]
        rows = arr[q]  # [b, n_caption]
        thr = rows[np.arange(q.size), first_best[q]][:, None]  # the best GT's own score, same dtype
        ahead = (rows > thr).sum(1) + ((rows == thr) & (cols[None, :] < first_best[q][:, None])).sum(1)
        ranks[start : start + q.size] = ahead
        top1[start : start + q.size] = rows.argmax(1)  # first maximum = stable descending order
    return {**recall_metrics(ranks), "ranks": ranks, "top1": top1, "queries": queries}


def t2i(
    sims: Any, *, caption_image: Any | None = None, captions_per_image: int | None = None
) -> dict[str, Any]:
    """Text→image retrieval: each caption ranks all images.

    Args:
        sims: ``float[n_image, n_caption]`` scores (numpy array or torch tensor, float32/float64).
        caption_image: optional ``int[n_caption]`` image row per caption (see :func:`i2t`).
        captions_per_image: without ``caption_image``, caption ``k*i + j`` belongs to image ``i``;
            default 5.

    Returns:
        ``r1, r5, r10, medr, meanr`` plus ``ranks`` (``int64[n_caption]``, 0-based rank of the
        caption's image) and ``top1`` (``int64[n_caption]``, the top image).

    Raises:
        ValueError / TypeError: on a malformed matrix or mapping.
    """
    arr = _to_numpy(sims)
    n_image, n_caption = arr.shape
    mapping = _caption_image_map(n_image, n_caption, caption_image, captions_per_image)
    rows = np.arange(n_image, dtype=np.int64)[:, None]
    ranks = np.empty(n_caption, dtype=np.int64)
    top1 = np.empty(n_caption, dtype=np.int64)
    for start in range(0, n_caption, _BLOCK):
        sl = slice(start, min(start + _BLOCK, n_caption))
        block = arr[:, sl]  # [n_image, b]
        gt_img = mapping[sl]
        thr = block[gt_img, np.arange(gt_img.size)][None, :]
        ranks[sl] = (block > thr).sum(0) + ((block == thr) & (rows < gt_img[None, :])).sum(0)
        top1[sl] = block.argmax(0)
    return {**recall_metrics(ranks), "ranks": ranks, "top1": top1}


def evaluate(
    sims: Any, *, caption_image: Any | None = None, captions_per_image: int | None = None
) -> dict[str, Any]:
    """Both directions and ``rsum`` (sum of the six recalls) on one score matrix.

    Returns:
        ``{"i2t": i2t(...), "t2i": t2i(...), "rsum": float}``.
    """
    a = i2t(sims, caption_image=caption_image, captions_per_image=captions_per_image)
    b = t2i(sims, caption_image=caption_image, captions_per_image=captions_per_image)
    return {"i2t": a, "t2i": b, "rsum": sum(a[f"r{k}"] + b[f"r{k}"] for k in _RECALL_KS)}


def blockwise_similarity(
    scorer: Scorer,
    image_idx: Sequence[int] | np.ndarray,
    caption_idx: Sequence[int] | np.ndarray,
    *,
    image_block: int = 128,
    caption_block: int = 1024,
    dtype: np.dtype | type = np.float32,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Fill a score matrix one (image block, caption block) at a time.

    The scorer only ever sees ``image_block × caption_block`` pairs, which bounds its activations
    (for SCAN: ``image_block · caption_block · L · R`` floats). Pass a ``np.memmap`` as ``out`` to
    bound the result's RAM too (5K × 25K float32 is 500 MB).

    Args:
        scorer: ``scorer(image_idx int64[b_i], caption_idx int64[b_c]) -> float[b_i, b_c]``
            (numpy array or torch tensor), indices into the caller's image and caption collections.
        image_idx: ``int[n_i]`` image indices to score (rows of the result, in this order).
        caption_idx: ``int[n_c]`` caption indices (columns of the result).
        image_block / caption_block: block sizes, ``>= 1``.
        dtype: result dtype when ``out`` is None.
        out: optional preallocated ``[n_i, n_c]`` array.

    Returns:
        ``float[n_i, n_c]`` with ``result[a, b] = scorer([image_idx[a]], [caption_idx[b]])``.

    Raises:
        ValueError: on non-positive block sizes, a wrong ``out`` shape or a scorer block of the wrong shape.
    """
    images = np.asarray(image_idx, dtype=np.int64)
    captions = np.asarray(caption_idx, dtype=np.int64)
    if image_block < 1 or caption_block < 1:
        raise ValueError(f"image_block and caption_block must be >= 1; got {image_block}, {caption_block}")
    shape = (images.size, captions.size)
    if out is None:
        out = np.empty(shape, dtype=dtype)
    elif out.shape != shape:
        raise ValueError(f"out must have shape {shape}; got {tuple(out.shape)}")
    for i0 in range(0, images.size, image_block):
        ib = images[i0 : i0 + image_block]
        for c0 in range(0, captions.size, caption_block):
            cb = captions[c0 : c0 + caption_block]
            block = scorer(ib, cb)
            if isinstance(block, torch.Tensor):
                block = block.detach().cpu().float().numpy() if block.dtype == torch.bfloat16 else block.detach().cpu().numpy()
            block = np.asarray(block)
            if block.shape != (ib.size, cb.size):
                raise ValueError(
                    f"scorer returned shape {tuple(block.shape)} for {ib.size} images x {cb.size} captions; "
                    f"it must return [n_images_in_block, n_captions_in_block]"
                )
            out[i0 : i0 + ib.size, c0 : c0 + cb.size] = block
    return out


def evaluate_folds(
    sims: Any | Scorer,
    n_folds: int,
    *,
    n_images: int | None = None,
    captions_per_image: int = 5,
    image_block: int = 128,
    caption_block: int = 1024,
) -> dict[str, Any]:
    """Evaluate on ``n_folds`` consecutive, equal folds and average the metrics over folds.

    Fold ``f`` holds images ``[f*n, (f+1)*n)`` and their captions ``[k*f*n, k*(f+1)*n)`` with
    ``n = n_images / n_folds`` and ``k = captions_per_image``; each fold is ranked on its own
    (COCO 1K = 5 folds of the 5K test set). ``rsum`` is the sum of the six **fold-averaged**
    recalls, which equals the mean of the per-fold rsums. The references' fold-5 summary prints a
    mislabelled "rsum" (ALGORITHMS.md §5.3); regionrank does not copy that.

    Args:
        sims: ``float[N, k*N]`` score matrix, or a :data:`Scorer` (then only the fold-diagonal
            blocks are ever scored, through :func:`blockwise_similarity`).
        n_folds: number of folds, ``>= 1``; must divide the image count.
        n_images: image count; required with a scorer, checked against a matrix.
        captions_per_image: captions per image ``k``.
        image_block / caption_block: block sizes for a scorer.

    Returns:
        ``{"i2t": {r1, r5, r10, medr, meanr}, "t2i": {...}, "rsum": float, "folds": [evaluate(...) per fold]}``
        where the top-level metrics are means over folds.

    Raises:
        ValueError: if the sizes do not divide into folds or disagree with ``n_images``.
    """
    if callable(sims) and not isinstance(sims, (np.ndarray, torch.Tensor)):
        if n_images is None:
            raise ValueError("n_images is required when sims is a scorer callable")
        total, matrix = int(n_images), None
    else:
        matrix = _to_numpy(sims)
        total = matrix.shape[0]
        if n_images is not None and n_images != total:
            raise ValueError(f"n_images={n_images} disagrees with the score matrix's {total} rows")
        if matrix.shape[1] != captions_per_image * total:
            raise ValueError(
                f"expected {captions_per_image} * {total} = {captions_per_image * total} caption columns; "
                f"got {matrix.shape[1]}"
            )
    if n_folds < 1 or total % n_folds:
        raise ValueError(f"{total} images cannot be split into {n_folds} equal folds")
    size = total // n_folds
    folds = []
    for f in range(n_folds):
        img = np.arange(f * size, (f + 1) * size)
        cap = np.arange(captions_per_image * f * size, captions_per_image * (f + 1) * size)
        if matrix is None:
            block = blockwise_similarity(sims, img, cap, image_block=image_block, caption_block=caption_block)
        else:
            block = matrix[img[0] : img[-1] + 1, cap[0] : cap[-1] + 1]
        folds.append(evaluate(block, captions_per_image=captions_per_image))
    keys = ("r1", "r5", "r10", "medr", "meanr")
    mean = {d: {k: float(np.mean([fo[d][k] for fo in folds])) for k in keys} for d in ("i2t", "t2i")}
    rsum = sum(mean[d][f"r{k}"] for d in ("i2t", "t2i") for k in _RECALL_KS)
    return {**mean, "rsum": rsum, "folds": folds}


def evaluate_protocol(
    sims: Any | Scorer,
    protocol: Literal["coco1k", "coco5k", "f30k1k"] = "coco1k",
    *,
    image_block: int = 128,
    caption_block: int = 1024,
) -> dict[str, Any]:
    """Evaluate on a named test protocol (ALGORITHMS.md §5.2).

    ``coco1k``: the 5000-image COCO test set as 5 consecutive folds of 1000 images / 5000 captions,
    metrics averaged over folds. ``coco5k``: all 5000 images and 25 000 captions at once.
    ``f30k1k``: the 1000 Flickr30K test images and 5000 captions. Caption ``5i + j`` belongs to image ``i``.

    Args:
        sims: ``float[N, 5N]`` scores (numpy or torch) or a :data:`Scorer` over
            (image indices, caption indices) in ``[0, N)`` / ``[0, 5N)``.
        protocol: one of :data:`PROTOCOLS`.
        image_block / caption_block: block sizes when ``sims`` is a scorer.

    Returns:
        As :func:`evaluate_folds`, plus ``"protocol"``.

    Raises:
        ValueError: for an unknown protocol or a matrix of the wrong size for it.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; available: {sorted(PROTOCOLS)}")
    n_folds, fold_size = PROTOCOLS[protocol]
    n_images = n_folds * fold_size
    if not callable(sims) or isinstance(sims, (np.ndarray, torch.Tensor)):
        shape = tuple(np.shape(sims))
        if shape != (n_images, 5 * n_images):
            raise ValueError(
                f"protocol {protocol!r} needs a [{n_images}, {5 * n_images}] score matrix; got {shape}. "
                f"Use evaluate() or evaluate_folds() for other sizes."
            )
    result = evaluate_folds(
        sims, n_folds, n_images=n_images, image_block=image_block, caption_block=caption_block
    )
    return {**result, "protocol": protocol}

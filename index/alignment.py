"""TERAN's MrSw alignment score in numpy, and the MaxSim candidate aggregation of the first stage.

MrSw (ALGORITHMS.md §4.4): ``S(i, c) = sum_w max_r <v_{i,r}, t_{c,w}>`` over the valid regions r of image
i and the valid words w of caption/query c. It is late interaction (ColBERT's MaxSim), so text-to-image
search decomposes over a region-vector index: per-word k-NN over regions, candidates, exact MrSw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["Alignment", "decode_float16", "maxsim_candidates", "maxsim_word_bounds", "mrsw_align", "mrsw_align_stacked", "mrsw_from_sims", "word_region_sims"]


@dataclass
class Alignment:
    """Exact MrSw of one query against N items.

    Attributes:
        scores: ``float32[N]`` MrSw scores.
        best_region: ``int64[N, L]`` for each item and query word, the region index holding the max
            (``-1`` when the item has no regions, or when the reference's zero fill won).
        best_sim: ``float32[N, L]`` the per-word maxima that were summed.
    """

    scores: np.ndarray
    best_region: np.ndarray
    best_sim: np.ndarray


def mrsw_align(words: np.ndarray, regions: Sequence[np.ndarray], *, pad_regions_to: int | None = None) -> Alignment:
    """Exact MrSw of one query's words against each item's regions.

    Zero fill (ALGORITHMS.md §4.4, reproduced from TERAN's ``AlignmentContrastiveLoss``): the reference
    pads every image's region set to a fixed length and sets the padded alignment entries to **0, not
    -inf**, so for an image with fewer regions than the padded length a word's maximum is
    ``max(best valid similarity, 0)``. ``pad_regions_to=36`` reproduces TERAN's evaluation, where images
    are padded to 36 regions (slot 0 already dropped); ``None`` uses the plain maximum over valid regions
    (no padding). An item without regions scores 0 for every word either way.

    Word trimming (dropping ``[CLS]``, ``[SEP]`` and the last word-piece, ALGORITHMS.md §4.4) is the
    query encoder's job: ``words`` are the rows that take part.

    Args:
        words: ``float[L, E]`` query word vectors (L2-normalised).
        regions: N arrays ``float[R_i, E]`` of region vectors (float16 accepted).
        pad_regions_to: the padded region count of the reference, or ``None``.

    Returns:
        :class:`Alignment` with ``scores float32[N]``.
    """
    counts = np.array([r.shape[0] for r in regions], dtype=np.int64)
    nonempty = [np.asarray(r) for r in regions if r.shape[0]]
    stacked = np.concatenate(nonempty) if nonempty else np.zeros((0, np.shape(words)[-1]), np.float32)
    return mrsw_align_stacked(words, stacked, counts, pad_regions_to=pad_regions_to)


def mrsw_align_stacked(
    words: np.ndarray, stacked: np.ndarray, counts: np.ndarray, *, pad_regions_to: int | None = None
) -> Alignment:
    """:func:`mrsw_align` on regions already stacked: item i owns the next ``counts[i]`` rows.

    One matrix product and segment reductions, no per-item Python work (the second stage scores a few
    thousand candidates per query with it, read as one block from a memory-mapped region matrix).

    Args:
        words: ``float[L, E]`` query word vectors.
        stacked: ``float[sum(counts), E]`` region vectors of all items, item after item (float16 accepted).
        counts: ``int[N]`` region count of each item (0 allowed).
        pad_regions_to: as for :func:`mrsw_align`.
    """
    return mrsw_from_sims(word_region_sims(words, stacked, counts), counts, pad_regions_to=pad_regions_to)


def word_region_sims(words: np.ndarray, stacked: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """``float32[sum R, L]`` cosines of every stacked region with every query word (one matrix product).

    Args:
        words: ``float[L, E]`` query word vectors.
        stacked: ``float[sum R, E]`` region vectors, item after item (float16 accepted).
        counts: optional ``int[N]`` region counts, checked against ``stacked``.
    """
    words = np.asarray(words, dtype=np.float32)
    if words.ndim != 2:
        raise ValueError(f"words must be (L, E); got shape {tuple(words.shape)}")
    if stacked.ndim != 2 or (counts is not None and stacked.shape[0] != int(np.sum(counts))):
        total = "?" if counts is None else int(np.sum(counts))
        raise ValueError(f"stacked regions have shape {tuple(stacked.shape)} but the counts sum to {total}")
    if stacked.shape[0] and stacked.shape[1] != words.shape[1]:
        raise ValueError(f"region vectors have dimension {stacked.shape[1]} but word vectors {words.shape[1]}")
    if not stacked.shape[0]:
        return np.zeros((0, words.shape[0]), np.float32)
    return decode_float16(stacked) @ words.T


def decode_float16(x: np.ndarray) -> np.ndarray:
    """``float[n, E]`` as float32; float16 through faiss's SIMD scalar-quantizer decoder (about twice as
    fast as numpy's cast, the same values)."""
    if x.dtype != np.float16 or x.ndim != 2 or x.size == 0:
        return np.asarray(x, dtype=np.float32)
    from regionrank.index._faiss import import_faiss

    faiss = import_faiss()
    x = np.ascontiguousarray(x)
    return faiss.ScalarQuantizer(int(x.shape[1]), faiss.ScalarQuantizer.QT_fp16).decode(x.view(np.uint8))


def mrsw_from_sims(sims: np.ndarray, counts: np.ndarray, *, pad_regions_to: int | None = None) -> Alignment:
    """Exact MrSw from the cosines of :func:`word_region_sims` (segment maxima, no per-item Python work).

    Args:
        sims: ``float32[sum(counts), L]``; counts: ``int[N]`` region count of each item (0 allowed).
        pad_regions_to: as for :func:`mrsw_align`.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if sims.ndim != 2 or sims.shape[0] != int(counts.sum()):
        raise ValueError(f"sims have shape {tuple(sims.shape)} but the counts sum to {int(counts.sum())}")
    n, n_words = counts.shape[0], sims.shape[1]
    best_sim = np.zeros((n, n_words), dtype=np.float32)
    best_region = np.full((n, n_words), -1, dtype=np.int64)
    nonempty = np.flatnonzero(counts > 0)
    if nonempty.size:
        c = counts[nonempty]
        starts = np.concatenate([[0], np.cumsum(c)[:-1]])
        best = np.maximum.reduceat(sims, starts, axis=0)  # [N', L]
        # first region reaching the maximum (np.argmax semantics), per item and word, without a loop
        local = np.arange(sims.shape[0]) - np.repeat(starts, c)
        hit = np.where(sims == np.repeat(best, c, axis=0), local[:, None], np.iinfo(np.int64).max)
        best_sim[nonempty] = best
        best_region[nonempty] = np.minimum.reduceat(hit, starts, axis=0)
    if pad_regions_to is not None:
        padded = (counts < pad_regions_to)[:, None] & (best_sim < 0)
        best_sim = np.where(padded, 0.0, best_sim).astype(np.float32)
        best_region = np.where(padded, -1, best_region)
    return Alignment(scores=best_sim.sum(axis=1, dtype=np.float64).astype(np.float32), best_region=best_region, best_sim=best_sim)


def maxsim_candidates(
    scores: np.ndarray, items: np.ndarray, n_candidates: int, *, clip_at_zero: bool = False
) -> tuple[np.ndarray, np.ndarray, float]:
    """Rank items from per-word nearest-region lists by an upper bound of their MrSw score.

    For query word w the region index returned ``scores[w, j]`` for a region of item ``items[w, j]``.
    An item's bound is ``sum_w m_w(item)``, where ``m_w`` is the item's best retrieved similarity for w,
    or, when none of its regions was retrieved for w, the smallest similarity retrieved for w (no
    unretrieved region can beat it under exact search), or -1 when w's row came back short of ``k``
    (the index had nothing more to offer for w: a Flat index was exhausted, or an IVF index's probed lists). Any item never retrieved scores at most
    ``sum_w min_j scores[w, j]``, which is returned as the bound for everything outside the list.

    Args:
        scores: ``float32[L, k]`` similarities, descending per row.
        items: ``int64[L, k]`` item int ids (``-1`` = no result).
        n_candidates: how many items to return.
        clip_at_zero: bound each word's term below by 0 (TERAN's zero fill).

    Returns:
        ``(item_ids int64[C], bounds float32[C], outside_bound)`` sorted by decreasing bound.
    """
    ids, word_bounds, floor = maxsim_word_bounds(scores, items, clip_at_zero=clip_at_zero)
    bound = word_bounds.sum(axis=1, dtype=np.float32)[:n_candidates]
    return ids[:n_candidates], bound.astype(np.float32), float(floor.sum())


def maxsim_word_bounds(
    scores: np.ndarray, items: np.ndarray, *, clip_at_zero: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The per-word terms of :func:`maxsim_candidates`' bounds, for every retrieved item.

    Returns:
        ``(item_ids int64[U], word_bounds float32[U, L], floor float32[L])``: items sorted by decreasing
        bound (the row sum); ``word_bounds[u, w]`` bounds the item's best similarity to word w from
        above; ``floor[w]`` bounds it for any item never retrieved.
    """
    valid = items >= 0
    floor = np.where(valid, scores, np.inf).min(axis=1)  # [L]
    # A row with fewer results than asked for holds everything the index can offer for that word (all of
    # a Flat index, every vector of the probed lists of an IVF index): nothing unretrieved is reachable,
    # so its term is the cosine minimum, -1 (0 under the zero fill), not the last similarity retrieved.
    floor = np.where(valid.all(axis=1) & np.isfinite(floor), floor, -1.0)
    if clip_at_zero:
        floor = np.maximum(floor, 0.0)
    floor = floor.astype(np.float32)
    uniq, inverse = np.unique(items[valid], return_inverse=True)
    if uniq.size == 0:
        return np.zeros(0, np.int64), np.zeros((0, items.shape[0]), np.float32), floor
    word_of = np.broadcast_to(np.arange(items.shape[0])[:, None], items.shape)[valid]
    best = np.tile(floor[None, :], (uniq.size, 1))  # [U, L]
    np.maximum.at(best, (inverse, word_of), scores[valid])
    if clip_at_zero:
        best = np.maximum(best, 0.0)
    order = np.argsort(-best.sum(axis=1), kind="stable")
    return uniq[order].astype(np.int64), best[order].astype(np.float32), floor

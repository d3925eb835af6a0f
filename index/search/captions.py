"""Image-to-text search: the captions of an indexed caption corpus that best match one image, by
MaxSim over caption word vectors (and the global index) then exact MrSw."""

from __future__ import annotations

from typing import Any

import numpy as np

from regionrank.index.alignment import mrsw_align
from regionrank.index.handle import IndexHandle
from regionrank.index.search.types import CaptionHit
from regionrank.storage.records import CaptionEmbeddingRecord, ImageEmbeddingRecord

__all__ = ["caption_search"]


def caption_search(
    image: ImageEmbeddingRecord, handle: IndexHandle, captions: Any, k: int, *, word_k: int = 64,
    n_candidates: int = 256, pad_regions_to: int | None = 36,
) -> list[CaptionHit]:
    """Image-to-text search of one image over a caption index (see :meth:`Searcher.search_captions`).

    Args:
        image: the image's embedding record.
        handle: an opened caption index (:func:`index.build_caption_indexes`); captions: its store.
        k: captions to return; word_k: nearest caption words per region; n_candidates: captions
            scored exactly; pad_regions_to: TERAN's zero fill.
    """
    regions = np.asarray(image.region_embeddings, np.float32)
    cand: dict[int, float] = {}
    if "word" in handle.indexes and regions.shape[0]:
        scores, items, slots = handle.search_multi(regions, word_k)
        # per (caption, word slot): the best region similarity; a caption's bound sums its retrieved words
        best: dict[tuple[int, int], float] = {}
        for s, c, w in zip(scores.ravel(), items.ravel(), slots.ravel(), strict=True):
            if c >= 0 and handle.idmap.alive[c]:
                key = (int(c), int(w))
                best[key] = max(best.get(key, -np.inf), float(s))
        for (c, _), s in best.items():
            cand[c] = cand.get(c, 0.0) + s
    if "global" in handle.indexes and image.global_embedding is not None:
        scores_g, ids_g = handle.search_global(np.asarray(image.global_embedding, np.float32)[None], n_candidates)
        for s, c in zip(scores_g[0], ids_g[0], strict=True):
            if c >= 0:
                cand[int(c)] = max(cand.get(int(c), -np.inf), float(s))
    if not cand:
        return []
    top = sorted(cand, key=lambda c: -cand[c])[:n_candidates]
    records: list[CaptionEmbeddingRecord] = captions.get([handle.idmap.image_id(c) for c in top])
    exact = np.array([
        mrsw_align(np.asarray(r.word_embeddings, np.float32), [regions], pad_regions_to=pad_regions_to).scores[0]
        for r in records
    ], dtype=np.float32)
    order = np.argsort(-exact, kind="stable")[:k]
    return [
        CaptionHit(caption_id=records[i].caption_id, image_id=records[i].image_id, text=records[i].text,
                   score=float(exact[i]), stage_scores={"first": cand[top[i]], "mrsw": float(exact[i])})
        for i in order
    ]

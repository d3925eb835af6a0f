"""Turning scored candidates into :class:`SearchHit` results: the ranking, the stage scores and one
explanation per query word (its MrSw region, weighted by the re-ranker's attention when known)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from regionrank.index.alignment import Alignment
from regionrank.index.search.types import SearchHit, WordExplanation
from regionrank.storage.records import ImageEmbeddingRecord, QueryEmbedding

__all__ = ["make_hits"]


def make_hits(
    query: QueryEmbedding, records: Sequence[ImageEmbeddingRecord], final: np.ndarray, mrsw: Alignment,
    first: np.ndarray, scan: np.ndarray | None, weights: Sequence[np.ndarray | None] | None, k: int,
) -> list[SearchHit]:
    """The top ``k`` by ``final``, best first. ``scan`` holds the re-ranker's scores (``None``, or NaN
    for a candidate it did not score: no ``"scan"`` stage score then); ``weights`` its attention maps
    (``None`` where absent: the MrSw similarities clipped to ``[0, 1]`` stand in)."""
    order = np.argsort(-final, kind="stable")[:k]
    hits = []
    for i in order:
        rec = records[i]
        attention = weights[i] if weights is not None else None
        # The explained region of a word is its MrSw match (highest cosine: "cup" -> the cup). SCAN's
        # attention is normalised over the query words first (ALGORITHMS.md quirk 4), so its argmax can
        # sit on a region that is only relatively closer to this word than to the others; it is kept as
        # the weight of that region and as the heatmap.
        best = mrsw.best_region[i]
        if attention is not None:
            wr = np.asarray(attention, dtype=np.float32)
        else:
            sims = np.asarray(rec.region_embeddings, np.float32) @ np.asarray(query.word_embeddings, np.float32).T
            wr = np.clip(sims.T, 0.0, 1.0) if rec.num_regions else np.zeros((len(query.tokens), 0), np.float32)
        expl = []
        for w, token in enumerate(query.tokens):
            r = int(best[w])
            box = (float(rec.boxes[r][0]), float(rec.boxes[r][1]), float(rec.boxes[r][2]), float(rec.boxes[r][3])) if r >= 0 else None
            expl.append(WordExplanation(token=token, region=r, box=box, weight=float(wr[w, r]) if r >= 0 else 0.0,
                                        similarity=float(mrsw.best_sim[i, w])))
        stage = {"first": float(first[i]), "mrsw": float(mrsw.scores[i])}
        if scan is not None and not np.isnan(scan[i]):
            stage["scan"] = float(scan[i])
        hits.append(SearchHit(
            image_id=rec.image_id, uri=rec.uri, score=float(final[i]), stage_scores=stage, explanation=expl,
            boxes=rec.boxes, word_region_weights=wr, width=rec.width, height=rec.height,
        ))
    return hits

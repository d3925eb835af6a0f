"""How the stage scores become one: :func:`fuse_scores` (MrSw, the re-ranker's score, or a weighted
sum), and how much a re-ranker score moves the fused score."""

from __future__ import annotations

import numpy as np

from regionrank.index.search.types import Fusion

__all__ = ["fuse_scores", "gap_weight"]


def fuse_scores(mrsw: np.ndarray, scan: np.ndarray | None, n_words: int, *, fusion: Fusion, weight: float) -> np.ndarray:
    """The final score of re-ranked candidates.

    * ``"scan"``: the re-ranker's score only (ALBEF style: the re-ranker decides).
    * ``"mrsw"``: exact MrSw only (no re-ranker needed).
    * ``"weighted"``: ``weight * scan + (1 - weight) * mrsw / n_words`` (BLIP style sum). MrSw is a sum
      over words; dividing by the word count (TERAN's ``MrAVGw``) puts it on the cosine scale of the
      re-ranker's per-word relevances, as ALGORITHMS.md §7.3 asks before fusing.

    Args:
        mrsw: ``float[K]``; scan: ``float[K]`` or ``None``; n_words: query word count (>= 1).
    """
    if fusion == "mrsw":
        return np.asarray(mrsw, dtype=np.float32)
    if scan is None:
        raise ValueError(f"fusion={fusion!r} needs a reranker; pass one to Searcher or use fusion='mrsw'")
    if fusion == "scan":
        return np.asarray(scan, dtype=np.float32)
    if fusion == "weighted":
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"fusion weight must be in [0, 1]; got {weight}")
        return (weight * np.asarray(scan, np.float64) + (1 - weight) * np.asarray(mrsw, np.float64) / max(n_words, 1)).astype(np.float32)
    raise ValueError(f"unknown fusion {fusion!r}; expected 'scan', 'mrsw' or 'weighted'")


def gap_weight(fusion: Fusion, weight: float) -> float:
    """How much a re-ranker score above its estimate moves the fused score (per unit)."""
    return 1.0 if fusion == "scan" else weight

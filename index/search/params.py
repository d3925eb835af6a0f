"""The tuning knobs of the two-stage search, with their one set of defaults and checks.

:class:`SearchParams` is what :class:`index.Searcher` takes; ``flows``' ``SearchConfig`` holds one and
the ``regionrank search`` options take their defaults from it, so the library, the run config and the
command line cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Fusion = Literal["scan", "mrsw", "weighted"]

__all__ = ["SearchParams"]


@dataclass(frozen=True)
class SearchParams:
    """How a :class:`index.Searcher` searches (validated on construction).

    Attributes:
        k: results a search returns unless it is asked for another number.
        rerank_k: candidates re-ranked per step (100-256 is typical; ALBEF/BLIP use 128-256);
            ``0`` turns re-ranking off: hits are ranked and scored by exact MrSw whatever ``fusion``
            says, and no re-ranker is needed.
        max_rerank_k: adaptive re-ranking depth limit (``None``: ``rerank_k``, no adaptation).
        fusion: the final score of re-ranked candidates: ``"scan"`` (the re-ranker's), ``"mrsw"``, or
            ``"weighted"`` (see :func:`index.search.fuse_scores`).
        fusion_weight: the re-ranker's weight in ``"weighted"`` fusion, in ``[0, 1]``.
        region_k: nearest regions retrieved per query word in the first round.
        max_region_k: the deepest ``region_k`` the completeness certificate may ask for.
        global_k: nearest images retrieved by global vector (``0`` disables the global index).
        n_candidates: cap on the images scored exactly per round (``None``: the whole MaxSim union,
            ColBERT's "score the union"; the dropped images' bound enters the certificate).
        pad_regions_to: TERAN's zero fill (see :func:`index.alignment.mrsw_align`); 36 follows the
            reference evaluation, ``None`` disables it.
        use_region_matrix: read candidates from the index version's region matrix when it has one.
        preload_regions: decode the region matrix into float32 RAM when the searcher opens (4 bytes
            per region and dimension), so the second stage skips the per-query float16 decode.
        use_estimates: when the re-ranker is also a :class:`index.search.ScoreEstimator`, re-rank in
            the order of the fused estimate instead of MrSw order.
    """

    k: int = 10
    rerank_k: int = 128
    max_rerank_k: int | None = None
    fusion: Fusion = "weighted"
    fusion_weight: float = 0.5
    region_k: int = 256
    max_region_k: int = 4096
    global_k: int = 128
    n_candidates: int | None = None
    pad_regions_to: int | None = 36
    use_region_matrix: bool = True
    preload_regions: bool = False
    use_estimates: bool = True

    def __post_init__(self) -> None:
        _at_least("k", self.k, 1, "ask for at least one result")
        _at_least("rerank_k", self.rerank_k, 0, "use 0 to turn re-ranking off")
        if self.max_rerank_k is not None:
            _at_least("max_rerank_k", self.max_rerank_k, self.rerank_k,
                      f"rerank_k is {self.rerank_k}: raise max_rerank_k to it, or use None for no adaptive re-ranking")
        if self.fusion not in get_args(Fusion):
            raise ValueError(f"unknown fusion {self.fusion!r}; expected 'scan', 'mrsw' or 'weighted'")
        if isinstance(self.fusion_weight, bool) or not isinstance(self.fusion_weight, (int, float)) or not (
                0.0 <= self.fusion_weight <= 1.0):
            raise ValueError(f"fusion_weight must be in [0, 1] (the re-ranker's share of the score); got {self.fusion_weight!r}")
        _at_least("region_k", self.region_k, 1, "retrieve at least one region per query word")
        _at_least("max_region_k", self.max_region_k, self.region_k, f"region_k is {self.region_k}: raise max_region_k to it or lower region_k")
        _at_least("global_k", self.global_k, 0, "use 0 to leave the global index out")
        if self.n_candidates is not None:
            _at_least("n_candidates", self.n_candidates, 1, "use None to score the whole candidate union")
        if self.pad_regions_to is not None:
            _at_least("pad_regions_to", self.pad_regions_to, 1, "use None to turn the zero fill off")

    @property
    def reranks(self) -> bool:
        """Whether the search re-ranks at all (``rerank_k > 0``)."""
        return self.rerank_k > 0

    @property
    def rerank_limit(self) -> int:
        """The adaptive re-ranking depth limit (``max_rerank_k``, or ``rerank_k`` when unset)."""
        return self.max_rerank_k if self.max_rerank_k is not None else self.rerank_k


def _at_least(name: str, value: object, low: int, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}; got {value} ({fix})")

"""Two-stage text-to-image search (MaxSim/global candidates -> exact TERAN MrSw -> SCAN re-rank ->
fused score) and image-to-text search over an indexed caption corpus.

``index`` must not import ``encoders``: the text encoder and the re-ranker come in through the
:class:`QueryEncoder` and :class:`Reranker` protocols, which ``encoders`` implements structurally and
``flows`` wires in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Protocol, Sequence, runtime_checkable

import numpy as np

from index.alignment import maxsim_candidates, mrsw_align
from index.build import IndexHandle, open_index
from storage.records import CaptionEmbeddingRecord, ImageEmbeddingRecord, QueryEmbedding

__all__ = [
    "CaptionHit",
    "Fusion",
    "QueryEncoder",
    "RerankOutput",
    "Reranker",
    "SearchHit",
    "Searcher",
    "WordExplanation",
    "exhaustive_search",
    "fuse_scores",
]

logger = logging.getLogger(__name__)

Fusion = Literal["scan", "mrsw", "weighted"]


@runtime_checkable
class QueryEncoder(Protocol):
    """Encodes a text query (TERAN text branch): word vectors ``[L, E]`` and an optional global vector."""

    def encode_query(self, text: str) -> QueryEmbedding: ...


@dataclass
class RerankOutput:
    """What a :class:`Reranker` returns for K candidates.

    Attributes:
        scores: ``float[K]`` higher = better (e.g. SCAN t2i LogSumExp scores).
        word_region_weights: per candidate, ``float[L, R_k]`` attention of each query word over the
            candidate's regions (SCAN's alpha), or ``None``; used for explanations and heatmaps.
    """

    scores: np.ndarray
    word_region_weights: list[np.ndarray] | None = None


@runtime_checkable
class Reranker(Protocol):
    """Scores candidates against a query (SCAN stacked cross attention, run by ``encoders``)."""

    def rerank(self, query: QueryEmbedding, candidates: Sequence[ImageEmbeddingRecord]) -> RerankOutput: ...


@dataclass
class WordExplanation:
    """Why an image matched one query word.

    Attributes:
        token: the query token.
        region: index of the best region in the image's region list (``-1``: none; zero fill won).
        box: ``(x1, y1, x2, y2)`` of that region in original pixels, or ``None``.
        weight: the re-ranker's attention on that region when available, else the region's MrSw
            similarity clipped to ``[0, 1]``.
        similarity: the cosine between the word and that region (the MrSw term).
    """

    token: str
    region: int
    box: tuple[float, float, float, float] | None
    weight: float
    similarity: float


@dataclass
class SearchHit:
    """One text-to-image result.

    Attributes:
        image_id / uri: the image.
        score: the final (fused) score, used for ranking.
        stage_scores: ``{"first": ..., "mrsw": ..., "scan": ...}``: the first-stage bound (MaxSim upper
            bound, or the global cosine), exact MrSw, and the re-ranker's score (absent when not re-ranked).
        explanation: one :class:`WordExplanation` per query word.
        boxes: ``float32[R, 4]`` the image's region boxes (for heatmaps).
        word_region_weights: ``float32[L, R]`` per-word weights over regions (re-ranker attention, or
            MrSw similarities clipped at 0 when there is no re-ranker), for heatmaps.
        width / height: image size in pixels when known (0 otherwise).
    """

    image_id: str
    uri: str
    score: float
    stage_scores: dict[str, float]
    explanation: list[WordExplanation]
    boxes: np.ndarray
    word_region_weights: np.ndarray
    width: int = 0
    height: int = 0


@dataclass
class CaptionHit:
    """One image-to-text result: the caption, its exact MrSw score and the first-stage bound."""

    caption_id: str
    image_id: str
    text: str
    score: float
    stage_scores: dict[str, float] = field(default_factory=dict)


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


def _check_rerank(out: RerankOutput, n: int, n_words: int, records: Sequence[ImageEmbeddingRecord]) -> np.ndarray:
    scores = np.asarray(out.scores, dtype=np.float32)
    if scores.shape != (n,):
        raise ValueError(f"reranker returned scores of shape {tuple(scores.shape)} for {n} candidates; expected ({n},)")
    if out.word_region_weights is not None:
        if len(out.word_region_weights) != n:
            raise ValueError(f"reranker returned {len(out.word_region_weights)} weight matrices for {n} candidates")
        for w, rec in zip(out.word_region_weights, records, strict=True):
            if np.shape(w) != (n_words, rec.num_regions):
                raise ValueError(
                    f"reranker weights for image {rec.image_id!r} have shape {np.shape(w)}; "
                    f"expected ({n_words}, {rec.num_regions}) (query words x regions)"
                )
    return scores


def _make_hits(
    query: QueryEmbedding, records: Sequence[ImageEmbeddingRecord], final: np.ndarray, mrsw: Any,
    first: np.ndarray, scan: np.ndarray | None, weights: Sequence[np.ndarray | None] | None, k: int,
) -> list[SearchHit]:
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
            box = tuple(float(v) for v in rec.boxes[r]) if r >= 0 else None
            expl.append(WordExplanation(
                token=token, region=r, box=box,  # type: ignore[arg-type]
                weight=float(wr[w, r]) if r >= 0 else 0.0, similarity=float(mrsw.best_sim[i, w]),
            ))
        stage = {"first": float(first[i]), "mrsw": float(mrsw.scores[i])}
        if scan is not None:
            stage["scan"] = float(scan[i])
        hits.append(SearchHit(
            image_id=rec.image_id, uri=rec.uri, score=float(final[i]), stage_scores=stage, explanation=expl,
            boxes=rec.boxes, word_region_weights=wr, width=rec.width, height=rec.height,
        ))
    return hits


class Searcher:
    """Two-stage text-to-image search over a published index, plus image-to-text over captions.

    Stage 1 gathers candidates from the region index (per query word, the ``region_k`` nearest
    regions; images ranked by the MaxSim upper bound of :func:`index.alignment.maxsim_candidates`)
    and/or the global index (the query's global vector). Stage 2 fetches the candidates' region
    embeddings from storage and computes exact TERAN MrSw; the top ``rerank_k`` are re-ranked by the
    :class:`Reranker` and the final score is fused (:func:`fuse_scores`).

    Args:
        index_dir: a directory made by :func:`index.build_indexes`.
        embeddings: the ``storage.ImageEmbeddingStore`` (or its path) the index was built from.
        query_encoder: a :class:`QueryEncoder`.
        reranker: a :class:`Reranker`, or ``None`` (then ``fusion`` must be ``"mrsw"``).
        rerank_k: candidates re-ranked (100-256 is typical; ALBEF/BLIP use 128-256).
        n_candidates: candidates scored exactly by MrSw (default ``max(4 * rerank_k, 1024)``). Exact
            MrSw is cheap (~10 ms per 1000 images in memory); pruning the MaxSim union harder loses
            good images when ``region_k`` is below the number of regions matching a word (the bounds
            of the union are then nearly equal), so the default keeps ColBERT's "score the union".
        region_k: nearest regions retrieved per query word (ColBERT-style k'; the MaxSim bound ranks
            the union, so a few dozen per word suffice).
        global_k: nearest images retrieved by global vector (0 disables the global index).
        fusion: ``"scan"``, ``"weighted"`` or ``"mrsw"``; fusion_weight: the weight of the re-ranker.
        pad_regions_to: TERAN's zero fill (see :func:`index.alignment.mrsw_align`); 36 follows the
            reference evaluation, ``None`` disables it.
        caption_index_dir / captions: a caption index (:func:`index.build_caption_indexes`) and its
            ``CaptionEmbeddingStore``, for :meth:`search_captions`.
        version: the index version to open (default: current); ngpu: GPUs to search on.
    """

    def __init__(
        self,
        index_dir: str | Path,
        embeddings: Any,
        query_encoder: QueryEncoder,
        reranker: Reranker | None = None,
        *,
        rerank_k: int = 128,
        n_candidates: int | None = None,
        region_k: int = 256,
        global_k: int = 128,
        fusion: Fusion = "scan",
        fusion_weight: float = 0.5,
        pad_regions_to: int | None = 36,
        caption_index_dir: str | Path | None = None,
        captions: Any = None,
        version: int | None = None,
        ngpu: int = 0,
    ) -> None:
        from index.build import _open_source

        if reranker is None and fusion != "mrsw":
            raise ValueError(f"fusion={fusion!r} needs a reranker; pass reranker=... or fusion='mrsw'")
        if rerank_k <= 0 or region_k <= 0 or global_k < 0:
            raise ValueError(f"rerank_k and region_k must be positive, global_k >= 0; got {rerank_k}, {region_k}, {global_k}")
        if fusion not in ("scan", "mrsw", "weighted"):
            raise ValueError(f"unknown fusion {fusion!r}; expected 'scan', 'mrsw' or 'weighted'")
        self.handle: IndexHandle = open_index(index_dir, version, ngpu=ngpu)
        if self.handle.manifest.corpus != "images":
            raise ValueError(f"{index_dir} indexes {self.handle.manifest.corpus}, not images; pass an image index")
        self.embeddings = _open_source(embeddings, "images")
        self.query_encoder = query_encoder
        self.reranker = reranker
        self.rerank_k = rerank_k
        self.n_candidates = n_candidates or max(4 * rerank_k, 1024)
        self.region_k = region_k
        self.global_k = global_k
        self.fusion: Fusion = fusion
        self.fusion_weight = fusion_weight
        self.pad_regions_to = pad_regions_to
        self.caption_handle: IndexHandle | None = None
        self.captions = None
        if caption_index_dir is not None:
            if captions is None:
                raise ValueError("caption_index_dir needs captions= (the CaptionEmbeddingStore it was built from)")
            self.caption_handle = open_index(caption_index_dir, ngpu=ngpu)
            self.captions = _open_source(captions, "captions")

    def candidates(self, query: QueryEmbedding) -> dict[str, float]:
        """Stage 1: ``image_id -> first-stage score`` (MaxSim bound, or global cosine if larger)."""
        out: dict[str, float] = {}
        h = self.handle
        words = np.asarray(query.word_embeddings, dtype=np.float32)
        if "region" in h.indexes and words.shape[0]:
            scores, items, _ = h.search_multi(words, self.region_k)
            ids, bounds, _ = maxsim_candidates(scores, items, self.n_candidates, clip_at_zero=self.pad_regions_to is not None)
            for i, b in zip(ids, bounds, strict=True):
                if h.idmap.alive[i]:
                    out[h.idmap.image_id(i)] = float(b)
        if "global" in h.indexes and self.global_k and query.global_embedding is not None:
            scores_g, ids_g = h.search_global(np.asarray(query.global_embedding, np.float32)[None], self.global_k)
            for s, image_id in zip(scores_g[0], ids_g[0], strict=False):
                out[image_id] = max(out.get(image_id, -np.inf), float(s))
        return out

    def search(self, text: str, k: int = 10) -> list[SearchHit]:
        """Text-to-image search.

        Args:
            text: the query.
            k: results to return.

        Returns:
            Up to ``k`` :class:`SearchHit`, best first.
        """
        return self.search_embedding(self.query_encoder.encode_query(text), k)

    def search_embedding(self, query: QueryEmbedding, k: int = 10) -> list[SearchHit]:
        """:meth:`search` for an already encoded query."""
        if k <= 0:
            raise ValueError(f"k must be positive; got {k}")
        cands = self.candidates(query)
        if not cands:
            return []
        ids = list(cands)
        records = self.embeddings.get(ids)
        first = np.array([cands[r.image_id] for r in records], dtype=np.float32)
        words = np.asarray(query.word_embeddings, np.float32)
        mrsw = mrsw_align(words, [r.region_embeddings for r in records], pad_regions_to=self.pad_regions_to)
        order = np.argsort(-mrsw.scores, kind="stable")
        keep = order[: max(self.rerank_k, k)] if self.reranker is not None else order[:k]
        records = [records[i] for i in keep]
        first, mrsw = first[keep], _subset(mrsw, keep)
        scan: np.ndarray | None = None
        weights: list[np.ndarray | None] | None = None
        if self.reranker is not None:
            top = records[: self.rerank_k]
            out = self.reranker.rerank(query, top)
            scan_top = _check_rerank(out, len(top), words.shape[0], top)
            final_top = fuse_scores(mrsw.scores[: len(top)], scan_top, words.shape[0], fusion=self.fusion, weight=self.fusion_weight)
            # candidates past rerank_k rank after every re-ranked one, in MrSw order (ALBEF's -100)
            rest = len(records) - len(top)
            final = np.concatenate([final_top, np.min(final_top) - 1.0 - np.arange(rest, dtype=np.float32)]) if rest else final_top
            scan = np.concatenate([scan_top, np.full(rest, np.nan, np.float32)])
            if out.word_region_weights is not None:  # candidates not re-ranked fall back to MrSw weights
                weights = [*out.word_region_weights, *([None] * rest)]
        else:
            final = fuse_scores(mrsw.scores, None, words.shape[0], fusion="mrsw", weight=0.0)
        hits = _make_hits(query, records, final, mrsw, first, scan, weights, k)
        for h in hits:
            if "scan" in h.stage_scores and np.isnan(h.stage_scores["scan"]):
                del h.stage_scores["scan"]
        return hits

    def search_captions(self, image_id: str, k: int = 10, *, word_k: int = 64, n_candidates: int = 256) -> list[CaptionHit]:
        """Image-to-text search: captions for a stored image, by MaxSim over caption word vectors then
        exact MrSw (sum over the caption's words of the max over the image's regions).

        Args:
            image_id: an image in the embedding store.
            k: captions to return.
            word_k: nearest caption words retrieved per region.
            n_candidates: captions scored exactly.

        Raises:
            ValueError: the searcher was made without a caption index.
            KeyError: ``image_id`` is not in the embedding store.
        """
        if self.caption_handle is None or self.captions is None:
            raise ValueError("search_captions needs Searcher(..., caption_index_dir=..., captions=...)")
        (image,) = self.embeddings.get([image_id])
        return caption_search(image, self.caption_handle, self.captions, k, word_k=word_k, n_candidates=n_candidates,
                              pad_regions_to=self.pad_regions_to)


def _subset(al: Any, keep: np.ndarray) -> Any:
    return type(al)(scores=al.scores[keep], best_region=al.best_region[keep], best_sim=al.best_sim[keep])


def caption_search(
    image: ImageEmbeddingRecord, handle: IndexHandle, captions: Any, k: int, *, word_k: int = 64,
    n_candidates: int = 256, pad_regions_to: int | None = 36,
) -> list[CaptionHit]:
    """Image-to-text search of one image over a caption index (see :meth:`Searcher.search_captions`)."""
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
        for s, cid in zip(scores_g[0], ids_g[0], strict=False):
            c = int(handle.idmap.lookup([cid])[0])
            cand[c] = max(cand.get(c, -np.inf), float(s))
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


def exhaustive_search(
    query: QueryEmbedding,
    records: Iterable[ImageEmbeddingRecord],
    reranker: Reranker | None,
    k: int = 10,
    *,
    fusion: Fusion = "scan",
    fusion_weight: float = 0.5,
    pad_regions_to: int | None = 36,
    batch: int = 1024,
) -> list[SearchHit]:
    """The reference the two-stage search approximates: exact MrSw and the re-ranker on *every* image.

    Args:
        query: the encoded query.
        records: every image (e.g. ``store.iter_records()``), streamed in batches of ``batch``.
        reranker / fusion / fusion_weight / pad_regions_to: as for :class:`Searcher`.
        k: results to return.

    Returns:
        The top ``k`` by the fused score, as :class:`SearchHit` (``stage_scores["first"]`` = MrSw).
    """
    words = np.asarray(query.word_embeddings, np.float32)
    best: list[tuple[float, ImageEmbeddingRecord, float, float | None]] = []

    def flush(chunk: list[ImageEmbeddingRecord]) -> None:
        mrsw = mrsw_align(words, [r.region_embeddings for r in chunk], pad_regions_to=pad_regions_to)
        scan = None
        if reranker is not None and fusion != "mrsw":
            scan = _check_rerank(reranker.rerank(query, chunk), len(chunk), words.shape[0], chunk)
        final = fuse_scores(mrsw.scores, scan, words.shape[0], fusion=fusion, weight=fusion_weight)
        for i in np.argsort(-final, kind="stable")[:k]:
            best.append((float(final[i]), chunk[i], float(mrsw.scores[i]), None if scan is None else float(scan[i])))
        best.sort(key=lambda t: -t[0])
        del best[k:]

    chunk: list[ImageEmbeddingRecord] = []
    for rec in records:
        chunk.append(rec)
        if len(chunk) == batch:
            flush(chunk)
            chunk = []
    if chunk:
        flush(chunk)
    top = [t[1] for t in best]
    mrsw = mrsw_align(words, [r.region_embeddings for r in top], pad_regions_to=pad_regions_to)
    final = np.array([t[0] for t in best], dtype=np.float32)
    scan_arr = None if not best or best[0][3] is None else np.array([t[3] for t in best], dtype=np.float32)
    return _make_hits(query, top, final, mrsw, mrsw.scores, scan_arr, None, k)

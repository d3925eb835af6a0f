"""Adapters that let ``index`` search with encoders it may not import (structural protocols).

``index.search`` declares ``QueryEncoder.encode_query(text) -> QueryEmbedding`` and
``Reranker.rerank(query, candidates) -> RerankOutput``; this module implements them without importing
``index``: :class:`TeranQueryEncoder`, :class:`GroundedQueryEncoder` and :class:`ScanReranker` (which
returns a :class:`RerankResult` with the same two attributes as ``index``'s ``RerankOutput``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from regionrank.encoders.embed import encode_texts, resolve_model
from regionrank.encoders.scan import Agg, Direction, RawNorm, xattn_i2t_attention, xattn_scores, xattn_t2i_attention
from regionrank.encoders.scan_estimate import scan_score_estimates
from regionrank.encoders.teran import TeranModel
from regionrank.storage.records import ImageEmbeddingRecord, QueryEmbedding

__all__ = ["GroundedQueryEncoder", "RerankResult", "ScanReranker", "TeranQueryEncoder"]

_TERMINAL = (".", "!", "?")


class TeranQueryEncoder:
    """Encode search queries with a TERAN model's text branch.

    The word vectors are exactly the rows TERAN's alignment scores (``[CLS]``/``[SEP]`` removed). With
    the config's ``reference_trim`` (the reference quirk: training never aligned a caption's last
    word-piece), a query without terminal punctuation gets a final ``"."`` first, so the dropped
    word-piece is that period -- as for the ~77 % of COCO training captions that end with one -- and not
    the query's last word.

    Args:
        model: a :class:`encoders.teran.TeranModel` (or a checkpoint folder).
        device: where the model runs.
    """

    def __init__(self, model: Any, *, device: torch.device | str = "cpu") -> None:
        resolved = resolve_model(model, device=device)
        if not isinstance(resolved, TeranModel):
            raise TypeError(f"TeranQueryEncoder needs a TERAN model; got {type(resolved).__name__}")
        self.model = resolved.eval()
        self.device = torch.device(device)

    def prepare(self, text: str) -> str:
        """The text actually encoded (a final period added when the reference trim would cut a word)."""
        stripped = text.strip()
        if self.model.cfg.reference_trim and stripped and not stripped.endswith(_TERMINAL):
            return stripped + " ."
        return stripped

    def encode_query(self, text: str) -> QueryEmbedding:
        """``QueryEmbedding`` with ``word_embeddings`` ``float32[L, E]`` and the ``[CLS]`` global vector.

        Raises:
            ValueError: an empty query.
        """
        prepared = self.prepare(text)
        if not prepared:
            raise ValueError("the query is empty; type at least one word")
        (enc,) = encode_texts(self.model, [prepared], device=self.device)
        return QueryEmbedding(
            text=text,
            tokens=enc.tokens,
            word_embeddings=enc.word_embeddings.astype(np.float32),
            global_embedding=None if enc.global_embedding is None else enc.global_embedding.astype(np.float32),
        )


class GroundedQueryEncoder:
    """Query encoder of the zero-shot label-grounded baseline (:class:`encoders.grounded.GroundedEncoder`)."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder

    def encode_query(self, text: str) -> QueryEmbedding:
        """Static per-word vectors of the query's content words (see ``GroundedEncoder.encode_query``)."""
        return self.encoder.encode_query(text)


@dataclass
class RerankResult:
    """Re-ranking output (duck-types ``index.search.RerankOutput``).

    Attributes:
        scores: ``float32[K]`` SCAN score per candidate, higher is better.
        word_region_weights: per candidate ``float32[L, R_k]``: how strongly each query word attends to
            each region (t2i: each row sums to 1 over the regions); None from :meth:`ScanReranker.scores`.
    """

    scores: np.ndarray
    word_region_weights: list[np.ndarray] | None


class ScanReranker:
    """Parameter-free SCAN stacked cross attention over stored embeddings (query words vs regions).

    Uses the SCAN engineer's :func:`encoders.scan.xattn_scores` with the given hyper-parameters on the
    query's word vectors and each candidate's region vectors; nothing is trained here, so it works on
    any embeddings in one space (TERAN's, or the label-grounded baseline's).

    Args:
        direction: ``"t2i"`` (words attend to regions; SCAN's text-to-image model) or ``"i2t"``.
        raw_feature_norm / agg_func / lambda_softmax / lambda_lse: as in ``xattn_scores``
            (defaults: SCAN t-i LSE, clipped_l2norm, lambda_softmax 9, lambda_lse 6).
        device: where the attention runs.
        max_candidates_per_chunk: candidates scored at once (bounds memory: ~K x R x L x E floats).
    """

    def __init__(
        self,
        *,
        direction: Direction = "t2i",
        raw_feature_norm: RawNorm = "clipped_l2norm",
        agg_func: Agg = "LogSumExp",
        lambda_softmax: float = 9.0,
        lambda_lse: float = 6.0,
        device: torch.device | str = "cpu",
        max_candidates_per_chunk: int = 256,
    ) -> None:
        # Validate the options once, on a dummy pair, so a typo fails at construction time.
        one = torch.ones(1, 1, 1)
        xattn_scores(one, one, [1], direction=direction, raw_feature_norm=raw_feature_norm,
                     agg_func=agg_func, lambda_softmax=lambda_softmax, lambda_lse=lambda_lse)
        if max_candidates_per_chunk < 1:
            raise ValueError(f"max_candidates_per_chunk must be >= 1; got {max_candidates_per_chunk}")
        self.direction = direction
        self.raw_feature_norm = raw_feature_norm
        self.agg_func = agg_func
        self.lambda_softmax = float(lambda_softmax)
        self.lambda_lse = float(lambda_lse)
        self.device = torch.device(device)
        self.chunk = int(max_candidates_per_chunk)

    def rerank(self, query: QueryEmbedding, candidates: Sequence[ImageEmbeddingRecord]) -> RerankResult:
        """Score the K candidates for the query and return per-word attention over their regions.

        Raises:
            ValueError: the query has no words; an embedding width differs from the query's.
        """
        return self._run(query, candidates, with_weights=True)

    def scores(self, query: QueryEmbedding, candidates: Sequence[ImageEmbeddingRecord]) -> np.ndarray:
        """:meth:`rerank`'s scores alone (``float32[K]``), without the attention maps, which cost about as
        much again; ``index`` scores with it and asks :meth:`rerank` for the maps of the hits it returns."""
        return self._run(query, candidates, with_weights=False).scores

    def _run(self, query: QueryEmbedding, candidates: Sequence[ImageEmbeddingRecord], *, with_weights: bool) -> RerankResult:
        words_np = np.asarray(query.word_embeddings, dtype=np.float32)
        n_words, dim = words_np.shape
        if n_words == 0:
            raise ValueError(f"query {query.text!r} has no word vectors to re-rank with")
        bad = next((c for c in candidates if c.embed_dim != dim), None)
        if bad is not None:
            raise ValueError(
                f"candidate {bad.image_id!r} has {bad.embed_dim}-d region embeddings but the query has {dim}-d "
                f"words; use the query encoder of the model that wrote the image embeddings"
            )
        words = torch.from_numpy(words_np).to(self.device)
        scores = np.zeros(len(candidates), dtype=np.float32)
        weights: list[np.ndarray] = []
        for c0 in range(0, len(candidates), self.chunk):
            chunk = candidates[c0 : c0 + self.chunk]
            lens = np.array([max(1, c.num_regions) for c in chunk], dtype=np.int64)
            images = np.zeros((len(chunk), int(lens.max()), dim), dtype=np.float32)
            for i, c in enumerate(chunk):
                images[i, : c.num_regions] = c.region_embeddings
            img = torch.from_numpy(images).to(self.device)
            with torch.no_grad():
                s = xattn_scores(img, words[None], [n_words], direction=self.direction,
                                 raw_feature_norm=self.raw_feature_norm, agg_func=self.agg_func,
                                 lambda_softmax=self.lambda_softmax, lambda_lse=self.lambda_lse, region_lens=lens)
                if not with_weights:
                    att = None
                elif self.direction == "t2i":
                    att = xattn_t2i_attention(img, lens, words, raw_feature_norm=self.raw_feature_norm,
                                              lambda_softmax=self.lambda_softmax)  # [K, L, R]
                else:
                    att = xattn_i2t_attention(img, lens, words, raw_feature_norm=self.raw_feature_norm,
                                              lambda_softmax=self.lambda_softmax).transpose(1, 2)  # [K, L, R]
            scores[c0 : c0 + len(chunk)] = s[:, 0].float().cpu().numpy()
            if att is not None:
                att_np = att.float().cpu().numpy()
                weights.extend(att_np[i, :, : c.num_regions].copy() for i, c in enumerate(chunk))
        return RerankResult(scores=scores, word_region_weights=weights if with_weights else None)

    def estimate(self, query: QueryEmbedding, sims: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Estimated SCAN scores of many candidates from their word-region cosines (no region vectors).

        ``index``'s two-stage search already holds, for exact MrSw, the cosine of every query word with
        every region of its candidates; from those this returns
        :func:`encoders.scan_estimate.scan_score_estimates` (SCAN with the attended vectors' norm taken as 1).
        It keeps SCAN's attention weights and aggregation (LogSumExp favours one strongly matched word,
        where MrSw sums every word's best match), so it orders candidates for re-ranking closer to SCAN
        than MrSw does. It does not see the norm: SCAN's gain for an image whose attention averages
        several noisy instances of a concept is missed (the search's stop rule allows for that gap).

        Args:
            query: the query (only its word count is used).
            sims: ``float[sum(counts), L]`` cosines, candidate after candidate, one column per query word.
            counts: ``int[N]`` regions of each candidate (0 allowed: scores as if it had one zero region).

        Returns:
            ``float32[N]``.
        """
        counts = np.asarray(counts, dtype=np.int64)
        n_words = len(query.tokens) if query.word_embeddings is None else int(np.shape(query.word_embeddings)[0])
        if sims.ndim != 2 or sims.shape[0] != int(counts.sum()) or sims.shape[1] != n_words:
            raise ValueError(f"sims must be (sum(counts)={int(counts.sum())}, {n_words} query words); got {tuple(sims.shape)}")
        return scan_score_estimates(np.asarray(sims, np.float32), counts, direction=self.direction,
                                       raw_feature_norm=self.raw_feature_norm, agg_func=self.agg_func,
                                       lambda_softmax=self.lambda_softmax, lambda_lse=self.lambda_lse)

    def estimate_bound(self, query: QueryEmbedding, word_max: np.ndarray) -> np.ndarray | None:
        """Upper bound of :meth:`estimate` for candidates whose best cosine with word j is at most
        ``word_max[n, j]`` (t2i; ``None`` for i2t, whose aggregation runs over regions).

        Each estimated relevance ``Σ_i α_ij s_ij`` is a convex combination of word j's cosines, so at
        most their maximum; LogSumExp, Mean, Max and Sum are monotone, so the aggregate of the bounds
        bounds the estimate. ``index`` prunes its first stage with it.
        """
        if self.direction != "t2i":
            return None
        m = np.asarray(word_max, dtype=np.float64)
        if m.ndim != 2:
            raise ValueError(f"word_max must be (N, L); got shape {tuple(m.shape)}")
        if self.agg_func == "LogSumExp":
            top = m.max(axis=1, keepdims=True) if m.shape[1] else np.zeros((m.shape[0], 1))
            out = np.log(np.exp(self.lambda_lse * (m - top)).sum(axis=1)) / self.lambda_lse + top[:, 0]
        else:
            out = {"Mean": m.mean, "Max": m.max, "Sum": m.sum}[self.agg_func](axis=1)
        return out.astype(np.float32)

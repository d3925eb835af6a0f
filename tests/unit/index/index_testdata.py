"""Synthetic data helpers for the index tests: a compositional "scene" generator written here (index must not
depend on encoders), a bag-of-words query encoder and a numpy SCAN-like re-ranker implementing the
index protocols structurally."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from regionrank.index.search import RerankOutput
from regionrank.index.version import VersionedDir
from regionrank.storage import ImageEmbeddingStore
from regionrank.storage.records import ImageEmbeddingRecord, QueryEmbedding

DIM = 32
N_CONCEPTS = 40


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class Scene:
    """Images made of regions around concept prototypes; concept ``c`` has the token ``"c{c}"``."""

    def __init__(self, seed: int = 0, dim: int = DIM, n_concepts: int = N_CONCEPTS) -> None:
        self.rng = np.random.default_rng(seed)
        self.dim = dim
        self.prototypes = unit(self.rng.standard_normal((n_concepts, dim)))

    def image(self, i: int, *, min_regions: int = 3, max_regions: int = 8, noise: float = 0.35) -> ImageEmbeddingRecord:
        r = int(self.rng.integers(min_regions, max_regions + 1))
        concepts = self.rng.choice(len(self.prototypes), size=r, replace=False)
        regions = unit(self.prototypes[concepts] + noise * self.rng.standard_normal((r, self.dim)))
        xy = self.rng.uniform(0, 60, size=(r, 2))
        wh = self.rng.uniform(10, 40, size=(r, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
        return ImageEmbeddingRecord(
            image_id=f"img{i:06d}", uri=f"/data/img{i:06d}.jpg", boxes=boxes, region_embeddings=regions,
            global_embedding=unit(regions.mean(axis=0)), width=100, height=100, labels=[f"c{c}" for c in concepts],
        )

    def images(self, n: int, start: int = 0, **kw: float) -> list[ImageEmbeddingRecord]:
        return [self.image(i, **kw) for i in range(start, start + n)]


class BagOfWordsEncoder:
    """QueryEncoder: token ``c{j}`` -> prototype j (slightly perturbed, deterministic per token)."""

    def __init__(self, prototypes: np.ndarray, noise: float = 0.05) -> None:
        self.prototypes = prototypes
        self.noise = noise

    def encode_query(self, text: str) -> QueryEmbedding:
        tokens = text.split()
        vecs = []
        for t in tokens:
            j = int(t[1:])
            jitter = np.random.default_rng(j).standard_normal(self.prototypes.shape[1])
            vecs.append(self.prototypes[j] + self.noise * jitter)
        words = unit(np.asarray(vecs, dtype=np.float32)).astype(np.float32)
        return QueryEmbedding(text=text, tokens=tokens, word_embeddings=words,
                              global_embedding=unit(words.mean(axis=0)).astype(np.float32))


def scan_t2i(
    words: np.ndarray, regions: np.ndarray, lambda_softmax: float = 9.0, agg: str = "mean", lambda_lse: float = 6.0
) -> tuple[float, np.ndarray]:
    """SCAN t2i with clipped_l2norm, written as a plain per-pair computation (ALGORITHMS.md §3.2-3.3).

    ``agg="mean"`` is SCAN's t-i AVG variant, ``"lse"`` its LogSumExp variant.
    """
    s = regions @ words.T  # [R, L]
    u = np.where(s > 0, s, 0.1 * s)
    s_bar = u / (np.sqrt((u**2).sum(axis=1, keepdims=True)) + 1e-8)
    logits = lambda_softmax * s_bar
    alpha = np.exp(logits - logits.max(axis=0, keepdims=True))
    alpha /= alpha.sum(axis=0, keepdims=True)  # softmax over regions
    attended = alpha.T @ regions  # [L, E]
    cos = (attended * words).sum(1) / np.maximum(np.linalg.norm(attended, axis=1) * np.linalg.norm(words, axis=1), 1e-8)
    score = cos.mean() if agg == "mean" else np.log(np.exp(lambda_lse * cos).sum()) / lambda_lse
    return float(score), alpha.T.astype(np.float32)


class NumpyScanReranker:
    """Reranker: SCAN-like attention in numpy; counts calls and candidates for the tests."""

    def __init__(self) -> None:
        self.calls = 0
        self.candidates_seen = 0

    def rerank(self, query: QueryEmbedding, candidates: Sequence[ImageEmbeddingRecord]) -> RerankOutput:
        self.calls += 1
        self.candidates_seen += len(candidates)
        words = np.asarray(query.word_embeddings, np.float32)
        out = [scan_t2i(words, np.asarray(c.region_embeddings, np.float32)) for c in candidates]
        return RerankOutput(scores=np.array([s for s, _ in out], np.float32), word_region_weights=[w for _, w in out])


class EstimatingScanReranker(NumpyScanReranker):
    """NumpyScanReranker that is also a ScoreEstimator: SCAN t2i (mean) with the attended vectors'
    norm taken as 1, from the word-region cosines alone (what encoders' ScanReranker.estimate does)."""

    def __init__(self) -> None:
        super().__init__()
        self.estimated = 0

    def estimate(self, query: QueryEmbedding, sims: np.ndarray, counts: np.ndarray) -> np.ndarray:
        self.estimated += len(counts)
        out, start = np.zeros(len(counts), np.float32), 0
        for i, c in enumerate(np.asarray(counts).tolist()):
            s = sims[start : start + c]  # [R, L]
            start += c
            u = np.where(s > 0, s, 0.1 * s)
            logits = 9.0 * u / (np.sqrt((u**2).sum(axis=1, keepdims=True)) + 1e-8)
            alpha = np.exp(logits - logits.max(axis=0, keepdims=True))
            alpha /= alpha.sum(axis=0, keepdims=True)
            out[i] = float((alpha * s).sum(axis=0).mean()) if c else 0.0
        return out

    def estimate_bound(self, query: QueryEmbedding, word_max: np.ndarray) -> np.ndarray | None:
        return np.asarray(word_max, np.float32).mean(axis=1)  # each relevance is a mean of its word's cosines


QUERIES = ["c1 c5", "c3 c12 c30", "c7 c8", "c20 c21 c22 c23", "c0", "c39 c2"]


def mrsw_loop(words: np.ndarray, regions: np.ndarray, pad_to: int | None = 36) -> float:
    """TERAN's MrSw written as a plain loop: per word the best region cosine (zero fill: at least 0
    when the image has fewer than ``pad_to`` regions), summed."""
    total = 0.0
    for t in words:
        best = max(float(np.dot(v, t)) for v in regions)
        total += max(best, 0.0) if pad_to is not None and len(regions) < pad_to else best
    return total


def write_images(root: Path, records: list[ImageEmbeddingRecord]) -> ImageEmbeddingStore:
    store = ImageEmbeddingStore(root)
    with store.writer(encoder="synthetic", encoder_hash="0", embed_dim=records[0].embed_dim) as w:
        for rec in records:
            w.write(rec)
    return ImageEmbeddingStore(root)



@contextlib.contextmanager
def lock_held_elsewhere(root: Path) -> Iterator[None]:
    """Hold the publisher lock of index directory ``root`` in another thread for the block's duration."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with VersionedDir(root).lock():
            holding.set()
            release.wait(60)

    t = threading.Thread(target=hold)
    t.start()
    try:
        if not holding.wait(60):
            raise TimeoutError(f"the helper thread never got the lock of {root}")
        yield
    finally:
        release.set()
        t.join(60)

"""Benchmark two-stage search (MaxSim/global candidates -> exact MrSw -> SCAN re-rank) against
exhaustive TERAN + SCAN scoring of every image.

A clustered "scene" of images (regions near concept prototypes in a joint space, 10-36 regions per
image) is written to an ``ImageEmbeddingStore`` and indexed with ``index.build_indexes`` (automatic
choice, tuned to the target recall). Queries name 2-4 concepts; a bag-of-words query encoder maps each
token to its prototype plus noise. The re-ranker is the real SCAN code (``encoders.adapters.ScanReranker``,
t2i, clipped_l2norm, lambda_softmax 9); the search re-ranks candidates in the order of its fused SCAN
estimate (``ScanReranker.estimate``, from the MrSw cosines) unless ``--no-estimates``, and both sides
score with ``ScanReranker.scores`` (no attention maps; the search asks for the maps of its 10 hits
only). For every query it compares the top-10 of ``Searcher.search``
with the top-10 of ``index.exhaustive_search`` (exact MrSw and SCAN on every image, same fusion), and
the latencies of both with the region vectors already in memory as float32 (the algorithms: the
reference holds every record, the search a preloaded region matrix), plus the two-stage
latency when candidates come from storage: the index version's memory-mapped float16 region matrix
(``index.regions``, the default read path), and the Parquet store itself for comparison.
Each method answers all queries in a pass of its own (two-stage from RAM, from the region matrix,
from Parquet, then the reference), each query once. It also reports the first stage's recall of the
exhaustive top-10 (is the reference top-10 among the images scored by exact MrSw?), the certified
region depth and the adaptive re-ranking depth.

    python -m bench.search [--quick] [--json] [--n 10000] [--dim 256]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from regionrank import index
from regionrank.storage import ImageEmbeddingRecord, ImageEmbeddingStore, QueryEmbedding


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class Scene:
    """Images whose regions sit near concept prototypes (noise ``noise / sqrt(d)`` per entry)."""

    def __init__(self, n_concepts: int, dim: int, seed: int = 0, noise: float = 0.7) -> None:
        self.rng = np.random.default_rng(seed)
        self.prototypes = unit(self.rng.standard_normal((n_concepts, dim)))
        self.noise = noise / np.sqrt(dim)
        self.dim = dim

    def images(self, n: int, regions: tuple[int, int]) -> Iterator[ImageEmbeddingRecord]:
        for i in range(n):
            r = int(self.rng.integers(regions[0], regions[1] + 1))
            concepts = self.rng.integers(0, len(self.prototypes), r)
            emb = unit(self.prototypes[concepts] + self.noise * self.rng.standard_normal((r, self.dim)))
            xy = self.rng.uniform(0, 500, (r, 2))
            boxes = np.concatenate([xy, xy + self.rng.uniform(20, 140, (r, 2))], axis=1).astype(np.float32)
            yield ImageEmbeddingRecord(image_id=f"img{i:08d}", uri=f"synthetic://img{i:08d}", boxes=boxes,
                                       region_embeddings=emb, global_embedding=unit(emb.mean(0)), width=640, height=640)


class BagOfConcepts:
    """QueryEncoder: token ``c{j}`` -> prototype j plus deterministic noise."""

    def __init__(self, scene: Scene, noise: float = 0.3) -> None:
        self.scene = scene
        self.noise = noise / np.sqrt(scene.dim)

    def encode_query(self, text: str) -> QueryEmbedding:
        tokens = text.split()
        rng = np.random.default_rng(zlib.crc32(text.encode()))  # stable across processes, unlike hash()
        words = unit(self.scene.prototypes[[int(t[1:]) for t in tokens]] + self.noise * rng.standard_normal((len(tokens), self.scene.dim)))
        return QueryEmbedding(text=text, tokens=tokens, word_embeddings=words, global_embedding=unit(words.mean(0)))


def in_float32(rec: ImageEmbeddingRecord) -> ImageEmbeddingRecord:
    """The record with its region vectors decoded to float32 (the in-memory comparison's input)."""
    return dataclasses.replace(rec, region_embeddings=np.asarray(rec.region_embeddings, np.float32))


def timed(fn: Any, *a: Any, **kw: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2000 images x 64-d, 10 queries: under a minute")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object on the last line")
    p.add_argument("--n", type=int, default=None, help="images (default 10000, quick 2000)")
    p.add_argument("--dim", type=int, default=None, help="embedding dimension (default 256, quick 64)")
    p.add_argument("--queries", type=int, default=None, help="queries (default 30, quick 10)")
    p.add_argument("--concepts", type=int, default=None, help="concept vocabulary (default n/20)")
    p.add_argument("--rerank-k", type=int, default=128)
    p.add_argument("--max-rerank-k", type=int, default=2048,
                   help="adaptive re-ranking depth limit (= --rerank-k disables adaptation)")
    p.add_argument("--max-region-k", type=int, default=4096, help="deepest certified first-stage depth per word")
    p.add_argument("--region-k", type=int, default=256, help="nearest regions per query word in the first round")
    p.add_argument("--global-k", type=int, default=128, help="nearest images by global vector")
    p.add_argument("--fusion", default="weighted", choices=["scan", "weighted", "mrsw"],
                   help="final score: SCAN only, BLIP-style weighted sum with MrSw/L (default), or MrSw only")
    p.add_argument("--agg", default="LogSumExp", choices=["LogSumExp", "Mean"], help="SCAN aggregation")
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--no-estimates", action="store_true", help="re-rank in MrSw order (no SCAN estimate)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from regionrank.encoders import ScanReranker  # the real SCAN code; only the benchmark imports encoders

    n = args.n or (2000 if args.quick else 10_000)
    dim = args.dim or (64 if args.quick else 256)
    n_queries = args.queries or (10 if args.quick else 30)
    scene = Scene(args.concepts or max(50, n // 20), dim)
    reranker = ScanReranker(agg_func=args.agg)
    enc = BagOfConcepts(scene)
    qrng = np.random.default_rng(7)
    queries = [" ".join(f"c{c}" for c in qrng.choice(len(scene.prototypes), int(qrng.integers(2, 5)), replace=False))
               for _ in range(n_queries)]
    result: dict[str, Any] = {"n_images": n, "dim": dim, "queries": n_queries, "rerank_k": args.rerank_k,
                              "region_k": args.region_k, "global_k": args.global_k, "max_rerank_k": args.max_rerank_k,
                              "max_region_k": args.max_region_k,
                              "fusion": args.fusion, "scan_agg": args.agg, "estimates": not args.no_estimates}
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        store = ImageEmbeddingStore(Path(tmp) / "emb")
        with store.writer(encoder="bench-scene", encoder_hash="0", embed_dim=dim, rows_per_shard=2048) as w:
            for rec in scene.images(n, (10, 36)):
                w.write(rec)
        store = ImageEmbeddingStore(Path(tmp) / "emb")
        # tune the region index on word-like queries (what it serves), not on region vectors
        tune_words = np.concatenate([enc.encode_query(f"c{c}").word_embeddings
                                     for c in np.random.default_rng(11).integers(0, len(scene.prototypes), 500)])
        manifest, build_s = timed(index.build_indexes, store, Path(tmp) / "idx", target_recall=args.target_recall,
                                  tuning_queries={"region": tune_words})
        records = [in_float32(r) for r in store.iter_records()]  # what the exhaustive reference scores, in RAM
        kw = dict(rerank_k=args.rerank_k, max_rerank_k=max(args.max_rerank_k, args.rerank_k), fusion=args.fusion,
                  region_k=args.region_k, max_region_k=max(args.max_region_k, args.region_k), global_k=args.global_k,
                  use_estimates=not args.no_estimates)
        rr = reranker if args.fusion != "mrsw" else None
        # in memory: the region matrix decoded to float32 RAM, as the reference holds its records
        searcher = index.Searcher(Path(tmp) / "idx", store, enc, rr, preload_regions=True, **kw)
        # from storage: the index version's memory-mapped region matrix (default), and the Parquet store
        from_store = index.Searcher(Path(tmp) / "idx", store, enc, rr, **kw)
        from_parquet = index.Searcher(Path(tmp) / "idx", store, enc, rr, use_region_matrix=False, **kw)
        agree, first_recall, t_two, t_exh, t_store, t_parquet, depth, reranked = [], [], [], [], [], [], [], []
        # Each method answers every query in a pass of its own, back to back as a search service would:
        # interleaved, the reference's 2 GB sweep between two queries would leave every search cold.
        two_stage = []
        for q in queries:
            hits, dt = timed(searcher.search, q, 10)
            t_two.append(dt)
            st = searcher.last_stats
            depth.append(st.region_k)
            reranked.append(st.reranked)
            two_stage.append((hits, {searcher.handle.idmap.image_id(int(i)) for i in st.candidate_ids}))
        for q, (hits, _) in zip(queries, two_stage, strict=True):
            store_hits, dt = timed(from_store.search, q, 10)
            t_store.append(dt)
            if [h.image_id for h in store_hits] != [h.image_id for h in hits]:
                raise AssertionError(f"region-matrix search differs from in-memory search for {q!r}")
        for q in queries[:10]:  # the Parquet read path is slow; ten queries give its median
            _, dt = timed(from_parquet.search, q, 10)
            t_parquet.append(dt)
        for q, (hits, scored) in zip(queries, two_stage, strict=True):
            ref, dt = timed(index.exhaustive_search, enc.encode_query(q), records, reranker, 10, fusion=args.fusion)
            t_exh.append(dt)
            ref_ids = {h.image_id for h in ref}
            agree.append(len({h.image_id for h in hits} & ref_ids) / 10)
            first_recall.append(len(scored & ref_ids) / 10)
    exh = statistics.median(t_exh)
    result.update({
        "top10_agreement": float(np.mean(agree)), "min_query_agreement": float(np.min(agree)),
        "first_stage_recall_of_exhaustive_top10": float(np.mean(first_recall)),
        "region_k_median": statistics.median(depth), "region_k_max": max(depth),
        "reranked_median": statistics.median(reranked), "reranked_max": max(reranked),
        "two_stage_ms": 1e3 * statistics.median(t_two), "two_stage_mean_ms": 1e3 * statistics.mean(t_two),
        "two_stage_p90_ms": 1e3 * float(np.percentile(t_two, 90)),
        "two_stage_store_ms": 1e3 * statistics.median(t_store), "two_stage_parquet_ms": 1e3 * statistics.median(t_parquet),
        "exhaustive_ms": 1e3 * exh,
        "speedup": exh / statistics.median(t_two),
        "speedup_of_means": statistics.mean(t_exh) / statistics.mean(t_two),
        "speedup_with_store_reads": exh / statistics.median(t_store),
        "speedup_with_parquet_reads": exh / statistics.median(t_parquet),
        "build_s": build_s, "n_regions": manifest.indexes["region"].n_vectors,
        "indexes": {k: {"spec": v.spec, "search_value": v.search_value, "recall": v.measured_recall}
                    for k, v in manifest.indexes.items()},
    })
    print(f"{n} images ({result['n_regions']} regions) x {dim}-d, {n_queries} queries, rerank_k {args.rerank_k}, "
          f"fusion {args.fusion}, SCAN {args.agg}; indexes {result['indexes']} built in {build_s:.1f} s")
    print(f"top-10 agreement with exhaustive TERAN+SCAN: {result['top10_agreement']:.4f} (worst query {result['min_query_agreement']:.1f}); "
          f"first stage holds {result['first_stage_recall_of_exhaustive_top10']:.4f} of the exhaustive top-10")
    print(f"certified region_k per word: median {result['region_k_median']}, max {result['region_k_max']}; "
          f"re-ranked: median {result['reranked_median']}, max {result['reranked_max']}")
    print(f"median latency: two-stage {result['two_stage_ms']:.1f} ms (mean {result['two_stage_mean_ms']:.1f}, p90 {result['two_stage_p90_ms']:.1f}; "
          f"region matrix {result['two_stage_store_ms']:.1f} ms, Parquet store {result['two_stage_parquet_ms']:.1f} ms), "
          f"exhaustive {result['exhaustive_ms']:.0f} ms: speedup {result['speedup']:.0f}x (of means {result['speedup_of_means']:.0f}x; "
          f"{result['speedup_with_store_reads']:.0f}x from the region matrix, {result['speedup_with_parquet_reads']:.1f}x from Parquet)")
    if args.json:
        print(json.dumps(result, default=float))
    return result


if __name__ == "__main__":
    main()

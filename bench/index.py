"""Benchmark regionrank's index construction against autofaiss, and incremental adds against a rebuild.

On a clustered synthetic set (unit vectors around Gaussian centres; recall on uniform random data is
meaningless, ENVIRONMENT.md §4) it measures, for regionrank's automatic choice (``build_vector_index``:
choose, train, add, tune to a target recall) and for autofaiss's ``build_index`` (same vectors, same
memory budget, inner product): recall@10 of held-out queries against exact search, queries/s, build
time, index size. Then, through the public API on a real ``ImageEmbeddingStore``, the time to add 1%
new images to a published index (``index.add_images``) against a full rebuild (``index.build_indexes``).

The comparison is at equal recall. autofaiss has no recall target: it picks its index and search
parameter itself. So autofaiss is built first, its recall@10 is measured on *tuning* queries (a
sample of their own, never the evaluation queries), and regionrank is asked for that recall
(``target_recall``; it tunes on its own held-out database vectors and certifies the target with a
95 % lower bound, ``index.tuning``). Both are then evaluated on the same held-out evaluation queries,
and the build times compared. ``--target-recall`` forces a target instead (the incremental part uses
the same target).

    python -m bench.index [--quick] [--json] [--n 100000] [--dim 1024] [--target-recall 0.99]

autofaiss is optional (``pip install autofaiss``; its metadata pins numpy<2, so install it with
``--no-deps`` plus embedding-reader, fire, termcolor and pandas into a separate folder on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from regionrank import index  # noqa: E402
from regionrank.index import faiss_module as import_faiss
from regionrank.index.tuning import count_hits, exact_knn, recall_at_k  # noqa: E402
from regionrank.storage import ImageEmbeddingRecord, ImageEmbeddingStore


def clustered(n: int, d: int, n_centres: int, seed: int, noise: float = 0.6, centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors around ``n_centres`` random centres (float32), and the centres."""
    rng = np.random.default_rng(seed)
    if centres is None:
        centres = rng.standard_normal((n_centres, d)).astype(np.float32) / np.sqrt(d)
    x = np.empty((n, d), np.float32)
    for s in range(0, n, 65536):
        m = min(65536, n - s)
        block = centres[rng.integers(0, len(centres), m)] + noise * rng.standard_normal((m, d)).astype(np.float32) / np.sqrt(d)
        x[s : s + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x, centres


def qps(search, xq: np.ndarray, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        search(xq)
        best = min(best, time.perf_counter() - t)
    return len(xq) / best


def bench_ours(xb: np.ndarray, xq: np.ndarray, truth: np.ndarray, budget: str, target: float, k: int, n_qps: int) -> dict:
    t = time.perf_counter()
    ann, info, _ = index.build_vector_index(xb, np.arange(len(xb)), memory_budget=budget, target_recall=target, k=k, seed=0)
    build_s = time.perf_counter() - t
    _, found = ann.search(xq, k)
    return {
        "spec": info.spec, "search_param": info.search_param, "search_value": info.search_value,
        "recall_at_10": recall_at_k(found, truth, k), "misses": misses(found, truth, k), "tuned_recall": info.measured_recall,
        "tuned_recall_lower": info.recall_lower, "certified": info.certified, "tune_queries": info.tune_queries,
        "train_add_s": info.build_s, "tune_s": info.tune_s, "build_s": build_s,
        "qps": qps(lambda q: ann.search(q, k), xq[:n_qps]), "memory_bytes": info.memory_bytes,
    }


def misses(found: np.ndarray, truth: np.ndarray, k: int) -> int:
    """True neighbours not returned, over all queries (``k * Q * (1 - recall)``)."""
    return k * len(truth) - count_hits(found, truth, k)


def bench_autofaiss(
    xb: np.ndarray, xq: np.ndarray, truth: np.ndarray, xt: np.ndarray, truth_t: np.ndarray, budget: str, k: int, n_qps: int,
) -> dict | None:
    try:
        from autofaiss import build_index
    except ImportError:
        logging.warning("autofaiss is not importable; skipping the comparison (see this file's docstring)")
        return None
    t = time.perf_counter()
    idx, infos = build_index(  # in memory: its JSON dump of the infos fails on numpy-2 floats
        embeddings=xb, save_on_disk=False, index_path=None, index_infos_path=None,
        max_index_memory_usage=budget, current_memory_available="16G", metric_type="ip", verbose=logging.ERROR,
    )
    build_s = time.perf_counter() - t
    size = int(import_faiss().serialize_index(idx).size)
    _, found = idx.search(xq, k)
    _, found_t = idx.search(xt, k)
    return {
        "spec": (infos or {}).get("index_key", "?"), "index_param": (infos or {}).get("index_param", "?"),
        "recall_at_10": recall_at_k(found, truth, k), "misses": misses(found, truth, k),
        "tune_recall_at_10": recall_at_k(found_t, truth_t, k), "build_s": build_s,
        "qps": qps(lambda q: idx.search(q, k), xq[:n_qps]), "memory_bytes": size,
    }


def write_store(root: Path, xb: np.ndarray, start: int) -> ImageEmbeddingStore:
    store = ImageEmbeddingStore(root)
    no_boxes = np.zeros((0, 4), np.float32)
    no_regions = np.zeros((0, xb.shape[1]), np.float32)
    with store.writer(encoder="bench-clustered", encoder_hash="0", embed_dim=xb.shape[1], rows_per_shard=8192) as w:
        for i, v in enumerate(xb):
            w.write(ImageEmbeddingRecord(image_id=f"img{start + i:08d}", uri="", boxes=no_boxes,
                                         region_embeddings=no_regions, global_embedding=v))
    return ImageEmbeddingStore(root)


def bench_incremental(xb: np.ndarray, new: np.ndarray, budget: str, target: float, k: int, workdir: Path) -> dict:
    store = write_store(workdir / "emb", np.concatenate([xb, new]), 0)
    ids = [f"img{i:08d}" for i in range(len(xb) + len(new))]
    kw = dict(kind=("global",), memory_budget=budget, target_recall=target, k=k, seed=0)
    t = time.perf_counter()
    index.build_indexes(store, workdir / "idx", image_ids=ids[: len(xb)], **kw)
    base_s = time.perf_counter() - t
    t = time.perf_counter()
    added = index.add_images(workdir / "idx", store, ids[len(xb) :])
    add_s = time.perf_counter() - t
    t = time.perf_counter()
    rebuilt = index.build_indexes(store, workdir / "rebuilt", **kw)
    rebuild_s = time.perf_counter() - t
    return {
        "base_build_s": base_s, "add_s": add_s, "rebuild_s": rebuild_s, "incremental_over_rebuild": add_s / rebuild_s,
        "added": len(new), "recall_after_add": added.indexes["global"].current_recall,
        "recall_after_rebuild": rebuilt.indexes["global"].measured_recall, "rebuild_due": added.rebuild_due,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.index", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="10k x 128-d: about a minute")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object on the last line")
    p.add_argument("--n", type=int, default=None, help="database vectors (default 100000, quick 10000)")
    p.add_argument("--dim", type=int, default=None, help="dimension (default 1024, quick 128)")
    p.add_argument("--queries", type=int, default=None, help="held-out evaluation queries (default 2000, quick 500)")
    p.add_argument("--tune-queries", type=int, default=None,
                   help="queries (of their own) on which autofaiss's recall, the target, is measured (default 2000, quick 500)")
    p.add_argument("--qps-queries", type=int, default=None, help="evaluation queries timed for queries/s (default 1000, quick 200)")
    p.add_argument("--memory-budget", default="4G")
    p.add_argument("--target-recall", type=float, default=None,
                   help="force this target (default: autofaiss's recall on the tuning queries; 0.95 without autofaiss)")
    p.add_argument("--noise", type=float, default=1.0,
                   help="per-vector noise norm relative to the centre norm (1.0: cos(x, centre) ~ 0.7)")
    p.add_argument("--no-autofaiss", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    n = args.n or (10_000 if args.quick else 100_000)
    d = args.dim or (128 if args.quick else 1024)
    args.queries = args.queries or (500 if args.quick else 2000)
    args.tune_queries = args.tune_queries or (500 if args.quick else 2000)
    args.qps_queries = args.qps_queries or (200 if args.quick else 1000)
    k = 10
    n_centres = max(16, n // 50)
    xb, centres = clustered(n, d, n_centres, seed=0, noise=args.noise)
    xq, _ = clustered(args.queries, d, n_centres, seed=1, noise=args.noise, centres=centres)
    xt, _ = clustered(args.tune_queries, d, n_centres, seed=3, noise=args.noise, centres=centres)
    new, _ = clustered(max(1, n // 100), d, n_centres, seed=2, noise=args.noise, centres=centres)
    _, truth = exact_knn(xb, np.arange(n), xq, k)
    _, truth_t = exact_knn(xb, np.arange(n), xt, k)
    result: dict = {"n": n, "dim": d, "noise": args.noise, "queries": len(xq), "tune_queries": len(xt),
                    "memory_budget": args.memory_budget, "threads": os.environ.get("OMP_NUM_THREADS", "default")}
    af = None if args.no_autofaiss else bench_autofaiss(xb, xq, truth, xt, truth_t, args.memory_budget, k, args.qps_queries)
    if args.target_recall is not None:
        target, target_from = args.target_recall, "forced"
    elif af is not None:
        target, target_from = af["tune_recall_at_10"], "autofaiss's recall on the tuning queries"
    else:
        target, target_from = 0.95, "default (no autofaiss)"
    result.update({"target_recall": target, "target_from": target_from})
    if af is not None:
        result.update({"autofaiss_recall_at_10": af["recall_at_10"], "autofaiss_build_s": af["build_s"],
                       "autofaiss_qps": af["qps"], "autofaiss": af})
    ours = bench_ours(xb, xq, truth, args.memory_budget, target, k, args.qps_queries)
    result.update({"recall_at_10": ours["recall_at_10"], "build_s": ours["build_s"], "qps": ours["qps"], "ours": ours})
    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        inc = bench_incremental(xb, new, args.memory_budget, target, k, Path(tmp))
    result.update({"incremental_over_rebuild": inc["incremental_over_rebuild"], "incremental": inc})
    lines = [
        f"{n} x {d} clustered vectors (noise {args.noise}), {len(xq)} held-out evaluation queries, budget "
        f"{args.memory_budget}, target recall@10 {target:.4f} ({target_from})",
        f"regionrank: {ours['spec']} {ours['search_param']}={ours['search_value']}: recall@10 {ours['recall_at_10']:.4f} "
        f"({ours['misses']} misses), build {ours['build_s']:.1f} s (train+add {ours['train_add_s']:.1f} s, tune "
        f"{ours['tune_s']:.1f} s on {ours['tune_queries']} queries: {ours['tuned_recall']:.4f}, lower bound "
        f"{ours['tuned_recall_lower']:.4f}), {ours['qps']:.0f} QPS, {ours['memory_bytes'] / 2**20:.0f} MiB",
    ]
    if af is not None:
        lines.append(f"autofaiss:  {af['spec']} ({af['index_param']}): recall@10 {af['recall_at_10']:.4f} ({af['misses']} "
                     f"misses; {af['tune_recall_at_10']:.4f} on the tuning queries), build {af['build_s']:.1f} s, "
                     f"{af['qps']:.0f} QPS, {af['memory_bytes'] / 2**20:.0f} MiB")
    lines.append(f"incremental: add {inc['added']} (1%) in {inc['add_s']:.2f} s vs rebuild {inc['rebuild_s']:.1f} s "
                 f"= {inc['incremental_over_rebuild']:.3f}; probe recall after add {inc['recall_after_add']:.4f}")
    print("\n".join(lines))
    if args.json:
        print(json.dumps(result, default=float))
    return result


if __name__ == "__main__":
    main()

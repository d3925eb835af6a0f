"""Benchmark the compressed region layout at scale: bytes per region, build time, top-10 agreement with
exhaustive float32 TERAN+SCAN, latency and peak memory of build and search.

The data is ``bench.search``'s synthetic scene (regions near concept prototypes, 10-36 regions an image),
written image by image into an ``ImageEmbeddingStore`` (never the whole matrix in RAM). The index is built
by ``index.build_indexes`` under a memory budget of ``--bytes-per-region`` times the region count, so the
chooser (``index.spec.choose_region_layout``) has to pick the compressed layout: an ``OPQ,IVF,PQ`` region
index whose own codes re-score the first stage, float16 vectors read from the version's memory-mapped
region matrix only for the re-ranked candidates. Build and search each run in a subprocess of their own,
so each peak RSS is its own. The reference is exhaustive exact MrSw + SCAN (``index.exhaustive_search``,
float32, the same fusion) over every image, streamed from the store in chunks, all queries per chunk.

The build is sharded (``index.shards``): a Dask ``LocalCluster`` of 1, then of 2 worker processes (one thread
each) runs the shard tasks, each reading at most ``--shard-vectors`` region vectors of the store; the build
process trains the quantiser once, merges the shards and tunes. ``build_s_1worker`` / ``build_s_2workers``
time ``index.build_indexes`` (the cluster is started before the clock); ``peak_rss_gib_workers`` is each
worker process's peak RSS (interpreter and libraries included), ``task_bytes_bound`` the formula of
``index.shards.shard_task_bytes`` for the largest slice. The two builds give the same index (the
sharded build equals the one-process build, ``tests/unit/index/test_sharded_build.py``); the 1-worker one is searched.

    python -m bench.scale [--quick] [--json] [--n 1000000] [--dim 256] [--queries 30] [--bytes-per-region 48]
    python -m bench.scale --n 5000 --dim 64 --compare float16 --compare OPQ8_64,IVF256,PQ8   # layouts side by side
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.search import BagOfConcepts, Scene, in_float32
from regionrank import index
from regionrank.storage import ImageEmbeddingStore

_PHASE_PREFIX = "PHASE-RESULT "


def peak_rss_gib() -> float:
    """This process's peak resident set size in GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def make_queries(scene: Scene, n_queries: int) -> list[str]:
    qrng = np.random.default_rng(7)
    return [" ".join(f"c{c}" for c in qrng.choice(len(scene.prototypes), int(qrng.integers(2, 5)), replace=False))
            for _ in range(n_queries)]


def scene_for(args: argparse.Namespace) -> Scene:
    return Scene(args.concepts or max(50, args.n // 20), args.dim)


def write_store(args: argparse.Namespace, root: Path) -> int:
    """Write the scene image by image; returns the region count."""
    store = ImageEmbeddingStore(root)
    n_regions = 0
    with store.writer(encoder="bench-scene", encoder_hash="0", embed_dim=args.dim, rows_per_shard=4096) as w:
        for rec in scene_for(args).images(args.n, (10, 36)):
            n_regions += rec.num_regions
            w.write(rec)
    return n_regions


def phase_build(args: argparse.Namespace) -> dict[str, Any]:
    scene = scene_for(args)
    enc = BagOfConcepts(scene)
    store = ImageEmbeddingStore(Path(args.workdir) / "emb")
    tune_words = np.concatenate([enc.encode_query(f"c{c}").word_embeddings
                                 for c in np.random.default_rng(11).integers(0, len(scene.prototypes), 500)])
    budget = int(args.bytes_per_region * args.n_regions)
    kw: dict[str, Any] = {"memory_budget": budget}
    if args.layout == "float16":  # today's layout, under the default budget
        kw = {"region_layout": "float16"}
    elif args.layout != "auto":  # a given PQ region index and its codes
        kw = {"region_layout": "codes", "specs": {"region": args.layout}}
    kw["shard_vectors"] = args.shard_vectors
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        client.wait_for_workers(args.workers)
        t0 = time.perf_counter()
        manifest = index.build_indexes(store, Path(args.workdir) / args.index_name,
                                       tuning_queries={"region": tune_words}, executor=client, **kw)
        build_s = time.perf_counter() - t0
        workers_rss = sorted(client.run(peak_rss_gib).values())
    return {"build_s": build_s, "memory_budget": kw.get("memory_budget"), "region_layout": manifest.region_layout,
            "bytes_per_region_parts": manifest.bytes_per_region,
            "indexes": {k: {"spec": v.spec, "search_value": v.search_value, "recall": v.measured_recall}
                        for k, v in manifest.indexes.items()},
            "peak_rss_gib": peak_rss_gib(), "peak_rss_gib_workers": workers_rss, "sharded": manifest.sharded}


def phase_search(args: argparse.Namespace) -> dict[str, Any]:
    from regionrank.encoders import ScanReranker  # the real SCAN code; only benchmarks import encoders

    scene = scene_for(args)
    searcher = index.Searcher(Path(args.workdir) / args.index_name, ImageEmbeddingStore(Path(args.workdir) / "emb"),
                              BagOfConcepts(scene), ScanReranker(), max_rerank_k=2048)
    hits, latency, stats = [], [], []
    for q in make_queries(scene, args.queries):
        t = time.perf_counter()
        found = searcher.search(q, 10)
        latency.append(time.perf_counter() - t)
        st = searcher.last_stats
        hits.append([h.image_id for h in found])
        stats.append({"certificate": st.certificate, "certified_exact": st.certified_exact,
                      "code_error_bound": st.code_error_bound, "region_k": st.region_k, "reranked": st.reranked})
    return {"hits": hits, "latency_s": latency, "stats": stats, "peak_rss_gib": peak_rss_gib()}


def exhaustive_top10(args: argparse.Namespace, chunk: int = 2048) -> tuple[list[set[str]], float]:
    """Exhaustive float32 TERAN+SCAN top-10 of every query, the store streamed once in chunks."""
    from regionrank.encoders import ScanReranker

    scene = scene_for(args)
    enc, reranker = BagOfConcepts(scene), ScanReranker()
    queries = [enc.encode_query(q) for q in make_queries(scene, args.queries)]
    best: list[list[tuple[float, str]]] = [[] for _ in queries]
    store = ImageEmbeddingStore(Path(args.workdir) / "emb")
    t0 = time.perf_counter()
    batch: list[Any] = []

    def flush() -> None:
        for qi, q in enumerate(queries):
            for h in index.exhaustive_search(q, batch, reranker, 10):
                best[qi].append((h.score, h.image_id))
            best[qi] = sorted(best[qi], key=lambda t: -t[0])[:10]

    for rec in store.iter_records():
        batch.append(in_float32(rec))
        if len(batch) == chunk:
            flush()
            batch = []
    if batch:
        flush()
    return [{i for _, i in b} for b in best], time.perf_counter() - t0


def run_phase(args: argparse.Namespace, phase: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.scale", "--phase", phase, "--workdir", args.workdir, "--n", str(args.n),
           "--dim", str(args.dim), "--queries", str(args.queries), "--bytes-per-region", str(args.bytes_per_region),
           "--n-regions", str(args.n_regions), "--concepts", str(args.concepts or 0), "--layout", args.layout,
           "--index-name", args.index_name, "--workers", str(args.workers), "--shard-vectors", str(args.shard_vectors)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=os.getcwd())
    if proc.returncode != 0:
        raise RuntimeError(f"bench.scale phase {phase} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    line = next(ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith(_PHASE_PREFIX))
    return json.loads(line[len(_PHASE_PREFIX):])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="10^5 images x 64-d: a few minutes")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object on the last line")
    p.add_argument("--n", type=int, default=None, help="images (default 1000000, quick 100000)")
    p.add_argument("--dim", type=int, default=None, help="embedding dimension (default 256, quick 64)")
    p.add_argument("--queries", type=int, default=30, help="queries (at least 30 for the agreement figure)")
    p.add_argument("--concepts", type=int, default=None, help="concept vocabulary (default n/20)")
    p.add_argument("--bytes-per-region", type=float, default=48.0,
                   help="memory budget of each index, in bytes per region (the chooser compresses to fit)")
    p.add_argument("--workdir", default=None, help="keep the store and index here (default: a temporary folder)")
    p.add_argument("--compare", action="append", default=None, metavar="LAYOUT",
                   help="also measure this layout against the same reference (repeatable): 'float16' (uncompressed, "
                        "default budget) or a PQ region index key such as 'OPQ16_64,IVF1024,PQ16' (its codes)")
    p.add_argument("--shard-vectors", type=int, default=1 << 18,
                   help="region vectors one shard task of the build reads at most (its memory)")
    p.add_argument("--phase", choices=["build", "search"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--layout", default="auto", help=argparse.SUPPRESS)
    p.add_argument("--index-name", default="idx", help=argparse.SUPPRESS)
    p.add_argument("--n-regions", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args.n = args.n or (100_000 if args.quick else 1_000_000)
    args.dim = args.dim or (64 if args.quick else 256)
    args.concepts = args.concepts or None
    if args.phase is not None:
        out = phase_build(args) if args.phase == "build" else phase_search(args)
        print(_PHASE_PREFIX + json.dumps(out, default=float))
        return out
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        args.workdir = args.workdir or tmp
        t0 = time.perf_counter()
        args.n_regions = write_store(args, Path(args.workdir) / "emb")
        write_s = time.perf_counter() - t0
        print(f"store written: {args.n} images, {args.n_regions} regions in {write_s:.1f} s", flush=True)
        build = run_phase(args, "build")
        print(f"built in {build['build_s']:.1f} s (1 worker): {build['region_layout']} {build['indexes']} "
              f"{build['bytes_per_region_parts']} B/region, peak RSS {build['peak_rss_gib']:.2f} GiB, "
              f"worker {build['peak_rss_gib_workers']} GiB", flush=True)
        args.workers, args.index_name = 2, "idx-2workers"
        build2 = run_phase(args, "build")
        print(f"built in {build2['build_s']:.1f} s (2 workers), workers' peak RSS {build2['peak_rss_gib_workers']} GiB; "
              f"phases (s) 1 worker {build['sharded'].get('seconds')}, 2 workers {build2['sharded'].get('seconds')}",
              flush=True)
        args.workers, args.index_name = 1, "idx"
        search = run_phase(args, "search")
        lat_ms = np.asarray(search["latency_s"]) * 1e3
        print(f"searched: p50 {np.percentile(lat_ms, 50):.1f} ms, p90 {np.percentile(lat_ms, 90):.1f} ms, "
              f"peak RSS {search['peak_rss_gib']:.2f} GiB", flush=True)
        variants = []
        for i, layout in enumerate(args.compare or []):
            args.layout, args.index_name = layout, f"idx-{i}"
            variants.append((layout, run_phase(args, "build"), run_phase(args, "search")))
        reference, exhaustive_s = exhaustive_top10(args)
    agree = [len(set(h) & ref) / 10 for h, ref in zip(search["hits"], reference, strict=True)]
    compared = [{"layout": layout, "region_layout": b["region_layout"], "region_spec": b["indexes"]["region"]["spec"],
                 "bytes_per_region": b["bytes_per_region_parts"].get("search"),
                 "top10_agreement": float(np.mean([len(set(h) & ref) / 10 for h, ref in zip(s["hits"], reference, strict=True)])),
                 "latency_ms_p50": float(np.percentile(np.asarray(s["latency_s"]) * 1e3, 50)), "build_s": b["build_s"],
                 "region_recall": b["indexes"]["region"]["recall"]}
                for layout, b, s in variants]
    lat = np.asarray(search["latency_s"]) * 1e3
    parts = build["bytes_per_region_parts"]
    certs = [s["certificate"] for s in search["stats"]]
    result: dict[str, Any] = {
        "n_images": args.n, "n_regions": args.n_regions, "dim": args.dim, "queries": args.queries,
        "bytes_per_region": parts.get("search"), "bytes_per_region_parts": parts,
        "bytes_per_region_disk": (parts.get("search", 0.0) + parts.get("float16_matrix", 0.0)
                                  if build["region_layout"] == "codes" else parts.get("search")),
        "region_layout": build["region_layout"], "indexes": build["indexes"], "memory_budget": build["memory_budget"],
        "top10_agreement": float(np.mean(agree)), "min_query_agreement": float(np.min(agree)),
        "latency_ms_p50": float(np.percentile(lat, 50)), "latency_ms_p90": float(np.percentile(lat, 90)),
        "build_s_1worker": build["build_s"], "build_s_2workers": build2["build_s"],
        "peak_rss_gib_workers_1worker": build["peak_rss_gib_workers"],
        "peak_rss_gib_workers_2workers": build2["peak_rss_gib_workers"],
        "task_bytes_bound": build["sharded"].get("task_bytes_bound"), "shard_tasks": build["sharded"].get("tasks"),
        "build_phase_s_1worker": build["sharded"].get("seconds"), "build_phase_s_2workers": build2["sharded"].get("seconds"),
        "shard_vectors": args.shard_vectors,
        "peak_rss_gib": max(build["peak_rss_gib"], search["peak_rss_gib"]),
        "peak_rss_gib_build": build["peak_rss_gib"], "peak_rss_gib_search": search["peak_rss_gib"],
        "certificates": {c: certs.count(c) for c in sorted(set(certs))},
        "certified_exact": sum(bool(s["certified_exact"]) for s in search["stats"]),
        "code_error_bound_median": statistics.median(s["code_error_bound"] for s in search["stats"]),
        "reranked_median": statistics.median(s["reranked"] for s in search["stats"]),
        "write_store_s": write_s, "exhaustive_s_per_query": exhaustive_s / args.queries, "compared": compared,
    }
    print(f"{args.n} images ({args.n_regions} regions) x {args.dim}-d; layout {result['region_layout']} under "
          f"{args.bytes_per_region:g} B/region; indexes {result['indexes']}")
    print(f"bytes per region (search: indexes + re-scoring data) {result['bytes_per_region']}; parts {parts}")
    print(f"build {result['build_s_1worker']:.1f} s with 1 worker, {result['build_s_2workers']:.1f} s with 2 "
          f"({result['shard_tasks']} shard tasks of <= {args.shard_vectors} vectors, bound "
          f"{result['task_bytes_bound'] / 2**30:.3f} GiB of arrays a task); peak RSS build process "
          f"{result['peak_rss_gib_build']:.2f} GiB, workers {result['peak_rss_gib_workers_2workers']} GiB, "
          f"search {result['peak_rss_gib_search']:.2f} GiB")
    print(f"top-10 agreement with exhaustive float32 TERAN+SCAN {result['top10_agreement']:.4f} "
          f"(worst query {result['min_query_agreement']:.1f}); latency p50 {result['latency_ms_p50']:.1f} ms, "
          f"p90 {result['latency_ms_p90']:.1f} ms; certificates {result['certificates']}, "
          f"exact {result['certified_exact']}/{args.queries}")
    for c in compared:
        print(f"  compare {c['layout']}: {c['region_spec']} ({c['region_layout']}) {c['bytes_per_region']} B/region, "
              f"agreement {c['top10_agreement']:.4f}, p50 {c['latency_ms_p50']:.1f} ms, build {c['build_s']:.1f} s")
    if args.json:
        print(json.dumps(result, default=float))
    return result


if __name__ == "__main__":
    main()

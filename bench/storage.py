"""Benchmark the region feature store: bytes per image, write/read throughput, lookups by id.

Baseline measured in the same run: SCAN's precomp layout (one float32 ``.npy`` of
shape (N, 36, 2048)), written and read with numpy.

    python -m bench.storage            # 10k images (the figures in the issue note)
    python -m bench.storage --quick    # 1k images, well under a minute
    python -m bench.storage --json     # last line is a JSON object

Features are drawn "post-ReLU-like" (pool5 features are means of ReLU maps: non-negative,
many exact zeros) by default; ``--dense`` uses dense Gaussian features, the worst case for
compression, where only the float16 cast saves space.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from regionrank.storage import RegionRecord, RegionStore


def make_records(n: int, regions: int, dim: int, dense: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        f = rng.standard_normal((regions, dim)).astype(np.float32)
        if not dense:
            f = np.maximum(f, 0.0) * 2.0
        xy = rng.uniform(0, 400, (regions, 2)).astype(np.float32)
        yield RegionRecord(image_id=f"{i:064x}", uri=f"img{i}.jpg", width=640, height=480,
                           boxes=np.concatenate([xy, xy + 50], 1), features=f,
                           class_ids=rng.integers(0, 1601, regions), class_scores=rng.random(regions).astype(np.float32))


def dir_bytes(path: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in path.glob(pattern))


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1k images instead of 10k")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--dense", action="store_true", help="dense Gaussian features (incompressible worst case)")
    ap.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    args = ap.parse_args()
    n = args.images or (1000 if args.quick else 10_000)
    regions, dim = 36, 2048
    work = Path(tempfile.mkdtemp(prefix="regionrank-bench-storage-"))
    try:
        records = list(make_records(n, regions, dim, args.dense))
        raw_mb = n * regions * dim * 4 / 2**20

        # baseline: SCAN precomp float32 .npy
        t0 = time.perf_counter()
        arr = np.stack([r.features for r in records])
        np.save(work / "test_ims.npy", arr)
        npy_write_s = time.perf_counter() - t0
        del arr
        t0 = time.perf_counter()
        np.load(work / "test_ims.npy").sum()
        npy_read_s = time.perf_counter() - t0
        npy_bytes = (work / "test_ims.npy").stat().st_size

        store_dir = work / "regions"
        t0 = time.perf_counter()
        with RegionStore(store_dir).writer(detector="bench", config_hash="c", weights_hash="w", feature_dim=dim,
                                           rows_per_shard=1024) as w:
            for r in records:
                w.write(r)
        write_s = time.perf_counter() - t0
        shard_bytes = dir_bytes(store_dir, "regions-*.parquet")
        del records

        store = RegionStore(store_dir)
        t0 = time.perf_counter()
        total = 0.0
        for batch in store.iter_batches(columns=["features"], batch_size=256):
            total += float(batch.column(0).flatten().to_numpy(zero_copy_only=False)[:1].sum())
        read_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        n_rec = sum(1 for _ in store.iter_records())
        decode_s = time.perf_counter() - t0
        assert n_rec == n

        ids = store.ids()
        rng = np.random.default_rng(1)
        store = RegionStore(store_dir)
        lat = []
        for trial in range(21):
            pick = [ids[j] for j in rng.choice(n, 100, replace=False)]
            t0 = time.perf_counter()
            got = store.get(pick)
            lat.append((time.perf_counter() - t0) * 1000)
            assert [g.image_id for g in got] == pick
        # baseline lookup: memory-mapped npy rows (what SCAN's loader does)
        mm = np.load(work / "test_ims.npy", mmap_mode="r")
        npy_lat = []
        for trial in range(21):
            pick = np.sort(rng.choice(n, 100, replace=False))
            t0 = time.perf_counter()
            np.asarray(mm[pick]).sum()
            npy_lat.append((time.perf_counter() - t0) * 1000)

        result = {
            "n_images": n,
            "features": "dense-gaussian" if args.dense else "post-relu-like",
            "bytes_per_image": shard_bytes / n,
            "npy_bytes_per_image": npy_bytes / n,
            "ratio": shard_bytes / npy_bytes,
            "write_mb_s": raw_mb / write_s,
            "npy_write_mb_s": raw_mb / npy_write_s,
            "read_mb_s": raw_mb / read_s,
            "read_decode_records_mb_s": raw_mb / decode_s,
            "npy_read_mb_s": raw_mb / npy_read_s,
            "lookup_ms_p50": float(np.median(lat[1:])),
            "lookup_ms_p90": float(np.percentile(lat[1:], 90)),
            "npy_mmap_lookup_ms_p50": float(np.median(npy_lat[1:])),
        }
        print(f"images: {n} x {regions} regions x {dim}-d ({result['features']}); MB below = float32-equivalent MiB")
        print(f"bytes/image     parquet {result['bytes_per_image']:,.0f}  vs npy float32 {result['npy_bytes_per_image']:,.0f}"
              f"  ratio {result['ratio']:.3f} (goal <= 0.5)")
        print(f"write MB/s      parquet {result['write_mb_s']:.0f}  vs npy {result['npy_write_mb_s']:.0f}"
              f"  ratio {result['write_mb_s'] / result['npy_write_mb_s']:.2f}")
        print(f"read MB/s       parquet {result['read_mb_s']:.0f} (records: {result['read_decode_records_mb_s']:.0f})"
              f"  vs npy {result['npy_read_mb_s']:.0f}  ratio {result['read_mb_s'] / result['npy_read_mb_s']:.2f}")
        print(f"lookup 100 ids  p50 {result['lookup_ms_p50']:.1f} ms  p90 {result['lookup_ms_p90']:.1f} ms"
              f"  vs npy mmap rows {result['npy_mmap_lookup_ms_p50']:.1f} ms")
        if args.json:
            print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

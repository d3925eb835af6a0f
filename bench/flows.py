"""Benchmark the orchestration: Prefect overhead per shard, and reindex of 1% new images vs the full pipeline.

Baselines measured in the same run:
* overhead: the same shard work (extract + encode, one library call each) called directly,
  against the `extract-regions` and `encode` flows doing it through mapped Prefect tasks
  (after a warm-up flow so the embedded API server's start is not counted);
* reindex: the full `index-images` pipeline over N images, against `reindex` of N/100 new ones.

Uses the real photos in ../shared/data/coco-mini when present (else synthetic images), the
pretrained demo detector (ssd-mobilenet-coco) and the label-grounded encoder.

    python bench/flows.py --quick          # 40 images in shards of 10
    python bench/flows.py                  # 200 images, shards of 50
    python bench/flows.py --json           # last line is a JSON object
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _images(n: int, work: Path) -> list[Path]:
    coco = ROOT.parent / "shared" / "data" / "coco-mini" / "images"
    if coco.is_dir():
        files = sorted(coco.glob("*.jpg"))
        if len(files) >= n:
            return files[:n]
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        p = work / "synthetic" / f"{i:05d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--per-shard", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=2, help="alternating repetitions; the best of each is kept")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = args.images or (40 if args.quick else 200)
    per_shard = args.per_shard or (10 if args.quick else 50)
    work = Path(tempfile.mkdtemp(prefix="regionrank-bench-flows-"))
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))
    from flows.runtime import configure_prefect_env

    configure_prefect_env(work)
    from flows import components
    from flows.config import EncodeConfig, ExtractConfig, PipelineConfig, Workspace
    from flows.encode import encode_flow
    from flows.extract import extract_regions_flow
    from flows.pipeline import index_images_flow, reindex_flow
    from flows.runtime import fast_flow_settings
    from flows.tasks import chunks, encode_shard_task, extract_shard_task

    try:
        images = [str(p) for p in _images(n + max(1, n // 100), work)]
        base, new = images[:n], images[n:]
        ext = ExtractConfig(detector="ssd-mobilenet-coco", device="cpu", images_per_task=per_shard, num_workers=0)
        enc = EncodeConfig(encoder="grounded", device="cpu", images_per_task=per_shard)
        # load the models once (both paths share the process-level cache)
        components.load_detector(ext)
        warm = Workspace(root=work / "warm")
        with fast_flow_settings():
            extract_regions_flow(base[:2], warm, ext)  # starts the embedded API server; not counted

            components.load_image_encoder(enc, ext.detector)

            def direct(ws: Workspace) -> float:
                from storage import RegionStore

                t0 = time.perf_counter()
                for part in chunks(base, per_shard):
                    extract_shard_task.fn(part, ws, ext)
                for part in chunks(RegionStore(ws.regions).ids(), per_shard):
                    encode_shard_task.fn(part, ws, enc, ext.detector)
                return time.perf_counter() - t0

            def orchestrated(ws: Workspace) -> float:
                t0 = time.perf_counter()
                res = extract_regions_flow(base, ws, ext)
                encode_flow(ws, enc, ext.detector, res["image_ids"])
                return time.perf_counter() - t0

            # alternate the two and keep each one's best, so load from other processes hits both alike
            direct_runs, flow_runs = [], []
            for rep_i in range(args.repeats):
                direct_runs.append(direct(Workspace(root=work / f"direct{rep_i}")))
                flow_runs.append(orchestrated(Workspace(root=work / f"flow{rep_i}")))
            direct_s, flow_s = min(direct_runs), min(flow_runs)
            n_shards = 2 * len(chunks(base, per_shard))

            ws_full = Workspace(root=work / "full")
            cfg = PipelineConfig(images=[Path(p) for p in base], workspace=ws_full, extract=ext, encode=enc)
            t0 = time.perf_counter()
            index_images_flow(cfg)
            full_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            rep = reindex_flow(cfg.model_copy(update={"images": [Path(p) for p in base + new]}))
            reindex_s = time.perf_counter() - t0
            assert rep["extracted"] == len(new), rep
        result = {
            "direct_runs_s": [round(x, 3) for x in direct_runs], "flow_runs_s": [round(x, 3) for x in flow_runs],
            "n_images": n, "images_per_shard": per_shard, "shards": n_shards,
            "direct_s": round(direct_s, 3), "flow_s": round(flow_s, 3),
            "overhead_per_shard_s": round((flow_s - direct_s) / n_shards, 4),
            "overhead_fraction": round((flow_s - direct_s) / direct_s, 4),
            "full_pipeline_s": round(full_s, 3), "reindex_s": round(reindex_s, 3), "new_images": len(new),
            "reindex_over_full": round(reindex_s / full_s, 4),
        }
        print(f"{n} images in shards of {per_shard} ({n_shards} extract+encode shards), ssd-mobilenet-coco + grounded")
        print(f"direct library calls {direct_s:.2f} s  vs  Prefect flows {flow_s:.2f} s: overhead "
              f"{result['overhead_per_shard_s'] * 1000:.0f} ms/shard = {100 * result['overhead_fraction']:.1f} % (goal <= 5 %)")
        print(f"full index-images {full_s:.2f} s  vs  reindex of {len(new)} new image(s) {reindex_s:.2f} s: "
              f"ratio {result['reindex_over_full']:.3f}")
        if args.json:
            print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

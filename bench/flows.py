"""Benchmark the orchestration: Prefect overhead against the same work called directly, and reindex of
1 % new images against the full pipeline.

Baselines measured in the same run (alternating, best of ``--repeats`` each, so load from other
processes hits both alike):

* direct: the shard work called as plain library calls, in this process: one ``extract`` call per
  shard, one ``encode`` call per shard (the bodies of the mapped tasks), then the index build, on
  one worker thread like the tasks (the same work measured 13-17 % slower on the main thread, an
  allocator effect that would otherwise be credited to the flows);
* flows: the ``index-images`` pipeline over the same images (extract-regions, encode and
  build-index subflows, mapped shard tasks, progress/table/report artifacts), after a warm-up
  flow so the API server's start is not counted.

overhead = flows - direct (everything Prefect adds to the whole pipeline run, index-images' own
flow run included), reported per shard and as a fraction of the direct *shard compute*
(extract + encode only, the index build excluded from the denominator), so the fraction is if
anything overstated. The compute is real extract + encode work with the pretrained demo detector
(ssd-mobilenet-coco) and the label-grounded encoder.

Realistic shards hold hundreds of images (Parquet shards of 100s of MB). coco-mini has 239 photos
and regionrank deduplicates images by content hash, so for more images the bench writes distinct
variants of each photo (mirrored, re-encoded at another JPEG quality, cropped by a few pixels)
into a temporary folder; synthetic photos stand in when coco-mini is absent.

    python -m bench.flows --quick          # 40 images in shards of 10 (small-shard figure, < 1 min)
    python -m bench.flows --small          # 200 images in shards of 50
    python -m bench.flows                  # 500 images in shards of 250 (realistic shards)
    python -m bench.flows --server sqlite  # against a real `prefect server start` (SQLite)
    python -m bench.flows --server postgresql+asyncpg://user@127.0.0.1:5432/prefect
    python -m bench.flows --json           # last line is a JSON object
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]

COCO = ROOT.parent / "shared" / "data" / "coco-mini" / "images"


def _variant(src: Path, v: int, dst: Path) -> None:
    """Variant ``v`` of a photo: different bytes (so a different content hash), the same kind of content."""
    from PIL import Image, ImageOps

    im = Image.open(src).convert("RGB")
    if v % 2:
        im = ImageOps.mirror(im)
    c = v // 2  # crop a few pixels per step: a genuinely different image of the same scene
    if c:
        im = im.crop((c, c, im.width - c, im.height - c))
    im.save(dst, quality=90 - (v % 5), optimize=False)


def _images(n: int, work: Path) -> list[Path]:
    """``n`` distinct photos: coco-mini's first, then variants of them; synthetic ones without coco-mini."""
    import numpy as np
    from PIL import Image

    photos = sorted(COCO.glob("*.jpg")) if COCO.is_dir() else []
    out: list[Path] = []
    if photos:
        for i in range(n):
            v, src = divmod(i, len(photos))
            if v == 0:
                out.append(photos[src])
                continue
            p = work / "variants" / f"{src:04d}-v{v}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            _variant(photos[src], v, p)
            out.append(p)
        return out
    rng = np.random.default_rng(0)
    for i in range(n):
        p = work / "synthetic" / f"{i:05d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


@contextlib.contextmanager
def _api(server: str | None, work: Path) -> Iterator[str]:
    """The embedded (ephemeral) API by default; or a real `prefect server start` (SQLite or a database URL)."""
    if not server:
        yield "embedded (ephemeral API server, SQLite)"
        return
    from regionrank.flows.prefect_server import start_local_server

    url = None if server == "sqlite" else server
    srv = start_local_server(work / "server", database_url=url, timeout=240)
    os.environ["PREFECT_API_URL"] = srv.api_url
    try:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: srv.api_url}):
            yield f"prefect server start ({'SQLite' if url is None else url.split('://')[0]})"
            from prefect.logging.handlers import APILogHandler

            APILogHandler.flush()  # send the last run logs while the server is still up
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.flows", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="40 images in shards of 10 (under a minute)")
    size.add_argument("--small", action="store_true", help="200 images in shards of 50 (small shards)")
    ap.add_argument("--images", type=int, default=None, help="images in the pipeline (default 500)")
    ap.add_argument("--per-shard", type=int, default=None, help="images per shard task (default 250)")
    ap.add_argument("--repeats", type=int, default=None, help="alternating repetitions; the best of each is kept "
                                                              "(default 2; 1 with --quick)")
    ap.add_argument("--server", default=None, help="'sqlite' or a database URL: run against a real `prefect server "
                                                   "start` on a free loopback port instead of the embedded API")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = args.images or (40 if args.quick else 200 if args.small else 500)
    per_shard = args.per_shard or (10 if args.quick else 50 if args.small else 250)
    repeats = args.repeats or (1 if args.quick else 2)
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="regionrank-bench-flows-"))
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))
    from regionrank.flows.runtime import configure_prefect_env

    configure_prefect_env(work)
    from regionrank.flows import components
    from regionrank.flows.config import EncodeConfig, ExtractConfig, PipelineConfig, Workspace
    from regionrank.flows.extract import extract_regions_flow
    from regionrank.flows.pipeline import index_images_flow, reindex_flow
    from regionrank.flows.runtime import fast_flow_settings
    from regionrank.flows.tasks import chunks, encode_shard_task, extract_shard_task, update_index_task

    try:
        t_prep = time.perf_counter()
        images = [str(p) for p in _images(n + max(1, n // 100), work)]
        prep_s = time.perf_counter() - t_prep
        base, new = images[:n], images[n:]
        ext = ExtractConfig(detector="ssd-mobilenet-coco", device="cpu", images_per_task=per_shard, num_workers=0)
        enc = EncodeConfig(encoder="grounded", device="cpu", images_per_task=per_shard)

        def cfg_for(ws: Workspace, imgs: list[str]) -> PipelineConfig:
            return PipelineConfig(images=[Path(p) for p in imgs], workspace=ws, extract=ext, encode=enc)

        def direct_calls(ws: Workspace) -> dict[str, float]:
            from regionrank.storage import RegionStore

            t0 = time.perf_counter()
            for part in chunks(base, per_shard):
                extract_shard_task.fn(part, ws, ext)
            for part in chunks(RegionStore(ws.regions).ids(), per_shard):
                encode_shard_task.fn(part, ws, enc, ext.detector)
            t1 = time.perf_counter()
            update_index_task.fn(ws, RegionStore(ws.regions).ids(), cfg_for(ws, base).index)
            t2 = time.perf_counter()
            return {"shards_s": t1 - t0, "index_s": t2 - t1, "total_s": t2 - t0}

        def direct(ws: Workspace) -> dict[str, float]:
            # on a worker thread, like the flows' tasks: the same extract runs ~15 % slower on the main
            # thread here (glibc's main malloc arena), which would flatter the flows
            with ThreadPoolExecutor(1) as pool:
                return pool.submit(direct_calls, ws).result()

        def orchestrated(ws: Workspace) -> float:
            t0 = time.perf_counter()
            rep = index_images_flow(cfg_for(ws, base))
            assert rep["extracted"] == n and rep["encoded"] == n, rep
            return time.perf_counter() - t0

        with _api(args.server, work) as backend, fast_flow_settings():
            components.load_detector(ext)  # load the models once (both paths share the process-level cache)
            warm = Workspace(root=work / "warm")
            extract_regions_flow(base[:2], warm, ext)  # starts the embedded API server; not counted
            components.load_image_encoder(enc, ext.detector)
            direct_runs: list[dict[str, float]] = []
            flow_runs: list[float] = []
            for i in range(repeats):
                direct_runs.append(direct(Workspace(root=work / f"direct{i}")))
                flow_runs.append(orchestrated(Workspace(root=work / f"flow{i}")))
            best = min(direct_runs, key=lambda r: r["total_s"])
            flow_s = min(flow_runs)
            # reindex of 1 % new images into the last pipeline's workspace, against that full pipeline
            last = Workspace(root=work / f"flow{repeats - 1}")
            t0 = time.perf_counter()
            rep = reindex_flow(cfg_for(last, base + new))
            reindex_s = time.perf_counter() - t0
            assert rep["extracted"] == len(new), rep

        n_shards = 2 * len(chunks(base, per_shard))  # extract + encode shard tasks
        overhead_s = flow_s - best["total_s"]
        result: dict[str, Any] = {
            "backend": backend, "n_images": n, "images_per_shard": per_shard, "shards": n_shards, "repeats": repeats,
            "direct_runs_s": [round(r["total_s"], 3) for r in direct_runs], "flow_runs_s": [round(x, 3) for x in flow_runs],
            "direct_s": round(best["total_s"], 3), "direct_shard_compute_s": round(best["shards_s"], 3),
            "direct_index_s": round(best["index_s"], 3), "flow_s": round(flow_s, 3),
            "shard_compute_per_shard_s": round(best["shards_s"] / n_shards, 3),
            "overhead_s": round(overhead_s, 3), "overhead_per_shard_s": round(overhead_s / n_shards, 4),
            "overhead_fraction": round(overhead_s / best["shards_s"], 4),
            "full_pipeline_s": round(flow_s, 3), "reindex_s": round(reindex_s, 3), "new_images": len(new),
            "reindex_over_full": round(reindex_s / flow_s, 4), "variants_prep_s": round(prep_s, 2),
            "bench_wall_s": round(time.perf_counter() - t_start, 1),
        }
        print(f"{n} images in shards of {per_shard} ({n_shards} extract+encode shard tasks), ssd-mobilenet-coco + "
              f"grounded, API: {backend}, best of {repeats}")
        print(f"direct library calls {best['total_s']:.2f} s (shard compute {best['shards_s']:.2f} s = "
              f"{result['shard_compute_per_shard_s']:.2f} s/shard, index {best['index_s']:.2f} s)  vs  "
              f"index-images flow {flow_s:.2f} s")
        print(f"Prefect overhead {overhead_s:.2f} s = {result['overhead_per_shard_s'] * 1000:.0f} ms/shard = "
              f"{100 * result['overhead_fraction']:.1f} % of the shard compute (goal <= 5 %)")
        print(f"full index-images {flow_s:.2f} s  vs  reindex of {len(new)} new image(s) {reindex_s:.2f} s: "
              f"ratio {result['reindex_over_full']:.3f}   (bench wall {result['bench_wall_s']:.0f} s)")
        if args.json:
            print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

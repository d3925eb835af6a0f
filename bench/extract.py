"""Benchmark of ``extractors.extract``: throughput, time per stage, and pipeline overhead over a bare forward.

The same images go through (a) the whole pipeline (hashing, worker decoding and
resizing, the detector, shard writing) and (b) the detector alone on images
already decoded and pre-processed in memory, batched the same way, in the same
process. ``pipeline_over_forward`` = (a) / (b) seconds; the goal is <= 1.15.
The bare forward runs once before and once after the pipeline and their mean is
used, so drift on a shared machine hits both sides.

Usage::

    python -m bench.extract --quick            # < 1 min on 2 CPU cores (small network and images)
    python -m bench.extract --n 8 --json       # the real butd-r101-c4 at 600 x 1000 (about 15 s / image on CPU)
    python -m bench.extract --images ../shared/data/coco-mini/images --n 16 --detector ssd-mobilenet-coco
    python -m bench.extract --device cuda --batch-size 8   # GPU path: bf16 autocast + channels_last (unmeasured here)

Without ``--weights`` the Faster R-CNN detectors run with seeded random weights:
the timings are those of the real architecture, the features are meaningless.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from regionrank.extractors import Detector, PreparedImage, decode_image, extract, get_detector, list_images

QUICK_BUTD = {"blocks": (1, 1, 1, 1), "min_size": 224, "max_size": 384, "rpn_post_nms_top_n": 50, "roi_pool_size": 7}
QUICK_FRCNN = {"min_size": 224, "max_size": 384}
STAGES = ("hash", "decode", "transform", "load_wait", "trunk", "rpn", "roi_head", "nms", "ssd", "feature_net", "roi_pool", "write")


def _synthetic_images(folder: Path, n: int, width: int, height: int, seed: int = 0) -> list[str]:
    """``n`` JPEGs with smooth random content (blobs compress and decode like photos, unlike white noise)."""
    rng = np.random.default_rng(seed)
    paths = []
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(n):
        img = np.zeros((height, width, 3), np.float32)
        for _ in range(12):
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            r = rng.uniform(0.05, 0.3) * min(width, height)
            img += rng.uniform(0, 255, 3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
        img += rng.normal(0, 8, img.shape)
        p = folder / f"synthetic-{i:04d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(p, quality=90)
        paths.append(str(p))
    return paths


def _bare_forward(det: Detector, prepared: Sequence[PreparedImage], batch_size: int) -> float:
    groups: dict[tuple[int, ...], list[PreparedImage]] = {}
    for p in prepared:
        groups.setdefault(p.shape_key, []).append(p)
    t0 = time.perf_counter()
    for items in groups.values():
        for j in range(0, len(items), batch_size):
            det.detect(items[j : j + batch_size])
    if det.device.type == "cuda":
        torch.cuda.synchronize(det.device)
    return time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    ap = argparse.ArgumentParser(prog="python -m bench.extract", description=__doc__.split("\n\n")[0])
    ap.add_argument("--detector", default="butd-r101-c4")
    ap.add_argument("--weights", default=None, help="local weights file (default: seeded random init / packaged demo files)")
    ap.add_argument("--images", default=None, help="folder of images (default: synthetic JPEGs)")
    ap.add_argument("--n", type=int, default=None, help="number of images (default 8, --quick 4)")
    ap.add_argument("--size", default="640x480", help="synthetic image size WxH")
    ap.add_argument("--batch-size", type=int, default=None, help="default 1 on CPU, 8 on CUDA")
    ap.add_argument("--num-workers", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="small network and images: under a minute on 2 cores")
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object on the last line")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch_size = args.batch_size or (8 if device.type == "cuda" else 1)
    n = args.n or (4 if args.quick else 8)
    options: dict[str, object] = {}
    if args.quick and args.detector == "butd-r101-c4":
        options = dict(QUICK_BUTD)
    elif args.quick and args.detector == "torchvision-frcnn-r50-fpn":
        options = dict(QUICK_FRCNN)
    det = get_detector(args.detector, weights=args.weights, device=device, **options)

    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        if args.images:
            paths = list_images(args.images)[:n]
        else:
            w, h = (int(v) for v in args.size.lower().split("x"))
            if args.quick:
                w, h = w // 2, h // 2
            paths = _synthetic_images(Path(tmp), n, w, h)
        image_size = list(Image.open(paths[0]).size)
        prepared = [det.preprocessor(decode_image(p)) for p in paths]
        det.detect(prepared[:1])  # warm-up (allocator, oneDNN / cuDNN autotuning), not timed
        bare_before = _bare_forward(det, prepared, batch_size)
        rep = extract(paths, Path(tmp) / "store", detector=det, batch_size=batch_size, num_workers=args.num_workers)
        bare_after = _bare_forward(det, prepared, batch_size)
    bare = (bare_before + bare_after) / 2
    if rep.n_extracted != len(paths):
        raise RuntimeError(f"pipeline extracted {rep.n_extracted} of {len(paths)} images: {rep.failures}")
    summary: dict[str, object] = {
        "detector": det.name,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads",
        "amp": det.config.get("amp"),
        "quick": args.quick,
        "weights": det.weights_hash,
        "images": len(paths),
        "batch_size": batch_size,
        "num_workers": args.num_workers,
        "image_size": image_size,
        "images_per_s": round(len(paths) / rep.seconds, 4),
        "pipeline_seconds": round(rep.seconds, 3),
        "forward_seconds": round(bare, 3),
        "forward_seconds_before_after": [round(bare_before, 3), round(bare_after, 3)],
        "pipeline_over_forward": round(rep.seconds / bare, 4),
        "stage_seconds": {k: round(rep.stage_seconds[k], 4) for k in STAGES if k in rep.stage_seconds},
        "torch": torch.__version__,
    }
    print(f"detector {summary['detector']} on {summary['device_name']} (amp={summary['amp']}), "
          f"{len(paths)} images {summary['image_size'][0]}x{summary['image_size'][1]}, batch {batch_size}, "
          f"{args.num_workers} decode worker(s), weights {det.weights_hash[:24]}")  # fmt: skip
    print(f"pipeline: {rep.seconds:.2f} s = {summary['images_per_s']} images/s")
    print(f"bare forward (mean of before/after): {bare:.2f} s -> pipeline / forward = {summary['pipeline_over_forward']}")
    print("stage seconds (decode/transform summed over workers; they overlap the model):")
    for k, v in summary["stage_seconds"].items():  # type: ignore[union-attr]
        print(f"  {k:<11} {v:9.3f}  ({v / len(paths) * 1000:8.1f} ms/image)")
    if args.json:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()

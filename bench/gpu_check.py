"""Every GPU figure in one run (under 8 minutes on one H100/H200): extraction images/s, SCAN batched vs
the loop, faiss GPU build and search, two-stage search on the GPU index, and ``pytest -m gpu``.

1. **extraction**: ``butd-r101-c4`` with seeded random weights (the real architecture's cost; meaningless
   features) in fp16 autocast at batch 8 on synthetic 640x480 JPEGs resized as the detector does (600 px
   short side): images/s of the bare forward, after a warm-up.
2. **scan**: ``encoders.scan.xattn_scores`` (batched) against ``bench.encoders.per_caption_loop`` (the
   reference loop) on 128 x 128 pairs of 36 regions x 16 words x 1024-d on the GPU: speed-up and max diff.
3. **faiss_gpu**: ``index.build_vector_index`` on the GPU (200k x 256 clustered vectors, ``IVF1024,Flat``)
   and on the CPU: build seconds, queries/s, the tuned recall@10 and the overlap of their results.
4. **two_stage_gpu**: ``bench.search``'s scene (10k images x 256-d) indexed on the GPU; ``index.Searcher``
   with ``ngpu=1`` against the CPU searcher on 20 queries: top-10 agreement and median latency.
5. **pytest_gpu**: ``python -m pytest -q -m gpu`` (in a subprocess, 4 minutes at most).

Each step that cannot run (no CUDA for torch, no GPU for faiss) is listed under ``skipped`` with the
reason; a step that fails is listed under ``errors``; the script exits 0 either way unless ``--strict``.
The last line is one JSON object.

    python -m bench.gpu_check [--strict] [--skip-pytest]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

from regionrank import index


def torch_cuda() -> tuple[bool, str]:
    """Whether torch sees CUDA, and the device's name (or the reason it does not)."""
    try:
        import torch
    except ImportError as exc:
        return False, f"torch is not importable: {exc}"
    if not torch.cuda.is_available():
        return False, "torch sees no CUDA device"
    return True, torch.cuda.get_device_name(0)


def _synced(fn: Callable[[], Any]) -> tuple[Any, float]:
    import torch

    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t


def check_extraction(n_images: int = 48, batch: int = 8) -> dict[str, Any]:
    import torch
    from PIL import Image

    from regionrank.extractors import decode_image, get_detector

    det = get_detector("butd-r101-c4", device="cuda", amp="fp16", seed=0)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        prepared = []
        for i in range(n_images):
            img = np.clip(rng.normal(128, 40, (480, 640, 3)), 0, 255).astype(np.uint8)
            path = Path(tmp) / f"img{i:03d}.jpg"
            Image.fromarray(img).save(path, quality=90)
            prepared.append(det.preprocessor(decode_image(str(path))))
    det.detect(prepared[:batch])  # warm-up: cuDNN autotuning and the allocator
    _, seconds = _synced(lambda: [det.detect(prepared[j : j + batch]) for j in range(0, n_images, batch)])
    return {"images_per_s": n_images / seconds, "images": n_images, "batch": batch, "amp": det.config.get("amp"),
            "network_input": list(prepared[0].shape_key), "weights": "seeded random init",
            "torch": torch.__version__}


def check_scan(n_image: int = 128, n_caption: int = 128) -> dict[str, Any]:
    import torch

    from bench.encoders import per_caption_loop
    from regionrank.encoders.scan import l2norm, xattn_scores

    gen = torch.Generator().manual_seed(0)
    images = l2norm(torch.randn(n_image, 36, 1024, generator=gen)).cuda()
    captions = l2norm(torch.randn(n_caption, 16, 1024, generator=gen)).cuda()
    cap_lens = torch.randint(8, 17, (n_caption,), generator=gen)
    out: dict[str, Any] = {"pairs": n_image * n_caption}
    with torch.inference_mode():
        for direction in ("t2i", "i2t"):
            xattn_scores(images, captions, cap_lens, direction=direction)  # warm-up
            batched, t_batched = _synced(lambda: xattn_scores(images, captions, cap_lens, direction=direction))
            loop, t_loop = _synced(lambda: per_caption_loop(images, captions, cap_lens.cuda(), direction))
            out[direction] = {"batched_ms": 1e3 * t_batched, "loop_ms": 1e3 * t_loop, "speedup": t_loop / t_batched,
                              "max_abs_diff": float((batched - loop).abs().max())}
    return out


def _clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((256, d)).astype(np.float32)
    x = centres[rng.integers(0, 256, n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def check_faiss_gpu(n: int = 200_000, d: int = 256, n_queries: int = 2000) -> dict[str, Any]:
    xb, xq = _clustered(n, d, 0), _clustered(n_queries, d, 1)
    out: dict[str, Any] = {"n": n, "dim": d, "spec": "IVF1024,Flat"}
    results = {}
    for ngpu in (1, 0):
        t = time.perf_counter()
        ann, info, _ = index.build_vector_index(xb, np.arange(n), spec="IVF1024,Flat", ngpu=ngpu, target_recall=0.95)
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        _, found = ann.search(xq, 10)
        search_s = time.perf_counter() - t
        results[ngpu] = found
        out["gpu" if ngpu else "cpu"] = {"build_s": build_s, "qps": n_queries / search_s, "nprobe": info.search_value,
                                         "tuned_recall": info.measured_recall}
    out["top10_overlap_gpu_cpu"] = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(results[1], results[0])]))
    return out


def check_two_stage_gpu(n: int = 10_000, dim: int = 256, n_queries: int = 20) -> dict[str, Any]:
    from bench.search import BagOfConcepts, Scene
    from regionrank.encoders import ScanReranker
    from regionrank.storage import ImageEmbeddingStore

    scene = Scene(max(50, n // 20), dim)
    enc = BagOfConcepts(scene)
    qrng = np.random.default_rng(7)
    queries = [" ".join(f"c{c}" for c in qrng.choice(len(scene.prototypes), int(qrng.integers(2, 5)), replace=False))
               for _ in range(n_queries)]
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        store = ImageEmbeddingStore(Path(tmp) / "emb")
        with store.writer(encoder="bench-scene", encoder_hash="0", embed_dim=dim, rows_per_shard=2048) as w:
            for rec in scene.images(n, (10, 36)):
                w.write(rec)
        store = ImageEmbeddingStore(Path(tmp) / "emb")
        t = time.perf_counter()
        manifest = index.build_indexes(store, Path(tmp) / "idx", ngpu=1, specs={"region": "IVF1024,Flat"})
        build_s = time.perf_counter() - t
        reranker = ScanReranker()
        gpu = index.Searcher(Path(tmp) / "idx", store, enc, reranker, ngpu=1, max_rerank_k=2048)
        cpu = index.Searcher(Path(tmp) / "idx", store, enc, reranker, max_rerank_k=2048)
        lat: dict[str, list[float]] = {"gpu": [], "cpu": []}
        agree = []
        for q in queries:
            t = time.perf_counter()
            a = gpu.search(q, 10)
            lat["gpu"].append(time.perf_counter() - t)
            t = time.perf_counter()
            b = cpu.search(q, 10)
            lat["cpu"].append(time.perf_counter() - t)
            agree.append(len({h.image_id for h in a} & {h.image_id for h in b}) / 10)
    return {"n_images": n, "build_s_gpu": build_s, "region_spec": manifest.indexes["region"].spec,
            "top10_agreement_gpu_vs_cpu": float(np.mean(agree)),
            "latency_ms_p50_gpu": 1e3 * statistics.median(lat["gpu"]),
            "latency_ms_p50_cpu": 1e3 * statistics.median(lat["cpu"])}


def check_pytest_gpu(timeout_s: int = 240) -> dict[str, Any]:
    t = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"],
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"returncode": None, "summary": f"timed out after {timeout_s} s", "seconds": timeout_s}
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    return {"returncode": proc.returncode, "summary": lines[-1] if lines else proc.stderr[-500:],
            "seconds": time.perf_counter() - t}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--strict", action="store_true", help="exit 1 when a step fails (default: report it and exit 0)")
    p.add_argument("--skip-pytest", action="store_true", help="leave out `pytest -m gpu`")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    cuda, device = torch_cuda()
    faiss_gpus = index.available_gpus()
    result: dict[str, Any] = {"device": device if cuda else None, "faiss_gpus": faiss_gpus, "skipped": {}, "errors": {}}
    steps: list[tuple[str, Callable[[], dict[str, Any]], str | None]] = [
        ("extraction", check_extraction, None if cuda else device),
        ("scan", check_scan, None if cuda else device),
        ("faiss_gpu", check_faiss_gpu, None if faiss_gpus else "faiss sees no GPU (faiss-cpu, or no device)"),
        ("two_stage_gpu", check_two_stage_gpu, None if faiss_gpus else "faiss sees no GPU (faiss-cpu, or no device)"),
        ("pytest_gpu", check_pytest_gpu,
         "--skip-pytest" if args.skip_pytest else None if cuda else f"{device}: every gpu test would skip"),
    ]
    for name, fn, skip in steps:
        if skip is not None:
            result["skipped"][name] = skip
            print(f"{name}: skipped ({skip})")
            continue
        t = time.perf_counter()
        try:
            result[name] = fn()
        except Exception as exc:  # one broken step must not hide the figures of the others
            result["errors"][name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        print(f"{name}: {time.perf_counter() - t:.1f} s {result.get(name, result['errors'].get(name))}")
    result["wall_s"] = time.perf_counter() - t0
    print(json.dumps(result, default=float))
    if args.strict and result["errors"]:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()

"""What each ``regionrank`` subcommand does, as plain functions (the CLI only parses and prints).

Functions that run a pipeline call the Prefect flow (``orchestrate=True``, the default,
on the embedded backend unless ``PREFECT_API_URL`` points at a server) or the same
stages as plain library calls (``orchestrate=False``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

from regionrank.flows.config import EncodeConfig, ExtractConfig, IndexConfig, PipelineConfig, SearchConfig, Workspace

__all__ = ["DEMO_QUERIES", "demo_images", "caption_table", "region_labels", "run_pipeline", "search", "status"]

log = logging.getLogger(__name__)

DEMO_QUERIES = ["a cat", "a cup of coffee", "a woman wearing a tie"]


def demo_images() -> Path:
    """The sample photos shipped in the repository (``examples/photos``)."""
    path = Path(__file__).resolve().parents[1] / "examples" / "photos"
    if not path.is_dir():
        raise FileNotFoundError(
            f"sample photos not found at {path}: `regionrank demo` runs from a source checkout; "
            f"use `regionrank index DIR` on your own images instead"
        )
    return path


def run_pipeline(cfg: PipelineConfig, *, incremental: bool, orchestrate: bool = True,
                 progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Run extract -> encode -> index over ``cfg.images``.

    Returns:
        The run report (counts, throughput, index version, failures, random-init notices).
    """
    if orchestrate:
        from regionrank.flows.pipeline import index_images_flow, reindex_flow
        from regionrank.flows.runtime import fast_flow_settings

        with fast_flow_settings():
            if incremental:
                return reindex_flow(cfg)
            return index_images_flow(cfg)
    return _run_direct(cfg, progress)


def _run_direct(cfg: PipelineConfig, progress: Callable[[str, int, int], None] | None) -> dict[str, Any]:
    """The pipeline without Prefect: the same library calls, in this process."""
    import time

    from regionrank.extractors import extract
    from regionrank.flows import components
    from regionrank.flows.components import is_random_init
    from regionrank.flows.pipeline import expand_images, save_workspace_config
    from regionrank.flows.tasks import update_index_task
    from regionrank.storage import exclusive_lock

    ws = cfg.workspace
    t0 = time.perf_counter()
    images = expand_images(cfg.images)
    with exclusive_lock(ws.lock, timeout=cfg.lock_timeout):
        save_workspace_config(ws, cfg.extract, cfg.encode, cfg.index)
        ext = extract(images, ws.regions, detector=components.load_detector(cfg.extract), batch_size=cfg.extract.batch_size,
                      num_workers=cfg.extract.num_workers, rows_per_shard=cfg.extract.rows_per_shard,
                      progress=(lambda d, t: progress("extract", d, t)) if progress else None)
        ids = ext.image_ids
        enc = components.encode_images(cfg.encode, cfg.extract.detector, ws, ids,
                                       progress=(lambda d, t: progress("encode", d, t)) if progress else None)
        manifest = update_index_task.fn(ws, ids, cfg.index)  # the flows' own decision: add, or build the first version
    return {
        "images": len(images), "stored": len(ids), "extracted": ext.n_extracted, "skipped_existing": ext.n_skipped_existing,
        "failed": ext.n_failed, "encoded": enc.written, "index_version": manifest["version"],
        "wall_seconds": round(time.perf_counter() - t0, 2), "failures": ext.failures,
        "notes": is_random_init(cfg.extract, cfg.encode),
    }


def search(ws: Workspace, text: str, cfg: SearchConfig, *, explain: Path | None = None) -> list[Any]:
    """Two-stage text-to-image search in a workspace; optionally render the top hit's heatmap."""
    from regionrank.flows.components import make_searcher
    from regionrank.flows.pipeline import load_workspace_config

    extract, encode, _ = load_workspace_config(ws)
    hits = make_searcher(ws, encode, extract.detector, cfg).search(text, k=cfg.k)
    if explain is not None and hits:
        from regionrank.index import render_heatmap

        render_heatmap(hits[0].uri, hits[0], explain)
    return hits


def caption_table(captions: Path, ws: Workspace, *, split: str = "test", namespace: str = "coco") -> Path:
    """A caption table path; a Karpathy JSON is converted once (image ids hashed from the images beside it),
    a SCAN precomp folder's ``{split}_caps.txt`` too (image ids as ``import-features scan-precomp`` gives them)."""
    from regionrank.storage import read_karpathy_json, read_scan_captions, write_caption_table

    if captions.suffix == ".parquet":
        return captions
    if captions.is_dir():
        return write_caption_table(ws.captions, read_scan_captions(captions, split, namespace=namespace))
    images_root = captions.parent / "images"
    rows = read_karpathy_json(captions, images_root=images_root if images_root.is_dir() else None)
    return write_caption_table(ws.captions, rows)


def region_labels(ws: Workspace, image_ids: list[str]) -> dict[str, list[str] | None]:
    """The stored label of each region of these images (label-grounded encoders store them), for explanations."""
    from regionrank.storage import ImageEmbeddingStore

    recs = ImageEmbeddingStore(ws.image_embeddings).get(list(dict.fromkeys(image_ids)))
    return {r.image_id: r.labels for r in recs}


def status(ws: Workspace, *, recent_runs: int = 10) -> dict[str, Any]:
    """What is stored, the index versions, and recent flow runs."""
    from regionrank.index import versions
    from regionrank.storage import CaptionEmbeddingStore, ImageEmbeddingStore, RegionStore

    out: dict[str, Any] = {"workspace": str(ws.root)}
    if (ws.root / "regionrank.json").exists():
        out["config"] = json.loads((ws.root / "regionrank.json").read_text())
    regions = RegionStore(ws.regions)
    out["regions"] = {"images": len(regions), "feature_dim": regions.feature_dim, "failures": len(regions.failures()),
                      "shards": len(regions.shard_names())}
    emb = ImageEmbeddingStore(ws.image_embeddings)
    out["image_embeddings"] = {"images": len(emb), "embed_dim": emb.embed_dim}
    caps = CaptionEmbeddingStore(ws.caption_embeddings)
    out["caption_embeddings"] = {"captions": len(caps)}
    try:
        out["index_versions"] = [
            {"version": m.version, "created_at": m.created_at, "items": m.n_items, "history": m.history[-1:] if m.history else []}
            for m in versions(ws.index_dir)
        ]
    except FileNotFoundError:
        out["index_versions"] = []
    out["recent_runs"] = _recent_runs(recent_runs)
    return out


def _recent_runs(limit: int) -> list[dict[str, Any]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(limit=limit, sort=FlowRunSort.START_TIME_DESC)
        flows = {f.id: f.name for f in client.read_flows(limit=200)}
    return [
        {"flow": flows.get(r.flow_id, "?"), "run": r.name, "state": r.state_name,
         "start": r.start_time.isoformat(timespec="seconds") if r.start_time else None,
         "seconds": round(r.total_run_time.total_seconds(), 1) if r.total_run_time else None}
        for r in runs
    ]

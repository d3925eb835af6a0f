"""What each ``regionrank`` subcommand does, as plain functions (the CLI only parses and prints).

Functions that run a pipeline call the Prefect flow (``orchestrate=True``, the default,
on the embedded backend unless ``PREFECT_API_URL`` points at a server) or the same
stages as plain library calls (``orchestrate=False``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from regionrank.flows.config import PipelineConfig, SearchConfig, Workspace

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
    """Run expand -> extract -> encode -> index over ``cfg.images`` (the stages of ``flows/stages.py``).

    Args:
        incremental: add the new images to the current index version (``regionrank reindex``);
            ``False`` rebuilds the index from every stored embedding (``regionrank index``).
        orchestrate: run the Prefect flow (``reindex`` or ``index-images``); ``False`` calls the
            same stages in this process, in the same order.
        progress: ``progress(stage, done, total)`` of the plain run.

    Returns:
        The run report (counts, throughput, index version, failures, random-init notices).
    """
    if orchestrate:
        from regionrank.flows.pipeline import index_images_flow, reindex_flow
        from regionrank.flows.runtime import fast_flow_settings

        with fast_flow_settings():
            if incremental:
                return reindex_flow(cfg)
            return index_images_flow(cfg, rebuild=True)
    return _run_direct(cfg, rebuild=not incremental, progress=progress)


def _run_direct(cfg: PipelineConfig, *, rebuild: bool, progress: Callable[[str, int, int], None] | None) -> dict[str, Any]:
    """The pipeline without Prefect: the stages the flows run as tasks, called in this process."""
    import time

    from regionrank.flows import stages
    from regionrank.flows.components import is_random_init
    from regionrank.flows.settings import save_workspace_config
    from regionrank.storage import exclusive_lock

    def stage_progress(stage: str) -> Callable[[int, int], None] | None:
        return (lambda done, total: progress(stage, done, total)) if progress else None

    ws = cfg.workspace
    t0 = time.perf_counter()
    images = stages.expand_inputs(cfg.images)
    stages.check_given_boxes(images, cfg.extract)
    with exclusive_lock(ws.lock, timeout=cfg.lock_timeout):
        save_workspace_config(ws, cfg.extract, cfg.encode, cfg.index)
        reports = [stages.extract_regions(images, ws, cfg.extract, stage_progress("extract"))]
        stages.check_given_boxes_matched(cfg.extract, reports)
        ext = stages.sum_extract_reports(ws, reports)
        ids = ext["image_ids"]
        enc = stages.sum_encode_reports(ids, [stages.encode_regions(ids, ws, cfg.encode, cfg.extract.detector,
                                                                    stage_progress("encode"))])
        manifest = stages.update_index(ws, ids, cfg.index, rebuild=rebuild, dask_address=cfg.dask_address)
    return stages.pipeline_report(images, ext, enc, manifest, time.perf_counter() - t0, is_random_init(cfg.extract, cfg.encode))


def search(ws: Workspace, text: str, cfg: SearchConfig, *, explain: Path | None = None) -> list[Any]:
    """Two-stage text-to-image search in a workspace; optionally render the top hit's heatmap."""
    from regionrank.flows.components import make_searcher
    from regionrank.flows.settings import load_workspace_config

    extract, encode, _ = load_workspace_config(ws)
    hits = make_searcher(ws, encode, extract.detector, cfg).search(text, k=cfg.params.k)
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
    """What is stored, the index versions (each with ``damaged``: what is wrong with its files, empty when
    intact), and recent flow runs."""
    from regionrank.index import verify_version, versions
    from regionrank.storage import CaptionEmbeddingStore, ImageEmbeddingStore, RegionStore

    from regionrank.flows.settings import read_workspace_config_file

    out: dict[str, Any] = {"workspace": str(ws.root)}
    saved = read_workspace_config_file(ws)
    if saved is not None:
        out["config"] = saved
    regions = RegionStore(ws.regions)
    out["regions"] = {"images": len(regions), "feature_dim": regions.feature_dim, "failures": len(regions.failures()),
                      "shards": len(regions.shard_names())}
    emb = ImageEmbeddingStore(ws.image_embeddings)
    out["image_embeddings"] = {"images": len(emb), "embed_dim": emb.embed_dim}
    caps = CaptionEmbeddingStore(ws.caption_embeddings)
    out["caption_embeddings"] = {"captions": len(caps)}
    try:
        out["index_versions"] = [
            {"version": m.version, "created_at": m.created_at, "items": m.n_items, "history": m.history[-1:] if m.history else [],
             "damaged": verify_version(ws.index_dir, m.version)}
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

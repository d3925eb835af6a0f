"""Flows ``index-images`` (the whole pipeline, as subflows) and ``reindex`` (new images only).

Both hold the workspace's pipeline lock for their whole run: a second run on the same
workspace waits ``lock_timeout`` seconds, then fails with a message naming the holder.
Idempotence lives in the library (stores skip what they hold, the index skips ids it
has), so re-running after a crash or Ctrl-C finishes the work without duplicates.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger

from regionrank.flows import monitoring
from regionrank.flows.build_index import build_index_flow, index_report_rows
from regionrank.flows.config import PipelineConfig
from regionrank.flows.encode import encode_flow
from regionrank.flows.extract import extract_regions_flow
from regionrank.flows.settings import save_workspace_config
from regionrank.flows.stages import check_given_boxes, pipeline_report
from regionrank.flows.tasks import expand_inputs_task

__all__ = ["index_images_flow", "reindex_flow"]


def _task_runner(dask_address: str | None) -> Any:
    if not dask_address:
        return None
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(address=dask_address)


def _with_runner(f: Any, dask_address: str | None) -> Any:
    runner = _task_runner(dask_address)
    return f.with_options(task_runner=runner) if runner is not None else f


def _run_stages(cfg: PipelineConfig, *, rebuild: bool) -> dict[str, Any]:
    """The stages of ``flows/stages.py`` in order, each as a task or a subflow of mapped tasks."""
    from regionrank.flows.components import is_random_init
    from regionrank.storage import exclusive_lock

    logger = get_run_logger()
    ws = cfg.workspace
    t0 = time.perf_counter()
    images = expand_inputs_task(cfg.images)
    check_given_boxes(images, cfg.extract)
    with exclusive_lock(ws.lock, timeout=cfg.lock_timeout):
        save_workspace_config(ws, cfg.extract, cfg.encode, cfg.index)
        ext = _with_runner(extract_regions_flow, cfg.dask_address)(images, ws, cfg.extract)
        enc = _with_runner(encode_flow, cfg.dask_address)(ws, cfg.encode, cfg.extract.detector, ext["image_ids"])
        manifest = build_index_flow(ws, cfg.index, image_ids=ext["image_ids"], rebuild=rebuild,
                                    dask_address=cfg.dask_address)
    wall = time.perf_counter() - t0
    notes = is_random_init(cfg.extract, cfg.encode)
    for n in notes:
        logger.warning(n)
    report = pipeline_report(images, ext, enc, manifest, wall, notes)
    monitoring.markdown_report(
        "run-report", "regionrank run report",
        {
            "Throughput": {"images given": len(images), "newly extracted": ext["extracted"], "already stored": ext["skipped"],
                           "failed": ext["failed"], "extract images/s": ext["images_per_s"],
                           "encode images/s": enc["images_per_s"], "wall seconds": round(wall, 2)},
            "Regions": {"detector": cfg.extract.detector, "regions in this batch": ext["regions"],
                        "regions per image": round(ext["regions"] / max(len(ext["image_ids"]), 1), 2),
                        "encoder": cfg.encode.encoder},
            "Index": "\n".join(
                [f"version {manifest.get('version')} ({', '.join(manifest.get('history', [])[-1:])})", "",
                 "| index | spec | vectors | recall@k (measured at build) | memory MB |", "|---|---|---|---|---|"]
                + [f"| {r['index']} | {r['spec']} | {r['vectors']} | {r['recall_at_k']} | {r['memory_mb']} |"
                   for r in index_report_rows(manifest)]),
            "Notes": "\n".join(f"- {n}" for n in notes) or "all models loaded from weights",
        },
    )
    return report


@flow(name="index-images")
def index_images_flow(cfg: PipelineConfig, rebuild: bool = False) -> dict[str, Any]:
    """The whole pipeline over ``cfg.images``: extract-regions -> encode -> build-index (subflows).

    The index is updated incrementally when one exists (a new version either way);
    ``rebuild=True`` (what ``regionrank index`` asks for) retrains it from every stored embedding.
    """
    return _run_stages(cfg, rebuild=rebuild)


@flow(name="reindex")
def reindex_flow(cfg: PipelineConfig) -> dict[str, Any]:
    """A new batch of images: hash contents, process only images not stored yet, add them to the index
    incrementally and publish a new index version."""
    return _run_stages(cfg, rebuild=False)

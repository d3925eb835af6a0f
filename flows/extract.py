"""Flow ``extract-regions``: images -> region feature shards, fanned out over chunks of images."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, unmapped

from regionrank.flows import monitoring
from regionrank.flows.config import ExtractConfig, Workspace
from regionrank.flows.stages import check_given_boxes_matched, sum_extract_reports
from regionrank.flows.tasks import chunks, ensure_device_limit, extract_shard_task

__all__ = ["extract_regions_flow"]


@flow(name="extract-regions", log_prints=False)
def extract_regions_flow(images: list[str], ws: Workspace, cfg: ExtractConfig) -> dict[str, Any]:
    """Extract regions for every image not stored yet; unreadable images are recorded and skipped.

    Each mapped task identifies its chunk (one read per file) and extracts only the images the
    store lacks; unreadable inputs land in the store's failures table and in this run's table.

    Returns:
        ``{"image_ids": [...stored ids of the inputs...], "extracted", "skipped", "failed", "failures", "seconds",
        "images_per_s", "regions"}``.
    """
    logger = get_run_logger()
    parts = chunks(images, cfg.images_per_task)
    ensure_device_limit(cfg.device_slots)
    progress = monitoring.Progress("extract-progress", len(parts), f"extract-regions: {len(images)} images in {len(parts)} shards")
    reports: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for i, fut in enumerate(extract_shard_task.map(parts, ws=unmapped(ws), cfg=unmapped(cfg)) if parts else []):
        res = fut.result()
        reports.append(res)
        rows.append({"shard": i, **{k: v for k, v in res.items() if k not in ("failures", "image_ids", "stage_seconds")},
                     **{f"{k}_s": v for k, v in res["stage_seconds"].items()}})
        progress.advance()
    progress.finish()
    check_given_boxes_matched(cfg, reports)
    summary = sum_extract_reports(ws, reports)
    monitoring.table("extract-shards", rows, "per-shard counts and stage timings")
    monitoring.failures_table("extract-failures", summary["failures"])
    logger.info("%d images given, %d extracted, %d already stored, %d failed", len(images), summary["extracted"],
                summary["skipped"], summary["failed"])
    return summary

"""Flow ``extract-regions``: images -> region feature shards, fanned out over chunks of images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, unmapped

from regionrank.flows import monitoring
from regionrank.flows.config import ExtractConfig, Workspace
from regionrank.flows.tasks import chunks, ensure_device_limit, extract_shard_task, hash_images_task

__all__ = ["extract_regions_flow"]


@flow(name="extract-regions", log_prints=False)
def extract_regions_flow(images: list[str], ws: Workspace, cfg: ExtractConfig) -> dict[str, Any]:
    """Extract regions for every image not stored yet; unreadable images are recorded and skipped.

    Returns:
        ``{"image_ids": [...stored ids of the inputs...], "extracted", "skipped", "failed", "failures", "seconds"}``.
    """
    logger = get_run_logger()
    from regionrank.storage import RegionStore

    hashed = hash_images_task(images)
    unreadable = [{"uri": h["path"], "reason": h["error"]} for h in hashed if "error" in h]
    ok = [h for h in hashed if "image_id" in h]
    store = RegionStore(ws.regions)
    todo_ids = set(store.missing([h["image_id"] for h in ok]))
    todo = [h["path"] for h in ok if h["image_id"] in todo_ids]
    logger.info("%d images given, %d already stored, %d to extract, %d unreadable", len(images),
                len(ok) - len(todo), len(todo), len(unreadable))
    parts = chunks(todo, cfg.images_per_task)
    ensure_device_limit(cfg.device_slots)
    progress = monitoring.Progress("extract-progress", len(parts), f"extract-regions: {len(todo)} images in {len(parts)} shards")
    rows: list[dict[str, Any]] = []
    failures = list(unreadable)
    stored = {h["image_id"] for h in ok} - todo_ids
    futures = extract_shard_task.map(parts, ws=unmapped(ws), cfg=unmapped(cfg)) if parts else []
    for i, fut in enumerate(futures):
        res = fut.result()
        failures += res.pop("failures")
        stored.update(res.pop("image_ids"))
        stages = res.pop("stage_seconds")
        rows.append({"shard": i, **res, **{f"{k}_s": v for k, v in stages.items()}})
        progress.advance()
    progress.finish()
    monitoring.table("extract-shards", rows, "per-shard counts and stage timings")
    monitoring.failures_table("extract-failures", failures)
    image_ids = [i for i in dict.fromkeys(h["image_id"] for h in ok) if i in stored]
    regions = RegionStore(ws.regions).read_rows(image_ids, columns=["num_regions"]).column(0).to_numpy()
    seconds = sum(r["seconds"] for r in rows)
    extracted = sum(r["extracted"] for r in rows)
    return {
        "image_ids": image_ids,
        "extracted": extracted,
        "skipped": len(ok) - len(todo) + sum(r["skipped"] for r in rows),
        "failed": len(failures),
        "failures": failures,
        "seconds": round(seconds, 3),
        "images_per_s": round(extracted / seconds, 3) if seconds else None,
        "regions": int(regions.sum()),
    }

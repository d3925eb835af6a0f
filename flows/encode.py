"""Flow ``encode``: region shards -> image embedding shards, fanned out over chunks of image ids."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, unmapped

from regionrank.flows import monitoring
from regionrank.flows.config import EncodeConfig, Workspace
from regionrank.flows.stages import sum_encode_reports
from regionrank.flows.tasks import chunks, encode_shard_task, ensure_device_limit

__all__ = ["encode_flow"]


@flow(name="encode")
def encode_flow(ws: Workspace, cfg: EncodeConfig, detector: str, image_ids: list[str] | None = None) -> dict[str, Any]:
    """Embed every stored image (or ``image_ids``) that has no embedding yet.

    Only chunks of images without an embedding are mapped (a reindex of a mostly-embedded
    collection starts few tasks); each task's library call skips what it finds stored anyway.
    """
    from regionrank.storage import ImageEmbeddingStore, RegionStore

    logger = get_run_logger()
    wanted = image_ids if image_ids is not None else RegionStore(ws.regions).ids()
    todo = ImageEmbeddingStore(ws.image_embeddings).missing(wanted)
    parts = chunks(todo, cfg.images_per_task)
    ensure_device_limit(cfg.device_slots)
    progress = monitoring.Progress("encode-progress", len(parts), f"encode: {len(todo)} images in {len(parts)} shards")
    reports = []
    for fut in encode_shard_task.map(parts, ws=unmapped(ws), cfg=unmapped(cfg), detector=unmapped(detector)) if parts else []:
        reports.append(fut.result())
        progress.advance()
    progress.finish()
    monitoring.table("encode-shards", [{"shard": i, **r} for i, r in enumerate(reports)], "per-shard embedding counts")
    summary = sum_encode_reports(wanted, reports, already_stored=len(wanted) - len(todo))
    logger.info("%d images, %d already embedded, %d encoded with %s", len(wanted), summary["skipped"], summary["encoded"],
                cfg.encoder)
    return summary

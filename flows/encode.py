"""Flow ``encode``: region shards -> image embedding shards, fanned out over chunks of image ids."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, unmapped

from regionrank.flows import monitoring
from regionrank.flows.config import EncodeConfig, Workspace
from regionrank.flows.tasks import chunks, ensure_device_limit, encode_shard_task

__all__ = ["encode_flow"]


@flow(name="encode")
def encode_flow(ws: Workspace, cfg: EncodeConfig, detector: str, image_ids: list[str] | None = None) -> dict[str, Any]:
    """Embed every stored image (or ``image_ids``) that has no embedding yet."""
    from regionrank.storage import ImageEmbeddingStore, RegionStore

    logger = get_run_logger()
    wanted = image_ids if image_ids is not None else RegionStore(ws.regions).ids()
    todo = ImageEmbeddingStore(ws.image_embeddings).missing(wanted)
    logger.info("%d images, %d already embedded, %d to encode with %s", len(wanted), len(wanted) - len(todo),
                len(todo), cfg.encoder)
    parts = chunks(todo, cfg.images_per_task)
    ensure_device_limit(cfg.device_slots)
    progress = monitoring.Progress("encode-progress", len(parts), f"encode: {len(todo)} images in {len(parts)} shards")
    rows = []
    for i, fut in enumerate(encode_shard_task.map(parts, ws=unmapped(ws), cfg=unmapped(cfg), detector=unmapped(detector)) if parts else []):
        rows.append({"shard": i, **fut.result()})
        progress.advance()
    progress.finish()
    monitoring.table("encode-shards", rows, "per-shard embedding counts")
    seconds = sum(r["seconds"] for r in rows)
    encoded = sum(r["encoded"] for r in rows)
    return {"image_ids": list(wanted), "encoded": encoded, "skipped": len(wanted) - len(todo), "seconds": round(seconds, 3),
            "images_per_s": round(encoded / seconds, 3) if seconds else None}

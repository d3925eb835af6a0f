"""Prefect tasks: each wraps one library call and passes paths, ids and small dicts only."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from pathlib import Path
from typing import Any, Iterator

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext, TaskRunContext

from regionrank.flows import components
from regionrank.flows.config import EncodeConfig, ExtractConfig, IndexConfig, Workspace

__all__ = [
    "DEVICE_LIMIT",
    "build_index_task",
    "ensure_device_limit",
    "encode_shard_task",
    "extract_shard_task",
    "hash_images_task",
    "update_index_task",
]

log = logging.getLogger(__name__)

DEVICE_LIMIT = "regionrank-device"
"""Global concurrency limit held by every task that runs a model (one at a time per device by default)."""

_RETRY = dict(retries=2, retry_delay_seconds=[2, 10], retry_jitter_factor=0.5, cache_policy=NO_CACHE)
# Model tasks carry no Prefect tags: a tagged task asks the API for a "tag:..." concurrency lease on
# every start, and on the SQLite backend that call is refused with a retryable 503 often enough to
# cost a 2 s client back-off per shard (measured, bench/flows.py). Device slots are bounded by
# :func:`device_slot` instead.


@task(name="hash-images", cache_policy=NO_CACHE)
def hash_images_task(paths: list[str]) -> list[dict[str, str]]:
    """Content-hash each path: ``{"path", "image_id"}``, or ``{"path", "error"}`` when unreadable."""
    from regionrank.storage import image_id_for_file

    out = []
    for p in paths:
        try:
            out.append({"path": p, "image_id": image_id_for_file(p)})
        except OSError as exc:
            out.append({"path": p, "error": f"{type(exc).__name__}: {exc}"})
    return out


@task(name="extract-shard", **_RETRY)
def extract_shard_task(paths: list[str], ws: Workspace, cfg: ExtractConfig) -> dict[str, Any]:
    """Detect regions in one chunk of images and write them to the workspace's region store."""
    from regionrank.extractors import extract

    with device_slot(cfg.device_slots):
        rep = extract(paths, ws.regions, detector=components.load_detector(cfg), batch_size=cfg.batch_size,
                      num_workers=cfg.num_workers, rows_per_shard=cfg.rows_per_shard)
    return {
        "images": rep.n_seen, "extracted": rep.n_extracted, "skipped": rep.n_skipped_existing,
        "duplicates": rep.n_duplicates, "failed": rep.n_failed, "seconds": round(rep.seconds, 3),
        "failures": rep.failures, "stage_seconds": {k: round(v, 3) for k, v in rep.stage_seconds.items()},
        "image_ids": rep.image_ids,
    }


@task(name="encode-shard", **_RETRY)
def encode_shard_task(image_ids: list[str], ws: Workspace, cfg: EncodeConfig, detector: str) -> dict[str, Any]:
    """Embed one chunk of images (region store -> image embedding store)."""
    with device_slot(cfg.device_slots):
        rep = components.encode_images(cfg, detector, ws, image_ids)
    return {"images": len(image_ids), "encoded": rep.written, "skipped": rep.skipped_existing, "seconds": round(rep.seconds, 3)}


@task(name="build-index", **_RETRY)
def build_index_task(ws: Workspace, cfg: IndexConfig) -> dict[str, Any]:
    """Build (or rebuild) the FAISS indexes from every stored image embedding and publish a version."""
    return _update_or_build(ws, cfg, None, rebuild=True)


@task(name="update-index", **_RETRY)
def update_index_task(ws: Workspace, image_ids: list[str], cfg: IndexConfig) -> dict[str, Any]:
    """Add images to the current index version incrementally (or build it if none exists)."""
    return _update_or_build(ws, cfg, image_ids, rebuild=False)


def _update_or_build(ws: Workspace, cfg: IndexConfig, image_ids: list[str] | None, *, rebuild: bool) -> dict[str, Any]:
    from regionrank.flows.device import resolve_faiss_gpus
    from regionrank.index import update_or_build

    manifest = update_or_build(ws.index_dir, ws.image_embeddings, image_ids, rebuild=rebuild,
                               ngpu=resolve_faiss_gpus(cfg.ngpu), kind=cfg.kinds, memory_budget=cfg.memory_budget,
                               target_recall=cfg.target_recall, seed=cfg.seed)
    return json.loads(manifest.to_json())


def ensure_device_limit(slots: int = 1) -> None:
    """Create (or resize) the global concurrency limit that bounds model-running tasks per device.

    Only runs whose task runner sends tasks to other processes (Dask) use it (:func:`device_slot`);
    for the in-process thread pool this is a no-op, saving the API round trips.
    """
    from prefect.client.orchestration import get_client
    from prefect.task_runners import ThreadPoolTaskRunner

    ctx = FlowRunContext.get()
    if ctx is not None and isinstance(ctx.task_runner, ThreadPoolTaskRunner):
        return
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(DEVICE_LIMIT, slots)


_LOCAL_SLOTS: dict[int, threading.BoundedSemaphore] = {}
_LOCAL_SLOTS_LOCK = threading.Lock()


def _in_dask_worker() -> bool:
    try:
        from distributed import get_worker
    except ImportError:
        return False
    try:
        get_worker()
    except ValueError:
        return False
    return True


@contextlib.contextmanager
def device_slot(slots: int = 1) -> Iterator[None]:
    """Hold one of ``slots`` device slots while a model runs.

    Threads of one process queue on a local semaphore. On Dask workers (other processes, other
    machines) the slot is the Prefect global concurrency limit :data:`DEVICE_LIMIT` instead;
    it is not used in-process because each acquisition costs seconds of lease round trips
    (measured: ~2 s per task on 2 cores), far more than the semaphore's microseconds.
    Called directly (``.fn``), nothing is acquired.
    """
    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        yield
        return
    if _in_dask_worker():
        with concurrency(DEVICE_LIMIT, occupy=1, strict=False):
            yield
        return
    with _LOCAL_SLOTS_LOCK:
        local = _LOCAL_SLOTS.setdefault(slots, threading.BoundedSemaphore(slots))
    with local:
        yield


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    """Split into consecutive chunks of at most ``size`` (one mapped task each)."""
    return [items[i : i + size] for i in range(0, len(items), size)]

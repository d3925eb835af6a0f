"""Prefect tasks: each wraps one pipeline stage (``flows/stages.py``: one library call) and passes
paths, ids and small dicts only; and the device slots that bound model-running tasks."""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from typing import Any, Iterator

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext, TaskRunContext

from regionrank.flows import stages
from regionrank.flows.config import EncodeConfig, ExtractConfig, IndexConfig, Workspace

__all__ = [
    "DEVICE_LIMIT",
    "chunks",
    "device_slot",
    "encode_shard_task",
    "ensure_device_limit",
    "expand_inputs_task",
    "extract_shard_task",
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


@task(name="expand-inputs", cache_policy=NO_CACHE)
def expand_inputs_task(paths: list[Path]) -> list[str]:
    """The image files of the given folders and files (:func:`stages.expand_inputs`)."""
    return stages.expand_inputs(paths)


@task(name="extract-shard", **_RETRY)
def extract_shard_task(paths: list[str], ws: Workspace, cfg: ExtractConfig) -> dict[str, Any]:
    """Identify one chunk of images (one read each) and extract the missing ones (:func:`stages.extract_regions`)."""
    with device_slot(cfg.device_slots):
        return stages.extract_regions(paths, ws, cfg)


@task(name="encode-shard", **_RETRY)
def encode_shard_task(image_ids: list[str], ws: Workspace, cfg: EncodeConfig, detector: str) -> dict[str, Any]:
    """Embed one chunk of images (:func:`stages.encode_regions`)."""
    with device_slot(cfg.device_slots):
        return stages.encode_regions(image_ids, ws, cfg, detector)


@task(name="update-index", **_RETRY)
def update_index_task(ws: Workspace, image_ids: list[str] | None, cfg: IndexConfig, rebuild: bool = False,
                      dask_address: str | None = None) -> dict[str, Any]:
    """Add images to the current index version, or build a new one, sharded over the Dask cluster at
    ``dask_address`` if given (:func:`stages.update_index`)."""
    return stages.update_index(ws, image_ids, cfg, rebuild=rebuild, dask_address=dask_address)


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

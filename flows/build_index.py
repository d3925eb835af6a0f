"""Flow ``build-index``: image embeddings -> a new version of the FAISS indexes."""

from __future__ import annotations

from typing import Any

from prefect import flow

from regionrank.flows import monitoring
from regionrank.flows.config import IndexConfig, Workspace
from regionrank.flows.tasks import update_index_task

__all__ = ["build_index_flow", "index_report_rows"]


def index_report_rows(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """One table row per index of a manifest: type, size, measured recall, memory."""
    rows = []
    for kind, info in (manifest.get("indexes") or {}).items():
        rows.append({
            "index": kind, "spec": info.get("spec"), "vectors": info.get("n_vectors"), "k": info.get("k"),
            "recall_at_k": round(float(info.get("measured_recall", 0.0)), 4),
            "current_recall": round(float(info.get("current_recall", 0.0)), 4),
            "search_param": f"{info.get('search_param')}={info.get('search_value')}" if info.get("search_param") else None,
            "memory_mb": round(info.get("memory_bytes", 0) / 2**20, 3),
        })
    return rows


@flow(name="build-index")
def build_index_flow(ws: Workspace, cfg: IndexConfig, image_ids: list[str] | None = None, rebuild: bool = False,
                     dask_address: str | None = None) -> dict[str, Any]:
    """Add ``image_ids`` to the current index version incrementally, or (``rebuild``, no ``image_ids``, or no
    version yet) build a new version from every stored embedding; with ``dask_address`` (``--dask``) a build
    runs as shard tasks on that Dask cluster (the task holds the client; the library takes it as its executor)."""
    manifest = update_index_task(ws, image_ids, cfg, rebuild=rebuild, dask_address=dask_address)
    monitoring.table("index-stats", index_report_rows(manifest), f"index version {manifest.get('version')}")
    return manifest

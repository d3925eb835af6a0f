"""Deployments: a scheduled reindex of a watched folder, the on-demand pipeline and evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from regionrank.flows.config import EncodeConfig, ExtractConfig, IndexConfig, PipelineConfig, Workspace

__all__ = ["make_deployments", "serve_deployments"]


def make_deployments(ws: Workspace, watch: Path, *, cron: str | None = None, interval: float | None = None,
                     extract: ExtractConfig | None = None, encode: EncodeConfig | None = None,
                     index: IndexConfig | None = None) -> list[Any]:
    """The three deployments ``regionrank serve`` serves.

    * ``reindex/watched-folder``: reindex of ``watch`` on ``cron`` or every ``interval`` seconds;
    * ``index-images/on-demand``: the whole pipeline, run from the UI or ``prefect deployment run``;
    * ``evaluate/on-demand``: evaluate a checkpoint (parameters given at run time).
    """
    from regionrank.flows.pipeline import index_images_flow, reindex_flow
    from regionrank.flows.train import evaluate_flow

    if (cron is None) == (interval is None):
        raise ValueError("give exactly one schedule for the watched-folder reindex: --cron '*/10 * * * *' or --interval SECONDS")
    cfg = PipelineConfig(images=[watch], workspace=ws, extract=extract or ExtractConfig(), encode=encode or EncodeConfig(),
                         index=index or IndexConfig(), lock_timeout=600.0)
    params = {"cfg": cfg.model_dump(mode="json")}
    schedule: dict[str, Any] = {"cron": cron} if cron else {"interval": interval}
    return [
        reindex_flow.to_deployment(name="watched-folder", parameters=params, tags=["regionrank"], **schedule),
        index_images_flow.to_deployment(name="on-demand", parameters=params, tags=["regionrank"]),
        evaluate_flow.to_deployment(name="on-demand", parameters={"ws": ws.model_dump(mode="json")}, tags=["regionrank"]),
    ]


def serve_deployments(deployments: list[Any], *, limit: int = 1) -> None:
    """Serve deployments in this process until interrupted (at most ``limit`` runs at once)."""
    from prefect import serve

    serve(*deployments, limit=limit)

"""Deployments that ``regionrank serve`` serves: a scheduled reindex of a watched folder, the
on-demand pipeline and evaluation."""

from __future__ import annotations

from typing import Any

from regionrank.flows.config import PipelineConfig

__all__ = ["make_deployments", "serve_deployments"]


def make_deployments(cfg: PipelineConfig, *, cron: str | None = None, interval: float | None = None) -> list[Any]:
    """The three deployments ``regionrank serve`` serves, all run with ``cfg`` (from :func:`settings.resolve_config`).

    * ``reindex/watched-folder``: reindex of ``cfg.images`` on ``cron`` or every ``interval`` seconds;
    * ``index-images/on-demand``: the whole pipeline, run from the UI or ``prefect deployment run``;
    * ``evaluate/on-demand``: evaluate a checkpoint (parameters given at run time).
    """
    from regionrank.flows.pipeline import index_images_flow, reindex_flow
    from regionrank.flows.train import evaluate_flow

    if (cron is None) == (interval is None):
        raise ValueError("give exactly one schedule for the watched-folder reindex: --cron '*/10 * * * *' or --interval SECONDS")
    params = {"cfg": cfg.model_dump(mode="json")}
    schedule: dict[str, Any] = {"cron": cron} if cron else {"interval": interval}
    return [
        reindex_flow.to_deployment(name="watched-folder", parameters=params, tags=["regionrank"], **schedule),
        index_images_flow.to_deployment(name="on-demand", parameters=params, tags=["regionrank"]),
        evaluate_flow.to_deployment(name="on-demand", parameters={"ws": cfg.workspace.model_dump(mode="json")}, tags=["regionrank"]),
    ]


def serve_deployments(deployments: list[Any], *, limit: int = 1) -> None:
    """Serve deployments in this process until interrupted (at most ``limit`` runs at once)."""
    from prefect import serve

    serve(*deployments, limit=limit)

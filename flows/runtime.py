"""The embedded Prefect backend: environment defaults set before Prefect is imported.

Every CLI run uses a workspace folder (``--workspace``, default ``./regionrank-workspace``
or ``$REGIONRANK_WORKSPACE``) holding the stores, the index and, unless the user points
``PREFECT_HOME``/``PREFECT_API_URL`` elsewhere, the Prefect database: runs made from the CLI
show up in ``regionrank serve``'s UI and in ``regionrank status``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

__all__ = ["configure_prefect_env", "fast_flow_settings"]


DEFAULT_WORKSPACE = Path("regionrank-workspace")


def workspace_root(path: Path | None) -> Path:
    """The workspace folder a command works in: ``path``, else ``REGIONRANK_WORKSPACE``, else
    ``./regionrank-workspace`` (what :class:`flows.config.Settings` resolves, without loading pydantic:
    ``regionrank search`` answered by a running service stays fast)."""
    return (path or Path(os.environ.get("REGIONRANK_WORKSPACE") or DEFAULT_WORKSPACE)).expanduser().absolute()


def configure_prefect_env(workspace: Path) -> None:
    """Set offline/embedded defaults; values the user already exported win."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # a busy 2-core machine can need more than the default 20 s on a fresh database
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if "PREFECT_API_URL" not in os.environ:
        home = workspace / "prefect"
        home.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "regionrank.extractors,regionrank.encoders,regionrank.index,regionrank.storage")
    # the same library calls also run outside flows (--no-orchestrator): no warning per log line then
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


@contextlib.contextmanager
def fast_flow_settings() -> Iterator[None]:
    """Disable the flow heartbeat thread (~1 s per flow call; ENVIRONMENT.md §3.2)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield

"""One real Prefect API server per test run (a `prefect server start` process on a free loopback port).

Tests talk to it through PREFECT_API_URL; the flow heartbeat is off. `wait_for` polls
with a deadline instead of sleeping a fixed time.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import pytest


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from regionrank.flows.prefect_server import start_local_server

    home = tmp_path_factory.mktemp("prefect-server-home")
    server = start_local_server(home, timeout=240)
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    old = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url  # for subprocesses started by tests
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield server
    finally:
        if old is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = old
        server.stop()

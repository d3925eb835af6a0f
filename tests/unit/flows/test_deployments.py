"""The deployments `regionrank serve` serves (built, not served: no API needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from regionrank.flows.config import PipelineConfig, Workspace
from regionrank.flows.deployments import make_deployments


def test_three_deployments_run_with_the_resolved_config(tmp_path: Path) -> None:
    cfg = PipelineConfig(images=[tmp_path], workspace=Workspace(root=tmp_path / "ws"), lock_timeout=600.0)
    deps = make_deployments(cfg, interval=30)
    assert [(d.flow_name, d.name) for d in deps] == [("reindex", "watched-folder"), ("index-images", "on-demand"),
                                                     ("evaluate", "on-demand")]
    assert PipelineConfig.model_validate(deps[0].parameters["cfg"]) == cfg
    assert deps[0].schedules and not deps[1].schedules


def test_exactly_one_schedule(tmp_path: Path) -> None:
    cfg = PipelineConfig(images=[tmp_path], workspace=Workspace(root=tmp_path))
    with pytest.raises(ValueError, match="exactly one schedule"):
        make_deployments(cfg)
    with pytest.raises(ValueError, match="exactly one schedule"):
        make_deployments(cfg, cron="* * * * *", interval=5)

"""The progress artifact: throttled updates, never a redundant call, always 100 % at the end."""

from __future__ import annotations

from uuid import uuid4

import pytest

from regionrank.flows import monitoring


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float]]:
    seen: list[tuple[str, float]] = []
    art = uuid4()

    def create(*, progress: float, key: str, description: str):
        seen.append(("create", progress))
        return art

    def update(artifact_id, *, progress: float) -> None:
        assert artifact_id == art
        seen.append(("update", progress))

    monkeypatch.setattr(monitoring, "create_progress_artifact", create)
    monkeypatch.setattr(monitoring, "update_progress_artifact", update)
    return seen


def test_slow_shards_update_the_artifact_as_each_completes(calls: list[tuple[str, float]]) -> None:
    clock = _Clock()
    p = monitoring.Progress("k", 4, "d", min_interval=2.0, clock=clock)
    for _ in range(4):
        clock.t += 30.0  # a realistic shard
        p.advance()
    p.finish()
    assert calls == [("create", 0.0), ("update", 25.0), ("update", 50.0), ("update", 75.0), ("update", 100.0)]


def test_fast_shards_are_folded_into_fewer_updates(calls: list[tuple[str, float]]) -> None:
    clock = _Clock()
    p = monitoring.Progress("k", 10, "d", min_interval=2.0, clock=clock)
    for _ in range(10):
        clock.t += 0.5
        p.advance()
    p.finish()
    updates = [v for kind, v in calls if kind == "update"]
    assert updates == [40.0, 80.0, 100.0]  # at t=2.0 and t=4.0, then the end


def test_finish_alone_reports_completion_once(calls: list[tuple[str, float]]) -> None:
    p = monitoring.Progress("k", 0, "d", clock=_Clock())
    p.finish()
    p.finish()
    assert calls == [("create", 0.0), ("update", 100.0)]

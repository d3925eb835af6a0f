"""What a flow run shows in the Prefect UI: progress, tables and a markdown report.

Thin helpers over ``prefect.artifacts``; keys are kebab-case and stable so the UI
groups artifacts of the same kind across runs.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

__all__ = ["Progress", "failures_table", "markdown_report", "table"]

log = logging.getLogger(__name__)


class Progress:
    """A progress artifact updated as units of work complete (0-100 %).

    Updates are throttled to one API call per ``min_interval`` seconds: a shard that completes
    sooner after the previous update is folded into the next one (or into :meth:`finish`), so
    many small shards do not cost one round trip each, while realistic shards (tens of seconds
    or more) still update the UI as each completes.
    """

    def __init__(self, key: str, total: int, description: str, *, min_interval: float = 2.0,
                 clock: Any = time.monotonic) -> None:
        self.total, self.done = max(int(total), 1), 0
        self.min_interval, self._clock = float(min_interval), clock
        self.id: UUID | None = create_progress_artifact(progress=0.0, key=key, description=description)
        self.shown = 0.0
        self._last = self._clock()

    @property
    def percent(self) -> float:
        return min(100.0, 100.0 * self.done / self.total)

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = self._clock()
        if now - self._last >= self.min_interval:
            self._show(self.percent)
            self._last = now

    def finish(self) -> None:
        self._show(100.0)

    def _show(self, percent: float) -> None:
        if self.id is not None and percent != self.shown:
            update_progress_artifact(self.id, progress=percent)
            self.shown = percent


def table(key: str, rows: Sequence[dict[str, Any]], description: str) -> None:
    """A table artifact (an empty table gets one explanatory row)."""
    create_table_artifact(key=key, table=list(rows) or [{"note": "nothing to report"}], description=description)


def failures_table(key: str, failures: Sequence[dict[str, Any]]) -> None:
    table(key, [{"uri": f.get("uri", ""), "reason": f.get("reason", "")} for f in failures],
          "inputs that could not be processed, with the reason (the run went on without them)")


def markdown_report(key: str, title: str, sections: dict[str, dict[str, Any] | str]) -> str:
    """A markdown report artifact: one heading per section, key/value tables."""
    lines = [f"# {title}", ""]
    for name, body in sections.items():
        lines += [f"## {name}", ""]
        if isinstance(body, str):
            lines += [body, ""]
            continue
        lines += ["| | |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in body.items()]
        lines.append("")
    text = "\n".join(lines)
    create_markdown_artifact(key=key, markdown=text, description=title)
    return text

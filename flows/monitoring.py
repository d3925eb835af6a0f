"""What a flow run shows in the Prefect UI: progress, tables and a markdown report.

Thin helpers over ``prefect.artifacts``; keys are kebab-case and stable so the UI
groups artifacts of the same kind across runs.
"""

from __future__ import annotations

import logging
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
    """A progress artifact updated as units of work complete (0-100 %)."""

    def __init__(self, key: str, total: int, description: str) -> None:
        self.total, self.done = max(int(total), 1), 0
        self.id: UUID | None = create_progress_artifact(progress=0.0, key=key, description=description)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.id is not None:
            update_progress_artifact(self.id, progress=min(100.0, 100.0 * self.done / self.total))

    def finish(self) -> None:
        if self.id is not None:
            update_progress_artifact(self.id, progress=100.0)


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

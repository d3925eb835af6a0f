"""Talking to a workspace's running search service (for ``regionrank search``): find it from the
service file it wrote, check it with ``/healthz``, query it. Standard library only, so the CLI stays
quick when a service answers."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from regionrank.flows.api.service import SERVICE_FILE, TOKEN_ENV

__all__ = ["RunningService", "ServiceError", "find_service", "hits_from_json"]


class ServiceError(RuntimeError):
    """The service answered with an error (the message is its JSON ``error``)."""


@dataclass(frozen=True)
class RunningService:
    """A service that answered ``/healthz``."""

    url: str
    token: str | None = None

    def _get(self, path: str, params: dict[str, Any], timeout: float) -> bytes:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        req = urllib.request.Request(f"{self.url}{path}?{query}" if query else f"{self.url}{path}")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return bytes(r.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", str(exc))
            except ValueError:
                message = str(exc)
            raise ServiceError(f"the search service at {self.url} answered {exc.code}: {message}") from exc

    def search(self, text: str, *, k: int = 10, rerank_k: int | None = None, fusion: str | None = None,
               timeout: float = 60.0) -> dict[str, Any]:
        """``GET /search``: ``{"query", "index_version", "hits": [...]}``."""
        return dict(json.loads(self._get("/search", {"q": text, "k": k, "rerank_k": rerank_k, "fusion": fusion}, timeout)))

    def explain(self, image_id: str, text: str, out: Path, *, timeout: float = 60.0) -> Path:
        """``GET /images/{id}/explain``: write the per-word heatmap PNG to ``out``."""
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(self._get(f"/images/{urllib.parse.quote(image_id)}/explain", {"q": text}, timeout))
        return out


def find_service(ws_root: Path, *, timeout: float = 1.0) -> tuple[RunningService | None, str]:
    """The workspace's running service, or ``None`` and why not.

    The service writes ``WORKSPACE/api.json`` when it starts; the service it names must answer
    ``/healthz`` within ``timeout`` seconds. The token comes from ``$REGIONRANK_API_TOKEN``.
    """
    path = ws_root / SERVICE_FILE
    try:
        meta = json.loads(path.read_text())
        url = str(meta["url"])
    except FileNotFoundError:
        return None, f"no running search service in this workspace (no {path.name})"
    except (ValueError, KeyError, TypeError):
        return None, f"{path} is not a service file"
    svc = RunningService(url.rstrip("/"), os.environ.get(TOKEN_ENV) or None)
    try:
        health = json.loads(svc._get("/healthz", {}, timeout))
    except (OSError, ServiceError, ValueError) as exc:
        return None, f"the search service named in {path} ({url}) does not answer ({exc})"
    if health.get("status") != "ok":
        return None, f"the search service at {url} is not healthy: {health}"
    return svc, f"the search service at {url}"


def hits_from_json(hits: list[dict[str, Any]]) -> tuple[list[Any], dict[str, list[str]]]:
    """The service's hits as light objects with the attributes of :class:`regionrank.index.SearchHit` the
    CLI prints (``image_id``, ``uri``, ``score``, ``stage_scores``, ``explanation`` of ``token``/``region``/
    ``box``/``weight``/``similarity``), and the region labels they name (``image_id -> labels by region
    index``). Not the dataclasses themselves: importing the index package would double the CLI's time."""
    out, labels = [], {}
    for h in hits:
        expl = [SimpleNamespace(token=e["word"], region=int(e["region"]), box=tuple(e["box"]) if e["box"] else None,
                                weight=float(e["weight"] or 0.0), similarity=float(e["similarity"] or 0.0))
                for e in h["explanation"]]
        names = ["region"] * (max((e.region for e in expl), default=-1) + 1)
        for e, raw in zip(expl, h["explanation"], strict=True):
            if e.region >= 0 and raw.get("label"):
                names[e.region] = raw["label"]
        labels[h["image_id"]] = names
        out.append(SimpleNamespace(image_id=h["image_id"], uri=h["uri"], score=float(h["score"] or 0.0),
                                   stage_scores={k: v for k, v in h["stage_scores"].items() if v is not None},
                                   explanation=expl, width=int(h.get("width") or 0), height=int(h.get("height") or 0)))
    return out, labels

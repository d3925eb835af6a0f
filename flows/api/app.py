"""The search service's HTTP interface (FastAPI): routes, limits, the API token, JSON errors, metrics.

Every error is a JSON object ``{"error": message}`` (plus ``"limit"`` naming the limit a request went
over); a failure inside a route is logged with its traceback and answered with a 500 that carries none.
Images are looked up by id in the index version that answers; no path is ever taken from a request.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, get_args

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from regionrank.flows.api.engine import EngineBusyError, EngineNotReadyError, SearchEngine
from regionrank.flows.api.metrics import ServiceMetrics
from regionrank.flows.config import SearchConfig
from regionrank.index.search.params import SearchParams
from regionrank.index.search.params import Fusion

__all__ = ["ApiLimits", "ApiSettings", "LimitError", "create_app"]

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent / "web"
FUSIONS: tuple[str, ...] = get_args(Fusion)  # the library's fusions, not a copy


@dataclass(frozen=True)
class ApiLimits:
    """Per-request limits; a request over one gets a 400 naming it."""

    max_query_chars: int = 256
    max_k: int = 100
    max_rerank_k: int = 1024
    max_batch: int = 32
    max_thumbnail: int = 1024


@dataclass(frozen=True)
class ApiSettings:
    """How the service answers: token, CORS origins, limits, default search options, Prefect UI link."""

    token: str | None = None
    cors_origins: tuple[str, ...] = ()
    limits: ApiLimits = field(default_factory=ApiLimits)
    search: SearchConfig = field(default_factory=SearchConfig)
    prefect_ui_url: str | None = None
    prefect_api_url: str | None = None


class LimitError(ValueError):
    """A request parameter over a service limit."""

    def __init__(self, name: str, value: Any, maximum: int) -> None:
        super().__init__(f"{name}={value} is over the limit: {name} must be at most {maximum}")
        self.name = name


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _check_query(q: str, limits: ApiLimits) -> str:
    text = q.strip()
    if not text:
        raise ValueError("the query is empty: pass q=some words")
    if len(text) > limits.max_query_chars:
        raise LimitError("query length", len(text), limits.max_query_chars)
    return text


def _check_options(k: int, rerank_k: int | None, fusion: str | None, limits: ApiLimits) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1; got {k}")
    if k > limits.max_k:
        raise LimitError("k", k, limits.max_k)
    if rerank_k is not None and rerank_k < 0:
        raise ValueError(f"rerank_k must be >= 0; got {rerank_k}")
    if rerank_k is not None and rerank_k > limits.max_rerank_k:
        raise LimitError("rerank_k", rerank_k, limits.max_rerank_k)
    if fusion is not None and fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}; got {fusion!r}")


def _token_ok(request: Request, token: str) -> bool:
    auth = request.headers.get("authorization", "")
    given = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-regionrank-token")
    given = given or request.query_params.get("token") or ""  # the page's <img> tags cannot send headers
    return hmac.compare_digest(given.encode(), token.encode())


def create_app(engine: SearchEngine, settings: ApiSettings | None = None, *,
               on_shutdown: Callable[[], None] | None = None) -> FastAPI:
    """The FastAPI application over a started (or starting) :class:`SearchEngine`.

    ``on_shutdown`` runs when the server shuts down gracefully (uvicorn re-raises SIGTERM/SIGINT after
    that, so code after ``Server.run`` never runs on a signal).
    """
    from regionrank.flows.api.backend import search_options

    settings = settings or ApiSettings()
    limits = settings.limits
    metrics = ServiceMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if on_shutdown is not None:
            on_shutdown()

    app = FastAPI(title="regionrank", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.engine, app.state.settings, app.state.metrics = engine, settings, metrics
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type", "x-regionrank-token"])

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        t0 = time.perf_counter()
        if settings.token is not None and not _token_ok(request, settings.token):
            response: Response = _error(401, "missing or wrong API token: send 'Authorization: Bearer TOKEN'")
        else:
            try:
                response = await call_next(request)
            except Exception:
                log.exception("request %s %s failed", request.method, request.url.path)
                response = _error(500, "internal error while answering this request (the service log has the details)")
        route = getattr(request.scope.get("route"), "path", None) or "unmatched"
        metrics.observe(route, request.method, response.status_code, time.perf_counter() - t0)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = ["{} {}: {}".format(e["loc"][0], ".".join(str(x) for x in e["loc"][1:]) or "", e["msg"]) for e in exc.errors()]
        return _error(422, "invalid request: " + "; ".join(parts))

    @app.exception_handler(LimitError)
    async def limit_error(request: Request, exc: LimitError) -> JSONResponse:
        return _error(400, str(exc), limit=exc.name)

    @app.exception_handler(ValueError)
    async def value_error(request: Request, exc: ValueError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(EngineNotReadyError)
    async def not_ready(request: Request, exc: EngineNotReadyError) -> JSONResponse:
        return _error(503, f"not ready: {exc}")

    @app.exception_handler(EngineBusyError)
    async def busy(request: Request, exc: EngineBusyError) -> JSONResponse:
        return JSONResponse({"error": f"busy: {exc}"}, status_code=503, headers={"Retry-After": "1"})

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((WEB_DIR / "index.html").read_text(encoding="utf-8"))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        st = engine.state
        body = {"ready": st.ready, "index_version": st.version, "images": st.n_images, "error": st.load_error}
        return JSONResponse(body, status_code=200 if st.ready else 503)

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        st = engine.state
        text = metrics.render({
            "regionrank_index_version": ("The index version queries are answered from.", st.version),
            "regionrank_index_images": ("Images in that index version.", st.n_images if st.ready else None),
            "regionrank_index_switches_total": ("Index versions switched to since the start.", st.switches),
            "regionrank_index_switch_seconds": ("Time to open and warm the last version switched to.", st.last_switch_s),
            "regionrank_queries_inflight": ("Queries running now.", st.inflight),
            "regionrank_queries_queued": ("Queries waiting for a worker.", st.queued),
            "regionrank_index_versions_draining": ("Old versions still answering queries begun before a switch.", st.retired_open),
        })
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.get("/info")
    def info() -> dict[str, Any]:
        st = engine.state
        return {"index_version": st.version, "images": st.n_images, "ready": st.ready, "pid": os.getpid(),
                "prefect_ui": settings.prefect_ui_url, "prefect_run": _latest_run_url(settings, st.version),
                "limits": limits.__dict__, "defaults": settings.search.model_dump()}

    @app.get("/search")
    async def search_get(q: str, k: int = SearchParams.k, rerank_k: int | None = None, fusion: str | None = None) -> dict[str, Any]:
        text = _check_query(q, limits)
        _check_options(k, rerank_k, fusion, limits)
        cfg = search_options(rerank_k, fusion, settings.search)
        version, hits = await engine.run(lambda v: (v.version, v.search(text, k, cfg)))
        return {"query": text, "index_version": version, "hits": hits}

    @app.post("/search")
    async def search_post(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError as exc:
            raise ValueError(f"the body must be JSON: {{\"queries\": [...], \"k\": 10}} ({exc})") from exc
        if not isinstance(body, dict) or not isinstance(body.get("queries"), list):
            raise ValueError('the body must be a JSON object with "queries": a list of strings')
        queries = body["queries"]
        if len(queries) > limits.max_batch:
            raise LimitError("batch size", len(queries), limits.max_batch)
        if not all(isinstance(q, str) for q in queries):
            raise ValueError('"queries" must hold strings only')
        k, rerank_k, fusion = body.get("k", SearchParams.k), body.get("rerank_k"), body.get("fusion")
        if not isinstance(k, int) or not (rerank_k is None or isinstance(rerank_k, int)):
            raise ValueError('"k" and "rerank_k" must be integers')
        texts = [_check_query(q, limits) for q in queries]
        _check_options(k, rerank_k, fusion, limits)
        cfg = search_options(rerank_k, fusion, settings.search)
        # one lease for the whole batch: every query of it is answered by the same index version
        version, results = await engine.run(lambda v: (v.version, [v.search(t, k, cfg) for t in texts]))
        return {"index_version": version,
                "results": [{"query": t, "index_version": version, "hits": h} for t, h in zip(texts, results, strict=True)]}

    @app.get("/images/{image_id}")
    async def image(image_id: str, size: int | None = None) -> Response:
        if size is not None and not 16 <= size <= limits.max_thumbnail:
            raise LimitError("size", size, limits.max_thumbnail) if size > limits.max_thumbnail else ValueError(
                f"size must be at least 16; got {size}")
        found = await engine.run(lambda v: v.image(image_id))
        path = found.local_path if found is not None else None
        if path is None:
            return _error(404, f"no indexed image {image_id!r} with a file the service can read")
        if size is None:
            return FileResponse(path)
        data = await engine.run(lambda v: _thumbnail(path, size))
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/images/{image_id}/explain")
    async def explain(image_id: str, q: str) -> Response:
        text = _check_query(q, limits)

        def render(v: Any) -> bytes | None:
            try:
                return v.explain_png(image_id, text)
            except (KeyError, FileNotFoundError):
                return None

        data = await engine.run(render)
        if data is None:
            return _error(404, f"no indexed image {image_id!r} with a file the service can read")
        return Response(data, media_type="image/png")

    @app.get("/images/{image_id}/captions")
    async def captions(image_id: str, k: int = SearchParams.k) -> dict[str, Any]:
        _check_options(k, None, None, limits)

        def find(v: Any) -> tuple[int, list[dict[str, Any]] | str]:
            try:
                return v.version, v.captions(image_id, k)
            except KeyError:
                return v.version, f"no indexed image {image_id!r}"
            except ValueError as exc:  # no caption index: nothing to find here
                return v.version, str(exc)

        version, hits = await engine.run(find)
        if isinstance(hits, str):
            raise StarletteHTTPException(404, hits)
        return {"image_id": image_id, "index_version": version, "captions": hits}

    return app


def _thumbnail(path: Path, size: int) -> bytes:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


_RUN_URLS: dict[tuple[str, int | None], str | None] = {}


def _latest_run_url(settings: ApiSettings, version: int | None) -> str | None:
    """The Prefect UI page of the latest index-images/reindex run (best effort, once per index version)."""
    if not settings.prefect_ui_url or not settings.prefect_api_url:
        return None
    key = (settings.prefect_api_url, version)
    if key not in _RUN_URLS:
        import httpx

        try:
            r = httpx.post(f"{settings.prefect_api_url}/flow_runs/filter", timeout=2.0, json={
                "sort": "START_TIME_DESC", "limit": 1, "flows": {"name": {"any_": ["reindex", "index-images"]}}})
            runs = r.json() if r.status_code == 200 else []
            _RUN_URLS[key] = f"{settings.prefect_ui_url}/runs/flow-run/{runs[0]['id']}" if runs else None
        except (httpx.HTTPError, ValueError, KeyError):
            _RUN_URLS[key] = None
    return _RUN_URLS[key]

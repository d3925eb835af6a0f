"""The search service's HTTP interface (FastAPI TestClient) and its engine, over fake index versions:
every route, status code and limit; the token; CORS; JSON errors; hot version switches."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from regionrank.flows.api.app import ApiLimits, ApiSettings, create_app
from regionrank.flows.api.backend import ImageInfo
from regionrank.flows.api.engine import SearchEngine

IMAGE_ID = "a" * 64


class FakeVersion:
    """An opened index version: one image, hits that name the version, optional captions."""

    def __init__(self, version: int, image: Path, *, captions: bool = False) -> None:
        self.version, self.n_images, self.image_path, self.has_captions = version, 1, image, captions
        self.closed = False
        self.searched: list[tuple[str, int, Any]] = []
        self.gate: threading.Event | None = None

    def warm_up(self) -> None:
        self.search("warm", 1, None)

    def close(self) -> None:
        self.closed = True

    def search(self, text: str, k: int, cfg: Any) -> list[dict[str, Any]]:
        assert not self.closed, "a closed version answered a query"
        if self.gate is not None:
            self.gate.wait(timeout=30)
        if text == "explode":
            raise RuntimeError("secret internal detail")
        self.searched.append((text, k, cfg))
        return [{"image_id": IMAGE_ID, "uri": str(self.image_path), "score": 0.5, "stage_scores": {"mrsw": 0.5},
                 "width": 64, "height": 48, "version": self.version,
                 "explanation": [{"word": text, "region": 0, "box": [1, 2, 30, 40], "label": "cat", "weight": 0.7,
                                  "similarity": 0.9}]}][:k]

    def image(self, image_id: str) -> ImageInfo | None:
        return ImageInfo(IMAGE_ID, str(self.image_path), 64, 48, ("cat",)) if image_id == IMAGE_ID else None

    def explain_png(self, image_id: str, text: str) -> bytes:
        if image_id != IMAGE_ID:
            raise KeyError(image_id)
        return b"\x89PNG fake"

    def captions(self, image_id: str, k: int) -> list[dict[str, Any]]:
        if not self.has_captions:
            raise ValueError("this workspace has no caption index")
        if image_id != IMAGE_ID:
            raise KeyError(image_id)
        return [{"caption_id": "c1", "image_id": IMAGE_ID, "text": "a cat", "score": 1.0, "stage_scores": {}}]


class Versions:
    """The fake workspace: a CURRENT pointer and the versions opened so far."""

    def __init__(self, image: Path, captions: bool = False) -> None:
        self.pointer, self.image, self.captions = "v000001", image, captions
        self.opened: list[FakeVersion] = []

    def open(self) -> FakeVersion:
        v = FakeVersion(int(self.pointer[1:]), self.image, captions=self.captions)
        self.opened.append(v)
        return v


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(path)
    return path


def make(photo: Path, *, ready: bool = True, captions: bool = False, workers: int = 2, queue_limit: int = 8,
         **settings: Any) -> tuple[TestClient, SearchEngine, Versions]:
    versions = Versions(photo, captions)
    engine = SearchEngine(versions.open, lambda: versions.pointer, workers=workers, queue_limit=queue_limit)
    if ready:
        engine.refresh()
    return TestClient(create_app(engine, ApiSettings(**settings))), engine, versions


@pytest.fixture
def api(photo: Path) -> Iterator[tuple[TestClient, SearchEngine, Versions]]:
    client, engine, versions = make(photo, captions=True)
    yield client, engine, versions
    engine.stop()


def test_health_ready_and_the_page(api: Any) -> None:
    client, _, _ = api
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["index_version"] == 1 and r.json()["images"] == 1
    page = client.get("/")
    assert page.status_code == 200 and 'id="q"' in page.text and "<script" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: the page works offline
    assert client.get("/info").json()["index_version"] == 1


def test_not_ready_answers_503_with_json(photo: Path) -> None:
    client, engine, _ = make(photo, ready=False)
    try:
        assert client.get("/healthz").status_code == 200
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False
        r = client.get("/search", params={"q": "a cat"})
        assert r.status_code == 503 and r.json()["error"].startswith("not ready")
    finally:
        engine.stop()


def test_search_returns_hits_and_the_version(api: Any) -> None:
    client, _, versions = api
    r = client.get("/search", params={"q": " a cat ", "k": 3, "rerank_k": 64, "fusion": "scan"})
    assert r.status_code == 200
    body = r.json()
    assert body["query"] == "a cat" and body["index_version"] == 1
    (hit,) = body["hits"]
    assert set(hit) >= {"image_id", "uri", "score", "stage_scores", "explanation"}
    assert set(hit["explanation"][0]) >= {"word", "region", "box", "label", "weight"}
    text, k, cfg = versions.opened[0].searched[-1]
    assert (text, k, cfg.params.rerank_k, cfg.params.fusion) == ("a cat", 3, 64, "scan")


def test_batch_search_answers_every_query_from_one_version(api: Any) -> None:
    client, _, _ = api
    r = client.post("/search", json={"queries": ["a cat", "a dog"], "k": 1})
    assert r.status_code == 200
    body = r.json()
    assert body["index_version"] == 1 and [x["query"] for x in body["results"]] == ["a cat", "a dog"]
    assert all(len(x["hits"]) == 1 for x in body["results"])


@pytest.mark.parametrize(("params", "limit"), [
    ({"q": "x" * 257}, "query length"), ({"q": "a cat", "k": 101}, "k"), ({"q": "a cat", "rerank_k": 1025}, "rerank_k"),
])
def test_limits_are_400_naming_the_limit(api: Any, params: dict[str, Any], limit: str) -> None:
    client, _, _ = api
    r = client.get("/search", params=params)
    assert r.status_code == 400
    assert r.json()["limit"] == limit and "at most" in r.json()["error"]


def test_batch_and_thumbnail_limits(photo: Path) -> None:
    client, engine, _ = make(photo, limits=ApiLimits(max_batch=2, max_thumbnail=100))
    try:
        r = client.post("/search", json={"queries": ["a", "b", "c"]})
        assert r.status_code == 400 and r.json()["limit"] == "batch size"
        r = client.get(f"/images/{IMAGE_ID}", params={"size": 101})
        assert r.status_code == 400 and r.json()["limit"] == "size"
        assert client.get(f"/images/{IMAGE_ID}", params={"size": 8}).status_code == 400
    finally:
        engine.stop()


@pytest.mark.parametrize(("method", "url", "kwargs", "status"), [
    ("get", "/search", {"params": {"q": "   "}}, 400),
    ("get", "/search", {"params": {"q": "a", "k": 0}}, 400),
    ("get", "/search", {"params": {"q": "a", "rerank_k": -1}}, 400),
    ("get", "/search", {"params": {"q": "a", "fusion": "magic"}}, 400),
    ("get", "/search", {"params": {"q": "a", "k": "ten"}}, 422),
    ("get", "/search", {}, 422),
    ("post", "/search", {"content": b"not json"}, 400),
    ("post", "/search", {"json": {"query": "a"}}, 400),
    ("post", "/search", {"json": {"queries": [1, 2]}}, 400),
    ("post", "/search", {"json": {"queries": ["a"], "k": "x"}}, 400),
    ("get", "/nowhere", {}, 404),
    ("delete", "/search", {}, 405),
])
def test_bad_requests_are_json_errors(api: Any, method: str, url: str, kwargs: dict[str, Any], status: int) -> None:
    client, _, _ = api
    r = getattr(client, method)(url, **kwargs)
    assert r.status_code == status
    assert isinstance(r.json()["error"], str) and r.json()["error"]


def test_an_internal_failure_is_a_500_without_traceback(api: Any) -> None:
    client, _, _ = api
    r = client.get("/search", params={"q": "explode"})
    assert r.status_code == 500
    assert "Traceback" not in r.text and "secret internal detail" not in r.text
    assert r.json()["error"].startswith("internal error")


def test_images_thumbnails_and_heatmaps(api: Any, photo: Path) -> None:
    client, _, _ = api
    r = client.get(f"/images/{IMAGE_ID}")
    assert r.status_code == 200 and r.content == photo.read_bytes()
    r = client.get(f"/images/{IMAGE_ID}", params={"size": 32})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    import io

    assert max(Image.open(io.BytesIO(r.content)).size) == 32
    r = client.get(f"/images/{IMAGE_ID}/explain", params={"q": "a cat"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert client.get(f"/images/{'b' * 64}/explain", params={"q": "a cat"}).status_code == 404
    assert client.get(f"/images/{IMAGE_ID}/explain").status_code == 422


@pytest.mark.parametrize("image_id", ["b" * 64, "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "photo.png"])
def test_only_indexed_images_are_served(api: Any, image_id: str) -> None:
    client, _, _ = api
    r = client.get(f"/images/{image_id}")
    assert r.status_code == 404
    assert "root:" not in r.text and r.json()["error"]


def test_image_to_text_needs_a_caption_index(api: Any, photo: Path) -> None:
    client, _, _ = api
    r = client.get(f"/images/{IMAGE_ID}/captions", params={"k": 5})
    assert r.status_code == 200 and r.json()["captions"][0]["text"] == "a cat"
    assert client.get(f"/images/{'b' * 64}/captions").status_code == 404
    plain, engine, _ = make(photo, captions=False)
    try:
        r = plain.get(f"/images/{IMAGE_ID}/captions")
        assert r.status_code == 404 and "no caption index" in r.json()["error"]
    finally:
        engine.stop()


def test_the_token_is_checked_on_every_request(photo: Path) -> None:
    client, engine, _ = make(photo, token="s3cret")
    try:
        for url in ("/healthz", "/readyz", "/metrics", "/", "/search?q=a", f"/images/{IMAGE_ID}"):
            assert client.get(url).status_code == 401, url
            assert client.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401, url
            assert "error" in client.get(url).json()
        assert client.get("/search?q=a", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/search?q=a", headers={"X-RegionRank-Token": "s3cret"}).status_code == 200
        assert client.get(f"/images/{IMAGE_ID}?token=s3cret").status_code == 200  # the page's <img> tags
    finally:
        engine.stop()


def test_no_cors_unless_asked(photo: Path) -> None:
    origin = {"Origin": "http://elsewhere.example"}
    client, engine, _ = make(photo)
    try:
        assert "access-control-allow-origin" not in client.get("/search?q=a", headers=origin).headers
    finally:
        engine.stop()
    client, engine, _ = make(photo, cors_origins=("http://elsewhere.example",))
    try:
        r = client.get("/search?q=a", headers=origin)
        assert r.headers["access-control-allow-origin"] == "http://elsewhere.example"
    finally:
        engine.stop()


def test_metrics_in_prometheus_text_format(api: Any) -> None:
    client, _, _ = api
    client.get("/search", params={"q": "a cat"})
    client.get("/search", params={"q": "a cat", "k": 1000})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'regionrank_api_requests_total{route="/search",method="GET",status="200"} 1' in text
    assert 'regionrank_api_requests_total{route="/search",method="GET",status="400"} 1' in text
    assert "# TYPE regionrank_api_request_seconds histogram" in text
    assert 'regionrank_api_request_seconds_bucket{route="/search",le="+Inf"} 2' in text
    assert "regionrank_index_version 1" in text and "regionrank_index_images 1" in text


def test_hot_switch_in_flight_queries_finish_on_their_version(api: Any) -> None:
    client, engine, versions = api
    v1 = versions.opened[0]
    v1.gate = threading.Event()
    results: list[Any] = []
    t = threading.Thread(target=lambda: results.append(client.get("/search", params={"q": "slow"}).json()))
    t.start()
    deadline = time.monotonic() + 30
    while engine.state.inflight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    versions.pointer = "v000002"
    assert engine.refresh() is True and engine.refresh() is False
    assert client.get("/search", params={"q": "fast"}).json()["index_version"] == 2  # new queries: new version
    assert not v1.closed and engine.state.retired_open == 1  # the old one still answers the slow query
    v1.gate.set()
    t.join(timeout=30)
    assert results[0]["index_version"] == 1
    assert v1.closed and engine.state.retired_open == 0  # and is closed once it has
    assert engine.state.switches == 1 and engine.state.last_switch_s is not None
    assert client.get("/readyz").json()["index_version"] == 2


def test_no_query_fails_across_many_switches(api: Any) -> None:
    client, engine, versions = api
    errors: list[int] = []
    seen: set[int] = set()
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            r = client.get("/search", params={"q": "a cat"})
            if r.status_code != 200:
                errors.append(r.status_code)
            else:
                seen.add(r.json()["index_version"])

    threads = [threading.Thread(target=load) for _ in range(4)]
    for th in threads:
        th.start()
    for n in range(2, 12):
        versions.pointer = f"v{n:06d}"
        engine.refresh()
    deadline = time.monotonic() + 30  # the load keeps going until a query has been answered by the last version
    while 11 not in seen and not errors and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    for th in threads:
        th.join(timeout=30)
    assert errors == []
    assert max(seen) == 11
    assert all(v.closed for v in versions.opened[:-1]) and not versions.opened[-1].closed


def test_a_full_queue_answers_503_busy(photo: Path) -> None:
    client, engine, versions = make(photo, workers=1, queue_limit=0)
    gate = versions.opened[0].gate = threading.Event()
    try:
        t = threading.Thread(target=lambda: client.get("/search", params={"q": "slow"}))
        t.start()
        import time

        deadline = time.monotonic() + 30
        while engine.state.inflight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        r = client.get("/search", params={"q": "another"})
        assert r.status_code == 503 and r.json()["error"].startswith("busy") and r.headers["retry-after"] == "1"
    finally:
        gate.set()
        t.join(timeout=30)
        engine.stop()


def test_binding_beyond_loopback_needs_a_token(tmp_path: Path) -> None:
    from regionrank.flows.api.service import is_loopback, run_api
    from regionrank.flows.config import Workspace

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    with pytest.raises(ValueError, match="--token"):
        run_api(Workspace(root=tmp_path), host="0.0.0.0", port=0)
    with pytest.raises(ValueError, match="no index is published"):
        run_api(Workspace(root=tmp_path), port=0)


def test_the_client_finds_no_service_and_says_why(tmp_path: Path) -> None:
    import json

    from regionrank.flows.api.client import find_service

    svc, why = find_service(tmp_path)
    assert svc is None and "no running search service" in why
    (tmp_path / "api.json").write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": 1}))
    svc, why = find_service(tmp_path, timeout=0.5)
    assert svc is None and "does not answer" in why


def test_hits_from_json_keep_what_the_cli_prints() -> None:
    from regionrank.flows.api.client import hits_from_json

    hits, labels = hits_from_json([{"image_id": IMAGE_ID, "uri": "/x/cat.jpg", "score": 0.5,
                                    "stage_scores": {"mrsw": 0.5, "scan": None}, "width": 4, "height": 3,
                                    "explanation": [{"word": "cat", "region": 2, "box": [0, 0, 1, 1], "label": "cat",
                                                     "weight": 0.7, "similarity": 0.9}]}])
    (h,) = hits
    assert (h.image_id, h.score, h.stage_scores, h.explanation[0].token, h.explanation[0].region) == (
        IMAGE_ID, 0.5, {"mrsw": 0.5}, "cat", 2)
    assert labels[IMAGE_ID][2] == "cat"


def test_cli_search_says_it_searched_in_process(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from regionrank.flows.cli import app

    res = CliRunner().invoke(app, ["search", "a cat", "-w", str(tmp_path / "nothing")])
    assert res.exit_code == 2
    assert "in-process search: no running search service" in res.output


def test_the_service_modules_import_no_prefect_torch_or_faiss() -> None:
    """The CLI's client path loads none of the heavy libraries; the service's own modules load no prefect,
    torch or transformers (faiss comes with ``regionrank.index``'s ``SearchParams``: the service searches)."""
    import subprocess
    import sys

    probe = "import sys\nimport {mods}\nprint(sorted(m for m in {heavy!r} if m in sys.modules))"
    client = probe.format(mods="regionrank.flows.api.service, regionrank.flows.api.client",
                          heavy=("prefect", "torch", "faiss", "transformers"))
    service = probe.format(mods="regionrank.flows.api.app, regionrank.flows.api.backend, regionrank.flows.api.engine, "
                                "regionrank.flows.api.metrics", heavy=("prefect", "torch", "transformers"))
    for code in (client, service):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "[]", code


def test_info_links_the_latest_indexing_run_in_the_prefect_ui(photo: Path) -> None:
    """A real HTTP stand-in for the Prefect API on 127.0.0.1: the page's link is the newest index/reindex
    run's page in the UI; with the API down there is no run link, and /info still answers."""
    import http.server
    import json as jsonlib
    import threading

    asked: list[dict[str, Any]] = []

    class PrefectApi(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
            asked.append({"path": self.path, "body": jsonlib.loads(self.rfile.read(int(self.headers["Content-Length"])))})
            body = jsonlib.dumps([{"id": "run-123", "name": "tidy-otter"}]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PrefectApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    api_url = f"http://127.0.0.1:{server.server_address[1]}/api"
    try:
        client, engine, _ = make(photo, prefect_ui_url="http://127.0.0.1:4200", prefect_api_url=api_url)
        try:
            info = client.get("/info").json()
            assert info["prefect_run"] == "http://127.0.0.1:4200/runs/flow-run/run-123"
            assert asked and asked[0]["path"] == "/api/flow_runs/filter"
            assert set(asked[0]["body"]["flows"]["name"]["any_"]) == {"reindex", "index-images"}
            client.get("/info")
            assert len(asked) == 1  # asked once per index version
        finally:
            engine.stop()
    finally:
        server.shutdown()
        server.server_close()
    client, engine, _ = make(photo, prefect_ui_url="http://127.0.0.1:4200", prefect_api_url=api_url + "-down")
    try:  # the stand-in is gone: no run link, the UI link stays
        info = client.get("/info").json()
        assert info["prefect_run"] is None and info["prefect_ui"] == "http://127.0.0.1:4200"
    finally:
        engine.stop()

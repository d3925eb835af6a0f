"""`regionrank api` for real: a process over a workspace of the sample photos (demo detector, label-grounded
encoder, built with --no-orchestrator), its web page driven in headless Chromium, `regionrank search`
through it, and a `reindex` whose new index version the service switches to while queries keep coming."""

from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from pipeline_testdata import stop_process_group, wait_for

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ROOT / "examples" / "photos"
CLI = [sys.executable, "-m", "regionrank.flows.cli"]

pytestmark = pytest.mark.slow


def _get(url: str, timeout: float = 60.0) -> tuple[int, bytes]:
    """(status, body); status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError as exc:
        return 0, str(exc).encode()


def _json(url: str) -> Any:
    status, body = _get(url)
    assert status == 200, (url, status, body[:500])
    return json.loads(body)


def _index(ws: Path, images: Path, *, incremental: bool) -> None:
    cmd = [*CLI, "reindex" if incremental else "index", str(images), "-w", str(ws), "--no-orchestrator", "--device", "cpu"]
    if not incremental:
        cmd += ["--detector", "ssd-mobilenet-coco", "--encoder", "grounded"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    pytest.importorskip("cv2", reason="the demo extra (opencv + pretrained SSD) is not installed")
    tmp = tmp_path_factory.mktemp("api")
    batches = {name: tmp / name for name in ("batch1", "batch2")}
    for name, photos in (("batch1", ("astronaut", "camera", "chelsea")), ("batch2", ("coffee", "grace_hopper", "rocket"))):
        batches[name].mkdir()
        for p in photos:
            shutil.copy(PHOTOS / f"{p}.jpg", batches[name])
    ws = tmp / "ws"
    _index(ws, batches["batch1"], incremental=False)
    log = open(tmp / "api.log", "wb")
    proc = subprocess.Popen([*CLI, "api", "-w", str(ws), "--port", "0", "--poll", "0.2"], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        meta = wait_for(lambda: (ws / "api.json").is_file() and json.loads((ws / "api.json").read_text()), timeout=240,
                        what="the service file")
        url = meta["url"]
        wait_for(lambda: proc.poll() is not None or _get(f"{url}/readyz", 5)[0] == 200, timeout=240, what="/readyz")
        assert proc.poll() is None, (tmp / "api.log").read_text()[-3000:]
        yield {"ws": ws, "url": url, "proc": proc, "batch2": batches["batch2"], "log": tmp / "api.log"}
    finally:
        stop_process_group(proc)
        log.close()
    assert not (ws / "api.json").exists(), "the service left its file behind"


def test_the_page_in_a_real_browser(service: dict[str, Any], tmp_path: Path) -> None:
    from cdp import ChromiumPage, chromium_path

    if chromium_path() is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    import numpy as np
    from PIL import Image

    with ChromiumPage() as page:
        page.open(service["url"] + "/")
        page.wait("document.getElementById('version').textContent.includes('index version 1')")
        page.type_text("#q", "a cat")
        page.press_enter()
        page.wait("document.querySelectorAll('.hit').length > 0")
        first = page.evaluate("document.querySelector('.hit .meta').textContent")
        assert "chelsea.jpg" in first
        boxes = page.evaluate("Array.from(document.querySelectorAll('.hit')[0].querySelectorAll('.box span')).map(b => b.textContent)")
        assert any(b.startswith("cat: cat") for b in boxes), boxes  # the word "cat" drawn on the cat region, with its label
        assert "from index version 1" in page.evaluate("document.getElementById('status').textContent")
        page.wait("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        shot = page.screenshot(Path(os.environ.get("REGIONRANK_API_SCREENSHOT") or tmp_path / "api-page.png"))
    im = np.asarray(Image.open(shot).convert("L"))
    assert len(np.unique(im)) > 50  # a rendered page with photos, not a blank frame


def test_search_cli_and_a_hot_reindex(service: dict[str, Any]) -> None:
    url, ws = service["url"], service["ws"]
    res = _json(f"{url}/search?q=a+cat&k=3")
    assert res["index_version"] == 1 and Path(res["hits"][0]["uri"]).name == "chelsea.jpg"
    cat = res["hits"][0]
    assert any(e["word"] == "cat" and e["label"] == "cat" for e in cat["explanation"])
    status, thumb = _get(f"{url}/images/{cat['image_id']}?size=64")
    assert status == 200 and thumb[:2] == b"\xff\xd8"
    status, png = _get(f"{url}/images/{cat['image_id']}/explain?q=a+cat")
    assert status == 200 and png[:4] == b"\x89PNG"

    cli = subprocess.run([*CLI, "search", "a cat", "-k", "2", "-w", str(ws)], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "answered by the search service" in cli.stderr and "chelsea.jpg" in cli.stdout

    errors: list[Any] = []
    versions: list[int] = []
    stop = threading.Event()

    def keep_querying() -> None:
        while not stop.is_set():
            status, body = _get(f"{url}/search?q=a+cup+of+coffee&k=1")
            if status != 200:
                errors.append((status, body[:300]))
            else:
                versions.append(json.loads(body)["index_version"])

    query_thread = threading.Thread(target=keep_querying)
    query_thread.start()
    try:
        _index(ws, service["batch2"], incremental=True)
        wait_for(lambda: _json(f"{url}/readyz")["index_version"] == 2, timeout=120, what="the service on version 2")
        wait_for(lambda: versions and versions[-1] == 2, timeout=120, what="a query answered by version 2")
    finally:
        stop.set()
        query_thread.join(timeout=120)
    assert errors == [], errors
    assert versions[0] == 1 and versions[-1] == 2 and versions == sorted(versions)
    res = _json(f"{url}/search?q=" + urllib.parse.quote("a cup of coffee") + "&k=1")
    assert res["index_version"] == 2 and Path(res["hits"][0]["uri"]).name == "coffee.jpg"
    metrics = _get(f"{url}/metrics")[1].decode()
    assert "regionrank_index_version 2" in metrics and "regionrank_index_switches_total 1" in metrics
    assert "regionrank_index_images 6" in metrics


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def test_a_multi_process_service_shares_the_port_and_follows_reindex(tmp_path: Path) -> None:
    """`regionrank api --processes 2`: both processes answer on one port, each switches to the new version,
    and SIGTERM to the parent alone stops them all and removes the service file."""
    pytest.importorskip("cv2", reason="the demo extra (opencv + pretrained SSD) is not installed")
    batch1, batch2 = tmp_path / "b1", tmp_path / "b2"
    for folder, photos in ((batch1, ("astronaut", "chelsea")), (batch2, ("coffee",))):
        folder.mkdir()
        for p in photos:
            shutil.copy(PHOTOS / f"{p}.jpg", folder)
    ws = tmp_path / "ws"
    _index(ws, batch1, incremental=False)
    log = open(tmp_path / "api.log", "wb")
    proc = subprocess.Popen([*CLI, "api", "-w", str(ws), "--port", "0", "--poll", "0.2", "--processes", "2"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    pids: dict[int, int] = {}  # pid -> index version it last reported
    try:
        url = wait_for(lambda: (ws / "api.json").is_file() and json.loads((ws / "api.json").read_text())["url"],
                       timeout=240, what="the service file")

        def ask_info() -> int:
            status, body = _get(f"{url}/info", 60)
            if status == 200:
                info = json.loads(body)
                if info["ready"]:
                    pids[info["pid"]] = info["index_version"]
            return len(pids)

        # both processes take connections from the one socket; each only once it has loaded and warmed
        wait_for(lambda: proc.poll() is not None or ask_info() >= 2, timeout=240, what="two service processes")
        assert proc.poll() is None, (tmp_path / "api.log").read_text()[-3000:]
        assert len(pids) == 2 and set(pids.values()) == {1} and proc.pid not in pids
        _index(ws, batch2, incremental=True)
        wait_for(lambda: ask_info() and all(v == 2 for v in pids.values()) and len(pids) == 2, timeout=240,
                 what="both processes on version 2")
        res = _json(f"{url}/search?q=" + urllib.parse.quote("a cup of coffee") + "&k=1")
        assert res["index_version"] == 2 and Path(res["hits"][0]["uri"]).name == "coffee.jpg"
        os.kill(proc.pid, signal.SIGTERM)  # the parent only: it stops its processes
        proc.wait(timeout=60)
        wait_for(lambda: not any(_alive(p) for p in pids), timeout=60, what="the service processes to end")
        assert not (ws / "api.json").exists(), "the service left its file behind"
    finally:
        if proc.poll() is None:
            stop_process_group(proc)
        for p in pids:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
        log.close()

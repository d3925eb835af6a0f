"""Benchmark the search service (`regionrank api`) under a closed-loop load while a reindex publishes a
new index version half-way.

A synthetic workspace (the clustered scene of ``bench/search.py``, in the 384-d space of the
label-grounded encoder, so that the service runs its real query encoder, MrSw and SCAN re-ranking) is
indexed; ``regionrank api`` starts on 127.0.0.1 as a child process; C clients (default 2 x cores) send
``GET /search`` back to back for T seconds over keep-alive connections; at T/2 a batch of 1% new
images is added to the store and ``index.update_or_build`` publishes a new version, which the service
must switch to without a failed query. Reported: QPS, p50/p95/p99 latency, errors (all, and within 2 s
of the switch), the switch time (publication -> first answer from the new version) and the service's
own open-and-warm time, the single-client latency (the faster of a cold measurement at start and a warm
one after the load) and the QPS goal it implies (0.8 x cores / latency),
the CLI round trip through the service against the in-process CLI, and the service's RSS (all its
processes) at start, just before the switch (warm, half-way through the load) and after it. Only 127.0.0.1 is ever contacted; the load is bounded in requests and time.

    python -m bench.serve [--quick] [--json] [--n 10000] [--clients C] [--seconds T]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.search import Scene  # the same synthetic generator as bench/search.py

WORDS = ["dog", "car", "person", "cat", "bicycle", "cup", "chair", "tie", "umbrella", "horse", "bus", "train",
         "bottle", "laptop", "clock", "boat", "bird", "pizza", "kite", "book"]
MAX_REQUESTS = 200_000  # a hard bound on what the load generator sends, whatever --seconds says
EMBED_DIM = 384  # the label-grounded encoder's MiniLM width


def build_workspace(root: Path, n: int, seed: int = 0) -> tuple[Any, Scene]:
    from regionrank import index
    from regionrank.flows.config import EncodeConfig, ExtractConfig, IndexConfig, Workspace
    from regionrank.flows.pipeline import save_workspace_config
    from regionrank.storage import ImageEmbeddingStore

    ws = Workspace(root=root)
    root.mkdir(parents=True, exist_ok=True)
    save_workspace_config(ws, ExtractConfig(detector="ssd-mobilenet-coco", device="cpu"),
                          EncodeConfig(encoder="grounded", device="cpu"), IndexConfig())
    scene = Scene(max(50, n // 20), EMBED_DIM, seed=seed)
    write_images(ws, scene, n, start=0)
    index.build_indexes(ImageEmbeddingStore(ws.image_embeddings), ws.index_dir)
    return ws, scene


def write_images(ws: Any, scene: Scene, n: int, *, start: int) -> list[str]:
    from dataclasses import replace

    from regionrank.storage import ImageEmbeddingStore

    ids = []
    with ImageEmbeddingStore(ws.image_embeddings).writer(encoder="bench-scene", encoder_hash="0", embed_dim=EMBED_DIM,
                                                         rows_per_shard=4096) as w:
        for i, rec in enumerate(scene.images(n, (10, 36))):
            rec = replace(rec, image_id=f"img{start + i:08d}", uri=f"synthetic://img{start + i:08d}")
            w.write(rec)
            ids.append(rec.image_id)
    return ids


def _own_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:  # it ended meanwhile
        pass
    return 0.0


def rss_mb(pid: int) -> float:
    """The resident memory of ``pid`` and all its descendants (a multi-process service's processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += _own_rss_mb(p)
        todo.extend(children.get(p, []))
    return total


def wait_until(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def get_json(port: int, path: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"null")
    except OSError:
        return 0, None
    finally:
        conn.close()


def single_query_ms(port: int, *, seed: int, n: int = 20) -> float:
    """Median latency of ``n`` queries sent one at a time (one client)."""
    rng = np.random.default_rng(seed)
    times = []
    for _ in range(n):
        ts = time.perf_counter()
        get_json(port, "/search?q=" + query_text(rng).replace(" ", "+") + "&k=10")
        times.append(time.perf_counter() - ts)
    return 1e3 * statistics.median(times)


def query_text(rng: np.random.Generator) -> str:
    return "a " + " and a ".join(rng.choice(WORDS, int(rng.integers(1, 4)), replace=False))


def closed_loop(port: int, clients: int, seconds: float, on_half: Any) -> dict[str, Any]:
    """C clients, each sending its next query when the last is answered, for ``seconds``."""
    records: list[tuple[float, float, int, int | None]] = []  # (start, latency, status, version)
    lock = threading.Lock()
    t0 = time.perf_counter()
    end = t0 + seconds
    sent = [0]

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        while time.perf_counter() < end:
            with lock:
                if sent[0] >= MAX_REQUESTS:
                    break
                sent[0] += 1
            q = query_text(rng).replace(" ", "+")
            ts = time.perf_counter()
            try:
                conn.request("GET", f"/search?q={q}&k=10")
                r = conn.getresponse()
                body = r.read()
                status, version = r.status, (json.loads(body)["index_version"] if r.status == 200 else None)
            except (OSError, http.client.HTTPException, ValueError):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                status, version = 0, None
            mine.append((ts - t0, time.perf_counter() - ts, status, version))
        conn.close()
        with lock:
            records.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, t0 + seconds / 2 - time.perf_counter()))
    switch_at = on_half() - t0
    for t in threads:
        t.join()
    return {"records": records, "switch_at": switch_at, "wall": time.perf_counter() - t0, "t0": t0}


def cli_seconds(ws: Path, *extra: str) -> tuple[float, str]:
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "regionrank.flows.cli", "search", "a dog and a car", "-k", "5",
                          "-w", str(ws), *extra], capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise RuntimeError(f"regionrank search failed: {res.stdout[-2000:]} {res.stderr[-2000:]}")
    return time.perf_counter() - t, res.stderr


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="2000 images, 8 s of load: under a minute")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object on the last line")
    p.add_argument("--n", type=int, default=None, help="images (default 10000, quick 2000)")
    p.add_argument("--clients", type=int, default=None, help="concurrent clients (default 2 x cores)")
    p.add_argument("--seconds", type=float, default=None, help="load duration (default 30, quick 8)")
    p.add_argument("--workers", type=int, default=None, help="service query workers (default: its own, the CPU count)")
    p.add_argument("--processes", type=int, default=None,
                   help="service processes (default: one a core, as a deployment for throughput runs it)")
    p.add_argument("--threads-per-query", type=int, default=None,
                   help="torch/faiss threads of one query (default: the service's own, cores / workers)")
    args = p.parse_args(argv)
    from regionrank import index
    from regionrank.storage import ImageEmbeddingStore

    cores = os.cpu_count() or 1
    n = args.n or (2000 if args.quick else 10_000)
    clients = args.clients or 2 * cores
    seconds = min(args.seconds or (8.0 if args.quick else 30.0), 600.0)
    result: dict[str, Any] = {"n_images": n, "clients": clients, "seconds": seconds, "cores": cores,
                              "workers": args.workers, "threads_per_query": args.threads_per_query,
                              "processes": args.processes or cores}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        t = time.perf_counter()
        ws, scene = build_workspace(Path(tmp) / "ws", n)
        result["build_s"] = time.perf_counter() - t
        cmd = [sys.executable, "-m", "regionrank.flows.cli", "api", "-w", str(ws.root), "--port", "0", "--poll", "0.2"]
        if args.workers:
            cmd += ["--workers", str(args.workers)]
        if args.threads_per_query:
            cmd += ["--threads-per-query", str(args.threads_per_query)]
        processes = args.processes or cores
        cmd += ["--processes", str(processes)]
        log = open(Path(tmp) / "api.log", "wb")
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            meta = wait_until(lambda: (ws.root / "api.json").is_file() and json.loads((ws.root / "api.json").read_text()),
                              240, "the service file")
            port = int(meta["url"].rsplit(":", 1)[1])
            wait_until(lambda: get_json(port, "/readyz")[0] == 200, 240, "/readyz")
            result["start_s"] = time.perf_counter() - t
            result["single_query_ms_start"] = single_query_ms(port, seed=1)
            result["rss_start_mb"] = rss_mb(proc.pid)
            published: dict[str, float] = {}
            reindexers: list[threading.Thread] = []

            def reindex() -> float:
                def run() -> None:
                    new_ids = write_images(ws, scene, max(1, n // 100), start=n)
                    index.update_or_build(ws.index_dir, ImageEmbeddingStore(ws.image_embeddings), new_ids)
                    published["at"] = time.perf_counter()

                result["rss_before_mb"] = rss_mb(proc.pid)  # warm (half-way through the load), before the switch
                reindexers.append(threading.Thread(target=run))
                reindexers[0].start()
                return time.perf_counter()

            load = closed_loop(port, clients, seconds, reindex)
            reindexers[0].join()
            wait_until(lambda: (get_json(port, "/readyz")[1] or {}).get("index_version") == 2, 120, "version 2")
            result["rss_after_mb"] = rss_mb(proc.pid)
            # the goal's latency: the faster of a cold (just started) and a warm (after the load) measurement
            result["single_query_ms_warm"] = single_query_ms(port, seed=1)  # the same queries, warm
            result["single_query_ms"] = min(result["single_query_ms_start"], result["single_query_ms_warm"])
            recs = load["records"]
            ok = [r for r in recs if r[2] == 200]
            lat = np.array([r[1] for r in ok]) * 1e3
            published_at = published["at"] - load["t0"]
            first_v2 = min((r[0] + r[1] for r in ok if r[3] == 2), default=None)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
            conn.close()
            svc_switch = next((float(line.split()[1]) for line in text.splitlines()
                               if line.startswith("regionrank_index_switch_seconds ")), None)
            result.update({
                "requests": len(recs), "qps": len(ok) / load["wall"],
                "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
                "p95_ms": float(np.percentile(lat, 95)) if len(lat) else None,
                "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
                "errors": len(recs) - len(ok),
                # from the reindex's start to 2 s after the first answer from the new version
                "switch_errors": sum(1 for r in recs if r[2] != 200 and load["switch_at"] <= r[0] <= (first_v2 or 1e9) + 2),
                "answered_by_v2": sum(1 for r in ok if r[3] == 2),
                "service_switch_s": svc_switch,
                "reindex_started_s": load["switch_at"], "published_s": published_at,
                "switch_s": None if first_v2 is None else first_v2 - published_at,
                "qps_goal": 0.8 * cores / (result["single_query_ms"] / 1e3),
            })
            result["rss_ratio"] = result["rss_after_mb"] / result["rss_before_mb"]
            runs = [cli_seconds(ws.root) for _ in range(3)]  # one process start each: the median of three
            result["cli_service_runs_s"] = [t for t, _ in runs]
            result["cli_service_s"], said = statistics.median(t for t, _ in runs), runs[0][1]
            if "answered by the search service" not in said:
                raise RuntimeError(f"the CLI did not use the service: {said}")
            result["cli_inprocess_s"], _ = cli_seconds(ws.root, "--in-process")
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            log.close()
    print(f"{n} images, {clients} clients x {seconds:.0f} s on {cores} cores; service up in {result['start_s']:.1f} s")
    print(f"QPS {result['qps']:.1f} (goal 0.8 x cores / single-query latency {result['single_query_ms']:.1f} ms = "
          f"{result['qps_goal']:.1f}); p50 {result['p50_ms']:.1f} ms, p95 {result['p95_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms")
    print(f"errors {result['errors']} ({result['switch_errors']} around the switch); reindex started at "
          f"{result['reindex_started_s']:.1f} s, published at {result['published_s']:.1f} s, first answer from it "
          f"{result['switch_s']} s later (the service opened and warmed it in {result['service_switch_s']} s); "
          f"{result['answered_by_v2']} answers from version 2")
    print(f"RSS {result['rss_before_mb']:.0f} MB before, {result['rss_after_mb']:.0f} MB after the switch "
          f"({result['rss_ratio']:.2f}x); CLI via the service {result['cli_service_s']:.2f} s, in-process {result['cli_inprocess_s']:.2f} s")
    if args.json:
        print(json.dumps(result, default=float))
    return result


if __name__ == "__main__":
    main()

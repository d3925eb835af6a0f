"""The pipeline against a real Prefect server: flow/task states and artifacts through the API,
a kill -9 mid-run followed by a resume, and a scheduled reindex served by `regionrank serve`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_testdata import TINY_BUTD, make_images, stop_process_group, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _cfg(images: Path, ws: Path, **extract: object):
    from regionrank.flows.config import EncodeConfig, ExtractConfig, PipelineConfig, Workspace

    ext = {"detector": "butd-r101-c4", "options": TINY_BUTD, "device": "cpu", "images_per_task": 2, "rows_per_shard": 2,
           "num_workers": 0, **extract}
    return PipelineConfig(images=[images], workspace=Workspace(root=ws), extract=ExtractConfig(**ext),
                          encode=EncodeConfig(encoder="teran", model_name="teran-tiny", device="cpu"))


def _runs_by_flow(client) -> dict[str, list]:
    flows = {f.id: f.name for f in client.read_flows()}
    out: dict[str, list] = {}
    for r in client.read_flow_runs(limit=200):
        out.setdefault(flows[r.flow_id], []).append(r)
    return out


def test_pipeline_states_and_artifacts(prefect_server, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client

    from regionrank.flows.pipeline import index_images_flow
    from regionrank.storage import ImageEmbeddingStore, RegionStore

    images = tmp_path / "images"
    make_images(images, 5, seed=0)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    rep = index_images_flow(_cfg(images, tmp_path / "ws"))

    assert (rep["stored"], rep["extracted"], rep["failed"], rep["encoded"], rep["index_version"]) == (5, 5, 1, 5, 1)
    assert any("RANDOMLY INITIALISED" in n for n in rep["notes"])
    assert len(RegionStore(tmp_path / "ws" / "regions")) == 5
    assert len(ImageEmbeddingStore(tmp_path / "ws" / "embeddings" / "images")) == 5

    with get_client(sync_client=True) as client:
        runs = _runs_by_flow(client)
        for name in ("index-images", "extract-regions", "encode", "build-index"):
            assert name in runs and all(r.state_type.value == "COMPLETED" for r in runs[name]), name
        parent = max(runs["index-images"], key=lambda r: r.start_time)
        extract_run = max(runs["extract-regions"], key=lambda r: r.start_time)  # this test's (the server is shared)
        tasks = client.read_task_runs()
        extract_tasks = [t for t in tasks if t.name.startswith("extract-shard") and t.flow_run_id == extract_run.id]
        assert len(extract_tasks) == 3 and all(t.state_type.value == "COMPLETED" for t in extract_tasks)
        ours = {max(runs[name], key=lambda r: r.start_time).id for name in ("index-images", "extract-regions", "encode", "build-index")}
        arts = {a.key: a for a in client.read_artifacts() if a.key and a.flow_run_id in ours}
        assert {"run-report", "extract-progress", "extract-shards", "extract-failures", "encode-shards", "index-stats"} <= set(arts)
        assert float(arts["extract-progress"].data) == 100.0
        assert "broken.jpg" in str(arts["extract-failures"].data)
        assert "regionrank run report" in arts["run-report"].data and "recall@k" in arts["run-report"].data
        assert parent.state_name == "Completed"
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        build_run = max(runs["build-index"], key=lambda r: r.start_time)
        wait_for(lambda: any("published index version 1" in entry.message for entry in client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[build_run.id])))),
            timeout=60, what="the index library's log line in the build-index run's logs")


def test_orchestrated_run_executes_the_stages_reads_each_image_once_and_records_a_symlink_loop(
        prefect_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from file_reads import count_reads
    from prefect.client.orchestration import get_client

    from regionrank.flows import commands, stages
    from regionrank.storage import RegionStore

    images = tmp_path / "images"
    photos = make_images(images, 3, seed=7)
    (images / "a.png").symlink_to(images / "b.png")
    (images / "b.png").symlink_to(images / "a.png")
    order: list[str] = []
    for stage in stages.PIPELINE_STAGES:
        def spy(*args, _stage=stage, **kwargs):
            order.append(_stage.__name__)
            return _stage(*args, **kwargs)

        monkeypatch.setattr(stages, stage.__name__, spy)
    opens = count_reads(monkeypatch, photos)
    ws = tmp_path / "ws"
    rep = commands.run_pipeline(_cfg(images, ws), incremental=False, orchestrate=True)

    assert (rep["images"], rep["stored"], rep["extracted"], rep["failed"], rep["encoded"], rep["index_version"]) == (5, 3, 3, 2, 3, 1)
    assert order == ["expand_inputs", *["extract_regions"] * 3, "encode_regions", "update_index"]  # 2 images per extract task
    assert opens == {str(p): 1 for p in photos}
    loops = {str(images / n) for n in ("a.png", "b.png")}
    assert {f["uri"] for f in rep["failures"]} == loops
    assert {f["uri"] for f in RegionStore(ws / "regions").failures()} == loops  # `regionrank status` counts them
    with get_client(sync_client=True) as client:
        extract_run = max(_runs_by_flow(client)["extract-regions"], key=lambda r: r.start_time)
        arts = {a.key: a for a in client.read_artifacts() if a.flow_run_id == extract_run.id}
    assert all(name in str(arts["extract-failures"].data) for name in ("a.png", "b.png"))


def test_kill_minus_nine_then_resume_loses_and_duplicates_nothing(prefect_server, tmp_path: Path) -> None:
    import json

    from regionrank.storage import RegionStore

    images = tmp_path / "images"
    make_images(images, 8, seed=1)
    ws = tmp_path / "ws"
    env = dict(os.environ, REGIONRANK_DETECTOR_OPTIONS=json.dumps(TINY_BUTD), REGIONRANK_IMAGES_PER_TASK="1",
               REGIONRANK_ROWS_PER_SHARD="1", REGIONRANK_ENCODER_MODEL="teran-tiny", REGIONRANK_DEVICE="cpu")
    cmd = [sys.executable, "-m", "regionrank.flows.cli", "index", str(images), "-w", str(ws), "--detector", "butd-r101-c4",
           "--encoder", "teran"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: len(list((ws / "regions").glob("regions-*.parquet"))) >= 2, timeout=240, what="two published shards")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    done_before = len(RegionStore(ws / "regions"))
    assert 2 <= done_before < 8, "the kill should land part-way through extraction"

    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    store = RegionStore(ws / "regions")
    assert len(store) == 8 and len(store.ids()) == len(set(store.ids()))
    rows = sum(b.num_rows for b in store.iter_batches(columns=["image_id"]))
    assert rows == 8, "a resumed run must not write an image twice"
    from regionrank.index import open_index

    assert open_index(ws / "index").manifest.n_items == 8


def test_scheduled_reindex_served_by_cli(prefect_server, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client

    from regionrank.flows.pipeline import index_images_flow
    from regionrank.storage import RegionStore

    images = tmp_path / "watched"
    make_images(images, 2, seed=2)
    ws = tmp_path / "ws"
    index_images_flow(_cfg(images, ws))
    make_images(images, 2, seed=3, start=10)  # a new batch lands in the watched folder

    with get_client(sync_client=True) as client:
        before = {r.id for r in client.read_flow_runs(limit=200)}
    proc = subprocess.Popen([sys.executable, "-m", "regionrank.flows.cli", "serve", str(images), "-w", str(ws), "--interval", "5"],
                            cwd=ROOT, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        def finished_reindex():
            with get_client(sync_client=True) as client:
                runs = _runs_by_flow(client).get("reindex", [])
                done = [r for r in runs if r.id not in before and r.state_type.value == "COMPLETED"]
                return done or None

        (run, *_) = wait_for(finished_reindex, timeout=300, what="a completed scheduled reindex run")
        with get_client(sync_client=True) as client:
            deps = {d.name for d in client.read_deployments()}
        assert {"watched-folder", "on-demand"} <= deps
        assert run.deployment_id is not None
    finally:
        stop_process_group(proc)
    assert len(RegionStore(ws / "regions")) == 4
    from regionrank.index import versions

    assert len(versions(ws / "index")) >= 2


def test_map_stages_scale_out_on_a_dask_cluster(prefect_server, tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    from prefect.client.orchestration import get_client

    from regionrank.flows.pipeline import index_images_flow

    images = tmp_path / "images"
    make_images(images, 4, seed=4)
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        # two device slots: both workers extract at once, writing disjoint shards into one store
        cfg = _cfg(images, tmp_path / "ws", device_slots=2).model_copy(update={"dask_address": cluster.scheduler_address})
        rep = index_images_flow(cfg)
        assert (rep["stored"], rep["encoded"]) == (4, 4)
        with distributed.Client(cluster.scheduler_address) as dc:
            ran_on = dc.run(lambda: __import__("sys").modules.get("regionrank.extractors") is not None)
        assert any(ran_on.values()), "the extract tasks should have run inside the Dask worker processes"
        with get_client(sync_client=True) as client:
            runs = [r for r in _runs_by_flow(client)["extract-regions"] if r.state_type.value == "COMPLETED"]
        assert runs
    finally:
        cluster.close()


def test_second_run_on_a_busy_workspace_fails_clearly(tmp_path: Path) -> None:
    from regionrank.flows import commands
    from regionrank.storage import StoreLockedError, exclusive_lock

    images = tmp_path / "images"
    make_images(images, 1, seed=5)
    cfg = _cfg(images, tmp_path / "ws")
    with exclusive_lock(cfg.workspace.lock):
        with pytest.raises(StoreLockedError, match=r"another writer holds the lock on .*ws.*pid \d+"):
            commands.run_pipeline(cfg, incremental=True, orchestrate=False)


def test_decode_workers_start_inside_an_orchestrated_process(prefect_server, tmp_path: Path) -> None:
    """Forked DataLoader workers died in a process that had run flows; workers now come from a forkserver."""
    from prefect import flow

    from regionrank.extractors import extract, get_detector
    from regionrank.storage import RegionStore

    @flow
    def warm() -> int:
        return 1

    assert warm() == 1  # this process now holds Prefect's API clients, log handlers and threads
    images = tmp_path / "images"
    make_images(images, 3, seed=6)
    det = get_detector("butd-r101-c4", seed=0, **TINY_BUTD)
    rep = extract(images, tmp_path / "store", detector=det, num_workers=2, batch_size=1)
    assert (rep.n_extracted, rep.n_failed) == (3, 0)
    assert len(RegionStore(tmp_path / "store")) == 3


def test_device_slot_serialises_model_tasks_of_one_process(prefect_server) -> None:
    import threading
    import time

    from prefect import flow, task

    from regionrank.flows.tasks import device_slot

    spans: list[tuple[float, float]] = []
    guard = threading.Lock()

    @task
    def model_task(i: int) -> int:
        with device_slot(1):
            t0 = time.perf_counter()
            time.sleep(0.3)
            with guard:
                spans.append((t0, time.perf_counter()))
        return i

    @flow
    def fan_out() -> list[int]:
        return [f.result() for f in model_task.map(list(range(4)))]

    assert fan_out() == [0, 1, 2, 3]
    spans.sort()
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), spans
    with device_slot(1):  # outside any run: nothing to acquire
        pass

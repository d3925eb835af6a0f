"""`regionrank index --dask` on a Dask cluster started the way users start one.

`dask scheduler` and `dask worker ADDR --nworkers 2` run as separate processes from a folder of their own. A
`dask worker` puts its local directory on ``sys.path``, and that directory holds its ``storage/`` spill folder;
the worker folder here also holds ``storage/``, ``index/``, ``flows/``, ``encoders/`` and ``extractors/`` folders.
When regionrank installed bare top-level packages, these shadowed them and every extract task failed with
``ImportError: cannot import name 'RegionRecord' from 'storage' (unknown location)``. The ``LocalCluster`` test in
``test_prefect_pipeline.py`` does not see this (its workers are forked from the test process).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_testdata import TINY_BUTD, make_images, stop_process_group, wait_for

pytestmark = pytest.mark.integration

SHADOWS = ("storage", "index", "flows", "encoders", "extractors")


def _dask_cli() -> list[str]:
    exe = Path(sys.executable).with_name("dask")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("dask")
    if found is None:
        pytest.skip("the `dask` command is not installed (pip install distributed)")
    return [found]


def test_index_on_dask_scheduler_and_worker_processes(prefect_server, tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    dask = _dask_cli()
    cluster_dir = tmp_path / "cluster"
    for name in SHADOWS:  # folders named like the packages, in the workers' working and local directory
        (cluster_dir / name).mkdir(parents=True)
        (cluster_dir / name / "__init__.py").write_text("raise ImportError('a shadowing folder was imported')\n")
    sched_file = cluster_dir / "scheduler.json"
    env = dict(os.environ, PYTHONPATH="")  # nothing from the checkout on the path: the installed package only
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(
            [*dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(sched_file)],
            cwd=cluster_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        wait_for(lambda: sched_file.exists() and json.loads(sched_file.read_text() or "{}").get("address"),
                 timeout=120, what="the dask scheduler's address in its scheduler file")
        address = json.loads(sched_file.read_text())["address"]
        procs.append(subprocess.Popen(
            [*dask, "worker", address, "--nworkers", "2", "--nthreads", "1", "--no-dashboard",
             "--local-directory", str(cluster_dir)],
            cwd=cluster_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        with distributed.Client(address, timeout=60) as dc:
            dc.wait_for_workers(2, timeout=180)
            on_path = dc.run(lambda: __import__("sys").path)
            assert all(any(p.startswith(str(cluster_dir)) for p in path) for path in on_path.values()), \
                "the workers should have their local directory (holding the shadowing folders) on sys.path"

            images = tmp_path / "images"
            make_images(images, 4, seed=11)
            ws = tmp_path / "ws"
            run_env = dict(os.environ, REGIONRANK_DETECTOR_OPTIONS=json.dumps(TINY_BUTD), REGIONRANK_IMAGES_PER_TASK="2",
                           REGIONRANK_ROWS_PER_SHARD="2", REGIONRANK_ENCODER_MODEL="teran-tiny", REGIONRANK_DEVICE="cpu")
            out = subprocess.run(
                [sys.executable, "-m", "regionrank.flows.cli", "index", str(images), "-w", str(ws),
                 "--detector", "butd-r101-c4", "--encoder", "teran", "--dask", address],
                cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=600)
            assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
            assert "ImportError" not in out.stdout + out.stderr

            ran = dc.run(lambda: __import__("sys").modules.get("regionrank.extractors.pipeline") is not None)
            assert any(ran.values()), "the extract tasks should have run inside the dask worker processes"
            shadowed = dc.run(lambda: sorted(n for n in ("storage", "index", "flows") if n in __import__("sys").modules))
            assert all(v == [] for v in shadowed.values()), shadowed

        from regionrank.index import versions
        from regionrank.storage import ImageEmbeddingStore, RegionStore

        assert len(RegionStore(ws / "regions")) == 4
        assert len(ImageEmbeddingStore(ws / "embeddings" / "images")) == 4
        assert len(versions(ws / "index")) == 1
    finally:
        for proc in reversed(procs):
            stop_process_group(proc)

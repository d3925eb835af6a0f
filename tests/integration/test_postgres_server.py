"""`regionrank serve --database-url postgresql+asyncpg://...` against a real PostgreSQL.

A throw-away PostgreSQL cluster (initdb + pg_ctl, loopback only, trust auth, its own socket dir)
backs the `prefect server start` that `serve` launches; a scheduled reindex of the watched folder
must complete, be visible through the API, and be stored in PostgreSQL's ``flow_run`` table.
Skips with the reason when the PostgreSQL server binaries (or asyncpg) are not installed:
``apt-get install postgresql`` provides them (Debian keeps them in /usr/lib/postgresql/N/bin).
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from pipeline_testdata import TINY_BUTD, make_images, stop_process_group, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for cand in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(cand) / "initdb").exists() and (Path(cand) / "pg_ctl").exists():
            return Path(cand)
    return None


def _as_db_user() -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the `postgres` account then."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no 'postgres' account to run PostgreSQL as")
    if shutil.which("runuser") is None:
        pytest.skip("running as root and `runuser` is missing (needed to start PostgreSQL as 'postgres')")
    return ["runuser", "-u", "postgres", "--"]


@pytest.fixture
def postgres_url():
    pytest.importorskip("asyncpg", reason="asyncpg (Prefect's PostgreSQL driver) is not installed")
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; `apt-get install postgresql` provides them")
    from regionrank.flows.prefect_server import free_port

    sudo = _as_db_user()
    root = Path(tempfile.mkdtemp(prefix="regionrank-pg-"))
    if sudo:
        shutil.chown(root, user="postgres")
    data, port = root / "data", free_port()
    run = lambda *cmd: subprocess.run([*sudo, *cmd], capture_output=True, text=True, timeout=120)  # noqa: E731
    out = run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    assert out.returncode == 0, out.stdout + out.stderr
    out = run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "postgres.log"), "-w", "-t", "60",
              "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {root}", "start")
    assert out.returncode == 0, out.stdout + out.stderr
    try:
        created = run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "prefect")
        assert created.returncode == 0, created.stdout + created.stderr
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect"
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _completed_flow_runs_in_postgres(url: str) -> dict[str, int]:
    import asyncpg

    async def query() -> dict[str, int]:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            rows = await conn.fetch("SELECT f.name, count(*) AS n FROM flow_run r JOIN flow f ON f.id = r.flow_id "
                                    "WHERE r.state_type = 'COMPLETED' GROUP BY f.name")
            return {r["name"]: int(r["n"]) for r in rows}
        finally:
            await conn.close()

    return asyncio.run(query())


def test_serve_with_postgres_runs_the_scheduled_reindex(postgres_url: str, tmp_path: Path) -> None:
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from regionrank.flows import commands
    from regionrank.flows.config import EncodeConfig, ExtractConfig, PipelineConfig, Workspace
    from regionrank.flows.prefect_server import free_port
    from regionrank.storage import RegionStore

    images, ws = tmp_path / "watched", tmp_path / "ws"
    make_images(images, 2, seed=7)
    cfg = PipelineConfig(images=[images], workspace=Workspace(root=ws),
                         extract=ExtractConfig(detector="butd-r101-c4", options=TINY_BUTD, device="cpu", images_per_task=2,
                                               rows_per_shard=2, num_workers=0),
                         encode=EncodeConfig(encoder="teran", model_name="teran-tiny", device="cpu"))
    commands.run_pipeline(cfg, incremental=False, orchestrate=False)  # the workspace remembers its (tiny) models
    make_images(images, 2, seed=8, start=10)  # a new batch lands in the watched folder

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    log_path = tmp_path / "serve.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "regionrank.flows.cli", "serve", str(images), "-w", str(ws), "--interval", "5",
                             "--database-url", postgres_url, "--port", str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        def completed_reindex():
            if proc.poll() is not None:
                raise AssertionError(f"`regionrank serve` exited with {proc.returncode}: "
                                     f"{log_path.read_text(errors='replace')[-3000:]}")
            try:
                with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
                    flows = {f.id: f.name for f in client.read_flows()}
                    done = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED]))))
                    return [r for r in done if flows.get(r.flow_id) == "reindex"] or None
            except httpx.HTTPError:  # the server is still starting (migrations on a fresh database)
                return None

        (run, *_) = wait_for(completed_reindex, timeout=300, interval=1.0, what="a completed scheduled reindex run")
        with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            assert {"watched-folder", "on-demand"} <= {d.name for d in client.read_deployments()}
            assert run.deployment_id is not None
            keys = {a.key for a in client.read_artifacts() if a.flow_run_id == run.id}
        assert "run-report" in keys
        stored = _completed_flow_runs_in_postgres(postgres_url)
        assert stored.get("reindex", 0) >= 1 and stored.get("extract-regions", 0) >= 1, stored
    finally:
        stop_process_group(proc)
        log.close()
    assert len(RegionStore(ws / "regions")) == 4

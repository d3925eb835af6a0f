"""Show the Prefect UI for real: run the pipeline against a local Prefect server and screenshot its UI
in headless Chromium (Debian package ``chromium``).

    python -m regionrank.flows.screenshot OUT_DIR [--images DIR]

Writes ``OUT_DIR/prefect-flow-run.png`` (the finished ``index-images`` run: task timeline,
subflows, logs) and ``OUT_DIR/prefect-artifacts.png`` (progress, tables, run report), and
``OUT_DIR/prefect-run-report.png`` (the markdown run report).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["chromium_screenshot", "screenshot_pipeline_run"]


def chromium_screenshot(url: str, out: Path, *, size: tuple[int, int] = (1600, 1000), budget_ms: int = 20000) -> Path:
    """Save a headless-Chromium screenshot of ``url`` (a fresh profile each time).

    Raises:
        RuntimeError: Chromium is not installed (the message says how to install it) or wrote no file.
    """
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        raise RuntimeError("Chromium not found: install it with `apt-get install -y chromium` (Debian) to take UI screenshots")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="regionrank-chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
               f"--virtual-time-budget={budget_ms}", f"--screenshot={out}", url]
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180, check=False)
    if not out.is_file() or out.stat().st_size == 0:
        raise RuntimeError(f"Chromium wrote no screenshot for {url}")
    return out


def screenshot_pipeline_run(out_dir: Path, images: Path, work: Path) -> list[Path]:
    """Start a server, run ``index-images`` on ``images`` (demo models), screenshot the run and its artifacts."""
    from regionrank.flows.prefect_server import start_local_server

    server = start_local_server(work / "prefect-home")
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            from regionrank.flows.commands import run_pipeline
            from regionrank.flows.config import EncodeConfig, ExtractConfig, PipelineConfig, Workspace

            cfg = PipelineConfig(images=[images], workspace=Workspace(root=work / "ws"),
                                 extract=ExtractConfig(detector="ssd-mobilenet-coco", device="cpu", images_per_task=2),
                                 encode=EncodeConfig(encoder="grounded", device="cpu", images_per_task=2))
            run_pipeline(cfg, incremental=False)
            from prefect.client.orchestration import get_client

            with get_client(sync_client=True) as client:
                flows = {f.id: f.name for f in client.read_flows()}
                run = next(r for r in client.read_flow_runs(limit=50) if flows[r.flow_id] == "index-images")
                report = next(a for a in client.read_artifacts() if a.key == "run-report")
        shots = [
            chromium_screenshot(f"{server.ui_url}/artifacts/artifact/{report.id}", out_dir / "prefect-run-report.png"),
            chromium_screenshot(f"{server.ui_url}/runs/flow-run/{run.id}", out_dir / "prefect-flow-run.png"),
            chromium_screenshot(f"{server.ui_url}/artifacts", out_dir / "prefect-artifacts.png"),
        ]
        return shots
    finally:
        server.stop()
        os.environ.pop("PREFECT_API_URL", None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--images", type=Path, default=Path(__file__).resolve().parents[1] / "examples" / "photos")
    args = ap.parse_args()
    from regionrank.flows.runtime import configure_prefect_env

    with tempfile.TemporaryDirectory(prefix="regionrank-ui-") as tmp:
        configure_prefect_env(Path(tmp))
        for p in screenshot_pipeline_run(args.out_dir, args.images, Path(tmp)):
            print(p)


if __name__ == "__main__":
    main()

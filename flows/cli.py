"""The ``regionrank`` command line (typer). It parses, builds configs, calls flows/commands and prints.

No logic lives here: see ``flows/commands.py`` and the flows.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from regionrank.index.search.params import SearchParams  # the search options' defaults

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="regionrank: fine-grained image-text retrieval — extract regions, embed, index, search.")
console = Console()
err = Console(stderr=True)

_WS = typer.Option(None, "--workspace", "-w", help="workspace folder [env REGIONRANK_WORKSPACE; default ./regionrank-workspace]")


def _workspace(path: Optional[Path]) -> Any:
    from regionrank.flows.config import Settings, Workspace
    from regionrank.flows.runtime import configure_prefect_env

    root = (path or Settings().workspace).expanduser().absolute()
    configure_prefect_env(root)
    return Workspace(root=root)


def _fail(exc: BaseException) -> None:
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(str(exc))}")  # messages quote boxes and lists: "[x1, y1, x2, y2]" is no markup
    raise typer.Exit(code=2)


def _print_report(rep: dict[str, Any]) -> None:
    t = Table(title="run report", show_header=False)
    for key in ("images", "stored", "extracted", "given_boxes", "skipped_existing", "failed", "regions", "encoded", "index_version",
                "extract_images_per_s", "encode_images_per_s", "wall_seconds"):
        if key in rep and rep[key] is not None:
            t.add_row(key.replace("_", " "), str(rep[key]))
    console.print(t)
    for f in rep.get("failures", [])[:20]:
        console.print(f"[yellow]skipped[/] {f['uri']}: {f['reason']}")
    for note in rep.get("notes", []):
        console.print(f"[bold yellow]{note}[/]")


def _print_hits(query: str, hits: list[Any], labels: dict[str, Any] | None = None) -> None:
    t = Table(title=f"results for {query!r}")
    for col in ("#", "image", "score", "mrsw", "scan", "best region per word (cosine)"):
        t.add_column(col)
    for i, h in enumerate(hits, 1):
        names = (labels or {}).get(h.image_id) or []

        def region_name(r: int) -> str:
            if r < 0:
                return "none"
            return f"{names[r]} #{r}" if r < len(names) else f"region {r}"

        words = ", ".join(f"{e.token}→{region_name(e.region)} ({e.similarity:.2f})" for e in h.explanation[:6])
        sc = h.stage_scores
        t.add_row(str(i), Path(h.uri).name or h.image_id[:12], f"{h.score:.3f}", f"{sc.get('mrsw', float('nan')):.3f}",
                  f"{sc['scan']:.3f}" if "scan" in sc else "-", words)
    console.print(t)


def _run(images: list[Path], workspace: Optional[Path], incremental: bool, detector: Optional[str], detector_weights: Optional[Path],
         encoder: Optional[str], checkpoint: Optional[Path], device: Optional[str], dask: Optional[str],
         no_orchestrator: bool, lock_timeout: float, boxes: Optional[Path] = None) -> dict[str, Any]:
    from regionrank.flows import commands

    from regionrank.flows.settings import ConfigOverrides, resolve_config

    ws = _workspace(workspace)
    try:
        flags = ConfigOverrides(detector=detector, detector_weights=detector_weights, encoder=encoder, checkpoint=checkpoint,
                                device=device, dask_address=dask, boxes_file=boxes)
        cfg = resolve_config(ws, images, flags, lock_timeout=lock_timeout)
        if no_orchestrator and sys.stderr.isatty():
            from rich.progress import Progress

            with Progress(console=err) as bar:
                tasks: dict[str, Any] = {}

                def progress(stage: str, done: int, total: int) -> None:
                    if stage not in tasks:
                        tasks[stage] = bar.add_task(stage, total=total)
                    bar.update(tasks[stage], completed=done, total=total)

                return commands.run_pipeline(cfg, incremental=incremental, orchestrate=False, progress=progress)
        with err.status(f"running the {'reindex' if incremental else 'index-images'} flow (Prefect; logs below)..."):
            return commands.run_pipeline(cfg, incremental=incremental, orchestrate=not no_orchestrator)
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as exc:
        _fail(exc)
        raise  # unreachable


_DET = typer.Option(None, "--detector", help="detector name (see `regionrank detectors`) [env REGIONRANK_DETECTOR]")
_DETW = typer.Option(None, "--detector-weights", help="local detector weights file [env REGIONRANK_DETECTOR_WEIGHTS]")
_ENC = typer.Option(None, "--encoder", help="'grounded' (zero-shot) or 'teran' (trained checkpoint)")
_CKPT = typer.Option(None, "--checkpoint", help="TERAN checkpoint folder [env REGIONRANK_ENCODER_CHECKPOINT]")
_DEV = typer.Option(None, "--device", help="auto | cpu | cuda[:N]")
_DASK = typer.Option(None, "--dask", help="Dask scheduler address: run the mapped stages, and an index build as shard tasks, on that cluster")
_NOORCH = typer.Option(False, "--no-orchestrator", help="run the stages as plain library calls, without Prefect")
_LOCKT = typer.Option(0.0, "--wait", help="seconds to wait if another run holds the workspace")
_BOXES = typer.Option(None, "--boxes", help="JSON lines of given boxes, one image a line: its path or id and its boxes "
                      "(x1 y1 x2 y2, original pixels); those images get exactly these regions instead of detections "
                      "(butd-r101-c4; see README, Bring your own models)")


@app.command("index")
def index_cmd(images: list[Path] = typer.Argument(..., help="image folder(s) or files"), workspace: Optional[Path] = _WS,
              detector: Optional[str] = _DET, detector_weights: Optional[Path] = _DETW, encoder: Optional[str] = _ENC,
              checkpoint: Optional[Path] = _CKPT, device: Optional[str] = _DEV, dask: Optional[str] = _DASK,
              no_orchestrator: bool = _NOORCH, wait: float = _LOCKT, boxes: Optional[Path] = _BOXES) -> None:
    """Run the whole pipeline (extract -> encode -> index) over images."""
    _print_report(_run(images, workspace, False, detector, detector_weights, encoder, checkpoint, device, dask, no_orchestrator, wait,
                       boxes))


@app.command("reindex")
def reindex_cmd(images: list[Path] = typer.Argument(..., help="folder(s) or files holding a new batch of images"),
                workspace: Optional[Path] = _WS, device: Optional[str] = _DEV, dask: Optional[str] = _DASK,
                no_orchestrator: bool = _NOORCH, wait: float = _LOCKT, boxes: Optional[Path] = _BOXES) -> None:
    """Add a new batch of images: only unseen images are processed; a new index version is published."""
    _print_report(_run(images, workspace, True, None, None, None, None, device, dask, no_orchestrator, wait, boxes))


@app.command("search")
def search_cmd(text: str = typer.Argument(..., help="the query"), k: int = typer.Option(SearchParams.k, "-k", help="results"),
               explain: Optional[Path] = typer.Option(None, "--explain", help="write the top hit's per-word heatmap (PNG)"),
               rerank_k: int = typer.Option(SearchParams.rerank_k, "--rerank-k",
                                            help="candidates re-ranked with SCAN (0 = off: exact MrSw scores)"),
               fusion: str = typer.Option(SearchParams.fusion, "--fusion", help="scan | mrsw | weighted"),
               in_process: bool = typer.Option(False, "--in-process", help="search in this process even when a service runs"),
               workspace: Optional[Path] = _WS) -> None:
    """Search the indexed images with a text query (two-stage: ANN -> TERAN alignment -> SCAN re-rank).

    Uses the workspace's running search service (`regionrank api`) when there is one, else searches in-process."""
    if not in_process:  # the service path loads no pydantic, torch or faiss: it answers in about half a second
        from regionrank.flows.api.client import ServiceError, find_service, hits_from_json
        from regionrank.flows.runtime import workspace_root

        svc, why = find_service(workspace_root(workspace))
        if svc is not None:
            try:
                res = svc.search(text, k=k, rerank_k=rerank_k, fusion=fusion)
                hits, labels = hits_from_json(res["hits"])
                if explain is not None and hits:
                    svc.explain(hits[0].image_id, text, explain)
            except ServiceError as exc:
                _fail(exc)
            err.print(f"answered by {why} (index version {res['index_version']})")
            _print_hits(text, hits, labels)
            if explain is not None and hits:
                console.print(f"heatmap of the top hit written to {explain}")
            return
        err.print(f"in-process search: {why}")
    from regionrank.flows import commands
    from regionrank.flows.config import SearchConfig

    ws = _workspace(workspace)
    try:
        hits = commands.search(ws, text, SearchConfig(k=k, rerank_k=rerank_k, fusion=fusion), explain=explain)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        _fail(exc)
    _print_hits(text, hits, commands.region_labels(ws, [h.image_id for h in hits]))
    if explain is not None and hits:
        console.print(f"heatmap of the top hit written to {explain}")


@app.command("api")
def api_cmd(workspace: Optional[Path] = _WS,
            host: str = typer.Option("127.0.0.1", "--host", help="address to bind; another than loopback needs --token"),
            port: int = typer.Option(8765, "--port", help="port (0 = a free one)"),
            token: Optional[str] = typer.Option(None, "--token", envvar="REGIONRANK_API_TOKEN",
                                                help="API token every request must carry [env REGIONRANK_API_TOKEN]"),
            workers: Optional[int] = typer.Option(None, "--workers", help="queries one process answers at once (default: CPU count / processes, 2 to 8)"),
            processes: int = typer.Option(1, "--processes", help="service processes sharing the port: queries on more cores than one Python process uses"),
            threads_per_query: Optional[int] = typer.Option(None, "--threads-per-query",
                                                            help="torch/faiss threads of one query (default: cores / workers, at least 1)"),
            cors_origin: list[str] = typer.Option([], "--cors-origin", help="allow browser calls from this origin (repeatable)"),
            rerank_k: int = typer.Option(128, "--rerank-k", help="default candidates re-ranked with SCAN"),
            fusion: str = typer.Option("weighted", "--fusion", help="default fusion: scan | mrsw | weighted"),
            poll: float = typer.Option(0.5, "--poll", help="seconds between two looks for a new index version"),
            prefect_ui: Optional[str] = typer.Option(None, "--prefect-ui", help="Prefect UI URL, for the page's run link"),
            prefect_api: Optional[str] = typer.Option(None, "--prefect-api", help="Prefect API URL, to find the indexing run"),
            wait_for_index: bool = typer.Option(False, "--wait-for-index", help="start before the first index is published")) -> None:
    """Serve search over HTTP, with a web page at /: models and index loaded once, new index versions switched in hot."""
    from regionrank.flows.api.service import run_api
    from regionrank.flows.config import SearchConfig

    ws = _workspace(workspace)
    try:
        run_api(ws, host=host, port=port, token=token, workers=workers, threads_per_query=threads_per_query, processes=processes, poll_interval=poll,
                cors_origins=tuple(cors_origin), search=SearchConfig(rerank_k=rerank_k, fusion=fusion),
                prefect_ui_url=prefect_ui, prefect_api_url=prefect_api, wait_for_index=wait_for_index,
                on_listening=lambda url: console.print(f"regionrank search service for {ws.root} at {url}/ (Ctrl-C stops it)"))
    except (ValueError, OSError) as exc:
        _fail(exc)


@app.command("demo")
def demo_cmd(workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help="default: a fresh temporary folder"),
             no_orchestrator: bool = _NOORCH) -> None:
    """The main job: index the sample photos with the pretrained demo detector and the zero-shot
    label-grounded encoder on the embedded Prefect backend, then run a few searches."""
    import tempfile

    from regionrank.flows import commands
    from regionrank.flows.config import SearchConfig

    root = workspace or Path(tempfile.mkdtemp(prefix="regionrank-demo-"))
    try:
        photos = commands.demo_images()
    except FileNotFoundError as exc:
        _fail(exc)
    console.print(f"indexing {photos} into workspace {root}")
    rep = _run([photos], root, False, "ssd-mobilenet-coco", None, "grounded", None, None, None, no_orchestrator, 0.0)
    _print_report(rep)
    ws = _workspace(root)
    for q in commands.DEMO_QUERIES:
        hits = commands.search(ws, q, SearchConfig(k=3))
        _print_hits(q, hits, commands.region_labels(ws, [h.image_id for h in hits]))
    console.print(
        "This demo uses a COCO SSD detector and the zero-shot label-grounded encoder (a baseline, not TERAN). "
        "For bottom-up features and a trained TERAN model: regionrank index DIR --detector-weights PATH --checkpoint DIR."
    )


@app.command("status")
def status_cmd(workspace: Optional[Path] = _WS, runs: int = typer.Option(10, "--runs", help="recent flow runs to list")) -> None:
    """What is stored, the index versions, and recent flow runs."""
    from regionrank.flows import commands

    st = commands.status(_workspace(workspace), recent_runs=runs)
    console.print_json(data=st, default=str)
    for v in st["index_versions"]:
        if v["damaged"]:
            err.print(f"[red]index version {v['version']} is damaged:[/red] {'; '.join(v['damaged'])}. "
                      f"Roll back past it or rebuild (regionrank index); search opens the newest intact version.")


@app.command("detectors")
def detectors_cmd() -> None:
    """List the registered detectors."""
    from regionrank.extractors import list_detectors

    for name in list_detectors():
        console.print(name)


@app.command("train")
def train_cmd(captions: Path = typer.Argument(..., help="caption table (.parquet) or Karpathy JSON"),
              model: str = typer.Option("teran-coco", "--model", help="a config in encoders/model_configs: teran-coco | teran-f30k | teran-tiny | scan-{f30k,coco}-{t2i,i2t}-{lse,avg}; or a checkpoint folder to start from (e.g. from import-model)"),
              out: Optional[Path] = typer.Option(None, "--out", help="checkpoint folder [default: WORKSPACE/checkpoints/MODEL]"),
              epochs: Optional[int] = typer.Option(None), batch_size: Optional[int] = typer.Option(None),
              lr: Optional[float] = typer.Option(None), seed: int = typer.Option(0), device: str = typer.Option("auto"),
              workspace: Optional[Path] = _WS) -> None:
    """Train TERAN or SCAN on the workspace's region shards (a checkpoint every epoch; resumes after a crash)."""
    from regionrank.flows import commands
    from regionrank.flows.runtime import fast_flow_settings

    ws = _workspace(workspace)
    try:
        cap = commands.caption_table(captions, ws)
        from regionrank.flows.train import train_flow

        with fast_flow_settings():
            res = train_flow(ws, str(cap), model=model, out_dir=str(out) if out else None, epochs=epochs,
                             batch_size=batch_size, lr=lr, seed=seed, device=device)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        _fail(exc)
    t = Table(title=f"training {res['model']}")
    for col in ("epoch", "loss", "lr", "seconds", "val rsum"):
        t.add_column(col)
    for e in res["epochs"]:
        t.add_row(str(e["epoch"]), f"{e['loss']:.4f}", f"{e['lr']:.2e}", f"{e['seconds']:.1f}",
                  f"{(e.get('val') or {}).get('rsum', float('nan')):.1f}")
    console.print(t)
    console.print(f"checkpoint: {res['checkpoint']}")


@app.command("evaluate")
def evaluate_cmd(checkpoint: Path = typer.Argument(..., help="checkpoint folder"),
                 captions: Path = typer.Argument(..., help="caption table (.parquet), Karpathy JSON or SCAN precomp folder"),
                 split: str = typer.Option("test", "--split"), protocol: Optional[str] = typer.Option(None, "--protocol",
                 help="coco1k | coco5k | f30k1k (default: all images of the split)"),
                 save_sims: Optional[Path] = typer.Option(None, "--save-sims", help="write the [images, captions] scores (.npy)"),
                 namespace: str = typer.Option("coco", help="SCAN precomp folder: the id namespace given to import-features"),
                 device: str = typer.Option("auto"), workspace: Optional[Path] = _WS) -> None:
    """Image-to-text and text-to-image R@1/5/10, medr, meanr and rsum of a checkpoint."""
    from regionrank.flows import commands
    from regionrank.flows.runtime import fast_flow_settings

    ws = _workspace(workspace)
    try:
        cap = commands.caption_table(captions, ws, split=split, namespace=namespace)
        from regionrank.flows.train import evaluate_flow

        with fast_flow_settings():
            res = evaluate_flow(ws, str(checkpoint), str(cap), split=split, protocol=protocol, device=device,
                                save_sims=str(save_sims) if save_sims else None)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        _fail(exc)
    t = Table(title=f"evaluation on {split}")
    for col in ("direction", "R@1", "R@5", "R@10", "medr", "meanr"):
        t.add_column(col)
    for d in ("i2t", "t2i"):
        m = res[d]
        t.add_row(d, *(f"{m[k]:.1f}" for k in ("r1", "r5", "r10", "medr", "meanr")))
    console.print(t)
    console.print(f"rsum {res['rsum']:.1f}")
    if save_sims:
        console.print(f"similarity matrix written to {save_sims}")


@app.command("import-model")
def import_model_cmd(fmt: str = typer.Argument(..., help="scan | teran"),
                     checkpoint: Path = typer.Argument(..., help="the reference's *.pth.tar"),
                     out: Path = typer.Option(..., "--out", help="regionrank checkpoint folder to write"),
                     vocab: Optional[Path] = typer.Option(None, "--vocab", help="SCAN: *_vocab.json or vocab.pkl"),
                     bert_config: Optional[Path] = typer.Option(None, "--bert-config",
                                                                help="TERAN: BERT config.json (default: from the weights)")) -> None:
    """Convert a SCAN or TERAN checkpoint you hold into a regionrank checkpoint folder."""
    from regionrank.flows.import_model import import_model

    try:
        res = import_model(fmt, checkpoint, out, vocab=vocab, bert_config=bert_config)
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)
    console.print(f"{res['kind']} checkpoint written to {res['checkpoint']}: {res['summary']}")
    for key in res["unexpected"]:
        console.print(f"[yellow]unexpected key not loaded[/] {key}")


@app.command("import-features")
def import_cmd(fmt: str = typer.Argument(..., help="scan-precomp | tsv | tsv-airsplay | milvlg-npz"),
               paths: list[Path] = typer.Argument(..., help="SCAN precomp folder, TSV file(s), or npz folder"),
               split: str = typer.Option("test", help="SCAN split (train, dev, test, testall)"),
               namespace: str = typer.Option("coco", help="id namespace of the source dataset (coco, f30k)"),
               workspace: Optional[Path] = _WS) -> None:
    """Import region features you already hold (SCAN precomp, bottom-up TSV, MILVLG npz)."""
    from regionrank.flows.runtime import fast_flow_settings

    ws = _workspace(workspace)
    try:
        from regionrank.flows.import_features import import_features_flow

        with fast_flow_settings():
            res = import_features_flow(ws, fmt, [str(p) for p in paths], split=split, namespace=namespace)
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)
    console.print(f"imported {res['written']} images ({res['skipped']} already stored, {res['failed']} failed)")


@app.command("serve")
def serve_cmd(watch: Path = typer.Argument(..., help="folder to reindex on a schedule"),
              cron: Optional[str] = typer.Option(None, help="cron schedule of the reindex, e.g. '*/10 * * * *'"),
              interval: Optional[float] = typer.Option(None, help="reindex every INTERVAL seconds"),
              server: bool = typer.Option(True, "--server/--embedded",
                                          help="start a local Prefect server with the UI (default) or use the embedded backend"),
              database_url: Optional[str] = typer.Option(None, help="Postgres URL for the server (default SQLite)"),
              port: Optional[int] = typer.Option(None, help="server port (default: a free one)"),
              api: bool = typer.Option(True, "--api/--no-api", help="also start the search service (`regionrank api`) on 127.0.0.1"),
              api_port: int = typer.Option(8765, "--api-port", help="port of the search service"),
              workspace: Optional[Path] = _WS) -> None:
    """Create the deployments (scheduled reindex of WATCH, on-demand pipeline and evaluate) and serve them,
    with the search service beside them."""
    from regionrank.flows.settings import resolve_config

    ws = _workspace(workspace)
    try:
        cfg = resolve_config(ws, [watch], lock_timeout=600.0)
    except ValueError as exc:
        _fail(exc)
    srv = None
    prefect_settings: Any = contextlib.nullcontext()
    if server and "PREFECT_API_URL" not in os.environ:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from regionrank.flows.prefect_server import start_local_server

        srv = start_local_server(Path(os.environ["PREFECT_HOME"]), port=port, database_url=database_url)
        os.environ["PREFECT_API_URL"] = srv.api_url  # for the flow-run processes the runner starts
        # Prefect read its settings at import: without this the runner served against a temporary server
        prefect_settings = temporary_settings(updates={PREFECT_API_URL: srv.api_url})
        console.print(f"Prefect UI: {srv.ui_url}  (API {srv.api_url}; server log {srv.log_path})")
    search_service = None
    if api:
        from regionrank.flows.api.service import start_api_process

        search_service = start_api_process(ws, port=api_port, log_path=ws.root / "api.log",
                                           prefect_ui_url=srv.ui_url if srv else None, prefect_api_url=srv.api_url if srv else None)
        console.print(f"search service: http://127.0.0.1:{api_port}/  (log {ws.root / 'api.log'})")
    try:
        from regionrank.flows.deployments import make_deployments, serve_deployments

        with prefect_settings:
            deployments = make_deployments(cfg, cron=cron, interval=interval)
            serve_deployments(deployments)
    except ValueError as exc:
        _fail(exc)
    finally:
        if search_service is not None:
            search_service.terminate()
            try:
                search_service.wait(timeout=30)
            except subprocess.TimeoutExpired:
                search_service.kill()
        if srv is not None:
            srv.stop()


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    app()


if __name__ == "__main__":
    main()

"""Flows ``index-images`` (the whole pipeline, as subflows) and ``reindex`` (new images only).

Both hold the workspace's pipeline lock for their whole run: a second run on the same
workspace waits ``lock_timeout`` seconds, then fails with a message naming the holder.
Idempotence lives in the library (stores skip what they hold, the index skips ids it
has), so re-running after a crash or Ctrl-C finishes the work without duplicates.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from regionrank.flows import monitoring
from regionrank.flows.build_index import build_index_flow, index_report_rows
from regionrank.flows.config import EncodeConfig, ExtractConfig, IndexConfig, PipelineConfig, Workspace
from regionrank.flows.encode import encode_flow
from regionrank.flows.extract import extract_regions_flow

__all__ = ["index_images_flow", "load_workspace_config", "reindex_flow", "save_workspace_config"]

CONFIG_FILE = "regionrank.json"


def save_workspace_config(ws: Workspace, extract: ExtractConfig, encode: EncodeConfig, index: IndexConfig) -> None:
    """Remember which detector/encoder built this workspace; refuse to mix in another one."""
    path = ws.root / CONFIG_FILE
    new = {"extract": json.loads(extract.model_dump_json()), "encode": json.loads(encode.model_dump_json()),
           "index": json.loads(index.model_dump_json())}
    if path.exists():
        old = json.loads(path.read_text())
        for stage, key in (("extract", "detector"), ("encode", "encoder")):
            if old[stage][key] != new[stage][key]:
                raise ValueError(
                    f"workspace {ws.root} was built with {key} {old[stage][key]!r}, this run asks for {new[stage][key]!r}; "
                    f"use another --workspace, or the same {key}"
                )
    ws.root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(new, indent=2))
    tmp.replace(path)


def load_workspace_config(ws: Workspace) -> tuple[ExtractConfig, EncodeConfig, IndexConfig]:
    """The configuration a workspace was built with.

    Raises:
        FileNotFoundError: nothing was indexed in this workspace yet.
    """
    path = ws.root / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"no regionrank workspace at {ws.root} (missing {CONFIG_FILE}); run `regionrank index DIR` first")
    data = json.loads(path.read_text())
    return ExtractConfig(**data["extract"]), EncodeConfig(**data["encode"]), IndexConfig(**data["index"])


def _task_runner(dask_address: str | None) -> Any:
    if not dask_address:
        return None
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(address=dask_address)


def _with_runner(f: Any, dask_address: str | None) -> Any:
    runner = _task_runner(dask_address)
    return f.with_options(task_runner=runner) if runner is not None else f


def _run_stages(cfg: PipelineConfig, images: list[str], incremental: bool) -> dict[str, Any]:
    from regionrank.storage import exclusive_lock

    logger = get_run_logger()
    ws = cfg.workspace
    t0 = time.perf_counter()
    with exclusive_lock(ws.lock, timeout=cfg.lock_timeout):
        save_workspace_config(ws, cfg.extract, cfg.encode, cfg.index)
        ext = _with_runner(extract_regions_flow, cfg.dask_address)(images, ws, cfg.extract)
        enc = _with_runner(encode_flow, cfg.dask_address)(ws, cfg.encode, cfg.extract.detector, ext["image_ids"])
        if incremental:
            manifest = build_index_flow(ws, cfg.index, image_ids=ext["image_ids"])
        else:
            manifest = build_index_flow(ws, cfg.index, image_ids=None)
    wall = time.perf_counter() - t0
    from regionrank.flows.components import is_random_init

    notes = is_random_init(cfg.extract, cfg.encode)
    for n in notes:
        logger.warning(n)
    report = {
        "images": len(images), "stored": len(ext["image_ids"]), "extracted": ext["extracted"],
        "skipped_existing": ext["skipped"], "failed": ext["failed"], "regions": ext["regions"],
        "encoded": enc["encoded"], "index_version": manifest.get("version"), "wall_seconds": round(wall, 2),
        "extract_images_per_s": ext["images_per_s"], "encode_images_per_s": enc["images_per_s"],
        "failures": ext["failures"], "notes": notes,
    }
    monitoring.markdown_report(
        "run-report", "regionrank run report",
        {
            "Throughput": {"images given": len(images), "newly extracted": ext["extracted"], "already stored": ext["skipped"],
                           "failed": ext["failed"], "extract images/s": ext["images_per_s"],
                           "encode images/s": enc["images_per_s"], "wall seconds": round(wall, 2)},
            "Regions": {"detector": cfg.extract.detector, "regions in this batch": ext["regions"],
                        "regions per image": round(ext["regions"] / max(len(ext["image_ids"]), 1), 2),
                        "encoder": cfg.encode.encoder},
            "Index": "\n".join(
                [f"version {manifest.get('version')} ({', '.join(manifest.get('history', [])[-1:])})", "",
                 "| index | spec | vectors | recall@k (measured at build) | memory MB |", "|---|---|---|---|---|"]
                + [f"| {r['index']} | {r['spec']} | {r['vectors']} | {r['recall_at_k']} | {r['memory_mb']} |"
                   for r in index_report_rows(manifest)]),
            "Notes": "\n".join(f"- {n}" for n in notes) or "all models loaded from weights",
        },
    )
    return report


def expand_images(paths: list[Path]) -> list[str]:
    """Folders are walked for image files; files are taken as given (bad ones fail later, recorded)."""
    from regionrank.extractors.pipeline import list_images

    out: list[str] = []
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"image path not found: {p}; pass an existing folder or image file")
        out.extend(str(x) for x in (list_images(p) if p.is_dir() else [p]))
    return out


@flow(name="index-images")
def index_images_flow(cfg: PipelineConfig, rebuild: bool = False) -> dict[str, Any]:
    """The whole pipeline over ``cfg.images``: extract-regions -> encode -> build-index (subflows).

    The index is updated incrementally when one exists (a new version either way);
    ``rebuild=True`` retrains it from every stored embedding.
    """
    return _run_stages(cfg, expand_images(cfg.images), incremental=not rebuild)


@flow(name="reindex")
def reindex_flow(cfg: PipelineConfig) -> dict[str, Any]:
    """A new batch of images: hash contents, process only images not stored yet, add them to the index
    incrementally and publish a new index version."""
    return _run_stages(cfg, expand_images(cfg.images), incremental=True)

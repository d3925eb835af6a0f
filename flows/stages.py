"""The pipeline's stages as plain functions (no Prefect): both run paths execute exactly these.

``regionrank index --no-orchestrator`` calls them in order in this process; the Prefect flows
wrap each in a task (``flows/tasks.py``) and fan the chunked ones out with ``.map``. Each stage
is one library call; the summaries below only add up what the stages returned.

Order (:data:`PIPELINE_STAGES`): expand the inputs -> identify and extract the missing images
(each file read once: hashed, then decoded from the same bytes; unreadable inputs are recorded
in the store's failure table) -> encode -> add to or build the index
(:func:`regionrank.index.update_or_build`).

Given boxes (``--boxes FILE``, :attr:`ExtractConfig.boxes_file`): :func:`check_given_boxes` reads
the file and checks it against the inputs and the detector before any work; each extraction
chunk reads it again (a path travels, not the boxes) and describes its images from their boxes;
:func:`check_given_boxes_matched` then refuses image ids that named no input.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

from regionrank.flows.config import EncodeConfig, ExtractConfig, IndexConfig, Workspace

__all__ = [
    "PIPELINE_STAGES",
    "check_given_boxes",
    "check_given_boxes_matched",
    "dask_client",
    "encode_regions",
    "expand_inputs",
    "extract_regions",
    "pipeline_report",
    "sum_encode_reports",
    "sum_extract_reports",
    "update_index",
]

Progress = Callable[[int, int], None]


def expand_inputs(paths: list[Path]) -> list[str]:
    """Folders are walked for image files; files are taken as given (bad ones fail later, recorded).

    Raises:
        FileNotFoundError: a given path does not exist.
    """
    from regionrank.extractors import list_images

    out: list[str] = []
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"image path not found: {p}; pass an existing folder or image file")
        out.extend(list_images(p) if p.is_dir() else [str(p)])
    return out


def check_given_boxes(images: list[str], cfg: ExtractConfig) -> int:
    """Before any work: the boxes file (if any) parses, names only images among ``images`` (by path; content
    ids are matched when the files are read) and the detector can describe given boxes. Returns its entry count.

    Raises:
        FileNotFoundError: the boxes file does not exist.
        ValueError: a malformed line or box, a path that is not an input, or a detector without given-box mode.
    """
    if cfg.boxes_file is None:
        return 0
    from regionrank.extractors.detector import BoxDescriber
    from regionrank.extractors.given_boxes import read_boxes_file
    from regionrank.flows import components

    given = read_boxes_file(cfg.boxes_file)
    given.require_paths_among(images)
    if not isinstance(components.load_detector(cfg), BoxDescriber):
        raise ValueError(f"--boxes needs a detector that describes given boxes; {cfg.detector!r} does not: "
                         f"use --detector butd-r101-c4, or drop --boxes")  # fmt: skip
    return len(given)


def extract_regions(paths: list[str], ws: Workspace, cfg: ExtractConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Identify ``paths`` (one read each) and extract regions of those not stored yet (``extractors.extract``);
    the images named in ``cfg.boxes_file`` are described from their given boxes instead."""
    from regionrank.extractors import extract
    from regionrank.flows import components

    given = None
    if cfg.boxes_file is not None:
        from regionrank.extractors.given_boxes import read_boxes_file

        given = read_boxes_file(cfg.boxes_file).restricted_to(paths)
    rep = extract(paths, ws.regions, detector=components.load_detector(cfg), batch_size=cfg.batch_size,
                  num_workers=cfg.num_workers, rows_per_shard=cfg.rows_per_shard, progress=progress, given_boxes=given)
    return {
        "images": rep.n_seen, "extracted": rep.n_extracted, "skipped": rep.n_skipped_existing,
        "duplicates": rep.n_duplicates, "failed": rep.n_failed, "seconds": round(rep.seconds, 3),
        "failures": rep.failures, "stage_seconds": {k: round(v, 3) for k, v in rep.stage_seconds.items()},
        "image_ids": rep.image_ids, "given_boxes": rep.n_given_boxes, "given_boxes_unmatched": rep.given_boxes_unmatched,
    }


def check_given_boxes_matched(cfg: ExtractConfig, reports: list[dict[str, Any]]) -> None:
    """After extraction: every image id of the boxes file named an input in one of the chunks.

    Raises:
        ValueError: ids that matched no input (the images extracted stay stored; a re-run resumes).
    """
    if cfg.boxes_file is None or not reports:
        return
    unmatched = set.intersection(*(set(r.get("given_boxes_unmatched", ())) for r in reports))
    if unmatched:
        names = sorted(unmatched)
        raise ValueError(
            f"{cfg.boxes_file}: image id {names[0]!r}{f' (and {len(names) - 1} more)' if len(names) > 1 else ''} "
            f"is the content id of none of the images of this run (the other images are stored); correct the id, "
            f"or add its image to the run, and run again"
        )


def encode_regions(image_ids: list[str], ws: Workspace, cfg: EncodeConfig, detector: str,
                   progress: Progress | None = None) -> dict[str, Any]:
    """Embed ``image_ids`` (region store -> image embedding store; those already embedded are skipped)."""
    from regionrank.flows import components

    rep = components.encode_images(cfg, detector, ws, image_ids, progress=progress)
    return {"images": len(image_ids), "encoded": rep.written, "skipped": rep.skipped_existing, "seconds": round(rep.seconds, 3)}


def update_index(ws: Workspace, image_ids: list[str] | None, cfg: IndexConfig, *, rebuild: bool = False,
                 dask_address: str | None = None) -> dict[str, Any]:
    """Add ``image_ids`` to the current index version, or build a new one from every stored embedding
    (``rebuild``, ``image_ids=None`` or no version yet): :func:`regionrank.index.update_or_build`. With
    ``dask_address`` a build is sharded over that Dask cluster's workers (``regionrank.index.shards``), which
    must reach the workspace by the same path."""
    import json

    from regionrank.flows.device import resolve_faiss_gpus
    from regionrank.index import update_or_build

    with dask_client(dask_address) as client:
        manifest = update_or_build(ws.index_dir, ws.image_embeddings, image_ids, rebuild=rebuild,
                                   ngpu=resolve_faiss_gpus(cfg.ngpu), kind=cfg.kinds, memory_budget=cfg.memory_budget,
                                   target_recall=cfg.target_recall, seed=cfg.seed, executor=client)
    result: dict[str, Any] = json.loads(manifest.to_json())
    return result


@contextlib.contextmanager
def dask_client(address: str | None) -> Iterator[Any]:
    """A ``distributed.Client`` on the scheduler at ``address`` for the block (closed after; the cluster
    stays up), or ``None`` without an address.

    Raises:
        RuntimeError: ``distributed`` is not installed.
    """
    if not address:
        yield None
        return
    try:
        from distributed import Client
    except ImportError as exc:
        raise RuntimeError(f"--dask {address} needs dask.distributed: pip install distributed") from exc
    with Client(address, set_as_default=False, timeout=60) as client:
        yield client


PIPELINE_STAGES = (expand_inputs, extract_regions, encode_regions, update_index)
"""The stages in the order both run paths execute them."""


def sum_extract_reports(ws: Workspace, reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary of the :func:`extract_regions` reports of a run's chunks (in input order)."""
    from regionrank.storage import RegionStore

    image_ids = list(dict.fromkeys(i for r in reports for i in r["image_ids"]))
    regions = RegionStore(ws.regions).read_rows(image_ids, columns=["num_regions"]).column(0).to_numpy()
    seconds = sum(r["seconds"] for r in reports)
    extracted = sum(r["extracted"] for r in reports)
    return {
        "image_ids": image_ids, "extracted": extracted, "skipped": sum(r["skipped"] for r in reports),
        "failed": sum(r["failed"] for r in reports), "failures": [f for r in reports for f in r["failures"]],
        "seconds": round(seconds, 3), "images_per_s": round(extracted / seconds, 3) if seconds else None,
        "regions": int(regions.sum()), "given_boxes": sum(r.get("given_boxes", 0) for r in reports),
    }


def sum_encode_reports(image_ids: list[str], reports: list[dict[str, Any]], *, already_stored: int = 0) -> dict[str, Any]:
    """One summary of the :func:`encode_regions` reports of a run's chunks (``already_stored``: ids left out of them)."""
    seconds = sum(r["seconds"] for r in reports)
    encoded = sum(r["encoded"] for r in reports)
    return {"image_ids": list(image_ids), "encoded": encoded, "skipped": already_stored + sum(r["skipped"] for r in reports),
            "seconds": round(seconds, 3), "images_per_s": round(encoded / seconds, 3) if seconds else None}


def pipeline_report(images: list[str], ext: dict[str, Any], enc: dict[str, Any], manifest: dict[str, Any],
                    wall_seconds: float, notes: list[str]) -> dict[str, Any]:
    """The run report both run paths return (counts, throughput, index version, failures, notices)."""
    return {
        "images": len(images), "stored": len(ext["image_ids"]), "extracted": ext["extracted"],
        "skipped_existing": ext["skipped"], "failed": ext["failed"], "regions": ext["regions"],
        "encoded": enc["encoded"], "given_boxes": ext.get("given_boxes", 0), "index_version": manifest.get("version"), "wall_seconds": round(wall_seconds, 2),
        "extract_images_per_s": ext["images_per_s"], "encode_images_per_s": enc["images_per_s"],
        "failures": ext["failures"], "notes": notes,
    }

"""``extract``: images on disk -> region feature shards, through any registered detector.

The run, in order, one window of inputs (``read_window`` images) at a time:

1. list the inputs (a folder is walked recursively for image extensions);
2. identify: a thread pool reads every file ONCE (:func:`read_image_bytes`), hashes the
   bytes (the image id) and reads the header from memory (size after EXIF orientation);
   unreadable inputs (a symlink loop, a folder, a truncated file...) become failures here,
   recorded in the store's failures table;
3. duplicate contents and ids already in the store are skipped (one ``missing`` call);
4. the rest is grouped by the detector's network input size (images of similar
   aspect ratio resize to the same size), so a batch stacks without padding and
   batched features equal one-by-one features up to kernel rounding;
5. a ``DataLoader`` decodes the bytes read in step 2 (no second read, no re-hash) and
   pre-processes them in worker processes;
6. the detector runs under ``torch.inference_mode`` (autocast and channels_last
   on CUDA are the detector's business), and every image becomes one
   :class:`storage.RegionRecord` written through ``RegionStore.writer``, with the
   detector name, config hash and weights hash as provenance.

Given boxes (``given_boxes``, ``regionrank index --boxes``): the images named get the
detector's features, classes and attributes for exactly those boxes
(:meth:`~extractors.detector.BoxDescriber.describe_boxes`) instead of detections; their
records' ``config_hash`` covers the boxes (:func:`extractors.given_boxes.given_boxes_config`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from regionrank.extractors.decode import DecodeLimits, ImageDecodeError, decode_image, probe_image, read_image_bytes
from regionrank.extractors.detector import (
    BoxDescriber,
    Detections,
    Detector,
    PreparedImage,
    Preprocessor,
    StageTimer,
    config_hash,
    get_detector,
)
from regionrank.extractors.given_boxes import (
    GivenBoxes,
    GivenBoxesEntry,
    as_given_boxes,
    check_boxes_inside,
    given_boxes_config,
)
from regionrank.storage import RegionRecord, RegionStore, image_id_for_bytes

__all__ = ["IMAGE_EXTENSIONS", "ExtractReport", "extract", "list_images"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


@dataclass
class ExtractReport:
    """What one :func:`extract` run did.

    Attributes:
        n_seen: inputs given (after listing a folder).
        n_extracted: images newly written to the store.
        n_skipped_existing: inputs whose image id was already stored.
        n_duplicates: inputs whose bytes equal an earlier input of this run (stored once).
        n_failed: unreadable inputs (recorded in the store's failures table).
        failures: ``{"uri", "reason"}`` per failed input.
        seconds: wall-clock seconds of the whole run.
        stage_seconds: seconds per stage: ``hash`` (identification: the one read, the hash and
            the header, wall), ``decode`` and
            ``transform`` (summed over worker processes), ``load_wait`` (main process
            waiting for the loader), ``trunk``, ``rpn``, ``roi_head``, ``nms``
            (bottom-up; other detectors name their own stages), ``write``.
        detector / config_hash / weights_hash: provenance written to the shards.
        image_ids: content ids of the readable inputs now in the store (newly extracted or
            already there), in input order without duplicates: what later stages work on.
        n_given_boxes: images newly described from given boxes (counted in ``n_extracted`` too).
        given_boxes_unmatched: keys of ``given_boxes`` that named no input of the run (only
            content ids can be left: a path that is not an input is refused before any work).
    """

    n_seen: int = 0
    n_extracted: int = 0
    n_skipped_existing: int = 0
    n_duplicates: int = 0
    n_failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    detector: str = ""
    config_hash: str = ""
    weights_hash: str = ""
    image_ids: list[str] = field(default_factory=list)
    n_given_boxes: int = 0
    given_boxes_unmatched: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.n_extracted / self.seconds if self.seconds > 0 else 0.0


def _worker_context() -> Any:
    """Decode workers start from a forkserver, not by forking this process.

    A process that runs an orchestrator (Prefect's API clients and log handlers, thread pools)
    is not safe to fork: forked DataLoader workers then die at exit ("exited unexpectedly with
    exit code 1"). A forkserver started once per process, with this module preloaded, gives
    clean workers at fork speed.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["regionrank.extractors.pipeline"])
    return ctx


def list_images(images: Sequence[str | os.PathLike[str]] | str | os.PathLike[str]) -> list[str]:
    """Expand ``images`` into a list of file paths.

    A folder is walked recursively and yields files with an image extension
    (:data:`IMAGE_EXTENSIONS`, case-insensitive), sorted; a sequence is taken as
    given (entries that are not images fail later, with a reason).

    Raises:
        FileNotFoundError: ``images`` is a single path that does not exist.
        TypeError: ``images`` is neither a path nor a sequence of paths.
    """
    if isinstance(images, str | os.PathLike):
        root = Path(images)
        if root.is_dir():
            found = [
                str(Path(dirpath) / name)
                for dirpath, _, names in os.walk(root)
                for name in names
                if Path(name).suffix.lower() in IMAGE_EXTENSIONS
            ]
            return sorted(found)
        if root.exists():
            return [str(root)]
        raise FileNotFoundError(f"image folder or file {str(root)!r} does not exist")
    if isinstance(images, bytes) or not isinstance(images, Sequence):
        raise TypeError(f"images must be a folder path or a sequence of paths; got {type(images).__name__}")
    return [str(p) for p in images]


@dataclass
class _Item:
    uri: str
    image_id: str
    width: int
    height: int
    data: bytes = field(default=b"", repr=False)  # the file's bytes, held from identification until decoded


@dataclass
class _Sample:
    item: _Item
    prepared: PreparedImage | None
    reason: str | None
    decode_s: float
    transform_s: float


class _DecodeDataset(Dataset[_Sample]):
    """Decodes and pre-processes one image per index (runs in DataLoader workers)."""

    def __init__(self, items: Sequence[_Item], preprocessor: Preprocessor, limits: DecodeLimits) -> None:
        self.items, self.preprocessor, self.limits = list(items), preprocessor, limits

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> _Sample:
        item = self.items[index]
        t0 = time.perf_counter()
        try:
            rgb = decode_image(item.uri, data=item.data, limits=self.limits)  # the bytes hashed at identification
        except ImageDecodeError as exc:
            return _Sample(item, None, exc.reason, time.perf_counter() - t0, 0.0)
        t1 = time.perf_counter()
        prepared = self.preprocessor(rgb)
        return _Sample(item, prepared, None, t1 - t0, time.perf_counter() - t1)


def _collate(samples: list[_Sample]) -> list[_Sample]:
    return samples


def _worker_init(_: int) -> None:
    # Workers only decode and resize: one thread each, so they do not fight the model's threads.
    torch.set_num_threads(1)


def _identify(uri: str, limits: DecodeLimits) -> _Item | tuple[str, str]:
    """Read the file once: its id (sha256 of the bytes), its size from the header, and the bytes to decode."""
    try:
        data = read_image_bytes(uri)
        width, height = probe_image(uri, data, limits)
    except ImageDecodeError as exc:
        return uri, exc.reason
    return _Item(uri, image_id_for_bytes(data), width, height, data)


def _batches(items: Sequence[_Item], preprocessor: Preprocessor, batch_size: int) -> list[list[int]]:
    """Indices grouped by network input size, ``batch_size`` at most, input order kept inside a group."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(preprocessor.target_size(it.width, it.height), []).append(i)
    out = []
    for idxs in groups.values():
        out.extend(idxs[j : j + batch_size] for j in range(0, len(idxs), batch_size))
    return out


def _decode_batches(todo: list[_Item], det: Detector, batch_size: int, num_workers: int, limits: DecodeLimits,
                    timer: StageTimer) -> Iterator[list[_Sample]]:
    """Decoded, pre-processed batches of ``todo`` (from the bytes it holds), timing the loader's stages."""
    loader = DataLoader(
        _DecodeDataset(todo, det.preprocessor, limits),
        batch_sampler=_batches(todo, det.preprocessor, batch_size),
        num_workers=num_workers if todo else 0,
        collate_fn=_collate,
        pin_memory=det.device.type == "cuda",
        worker_init_fn=_worker_init if num_workers > 0 else None,
        multiprocessing_context=_worker_context() if num_workers > 0 and todo else None,
    )
    batches: Iterator[list[_Sample]] = iter(loader)
    while True:
        t0 = time.perf_counter()
        batch = next(batches, None)
        timer.add("load_wait", time.perf_counter() - t0)
        if batch is None:
            return
        for s in batch:
            timer.add("decode", s.decode_s)
            timer.add("transform", s.transform_s)
        yield batch


def _to_record(sample: _Sample, det: Any, producer: str = "") -> RegionRecord:
    """The record of one image; ``producer`` (a config hash) overrides the writer's when given."""
    item = sample.item
    return RegionRecord(
        image_id=item.image_id,
        uri=item.uri,
        width=item.width,
        height=item.height,
        boxes=det.boxes.astype(np.float32, copy=False),
        features=det.features,
        class_ids=det.class_ids,
        class_scores=det.class_scores,
        attr_ids=det.attr_ids,
        attr_scores=det.attr_scores,
        config_hash=producer,
    )


def _run_batch(det: Detector, good: list[_Sample], boxed: dict[str, GivenBoxesEntry],
               timer: StageTimer) -> list[tuple[_Sample, Detections, str]]:
    """Detections of a decoded batch, in batch order: detected, or described from the given boxes
    (with the config hash that names those boxes)."""
    plain = [s for s in good if s.item.image_id not in boxed]
    found = dict(zip((id(s) for s in plain), det.detect([s.prepared for s in plain if s.prepared is not None], timer)
                     if plain else [], strict=True))  # fmt: skip
    out = []
    for s in good:
        entry = boxed.get(s.item.image_id)
        if entry is None:
            out.append((s, found[id(s)], ""))
            continue
        assert isinstance(det, BoxDescriber) and s.prepared is not None  # checked before the run
        with timer.stage("given_boxes"):
            described = det.describe_boxes(s.prepared, entry.boxes)
        out.append((s, described, config_hash(given_boxes_config(det.config, entry.boxes))))
    return out


def _check_given_window(given: GivenBoxes, items: list[_Item], todo_ids: set[str], store: RegionStore,
                        det: Detector, used: set[str]) -> dict[str, GivenBoxesEntry]:
    """The given boxes of a window's items (id -> entry), checked before any of them is extracted.

    Raises:
        ValueError: a box outside its image, or an image named in ``given`` that is already
            stored with other regions.
    """
    boxed: dict[str, GivenBoxesEntry] = {}
    for it in items:
        entry = given.lookup(it.uri, it.image_id)
        if entry is None:
            continue
        used.add(entry.key)
        check_boxes_inside(entry, it.width, it.height, it.uri)
        if it.image_id in todo_ids:
            boxed[it.image_id] = entry
        elif store.producer_of(it.image_id) != config_hash(given_boxes_config(det.config, entry.boxes)):
            raise ValueError(
                f"{entry.where}: image {it.uri!r} (id {it.image_id[:12]}...) is already stored with other regions "
                f"(detected, or other given boxes), and a store keeps one record per image; describe the given boxes "
                f"in another workspace (--workspace), or leave this image out of the boxes file"
            )
    return boxed


def extract(
    images: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    store: RegionStore | str | os.PathLike[str],
    *,
    detector: str | Detector = "butd-r101-c4",
    weights: str | os.PathLike[str] | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 2,
    num_workers: int = 2,
    rows_per_shard: int = 256,
    progress: Callable[[int, int], None] | None = None,
    detector_options: dict[str, Any] | None = None,
    limits: DecodeLimits = DecodeLimits(),
    read_window: int = 256,
    given_boxes: GivenBoxes | Mapping[str | os.PathLike[str], Any] | None = None,
) -> ExtractReport:
    """Detect regions in ``images`` and write one :class:`storage.RegionRecord` per new image to ``store``.

    Args:
        images: a folder (walked recursively for image files) or a sequence of file paths.
        store: a :class:`storage.RegionStore` or its root (local path or pyarrow-fs URI).
        detector: a registry name (built with :func:`extractors.get_detector`) or a
            built :class:`Detector` (lets a caller cache the loaded network).
        weights: local weights file for a detector given by name; ``None`` = the
            backend's default (see :func:`extractors.get_detector`).
        device: torch device for a detector given by name.
        batch_size: images per forward pass (images of equal network input size only).
        num_workers: decoding worker processes (0 = decode in this process).
        rows_per_shard: images per Parquet shard.
        progress: called as ``progress(done, total)`` after each batch, ``total``
            being the number of images to extract (an upper bound until the last window is read).
        detector_options: backend options for a detector given by name.
        limits: accepted image sizes (decompression-bomb and minimum-side limits).
        read_window: inputs identified at a time; each file is read once, and the bytes of a
            window's new images stay in memory until they are decoded.
        given_boxes: ``{image path or content id: float[n, 4] boxes (x1, y1, x2, y2) in original
            pixels}`` (or :func:`extractors.given_boxes.read_boxes_file`'s result): those images are
            described for exactly these boxes, in this order, instead of detected; the detector
            must implement :class:`extractors.detector.BoxDescriber` (``butd-r101-c4`` does).
            An image already stored from the same boxes is skipped (a re-run resumes).

    Returns:
        :class:`ExtractReport`.

    Raises:
        ValueError: bad ``batch_size`` / ``num_workers`` or detector options; bad given boxes
            (malformed, inverted, outside the image), a path in ``given_boxes`` that is none of
            ``images``, an image of ``given_boxes`` already stored with other regions, or a
            detector that cannot describe given boxes. Checks that need an image's size or id
            run when its window is read: the images of earlier windows stay stored.
        FileNotFoundError: ``images`` path does not exist.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0; got {num_workers}")
    if read_window < 1:
        raise ValueError(f"read_window must be >= 1; got {read_window}")
    t_start = time.perf_counter()
    uris = list_images(images)
    given = as_given_boxes(given_boxes)
    if given is not None:
        given.require_paths_among(uris)
    det: Detector
    if isinstance(detector, str):
        det = get_detector(detector, weights=weights, device=device, **(detector_options or {}))
    else:
        if weights is not None or detector_options:
            raise ValueError("weights / detector_options apply to a detector given by name; the given Detector is already built")
        det = detector
    if given is not None and not isinstance(det, BoxDescriber):
        raise ValueError(f"detector {det.name!r} cannot describe given boxes; use detector 'butd-r101-c4' "
                         f"(--detector butd-r101-c4) for given boxes, or drop them")  # fmt: skip
    used: set[str] = set()
    region_store = store if isinstance(store, RegionStore) else RegionStore(store)
    report = ExtractReport(n_seen=len(uris), detector=det.name, config_hash=config_hash(det.config),
                           weights_hash=det.weights_hash)  # fmt: skip
    timer = StageTimer(det.device)

    failed: set[str] = set()

    def fail(w: Any, uri: str, reason: str) -> None:
        failed.add(uri)
        w.add_failure(uri, reason)
        report.failures.append({"uri": uri, "reason": reason})
        logger.info("extract: %s failed: %s", uri, reason)

    with region_store.writer(
        detector=det.name, config_hash=report.config_hash, weights_hash=det.weights_hash,
        feature_dim=det.feature_dim, rows_per_shard=rows_per_shard,
    ) as writer:  # fmt: skip
        seen: set[str] = set()
        kept: list[tuple[str, str]] = []  # (uri, image_id) of readable, distinct inputs
        done = shown_total = 0
        for first in range(0, len(uris), read_window):
            window = uris[first : first + read_window]
            with timer.stage("hash"), ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
                identified = list(pool.map(lambda u: _identify(u, limits), window))
            items: list[_Item] = []
            for res in identified:
                if isinstance(res, tuple):
                    fail(writer, *res)
                elif res.image_id in seen:
                    report.n_duplicates += 1
                else:
                    seen.add(res.image_id)
                    items.append(res)
            todo_ids = set(region_store.missing([it.image_id for it in items]))
            boxed = _check_given_window(given, items, todo_ids, region_store, det, used) if given is not None else {}
            report.n_skipped_existing += len(items) - len(todo_ids)
            todo = [it for it in items if it.image_id in todo_ids]
            # inputs not identified yet count as to-do: ``total`` is an upper bound until the last window
            total = done + len(todo) + len(uris) - first - len(window)
            for batch in _decode_batches(todo, det, batch_size, num_workers, limits, timer):
                good = []
                for s in batch:
                    if s.reason is not None:
                        fail(writer, s.item.uri, s.reason)
                    else:
                        good.append(s)
                if good:
                    dets = _run_batch(det, good, boxed, timer)
                    with timer.stage("write"):
                        for s, d, producer in dets:
                            if writer.write(_to_record(s, d, producer)):
                                report.n_extracted += 1
                                report.n_given_boxes += bool(producer)
                done += len(batch)
                if progress is not None:
                    progress(done, total)
                    shown_total = total
            kept.extend((it.uri, it.image_id) for it in items)  # the window's bytes are let go
        if progress is not None and done != shown_total:
            progress(done, done)  # the last windows held nothing new: the bound was loose
        t0 = time.perf_counter()
    timer.add("write", time.perf_counter() - t0)  # closing publishes the last shard
    report.n_failed = len(report.failures)
    if given is not None:  # paths were checked up front (an unreadable input is a failure, not a stray key)
        report.given_boxes_unmatched = [e.key for e in given.entries if e.is_image_id and e.key not in used]
    report.image_ids = [image_id for uri, image_id in kept if uri not in failed]
    report.stage_seconds = dict(timer.seconds)
    report.seconds = time.perf_counter() - t_start
    return report

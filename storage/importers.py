"""Importers for region-feature files people already hold (ALGORITHMS.md §2).

* SCAN precomp: ``{split}_ims.npy`` float32 (N, 36, 2048) (or one row per caption) +
  ``{split}_ids.txt``; no boxes or image sizes exist in this format.
* Bottom-up-attention TSV: Anderson's ``generate_tsv.py`` (no header; image_id, image_w,
  image_h, num_boxes, boxes, features; base64 float32) and airsplay's LXMERT-style TSV
  (img_id, img_h, img_w, objects_id, objects_conf, attrs_id, attrs_conf, num_boxes, boxes,
  features; height before width).
* MILVLG per-image ``.npz`` (``x``, ``bbox``, ``image_h``, ``image_w``, ``info``).

Every importer writes :class:`~storage.records.RegionRecord` rows through a
:class:`~storage.shards.RegionStore`, keeps boxes and sizes where the format has them,
records the format as provenance (``detector="import:<format>"``), and is resumable:
images already stored are skipped.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import logging
import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from regionrank.storage.hashing import external_image_id
from regionrank.storage.records import RegionRecord
from regionrank.storage.shards import RegionStore

__all__ = ["ImportReport", "import_bottomup_tsv", "import_milvlg_npz", "import_scan_precomp"]

log = logging.getLogger(__name__)

IdFn = Callable[[str], str]


@dataclass
class ImportReport:
    """What an import did."""

    format: str
    n_seen: int = 0
    n_written: int = 0
    n_skipped_existing: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def _config_hash(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def _id_fn(namespace: str, id_fn: IdFn | None) -> IdFn:
    return id_fn if id_fn is not None else (lambda raw: external_image_id(namespace, raw))


def _write_all(store: RegionStore | str | os.PathLike[str], fmt: str, records: Iterator[RegionRecord | tuple[str, str]],
               feature_dim: int, source_digest: str, rows_per_shard: int) -> ImportReport:
    rs = store if isinstance(store, RegionStore) else RegionStore(store)
    report = ImportReport(format=fmt)
    with rs.writer(detector=f"import:{fmt}", config_hash=_config_hash({"format": fmt}), weights_hash=source_digest,
                   feature_dim=feature_dim, rows_per_shard=rows_per_shard) as w:
        for item in records:
            report.n_seen += 1
            if isinstance(item, tuple):
                w.add_failure(*item)
                report.failures.append(item)
                continue
            if w.write(item):
                report.n_written += 1
            else:
                report.n_skipped_existing += 1
    log.info("imported %s: %d written, %d already stored, %d failed", fmt, report.n_written,
             report.n_skipped_existing, len(report.failures))
    return report


def import_scan_precomp(folder: str | os.PathLike[str], split: str, store: RegionStore | str | os.PathLike[str], *,
                        namespace: str, captions_per_image: int = 5, id_fn: IdFn | None = None,
                        rows_per_shard: int = 256) -> ImportReport:
    """Import SCAN's ``{split}_ims.npy`` (+ ``{split}_ids.txt``).

    The format has no boxes and no image sizes: records get all-zero boxes and a 1x1 size,
    flagged by ``detector="import:scan-precomp"``. The array is memory-mapped, so a 34 GB
    file is streamed, not loaded.

    Raises:
        FileNotFoundError: the ``.npy`` file is missing.
        ValueError: the array is not 3-D float, or the ids file disagrees with it.
    """
    root = Path(folder)
    npy = root / f"{split}_ims.npy"
    if not npy.is_file():
        raise FileNotFoundError(f"SCAN feature file not found: {npy}; expected <folder>/{split}_ims.npy")
    ims = np.load(npy, mmap_mode="r")
    if ims.ndim != 3 or not np.issubdtype(ims.dtype, np.floating):
        raise ValueError(f"{npy} must be a float array of shape (N, regions, D); got {ims.dtype} {ims.shape}")
    ids_path = root / f"{split}_ids.txt"
    raw_ids = [ln.strip() for ln in ids_path.read_text().splitlines() if ln.strip()] if ids_path.is_file() else None
    step = 1
    n = ims.shape[0]
    if raw_ids is not None and len(raw_ids) * captions_per_image == n:
        step = captions_per_image  # one row per caption: 5 identical rows per image
    elif raw_ids is not None and len(raw_ids) == n and n % captions_per_image == 0 and n > 1 and np.array_equal(ims[0], ims[1]):
        step, raw_ids = captions_per_image, raw_ids[::captions_per_image]
    elif raw_ids is None and n % captions_per_image == 0 and n > 1 and np.array_equal(ims[0], ims[1]):
        step = captions_per_image
    n_img = n // step
    if raw_ids is None:
        raw_ids = [str(i) for i in range(n_img)]
    if len(raw_ids) != n_img:
        raise ValueError(f"{ids_path} lists {len(raw_ids)} ids but {npy} holds {n_img} images ({n} rows)")
    to_id = _id_fn(namespace, id_fn)
    regions = ims.shape[1]

    def gen() -> Iterator[RegionRecord]:
        for i in range(n_img):
            yield RegionRecord(
                image_id=to_id(raw_ids[i]), uri=f"scan-precomp://{namespace}/{split}/{raw_ids[i]}", width=1, height=1,
                boxes=np.zeros((regions, 4), np.float32), features=np.asarray(ims[i * step], dtype=np.float32),
            )

    digest = hashlib.sha256(f"{npy.resolve()}:{npy.stat().st_size}".encode()).hexdigest()[:16]
    return _write_all(store, "scan-precomp", gen(), int(ims.shape[2]), digest, rows_per_shard)


def _b64_matrix(text: str, rows: int, dtype: type, what: str, where: str) -> np.ndarray:
    try:
        buf = np.frombuffer(base64.b64decode(text), dtype=dtype)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: field {what} is not valid base64: {exc}") from exc
    if rows == 0:
        return buf.reshape(0, 0)
    if buf.size % rows:
        raise ValueError(f"{where}: field {what} holds {buf.size} values, not a multiple of num_boxes={rows}")
    return buf.reshape(rows, -1)


ANDERSON_FIELDS = ["image_id", "image_w", "image_h", "num_boxes", "boxes", "features"]
AIRSPLAY_FIELDS = ["img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf", "num_boxes", "boxes", "features"]


def import_bottomup_tsv(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
                        store: RegionStore | str | os.PathLike[str], *, variant: str = "anderson",
                        namespace: str, id_fn: IdFn | None = None, rows_per_shard: int = 256) -> ImportReport:
    """Import bottom-up-attention TSV files (one per GPU, e.g. ``out.tsv.0``, ``out.tsv.1``).

    Args:
        variant: ``"anderson"`` (generate_tsv.py: width before height) or ``"airsplay"``
            (LXMERT style, with object/attribute ids and confidences; height before width).

    A malformed line is recorded as a failure (with its line number) and the import goes on.
    """
    if variant not in ("anderson", "airsplay"):
        raise ValueError(f"variant must be 'anderson' or 'airsplay'; got {variant!r}")
    files = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"bottom-up TSV not found: {f}")
    fields = ANDERSON_FIELDS if variant == "anderson" else AIRSPLAY_FIELDS
    csv.field_size_limit(sys.maxsize)
    to_id = _id_fn(namespace, id_fn)
    dims: list[int] = []

    def parse(row: list[str], where: str) -> RegionRecord:
        if len(row) != len(fields):
            raise ValueError(f"{where}: expected {len(fields)} tab-separated fields ({', '.join(fields)}), got {len(row)}")
        item = dict(zip(fields, row))
        n = int(item["num_boxes"])
        boxes = _b64_matrix(item["boxes"], n, np.float32, "boxes", where)
        feats = _b64_matrix(item["features"], n, np.float32, "features", where)
        raw_id = item["image_id"] if variant == "anderson" else item["img_id"]
        w = int(float(item["image_w"] if variant == "anderson" else item["img_w"]))
        h = int(float(item["image_h"] if variant == "anderson" else item["img_h"]))
        extra = {}
        if variant == "airsplay":
            extra = {
                "class_ids": np.frombuffer(base64.b64decode(item["objects_id"]), np.int64).astype(np.int32),
                "class_scores": np.frombuffer(base64.b64decode(item["objects_conf"]), np.float32),
                "attr_ids": np.frombuffer(base64.b64decode(item["attrs_id"]), np.int64).astype(np.int32),
                "attr_scores": np.frombuffer(base64.b64decode(item["attrs_conf"]), np.float32),
            }
        return RegionRecord(image_id=to_id(raw_id), uri=f"tsv://{namespace}/{raw_id}", width=w, height=h,
                            boxes=boxes, features=feats, **extra)

    def gen() -> Iterator[RegionRecord | tuple[str, str]]:
        for f in files:
            with open(f, newline="") as fh:
                for lineno, row in enumerate(csv.reader(fh, delimiter="\t"), start=1):
                    where = f"{f}:{lineno}"
                    try:
                        rec = parse(row, where)
                    except (ValueError, KeyError) as exc:
                        yield (where, str(exc))
                        continue
                    yield rec

    # The feature width is only known from the first valid line; peek it.
    it = gen()
    first: list[RegionRecord | tuple[str, str]] = []
    for item in it:
        first.append(item)
        if isinstance(item, RegionRecord):
            dims.append(item.feature_dim)
            break
    if not dims:
        raise ValueError(f"no valid rows in {[str(f) for f in files]}; check the variant ({variant!r}) and the files")

    def chained() -> Iterator[RegionRecord | tuple[str, str]]:
        yield from first
        yield from it

    digest = hashlib.sha256("|".join(f"{f.resolve()}:{f.stat().st_size}" for f in files).encode()).hexdigest()[:16]
    return _write_all(store, f"bottomup-tsv-{variant}", chained(), dims[0], digest, rows_per_shard)


def import_milvlg_npz(folder: str | os.PathLike[str], store: RegionStore | str | os.PathLike[str], *, namespace: str,
                      id_fn: IdFn | None = None, rows_per_shard: int = 256) -> ImportReport:
    """Import MILVLG bottom-up-attention.pytorch per-image ``.npz`` files from ``folder``.

    The image's original id is the file name up to its first dot (as MILVLG names them).
    ``info`` (a pickled dict) is read with ``allow_pickle=True`` only for its object and
    attribute ids/confidences; only import files you trust.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"MILVLG feature folder not found: {root}")
    files = sorted(root.glob("*.npz"))
    if not files:
        raise ValueError(f"no .npz files in {root}; MILVLG writes one <image>.npz per image")
    to_id = _id_fn(namespace, id_fn)

    def load(f: Path) -> RegionRecord:
        if not zipfile.is_zipfile(f):  # never let np.load fall back to unpickling a whole file
            raise ValueError("not an .npz (zip) archive")
        with np.load(f, allow_pickle=True) as z:
            feats = np.asarray(z["x"], np.float32)
            boxes = np.asarray(z["bbox"], np.float32)
            h, w = int(z["image_h"]), int(z["image_w"])
            info = z["info"].item() if "info" in z.files else {}
        if feats.ndim == 2 and boxes.ndim == 2 and feats.shape[0] != boxes.shape[0] and feats.shape[1] == boxes.shape[0]:
            feats = feats.T  # some MILVLG versions store x as (2048, num_bbox)
        raw = f.name.split(".", 1)[0]
        extra = {}
        if isinstance(info, dict) and "objects_id" in info:
            extra = {
                "class_ids": np.asarray(info["objects_id"]).astype(np.int32),
                "class_scores": np.asarray(info["objects_conf"], np.float32),
                "attr_ids": np.asarray(info["attrs_id"]).astype(np.int32) if "attrs_id" in info else None,
                "attr_scores": np.asarray(info["attrs_conf"], np.float32) if "attrs_conf" in info else None,
            }
        return RegionRecord(image_id=to_id(raw), uri=str(f), width=w, height=h, boxes=boxes, features=feats, **extra)

    def gen() -> Iterator[RegionRecord | tuple[str, str]]:
        for f in files:
            try:
                yield load(f)
            except (ValueError, KeyError, OSError, EOFError) as exc:
                yield (str(f), f"unreadable MILVLG npz: {exc}")

    it = gen()
    first = next(it)
    while isinstance(first, tuple):
        log.warning("%s: %s", *first)
        try:
            first = next(it)
        except StopIteration:
            raise ValueError(f"no readable .npz files in {root}") from None

    def chained() -> Iterator[RegionRecord | tuple[str, str]]:
        yield first
        yield from it

    digest = hashlib.sha256(f"{root.resolve()}:{len(files)}".encode()).hexdigest()[:16]
    return _write_all(store, "milvlg-npz", chained(), first.feature_dim, digest, rows_per_shard)

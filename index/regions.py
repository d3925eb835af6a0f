"""The region matrix: every indexed image's region vectors (float16) and boxes, laid out for random
access by int id and memory-mapped, written into each index version.

The second stage of search needs the exact region vectors of a few thousand candidate images per
query. Read from the Parquet embedding store that costs a row-group decode per candidate shard
(hundreds of milliseconds); here a candidate is two slices of ``.npy`` files opened with
``numpy.load(mmap_mode="r")``, so a query's candidates are one gather from the page cache.

Layout, inside a version directory::

    regions/segments.json            {"segments": ["seg-000001", ...], "dim": E}
    regions/seg-000001.vectors.npy   float16[R_seg, E]   region vectors, image after image
    regions/seg-000001.boxes.npy     float32[R_seg, 4]
    regions/seg-000001.meta.json     {"int_ids": [...], "starts": [...], "counts": [...],
                                      "uri": [...], "width": [...], "height": [...],
                                      "code_error": [...]}                  (compressed layout only)
    regions/seg-000001.codes.npy     uint8[R_seg, C]     (compressed layout only) the region index's
                                                          standalone code of every region vector

With the compressed layout (``index.spec.choose_region_layout``) the first stage re-scores from the codes
(C bytes a region, decoded with the region index's codec) and reads the float16 vectors only for the final
candidates; ``code_error[i]`` is the largest reconstruction error ``max_r ||x_r - decode(code_r)||`` of image
i, which bounds how far a decoded cosine can be from the exact one (the query word is a unit vector).

A full build writes one segment. :func:`index.add_images` writes one more segment holding only the
new images and hard-links the existing (immutable) segment files from the previous version, so an
update costs what it adds, and each version is complete and published atomically with its indexes.
A later segment overrides an earlier one for an int id (an image re-added after removal); removal
needs no rewrite: the id map's liveness decides what search returns.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from regionrank.index.alignment import decode_float16
from regionrank.storage.records import ImageEmbeddingRecord

__all__ = [
    "REGIONS_DIR", "RegionMatrix", "RegionSegment", "StandaloneCodec", "copy_segments", "segment_name", "write_segment",
    "write_segment_files", "write_segment_list",
]

REGIONS_DIR = "regions"
_SEGMENTS = "segments.json"
_SUFFIXES = (".vectors.npy", ".boxes.npy", ".meta.json", ".codes.npy")
_CODE_CHUNK = 1 << 16


class StandaloneCodec(Protocol):
    """What encodes region vectors for the compressed layout (:class:`index.ann.AnnIndex` of an IVF-PQ
    region index implements it)."""

    def encode_standalone(self, x: np.ndarray) -> np.ndarray: ...

    def decode_standalone(self, codes: np.ndarray) -> np.ndarray: ...


@dataclass
class RegionSegment:
    """Images to write as one segment: int ids, their region vectors and boxes, and image metadata."""

    int_ids: list[int] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    uri: list[str] = field(default_factory=list)
    width: list[int] = field(default_factory=list)
    height: list[int] = field(default_factory=list)

    def add(self, int_id: int, vectors: np.ndarray, boxes: np.ndarray, uri: str, width: int, height: int) -> None:
        self.int_ids.append(int(int_id))
        self.vectors.append(np.asarray(vectors, dtype=np.float16))
        self.boxes.append(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
        self.uri.append(uri)
        self.width.append(int(width))
        self.height.append(int(height))


def _segment_names(directory: Path) -> tuple[list[str], int | None]:
    path = directory / REGIONS_DIR / _SEGMENTS
    if not path.exists():
        return [], None
    doc = json.loads(path.read_text())
    return list(doc["segments"]), doc.get("dim")


def _write_segment_list(directory: Path, names: list[str], dim: int) -> None:
    (directory / REGIONS_DIR / _SEGMENTS).write_text(json.dumps({"segments": names, "dim": dim}))


def copy_segments(src_version: Path, dst_version: Path) -> list[str]:
    """Make ``dst_version`` hold the segments of ``src_version`` (hard links; a copy where links fail).

    Returns:
        The segment names copied (empty when ``src_version`` has no region matrix).
    """
    names, dim = _segment_names(src_version)
    if not names:
        return []
    src, dst = src_version / REGIONS_DIR, dst_version / REGIONS_DIR
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        for suffix in _SUFFIXES:
            if not (src / f"{name}{suffix}").exists():  # codes exist in the compressed layout only
                continue
            try:
                os.link(src / f"{name}{suffix}", dst / f"{name}{suffix}")
            except OSError:  # another filesystem, or links unsupported: copy (segments are immutable)
                shutil.copy2(src / f"{name}{suffix}", dst / f"{name}{suffix}")
    _write_segment_list(dst_version, names, int(dim or 0))
    return names


def write_segment(version_dir: Path, segment: RegionSegment, dim: int, codec: StandaloneCodec | None = None) -> str:
    """Append ``segment`` to the region matrix of a staged version directory; returns its name.

    With ``codec`` (the compressed layout) the segment also holds every region's standalone code and each
    image's largest reconstruction error (encoded and decoded in chunks of 65,536 regions).

    Raises:
        ValueError: a vector block does not have ``dim`` columns, or its row count differs from its boxes'.
    """
    names, old_dim = _segment_names(version_dir)
    if old_dim not in (None, 0, dim):
        raise ValueError(f"region matrix of {version_dir} is {old_dim}-d; cannot append {dim}-d vectors")
    name = segment_name(len(names))
    (version_dir / REGIONS_DIR).mkdir(parents=True, exist_ok=True)
    write_segment_files(version_dir, name, segment, dim, codec)
    _write_segment_list(version_dir, [*names, name], dim)
    return name


def segment_name(position: int) -> str:
    """The file-name stem of the segment at ``position`` (0-based) of a region matrix: ``seg-000001``, ..."""
    return f"seg-{position + 1:06d}"


def write_segment_list(version_dir: Path, names: Sequence[str], dim: int) -> None:
    """Make ``names`` (written by :func:`write_segment_files`, in this order) the region matrix of a staged
    version directory; a later segment overrides an earlier one for an int id."""
    _write_segment_list(version_dir, list(names), dim)


def write_segment_files(version_dir: Path, name: str, segment: RegionSegment, dim: int,
                        codec: StandaloneCodec | None = None) -> None:
    """Write the files of one segment named ``name`` into ``version_dir/regions/`` (which must exist), each
    through a temporary name and a rename (a retried writer replaces them whole), without listing it in
    ``segments.json`` (:func:`write_segment_list`): shard tasks of a sharded build write theirs in parallel.

    Raises:
        ValueError: a vector block does not have ``dim`` columns, or its row count differs from its boxes'.
    """
    for i, (v, b) in enumerate(zip(segment.vectors, segment.boxes, strict=True)):
        if v.shape[0] and v.shape[1] != dim:
            raise ValueError(f"image int id {segment.int_ids[i]} has {v.shape[1]}-d region vectors; the matrix is {dim}-d")
        if v.shape[0] != b.shape[0]:
            raise ValueError(f"image int id {segment.int_ids[i]} has {v.shape[0]} region vectors but {b.shape[0]} boxes")
    out = version_dir / REGIONS_DIR
    counts = [int(v.shape[0]) for v in segment.vectors]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist() if counts else []
    vecs = [v for v in segment.vectors if v.shape[0]]
    stacked = np.concatenate(vecs) if vecs else np.zeros((0, dim), np.float16)
    _save_npy(out / f"{name}.vectors.npy", stacked)
    boxes = [b for b in segment.boxes if b.shape[0]]
    _save_npy(out / f"{name}.boxes.npy", np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32))
    meta = {"int_ids": segment.int_ids, "starts": starts, "counts": counts, "uri": segment.uri,
            "width": segment.width, "height": segment.height}
    if codec is not None:
        codes, errors = _encode_regions(codec, stacked)
        _save_npy(out / f"{name}.codes.npy", codes)
        meta["code_error"] = _per_image_max(errors, counts).tolist()
    tmp = out / f".{name}.meta.json.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, out / f"{name}.meta.json")


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _encode_regions(codec: StandaloneCodec, stacked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8[R, C] codes, float32[R] reconstruction errors)`` of stacked vectors, chunk by chunk."""
    codes, errors = [], []
    for s0 in range(0, stacked.shape[0], _CODE_CHUNK):
        x = decode_float16(stacked[s0 : s0 + _CODE_CHUNK])
        c = codec.encode_standalone(x)
        codes.append(c)
        errors.append(np.linalg.norm(x - codec.decode_standalone(c), axis=1).astype(np.float32))
    if not codes:
        return np.zeros((0, 0), np.uint8), np.zeros(0, np.float32)
    return np.concatenate(codes), np.concatenate(errors)


def _per_image_max(values: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """``float64[N]`` the maximum of each image's run of ``values`` (0 for an image without regions)."""
    n_regions = np.asarray(counts, np.int64)
    out = np.zeros(len(n_regions), np.float64)
    nonempty = np.flatnonzero(n_regions > 0)
    if nonempty.size:
        starts = np.concatenate([[0], np.cumsum(n_regions[nonempty])[:-1]])
        out[nonempty] = np.maximum.reduceat(values, starts)
    return out


class RegionMatrix:
    """Read-only, memory-mapped region matrix of one index version.

    ``get`` returns :class:`storage.records.ImageEmbeddingRecord` objects like the embedding store's
    (region vectors float16, boxes, uri, size; no global vector, labels or encoder fields), so the
    re-ranker and the hit builder take them unchanged; :meth:`gather` returns the stacked vectors of
    many images at once for exact MrSw.

    Args:
        version_dir: a published (or staged) index version holding ``regions/``.
        image_ids: the version's id map strings, position = int id (to name the records).

    Raises:
        FileNotFoundError: the version has no region matrix (built before it existed: rebuild).
    """

    def __init__(self, version_dir: Path, image_ids: Sequence[str]) -> None:
        names, dim = _segment_names(version_dir)
        if not names:
            raise FileNotFoundError(f"{version_dir} has no region matrix ({REGIONS_DIR}/{_SEGMENTS}); rebuild the index")
        self.root = str(version_dir)
        self.dim = int(dim or 0)
        self.image_ids = list(image_ids)
        n = len(self.image_ids)
        self.segment = np.full(n, -1, dtype=np.int32)  # int id -> segment index (-1: not stored)
        self.start = np.zeros(n, dtype=np.int64)
        self.count = np.zeros(n, dtype=np.int64)
        self.width = np.zeros(n, dtype=np.int32)
        self.height = np.zeros(n, dtype=np.int32)
        self.uri: list[str] = [""] * n
        self.vectors: list[np.ndarray] = []
        self.boxes: list[np.ndarray] = []
        # compressed layout: per segment the standalone codes, per image the largest reconstruction error
        self.codes: list[np.ndarray] | None = [] if (version_dir / REGIONS_DIR / f"{names[0]}.codes.npy").exists() else None
        self.code_error = np.zeros(n, dtype=np.float32)
        base = version_dir / REGIONS_DIR
        for s, name in enumerate(names):
            # plain ndarray views of the maps: numpy.memmap's __getitem__ costs ~30 us a call in Python
            self.vectors.append(np.load(base / f"{name}.vectors.npy", mmap_mode="r").view(np.ndarray))
            self.boxes.append(np.load(base / f"{name}.boxes.npy", mmap_mode="r").view(np.ndarray))
            if self.codes is not None:
                self.codes.append(np.load(base / f"{name}.codes.npy", mmap_mode="r").view(np.ndarray))
            meta = json.loads((base / f"{name}.meta.json").read_text())
            ids = np.asarray(meta["int_ids"], dtype=np.int64)
            if ids.size and int(ids.max()) >= n:
                raise ValueError(f"region segment {name} of {version_dir} names int id {int(ids.max())} "
                                 f"but the id map has {n} ids; the version is corrupt")
            self.segment[ids] = s
            self.start[ids] = meta["starts"]
            self.count[ids] = meta["counts"]
            self.width[ids] = meta["width"]
            self.height[ids] = meta["height"]
            if self.codes is not None:
                self.code_error[ids] = meta["code_error"]
            for i, u in zip(ids.tolist(), meta["uri"], strict=True):
                self.uri[i] = u
        self._pos = {s: i for i, s in enumerate(self.image_ids)}

    def int_ids(self, image_ids: Sequence[str]) -> np.ndarray:
        """Int ids of ``image_ids``.

        Raises:
            KeyError: an id is not in this version's region matrix (names the first).
        """
        out = np.fromiter((self._pos.get(s, -1) for s in image_ids), dtype=np.int64, count=len(image_ids))
        bad = np.flatnonzero((out < 0) | (self.segment[np.maximum(out, 0)] < 0))
        if bad.size:
            raise KeyError(f"image {image_ids[int(bad[0])]!r} is not in the region matrix of {self.root}")
        return out

    @property
    def compressed(self) -> bool:
        """Whether the matrix holds region codes (the compressed layout)."""
        return self.codes is not None

    def gather(self, int_ids: np.ndarray, *, float32: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(float16[sum R, E] stacked region vectors, int64[N] counts)`` of the images, in order.

        With ``float32`` the vectors come decoded to float32 (faiss's vectorised float16 decoder, about
        twice as fast as numpy's cast; the values are identical).
        """
        parts, counts = self._gather(self.vectors, int_ids)
        return (decode_float16(parts) if float32 else parts), counts

    def gather_codes(self, int_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(uint8[sum R, C] stacked region codes, int64[N] counts)`` of the images, in order.

        Raises:
            ValueError: the matrix holds no codes (the float16 layout).
        """
        if self.codes is None:
            raise ValueError(f"the region matrix of {self.root} holds no codes (float16 layout); gather() its vectors")
        return self._gather(self.codes, int_ids)

    def _gather(self, arrays: list[np.ndarray], int_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        int_ids = np.asarray(int_ids, dtype=np.int64)
        counts = self.count[int_ids]
        seg = self.segment[int_ids]
        if len(arrays) == 1:
            parts = np.take(arrays[0], _ranges(self.start[int_ids], counts), axis=0)
        else:
            width = max(a.shape[1] for a in arrays)  # an empty segment's codes may be saved as (0, 0)
            parts = np.empty((int(counts.sum()), width), dtype=arrays[0].dtype)
            offset = np.concatenate([[0], np.cumsum(counts)])
            for s in np.unique(seg):
                sel = np.flatnonzero(seg == s)
                rows = _ranges(self.start[int_ids[sel]], counts[sel])
                parts[_ranges(offset[sel], counts[sel])] = np.take(arrays[int(s)], rows, axis=0)
        return parts, counts

    def preloaded(self, chunk: int = 1 << 18) -> RegionMatrix:
        """A copy whose vectors are decoded to float32 in RAM once (4 bytes x regions x E: 2.4 GB for
        2.3M regions of 256-d), so gathers skip the per-query float16 decode; boxes stay mapped. In the
        compressed layout the codes are read into RAM instead and the vectors stay mapped (the point of
        the layout is not to hold them)."""
        out = copy.copy(self)
        if self.codes is not None:
            out.codes = [np.array(c) for c in self.codes]
            return out
        out.vectors = []
        for v in self.vectors:
            dense = np.empty(v.shape, np.float32)
            for s0 in range(0, v.shape[0], chunk):
                dense[s0 : s0 + chunk] = decode_float16(v[s0 : s0 + chunk])
            out.vectors.append(dense)
        return out

    def records(self, int_ids: np.ndarray) -> list[ImageEmbeddingRecord]:
        """One :class:`ImageEmbeddingRecord` per int id (vectors copied out of the map, in one gather)."""
        int_ids = np.asarray(int_ids, dtype=np.int64)
        vectors, counts = self.gather(int_ids)
        ends = np.cumsum(counts)
        out = []
        for i, a, e in zip(int_ids.tolist(), (ends - counts).tolist(), ends.tolist(), strict=True):
            s, b, c = int(self.segment[i]), int(self.start[i]), int(self.count[i])
            out.append(ImageEmbeddingRecord(
                image_id=self.image_ids[i], uri=self.uri[i], boxes=self.boxes[s][b : b + c].copy(),
                region_embeddings=vectors[a:e], width=int(self.width[i]), height=int(self.height[i]),
            ))
        return out

    def get(self, image_ids: Sequence[str]) -> list[ImageEmbeddingRecord]:
        """Records by image id (the ``get`` of an embedding store). Raises ``KeyError`` for unknown ids."""
        return self.records(self.int_ids(list(image_ids)))

    def __len__(self) -> int:
        return int((self.segment >= 0).sum())


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + c)`` for each pair, vectorised."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    return np.repeat(np.asarray(starts, np.int64) - (ends - counts), counts) + np.arange(total)

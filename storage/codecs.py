"""Conversion between record dataclasses and Arrow columns, one codec per shard kind.

Matrices are flattened row-major into ``list<element>`` columns and reshaped on
read with the width stored in the shard metadata. Decoding is vectorised per
record batch (one flatten per column, then numpy splits), never per element.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa

from regionrank.storage.records import CaptionEmbeddingRecord, ImageEmbeddingRecord, RegionRecord
from regionrank.storage.schema import CAPTION_EMBEDDING_SCHEMA_V1, IMAGE_EMBEDDING_SCHEMA_V1, REGION_SCHEMA_V1

__all__ = ["CAPTION_EMBEDDINGS", "IMAGE_EMBEDDINGS", "REGIONS", "Codec"]

_F16_MAX = float(np.finfo(np.float16).max)


def _list_array(rows: Sequence[np.ndarray | None], value_type: pa.DataType) -> pa.Array:
    lengths = np.fromiter((0 if r is None else r.size for r in rows), dtype=np.int32, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    present = [r.reshape(-1) for r in rows if r is not None]
    flat = np.concatenate(present) if present else np.zeros(0)
    values = pa.array(flat.astype(value_type.to_pandas_dtype(), copy=False), type=value_type)
    mask = pa.array([r is None for r in rows], type=pa.bool_())
    list_type = pa.list_(pa.field("element", value_type))
    if any(r is None for r in rows):
        return pa.ListArray.from_arrays(pa.array(offsets), values, type=list_type, mask=mask)
    return pa.ListArray.from_arrays(pa.array(offsets), values, type=list_type)


def _split(col: pa.Array | pa.ChunkedArray, dtype: Any, width: int) -> list[np.ndarray | None]:
    """Split a list column into per-row arrays of shape (len // width, width)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    nulls = col.is_null().to_numpy(zero_copy_only=False)
    lengths = col.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    bounds = np.cumsum(lengths)[:-1]
    parts = np.split(flat, bounds) if len(lengths) else []
    out: list[np.ndarray | None] = []
    for part, is_null in zip(parts, nulls):
        out.append(None if is_null else (part.reshape(-1, width) if width > 1 else part))
    return out


def _f16(name: str, arr: np.ndarray, owner: str) -> np.ndarray:
    a = np.asarray(arr)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} of {owner} contains NaN or inf; fix the producer (features must be finite)")
    if a.size and float(np.abs(a).max()) > _F16_MAX:
        raise ValueError(
            f"{name} of {owner} has values beyond float16 range (max |x| = {float(np.abs(a).max()):.4g} > "
            f"{_F16_MAX:.0f}); scale or clip the features before storing"
        )
    return a.astype(np.float16, copy=False)


def _ts(records: Sequence[Any]) -> pa.Array:
    now = datetime.now(timezone.utc)
    return pa.array([r.created_at or now for r in records], type=pa.timestamp("us", tz="UTC"))


def _encode(records: Sequence[Any], schema: pa.Schema, key: str, **computed: pa.Array) -> pa.RecordBatch:
    """One record batch from dataclass records: every schema column is the attribute of that name
    (float16 matrices range-checked, numeric lists flattened), except the ``computed`` ones."""
    cols: dict[str, pa.Array] = {}
    for f in schema:
        if f.name in computed:
            cols[f.name] = computed[f.name]
        elif f.name == "created_at":
            cols[f.name] = _ts(records)
        elif pa.types.is_list(f.type) and not pa.types.is_string(f.type.value_type):
            values = [getattr(r, f.name) for r in records]
            if pa.types.is_float16(f.type.value_type):
                values = [None if v is None else _f16(f.name, v, f"{key}={getattr(r, key)!r}") for v, r in zip(values, records)]
            cols[f.name] = _list_array(values, f.type.value_type)
        else:
            cols[f.name] = pa.array([getattr(r, f.name) for r in records], f.type)
    return pa.RecordBatch.from_pydict(cols, schema=schema)


@dataclass(frozen=True)
class Codec:
    """How one shard kind maps to Arrow."""

    kind: str
    prefix: str
    key: str
    producer_column: str
    schema: pa.Schema
    matrix_column: str
    encode: Callable[[Sequence[Any], int], pa.RecordBatch]
    decode: Callable[[pa.RecordBatch, int], list[Any]]
    dim_of: Callable[[Any], int]
    key_of: Callable[[Any], str]
    nbytes_of: Callable[[Any], int]


# --- regions -----------------------------------------------------------------------------------


def _encode_regions(records: Sequence[RegionRecord], dim: int) -> pa.RecordBatch:
    return _encode(records, REGION_SCHEMA_V1, "image_id")


def _col(batch: pa.RecordBatch, name: str) -> list[Any]:
    if name not in batch.schema.names:
        return [None] * batch.num_rows
    return batch.column(name).to_pylist()


def _decode_regions(batch: pa.RecordBatch, dim: int) -> list[RegionRecord]:
    names = batch.schema.names
    n = batch.num_rows
    boxes = _split(batch.column("boxes"), np.float32, 4)
    feats = _split(batch.column("features"), np.float16, dim)
    opt = {
        c: (_split(batch.column(c), t, 1) if c in names else [None] * n)
        for c, t in (("class_ids", np.int32), ("class_scores", np.float32), ("attr_ids", np.int32), ("attr_scores", np.float32))
    }
    ids, uris = _col(batch, "image_id"), _col(batch, "uri")
    ws, hs = _col(batch, "width"), _col(batch, "height")
    det, cfg, wts, ts = _col(batch, "detector"), _col(batch, "config_hash"), _col(batch, "weights_hash"), _col(batch, "created_at")
    return [
        RegionRecord(
            image_id=ids[i], uri=uris[i] or "", width=ws[i], height=hs[i],
            boxes=boxes[i] if boxes[i] is not None else np.zeros((0, 4), np.float32),
            features=feats[i] if feats[i] is not None else np.zeros((0, dim), np.float16),
            class_ids=opt["class_ids"][i], class_scores=opt["class_scores"][i],
            attr_ids=opt["attr_ids"][i], attr_scores=opt["attr_scores"][i],
            detector=det[i] or "", config_hash=cfg[i] or "", weights_hash=wts[i] or "", created_at=ts[i],
        )
        for i in range(n)
    ]


REGIONS = Codec(
    kind="regions",
    prefix="regions",
    key="image_id",
    producer_column="config_hash",
    schema=REGION_SCHEMA_V1,
    matrix_column="features",
    encode=_encode_regions,
    decode=_decode_regions,
    dim_of=lambda r: r.feature_dim,
    key_of=lambda r: r.image_id,
    nbytes_of=lambda r: r.features.shape[0] * r.features.shape[1] * 2 + r.boxes.nbytes + 256,
)

# --- image embeddings --------------------------------------------------------------------------


def _encode_images(records: Sequence[ImageEmbeddingRecord], dim: int) -> pa.RecordBatch:
    return _encode(records, IMAGE_EMBEDDING_SCHEMA_V1, "image_id")


def _decode_images(batch: pa.RecordBatch, dim: int) -> list[ImageEmbeddingRecord]:
    n = batch.num_rows
    boxes = _split(batch.column("boxes"), np.float32, 4)
    regs = _split(batch.column("region_embeddings"), np.float16, dim)
    glob = _split(batch.column("global_embedding"), np.float16, 1)
    ids, uris, ws, hs = _col(batch, "image_id"), _col(batch, "uri"), _col(batch, "width"), _col(batch, "height")
    labels, enc, ench, ts = _col(batch, "labels"), _col(batch, "encoder"), _col(batch, "encoder_hash"), _col(batch, "created_at")
    return [
        ImageEmbeddingRecord(
            image_id=ids[i], uri=uris[i] or "",
            boxes=boxes[i] if boxes[i] is not None else np.zeros((0, 4), np.float32),
            region_embeddings=regs[i] if regs[i] is not None else np.zeros((0, dim), np.float16),
            global_embedding=glob[i], width=ws[i] or 0, height=hs[i] or 0, labels=labels[i],
            encoder=enc[i] or "", encoder_hash=ench[i] or "", created_at=ts[i],
        )
        for i in range(n)
    ]


IMAGE_EMBEDDINGS = Codec(
    kind="image_embeddings",
    prefix="images",
    key="image_id",
    producer_column="encoder_hash",
    schema=IMAGE_EMBEDDING_SCHEMA_V1,
    matrix_column="region_embeddings",
    encode=_encode_images,
    decode=_decode_images,
    dim_of=lambda r: r.embed_dim,
    key_of=lambda r: r.image_id,
    nbytes_of=lambda r: r.region_embeddings.shape[0] * r.region_embeddings.shape[1] * 2 + r.boxes.nbytes + 256,
)

# --- caption embeddings ------------------------------------------------------------------------


def _encode_captions(records: Sequence[CaptionEmbeddingRecord], dim: int) -> pa.RecordBatch:
    return _encode(records, CAPTION_EMBEDDING_SCHEMA_V1, "caption_id",
                   num_words=pa.array([len(r.tokens) for r in records], pa.int32()))


def _decode_captions(batch: pa.RecordBatch, dim: int) -> list[CaptionEmbeddingRecord]:
    n = batch.num_rows
    words = _split(batch.column("word_embeddings"), np.float16, dim)
    glob = _split(batch.column("global_embedding"), np.float16, 1)
    ids, img, text, toks = _col(batch, "caption_id"), _col(batch, "image_id"), _col(batch, "text"), _col(batch, "tokens")
    enc, ench, ts = _col(batch, "encoder"), _col(batch, "encoder_hash"), _col(batch, "created_at")
    return [
        CaptionEmbeddingRecord(
            caption_id=ids[i], image_id=img[i] or "", text=text[i] or "", tokens=list(toks[i] or []),
            word_embeddings=words[i] if words[i] is not None else np.zeros((0, dim), np.float16),
            global_embedding=glob[i], encoder=enc[i] or "", encoder_hash=ench[i] or "", created_at=ts[i],
        )
        for i in range(n)
    ]


CAPTION_EMBEDDINGS = Codec(
    kind="caption_embeddings",
    prefix="captions",
    key="caption_id",
    producer_column="encoder_hash",
    schema=CAPTION_EMBEDDING_SCHEMA_V1,
    matrix_column="word_embeddings",
    encode=_encode_captions,
    decode=_decode_captions,
    dim_of=lambda r: r.embed_dim,
    key_of=lambda r: r.caption_id,
    nbytes_of=lambda r: r.word_embeddings.shape[0] * r.word_embeddings.shape[1] * 2 + 256,
)

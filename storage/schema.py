"""Arrow schemas of every shard kind, declared once, and the metadata keys.

Variable-length matrices are stored row-major as flat ``list<element: T>``
columns (``boxes`` float32 ``n*4``, ``features`` float16 ``n*D``); the width D
lives in the Parquet key-value metadata, so readers reshape without guessing.
List children are named ``element`` because pyarrow renames ``item`` on read
(ENVIRONMENT.md §7).
"""

from __future__ import annotations

import pyarrow as pa

__all__ = [
    "CAPTION_EMBEDDING_SCHEMA_V1",
    "CAPTION_TABLE_SCHEMA",
    "FAILURE_SCHEMA",
    "IMAGE_EMBEDDING_SCHEMA_V1",
    "META_DIM",
    "META_KIND",
    "META_VERSION",
    "REGION_SCHEMA_V1",
    "SCHEMA_VERSION",
    "read_schema_meta",
    "with_meta",
]

SCHEMA_VERSION = 1

META_VERSION = b"regionrank.schema_version"
META_KIND = b"regionrank.kind"
META_DIM = b"regionrank.dim"


def _list(t: pa.DataType) -> pa.DataType:
    return pa.list_(pa.field("element", t))


_TS = pa.timestamp("us", tz="UTC")

REGION_SCHEMA_V1 = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("uri", pa.string()),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("num_regions", pa.int32(), nullable=False),
        pa.field("boxes", _list(pa.float32()), nullable=False),
        pa.field("features", _list(pa.float16()), nullable=False),
        pa.field("class_ids", _list(pa.int32())),
        pa.field("class_scores", _list(pa.float32())),
        pa.field("attr_ids", _list(pa.int32())),
        pa.field("attr_scores", _list(pa.float32())),
        pa.field("detector", pa.string()),
        pa.field("config_hash", pa.string()),
        pa.field("weights_hash", pa.string()),
        pa.field("created_at", _TS),
    ]
)
"""One row per image: detected regions and their pooled features (float16)."""

IMAGE_EMBEDDING_SCHEMA_V1 = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("uri", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("num_regions", pa.int32(), nullable=False),
        pa.field("boxes", _list(pa.float32()), nullable=False),
        pa.field("region_embeddings", _list(pa.float16()), nullable=False),
        pa.field("global_embedding", _list(pa.float16())),
        pa.field("labels", _list(pa.string())),
        pa.field("encoder", pa.string()),
        pa.field("encoder_hash", pa.string()),
        pa.field("created_at", _TS),
    ]
)
"""One row per image: region embeddings [n, E] (float16) and an optional global [E]."""

CAPTION_EMBEDDING_SCHEMA_V1 = pa.schema(
    [
        pa.field("caption_id", pa.string(), nullable=False),
        pa.field("image_id", pa.string()),
        pa.field("text", pa.string()),
        pa.field("num_words", pa.int32(), nullable=False),
        pa.field("tokens", _list(pa.string()), nullable=False),
        pa.field("word_embeddings", _list(pa.float16()), nullable=False),
        pa.field("global_embedding", _list(pa.float16())),
        pa.field("encoder", pa.string()),
        pa.field("encoder_hash", pa.string()),
        pa.field("created_at", _TS),
    ]
)
"""One row per caption: word embeddings [L, E] (float16) and an optional global [E]."""

CAPTION_TABLE_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("caption_id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("split", pa.string()),
        pa.field("filename", pa.string()),
    ]
)
"""The caption table: which captions describe which image, and the split."""

FAILURE_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("recorded_at", _TS),
    ]
)
"""Inputs that could not be processed, with the reason."""


def with_meta(schema: pa.Schema, kind: str, dim: int | None, extra: dict[str, str] | None = None) -> pa.Schema:
    """Attach the schema version, shard kind, vector width and provenance to ``schema``."""
    meta = {META_VERSION: str(SCHEMA_VERSION).encode(), META_KIND: kind.encode()}
    if dim is not None:
        meta[META_DIM] = str(int(dim)).encode()
    for k, v in (extra or {}).items():
        meta[f"regionrank.{k}".encode()] = str(v).encode()
    return schema.with_metadata(meta)


def read_schema_meta(schema: pa.Schema, where: str) -> tuple[int, str, int | None]:
    """Return ``(version, kind, dim)`` from a shard's schema metadata.

    Raises:
        ValueError: the file is not a regionrank shard, or was written by a newer
            regionrank (a schema version from the future).
    """
    meta = schema.metadata or {}
    if META_VERSION not in meta:
        raise ValueError(
            f"{where} is not a regionrank shard (no {META_VERSION.decode()} in its Parquet metadata); "
            f"move it out of the store folder"
        )
    version = int(meta[META_VERSION])
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"{where} has schema version {version}, newer than this regionrank understands "
            f"(<= {SCHEMA_VERSION}); upgrade regionrank (pip install -U regionrank) to read it"
        )
    dim = int(meta[META_DIM]) if META_DIM in meta else None
    return version, meta.get(META_KIND, b"").decode(), dim

"""Shard schemas and their Parquet metadata: version, kind, width, provenance."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from regionrank.storage import (
    CAPTION_EMBEDDING_SCHEMA_V1,
    CAPTION_TABLE_SCHEMA,
    IMAGE_EMBEDDING_SCHEMA_V1,
    REGION_SCHEMA_V1,
    SCHEMA_VERSION,
)
from regionrank.storage.schema import META_DIM, META_KIND, META_VERSION, read_schema_meta, with_meta

SHARD_SCHEMAS = {"regions": REGION_SCHEMA_V1, "image_embeddings": IMAGE_EMBEDDING_SCHEMA_V1,
                 "caption_embeddings": CAPTION_EMBEDDING_SCHEMA_V1}
MATRICES = {"regions": "features", "image_embeddings": "region_embeddings", "caption_embeddings": "word_embeddings"}


@pytest.mark.parametrize("kind", sorted(SHARD_SCHEMAS))
def test_matrix_columns_are_float16_lists_of_element(kind: str) -> None:
    schema = SHARD_SCHEMAS[kind]
    matrix = schema.field(MATRICES[kind])
    assert matrix.type == pa.list_(pa.field("element", pa.float16())) and not matrix.nullable
    for f in schema:
        if pa.types.is_list(f.type):
            assert f.type.value_field.name == "element", f.name
    assert not schema.field("image_id" if kind != "caption_embeddings" else "caption_id").nullable
    assert schema.field("created_at").type == pa.timestamp("us", tz="UTC")


def test_region_boxes_are_float32_and_caption_table_columns() -> None:
    assert REGION_SCHEMA_V1.field("boxes").type.value_type == pa.float32()
    assert CAPTION_TABLE_SCHEMA.names == ["image_id", "caption_id", "text", "split", "filename"]


def test_with_meta_then_read_schema_meta_round_trips() -> None:
    schema = with_meta(REGION_SCHEMA_V1, "regions", 2048, {"detector": "butd", "shard": 7})
    meta = schema.metadata
    assert meta[META_VERSION] == str(SCHEMA_VERSION).encode() and meta[META_KIND] == b"regions"
    assert meta[META_DIM] == b"2048"
    assert meta[b"regionrank.detector"] == b"butd" and meta[b"regionrank.shard"] == b"7"
    assert read_schema_meta(schema, "x.parquet") == (SCHEMA_VERSION, "regions", 2048)
    assert schema.names == REGION_SCHEMA_V1.names  # the columns are untouched
    no_dim = with_meta(CAPTION_TABLE_SCHEMA, "captions", None)
    assert META_DIM not in no_dim.metadata
    assert read_schema_meta(no_dim, "c.parquet") == (SCHEMA_VERSION, "captions", None)


def test_metadata_and_element_names_survive_a_parquet_file(tmp_path: Path) -> None:
    schema = with_meta(IMAGE_EMBEDDING_SCHEMA_V1, "image_embeddings", 256)
    path = tmp_path / "images-00000.parquet"
    pq.write_table(schema.empty_table(), path)
    on_disk = pq.read_schema(path)
    assert read_schema_meta(on_disk, str(path)) == (SCHEMA_VERSION, "image_embeddings", 256)
    assert on_disk.field("region_embeddings").type.value_field.name == "element"


def test_foreign_and_future_files_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"other\.parquet is not a regionrank shard \(no regionrank\.schema_version.*move it out"):
        read_schema_meta(REGION_SCHEMA_V1, "other.parquet")
    future = REGION_SCHEMA_V1.with_metadata({META_VERSION: str(SCHEMA_VERSION + 1).encode(), META_KIND: b"regions"})
    with pytest.raises(ValueError, match=rf"new\.parquet has schema version {SCHEMA_VERSION + 1}, newer.*upgrade regionrank"):
        read_schema_meta(future, "new.parquet")

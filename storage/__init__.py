"""regionrank storage: Parquet shards, record types, catalogs and importers.

Imports nothing heavier than numpy and pyarrow (no torch, prefect or faiss), so every
stage and every tool can read shards.
"""

from __future__ import annotations

from regionrank.storage.lazy import lazy_exports

# name -> (module, attribute): each loads on first access, so importing one module (``storage.records``)
# does not load pyarrow and every other module
_LAZY: dict[str, tuple[str, str]] = {
    "Caption": ("regionrank.storage.records", "Caption"),
    "CAPTION_EMBEDDING_SCHEMA_V1": ("regionrank.storage.schema", "CAPTION_EMBEDDING_SCHEMA_V1"),
    "CAPTION_TABLE_SCHEMA": ("regionrank.storage.schema", "CAPTION_TABLE_SCHEMA"),
    "CaptionEmbeddingRecord": ("regionrank.storage.records", "CaptionEmbeddingRecord"),
    "CaptionEmbeddingStore": ("regionrank.storage.shards", "CaptionEmbeddingStore"),
    "CorruptShardError": ("regionrank.storage.shards", "CorruptShardError"),
    "exclusive_lock": ("regionrank.storage.locks", "exclusive_lock"),
    "external_image_id": ("regionrank.storage.hashing", "external_image_id"),
    "IMAGE_EMBEDDING_SCHEMA_V1": ("regionrank.storage.schema", "IMAGE_EMBEDDING_SCHEMA_V1"),
    "image_id_for_bytes": ("regionrank.storage.hashing", "image_id_for_bytes"),
    "image_id_for_file": ("regionrank.storage.hashing", "image_id_for_file"),
    "ImageEmbeddingRecord": ("regionrank.storage.records", "ImageEmbeddingRecord"),
    "ImageEmbeddingStore": ("regionrank.storage.shards", "ImageEmbeddingStore"),
    "import_bottomup_tsv": ("regionrank.storage.importers", "import_bottomup_tsv"),
    "import_milvlg_npz": ("regionrank.storage.importers", "import_milvlg_npz"),
    "import_scan_precomp": ("regionrank.storage.importers", "import_scan_precomp"),
    "ImportReport": ("regionrank.storage.importers", "ImportReport"),
    "is_image_id": ("regionrank.storage.hashing", "is_image_id"),
    "load_plain_pickle": ("regionrank.storage.plain_pickle", "load_plain_pickle"),
    "PlainObject": ("regionrank.storage.plain_pickle", "PlainObject"),
    "QueryEmbedding": ("regionrank.storage.records", "QueryEmbedding"),
    "read_caption_table": ("regionrank.storage.captions", "read_caption_table"),
    "read_karpathy_json": ("regionrank.storage.captions", "read_karpathy_json"),
    "read_scan_captions": ("regionrank.storage.captions", "read_scan_captions"),
    "REGION_SCHEMA_V1": ("regionrank.storage.schema", "REGION_SCHEMA_V1"),
    "RegionRecord": ("regionrank.storage.records", "RegionRecord"),
    "RegionStore": ("regionrank.storage.shards", "RegionStore"),
    "SCHEMA_VERSION": ("regionrank.storage.schema", "SCHEMA_VERSION"),
    "ShardStore": ("regionrank.storage.shards", "ShardStore"),
    "ShardWriter": ("regionrank.storage.shards", "ShardWriter"),
    "StoreLockedError": ("regionrank.storage.shards", "StoreLockedError"),
    "UnsafePickleError": ("regionrank.storage.plain_pickle", "UnsafePickleError"),
    "write_caption_table": ("regionrank.storage.captions", "write_caption_table"),
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

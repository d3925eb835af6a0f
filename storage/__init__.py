"""regionrank storage: Parquet shards, record types, catalogs and importers.

Imports nothing heavier than numpy and pyarrow (no torch, prefect or faiss), so every
stage and every tool can read shards.
"""

from regionrank.storage.captions import read_caption_table, read_karpathy_json, read_scan_captions, write_caption_table
from regionrank.storage.hashing import external_image_id, image_id_for_bytes, image_id_for_file, is_image_id
from regionrank.storage.locks import exclusive_lock
from regionrank.storage.importers import ImportReport, import_bottomup_tsv, import_milvlg_npz, import_scan_precomp
from regionrank.storage.plain_pickle import PlainObject, UnsafePickleError, load_plain_pickle
from regionrank.storage.records import Caption, CaptionEmbeddingRecord, ImageEmbeddingRecord, QueryEmbedding, RegionRecord
from regionrank.storage.schema import (
    CAPTION_EMBEDDING_SCHEMA_V1,
    CAPTION_TABLE_SCHEMA,
    IMAGE_EMBEDDING_SCHEMA_V1,
    REGION_SCHEMA_V1,
    SCHEMA_VERSION,
)
from regionrank.storage.shards import (
    CaptionEmbeddingStore,
    CorruptShardError,
    ImageEmbeddingStore,
    RegionStore,
    ShardStore,
    ShardWriter,
    StoreLockedError,
)

__all__ = [
    "CAPTION_EMBEDDING_SCHEMA_V1",
    "CAPTION_TABLE_SCHEMA",
    "IMAGE_EMBEDDING_SCHEMA_V1",
    "REGION_SCHEMA_V1",
    "SCHEMA_VERSION",
    "Caption",
    "CaptionEmbeddingRecord",
    "CaptionEmbeddingStore",
    "CorruptShardError",
    "ImageEmbeddingRecord",
    "ImageEmbeddingStore",
    "ImportReport",
    "PlainObject",
    "QueryEmbedding",
    "RegionRecord",
    "RegionStore",
    "ShardStore",
    "ShardWriter",
    "StoreLockedError",
    "UnsafePickleError",
    "exclusive_lock",
    "external_image_id",
    "image_id_for_bytes",
    "image_id_for_file",
    "import_bottomup_tsv",
    "import_milvlg_npz",
    "import_scan_precomp",
    "is_image_id",
    "load_plain_pickle",
    "read_caption_table",
    "read_karpathy_json",
    "read_scan_captions",
    "write_caption_table",
]

"""regionrank index: the only package that imports faiss.

Global and region-level (multi-vector) faiss indexes over embedding shards, chosen automatically and
tuned to a target recall; incremental adds/removals on stable int64 ids; versioned directories with
atomic publication and rollback; two-stage search (MaxSim candidates -> exact TERAN MrSw -> injected
re-ranker) and image-to-text search; per-word heatmaps.

faiss is optional: ``import index`` works without it, and building or opening an index then fails with
an install hint (``index._faiss.import_faiss``).
"""

from regionrank.index._faiss import available_gpus
from regionrank.index.alignment import Alignment, maxsim_candidates, mrsw_align, mrsw_align_stacked
from regionrank.index.ann import AnnIndex
from regionrank.index.build import (
    IndexHandle,
    add_captions,
    add_images,
    build_caption_indexes,
    build_indexes,
    build_vector_index,
    open_index,
    remove_captions,
    remove_images,
    rollback,
    update_or_build,
    versions,
)
from regionrank.index.heatmap import render_heatmap
from regionrank.index.idmap import IdMap
from regionrank.index.manifest import IndexInfo, Manifest
from regionrank.index.regions import RegionMatrix
from regionrank.index.spec import IndexSpec, choose_spec, parse_memory
from regionrank.index.tuning import RecallProbe, exact_knn, recall_at_k
from regionrank.index.search import (
    CaptionHit,
    QueryEncoder,
    RerankOutput,
    Reranker,
    SearchHit,
    SearchParams,
    SearchStats,
    Searcher,
    WordExplanation,
    caption_search,
    exhaustive_search,
    fuse_scores,
)
from regionrank.index.version import IndexBusyError, VersionedDir

__all__ = [
    "Alignment",
    "AnnIndex",
    "CaptionHit",
    "IdMap",
    "IndexBusyError",
    "IndexHandle",
    "IndexInfo",
    "IndexSpec",
    "Manifest",
    "QueryEncoder",
    "RecallProbe",
    "RegionMatrix",
    "RerankOutput",
    "Reranker",
    "SearchHit",
    "SearchParams",
    "SearchStats",
    "Searcher",
    "VersionedDir",
    "WordExplanation",
    "add_captions",
    "add_images",
    "available_gpus",
    "build_caption_indexes",
    "build_indexes",
    "build_vector_index",
    "caption_search",
    "choose_spec",
    "exact_knn",
    "exhaustive_search",
    "fuse_scores",
    "maxsim_candidates",
    "mrsw_align",
    "mrsw_align_stacked",
    "open_index",
    "parse_memory",
    "recall_at_k",
    "remove_captions",
    "remove_images",
    "render_heatmap",
    "rollback",
    "update_or_build",
    "versions",
]

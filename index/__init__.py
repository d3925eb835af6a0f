"""regionrank index: the only package that imports faiss.

Global and region-level (multi-vector) faiss indexes over embedding shards, chosen automatically and
tuned to a target recall; incremental adds/removals on stable int64 ids; versioned directories with
atomic publication, checksums and rollback; two-stage search and image-to-text search; heatmaps.

Modules, by role:

* vectors in: ``source`` (the :class:`EmbeddingSource` protocol over embedding stores, gathering);
* one index: ``spec`` (index keys, the automatic choice of index and of region layout: float16 vectors,
  or the region index's own PQ codes when the memory budget requires them), ``ann`` (a faiss index with
  ids), ``tuning`` (certified nprobe/efSearch), ``regions`` (the per-version region matrix, with its codes
  in the compressed layout), ``idmap``;
* the version lifecycle: ``build`` (a new version from a store), ``update`` (add/remove, and
  :func:`update_or_build`, the one "add or build" decision every run path takes), ``handle`` (open a
  version read-only, :func:`versions`, :func:`rollback`), ``version`` (the versioned directory and its
  lock), ``manifest``, ``integrity`` (checksums; damaged versions are skipped with a warning);
* search: ``search/`` (``params`` :class:`SearchParams`, ``types`` protocols and hits, ``first_stage``
  candidate rounds with their completeness proof, ``rerank``/``fusion``, ``searcher`` the facade,
  ``captions`` image-to-text, ``exhaustive`` the reference), ``alignment`` (MrSw), ``heatmap``.

faiss is optional: ``import regionrank.index`` works without it, and building or opening an index then
fails with an install hint (:func:`faiss_module`).
"""

from regionrank.index._faiss import available_gpus
from regionrank.index._faiss import import_faiss as faiss_module
from regionrank.index.alignment import Alignment, maxsim_candidates, mrsw_align, mrsw_align_stacked
from regionrank.index.ann import AnnIndex
from regionrank.index.build import build_caption_indexes, build_indexes, build_vector_index
from regionrank.index.handle import IndexHandle, open_index, rollback, verify_version, versions
from regionrank.index.heatmap import render_heatmap
from regionrank.index.idmap import IdMap
from regionrank.index.integrity import IndexDamagedError
from regionrank.index.manifest import FileChecksum, IndexInfo, Manifest
from regionrank.index.regions import RegionMatrix
from regionrank.index.source import EmbeddingSource, open_embedding_source
from regionrank.index.spec import IndexSpec, choose_region_layout, choose_spec, parse_memory
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
from regionrank.index.update import add_captions, add_images, remove_captions, remove_images, update_or_build
from regionrank.index.version import IndexBusyError, VersionedDir

__all__ = [
    "Alignment",
    "AnnIndex",
    "CaptionHit",
    "EmbeddingSource",
    "FileChecksum",
    "IdMap",
    "IndexBusyError",
    "IndexDamagedError",
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
    "choose_region_layout",
    "choose_spec",
    "exact_knn",
    "exhaustive_search",
    "faiss_module",
    "fuse_scores",
    "maxsim_candidates",
    "mrsw_align",
    "mrsw_align_stacked",
    "open_embedding_source",
    "open_index",
    "parse_memory",
    "recall_at_k",
    "remove_captions",
    "remove_images",
    "render_heatmap",
    "rollback",
    "update_or_build",
    "verify_version",
    "versions",
]

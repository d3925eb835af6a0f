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

from __future__ import annotations

from regionrank.storage.lazy import lazy_exports

# name -> (module, attribute): each loads on first access, so importing one submodule (say
# ``search.params`` for the CLI's defaults) does not load faiss and every other module
_LAZY: dict[str, tuple[str, str]] = {
    "add_captions": ("regionrank.index.update", "add_captions"),
    "add_images": ("regionrank.index.update", "add_images"),
    "Alignment": ("regionrank.index.alignment", "Alignment"),
    "AnnIndex": ("regionrank.index.ann", "AnnIndex"),
    "available_gpus": ("regionrank.index._faiss", "available_gpus"),
    "build_caption_indexes": ("regionrank.index.build", "build_caption_indexes"),
    "build_indexes": ("regionrank.index.build", "build_indexes"),
    "build_vector_index": ("regionrank.index.build", "build_vector_index"),
    "caption_search": ("regionrank.index.search", "caption_search"),
    "CaptionHit": ("regionrank.index.search", "CaptionHit"),
    "choose_region_layout": ("regionrank.index.spec", "choose_region_layout"),
    "choose_spec": ("regionrank.index.spec", "choose_spec"),
    "EmbeddingSource": ("regionrank.index.source", "EmbeddingSource"),
    "exact_knn": ("regionrank.index.tuning", "exact_knn"),
    "exhaustive_search": ("regionrank.index.search", "exhaustive_search"),
    "faiss_module": ("regionrank.index._faiss", "import_faiss"),
    "FileChecksum": ("regionrank.index.manifest", "FileChecksum"),
    "fuse_scores": ("regionrank.index.search", "fuse_scores"),
    "IdMap": ("regionrank.index.idmap", "IdMap"),
    "IndexBusyError": ("regionrank.index.version", "IndexBusyError"),
    "IndexDamagedError": ("regionrank.index.integrity", "IndexDamagedError"),
    "IndexHandle": ("regionrank.index.handle", "IndexHandle"),
    "IndexInfo": ("regionrank.index.manifest", "IndexInfo"),
    "IndexSpec": ("regionrank.index.spec", "IndexSpec"),
    "Manifest": ("regionrank.index.manifest", "Manifest"),
    "maxsim_candidates": ("regionrank.index.alignment", "maxsim_candidates"),
    "mrsw_align": ("regionrank.index.alignment", "mrsw_align"),
    "mrsw_align_stacked": ("regionrank.index.alignment", "mrsw_align_stacked"),
    "open_embedding_source": ("regionrank.index.source", "open_embedding_source"),
    "open_index": ("regionrank.index.handle", "open_index"),
    "parse_memory": ("regionrank.index.spec", "parse_memory"),
    "QueryEncoder": ("regionrank.index.search", "QueryEncoder"),
    "recall_at_k": ("regionrank.index.tuning", "recall_at_k"),
    "RecallProbe": ("regionrank.index.tuning", "RecallProbe"),
    "RegionMatrix": ("regionrank.index.regions", "RegionMatrix"),
    "remove_captions": ("regionrank.index.update", "remove_captions"),
    "remove_images": ("regionrank.index.update", "remove_images"),
    "render_heatmap": ("regionrank.index.heatmap", "render_heatmap"),
    "Reranker": ("regionrank.index.search", "Reranker"),
    "RerankOutput": ("regionrank.index.search", "RerankOutput"),
    "rollback": ("regionrank.index.handle", "rollback"),
    "Searcher": ("regionrank.index.search", "Searcher"),
    "SearchHit": ("regionrank.index.search", "SearchHit"),
    "SearchParams": ("regionrank.index.search", "SearchParams"),
    "SearchStats": ("regionrank.index.search", "SearchStats"),
    "update_or_build": ("regionrank.index.update", "update_or_build"),
    "verify_version": ("regionrank.index.handle", "verify_version"),
    "VersionedDir": ("regionrank.index.version", "VersionedDir"),
    "versions": ("regionrank.index.handle", "versions"),
    "WordExplanation": ("regionrank.index.search", "WordExplanation"),
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

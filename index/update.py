"""Incremental updates of an index directory: :func:`add_images` / :func:`remove_images` (and
:func:`add_captions` / :func:`remove_captions` for a caption index) without retraining, each published as
a new version, with a rebuild when one is due (growth, recall drift, too many tombstones); and
:func:`update_or_build`, the one "add to the current version, or build one" decision."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from regionrank.index.ann import AnnIndex
from regionrank.index.build import build_indexes, build_version, publish_version
from regionrank.index.handle import versions
from regionrank.index.idmap import IdMap
from regionrank.index.integrity import read_checked_manifest, reading
from regionrank.index.manifest import Manifest
from regionrank.index.regions import RegionSegment
from regionrank.index.source import MULTI_KIND, Corpus, EmbeddingSource, gather_vectors, open_embedding_source
from regionrank.index.spec import IndexSpec
from regionrank.index.tuning import DecodedRows, RecallProbe
from regionrank.index.version import VersionedDir

__all__ = ["add_captions", "add_images", "remove_captions", "remove_images", "update_or_build"]

logger = logging.getLogger(__name__)


def _load_for_update(vd: VersionedDir) -> tuple[Manifest, dict[str, AnnIndex], dict[str, RecallProbe], IdMap]:
    """The current version, read whole for updating (damage raises: an update must not build on it)."""
    path = vd.path()
    manifest = read_checked_manifest(path, with_probes=True)
    vd.keep = int(manifest.build.get("keep_versions", vd.keep))
    anns, probes = {}, {}
    for kind, info in manifest.indexes.items():
        with reading(path, info.file, manifest):
            anns[kind] = AnnIndex.load(path / info.file, IndexSpec.parse(info.spec), info.dim,
                                       search_value=info.search_value, mmap=False)
        with reading(path, f"{kind}.probe.npz", manifest):
            probes[kind] = RecallProbe.load(path / f"{kind}.probe.npz")
    with reading(path, "ids.txt / idmap.npz", manifest):
        idmap = IdMap.load(path)
    return manifest, anns, probes, idmap


def _rebuild_reason(manifest: Manifest, anns: dict[str, AnnIndex]) -> str | None:
    b = manifest.build
    for kind, info in manifest.indexes.items():
        ann = anns[kind]
        if ann.n_alive > b["growth_factor"] * max(info.n_at_train, 1):
            return f"{kind}: {ann.n_alive} vectors > {b['growth_factor']:g} x {info.n_at_train} at training"
        if not math.isnan(info.current_recall) and info.current_recall < info.target_recall - b["drift_tolerance"]:
            return (f"{kind}: probe recall@{info.k} {info.current_recall:.3f} drifted below "
                    f"{info.target_recall:g} - {b['drift_tolerance']:g}")
        if math.isnan(info.current_recall) and info.search_param is not None:
            return f"{kind}: every probe query lost its ground truth to removals; recall can no longer be checked"
        if ann.ntotal and len(ann.tombstones) > b["max_tombstone_fraction"] * ann.ntotal:
            return f"{kind}: {len(ann.tombstones)} of {ann.ntotal} vectors are tombstones"
    return None


def _finish_update(
    vd: VersionedDir, source: EmbeddingSource | None, manifest: Manifest, anns: dict[str, AnnIndex],
    probes: dict[str, RecallProbe], idmap: IdMap, event: str, *, auto_rebuild: bool, ngpu: int,
    changed: dict[str, dict[str, np.ndarray]], new_segment: RegionSegment | None = None, executor: Any = None,
) -> Manifest:
    for kind, info in manifest.indexes.items():
        info.n_vectors = anns[kind].n_alive
        info.tombstones = len(anns[kind].tombstones)
        info.current_recall = probes[kind].refresh(anns[kind], **changed.get(kind, {})) if info.search_param else 1.0
    reason = _rebuild_reason(manifest, anns)
    history = [*manifest.history, event]
    parent = manifest.version
    if reason and auto_rebuild and source is not None:
        logger.info("rebuilding %s: %s", vd.root, reason)
        return build_version(vd, source, manifest.corpus, manifest.build, idmap.alive_ids(),  # type: ignore[arg-type]
                             history=[*history, f"rebuild: {reason}"], parent=parent, ngpu=ngpu, executor=executor)
    manifest.version = vd.next_version()
    manifest.parent_version = parent
    manifest.n_items = len(idmap)
    manifest.rebuild_due = reason
    manifest.history = history
    publish_version(vd, manifest, anns, probes, idmap, segments_from=vd.path(parent), new_segment=new_segment)
    return manifest


_ADDER = {"images": "index.add_images / index.remove_images", "captions": "index.add_captions / index.remove_captions"}


def _load_corpus(vd: VersionedDir, corpus: Corpus) -> tuple[Manifest, dict[str, AnnIndex], dict[str, RecallProbe], IdMap]:
    """:func:`_load_for_update`, refusing an index of the other corpus."""
    loaded = _load_for_update(vd)
    if loaded[0].corpus != corpus:
        raise ValueError(
            f"{vd.root} is an index of {loaded[0].corpus}, not of {corpus}; update it with {_ADDER[loaded[0].corpus]}"
        )
    return loaded


def _add_items(
    out_dir: str | Path, embeddings: Any, item_ids: Sequence[str], corpus: Corpus, *, auto_rebuild: bool, ngpu: int,
    lock_timeout: float, executor: Any = None,
) -> Manifest:
    """:func:`add_images` / :func:`add_captions` for ``corpus``."""
    vd = VersionedDir(out_dir)
    source = open_embedding_source(embeddings, corpus)
    with vd.lock(lock_timeout):
        manifest, anns, probes, idmap = _load_corpus(vd, corpus)
        new = [s for s in dict.fromkeys(item_ids) if s not in idmap]
        if not new:  # nothing to add: keep the current version rather than publish an identical one
            return manifest
        vecs = gather_vectors(source, corpus, new)
        multi_kind = MULTI_KIND[corpus]
        counts = vecs.n_multi if multi_kind in anns else [0] * len(vecs.item_ids)
        int_ids = idmap.assign(vecs.item_ids, counts)
        changed: dict[str, dict[str, np.ndarray]] = {}
        for kind, ann in anns.items():
            if kind == "global":
                x, ids = vecs.global_matrix(), int_ids
            else:
                x, ids = vecs.multi_matrix(), idmap.region_ids(int_ids)
            ann.add(x, ids)
            truth_x = DecodedRows(ann, x)[:] if probes[kind].truth == "codes" else x  # the probe's own truth
            probes[kind].add(np.asarray(truth_x, dtype=np.float32), ids)
            changed[kind] = {"added": ids, "added_vectors": x}
        skipped = len(item_ids) - len(new)
        event = f"add {len(vecs.item_ids)}" + (f" ({skipped} already indexed)" if skipped else "")
        return _finish_update(vd, source, manifest, anns, probes, idmap, event, auto_rebuild=auto_rebuild, ngpu=ngpu,
                              changed=changed, new_segment=vecs.region_segment(int_ids) if corpus == "images" else None,
                              executor=executor)


def _remove_items(
    out_dir: str | Path, item_ids: Sequence[str], corpus: Corpus, *, embeddings: Any, auto_rebuild: bool, ngpu: int,
    lock_timeout: float,
) -> Manifest:
    """:func:`remove_images` / :func:`remove_captions` for ``corpus``."""
    vd = VersionedDir(out_dir)
    source = open_embedding_source(embeddings, corpus) if embeddings is not None else None
    with vd.lock(lock_timeout):
        manifest, anns, probes, idmap = _load_corpus(vd, corpus)
        unique = list(dict.fromkeys(item_ids))
        present = [s for s in unique if s in idmap]
        if len(present) < len(unique):
            logger.info("remove %s: %d of %d ids are not indexed; skipped", corpus, len(unique) - len(present), len(unique))
        int_ids = idmap.lookup(present)
        changed: dict[str, dict[str, np.ndarray]] = {}
        for kind, ann in anns.items():
            ids = int_ids if kind == "global" else idmap.region_ids(int_ids)
            ann.remove(ids)
            probes[kind].remove(ids)
            changed[kind] = {"removed": ids}
        idmap.kill(int_ids)
        return _finish_update(vd, source, manifest, anns, probes, idmap, f"remove {len(present)}",
                              auto_rebuild=auto_rebuild, ngpu=ngpu, changed=changed)


def add_images(
    out_dir: str | Path,
    embeddings: Any,
    image_ids: Sequence[str],
    *,
    auto_rebuild: bool = True,
    ngpu: int = 0,
    lock_timeout: float = 60.0,
    executor: Any = None,
) -> Manifest:
    """Add images to the current version of an image index without retraining; publish a new version.

    Ids already indexed are skipped (idempotent); when none is new, nothing is published and the
    current manifest is returned. Each index's probe ground truth is updated exactly and its recall
    re-measured (for IVF from the change alone, ``RecallProbe.refresh``); when a rebuild is due (growth
    beyond ``growth_factor``, recall drift, too many tombstones) and ``auto_rebuild`` is on, every alive
    image is re-indexed from ``embeddings`` with the original build parameters instead (the manifest's
    history says why); with it off, the manifest's ``rebuild_due`` says why. The new version is
    published atomically; the previous one stays for :func:`rollback`.

    Args:
        out_dir: an index directory made by :func:`build_indexes`.
        embeddings: the ``ImageEmbeddingStore`` (or path) holding the new images.
        image_ids: images to add.
        executor: runs a rebuild that falls due as a sharded build (:mod:`index.shards`); the batch itself is
            added here, to the merged index (its float16 vectors, ``2 d`` bytes a region, in this process).

    Raises:
        FileNotFoundError: nothing is published in ``out_dir``.
        KeyError: an image id is not in ``embeddings``.
        ValueError: ``out_dir`` is a caption index, or a record lacks a vector an index needs, or has
            the wrong dimension.
    """
    return _add_items(out_dir, embeddings, image_ids, "images", auto_rebuild=auto_rebuild, ngpu=ngpu,
                      lock_timeout=lock_timeout, executor=executor)


def add_captions(
    out_dir: str | Path,
    captions: Any,
    caption_ids: Sequence[str],
    *,
    auto_rebuild: bool = True,
    ngpu: int = 0,
    lock_timeout: float = 60.0,
) -> Manifest:
    """Add captions to the current version of a caption index (:func:`build_caption_indexes`) without
    retraining; publish a new version. Same guarantees as :func:`add_images` (idempotent, exact probe
    update, rebuild when due, atomic publication, rollback).

    Args:
        out_dir: a caption index directory.
        captions: the ``CaptionEmbeddingStore`` (or path) holding the new captions.
        caption_ids: captions to add.

    Raises:
        FileNotFoundError: nothing is published in ``out_dir``.
        KeyError: a caption id is not in ``captions``.
        ValueError: ``out_dir`` is an image index, or a record lacks a vector an index needs.
    """
    return _add_items(out_dir, captions, caption_ids, "captions", auto_rebuild=auto_rebuild, ngpu=ngpu,
                      lock_timeout=lock_timeout)


def remove_images(
    out_dir: str | Path,
    image_ids: Sequence[str],
    *,
    embeddings: Any = None,
    auto_rebuild: bool = True,
    ngpu: int = 0,
    lock_timeout: float = 60.0,
) -> Manifest:
    """Remove images from every index of an image index and publish a new version.

    Ids that are not indexed are skipped (logged). IVF and Flat remove natively; HNSW keeps tombstones
    that searches exclude. A rebuild that falls due happens only when ``embeddings`` is given (the
    vectors must be re-read); otherwise the manifest's ``rebuild_due`` says why one is due.

    Raises:
        ValueError: ``out_dir`` is a caption index.
    """
    return _remove_items(out_dir, image_ids, "images", embeddings=embeddings, auto_rebuild=auto_rebuild, ngpu=ngpu,
                         lock_timeout=lock_timeout)


def remove_captions(
    out_dir: str | Path,
    caption_ids: Sequence[str],
    *,
    captions: Any = None,
    auto_rebuild: bool = True,
    ngpu: int = 0,
    lock_timeout: float = 60.0,
) -> Manifest:
    """Remove captions from a caption index and publish a new version; as :func:`remove_images`
    (``captions``, the ``CaptionEmbeddingStore``, lets a rebuild that falls due happen).

    Raises:
        ValueError: ``out_dir`` is an image index.
    """
    return _remove_items(out_dir, caption_ids, "captions", embeddings=captions, auto_rebuild=auto_rebuild, ngpu=ngpu,
                         lock_timeout=lock_timeout)


def update_or_build(
    out_dir: str | Path,
    embeddings: Any,
    image_ids: Sequence[str] | None = None,
    *,
    rebuild: bool = False,
    ngpu: int = 0,
    executor: Any = None,
    **build_kwargs: Any,
) -> Manifest:
    """The one decision "add to the current version, or build one": every run path calls this.

    Builds a new version from every stored image (``build_indexes(embeddings, out_dir, **build_kwargs)``)
    when ``rebuild`` is set, when ``image_ids`` is ``None`` or when nothing is published yet; otherwise
    adds ``image_ids`` to the current version (:func:`add_images`, which skips ids already indexed and
    rebuilds by itself when growth or drift call for it).

    With an ``executor`` (a ``distributed.Client``, ``concurrent.futures.Executor`` or ``map`` callable) every
    build, a rebuild that falls due included, is sharded (:mod:`index.shards`); an incremental add goes
    to the current (merged) index as without one.
    """
    if rebuild or image_ids is None or not versions(out_dir):
        return build_indexes(embeddings, out_dir, ngpu=ngpu, executor=executor, **build_kwargs)
    return add_images(out_dir, embeddings, image_ids, ngpu=ngpu, executor=executor)

"""Build, update and open versioned indexes over embedding shards.

Public entry points (paths in, manifests out; flows call these):

* :func:`build_indexes` — a global index (one vector per image) and a region multi-vector index (every
  region, id -> (image, slot)) from an ``ImageEmbeddingStore``; :func:`build_caption_indexes` does the
  same for a ``CaptionEmbeddingStore`` (caption global vectors and word vectors).
* :func:`add_images` / :func:`remove_images` (and :func:`add_captions` / :func:`remove_captions` for a
  caption index) — incremental updates without retraining, each published as a new version; a rebuild
  happens when it is due (growth, recall drift, too many tombstones).
* :func:`open_index` — a read-only :class:`IndexHandle`, memory-mapped; :func:`versions`, :func:`rollback`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Literal, Protocol, Sequence

import numpy as np

from regionrank.index._faiss import resolve_ngpu
from regionrank.index.ann import AnnIndex
from regionrank.index.idmap import IdMap
from regionrank.index.manifest import IndexInfo, Manifest
from regionrank.index.regions import RegionMatrix, RegionSegment, copy_segments, write_segment
from regionrank.index.spec import IndexSpec, choose_spec, parse_memory
from regionrank.index.tuning import RecallProbe, tune_queries_needed, tune_search_param
from regionrank.index.version import VersionedDir

__all__ = [
    "IndexHandle",
    "add_captions",
    "add_images",
    "build_caption_indexes",
    "build_indexes",
    "build_vector_index",
    "open_index",
    "remove_captions",
    "remove_images",
    "rollback",
    "versions",
]

logger = logging.getLogger(__name__)

Corpus = Literal["images", "captions"]
_MULTI_KIND = {"images": "region", "captions": "word"}
DEFAULT_TUNE_QUERIES = 500


class EmbeddingSource(Protocol):
    """What the index reads from ``storage.ImageEmbeddingStore`` / ``CaptionEmbeddingStore``."""

    @property
    def root(self) -> str: ...

    def ids(self) -> list[str]: ...

    def get(self, keys: Sequence[str]) -> list[Any]: ...

    def iter_records(self, *, batch_size: int = 256) -> Any: ...


@dataclass
class _Vectors:
    """Item vectors gathered from a store (float16 to halve peak memory; cast per chunk when used)."""

    item_ids: list[str] = field(default_factory=list)
    global_vecs: list[np.ndarray | None] = field(default_factory=list)
    multi_vecs: list[np.ndarray] = field(default_factory=list)
    encoder: str = ""
    encoder_hash: str = ""
    images: list[Any] = field(default_factory=list)  # (boxes, uri, width, height) per image, for the region matrix

    def add(self, item_id: str, global_vec: np.ndarray | None, multi: np.ndarray, encoder: str, encoder_hash: str) -> None:
        self.item_ids.append(item_id)
        self.global_vecs.append(None if global_vec is None else np.asarray(global_vec, dtype=np.float16))
        self.multi_vecs.append(np.asarray(multi, dtype=np.float16))
        self.encoder = self.encoder or encoder
        self.encoder_hash = self.encoder_hash or encoder_hash

    def region_segment(self, int_ids: np.ndarray) -> RegionSegment:
        """The gathered images as a region-matrix segment (image corpus only)."""
        seg = RegionSegment()
        for i, multi, (boxes, uri, width, height) in zip(int_ids, self.multi_vecs, self.images, strict=True):
            seg.add(int(i), multi, boxes, uri, width, height)
        return seg

    @property
    def n_multi(self) -> list[int]:
        return [m.shape[0] for m in self.multi_vecs]

    def global_matrix(self) -> np.ndarray:
        missing = [i for i, g in zip(self.item_ids, self.global_vecs, strict=True) if g is None]
        if missing:
            raise ValueError(
                f"{len(missing)} items have no global_embedding (first: {missing[0]!r}); build with "
                f"kind=('region',) / ('word',) or re-encode with an encoder that emits global vectors"
            )
        return np.stack(self.global_vecs) if self.global_vecs else np.zeros((0, 0), np.float16)  # type: ignore[arg-type]

    def multi_matrix(self) -> np.ndarray:
        return np.concatenate(self.multi_vecs) if self.multi_vecs else np.zeros((0, 0), np.float16)


def _open_source(source: Any, corpus: Corpus) -> EmbeddingSource:
    if hasattr(source, "get") and hasattr(source, "iter_records"):
        return source  # type: ignore[no-any-return]
    if isinstance(source, (str, Path)):
        from regionrank import storage
        cls = storage.ImageEmbeddingStore if corpus == "images" else storage.CaptionEmbeddingStore
        return cls(source)  # type: ignore[no-any-return]
    raise TypeError(
        f"embeddings must be a storage.ImageEmbeddingStore / CaptionEmbeddingStore or a path to one; "
        f"got {type(source).__name__}"
    )


def _record_vectors(rec: Any, corpus: Corpus) -> tuple[str, np.ndarray | None, np.ndarray]:
    if corpus == "images":
        return rec.image_id, rec.global_embedding, rec.region_embeddings
    return rec.caption_id, rec.global_embedding, rec.word_embeddings


def _gather(source: EmbeddingSource, corpus: Corpus, item_ids: Sequence[str] | None, chunk: int = 2048) -> _Vectors:
    out = _Vectors()
    if item_ids is None:
        records: Iterable[Any] = source.iter_records(batch_size=256)
    else:
        records = (r for s in range(0, len(item_ids), chunk) for r in source.get(list(item_ids[s : s + chunk])))
    for rec in records:
        item_id, g, multi = _record_vectors(rec, corpus)
        out.add(item_id, g, multi, getattr(rec, "encoder", ""), getattr(rec, "encoder_hash", ""))
        if corpus == "images":
            out.images.append((rec.boxes, rec.uri, rec.width, rec.height))
    return out


def build_vector_index(
    xb: np.ndarray,
    ids: np.ndarray,
    *,
    spec: IndexSpec | str | None = None,
    memory_budget: str | int = "4G",
    target_recall: float = 0.95,
    k: int = 10,
    seed: int = 0,
    n_tune_queries: int = DEFAULT_TUNE_QUERIES,
    ngpu: int = 0,
    kind: str = "global",
    tuning_queries: np.ndarray | None = None,
) -> tuple[AnnIndex, IndexInfo, RecallProbe]:
    """Choose (or take) an index for ``xb``, train it on a sample, add everything, tune it to a recall.

    Args:
        xb: ``float[N, D]`` L2-normalised vectors (float16 accepted; cast per chunk).
        ids: ``int64[N]`` unique ids.
        spec: an index key or :class:`IndexSpec`; ``None`` chooses with :func:`index.spec.choose_spec`.
        memory_budget: bytes or ``"4G"``-style string, for the automatic choice.
        target_recall: recall@k against exact search that the search parameter is tuned to reach.
        k: recall depth.
        seed: seeds the training and query samples and k-means.
        n_tune_queries: held-out queries (database vectors not in the training sample, leave-one-out);
            raised for targets close to 1 so the sample can certify them (``tuning.tune_queries_needed``).
        ngpu: GPUs to train/add/search on (-1 all, 0 CPU); ignored without a GPU faiss build.
        kind: label stored in the returned :class:`IndexInfo`.
        tuning_queries: ``float[Q, D]`` queries to tune on instead of held-out database vectors, e.g.
            caption word vectors for a region index (text queries against image vectors behave
            differently from image-to-image queries; ALGORITHMS.md §8, clip-retrieval #76).

    Returns:
        ``(index, info, probe)``: the tuned index, its manifest entry, and the recall probe used for
        drift detection on later updates.

    Raises:
        ValueError: empty or malformed input, or a spec that does not fit ``d``.
    """
    xb = np.asarray(xb)
    ids = np.asarray(ids, dtype=np.int64)
    if xb.ndim != 2 or xb.shape[0] == 0:
        raise ValueError(f"need a non-empty (N, D) matrix of vectors; got shape {tuple(xb.shape)}")
    if ids.shape != (xb.shape[0],):
        raise ValueError(f"need one id per vector: {xb.shape[0]} vectors, ids of shape {tuple(ids.shape)}")
    n, d = xb.shape
    budget = parse_memory(memory_budget)
    chosen_by = "user" if spec is not None else "auto"
    spec = IndexSpec.parse(spec) if isinstance(spec, str) else spec or choose_spec(n, d, budget)
    if spec.family == "ivf" and spec.nlist > n:
        raise ValueError(f"{spec} needs at least {spec.nlist} vectors to train; got {n}. Use fewer lists or Flat")
    rng = np.random.default_rng(seed)
    ann = AnnIndex.create(spec, d, ngpu=resolve_ngpu(ngpu))
    t0 = time.perf_counter()
    perm = rng.permutation(n)
    n_train = spec.train_size(n)
    if n_train:
        train_rows = np.sort(perm[:n_train])
        ann.train(np.asarray(xb[train_rows], dtype=np.float32), seed=seed)
    ann.add(xb, ids)
    build_s = time.perf_counter() - t0
    # held-out queries: rows outside the training sample when there are enough of them
    if spec.search_param is not None:
        n_tune_queries = tune_queries_needed(target_recall, k, n_tune_queries)
    pool = perm[n_train:] if n - n_train >= min(n_tune_queries, n) else perm
    query_rows = np.sort(pool[: min(n_tune_queries, n - 1 if n > 1 else 1)])
    t1 = time.perf_counter()
    if tuning_queries is None:
        probe = RecallProbe.create(xb, ids, query_rows, k=k)
    else:
        probe = RecallProbe.from_queries(xb, ids, tuning_queries, k=k)
    tuned = tune_search_param(ann, probe, target_recall=target_recall)
    tune_s = time.perf_counter() - t1
    if tuned.target_met and not tuned.certified:
        logger.info("%s index %s: recall@%d %.4f at %s=%s reaches %.4f on %d queries, but its lower bound %.4f does not",
                    kind, spec, k, tuned.recall, tuned.param, tuned.value, target_recall, len(probe.queries),
                    tuned.recall_lower)
    if not tuned.target_met:
        logger.warning(
            "%s index %s reaches recall@%d %.3f at %s=%s, below the target %.3f; a larger budget or spec would help",
            kind, spec, k, tuned.recall, tuned.param, tuned.value, target_recall,
        )
    info = IndexInfo(
        kind=kind, spec=str(spec), file=f"{kind}.faiss", dim=d, n_vectors=n, n_at_train=n, train_size=n_train,
        search_param=tuned.param, search_value=tuned.value, k=k, target_recall=target_recall,
        measured_recall=tuned.recall, current_recall=tuned.recall, target_met=tuned.target_met,
        memory_bytes=ann.memory_bytes(), estimated_memory_bytes=spec.estimate_memory(n, d), memory_budget=budget,
        build_s=round(build_s, 4), tune_s=round(tune_s, 4), tried={str(v): r for v, r in tuned.tried.items()},
        chosen_by=chosen_by, tuned_on="data" if tuning_queries is None else f"{len(probe.queries)} given queries",
        tune_queries=len(probe.queries), recall_lower=tuned.recall_lower, certified=tuned.certified,
        predicted={str(v): r for v, r in tuned.predicted.items()},
    )
    return ann, info, probe


def _build_params(
    kind: Sequence[str], memory_budget: str | int, target_recall: float, k: int, seed: int,
    specs: dict[str, str] | None, growth_factor: float, drift_tolerance: float, max_tombstone_fraction: float,
    n_tune_queries: int, keep_versions: int,
) -> dict[str, Any]:
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1]; got {target_recall}")
    if k <= 0:
        raise ValueError(f"k must be positive; got {k}")
    if growth_factor <= 1.0:
        raise ValueError(f"growth_factor must be > 1; got {growth_factor}")
    return {
        "kind": list(kind), "memory_budget": parse_memory(memory_budget), "target_recall": target_recall, "k": k,
        "seed": seed, "specs": dict(specs or {}), "growth_factor": growth_factor, "drift_tolerance": drift_tolerance,
        "max_tombstone_fraction": max_tombstone_fraction, "n_tune_queries": n_tune_queries, "keep_versions": keep_versions,
    }


def _stage_full_build(
    vd: VersionedDir, source: EmbeddingSource, corpus: Corpus, params: dict[str, Any], item_ids: Sequence[str] | None,
    *, history: list[str], parent: int | None, ngpu: int, tuning_queries: dict[str, np.ndarray] | None = None,
) -> Manifest:
    """Build every requested index from the store and publish it (caller holds the lock)."""
    kinds = params["kind"]
    allowed = {"global", _MULTI_KIND[corpus]}
    if not kinds or not set(kinds) <= allowed:
        raise ValueError(f"kind must be a non-empty subset of {sorted(allowed)} for {corpus}; got {kinds}")
    if tuning_queries and not set(tuning_queries) <= set(kinds):
        raise ValueError(f"tuning_queries has kinds {sorted(tuning_queries)} but only {kinds} are built")
    vecs = _gather(source, corpus, item_ids)
    if not vecs.item_ids:
        raise ValueError(f"the embedding store {source.root} holds no {corpus} to index; encode some first")
    idmap = IdMap()
    int_ids = idmap.assign(vecs.item_ids, vecs.n_multi if _MULTI_KIND[corpus] in kinds else [0] * len(vecs.item_ids))
    built: dict[str, tuple[AnnIndex, IndexInfo, RecallProbe]] = {}
    for kind in kinds:
        if kind == "global":
            xb, ids = vecs.global_matrix(), int_ids
        else:
            xb, ids = vecs.multi_matrix(), idmap.region_ids(int_ids)
        built[kind] = build_vector_index(
            xb, ids, spec=params["specs"].get(kind), memory_budget=params["memory_budget"],
            target_recall=params["target_recall"], k=params["k"], seed=params["seed"],
            n_tune_queries=params["n_tune_queries"], ngpu=ngpu, kind=kind,
            tuning_queries=(tuning_queries or {}).get(kind),
        )
    embed_dim = next(iter(built.values()))[1].dim
    manifest = Manifest(
        version=vd.next_version(), corpus=corpus, source=str(source.root), embed_dim=embed_dim, n_items=len(idmap),
        indexes={k: v[1] for k, v in built.items()}, build=params, created_at=_now(), parent_version=parent,
        history=history, encoder=vecs.encoder, encoder_hash=vecs.encoder_hash,
    )
    segment = vecs.region_segment(int_ids) if corpus == "images" else None
    _publish(vd, manifest, {k: v[0] for k, v in built.items()}, {k: v[2] for k, v in built.items()}, idmap,
             new_segment=segment)
    return manifest


def _publish(
    vd: VersionedDir, manifest: Manifest, anns: dict[str, AnnIndex], probes: dict[str, RecallProbe], idmap: IdMap,
    *, segments_from: Path | None = None, new_segment: RegionSegment | None = None,
) -> None:
    """Write a version (indexes, probes, id map, manifest, region matrix) and publish it atomically.

    The region matrix of the new version is the segments of ``segments_from`` (hard-linked) plus
    ``new_segment``; a version whose predecessor had no matrix gets none (search then reads the store).
    """
    with vd.stage() as tmp:
        had = bool(copy_segments(segments_from, tmp)) if segments_from is not None else False
        if new_segment is not None and (segments_from is None or had):
            write_segment(tmp, new_segment, manifest.embed_dim)
        for kind, ann in anns.items():
            info = manifest.indexes[kind]
            ann.save(tmp / info.file)
            info.memory_bytes = (tmp / info.file).stat().st_size  # the serialised size, as written
            probes[kind].save(tmp / f"{kind}.probe.npz")
        idmap.save(tmp)
        manifest.write(tmp)
        vd.publish(tmp, manifest.version)
    logger.info("published index version %d in %s (%s)", manifest.version, vd.root, manifest.history[-1:])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def build_indexes(
    embeddings: Any,
    out_dir: str | Path,
    *,
    kind: Sequence[str] = ("global", "region"),
    memory_budget: str | int = "4G",
    target_recall: float = 0.95,
    k: int = 10,
    seed: int = 0,
    specs: dict[str, str] | None = None,
    image_ids: Sequence[str] | None = None,
    growth_factor: float = 2.0,
    drift_tolerance: float = 0.02,
    max_tombstone_fraction: float = 0.2,
    n_tune_queries: int = DEFAULT_TUNE_QUERIES,
    tuning_queries: dict[str, np.ndarray] | None = None,
    ngpu: int = 0,
    keep_versions: int = 3,
    lock_timeout: float = 60.0,
) -> Manifest:
    """Build the image indexes from an embedding store and publish them as a new version of ``out_dir``.

    Args:
        embeddings: a ``storage.ImageEmbeddingStore`` or the path of one.
        out_dir: the versioned index directory (created if needed).
        kind: ``"global"`` (needs ``global_embedding`` on every record) and/or ``"region"``.
        memory_budget: per index, bytes or ``"4G"`` (binary units), for the automatic choice.
        target_recall: recall@k against exact search that nprobe/efSearch are tuned to reach.
        k: recall depth of the tuning.
        seed: seeds sampling and k-means; the same inputs and seed give the same index.
        specs: optional ``kind -> index key`` overrides (``{"region": "IVF1024,Flat"}``).
        image_ids: index only these images (default: every image in the store).
        growth_factor: a rebuild is due once an index holds this many times its vectors at training.
        drift_tolerance: a rebuild is due when probe recall falls below ``target_recall - drift_tolerance``.
        max_tombstone_fraction: a rebuild is due when more than this fraction of HNSW vectors are removed.
        n_tune_queries: held-out queries for tuning (and later drift checks).
        tuning_queries: optional ``kind -> float[Q, D]`` queries to tune (and check drift) on instead of
            held-out database vectors; pass caption word vectors for ``"region"`` so nprobe/efSearch are
            tuned on the text queries the region index serves. Not kept for rebuilds (they fall back to
            held-out vectors unless given again).
        ngpu: -1 all GPUs, 0 CPU (default), n GPUs; needs faiss-gpu and a GPU.
        keep_versions: versions kept on disk (>= 2 so that :func:`rollback` works).
        lock_timeout: seconds to wait for another publisher before :class:`index.version.IndexBusyError`.

    Returns:
        The published :class:`Manifest`.
    """
    params = _build_params(kind, memory_budget, target_recall, k, seed, specs, growth_factor, drift_tolerance,
                           max_tombstone_fraction, n_tune_queries, keep_versions)
    vd = VersionedDir(out_dir, keep=keep_versions)
    source = _open_source(embeddings, "images")
    with vd.lock(lock_timeout):
        return _stage_full_build(vd, source, "images", params, image_ids, history=["build"], parent=vd.current(), ngpu=ngpu,
                                 tuning_queries=tuning_queries)


def build_caption_indexes(
    captions: Any,
    out_dir: str | Path,
    *,
    kind: Sequence[str] = ("global", "word"),
    memory_budget: str | int = "4G",
    target_recall: float = 0.95,
    k: int = 10,
    seed: int = 0,
    specs: dict[str, str] | None = None,
    caption_ids: Sequence[str] | None = None,
    growth_factor: float = 2.0,
    drift_tolerance: float = 0.02,
    max_tombstone_fraction: float = 0.2,
    n_tune_queries: int = DEFAULT_TUNE_QUERIES,
    ngpu: int = 0,
    keep_versions: int = 3,
    lock_timeout: float = 60.0,
) -> Manifest:
    """Build caption indexes (global vectors and/or word vectors) for image-to-text search.

    Same arguments as :func:`build_indexes`; ``captions`` is a ``storage.CaptionEmbeddingStore`` or its
    path, the multi-vector kind is ``"word"`` (word id = (caption int id, token slot)), and
    ``caption_ids`` (default: every caption in the store) plays the part of ``image_ids``. Update the
    result with :func:`add_captions` / :func:`remove_captions`.
    """
    params = _build_params(kind, memory_budget, target_recall, k, seed, specs, growth_factor, drift_tolerance,
                           max_tombstone_fraction, n_tune_queries, keep_versions)
    vd = VersionedDir(out_dir, keep=keep_versions)
    source = _open_source(captions, "captions")
    with vd.lock(lock_timeout):
        return _stage_full_build(vd, source, "captions", params, caption_ids, history=["build"], parent=vd.current(),
                                 ngpu=ngpu)


def _load_for_update(vd: VersionedDir) -> tuple[Manifest, dict[str, AnnIndex], dict[str, RecallProbe], IdMap]:
    path = vd.path()
    manifest = Manifest.read(path)
    vd.keep = int(manifest.build.get("keep_versions", vd.keep))
    anns = {
        kind: AnnIndex.load(path / info.file, IndexSpec.parse(info.spec), info.dim, search_value=info.search_value, mmap=False)
        for kind, info in manifest.indexes.items()
    }
    probes = {kind: RecallProbe.load(path / f"{kind}.probe.npz") for kind in manifest.indexes}
    return manifest, anns, probes, IdMap.load(path)


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
    changed: dict[str, dict[str, np.ndarray]], new_segment: RegionSegment | None = None,
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
        return _stage_full_build(vd, source, manifest.corpus, manifest.build, idmap.alive_ids(),  # type: ignore[arg-type]
                                 history=[*history, f"rebuild: {reason}"], parent=parent, ngpu=ngpu)
    manifest.version = vd.next_version()
    manifest.parent_version = parent
    manifest.created_at = _now()
    manifest.n_items = len(idmap)
    manifest.rebuild_due = reason
    manifest.history = history
    _publish(vd, manifest, anns, probes, idmap, segments_from=vd.path(parent), new_segment=new_segment)
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
    lock_timeout: float,
) -> Manifest:
    """:func:`add_images` / :func:`add_captions` for ``corpus``."""
    vd = VersionedDir(out_dir)
    source = _open_source(embeddings, corpus)
    with vd.lock(lock_timeout):
        manifest, anns, probes, idmap = _load_corpus(vd, corpus)
        new = [s for s in dict.fromkeys(item_ids) if s not in idmap]
        if not new:  # nothing to add: keep the current version rather than publish an identical one
            return manifest
        vecs = _gather(source, corpus, new)
        multi_kind = _MULTI_KIND[corpus]
        counts = vecs.n_multi if multi_kind in anns else [0] * len(vecs.item_ids)
        int_ids = idmap.assign(vecs.item_ids, counts)
        changed: dict[str, dict[str, np.ndarray]] = {}
        for kind, ann in anns.items():
            if kind == "global":
                x, ids = vecs.global_matrix(), int_ids
            else:
                x, ids = vecs.multi_matrix(), idmap.region_ids(int_ids)
            ann.add(x, ids)
            probes[kind].add(np.asarray(x, dtype=np.float32), ids)
            changed[kind] = {"added": ids, "added_vectors": x}
        skipped = len(item_ids) - len(new)
        event = f"add {len(vecs.item_ids)}" + (f" ({skipped} already indexed)" if skipped else "")
        return _finish_update(vd, source, manifest, anns, probes, idmap, event, auto_rebuild=auto_rebuild, ngpu=ngpu,
                              changed=changed, new_segment=vecs.region_segment(int_ids) if corpus == "images" else None)


def _remove_items(
    out_dir: str | Path, item_ids: Sequence[str], corpus: Corpus, *, embeddings: Any, auto_rebuild: bool, ngpu: int,
    lock_timeout: float,
) -> Manifest:
    """:func:`remove_images` / :func:`remove_captions` for ``corpus``."""
    vd = VersionedDir(out_dir)
    source = _open_source(embeddings, corpus) if embeddings is not None else None
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

    Raises:
        FileNotFoundError: nothing is published in ``out_dir``.
        KeyError: an image id is not in ``embeddings``.
        ValueError: ``out_dir`` is a caption index, or a record lacks a vector an index needs, or has
            the wrong dimension.
    """
    return _add_items(out_dir, embeddings, image_ids, "images", auto_rebuild=auto_rebuild, ngpu=ngpu,
                      lock_timeout=lock_timeout)


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


class IndexHandle:
    """A read-only view of one published version (indexes memory-mapped where faiss supports it).

    Attributes:
        manifest: the version's :class:`Manifest`.
        idmap: the version's :class:`IdMap`.
        indexes: ``kind -> AnnIndex`` with the tuned search parameters set.
        path: the version directory.
        regions: the version's region matrix (opened on first use), or ``None``.
    """

    def __init__(self, path: Path, *, mmap: bool = True, ngpu: int = 0) -> None:
        self.path = path
        self.manifest = Manifest.read(path)
        self.idmap = IdMap.load(path)
        n_gpu = resolve_ngpu(ngpu)
        self.indexes: dict[str, AnnIndex] = {
            kind: AnnIndex.load(path / info.file, IndexSpec.parse(info.spec), info.dim,
                                search_value=info.search_value, mmap=mmap, ngpu=n_gpu)
            for kind, info in self.manifest.indexes.items()
        }
        self._regions: RegionMatrix | None | bool = False  # False: not opened yet

    @property
    def regions(self) -> RegionMatrix | None:
        """The version's memory-mapped :class:`index.regions.RegionMatrix`, or ``None`` when it has none
        (a caption index, or an image index published before region matrices existed)."""
        if self._regions is False:
            try:
                self._regions = RegionMatrix(self.path, self.idmap.image_ids)
            except FileNotFoundError:
                self._regions = None
        return self._regions  # type: ignore[return-value]

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def multi_kind(self) -> str:
        return _MULTI_KIND[self.manifest.corpus]

    def _get(self, kind: str) -> AnnIndex:
        if kind not in self.indexes:
            raise ValueError(f"index version {self.version} has no {kind!r} index (it has {sorted(self.indexes)}); "
                             f"build it with kind=(..., {kind!r})")
        return self.indexes[kind]

    def search_global(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest items by global vector.

        Args:
            xq: ``float32[Q, E]`` query vectors.
            k: results per query.

        Returns:
            ``(scores float32[Q, k], item_int int64[Q, k])``, the items' int ids (``idmap.image_id``
            names them), ``-1`` where missing (missing results come last in a row).
        """
        return self._get("global").search(np.atleast_2d(xq), k)

    def search_multi(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Nearest regions (or caption words) of each query vector.

        Args:
            xq: ``float32[L, E]`` one row per query word (or per region, for image-to-text).
            k: vectors per row.

        Returns:
            ``(scores float32[L, k], item_int int64[L, k], slot int64[L, k])``; ``-1`` where missing.
        """
        scores, ids = self._get(self.multi_kind).search(np.atleast_2d(xq), k)
        item, slot = IdMap.split_region_ids(ids)
        return scores, item, slot


def open_index(out_dir: str | Path, version: int | None = None, *, mmap: bool = True, ngpu: int = 0) -> IndexHandle:
    """Open a published version read-only (default: the current one), memory-mapped with ``mmap``.

    Raises:
        FileNotFoundError: nothing is published, or ``version`` does not exist.
    """
    return IndexHandle(VersionedDir(out_dir).path(version), mmap=mmap, ngpu=ngpu)


def versions(out_dir: str | Path) -> list[Manifest]:
    """Manifests of every version kept in ``out_dir``, oldest first."""
    vd = VersionedDir(out_dir)
    return [Manifest.read(vd.path(v)) for v in vd.versions()]


def rollback(out_dir: str | Path, *, lock_timeout: float = 60.0) -> Manifest:
    """Point ``CURRENT`` back at the previous version; returns its manifest.

    Raises:
        FileNotFoundError: there is no older version.
    """
    vd = VersionedDir(out_dir)
    with vd.lock(lock_timeout):
        return Manifest.read(vd.path(vd.rollback()))


def update_or_build(
    out_dir: str | Path,
    embeddings: Any,
    image_ids: Sequence[str] | None = None,
    *,
    rebuild: bool = False,
    ngpu: int = 0,
    **build_kwargs: Any,
) -> Manifest:
    """The one decision "add to the current version, or build one": every run path calls this.

    Builds a new version from every stored image (``build_indexes(embeddings, out_dir, **build_kwargs)``)
    when ``rebuild`` is set, when ``image_ids`` is ``None`` or when nothing is published yet; otherwise
    adds ``image_ids`` to the current version (:func:`add_images`, which skips ids already indexed and
    rebuilds by itself when growth or drift call for it).
    """
    if rebuild or image_ids is None or not versions(out_dir):
        return build_indexes(embeddings, out_dir, ngpu=ngpu, **build_kwargs)
    return add_images(out_dir, embeddings, image_ids, ngpu=ngpu)

"""Building indexes: one tuned faiss index over a matrix (:func:`build_vector_index`), and a whole new
version of an index directory from an embedding store (:func:`build_indexes` for images: a global index,
one vector per image, and a region multi-vector index, id -> (image, slot); :func:`build_caption_indexes`
for captions: global and word vectors), published atomically with :func:`publish_version`.

Incremental updates are in :mod:`index.update`, reading in :mod:`index.handle`.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from regionrank.index._faiss import check_ngpu
from regionrank.index.ann import AnnIndex
from regionrank.index.idmap import IdMap
from regionrank.index.integrity import checksum_files
from regionrank.index.manifest import IndexInfo, Manifest
from regionrank.index.regions import REGIONS_DIR, RegionSegment, copy_segments, write_segment
from regionrank.index.source import MULTI_KIND, Corpus, EmbeddingSource, gather_vectors, open_embedding_source
from regionrank.index.spec import IndexSpec, RegionLayout, choose_region_layout, choose_spec, parse_memory
from regionrank.index.tuning import DecodedRows, RecallProbe, tune_queries_needed, tune_search_param
from regionrank.index.version import VersionedDir

__all__ = [
    "DEFAULT_TUNE_QUERIES",
    "build_caption_indexes",
    "build_indexes",
    "build_params",
    "build_vector_index",
    "build_version",
    "publish_version",
]

logger = logging.getLogger(__name__)

DEFAULT_TUNE_QUERIES = 500
DEFAULT_SHARD_VECTORS = 1 << 18
"""Vectors (regions, or images for a global-only build) one shard task of a sharded build reads at most."""


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
    truth: str = "exact",
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
        ngpu: GPUs to train/add/search on, a resolved count (0 CPU).
        kind: label stored in the returned :class:`IndexInfo`.
        tuning_queries: ``float[Q, D]`` queries to tune on instead of held-out database vectors, e.g.
            caption word vectors for a region index (text queries against image vectors behave
            differently from image-to-image queries; ALGORITHMS.md §8, clip-retrieval #76).
        truth: ``"exact"`` tunes recall against exact search over ``xb``; ``"codes"`` against exact search
            over the index's own decoded codes (IVF-PQ only). A compressed region index is scored from its
            codes, so what nprobe must find is what exhaustive search of the codes finds: against exact
            neighbours PQ's recall plateaus below the target and the tuner would probe every list.

    Returns:
        ``(index, info, probe)``: the tuned index, its manifest entry, and the recall probe used for
        drift detection on later updates.

    Raises:
        ValueError: empty or malformed input, a spec that does not fit ``d``, or more GPUs than faiss sees.
    """
    xb = np.asarray(xb)
    ids = np.asarray(ids, dtype=np.int64)
    if xb.ndim != 2 or xb.shape[0] == 0:
        raise ValueError(f"need a non-empty (N, D) matrix of vectors; got shape {tuple(xb.shape)}")
    if ids.shape != (xb.shape[0],):
        raise ValueError(f"need one id per vector: {xb.shape[0]} vectors, ids of shape {tuple(ids.shape)}")
    n, d = xb.shape
    if truth not in ("exact", "codes"):
        raise ValueError(f"truth must be 'exact' or 'codes'; got {truth!r}")
    budget = parse_memory(memory_budget)
    chosen_by = "user" if spec is not None else "auto"
    spec = IndexSpec.parse(spec) if isinstance(spec, str) else spec or choose_spec(n, d, budget)
    check_trainable(spec, n)
    if truth == "codes":
        spec.standalone_code_bytes()  # raises for an index without codes, before any training
    ann = AnnIndex.create(spec, d, ngpu=check_ngpu(ngpu))
    t0 = time.perf_counter()
    train_rows, query_rows = sample_rows(n, spec, seed=seed, n_tune_queries=n_tune_queries,
                                         target_recall=target_recall, k=k)
    if len(train_rows):
        ann.train(np.asarray(xb[train_rows], dtype=np.float32), seed=seed)
    ann.add(xb, ids)
    build_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    truth_xb = DecodedRows(ann, xb) if truth == "codes" else None
    if tuning_queries is None:
        probe = RecallProbe.create(xb, ids, query_rows, k=k, truth_xb=truth_xb, truth=truth)
    else:
        probe = RecallProbe.from_queries(xb if truth_xb is None else truth_xb, ids, tuning_queries, k=k, truth=truth)
    info = tuned_info(ann, probe, kind=kind, n=n, n_train=len(train_rows), budget=budget, chosen_by=chosen_by,
                      target_recall=target_recall, k=k, build_s=build_s, tune_started=t1,
                      tuned_on_data=tuning_queries is None)
    return ann, info, probe


def check_trainable(spec: IndexSpec, n: int) -> None:
    """Raise when an IVF ``spec`` has more lists than the ``n`` vectors it would be trained on."""
    if spec.family == "ivf" and spec.nlist > n:
        raise ValueError(f"{spec} needs at least {spec.nlist} vectors to train; got {n}. Use fewer lists or Flat")


def sample_rows(n: int, spec: IndexSpec, *, seed: int, n_tune_queries: int, target_recall: float,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train rows, probe query rows)``, both sorted ``int64``, of an ``n``-row matrix: one seeded
    permutation, its first :meth:`IndexSpec.train_size` rows train, the next ones are the held-out tuning
    queries (raised for targets close to 1, ``tuning.tune_queries_needed``); rows of the training sample
    when too few are left. The one-shot and the sharded build draw the very same rows."""
    perm = np.random.default_rng(seed).permutation(n)
    n_train = spec.train_size(n)
    train_rows = np.sort(perm[:n_train])
    if spec.search_param is not None:
        n_tune_queries = tune_queries_needed(target_recall, k, n_tune_queries)
    pool = perm[n_train:] if n - n_train >= min(n_tune_queries, n) else perm
    return train_rows, np.sort(pool[: min(n_tune_queries, n - 1 if n > 1 else 1)])


def tuned_info(
    ann: AnnIndex, probe: RecallProbe, *, kind: str, n: int, n_train: int, budget: int, chosen_by: str,
    target_recall: float, k: int, build_s: float, tune_started: float, tuned_on_data: bool,
) -> IndexInfo:
    """Tune ``ann``'s search parameter on ``probe`` (:func:`tune_search_param`) and describe the result."""
    spec, d = ann.spec, ann.dim
    tuned = tune_search_param(ann, probe, target_recall=target_recall)
    tune_s = time.perf_counter() - tune_started
    if tuned.target_met and not tuned.certified:
        logger.info("%s index %s: recall@%d %.4f at %s=%s reaches %.4f on %d queries, but its lower bound %.4f does not",
                    kind, spec, k, tuned.recall, tuned.param, tuned.value, target_recall, len(probe.queries),
                    tuned.recall_lower)
    if not tuned.target_met:
        logger.warning(
            "%s index %s reaches recall@%d %.3f at %s=%s, below the target %.3f; a larger budget or spec would help",
            kind, spec, k, tuned.recall, tuned.param, tuned.value, target_recall,
        )
    return IndexInfo(
        kind=kind, spec=str(spec), file=f"{kind}.faiss", dim=d, n_vectors=n, n_at_train=n, train_size=n_train,
        search_param=tuned.param, search_value=tuned.value, k=k, target_recall=target_recall,
        measured_recall=tuned.recall, current_recall=tuned.recall, target_met=tuned.target_met,
        memory_bytes=ann.memory_bytes(), estimated_memory_bytes=spec.estimate_memory(n, d), memory_budget=budget,
        build_s=round(build_s, 4), tune_s=round(tune_s, 4), tried={str(v): r for v, r in tuned.tried.items()},
        chosen_by=chosen_by, tuned_on="data" if tuned_on_data else f"{len(probe.queries)} given queries",
        tune_queries=len(probe.queries), recall_lower=tuned.recall_lower, certified=tuned.certified,
        predicted={str(v): r for v, r in tuned.predicted.items()}, truth=probe.truth,
    )


def build_params(
    kind: Sequence[str], memory_budget: str | int, target_recall: float, k: int, seed: int,
    specs: dict[str, str] | None, growth_factor: float, drift_tolerance: float, max_tombstone_fraction: float,
    n_tune_queries: int, keep_versions: int, region_layout: str = "auto", shard_vectors: int = DEFAULT_SHARD_VECTORS,
) -> dict[str, Any]:
    """The build parameters recorded in a manifest (and reused by rebuilds), checked.

    Raises:
        ValueError: ``target_recall``, ``k`` or ``growth_factor`` out of range, or an unknown ``region_layout``.
    """
    if region_layout not in ("auto", "float16", "codes"):
        raise ValueError(f"region_layout must be 'auto', 'float16' or 'codes'; got {region_layout!r}")
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1]; got {target_recall}")
    if k <= 0:
        raise ValueError(f"k must be positive; got {k}")
    if growth_factor <= 1.0:
        raise ValueError(f"growth_factor must be > 1; got {growth_factor}")
    if isinstance(shard_vectors, bool) or not isinstance(shard_vectors, int) or shard_vectors <= 0:
        raise ValueError(f"shard_vectors must be a positive int (vectors per shard task); got {shard_vectors!r}")
    return {
        "kind": list(kind), "memory_budget": parse_memory(memory_budget), "target_recall": target_recall, "k": k,
        "seed": seed, "specs": dict(specs or {}), "growth_factor": growth_factor, "drift_tolerance": drift_tolerance,
        "max_tombstone_fraction": max_tombstone_fraction, "n_tune_queries": n_tune_queries, "keep_versions": keep_versions,
        "region_layout": region_layout, "shard_vectors": shard_vectors,
    }


def build_version(
    vd: VersionedDir, source: EmbeddingSource, corpus: Corpus, params: dict[str, Any], item_ids: Sequence[str] | None,
    *, history: list[str], parent: int | None, ngpu: int, tuning_queries: dict[str, np.ndarray] | None = None,
    executor: Any = None,
) -> Manifest:
    """Build every requested index of ``corpus`` from the store and publish it as the next version of ``vd``
    (the caller holds ``vd``'s lock; ``params`` come from :func:`build_params`). With an ``executor`` the
    build is sharded (:func:`index.shards.build_version_sharded`): the same version, the float matrix never
    gathered in one process."""
    kinds = params["kind"]
    allowed = {"global", MULTI_KIND[corpus]}
    if not kinds or not set(kinds) <= allowed:
        raise ValueError(f"kind must be a non-empty subset of {sorted(allowed)} for {corpus}; got {kinds}")
    if tuning_queries and not set(tuning_queries) <= set(kinds):
        raise ValueError(f"tuning_queries has kinds {sorted(tuning_queries)} but only {kinds} are built")
    if executor is not None:
        from regionrank.index.shards import build_version_sharded

        return build_version_sharded(vd, source, corpus, params, item_ids, history=history, parent=parent, ngpu=ngpu,
                                     tuning_queries=tuning_queries, executor=executor)
    vecs = gather_vectors(source, corpus, item_ids)
    if not vecs.item_ids:
        raise ValueError(f"the embedding store {source.root} holds no {corpus} to index; encode some first")
    idmap = IdMap()
    int_ids = idmap.assign(vecs.item_ids, vecs.n_multi if MULTI_KIND[corpus] in kinds else [0] * len(vecs.item_ids))
    built: dict[str, tuple[AnnIndex, IndexInfo, RecallProbe]] = {}
    layout: RegionLayout = "float16"
    for kind in kinds:
        if kind == "global":
            xb, ids = vecs.global_matrix(), int_ids
        else:
            xb, ids = vecs.multi_matrix(), idmap.region_ids(int_ids)
        spec, kind_layout, chosen_by = resolve_spec(kind, xb.shape[0], xb.shape[1], params)
        layout = kind_layout if kind == "region" else layout
        built[kind] = build_vector_index(
            xb, ids, spec=spec, memory_budget=params["memory_budget"],
            target_recall=params["target_recall"], k=params["k"], seed=params["seed"],
            n_tune_queries=params["n_tune_queries"], ngpu=ngpu, kind=kind,
            tuning_queries=(tuning_queries or {}).get(kind),
            truth="codes" if kind == "region" and layout == "codes" else "exact",
        )
        built[kind][1].chosen_by = chosen_by
    embed_dim = next(iter(built.values()))[1].dim
    manifest = Manifest(
        version=vd.next_version(), corpus=corpus, source=str(source.root), embed_dim=embed_dim, n_items=len(idmap),
        indexes={k: v[1] for k, v in built.items()}, build=params, created_at="", parent_version=parent,
        history=history, encoder=vecs.encoder, encoder_hash=vecs.encoder_hash, region_layout=layout,
    )
    segment = vecs.region_segment(int_ids) if corpus == "images" else None
    publish_version(vd, manifest, {k: v[0] for k, v in built.items()}, {k: v[2] for k, v in built.items()}, idmap,
             new_segment=segment)
    return manifest


def resolve_spec(kind: str, n: int, d: int, params: dict[str, Any]) -> tuple[IndexSpec, RegionLayout, str]:
    """``(spec, region layout, chosen_by)`` of index ``kind`` over ``n`` vectors of dimension ``d`` under the
    build ``params``: the given spec (``params["specs"]``) or the automatic choice; for ``"region"`` the
    layout first (with codes, the region index is the PQ codec that fits, ``choose_region_layout``)."""
    given_key: str | None = params["specs"].get(kind)
    given = IndexSpec.parse(given_key) if given_key else None
    chosen_by = "user" if given is not None else "auto"
    if kind == "region":
        spec, layout = choose_region_layout(n, d, params["memory_budget"], layout=params.get("region_layout", "auto"),
                                            spec=given)
        return spec, layout, chosen_by
    return given or choose_spec(n, d, params["memory_budget"]), "float16", chosen_by


def publish_version(
    vd: VersionedDir, manifest: Manifest, anns: dict[str, AnnIndex], probes: dict[str, RecallProbe], idmap: IdMap,
    *, segments_from: Path | None = None, new_segment: RegionSegment | None = None,
) -> None:
    """Write a version (indexes, probes, id map, region matrix, manifest) and publish it atomically
    (the caller holds ``vd``'s lock).

    The region matrix of the new version is the segments of ``segments_from`` (hard-linked) plus
    ``new_segment``; a version whose predecessor had no matrix gets none (search then reads the store).
    The manifest is stamped with the publication time and the size and sha256 of every file written
    (``manifest.files``; hard-linked segments keep the checksum ``manifest.files`` held for them).
    """
    with vd.stage() as tmp:
        had = bool(copy_segments(segments_from, tmp)) if segments_from is not None else False
        if new_segment is not None and (segments_from is None or had):
            codec = anns["region"] if manifest.region_layout == "codes" else None
            write_segment(tmp, new_segment, manifest.embed_dim, codec)
        write_version(vd, tmp, manifest, anns, probes, idmap, segments_from=segments_from)


def write_version(
    vd: VersionedDir, tmp: Path, manifest: Manifest, anns: dict[str, AnnIndex], probes: dict[str, RecallProbe],
    idmap: IdMap, *, segments_from: Path | None = None,
) -> None:
    """Write the indexes, probes, id map, checksums and manifest into the staged directory ``tmp`` (its
    region matrix already there) and publish it as ``manifest.version`` of ``vd``."""
    for kind, ann in anns.items():
        info = manifest.indexes[kind]
        ann.save(tmp / info.file)
        info.memory_bytes = (tmp / info.file).stat().st_size  # the serialised size, as written
        probes[kind].save(tmp / f"{kind}.probe.npz")
    manifest.bytes_per_region = _region_bytes(tmp, manifest)
    idmap.save(tmp)
    manifest.created_at = _now()
    manifest.files = checksum_files(tmp, previous_dir=segments_from, previous=manifest.files)
    manifest.write(tmp)
    vd.publish(tmp, manifest.version)
    logger.info("published index version %d in %s (%s)", manifest.version, vd.root, manifest.history[-1:])


def _region_bytes(version_dir: Path, manifest: Manifest) -> dict[str, float]:
    """Bytes per indexed region of a staged version, by part (see :attr:`Manifest.bytes_per_region`);
    empty without a region index."""
    info = manifest.indexes.get("region")
    if info is None or not info.n_vectors:
        return {}
    n = info.n_vectors

    def size(pattern: str) -> int:
        return sum(p.stat().st_size for p in (version_dir / REGIONS_DIR).glob(pattern))

    out = {"region_index": (version_dir / info.file).stat().st_size / n, "codes": size("*.codes.npy") / n,
           "float16_matrix": (size("*.vectors.npy") + size("*.boxes.npy")) / n}
    glob = manifest.indexes.get("global")
    out["global_index"] = (version_dir / glob.file).stat().st_size / n if glob is not None else 0.0
    rescoring = out["codes"] if manifest.region_layout == "codes" else out["float16_matrix"]
    out["search"] = out["region_index"] + out["global_index"] + rescoring
    return {k: round(v, 2) for k, v in out.items()}


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
    region_layout: str = "auto",
    executor: Any = None,
    shard_vectors: int = DEFAULT_SHARD_VECTORS,
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
        ngpu: GPUs to train, add and tune on, a resolved count: 0 CPU (default), n GPUs (``index.available_gpus()``
            for all); needs faiss-gpu and a GPU.
        keep_versions: versions kept on disk (>= 2 so that :func:`rollback` works).
        lock_timeout: seconds to wait for another publisher before :class:`index.version.IndexBusyError`.
        region_layout: how re-scoring reads region vectors: ``"auto"`` (compressed codes only when the
            budget requires them), ``"float16"`` or ``"codes"`` (see :func:`index.spec.choose_region_layout`;
            the manifest records the layout and its bytes per region).
        executor: build the indexes as shards in parallel (:mod:`index.shards`): a ``distributed.Client``,
            a ``concurrent.futures.Executor``, or a ``map(fn, items)`` callable; ``None`` builds in this
            process. Workers must reach the embedding store and ``out_dir`` by the same paths.
        shard_vectors: with an ``executor``, vectors one shard task reads at most (its memory,
            :func:`index.shards.shard_task_bytes`); kept for rebuilds.

    Returns:
        The published :class:`Manifest`.
    """
    params = build_params(kind, memory_budget, target_recall, k, seed, specs, growth_factor, drift_tolerance,
                           max_tombstone_fraction, n_tune_queries, keep_versions, region_layout=region_layout,
                           shard_vectors=shard_vectors)
    vd = VersionedDir(out_dir, keep=keep_versions)
    source = open_embedding_source(embeddings, "images")
    with vd.lock(lock_timeout):
        return build_version(vd, source, "images", params, image_ids, history=["build"], parent=vd.current(), ngpu=ngpu,
                             tuning_queries=tuning_queries, executor=executor)


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
    executor: Any = None,
    shard_vectors: int = DEFAULT_SHARD_VECTORS,
) -> Manifest:
    """Build caption indexes (global vectors and/or word vectors) for image-to-text search.

    Same arguments as :func:`build_indexes`; ``captions`` is a ``storage.CaptionEmbeddingStore`` or its
    path, the multi-vector kind is ``"word"`` (word id = (caption int id, token slot)), and
    ``caption_ids`` (default: every caption in the store) plays the part of ``image_ids``. Update the
    result with :func:`add_captions` / :func:`remove_captions`.
    """
    params = build_params(kind, memory_budget, target_recall, k, seed, specs, growth_factor, drift_tolerance,
                           max_tombstone_fraction, n_tune_queries, keep_versions, shard_vectors=shard_vectors)
    vd = VersionedDir(out_dir, keep=keep_versions)
    source = open_embedding_source(captions, "captions")
    with vd.lock(lock_timeout):
        return build_version(vd, source, "captions", params, caption_ids, history=["build"], parent=vd.current(),
                             ngpu=ngpu, executor=executor)

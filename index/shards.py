"""Sharded index builds: a version's indexes built by shard tasks in parallel (on Dask workers, or on any
executor) from one quantiser trained once, then merged into the version's indexes.

:func:`build_version_sharded` runs a build as :func:`index.build.build_version` does, without ever holding
the float matrix in one process:

1. **Plan** (caller): the items in build order (store order by default) and their vector counts, read from
   the store's small ``num_regions`` / ``num_words`` column; the slices, runs of consecutive items inside
   one Parquet shard of the store holding at most ``shard_vectors`` vectors (one item with more gets a
   slice of its own). The index specs are chosen from the counts, as the one-shot build chooses them.
2. **Sample** (one task per slice): the rows of the seeded training sample and the held-out tuning queries
   (:func:`index.build.sample_rows`, the very rows the one-shot build draws) that fall in the slice.
3. **Train** (caller): each index's quantiser, once, on that sample (on the GPU with ``ngpu``).
4. **Add** (one task per slice): the slice's vectors are added to a copy of the trained, empty index and
   written as a shard file into the staged version directory; the task also writes the slice's region
   matrix segment (with its codes in the compressed layout) and returns the exact top neighbours of the
   tuning queries among its vectors (the recall probe's ground truth, merged by the caller).
5. **Merge** (caller): the shards, in slice order, into the trained index (:meth:`AnnIndex.merge_shard`:
   faiss ``merge_from`` of the inverted lists for IVF, an append for Flat, a re-add for HNSW, whose graph
   cannot be merged); the shard files are deleted, the merged index is tuned and the version published
   atomically (the staged directory is renamed into place; checksums cover every file, the segments the
   tasks wrote included).

**Merged, not kept as shards.** Appending inverted lists in slice order gives each list the ids, codes and
order that adding the vectors in one go gives, so the merged index *is* the one-shot index (same ids,
same search results, Flat and IVF alike, ``tests/unit/index/test_sharded_build.py``). Everything downstream is
then unchanged and needs no new proof: the first stage's completeness argument (a short region row holds
everything the index can reach) is about one index, incremental updates (:func:`index.update_or_build`)
add to it, and search memory-maps one file per kind. What sharding has to take off one process is the
float matrix (``4 d`` bytes a region as float32, ``2 d`` as float16: 512 / 256 bytes at d = 128) and the
encoding work; the merged index holds codes (tens of bytes a region in the compressed layout) and is what
one search node serves anyway. Keeping shards would pay off only once the codes themselves outgrow a
node, with search scattered over nodes; that is not built here.

**Memory per shard task** (:func:`shard_task_bytes`): for a slice of ``R`` vectors of dimension ``d``,
``R * (6 d + c_index + c_codes + 16)`` bytes (its vectors as float16 three times over: the decoded records,
the stacked slice, the segment's copy; the shard's codes and ids; the standalone codes in the compressed
layout) plus ``2^16 * 12 d`` (float32 chunks being encoded and searched) plus the trained quantiser (its
:meth:`IndexSpec.estimate_memory` at zero vectors) plus the tuning queries and their neighbours, and the
interpreter with numpy, pyarrow and faiss loaded (~0.2-0.3 GB, measured in ``bench.scale``). ``R`` is at
most ``shard_vectors`` (default 2^18: ~0.4 GB of arrays at d = 256), so a worker's memory is bounded by the
option, not by the collection; the manifest records the bound and the largest peak RSS the tasks measured.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import numpy as np

from regionrank.index._faiss import check_ngpu
from regionrank.index.ann import AnnIndex
from regionrank.index.build import DEFAULT_SHARD_VECTORS, check_trainable, resolve_spec, sample_rows, tuned_info, write_version
from regionrank.index.idmap import IdMap
from regionrank.index.manifest import IndexInfo, Manifest
from regionrank.index.regions import REGIONS_DIR, segment_name, write_segment_files, write_segment_list
from regionrank.index.source import MULTI_KIND, Corpus, EmbeddingSource, gather_vectors, open_embedding_source
from regionrank.index.spec import IndexSpec, RegionLayout
from regionrank.index.tuning import DecodedRows, RecallProbe, _merge_topk, drop_self, exact_knn
from regionrank.index.version import VersionedDir

__all__ = ["ShardMap", "ShardSlice", "build_version_sharded", "plan_slices", "shard_map", "shard_task_bytes"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
ShardMap = Callable[[Callable[[T], R], Sequence[T]], list[R]]
"""``run(fn, items) -> [fn(item) for item in items]``, in order, wherever the executor runs them."""

_COUNT_COLUMN = {"images": "num_regions", "captions": "num_words"}
_WORK_DIR = "_shards"
_CHUNK_BYTES = (1 << 16) * 4  # one float32 chunk of 65,536 rows, per dimension (ann.add, exact_knn, codes)


def shard_map(executor: Any) -> ShardMap:
    """The ``map`` of an executor: how shard tasks are run.

    Args:
        executor: a ``distributed.Client`` (tasks run on its workers; futures are cancelled if one fails),
            a ``concurrent.futures.Executor``, a ``map(fn, items)`` callable (the builtin ``map`` runs them
            here, one after the other), or ``None`` (the same, in this process).

    Raises:
        TypeError: ``executor`` is none of these.
    """
    if executor is None:
        return lambda fn, items: [fn(x) for x in items]
    if hasattr(executor, "gather") and hasattr(executor, "map") and hasattr(executor, "cancel"):
        return functools.partial(_dask_map, executor)
    if hasattr(executor, "map") and hasattr(executor, "submit"):
        return lambda fn, items: list(executor.map(fn, items))
    if callable(executor):
        return lambda fn, items: list(executor(fn, items))
    raise TypeError(
        f"executor must be a distributed.Client, a concurrent.futures.Executor or a map(fn, items) callable; "
        f"got {type(executor).__name__}"
    )


def _dask_map(client: Any, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    if not items:
        return []
    futures = client.map(fn, list(items), pure=False)
    try:
        return list(client.gather(futures))
    except BaseException:
        client.cancel(futures)
        raise


@dataclass(frozen=True)
class ShardSlice:
    """One shard task's part of a build: consecutive items of the build order, in one store shard.

    Attributes:
        index: the slice's position (its shard file and region segment are numbered by it).
        item_ids: the items, in build order; int_ids: their ``int64`` ids in the version's id map.
        counts: ``int64`` multi-vectors (regions or words) of each item.
        first_row: the row of the slice's first multi-vector in the build's concatenated matrix
            (the first item's position for the global index is ``first_item``).
        first_item: the position of the slice's first item in the build order.
    """

    index: int
    item_ids: tuple[str, ...]
    int_ids: np.ndarray
    counts: np.ndarray
    first_row: int
    first_item: int

    @property
    def n_vectors(self) -> int:
        return int(self.counts.sum())


def plan_slices(
    item_ids: Sequence[str], counts: np.ndarray, store_shards: Sequence[str], int_ids: np.ndarray, *,
    shard_vectors: int, by_vectors: bool = True,
) -> list[ShardSlice]:
    """Cut the build order into slices: a new slice starts where the store shard changes or where the next
    item would take the slice past ``shard_vectors`` vectors (multi-vectors with ``by_vectors``, else items).

    Args:
        item_ids / counts / store_shards / int_ids: per item in build order, its id, multi-vector count,
            store shard file and int id.
        shard_vectors: the most vectors a slice holds (an item with more gets a slice of its own).

    Raises:
        ValueError: ``shard_vectors`` is not positive or the per-item sequences differ in length.
    """
    if shard_vectors <= 0:
        raise ValueError(f"shard_vectors must be positive; got {shard_vectors}")
    n = len(item_ids)
    if not len(counts) == len(store_shards) == len(int_ids) == n:
        raise ValueError(f"plan_slices needs one count, store shard and int id per item; got {len(counts)}, "
                         f"{len(store_shards)}, {len(int_ids)} for {n} items")
    counts = np.asarray(counts, np.int64)
    weight = counts if by_vectors else np.ones(n, np.int64)
    rows = np.concatenate([[0], np.cumsum(counts)])
    out: list[ShardSlice] = []
    start, held = 0, 0
    for i in range(n + 1):
        if i < n and (i == start or (store_shards[i] == store_shards[start] and held + weight[i] <= shard_vectors)):
            held += int(weight[i])
            continue
        if i > start:
            out.append(ShardSlice(index=len(out), item_ids=tuple(item_ids[start:i]), int_ids=np.asarray(int_ids[start:i]),
                                  counts=counts[start:i], first_row=int(rows[start]), first_item=start))
        start, held = i, int(weight[i]) if i < n else 0
    return out


def shard_task_bytes(n_vectors: int, d: int, spec: IndexSpec, *, n_items: int = 0, n_queries: int = 0, depth: int = 0,
                     codes_bytes: int = 0) -> int:
    """Bytes of arrays one add task holds at its peak, for ``n_vectors`` multi-vectors of dimension ``d``
    (and ``n_items`` global vectors) added to a shard of ``spec`` (module docstring: the formula).

    ``R * (6 d + c_index + c_codes + 16) + 2^16 * 12 d + quantiser + queries``, where ``c_index`` is the
    shard's bytes per vector (``spec.estimate_memory``), ``c_codes`` the standalone code written for the
    compressed layout; the interpreter and its libraries come on top.
    """
    r = int(n_vectors) + int(n_items)
    shard = spec if spec.family == "ivf" else IndexSpec(family="flat")
    index_bytes = shard.estimate_memory(r, d)  # codes + ids (+ the trained quantiser for IVF)
    arrays = r * (6 * d + codes_bytes + 16) + 3 * _CHUNK_BYTES * d
    probe = n_queries * (4 * d + 2 * 12 * max(depth, 1))
    return int(index_bytes + arrays + probe)


@dataclass(frozen=True)
class _SampleJob:
    root: str
    corpus: Corpus
    slice: ShardSlice
    rows: dict[str, np.ndarray]  # kind -> rows wanted, local to the slice (sorted)


@dataclass(frozen=True)
class _AddJob:
    root: str
    corpus: Corpus
    slice: ShardSlice
    work_dir: str
    version_dir: str
    specs: dict[str, str]
    dim: int
    depth: dict[str, int]  # kind -> probe ground-truth depth (0: no probe queries)
    codes: bool  # write the standalone region codes (compressed layout)


@dataclass
class _AddResult:
    index: int
    files: dict[str, str]
    n_vectors: dict[str, int]
    gt: dict[str, tuple[np.ndarray, np.ndarray]]
    segment: str | None
    encoder: str
    encoder_hash: str
    peak_rss_bytes: int
    seconds: float


@functools.lru_cache(maxsize=4)
def _open_source(root: str, corpus: Corpus) -> EmbeddingSource:
    """The store at ``root``, opened once per worker process (its catalog is read once)."""
    return open_embedding_source(root, corpus)


def _read_slice(root: str, corpus: Corpus, sl: ShardSlice) -> Any:
    vecs = gather_vectors(_open_source(root, corpus), corpus, list(sl.item_ids))
    got = np.asarray(vecs.n_multi, np.int64)
    if not np.array_equal(got, sl.counts):
        bad = int(np.flatnonzero(got != sl.counts)[0])
        raise RuntimeError(
            f"item {sl.item_ids[bad]!r} of {root} has {int(got[bad])} vectors but the build planned "
            f"{int(sl.counts[bad])}: the embedding store changed during the build; build again"
        )
    return vecs


def _kind_matrix(vecs: Any, sl: ShardSlice, kind: str) -> tuple[np.ndarray, np.ndarray]:
    if kind == "global":
        return vecs.global_matrix(), sl.int_ids
    return vecs.multi_matrix(), IdMap.region_ids_of(sl.int_ids, sl.counts)


def _sample_task(job: _SampleJob) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Shard task: ``kind -> (float32 vectors, int64 ids)`` of the wanted rows of one slice."""
    vecs = _read_slice(job.root, job.corpus, job.slice)
    out = {}
    for kind, rows in job.rows.items():
        x, ids = _kind_matrix(vecs, job.slice, kind)
        out[kind] = (np.asarray(x[rows], np.float32), np.asarray(ids[rows], np.int64))
    return out


def _peak_rss_bytes() -> int:
    try:
        import resource
    except ImportError:  # not on Unix: not measured
        return 0
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _add_task(job: _AddJob) -> _AddResult:
    """Shard task: add one slice to copies of the trained indexes, write them and the slice's region
    segment into the staged version, and return the probe queries' exact neighbours among its vectors."""
    t0 = time.perf_counter()
    sl, work = job.slice, Path(job.work_dir)
    vecs = _read_slice(job.root, job.corpus, sl)
    files, counts, gt = {}, {}, {}
    codec = None
    for kind, key in job.specs.items():
        spec = IndexSpec.parse(key)
        trained = work / f"{kind}.trained"
        shard = AnnIndex.shard_of(spec, job.dim, np.fromfile(trained, np.uint8) if trained.exists() else None)
        x, ids = _kind_matrix(vecs, sl, kind)
        if len(ids):
            shard.add(x, ids)
        path = work / f"{kind}-{sl.index:05d}.faiss"
        tmp = path.with_name(f".{path.name}.tmp")
        shard.save(tmp)
        os.replace(tmp, path)
        files[kind], counts[kind] = str(path), len(ids)
        if job.depth.get(kind):
            queries = np.load(work / f"{kind}.queries.npy")
            # a compressed region index is tuned against its own codes (``build_vector_index(truth="codes")``)
            truth_x = DecodedRows(shard, x) if kind == "region" and job.codes else x
            gt[kind] = exact_knn(truth_x, ids, queries, job.depth[kind])
        if kind == "region" and job.codes:
            codec = AnnIndex.shard_of(spec, job.dim, np.fromfile(trained, np.uint8))
        del x, shard
    segment = None
    if job.corpus == "images":
        segment = segment_name(sl.index)
        write_segment_files(Path(job.version_dir), segment, vecs.region_segment(sl.int_ids), job.dim, codec)
    return _AddResult(index=sl.index, files=files, n_vectors=counts, gt=gt, segment=segment, encoder=vecs.encoder,
                      encoder_hash=vecs.encoder_hash, peak_rss_bytes=_peak_rss_bytes(),
                      seconds=time.perf_counter() - t0)


@dataclass
class _KindPlan:
    kind: str
    spec: IndexSpec
    layout: RegionLayout
    chosen_by: str
    n: int
    train_rows: np.ndarray
    query_rows: np.ndarray
    given_queries: np.ndarray | None
    ann: AnnIndex | None = None
    queries: np.ndarray | None = None
    self_ids: np.ndarray | None = None
    gt: tuple[np.ndarray, np.ndarray] | None = None

    def depth(self, k: int) -> int:
        """Ground-truth depth the add tasks search: ``RecallProbe``'s 3k, one more for held-out database
        vectors (each finds itself, dropped afterwards)."""
        return 3 * k + (self.given_queries is None)

    def task_bytes(self, sl: ShardSlice, d: int, k: int) -> int:
        """:func:`shard_task_bytes` of this index's part of slice ``sl``."""
        n = len(sl.item_ids) if self.kind == "global" else sl.n_vectors
        codes = self.spec.standalone_code_bytes() if self.layout == "codes" and self.kind != "global" else 0
        n_queries = 0 if self.queries is None else len(self.queries)
        return shard_task_bytes(n, d, self.spec, n_queries=n_queries, depth=self.depth(k),
                                codes_bytes=codes)


def _store_plan(source: Any, corpus: Corpus, item_ids: Sequence[str] | None) -> tuple[list[str], np.ndarray, list[str]]:
    """``(item ids in build order, their multi-vector counts, their store shard files)``, from small columns."""
    for attr in ("read_rows", "locate", "ids"):
        if not hasattr(source, attr):
            raise TypeError(
                f"a sharded build reads its slices from a storage.ImageEmbeddingStore / CaptionEmbeddingStore "
                f"(by path on the workers); {type(source).__name__} has no {attr}(): pass the store or its path"
            )
    ids = list(source.ids()) if item_ids is None else list(item_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("the ids to index contain duplicates; pass each item once")
    if not ids:
        return [], np.zeros(0, np.int64), []
    counts = source.read_rows(ids, columns=[_COUNT_COLUMN[corpus]]).column(0).to_numpy().astype(np.int64)
    return ids, counts, [source.locate(i)[0] for i in ids]


def _rows_in(rows: np.ndarray, start: int, stop: int) -> np.ndarray:
    lo, hi = np.searchsorted(rows, [start, stop])
    return rows[lo:hi] - start


def build_version_sharded(
    vd: VersionedDir, source: EmbeddingSource, corpus: Corpus, params: dict[str, Any], item_ids: Sequence[str] | None,
    *, history: list[str], parent: int | None, ngpu: int, tuning_queries: dict[str, np.ndarray] | None, executor: Any,
) -> Manifest:
    """:func:`index.build.build_version` as shard tasks run by ``executor`` (module docstring): the same
    version, whose float matrix no process ever holds whole.

    Args:
        vd / source / corpus / params / item_ids / history / parent / ngpu / tuning_queries: as
            :func:`index.build.build_version` (the caller holds ``vd``'s lock).
        executor: what runs the shard tasks (:func:`shard_map`); the workers open the store at
            ``source.root`` and write into ``vd``'s staging directory, by the same paths as here.

    Raises:
        ValueError: nothing to index, duplicate ids, a spec that does not fit, or bad tuning queries.
        TypeError: ``source`` is not a shard store, or ``executor`` is not an executor.
        RuntimeError: the store changed while the build read it.
    """
    run = shard_map(executor)
    kinds: list[str] = list(params["kind"])
    multi = MULTI_KIND[corpus]
    k = int(params["k"])
    ids, counts, store_shards = _store_plan(source, corpus, item_ids)
    if not ids:
        raise ValueError(f"the embedding store {source.root} holds no {corpus} to index; encode some first")
    d = int(getattr(source, "dim", 0) or 0)
    idmap = IdMap()
    int_ids = idmap.assign(ids, counts if multi in kinds else np.zeros(len(ids), np.int64))
    slices = plan_slices(ids, counts, store_shards, int_ids, by_vectors=multi in kinds,
                         shard_vectors=int(params.get("shard_vectors", DEFAULT_SHARD_VECTORS)))
    plans: dict[str, _KindPlan] = {}
    for kind in kinds:
        n = len(ids) if kind == "global" else int(counts.sum())
        if n == 0:
            raise ValueError(f"the {corpus} to index hold no {kind} vectors; build with kind=('global',)")
        spec, layout, chosen_by = resolve_spec(kind, n, d, params)
        check_trainable(spec, n)
        train_rows, query_rows = sample_rows(n, spec, seed=params["seed"], n_tune_queries=params["n_tune_queries"],
                                             target_recall=params["target_recall"], k=k)
        given = (tuning_queries or {}).get(kind)
        if given is not None:
            given = np.ascontiguousarray(given, dtype=np.float32)
            if given.ndim != 2 or given.shape[1] != d or given.shape[0] == 0:
                raise ValueError(f"tuning queries must have shape (Q > 0, {d}); got {tuple(given.shape)}")
        plans[kind] = _KindPlan(kind, spec, layout, chosen_by, n, train_rows, query_rows, given)
    layout: RegionLayout = plans["region"].layout if "region" in plans else "float16"
    root = str(source.root)
    t0 = time.perf_counter()
    with vd.stage() as tmp:
        work = tmp / _WORK_DIR
        work.mkdir()
        if corpus == "images":
            (tmp / REGIONS_DIR).mkdir()
        sample_s, train_s = _sample_and_train(run, root, corpus, slices, plans, params["seed"], check_ngpu(ngpu), work)
        t_add = time.perf_counter()
        jobs = [_AddJob(root=root, corpus=corpus, slice=sl, work_dir=str(work), version_dir=str(tmp),
                        specs={kd: str(p.spec) for kd, p in plans.items()}, dim=d,
                        depth={kd: p.depth(k) for kd, p in plans.items()},
                        codes=layout == "codes") for sl in slices]
        results = run(_add_task, jobs)
        t_merge = time.perf_counter()
        for kind, p in plans.items():
            assert p.ann is not None
            for r in results:
                p.ann.merge_shard(Path(r.files[kind]))
                Path(r.files[kind]).unlink()
                scores, found = r.gt[kind]
                p.gt = (scores, found) if p.gt is None else _merge_topk(*p.gt, scores, found, p.depth(k))
        build_s = time.perf_counter() - t0
        shutil.rmtree(work)
        if corpus == "images":
            write_segment_list(tmp, [r.segment for r in results if r.segment], d)
        infos: dict[str, IndexInfo] = {}
        probes: dict[str, RecallProbe] = {}
        for kind, p in plans.items():
            probes[kind] = _probe(p, k)
            infos[kind] = tuned_info(p.ann, probes[kind], kind=kind, n=p.n, n_train=len(p.train_rows),  # type: ignore[arg-type]
                                     budget=params["memory_budget"], chosen_by=p.chosen_by,
                                     target_recall=params["target_recall"], k=k, build_s=build_s,
                                     tune_started=time.perf_counter(), tuned_on_data=p.given_queries is None)
        first = next((r for r in results if r.encoder or r.encoder_hash), results[0])
        bound = max(sum(p.task_bytes(sl, d, k) for p in plans.values()) for sl in slices)
        manifest = Manifest(
            version=vd.next_version(), corpus=corpus, source=root, embed_dim=d, n_items=len(idmap), indexes=infos,
            build=params, created_at="", parent_version=parent, history=history, encoder=first.encoder,
            encoder_hash=first.encoder_hash, region_layout=layout,
            sharded={"tasks": len(slices), "shard_vectors": int(params.get("shard_vectors", DEFAULT_SHARD_VECTORS)),
                     "merge": "faiss merge_from (IVF), append (Flat), re-add (HNSW)", "task_bytes_bound": bound,
                     "worker_peak_rss_bytes": max(r.peak_rss_bytes for r in results),
                     "task_seconds_max": round(max(r.seconds for r in results), 4),
                     "seconds": {"sample": round(sample_s, 4), "train": round(train_s, 4),
                                 "add": round(t_merge - t_add, 4), "merge": round(build_s - (t_merge - t0), 4)}},
        )
        write_version(vd, tmp, manifest, {kd: p.ann for kd, p in plans.items()}, probes, idmap)  # type: ignore[misc]
    logger.info("sharded build of %s: %d tasks, %.2f s", vd.root, len(slices), build_s)
    return manifest


def _sample_and_train(run: ShardMap, root: str, corpus: Corpus, slices: Iterable[ShardSlice], plans: dict[str, _KindPlan],
                      seed: int, ngpu: int, work: Path) -> tuple[float, float]:
    """Pass 1 and the training: gather the sampled rows from the slices, train each index once, and leave
    the trained empty index and the probe queries in ``work`` for the add tasks. Returns the seconds of
    the sampling pass and of the training."""
    slices = list(slices)
    wanted = {kind: np.union1d(p.train_rows, p.query_rows if p.given_queries is None else np.zeros(0, np.int64))
              for kind, p in plans.items()}
    jobs = []
    for sl in slices:
        rows = {}
        for kind in plans:
            start, stop = ((sl.first_item, sl.first_item + len(sl.item_ids)) if kind == "global"
                           else (sl.first_row, sl.first_row + sl.n_vectors))
            rows[kind] = _rows_in(wanted[kind], start, stop)
        jobs.append(_SampleJob(root=root, corpus=corpus, slice=sl, rows=rows))
    t0 = time.perf_counter()
    sampled = run(_sample_task, jobs)
    t1 = time.perf_counter()
    for kind, p in plans.items():
        x = np.concatenate([s[kind][0] for s in sampled]) if sampled else np.zeros((0, 0), np.float32)
        got = np.concatenate([s[kind][1] for s in sampled]) if sampled else np.zeros(0, np.int64)
        assert len(x) == len(wanted[kind]), (kind, len(x), len(wanted[kind]))
        p.ann = AnnIndex.create(p.spec, x.shape[1], ngpu=ngpu)
        if len(p.train_rows):
            p.ann.train(x[np.isin(wanted[kind], p.train_rows)], seed=seed)
            trained = p.ann.trained_bytes()
            assert trained is not None
            trained.tofile(work / f"{kind}.trained")
        if p.given_queries is None:
            at = np.isin(wanted[kind], p.query_rows)
            p.queries, p.self_ids = x[at], got[at]
        else:
            p.queries = p.given_queries
        np.save(work / f"{kind}.queries.npy", p.queries)
    return t1 - t0, time.perf_counter() - t1


def _probe(p: _KindPlan, k: int) -> RecallProbe:
    """The recall probe of one index from its queries and the ground truth merged from the add tasks
    (what ``RecallProbe.create`` / ``from_queries`` compute over the whole matrix)."""
    assert p.gt is not None and p.queries is not None
    scores, found = p.gt
    truth = "codes" if p.kind == "region" and p.layout == "codes" else "exact"
    if p.given_queries is not None:
        return RecallProbe(queries=p.queries, self_ids=np.full(len(p.queries), -1, np.int64), gt_ids=found,
                           gt_scores=scores, k=k, truth=truth)
    assert p.self_ids is not None
    gt_ids, gt_scores = drop_self(found, scores, p.self_ids, 3 * k)
    return RecallProbe(queries=p.queries, self_ids=p.self_ids, gt_ids=gt_ids, gt_scores=gt_scores, k=k, truth=truth)

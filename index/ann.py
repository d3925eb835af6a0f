"""One approximate-nearest-neighbour index over int64 ids: a faiss index, its :class:`IndexSpec`, the
tuned search parameter, and tombstones for index types faiss cannot remove from (HNSW).

Inner product throughout (regionrank's vectors are L2-normalised, so it is the cosine).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from regionrank.index._faiss import import_faiss, omp_threads, to_cpu, to_gpus
from regionrank.index.spec import IndexSpec

__all__ = ["AnnIndex"]

logger = logging.getLogger(__name__)

_ADD_CHUNK = 65536
HNSW_EF_CONSTRUCTION = 40  # faiss's default, also autofaiss's


class AnnIndex:
    """A faiss index addressed by int64 ids.

    Build with :meth:`create`, then :meth:`train` (IVF only) and :meth:`add`; persist with
    :meth:`save` / :meth:`load`. Flat and HNSW indexes are wrapped in ``IndexIDMap2``; IVF indexes
    take ids natively. Removal is native for Flat and IVF; for HNSW the removed ids become
    tombstones that every search excludes through a faiss ``IDSelector`` (exact, no over-fetching).

    Args:
        spec: the parsed index key.
        dim: vector dimension.
        index: the faiss index (CPU).
        search_value: the tuned ``nprobe`` / ``efSearch`` (``None`` for Flat).
        tombstones: ``int64[T]`` ids removed from an HNSW index.
        ngpu: GPUs to search on (0 = CPU; resolved by the caller and checked with ``index._faiss.check_ngpu``).
    """

    def __init__(
        self,
        spec: IndexSpec,
        dim: int,
        index: Any,
        *,
        search_value: int | None = None,
        tombstones: np.ndarray | None = None,
        ngpu: int = 0,
    ) -> None:
        self.spec = spec
        self.dim = dim
        self._cpu = index
        self._ngpu = ngpu
        self._search_index = to_gpus(index, ngpu) if ngpu else index
        self.tombstones = np.unique(np.asarray(tombstones if tombstones is not None else [], dtype=np.int64))
        self._selector: Any = None
        # IVF: the trained, empty index (serialised), to index a few new vectors apart (search_among)
        self._trained: np.ndarray | None = None
        self._trained_path: Path | None = None
        self.search_value: int | None = None
        if search_value is not None:
            self.set_search_param(search_value)

    @classmethod
    def create(cls, spec: IndexSpec, dim: int, *, ngpu: int = 0) -> AnnIndex:
        """An empty index for ``spec`` in dimension ``dim`` (inner-product metric)."""
        faiss = import_faiss()
        spec.validate_dim(dim)
        if spec.family == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        elif spec.family == "hnsw":
            hnsw = faiss.IndexHNSWFlat(dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            index = faiss.IndexIDMap2(hnsw)
        else:
            index = faiss.index_factory(dim, spec.factory_string(), faiss.METRIC_INNER_PRODUCT)
        return cls(spec, dim, index, ngpu=ngpu)

    @property
    def faiss_index(self) -> Any:
        """The CPU faiss index (what :meth:`save` writes)."""
        return self._cpu

    @property
    def ntotal(self) -> int:
        """Vectors stored, tombstoned ones included."""
        return int(self._cpu.ntotal)

    @property
    def n_alive(self) -> int:
        return self.ntotal - len(self.tombstones)

    @property
    def is_trained(self) -> bool:
        return bool(self._cpu.is_trained)

    def train(self, x: np.ndarray, *, seed: int = 0) -> None:
        """Train the quantisers on ``x`` (``float[n, D]``), on the GPU when the index was created with one."""
        if not self.spec.needs_training:
            return
        faiss = import_faiss()
        x = self._check(x, "training vectors")
        ivf = faiss.extract_index_ivf(self._cpu)
        ivf.cp.seed = seed
        ivf.cp.verbose = False
        # autofaiss's rule of thumb; silences faiss's "please provide at least 39*k points" notice
        ivf.cp.max_points_per_centroid = max(256, -(-x.shape[0] // max(1, self.spec.nlist)))
        if self.spec.encoding == "pq":
            # polysemous training (on by default in the factory) only serves Hamming-threshold search,
            # which regionrank never uses, and costs ~20x the PQ training itself
            faiss.downcast_index(ivf).do_polysemous_training = False
        if self._ngpu:
            gpu = to_gpus(self._cpu, self._ngpu)
            gpu.train(x)
            self._cpu = to_cpu(gpu)
        else:
            self._cpu.train(x)
        if self._cpu.ntotal == 0:
            self._trained = faiss.serialize_index(self._cpu)
        self._search_index = to_gpus(self._cpu, self._ngpu) if self._ngpu else self._cpu
        if self.search_value is not None:
            self.set_search_param(self.search_value)

    def add(self, x: np.ndarray, ids: np.ndarray) -> None:
        """Add ``x`` (``float[n, D]``, float16 cast per chunk) with int64 ``ids`` (unique, not present)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if x.shape[0] != ids.shape[0]:
            raise ValueError(f"{x.shape[0]} vectors but {ids.shape[0]} ids; pass exactly one id per vector")
        if not self.is_trained:
            raise RuntimeError(f"index {self.spec} is not trained; call train() on a sample first")
        for start in range(0, x.shape[0], _ADD_CHUNK):
            block = self._check(x[start : start + _ADD_CHUNK], "vectors")
            self._cpu.add_with_ids(block, ids[start : start + _ADD_CHUNK])
        if self._ngpu:
            self._search_index = to_gpus(self._cpu, self._ngpu)
        if len(self.tombstones):  # an id re-added after removal is alive again
            self.tombstones = np.setdiff1d(self.tombstones, ids)
            self._selector = None

    def merge_shard(self, path: Path) -> int:
        """Append the vectors of a shard file written from an empty copy of this index (same trained
        quantiser and codec; ids disjoint from this index's); returns how many were appended.

        IVF: the shard's inverted lists are appended list by list (faiss ``merge_from``, no re-encoding),
        so merging shards in order gives the lists, and the search results, of adding their vectors in
        that order. Flat: the shard's vectors and ids are appended. HNSW: a graph cannot be merged; the
        shard (a Flat index of the same vectors) is re-added, so the graph is built here.
        """
        faiss = import_faiss()
        other = faiss.read_index(str(path))
        n = int(other.ntotal)
        if self.spec.family == "ivf":
            ivf = faiss.extract_index_ivf(self._cpu)
            ivf.merge_from(faiss.extract_index_ivf(other), 0)
            self._cpu.ntotal = ivf.ntotal  # a wrapping OPQ pre-transform keeps its own count
        elif self.spec.family == "flat":
            self._cpu.merge_from(other, 0)
        else:
            vectors = other.index.reconstruct_n(0, n) if n else np.zeros((0, self.dim), np.float32)
            self.add(vectors, faiss.vector_to_array(other.id_map))
            return n
        if self._ngpu:
            self._search_index = to_gpus(self._cpu, self._ngpu)
        return n

    @classmethod
    def shard_of(cls, spec: IndexSpec, dim: int, trained: bytes | np.ndarray | None) -> AnnIndex:
        """An empty shard of a ``spec`` index, for :meth:`merge_shard`: a copy of the ``trained`` empty IVF
        index (``faiss.serialize_index`` bytes), or an empty Flat index (for Flat and HNSW)."""
        faiss = import_faiss()
        if spec.family == "ivf":
            if trained is None:
                raise ValueError(f"a shard of {spec} needs the trained empty index; train one first")
            return cls(spec, dim, faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8).copy()))
        return cls.create(IndexSpec(family="flat"), dim)

    def trained_bytes(self) -> np.ndarray | None:
        """The trained, empty IVF index serialised (``uint8``), kept since :meth:`train`; ``None`` otherwise."""
        if self._trained is None and self._trained_path is not None:
            self._trained = np.fromfile(self._trained_path, dtype=np.uint8)
        return self._trained

    def remove(self, ids: np.ndarray) -> int:
        """Remove ``ids`` (unknown ids are ignored); returns how many were removed or tombstoned."""
        faiss = import_faiss()
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if ids.size == 0:
            return 0
        if self.spec.supports_remove:
            n = int(self._cpu.remove_ids(faiss.IDSelectorBatch(ids)))
            if self._ngpu:
                self._search_index = to_gpus(self._cpu, self._ngpu)
            return n
        present = ids[np.isin(ids, faiss.vector_to_array(self._cpu.id_map))]
        fresh = np.setdiff1d(present, self.tombstones)
        self.tombstones = np.union1d(self.tombstones, fresh)
        self._selector = None
        return int(fresh.size)

    def set_search_param(self, value: int) -> None:
        """Set ``nprobe`` (IVF; an HNSW coarse quantiser gets ``efSearch = max(2 nprobe, 16)``) or ``efSearch``."""
        faiss = import_faiss()
        self.search_value = int(value)
        if self.spec.family == "ivf":
            ps = faiss.GpuParameterSpace() if self._search_index is not self._cpu else faiss.ParameterSpace()
            ps.set_index_parameter(self._search_index, "nprobe", int(value))
            if self.spec.hnsw_m:
                faiss.ParameterSpace().set_index_parameter(self._cpu, "quantizer_efSearch", max(2 * int(value), 16))
        elif self.spec.family == "hnsw":
            faiss.ParameterSpace().set_index_parameter(self._cpu, "efSearch", int(value))

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k-NN by inner product.

        Args:
            xq: ``float32[Q, D]`` queries.
            k: neighbours per query.

        Returns:
            ``(scores float32[Q, k], ids int64[Q, k])``; missing results have id ``-1``.
        """
        faiss = import_faiss()
        xq = self._check(xq, "queries")
        if k <= 0:
            raise ValueError(f"k must be positive; got {k}")
        if len(self.tombstones) and self.spec.family == "hnsw":
            if self._selector is None:
                self._selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(self.tombstones))
            params = faiss.SearchParametersHNSW(sel=self._selector, efSearch=int(self.search_value or 16))
            scores, ids = self._cpu.search(xq, k, params=params)
        else:
            scores, ids = self._search_index.search(xq, k)
        return scores, ids

    @property
    def deterministic_update(self) -> bool:
        """Whether adding or removing vectors leaves every other vector's chance of being found unchanged:
        an IVF search returns the top-k of the vectors in the lists it probes, and which lists it probes
        depends only on the trained quantiser. Then a query's results after an add are the merge of its
        old results with :meth:`search_among` the new ids (HNSW's graph changes with every add)."""
        return self.spec.family == "ivf"

    def search_among(
        self, xq: np.ndarray, k: int, ids: np.ndarray, vectors: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """k-NN restricted to ``ids``, with the current search parameter and the same scores as
        :meth:`search` (IVF only: the lists probed are the same, only members are scored).

        With their ``vectors`` and the trained empty index kept since training, the members are indexed
        apart with the same quantiser and codec and searched alone (cost: what they are); otherwise the
        CPU index is searched through a faiss ``IDSelector`` (cost: scanning the probed lists).

        Raises:
            ValueError: the index is not IVF.
        """
        faiss = import_faiss()
        if self.spec.family != "ivf":
            raise ValueError(f"search_among needs an IVF index; {self.spec} is {self.spec.family}")
        xq = self._check(xq, "queries")
        trained = self._trained_index() if vectors is not None else None
        if trained is not None:
            apart = AnnIndex(self.spec, self.dim, trained)
            apart.add(vectors, ids)  # type: ignore[arg-type]
            apart.set_search_param(int(self.search_value or 1))
            return apart.search(xq, k)
        sel = faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))
        params = faiss.SearchParametersIVF(sel=sel, nprobe=int(self.search_value or 1))
        if self.spec.opq_m:  # the rotation wraps the IVF: its parameters go one level down
            params = faiss.SearchParametersPreTransform(index_params=params)
        return self._cpu.search(xq, k, params=params)

    def encode_standalone(self, x: np.ndarray) -> np.ndarray:
        """Standalone codes of ``x`` (``float[n, D]``): ``uint8[n, sa_code_size]``, for an IVF-PQ index its
        list id then the PQ code of the residual (after the OPQ rotation), the very codes :meth:`add` stores.

        Raises:
            ValueError: the index has no compressed codes (not IVF-PQ).
        """
        self.spec.standalone_code_bytes()  # raises for an index without PQ codes
        out = np.empty((x.shape[0], int(self._cpu.sa_code_size())), np.uint8)
        for start in range(0, x.shape[0], _ADD_CHUNK):
            out[start : start + _ADD_CHUNK] = self._cpu.sa_encode(self._check(x[start : start + _ADD_CHUNK], "vectors"))
        return out

    def decode_standalone(self, codes: np.ndarray) -> np.ndarray:
        """``float32[n, D]`` vectors decoded from :meth:`encode_standalone`'s codes; the inner product of a
        query with a decoded vector is the score the index's own search gives that vector."""
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        if codes.shape[0] == 0:
            return np.zeros((0, self.dim), np.float32)
        if codes.shape[0] >= _ADD_CHUNK:
            return self._cpu.sa_decode(codes)
        # a search's few thousand candidate codes: OpenMP's start-up and spinning cost more than its threads
        # give (6,000 codes on a quiet 2-core machine: 2.2 ms on 2 threads, 1.4 ms on 1; 5.8 against 1.5 ms when
        # the other core is busy); the setting is this thread's, restored after
        with omp_threads(1):
            return self._cpu.sa_decode(codes)

    def reconstruct_ids(self) -> np.ndarray:
        """All stored ids (``int64[ntotal]``), tombstones excluded; for Flat/HNSW (``IndexIDMap2``) only."""
        faiss = import_faiss()
        if self.spec.family == "ivf":
            raise ValueError(f"{self.spec}: IVF indexes keep ids inside inverted lists; ask the id map instead")
        ids = faiss.vector_to_array(self._cpu.id_map)
        return np.setdiff1d(ids, self.tombstones) if len(self.tombstones) else ids

    def memory_bytes(self) -> int:
        """Size of the serialised index in bytes (close to its RAM footprint); counted, not buffered."""
        faiss = import_faiss()
        total = 0

        def count(chunk: bytes) -> int:
            nonlocal total
            total += len(chunk)
            return len(chunk)

        faiss.write_index(self._cpu, faiss.PyCallbackIOWriter(count))
        return total

    def _trained_index(self) -> Any:
        """A fresh trained, empty copy of this IVF index, or ``None`` when none was kept."""
        faiss = import_faiss()
        if self._trained is None and self._trained_path is not None:
            self._trained = np.fromfile(self._trained_path, dtype=np.uint8)
        return None if self._trained is None else faiss.deserialize_index(self._trained)

    def save(self, path: Path) -> None:
        """Write the CPU index to ``path`` (tombstones are saved next to it as ``<path>.tombstones.npy``,
        the trained empty IVF index as ``<path>.trained``)."""
        faiss = import_faiss()
        faiss.write_index(self._cpu, str(path))
        if len(self.tombstones):
            np.save(Path(str(path) + ".tombstones.npy"), self.tombstones)
        if self._trained is not None:
            self._trained.tofile(str(path) + ".trained")
        elif self._trained_path is not None:
            shutil.copyfile(self._trained_path, str(path) + ".trained")

    @classmethod
    def load(
        cls, path: Path, spec: IndexSpec, dim: int, *, search_value: int | None, mmap: bool = True, ngpu: int = 0
    ) -> AnnIndex:
        """Read an index written by :meth:`save`; memory-mapped and read-only when ``mmap``."""
        faiss = import_faiss()
        if not Path(path).is_file():
            raise FileNotFoundError(f"index file {path} does not exist; was the version published completely?")
        if mmap:
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        else:
            index = faiss.read_index(str(path))
        tomb_path = Path(str(path) + ".tombstones.npy")
        tombstones = np.load(tomb_path) if tomb_path.is_file() else None
        ann = cls(spec, dim, index, search_value=search_value, tombstones=tombstones, ngpu=ngpu)
        trained = Path(str(path) + ".trained")
        ann._trained_path = trained if trained.is_file() else None  # read when first needed
        return ann

    def _check(self, x: np.ndarray, what: str) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{what} must have shape (n, {self.dim}); got {tuple(x.shape)}")
        return np.ascontiguousarray(x, dtype=np.float32)

"""Index specifications: parse a faiss factory-style key once into a typed :class:`IndexSpec`, estimate
its memory, and choose one automatically from the collection size, dimension, memory budget and
target recall.

The same :class:`IndexSpec` object drives building (``factory_string``), the manifest (``str(spec)``,
``estimate_memory``) and tuning (``search_param``), so a key is never re-parsed with ad-hoc regexes in
several places (HOUSE_STYLE §9.7). The automatic choice follows the *structure* of autofaiss's rules
(ALGORITHMS.md §8: Flat, then HNSW, then IVF-Flat, then OPQ+IVF+PQ as size grows under a memory
budget); unlike autofaiss, the search parameter is then tuned to a target recall, not to a latency.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["IndexSpec", "RegionLayout", "choose_region_layout", "choose_spec", "parse_memory"]

Family = Literal["flat", "hnsw", "ivf"]
Encoding = Literal["flat", "pq", "sq8", "sqfp16"]
# how a version keeps its region vectors for re-scoring: the float16 matrix, or the region index's PQ codes
RegionLayout = Literal["float16", "codes"]

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}

# Sizes at which the automatic choice moves to the next family (vectors); see choose_spec.
FLAT_MAX_VECTORS = 20_000
HNSW_MAX_VECTORS = 100_000
# Bytes of bookkeeping per id of IndexIDMap2 (id array + reverse hash map), measured order of magnitude.
_IDMAP2_BYTES = 8 + 40


def parse_memory(value: str | int) -> int:
    """Parse a memory amount into bytes, binary units like autofaiss ("4G" = 4 * 2**30).

    Args:
        value: an int (bytes) or a string ``"<number>[B|K|M|G|T]"``, optionally with a trailing "B"/"iB"
            (``"512M"``, ``"4G"``, ``"1.5GiB"``).

    Raises:
        ValueError: the string does not parse or is not positive.
    """
    if isinstance(value, bool):
        raise TypeError(f"memory must be an int of bytes or a string like '4G'; got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"memory must be positive; got {value}")
        return value
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*", str(value).upper())
    if m is None:
        raise ValueError(f"cannot parse memory amount {value!r}; use bytes or a string like '512M', '4G', '1.5GiB'")
    n = int(float(m.group(1)) * _UNITS[m.group(2)])
    if n <= 0:
        raise ValueError(f"memory must be positive; got {value!r}")
    return n


_PRE_RE = re.compile(r"OPQ(\d+)(?:_(\d+))?")
_IVF_RE = re.compile(r"IVF(\d+)(?:_HNSW(\d+))?")
_HNSW_RE = re.compile(r"HNSW(\d+)")
_PQ_RE = re.compile(r"PQ(\d+)(?:x(\d+))?")

_GRAMMAR = (
    "Flat | HNSW<M>[,Flat] | [OPQ<m>[_<d>],]IVF<nlist>[_HNSW<M>],(Flat|PQ<m>[x<bits>]|SQ8|SQfp16) "
    "(for example 'HNSW32', 'IVF1024,Flat', 'OPQ64_256,IVF4096_HNSW32,PQ64x8')"
)


@dataclass(frozen=True)
class IndexSpec:
    """A parsed index key (inner-product metric throughout).

    Attributes:
        family: ``"flat"`` (exact), ``"hnsw"`` (graph) or ``"ivf"`` (inverted lists).
        hnsw_m: graph degree M of an HNSW index, or of the IVF coarse quantiser (0 = flat quantiser).
        nlist: number of IVF lists (0 unless ``family == "ivf"``).
        encoding: how IVF lists store vectors: ``"flat"`` (float32), ``"pq"``, ``"sq8"``, ``"sqfp16"``.
        pq_m / pq_bits: PQ sub-quantisers and bits per code (``encoding == "pq"``).
        opq_m / opq_dim: OPQ rotation before the IVF (``opq_m == 0``: none; ``opq_dim == 0``: keep d).
    """

    family: Family
    hnsw_m: int = 0
    nlist: int = 0
    encoding: Encoding = "flat"
    pq_m: int = 0
    pq_bits: int = 8
    opq_m: int = 0
    opq_dim: int = 0

    @classmethod
    def parse(cls, key: str) -> IndexSpec:
        """Parse a factory-style key, e.g. ``IndexSpec.parse("OPQ64_256,IVF4096_HNSW32,PQ64x8")``.

        Raises:
            ValueError: the key is not in the supported grammar (the message shows it).
        """
        if not isinstance(key, str):
            raise TypeError(f"index key must be a string; got {type(key).__name__}")
        parts = [p.strip() for p in key.split(",")]
        bad = ValueError(f"unsupported index key {key!r}; expected {_GRAMMAR}")
        if parts == ["Flat"]:
            return cls(family="flat")
        if (m := _HNSW_RE.fullmatch(parts[0])) and (len(parts) == 1 or parts[1:] == ["Flat"]):
            return cls(family="hnsw", hnsw_m=_positive(int(m.group(1)), key))
        opq_m = opq_dim = 0
        if parts and (m := _PRE_RE.fullmatch(parts[0])):
            opq_m, opq_dim = _positive(int(m.group(1)), key), int(m.group(2) or 0)
            parts = parts[1:]
        if len(parts) != 2 or not (ivf := _IVF_RE.fullmatch(parts[0])):
            raise bad
        nlist, coarse_m = _positive(int(ivf.group(1)), key), int(ivf.group(2) or 0)
        enc = parts[1]
        if enc == "Flat":
            spec = cls(family="ivf", hnsw_m=coarse_m, nlist=nlist, encoding="flat", opq_m=opq_m, opq_dim=opq_dim)
        elif enc in ("SQ8", "SQfp16"):
            encoding: Encoding = "sq8" if enc == "SQ8" else "sqfp16"
            spec = cls(family="ivf", hnsw_m=coarse_m, nlist=nlist, encoding=encoding, opq_m=opq_m, opq_dim=opq_dim)
        elif m := _PQ_RE.fullmatch(enc):
            spec = cls(
                family="ivf", hnsw_m=coarse_m, nlist=nlist, encoding="pq", pq_m=_positive(int(m.group(1)), key),
                pq_bits=int(m.group(2) or 8), opq_m=opq_m, opq_dim=opq_dim,
            )
            if not 1 <= spec.pq_bits <= 16:
                raise ValueError(f"PQ bits must be in [1, 16]; got {spec.pq_bits} in {key!r}")
        else:
            raise bad
        if opq_m and spec.encoding != "pq":
            raise ValueError(f"OPQ only makes sense before a PQ encoding; got {key!r}")
        return spec

    def __str__(self) -> str:
        return self.factory_string()

    def factory_string(self) -> str:
        """The canonical key, accepted by ``faiss.index_factory`` (``parse(str(s)) == s``)."""
        if self.family == "flat":
            return "Flat"
        if self.family == "hnsw":
            return f"HNSW{self.hnsw_m}"
        parts = []
        if self.opq_m:
            parts.append(f"OPQ{self.opq_m}" + (f"_{self.opq_dim}" if self.opq_dim else ""))
        parts.append(f"IVF{self.nlist}" + (f"_HNSW{self.hnsw_m}" if self.hnsw_m else ""))
        parts.append({"flat": "Flat", "sq8": "SQ8", "sqfp16": "SQfp16"}.get(self.encoding, f"PQ{self.pq_m}x{self.pq_bits}"))
        return ",".join(parts)

    def validate_dim(self, d: int) -> None:
        """Check the spec can be built for dimension ``d``.

        Raises:
            ValueError: PQ/OPQ sizes do not divide the (rotated) dimension.
        """
        if d <= 0:
            raise ValueError(f"dimension must be positive; got {d}")
        dim = self.opq_dim or d
        if self.encoding == "pq" and dim % self.pq_m:
            raise ValueError(f"{self}: PQ{self.pq_m} needs a dimension divisible by {self.pq_m}; got {dim}")
        if self.opq_m and dim % self.opq_m:
            raise ValueError(f"{self}: OPQ{self.opq_m} needs an output dimension divisible by {self.opq_m}; got {dim}")

    @property
    def needs_training(self) -> bool:
        return self.family == "ivf"

    @property
    def is_exact(self) -> bool:
        return self.family == "flat"

    @property
    def supports_remove(self) -> bool:
        """Whether faiss removes vectors natively (HNSW does not: regionrank keeps tombstones)."""
        return self.family in ("flat", "ivf")

    @property
    def search_param(self) -> str | None:
        """The parameter tuned to the target recall: ``"nprobe"``, ``"efSearch"`` or ``None`` (exact)."""
        return {"flat": None, "hnsw": "efSearch", "ivf": "nprobe"}[self.family]

    def search_param_grid(self) -> list[int]:
        """Increasing candidate values of :attr:`search_param` (recall is monotone along it)."""
        if self.family == "ivf":
            # powers of two and the midpoints 3 * 2^i (steps of x1.5 / x1.33), ending at every list
            steps = sorted({1, 2} | {m << i for i in range(20) for m in (2, 3)})
            return [v for v in steps if v < self.nlist] + [self.nlist]
        if self.family == "hnsw":
            return [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048]
        return []

    def is_exact_at(self, value: int | None) -> bool:
        """Whether searching with ``value`` is exhaustive and exact: Flat, or IVF,Flat probing every list."""
        if self.family == "flat":
            return True
        return self.family == "ivf" and self.encoding == "flat" and value is not None and value >= self.nlist

    def train_size(self, n: int) -> int:
        """How many vectors to train on: ~64 per IVF list, at least 2**14 for 8-bit PQ codebooks, capped at n."""
        if not self.needs_training:
            return 0
        want = 64 * self.nlist
        if self.encoding == "pq":
            want = max(want, 64 * (1 << self.pq_bits))
        return min(n, max(want, 4 * self.nlist))

    def standalone_code_bytes(self) -> int:
        """Bytes of one standalone code (faiss ``sa_code_size``) of an IVF-PQ spec: the IVF list id in as
        few bytes as hold ``nlist - 1``, then the PQ code of the residual.

        Raises:
            ValueError: the spec is not IVF with a PQ encoding (only those codes are compressed).
        """
        if self.family != "ivf" or self.encoding != "pq":
            raise ValueError(f"{self}: region codes need an IVF index with a PQ encoding, e.g. 'OPQ16_64,IVF1024,PQ16'")
        list_bytes = max(1, math.ceil(math.log2(max(self.nlist, 2)) / 8))
        return list_bytes + math.ceil(self.pq_m * self.pq_bits / 8)

    def estimate_memory(self, n: int, d: int) -> int:
        """Estimated RAM in bytes of the index holding ``n`` vectors of dimension ``d`` (ids included)."""
        if self.family == "flat":
            return n * (4 * d + _IDMAP2_BYTES)
        if self.family == "hnsw":
            # level 0 holds 2M links of 4 bytes; upper levels add ~1/M of that
            return int(n * (4 * d + 8 * self.hnsw_m * 1.1 + _IDMAP2_BYTES))
        dim = self.opq_dim or d
        code = {"flat": 4 * dim, "sq8": dim, "sqfp16": 2 * dim, "pq": math.ceil(self.pq_m * self.pq_bits / 8)}[self.encoding]
        coarse = self.nlist * 4 * dim + (self.nlist * 8 * self.hnsw_m if self.hnsw_m else 0)
        extra = (1 << self.pq_bits) * 4 * dim if self.encoding == "pq" else 0
        extra += 4 * d * dim if self.opq_m else 0
        return n * (code + 8) + coarse + extra


def _positive(v: int, key: str) -> int:
    if v <= 0:
        raise ValueError(f"sizes in an index key must be positive; got {v} in {key!r}")
    return v


def _pow2_near(x: float, lo: int, hi: int) -> int:
    return int(min(hi, max(lo, 2 ** round(math.log2(max(x, 1.0))))))


def choose_spec(n: int, d: int, memory_budget: str | int = "4G") -> IndexSpec:
    """Choose an index for ``n`` vectors of dimension ``d`` within ``memory_budget``.

    The rules (the size cut-offs are this project's, tuned for recall-targeted search on CPU):

    1. ``n < 20,000`` and it fits: ``Flat`` (exact; a 20k x 1024 scan is ~5 ms).
    2. ``n < 100,000``: ``HNSW{M}``, M = 32 lowered to what fits (as autofaiss: M >= 8).
    3. ``IVF{nlist},Flat`` when it fits, ``nlist`` = the power of two nearest ``2 sqrt(n)`` (fewer lists
       than autofaiss's ``4 sqrt(n)``: k-means on the training sample dominates build time, and the
       nprobe tuning recovers the recall), with an HNSW32 coarse quantiser from 8192 lists up.
    4. Otherwise ``OPQ{m}_{y},IVF{nlist}[_HNSW32],PQ{m}x8`` with the largest ``m`` in
       256, 128, 64, 48, 32, 24, 16, 8, 4 whose codes fit, ``y = m * clamp(d // m, 1, 4)`` and
       ``nlist ~ 4 sqrt(n)`` (powers of two, at most 65536).

    Args:
        n: number of vectors (>= 1).
        d: dimension.
        memory_budget: bytes, or a string such as ``"4G"`` (binary units).

    Returns:
        The chosen :class:`IndexSpec` (tune its search parameter with ``index.tuning``).

    Raises:
        ValueError: ``n`` or ``d`` are not positive, or not even 4-byte PQ codes fit the budget.
    """
    if n <= 0 or d <= 0:
        raise ValueError(f"need n > 0 vectors of dimension d > 0; got n={n}, d={d}")
    budget = parse_memory(memory_budget)
    flat = IndexSpec(family="flat")
    if n < FLAT_MAX_VECTORS and flat.estimate_memory(n, d) <= budget:
        return flat
    if n < HNSW_MAX_VECTORS:
        for m in (32, 24, 16, 12, 8):
            hnsw = IndexSpec(family="hnsw", hnsw_m=m)
            if hnsw.estimate_memory(n, d) <= budget:
                return hnsw
    nlist = _pow2_near(2 * math.sqrt(n), 16, 65536)
    ivf = IndexSpec(family="ivf", nlist=nlist, hnsw_m=32 if nlist >= 8192 else 0)
    if ivf.estimate_memory(n, d) <= budget:
        return ivf
    return _choose_pq_spec(n, d, budget, memory_budget, region_codes=False)


def _choose_pq_spec(n: int, d: int, budget: int, memory_budget: str | int, *, region_codes: bool) -> IndexSpec:
    """Rule 4 of :func:`choose_spec`; with ``region_codes`` a standalone copy of every code is counted too,
    and the lists are rule 3's ``2 sqrt(n)``: k-means on the training sample dominates the build, and half
    the lists halve it for slightly larger residuals to encode."""
    nlist = _pow2_near((2 if region_codes else 4) * math.sqrt(n), 256, 65536)
    for m in (256, 128, 64, 48, 32, 24, 16, 8, 4):
        if m > d:
            continue
        y = m * min(max(d // m, 1), 4)
        spec = IndexSpec(
            family="ivf", nlist=nlist, hnsw_m=32 if nlist >= 8192 else 0, encoding="pq", pq_m=m, pq_bits=8,
            opq_m=m, opq_dim=y,
        )
        codes = n * spec.standalone_code_bytes() if region_codes else 0
        if spec.estimate_memory(n, d) + codes <= budget:
            return spec
    raise ValueError(
        f"no index for n={n} vectors of d={d} fits memory_budget={memory_budget!r} "
        f"(even 4-byte PQ codes need ~{12 * n / 2**30:.2f} GiB); raise the budget"
    )


def choose_region_layout(
    n: int, d: int, memory_budget: str | int = "4G", *, layout: RegionLayout | Literal["auto"] = "auto",
    spec: IndexSpec | None = None,
) -> tuple[IndexSpec, RegionLayout]:
    """Choose the region index and how re-scoring reads region vectors, under ``memory_budget``.

    * ``"float16"``: the version's float16 region matrix (``2 d`` bytes a region, memory-mapped) serves
      re-scoring; the index is :func:`choose_spec`'s.
    * ``"codes"``: an ``OPQ,IVF,PQ`` region index, and its own standalone codes (IVF list id + PQ code of
      the residual, :meth:`IndexSpec.standalone_code_bytes`) stored per region serve the first stage's
      re-scoring; the float16 matrix stays on disk for the final candidates only. The PQ size is the
      largest whose index *and* codes fit the budget; ``nlist`` ~ ``2 sqrt(n)`` (rule 3's, half of rule 4's:
      k-means on the training sample dominates the build).

    ``"auto"`` keeps ``"float16"`` unless the budget requires compression, i.e. unless :func:`choose_spec`
    itself has to fall back to PQ codes (then a float16 copy, half of IVF-Flat's bytes, cannot fit
    either). A given ``spec`` is kept: ``"auto"`` then means ``"float16"``, and ``"codes"`` needs it to be PQ.

    Args:
        n: region vectors (>= 1); d: their dimension.
        memory_budget: bytes, or a string such as ``"4G"``, for the region index and (``"codes"``) its codes.
        layout: ``"auto"``, or the layout asked for.
        spec: the region index asked for (``None``: chosen here).

    Returns:
        ``(region index spec, layout)``.

    Raises:
        ValueError: ``layout`` is unknown, a given ``spec`` cannot hold codes, or nothing fits the budget.
    """
    if layout not in ("auto", "float16", "codes"):
        raise ValueError(f"region layout must be 'auto', 'float16' or 'codes'; got {layout!r}")
    if spec is not None:
        if layout == "codes":
            spec.standalone_code_bytes()  # raises for a spec without PQ codes
            return spec, "codes"
        return spec, "float16"
    budget = parse_memory(memory_budget)
    if layout == "float16":
        return choose_spec(n, d, budget), "float16"
    if layout == "auto":
        chosen = choose_spec(n, d, budget)
        if chosen.encoding != "pq":
            return chosen, "float16"
    return _choose_pq_spec(n, d, budget, memory_budget, region_codes=True), "codes"

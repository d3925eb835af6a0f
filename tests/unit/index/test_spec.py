"""IndexSpec parsing, memory estimates and the automatic choice."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from regionrank.index.ann import AnnIndex
from regionrank.index.spec import FLAT_MAX_VECTORS, HNSW_MAX_VECTORS, IndexSpec, choose_spec, parse_memory


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("Flat", IndexSpec(family="flat")),
        ("HNSW32", IndexSpec(family="hnsw", hnsw_m=32)),
        ("HNSW16,Flat", IndexSpec(family="hnsw", hnsw_m=16)),
        ("IVF1024,Flat", IndexSpec(family="ivf", nlist=1024)),
        ("IVF256,SQ8", IndexSpec(family="ivf", nlist=256, encoding="sq8")),
        ("IVF1024,PQ64", IndexSpec(family="ivf", nlist=1024, encoding="pq", pq_m=64, pq_bits=8)),
        ("OPQ64_256,IVF4096_HNSW32,PQ64x8",
         IndexSpec(family="ivf", nlist=4096, hnsw_m=32, encoding="pq", pq_m=64, pq_bits=8, opq_m=64, opq_dim=256)),
        ("OPQ16,IVF64,PQ16x4", IndexSpec(family="ivf", nlist=64, encoding="pq", pq_m=16, pq_bits=4, opq_m=16)),
    ],
)
def test_parse_and_canonical_round_trip(key: str, expected: IndexSpec) -> None:
    spec = IndexSpec.parse(key)
    assert spec == expected
    assert IndexSpec.parse(str(spec)) == spec
    assert str(spec) == spec.factory_string()


@pytest.mark.parametrize("key", ["", "LSH", "IVF0,Flat", "IVF64", "IVF64,PQ8x32", "OPQ8,IVF64,Flat", "HNSW32,PQ8", "Flat,Flat", "ivf64,flat"])
def test_parse_rejects_unsupported_keys_with_the_grammar(key: str) -> None:
    with pytest.raises(ValueError, match=r"IVF|PQ|OPQ|positive"):
        IndexSpec.parse(key)


def test_search_param_and_grid() -> None:
    assert IndexSpec.parse("Flat").search_param is None
    assert IndexSpec.parse("HNSW32").search_param == "efSearch"
    ivf = IndexSpec.parse("IVF100,Flat")
    assert ivf.search_param == "nprobe"
    grid = ivf.search_param_grid()
    assert grid == sorted(set(grid)) and grid[0] == 1 and grid[-1] == 100


@pytest.mark.parametrize(
    ("value", "expected"), [("4G", 4 * 2**30), ("512M", 512 * 2**20), ("1.5GiB", int(1.5 * 2**30)), ("100", 100), (2048, 2048)]
)
def test_parse_memory(value: str | int, expected: int) -> None:
    assert parse_memory(value) == expected


@pytest.mark.parametrize("value", ["4X", "-1G", "0", "G"])
def test_parse_memory_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="memory"):
        parse_memory(value)


def test_choose_spec_moves_through_the_families() -> None:
    d = 1024
    assert choose_spec(1000, d, "4G").family == "flat"
    assert choose_spec(FLAT_MAX_VECTORS, d, "4G") == IndexSpec(family="hnsw", hnsw_m=32)
    ivf = choose_spec(HNSW_MAX_VECTORS, d, "4G")
    assert ivf.family == "ivf" and ivf.encoding == "flat" and ivf.nlist == 512  # 2*sqrt(1e5) = 632 -> 512
    pq = choose_spec(10_000_000, d, "4G")
    assert pq.encoding == "pq" and pq.opq_m == pq.pq_m and pq.opq_dim % pq.pq_m == 0 and pq.hnsw_m == 32
    assert pq.estimate_memory(10_000_000, d) <= parse_memory("4G")
    # a tighter budget gives smaller codes; an impossible one raises
    small = choose_spec(10_000_000, d, "600M")
    assert small.pq_m < pq.pq_m
    with pytest.raises(ValueError, match="fits memory_budget"):
        choose_spec(10_000_000, d, "10M")


def test_choose_spec_lowers_hnsw_degree_to_fit() -> None:
    n, d = 50_000, 64
    budget = IndexSpec(family="hnsw", hnsw_m=16).estimate_memory(n, d)
    assert choose_spec(n, d, budget) == IndexSpec(family="hnsw", hnsw_m=16)


@pytest.mark.parametrize("key", ["Flat", "HNSW16", "IVF32,Flat", "IVF32,SQ8", "IVF32,PQ8x8", pytest.param("OPQ8_32,IVF32,PQ8x8", marks=pytest.mark.slow)])
def test_memory_estimate_is_close_to_the_serialised_size(key: str) -> None:
    rng = np.random.default_rng(0)
    n, d = 4000, 32
    x = rng.standard_normal((n, d)).astype(np.float32)
    spec = IndexSpec.parse(key)
    ann = AnnIndex.create(spec, d)
    ann.train(x)
    ann.add(x, np.arange(n))
    est, real = spec.estimate_memory(n, d), ann.memory_bytes()
    # the estimate adds id bookkeeping the file does not hold; it must never under-estimate much
    assert 0.7 * real <= est <= 2.5 * real, (est, real)
    assert isinstance(faiss.deserialize_index(faiss.serialize_index(ann.faiss_index)), faiss.Index)


def test_validate_dim() -> None:
    with pytest.raises(ValueError, match="divisible"):
        IndexSpec.parse("IVF16,PQ7").validate_dim(32)

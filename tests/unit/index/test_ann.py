"""AnnIndex: exactness of Flat, ids, removal (native and tombstones), persistence, GPU guard."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from faiss.contrib.evaluation import check_ref_knn_with_draws

from regionrank.index import _faiss
from regionrank.index.ann import AnnIndex
from regionrank.index.spec import IndexSpec
from regionrank.index.tuning import exact_knn


def data(seed: int, n: int = 2000, d: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((20, d))
    x = c[rng.integers(0, 20, n)] + 0.3 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def build(key: str, x: np.ndarray, ids: np.ndarray, search_value: int | None = None) -> AnnIndex:
    ann = AnnIndex.create(IndexSpec.parse(key), x.shape[1])
    ann.train(x)
    ann.add(x, ids)
    if search_value is not None:
        ann.set_search_param(search_value)
    return ann


def test_flat_equals_brute_force_with_external_ids() -> None:
    x, q = data(0), data(1, 25)
    ids = (np.arange(len(x), dtype=np.int64) << 12) + 5  # region-style large ids
    ann = build("Flat", x, ids)
    s, i = ann.search(q, 10)
    ref = q @ x.T
    order = np.argsort(-ref, axis=1, kind="stable")[:, :10]
    check_ref_knn_with_draws(np.take_along_axis(ref, order, 1), ids[order], s, i)


def test_float16_input_is_accepted_and_cast() -> None:
    x = data(2)
    ann = build("Flat", x.astype(np.float16), np.arange(len(x)))
    s, _ = ann.search(x[:3], 1)
    np.testing.assert_allclose(s[:, 0], (x[:3].astype(np.float16).astype(np.float32) * x[:3]).sum(1), rtol=1e-5)


@pytest.mark.parametrize("key", ["Flat", "IVF16,Flat", "HNSW16"])
def test_removed_ids_never_come_back(key: str) -> None:
    x = data(3)
    ids = np.arange(len(x), dtype=np.int64) * 3
    ann = build(key, x, ids, search_value=16 if key != "Flat" else None)
    gone = ids[:500]
    assert ann.remove(np.concatenate([gone, [10**9]])) == 500  # an unknown id is ignored
    assert ann.n_alive == len(x) - 500
    _, i = ann.search(x[:500], 20)
    assert not np.isin(i, gone).any()
    # results are the exact neighbours among the survivors for the exact index
    if key == "Flat":
        s_ref, i_ref = exact_knn(x[500:], ids[500:], x[:50], 20)
        check_ref_knn_with_draws(s_ref, i_ref, *ann.search(x[:50], 20))
    assert (key == "HNSW16") == bool(len(ann.tombstones))
    # re-adding a tombstoned id revives it (HNSW keeps the old vector; the id is alive again)
    if key == "HNSW16":
        assert ann.remove(gone[:10]) == 0  # already removed
        ann.add(x[:1], gone[:1])
        assert gone[0] not in ann.tombstones


@pytest.mark.parametrize("key", ["Flat", "HNSW16", "IVF16,Flat", "IVF16,PQ4x4"])
@pytest.mark.parametrize("mmap", [True, False])
def test_save_and_load_give_identical_results(tmp_path: Path, key: str, mmap: bool) -> None:
    x = data(4)
    ann = build(key, x, np.arange(len(x)), search_value=8 if key != "Flat" else None)
    ann.remove(np.arange(10))
    ann.save(tmp_path / "i.faiss")
    back = AnnIndex.load(tmp_path / "i.faiss", ann.spec, ann.dim, search_value=ann.search_value, mmap=mmap)
    assert back.ntotal == ann.ntotal and back.n_alive == ann.n_alive
    s1, i1 = ann.search(x[:20], 5)
    s2, i2 = back.search(x[:20], 5)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2)


@pytest.mark.parametrize("key", ["IVF16,Flat", "IVF16,SQ8", "OPQ4_16,IVF16,PQ4x4"])
def test_search_among_new_vectors_indexed_apart_equals_the_selector_search(tmp_path: Path, key: str) -> None:
    x = data(5, n=2500)
    ann = build(key, x[:2000], np.arange(2000), search_value=4)
    new_ids = np.arange(2000, 2500) * 2
    ann.add(x[2000:], new_ids)
    ref = ann.search_among(x[:50], 6, new_ids)  # selector over the whole index
    assert set(ref[1].ravel()) <= set(new_ids) | {-1}
    ann.save(tmp_path / "i.faiss")
    back = AnnIndex.load(tmp_path / "i.faiss", ann.spec, ann.dim, search_value=4, mmap=False)
    back.save(tmp_path / "j.faiss")  # the trained copy travels with every save
    again = AnnIndex.load(tmp_path / "j.faiss", ann.spec, ann.dim, search_value=4, mmap=False)
    assert (tmp_path / "j.faiss.trained").is_file()
    for a in (ann, back, again):
        assert a._trained_index().ntotal == 0  # the trained, empty copy the new vectors go into
        s, i = a.search_among(x[:50], 6, new_ids, x[2000:])
        np.testing.assert_array_equal(i, ref[1])
        np.testing.assert_allclose(s, ref[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="needs an IVF index"):
        build("HNSW16", x[:100], np.arange(100)).search_among(x[:5], 3, np.arange(5))


def test_load_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.faiss"):
        AnnIndex.load(tmp_path / "nope.faiss", IndexSpec.parse("Flat"), 4, search_value=None)


def test_shape_and_training_errors() -> None:
    ann = AnnIndex.create(IndexSpec.parse("IVF16,Flat"), 8)
    with pytest.raises(RuntimeError, match="not trained"):
        ann.add(np.zeros((3, 8), np.float32), np.arange(3))
    with pytest.raises(ValueError, match=r"\(n, 8\)"):
        ann.train(np.zeros((100, 7), np.float32))
    with pytest.raises(ValueError, match="one id per vector"):
        AnnIndex.create(IndexSpec.parse("Flat"), 8).add(np.zeros((3, 8), np.float32), np.arange(2))


def test_gpu_requests_are_guarded_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from regionrank.flows.device import resolve_faiss_gpus

    assert _faiss.check_ngpu(0) == 0
    monkeypatch.setattr(_faiss, "available_gpus", lambda: 0)
    monkeypatch.setattr("regionrank.index.available_gpus", lambda: 0)
    assert resolve_faiss_gpus(-1) == 0 and resolve_faiss_gpus("auto") == 0  # only flows resolve "all GPUs"
    with pytest.raises(ValueError, match="ngpu=1"):
        _faiss.check_ngpu(1)
    with pytest.raises(ValueError, match="ngpu=1"):
        resolve_faiss_gpus(1)
    with pytest.raises(ValueError, match="ngpu must be"):
        _faiss.check_ngpu(-2)
    with pytest.raises(ValueError, match="ngpu must be"):
        _faiss.check_ngpu(-1)  # index takes resolved counts only
    with pytest.raises(ValueError, match="ngpu must be"):
        resolve_faiss_gpus(-2)
    sentinel = object()
    # never calls index_cpu_to_all_gpus (which returns an EMPTY index on a CPU-only faiss-gpu build)
    assert _faiss.to_gpus(sentinel, 1) is sentinel


@pytest.mark.gpu
@pytest.mark.skipif(_faiss.available_gpus() == 0, reason="needs a GPU faiss build and a GPU")
def test_gpu_search_equals_cpu_search() -> None:
    x = data(5)
    cpu = build("IVF16,Flat", x, np.arange(len(x)), search_value=4)
    gpu = AnnIndex(cpu.spec, cpu.dim, cpu.faiss_index, search_value=4, ngpu=_faiss.available_gpus())
    assert gpu.ntotal == len(x)
    i_cpu = cpu.search(x[:50], 10)[1]
    i_gpu = gpu.search(x[:50], 10)[1]
    assert (i_cpu == i_gpu).mean() > 0.99

"""The compressed region layout: the chooser, the codes each version stores, the bound between decoded
and exact MrSw, and the two-stage search's agreement and completeness statement over codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from index_testdata import QUERIES, BagOfWordsEncoder, EstimatingScanReranker, Scene, write_images

from regionrank import index
from regionrank.index.spec import IndexSpec, choose_region_layout, choose_spec

# 16 PQ bytes of a 32-d projection + 1 byte of IVF list id: 17 bytes a region against float16's 64
CODES_SPEC = "OPQ16_32,IVF64,PQ16"
# top-10 agreement of compressed with uncompressed search, mean over the queries (measured 1.0 here)
AGREEMENT_TOLERANCE = 0.9
# building OPQ+IVF+PQ indexes (OPQ and PQ training) costs tens of seconds on 2 cores: 198 s for this module
SLOW = pytest.mark.slow


@pytest.fixture(scope="module")
def scene_store(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("codes")
    scene = Scene(seed=0)
    records = scene.images(600)
    return root, scene, write_images(root / "emb", records), records


@pytest.fixture(scope="module")
def compressed(scene_store):
    root, scene, store, records = scene_store
    manifest = index.build_indexes(store, root / "idx-codes", specs={"region": CODES_SPEC}, region_layout="codes")
    return root / "idx-codes", manifest


@pytest.fixture(scope="module")
def plain(scene_store):
    root, scene, store, records = scene_store
    manifest = index.build_indexes(store, root / "idx-plain")
    return root / "idx-plain", manifest


def test_standalone_code_bytes_is_faiss_sa_code_size() -> None:
    faiss = index.faiss_module()
    for key in ("OPQ16_32,IVF64,PQ16", "IVF300,PQ8", "OPQ8_64,IVF1024_HNSW32,PQ8x8"):
        spec = IndexSpec.parse(key)
        assert spec.standalone_code_bytes() == faiss.index_factory(64, key, faiss.METRIC_INNER_PRODUCT).sa_code_size()
    with pytest.raises(ValueError, match="PQ encoding"):
        IndexSpec.parse("IVF64,Flat").standalone_code_bytes()


def test_chooser_compresses_only_when_the_budget_requires_it() -> None:
    n, d = 2_000_000, 256
    spec, layout = choose_region_layout(n, d, "16G")
    assert layout == "float16" and spec == choose_spec(n, d, "16G") and spec.encoding == "flat"
    budget = 64 * n  # 64 bytes a region: IVF-Flat (1 KB a region) cannot fit, nor a float16 copy
    assert choose_spec(n, d, budget).encoding == "pq"
    spec, layout = choose_region_layout(n, d, budget)
    assert layout == "codes" and spec.encoding == "pq"
    assert spec.estimate_memory(n, d) + n * spec.standalone_code_bytes() <= budget
    # the next larger PQ would not have fit with its codes: the chooser takes the largest that does
    assert spec.pq_m in (48, 32, 24, 16, 8, 4)
    # asked for: codes even under a large budget; a given spec is kept, and must be PQ for codes
    assert choose_region_layout(n, d, "16G", layout="codes")[1] == "codes"
    assert choose_region_layout(n, d, "16G", spec=IndexSpec.parse("IVF64,Flat")) == (IndexSpec.parse("IVF64,Flat"), "float16")
    with pytest.raises(ValueError, match="PQ encoding"):
        choose_region_layout(n, d, "16G", layout="codes", spec=IndexSpec.parse("IVF64,Flat"))
    unknown: Any = "int8"
    with pytest.raises(ValueError, match="region layout"):
        choose_region_layout(n, d, "16G", layout=unknown)


@SLOW
def test_build_picks_codes_when_the_budget_requires_it(tmp_path: Path) -> None:
    scene = Scene(seed=3)
    records = scene.images(600)
    store = write_images(tmp_path / "emb", records)
    n_regions = sum(r.num_regions for r in records)
    budget = 300_000  # ~90 bytes a region: neither IVF-Flat nor a float16 matrix (64 B) plus an index fits
    assert choose_spec(n_regions, scene.dim, budget).encoding == "pq"
    manifest = index.build_indexes(store, tmp_path / "idx", kind=("region",), memory_budget=budget)
    assert manifest.region_layout == "codes" and manifest.build["region_layout"] == "auto"
    info = manifest.indexes["region"]
    assert info.chosen_by == "auto" and IndexSpec.parse(info.spec) == choose_region_layout(n_regions, scene.dim, budget)[0]
    # the default budget keeps today's layout
    assert index.build_indexes(store, tmp_path / "idx2", kind=("region",)).region_layout == "float16"


@SLOW
def test_manifest_records_bytes_per_region(compressed, plain) -> None:
    path, manifest = compressed
    code_bytes = IndexSpec.parse(CODES_SPEC).standalone_code_bytes()
    per = manifest.bytes_per_region
    assert manifest.region_layout == "codes"
    n = manifest.indexes["region"].n_vectors
    assert code_bytes <= per["codes"] <= code_bytes + 256 / n  # the codes plus one .npy header
    assert per["search"] == pytest.approx(per["region_index"] + per["global_index"] + per["codes"], abs=0.05)
    assert per["float16_matrix"] >= 2 * manifest.embed_dim
    plain_per = plain[1].bytes_per_region
    assert plain[1].region_layout == "float16" and plain_per["codes"] == 0
    assert plain_per["search"] == pytest.approx(
        plain_per["region_index"] + plain_per["global_index"] + plain_per["float16_matrix"], abs=0.05)
    assert per["search"] < plain_per["search"]
    assert index.Manifest.read(index.VersionedDir(path).path(manifest.version)).bytes_per_region == per


@SLOW
def test_decoded_codes_match_the_index_scores_and_the_error_bound(compressed, scene_store) -> None:
    path, _ = compressed
    _, scene, _, records = scene_store
    handle = index.open_index(path)
    regions, codec = handle.regions, handle.indexes["region"]
    assert regions is not None and regions.compressed
    enc = BagOfWordsEncoder(scene.prototypes)
    int_ids = regions.int_ids([r.image_id for r in records])
    codes, counts = regions.gather_codes(int_ids)
    decoded = codec.decode_standalone(codes)
    exact = np.concatenate([np.asarray(r.region_embeddings, np.float32) for r in records])
    err = np.linalg.norm(exact - decoded, axis=1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    assert np.all(np.maximum.reduceat(err, starts) <= regions.code_error[int_ids] + 1e-3)  # float16 vs float32 input
    for text in QUERIES:
        q = enc.encode_query(text)
        # the index's own scores are the cosines with the decoded vectors (the decoded proof's premise)
        scores, items, slots = handle.search_multi(q.word_embeddings, 20)
        for w in range(len(q.tokens)):
            for s, i, slot in zip(scores[w], items[w], slots[w], strict=True):
                if i < 0:
                    continue
                row = int(starts[int(np.flatnonzero(int_ids == i)[0])]) + int(slot)
                assert float(decoded[row] @ q.word_embeddings[w]) == pytest.approx(float(s), abs=1e-4)
        # |exact MrSw - decoded MrSw| <= sum_w |q_w| * eps_i per image
        ex = index.mrsw_align_stacked(q.word_embeddings, exact, counts).scores
        de = index.mrsw_align_stacked(q.word_embeddings, decoded, counts).scores
        scale = float(np.linalg.norm(q.word_embeddings, axis=1).sum())
        assert np.all(np.abs(ex - de) <= scale * regions.code_error[int_ids] + 1e-3)


@SLOW
def test_compressed_search_agrees_with_uncompressed(compressed, plain, scene_store) -> None:
    _, scene, store, _ = scene_store
    enc = BagOfWordsEncoder(scene.prototypes)
    agree = []
    for rr in (None, EstimatingScanReranker()):
        kw = {"fusion": "mrsw"} if rr is None else {"max_rerank_k": 256}
        a = index.Searcher(compressed[0], store, enc, rr, **kw)
        b = index.Searcher(plain[0], store, enc, rr, **kw)
        for text in QUERIES:
            hits_a, hits_b = a.search(text, 10), b.search(text, 10)
            agree.append(len({h.image_id for h in hits_a} & {h.image_id for h in hits_b}) / 10)
            # the hits' scores are exact: re-scored from the full-precision vectors
            by_id = {h.image_id: h for h in hits_b}
            for h in hits_a:
                if h.image_id in by_id:
                    assert h.stage_scores["mrsw"] == pytest.approx(by_id[h.image_id].stage_scores["mrsw"], abs=1e-4)
    assert float(np.mean(agree)) >= AGREEMENT_TOLERANCE, agree


@SLOW
def test_search_stats_state_what_the_certificate_covers(compressed, plain, scene_store) -> None:
    _, scene, store, records = scene_store
    enc = BagOfWordsEncoder(scene.prototypes)
    a = index.Searcher(compressed[0], store, enc, None, fusion="mrsw", region_k=8, max_region_k=4096)
    a.handle.indexes["region"].set_search_param(64)  # every list probed: the proofs cover every image
    b = index.Searcher(plain[0], store, enc, None, fusion="mrsw", region_k=8, max_region_k=4096)
    for text in QUERIES:
        q = enc.encode_query(text)
        a.search(text, 10)
        st = a.last_stats
        assert st.scored_from == "codes" and st.code_error_bound > 0
        assert st.certificate == ("decoded" if st.certified else "none")
        stored = [np.asarray(r.region_embeddings, np.float16).astype(np.float32) for r in records]  # as indexed
        ex = index.mrsw_align(q.word_embeddings, stored, pad_regions_to=36).scores
        top = {records[i].image_id for i in np.argsort(-ex, kind="stable")[:10]}
        pooled = {a.handle.idmap.image_id(int(i)) for i in st.candidate_ids}
        if st.certified_exact:  # a claim on exact MrSw must hold
            assert top <= pooled
        b.search(text, 10)
        sb = b.last_stats
        assert sb.scored_from == "vectors" and sb.code_error_bound == 0.0
        assert sb.certificate == ("exact" if sb.certified else "none")
        assert sb.certified_exact == sb.certified
        if sb.certified:
            assert top <= {b.handle.idmap.image_id(int(i)) for i in sb.candidate_ids}


@SLOW
def test_certified_exact_uses_the_widened_bound(compressed, scene_store) -> None:
    """Searched to the bottom (every region of every list), the decoded proof holds; the exact one holds
    where the error bound leaves room (for some queries here), and the exhaustive exact top-10 is then in
    the pool; with a reconstruction error too large for any margin it is withheld."""
    _, scene, store, records = scene_store
    enc = BagOfWordsEncoder(scene.prototypes)
    s = index.Searcher(compressed[0], store, enc, None, fusion="mrsw", region_k=4096, max_region_k=4096)
    s.handle.indexes["region"].set_search_param(64)
    first = s.first_stage
    assert first.regions is not None
    exact_claims = 0
    for text in QUERIES:
        q = enc.encode_query(text)
        s.search(text, 10)
        st = s.last_stats
        assert st.certified and st.certificate == "decoded"
        assert st.code_error_bound == pytest.approx(
            first.error_scale(q) * float(first.regions.code_error.max()) + 1e-4 * len(q.tokens), rel=1e-6)
        if not st.certified_exact:
            continue
        exact_claims += 1
        stored = [np.asarray(r.region_embeddings, np.float16).astype(np.float32) for r in records]
        ex = index.mrsw_align(q.word_embeddings, stored, pad_regions_to=36).scores
        assert {records[i].image_id for i in np.argsort(-ex, kind="stable")[:10]} <= {
            s.handle.idmap.image_id(int(i)) for i in st.candidate_ids}
    assert exact_claims >= 1
    saved = first.regions.code_error.copy()
    try:
        first.regions.code_error[:] = 10.0  # no pool can be certified on exact MrSw with this error
        s.search(QUERIES[0], 10)
        assert s.last_stats.certified and not s.last_stats.certified_exact
        assert s.last_stats.code_error_bound > 10.0
    finally:
        first.regions.code_error[:] = saved


@SLOW
def test_add_images_encodes_the_new_segment(tmp_path: Path) -> None:
    scene = Scene(seed=5)
    records = scene.images(500)
    store = write_images(tmp_path / "emb", records)
    index.build_indexes(store, tmp_path / "idx", specs={"region": CODES_SPEC}, region_layout="codes",
                        image_ids=[r.image_id for r in records[:400]])
    manifest = index.add_images(tmp_path / "idx", store, [r.image_id for r in records[400:]], auto_rebuild=False)
    assert manifest.region_layout == "codes" and manifest.bytes_per_region["codes"] > 0
    handle = index.open_index(tmp_path / "idx")
    assert handle.regions is not None and len(handle.regions.codes or []) == 2
    new = handle.regions.int_ids([r.image_id for r in records[395:405]])
    codes, counts = handle.regions.gather_codes(new)
    assert codes.shape == (int(counts.sum()), IndexSpec.parse(CODES_SPEC).standalone_code_bytes())
    exact = np.concatenate([np.asarray(r.region_embeddings, np.float32) for r in records[395:405]])
    decoded = handle.indexes["region"].decode_standalone(codes)
    assert np.all(np.linalg.norm(exact - decoded, axis=1) <= np.repeat(handle.regions.code_error[new], counts) + 1e-3)
    hits = index.Searcher(tmp_path / "idx", store, BagOfWordsEncoder(scene.prototypes), None, fusion="mrsw").search(QUERIES[1], 5)
    assert len(hits) == 5

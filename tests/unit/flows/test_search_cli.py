"""`regionrank search` on a small synthetic workspace, and the one set of search defaults shared by the
CLI, SearchConfig and the library's Searcher."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from regionrank import index
from regionrank.flows import cli, components
from regionrank.flows.config import EncodeConfig, ExtractConfig, IndexConfig, SearchConfig, Workspace
from regionrank.flows.settings import save_workspace_config
from regionrank.index import RerankOutput, SearchParams
from regionrank.index.alignment import mrsw_align
from regionrank.storage import ImageEmbeddingStore
from regionrank.storage.records import ImageEmbeddingRecord, QueryEmbedding

DIM, N_CONCEPTS = 16, 12


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class ConceptQueryEncoder:
    """QueryEncoder: token ``c{j}`` -> concept prototype j."""

    def __init__(self, prototypes: np.ndarray) -> None:
        self.prototypes = prototypes

    def encode_query(self, text: str) -> QueryEmbedding:
        tokens = text.split()
        words = self.prototypes[[int(t[1:]) for t in tokens]]
        return QueryEmbedding(text=text, tokens=tokens, word_embeddings=words, global_embedding=_unit(words.mean(0)))


class ZeroReranker:
    def rerank(self, query: QueryEmbedding, candidates: Sequence[ImageEmbeddingRecord]) -> RerankOutput:
        return RerankOutput(scores=np.zeros(len(candidates), np.float32))


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Workspace, ConceptQueryEncoder]:
    """60 images of 3-6 noisy concept regions, indexed; the query encoder stands in for the grounded one."""
    rng = np.random.default_rng(3)
    prototypes = _unit(rng.standard_normal((N_CONCEPTS, DIM)))
    ws = Workspace(root=tmp_path / "ws")
    save_workspace_config(ws, ExtractConfig(detector="ssd-mobilenet-coco"), EncodeConfig(encoder="grounded"), IndexConfig())
    store = ImageEmbeddingStore(ws.image_embeddings)
    with store.writer(encoder="synthetic", encoder_hash="0", embed_dim=DIM) as w:
        for i in range(60):
            r = int(rng.integers(3, 7))
            regions = _unit(prototypes[rng.choice(N_CONCEPTS, r, replace=False)] + 0.4 * rng.standard_normal((r, DIM)))
            boxes = np.tile(np.array([[0, 0, 10, 10]], np.float32), (r, 1))
            w.write(ImageEmbeddingRecord(image_id=f"img{i:03d}", uri=f"/photos/img{i:03d}.jpg", boxes=boxes,
                                         region_embeddings=regions, global_embedding=_unit(regions.mean(0))))
    index.build_indexes(ImageEmbeddingStore(ws.image_embeddings), ws.index_dir)
    encoder = ConceptQueryEncoder(prototypes)
    monkeypatch.setattr(components, "load_query_encoder", lambda *args, **kw: encoder)
    monkeypatch.setattr(cli, "console", Console(width=240, no_color=True))
    return ws, encoder


def test_search_with_rerank_k_0_prints_exact_mrsw_in_mrsw_order(workspace: tuple[Workspace, ConceptQueryEncoder]) -> None:
    ws, encoder = workspace
    res = CliRunner().invoke(cli.app, ["search", "c1 c5", "-w", str(ws.root), "--rerank-k", "0", "-k", "5"])
    assert res.exit_code == 0, res.output
    rows = [[cell.strip() for cell in re.split(r"[│|┃]", line)[1:-1]] for line in res.output.splitlines()
            if re.search(r"img\d{3}\.jpg", line)]
    records = list(ImageEmbeddingStore(ws.image_embeddings).iter_records())
    mrsw = mrsw_align(encoder.encode_query("c1 c5").word_embeddings, [r.region_embeddings for r in records]).scores
    ref = np.argsort(-mrsw, kind="stable")[:5]
    assert [row[1] for row in rows] == [Path(records[i].uri).name for i in ref]
    for row, i in zip(rows, ref, strict=True):
        assert row[2] == row[3] == f"{mrsw[i]:.3f}"  # the score is exact MrSw ...
        assert row[4] == "-"  # ... and nothing was re-ranked


def test_cli_search_config_and_searcher_share_the_search_defaults(workspace: tuple[Workspace, ConceptQueryEncoder]) -> None:
    ws, encoder = workspace
    defaults = SearchParams()
    options = {p.name: p.default for p in typer.main.get_group(cli.app).commands["search"].params}
    assert (options["k"], options["rerank_k"], options["fusion"]) == (defaults.k, defaults.rerank_k, defaults.fusion)
    assert SearchConfig().params == defaults
    assert index.Searcher(ws.index_dir, ws.image_embeddings, encoder, ZeroReranker()).params == defaults
    searcher = components.make_searcher(ws, EncodeConfig(encoder="grounded"), "ssd-mobilenet-coco", SearchConfig(rerank_k=0))
    assert searcher.params == SearchParams(rerank_k=0) and searcher.reranker is None

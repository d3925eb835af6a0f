"""`regionrank status` names damaged index versions (commands.status and the CLI's printing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from regionrank import index
from regionrank.flows import commands
from regionrank.flows.cli import app
from regionrank.flows.config import Workspace
from regionrank.storage import ImageEmbeddingStore
from regionrank.storage.records import ImageEmbeddingRecord


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """A workspace whose image index has versions 1 and 2, version 2's global.faiss truncated."""
    monkeypatch.setattr(commands, "_recent_runs", lambda limit: [])  # no Prefect server in unit tests
    ws = Workspace(root=tmp_path / "ws")
    rng = np.random.default_rng(0)
    store = ImageEmbeddingStore(ws.image_embeddings)
    with store.writer(encoder="synthetic", encoder_hash="0", embed_dim=8) as w:
        for i in range(30):
            regions = _unit(rng.standard_normal((3, 8)))
            w.write(ImageEmbeddingRecord(
                image_id=f"img{i:03d}", uri=f"/x/{i}.jpg", boxes=np.tile(np.float32([0, 0, 5, 5]), (3, 1)),
                region_embeddings=regions, global_embedding=_unit(regions.mean(0)), width=10, height=10))
    ids = [f"img{i:03d}" for i in range(30)]
    index.build_indexes(ws.image_embeddings, ws.index_dir, image_ids=ids[:20])
    index.add_images(ws.index_dir, ws.image_embeddings, ids[20:])
    path = index.open_index(ws.index_dir).path / "global.faiss"
    path.write_bytes(path.read_bytes()[:10])
    return ws


def test_status_lists_the_damaged_version(workspace: Workspace) -> None:
    st = commands.status(workspace)
    by_version = {v["version"]: v for v in st["index_versions"]}
    assert by_version[1]["damaged"] == []
    assert len(by_version[2]["damaged"]) == 1 and by_version[2]["damaged"][0].startswith("global.faiss: 10 bytes")


def test_status_command_prints_the_damaged_version(workspace: Workspace) -> None:
    res = CliRunner().invoke(app, ["status", "-w", str(workspace.root)])
    assert res.exit_code == 0, res.output
    assert "index version 2 is damaged" in res.output and "global.faiss: 10 bytes" in res.output
    assert "index version 1 is damaged" not in res.output

"""The main job on the shipped photos: pretrained demo detector + label-grounded encoder, through the
flows and the CLI; "a cat" finds the cat."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_demo_pipeline_search_and_status(prefect_server, tmp_path: Path) -> None:
    pytest.importorskip("cv2", reason="the demo extra (opencv + pretrained SSD/EfficientNet) is not installed")
    from regionrank.flows import commands
    from regionrank.flows.cli import app
    from regionrank.flows.config import EncodeConfig, ExtractConfig, PipelineConfig, SearchConfig, Workspace

    ws = Workspace(root=tmp_path / "ws")
    cfg = PipelineConfig(images=[ROOT / "examples" / "photos"], workspace=ws,
                         extract=ExtractConfig(detector="ssd-mobilenet-coco", device="cpu", images_per_task=3),
                         encode=EncodeConfig(encoder="grounded", device="cpu"))
    rep = commands.run_pipeline(cfg, incremental=False)
    assert (rep["stored"], rep["failed"], rep["notes"]) == (6, 0, [])

    hits = commands.search(ws, "a cat", SearchConfig(k=3), explain=tmp_path / "cat.png")
    assert Path(hits[0].uri).name == "chelsea.jpg"
    assert hits[0].score > hits[1].score
    labels = commands.region_labels(ws, [hits[0].image_id])[hits[0].image_id]
    (cat_word,) = [e for e in hits[0].explanation if e.token == "cat"]
    # contextual label/word vectors (encoders.grounded): "cat" matches the cat box at cosine ~0.93, not exactly 1
    assert labels[cat_word.region] == "cat" and cat_word.similarity > 0.9
    assert (tmp_path / "cat.png").stat().st_size > 1000
    cup = commands.search(ws, "a cup of coffee", SearchConfig(k=3))
    assert Path(cup[0].uri).name == "coffee.jpg"

    runner = CliRunner()
    res = runner.invoke(app, ["search", "a cat", "-k", "2", "-w", str(ws.root)])
    assert res.exit_code == 0, res.output
    assert "chelsea.jpg" in res.output and "cat #" in res.output
    res = runner.invoke(app, ["status", "-w", str(ws.root)])
    assert res.exit_code == 0, res.output
    st = json.loads(res.output)
    assert st["regions"]["images"] == 6 and st["image_embeddings"]["images"] == 6
    assert st["index_versions"][0]["items"] == 6
    assert any(r["flow"] == "index-images" and r["state"] == "Completed" for r in st["recent_runs"])

"""``regionrank index --boxes FILE``: both run paths describe the images named from their given boxes.

The plain path runs end to end through the CLI; the orchestrated path runs the same stages in chunks
(one per mapped task), which is what is checked here without Prefect (and with it, ``slow``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flows_testdata import TINY_BUTD
from flows_testdata import write_photos as _photos
from rich.console import Console
from typer.testing import CliRunner

from regionrank.flows import cli, stages
from regionrank.flows.cli import app
from regionrank.flows.config import EncodeConfig, ExtractConfig, PipelineConfig, Workspace

runner = CliRunner()


def _boxes_file(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.fixture
def tiny_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGIONRANK_DETECTOR_OPTIONS", json.dumps(TINY_BUTD))
    monkeypatch.setenv("REGIONRANK_ENCODER_MODEL", "teran-tiny")
    monkeypatch.setenv("REGIONRANK_DEVICE", "cpu")
    monkeypatch.setattr(cli, "err", Console(stderr=True, width=1000))  # error messages on one line each


def _index(images: Path, ws: Path, boxes: Path, *extra: str) -> Any:
    return runner.invoke(app, ["index", str(images), "-w", str(ws), "--detector", "butd-r101-c4", "--encoder", "teran",
                               "--no-orchestrator", "--boxes", str(boxes), *extra])


def _described(path: Path, boxes: np.ndarray) -> Any:
    from regionrank.extractors import get_detector
    from regionrank.extractors.decode import decode_image

    det = get_detector("butd-r101-c4", seed=0, **TINY_BUTD)  # what the run builds: no weights, seed 0
    return det.describe_boxes(det.preprocessor(decode_image(str(path))), boxes)


def test_index_boxes_describes_the_named_images(tmp_path: Path, tiny_env: None) -> None:
    from regionrank.storage import RegionStore, image_id_for_file

    photos = _photos(tmp_path / "images", 3)
    given = np.array([[0, 0, 50, 40], [20, 10, 96, 72]], np.float32)
    boxes = _boxes_file(tmp_path / "boxes.jsonl", [{"image": str(photos[1]), "boxes": given.tolist()}])
    ws = tmp_path / "ws"
    res = _index(tmp_path / "images", ws, boxes)
    assert res.exit_code == 0, res.output
    assert "given boxes" in res.output

    store = RegionStore(ws / "regions")
    rec = store.get([image_id_for_file(photos[1])])[0]
    ref = _described(photos[1], given)
    np.testing.assert_array_equal(rec.boxes, given)
    np.testing.assert_allclose(rec.features.astype(np.float32), ref.features, rtol=1e-2, atol=1e-3)
    np.testing.assert_array_equal(rec.class_ids, ref.class_ids)
    np.testing.assert_array_equal(rec.attr_ids, ref.attr_ids)
    others = store.get([image_id_for_file(p) for p in (photos[0], photos[2])])
    assert {r.config_hash for r in others} != {rec.config_hash}  # detected, another provenance
    saved = json.loads((ws / "regionrank.json").read_text())
    assert "boxes_file" not in saved["extract"]  # the boxes belong to that run only


@pytest.mark.parametrize(("line", "message"), [
    ({"image": "IMG1", "boxes": [[0, 0, 10, 10], [30, 5, 20, 9]]}, r"boxes.jsonl:1: box 1 \[30.0, 5.0, 20.0, 9.0\] is inverted"),
    ({"image": "IMG1", "boxes": [[0, 0, 97, 10]]}, r"boxes.jsonl:1: box 0 \[0.0, 0.0, 97.0, 10.0\] lies outside image"),
    ({"image": "elsewhere.png", "boxes": [[0, 0, 1, 1]]}, r"boxes.jsonl:1: image 'elsewhere.png' is not among the images"),
    ("{oops", r"boxes.jsonl:1: not valid JSON"),
])
def test_index_boxes_errors_name_the_line_and_lose_nothing(tmp_path: Path, tiny_env: None, line: Any, message: str) -> None:
    from regionrank.storage import RegionStore

    photos = _photos(tmp_path / "images", 2)
    if isinstance(line, dict):
        line = {**line, "image": str(photos[1]) if line["image"] == "IMG1" else line["image"]}
    ws = tmp_path / "ws"
    res = _index(tmp_path / "images", ws, _boxes_file(tmp_path / "boxes.jsonl", [line]), "--wait", "0")
    assert res.exit_code == 2, res.output
    assert re.search(message, res.output), res.output
    assert len(RegionStore(ws / "regions")) == 0  # refused before any image was extracted


def test_index_boxes_names_a_missing_file(tmp_path: Path, tiny_env: None) -> None:
    _photos(tmp_path / "images", 1)
    res = _index(tmp_path / "images", tmp_path / "ws", tmp_path / "no-such.jsonl")
    assert res.exit_code == 2 and "boxes file not found" in res.output and "no-such.jsonl" in res.output


def _cfg(images: Path, ws: Path, boxes: Path | None) -> PipelineConfig:
    return PipelineConfig(images=[images], workspace=Workspace(root=ws),
                          extract=ExtractConfig(detector="butd-r101-c4", options=TINY_BUTD, device="cpu", num_workers=0,
                                                boxes_file=boxes),
                          encode=EncodeConfig(encoder="teran", model_name="teran-tiny", device="cpu"))


def test_chunked_extraction_finds_each_image_in_its_chunk(tmp_path: Path) -> None:
    """The orchestrated path maps stages.extract_regions over chunks; each chunk reads the boxes file itself."""
    from regionrank.storage import RegionStore, image_id_for_file

    photos = _photos(tmp_path / "images", 4)
    by_id = np.array([[1, 2, 30, 40]], np.float32)
    boxes = _boxes_file(tmp_path / "boxes.jsonl", [{"image": str(photos[0]), "boxes": [[0, 0, 9, 9]]},
                                                   {"image": image_id_for_file(photos[3]), "boxes": by_id.tolist()}])
    cfg = _cfg(tmp_path / "images", tmp_path / "ws", boxes)
    images = stages.expand_inputs(cfg.images)
    assert stages.check_given_boxes(images, cfg.extract) == 2
    reports = [stages.extract_regions(chunk, cfg.workspace, cfg.extract) for chunk in (images[:2], images[2:])]
    stages.check_given_boxes_matched(cfg.extract, reports)  # the id matched in the second chunk
    assert [r["given_boxes"] for r in reports] == [1, 1]
    assert stages.sum_extract_reports(cfg.workspace, reports)["given_boxes"] == 2
    rec = RegionStore(cfg.workspace.regions).get([image_id_for_file(photos[3])])[0]
    np.testing.assert_array_equal(rec.boxes, by_id)

    stray = _boxes_file(tmp_path / "stray.jsonl", [{"image": "0" * 64, "boxes": [[0, 0, 1, 1]]}])
    cfg = _cfg(tmp_path / "images", tmp_path / "ws", stray)
    reports = [stages.extract_regions(chunk, cfg.workspace, cfg.extract) for chunk in (images[:2], images[2:])]
    with pytest.raises(ValueError, match=r"stray.jsonl: image id '0{64}' is the content id of none of the images"):
        stages.check_given_boxes_matched(cfg.extract, reports)


def test_a_detector_without_given_box_mode_is_refused_up_front(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from regionrank.flows import components

    photos = _photos(tmp_path / "images", 1)
    boxes = _boxes_file(tmp_path / "boxes.jsonl", [{"image": str(photos[0]), "boxes": [[0, 0, 9, 9]]}])
    monkeypatch.setattr(components, "load_detector", lambda cfg: object())
    cfg = _cfg(tmp_path / "images", tmp_path / "ws", boxes)
    with pytest.raises(ValueError, match=r"--boxes needs a detector that describes given boxes; 'butd-r101-c4' does not"):
        stages.check_given_boxes([str(photos[0])], cfg.extract)


@pytest.mark.slow
def test_the_orchestrated_run_honours_boxes(tmp_path: Path) -> None:
    from regionrank.flows import commands
    from regionrank.storage import RegionStore, image_id_for_file

    photos = _photos(tmp_path / "images", 2)
    given = np.array([[3, 4, 50, 60]], np.float32)
    boxes = _boxes_file(tmp_path / "boxes.jsonl", [{"image": str(photos[0]), "boxes": given.tolist()}])
    rep = commands.run_pipeline(_cfg(tmp_path / "images", tmp_path / "ws", boxes), incremental=False, orchestrate=True)
    assert (rep["extracted"], rep["given_boxes"]) == (2, 1)
    rec = RegionStore(tmp_path / "ws" / "regions").get([image_id_for_file(photos[0])])[0]
    np.testing.assert_array_equal(rec.boxes, given)

"""The CLI is an adapter: every command has --help, bad input gives a clear error, configs validate."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from regionrank.flows.cli import app

runner = CliRunner()
COMMANDS = ["index", "reindex", "search", "demo", "status", "detectors", "train", "evaluate", "import-features", "import-model",
            "serve", "api"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(cmd: str) -> None:
    res = runner.invoke(app, [cmd, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output


def test_search_in_an_empty_workspace_says_what_to_do(tmp_path: Path) -> None:
    res = runner.invoke(app, ["search", "a cat", "-w", str(tmp_path / "nothing")])
    assert res.exit_code == 2
    assert "run `regionrank index DIR` first" in res.output


def test_index_of_a_missing_folder_names_it(tmp_path: Path) -> None:
    res = runner.invoke(app, ["index", str(tmp_path / "no-such-folder"), "-w", str(tmp_path / "ws"), "--no-orchestrator",
                              "--detector", "ssd-mobilenet-coco", "--encoder", "grounded"])
    assert res.exit_code == 2
    assert "no-such-folder" in res.output


def test_detectors_lists_the_registry() -> None:
    res = runner.invoke(app, ["detectors"])
    assert res.exit_code == 0
    for name in ("butd-r101-c4", "torchvision-frcnn-r50-fpn", "detectron2", "ssd-mobilenet-coco"):
        assert name in res.output


def test_configs_reject_bad_values(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from regionrank.flows.config import ExtractConfig, IndexConfig, SearchConfig

    with pytest.raises(ValidationError, match="detector weights file not found"):
        ExtractConfig(weights=tmp_path / "missing.pth")
    with pytest.raises(ValidationError):
        IndexConfig(target_recall=1.5)
    with pytest.raises(ValidationError):
        SearchConfig(fusion="magic")


def test_resolve_device() -> None:
    from regionrank.flows.device import resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")


def test_workspace_refuses_a_second_detector(tmp_path: Path) -> None:
    from regionrank.flows.config import EncodeConfig, ExtractConfig, IndexConfig, Workspace
    from regionrank.flows.settings import load_workspace_config, save_workspace_config

    ws = Workspace(root=tmp_path)
    save_workspace_config(ws, ExtractConfig(detector="ssd-mobilenet-coco"), EncodeConfig(), IndexConfig())
    ext, enc, _ = load_workspace_config(ws)
    assert ext.detector == "ssd-mobilenet-coco" and enc.encoder == "grounded"
    with pytest.raises(ValueError, match=r"built with detector 'ssd-mobilenet-coco'.*'butd-r101-c4'"):
        save_workspace_config(ws, ExtractConfig(detector="butd-r101-c4"), EncodeConfig(), IndexConfig())


def test_caption_table_from_karpathy_json_hashes_the_images_beside_it(tmp_path: Path) -> None:
    import json

    from regionrank.flows.commands import caption_table
    from regionrank.flows.config import Workspace
    from regionrank.storage import image_id_for_bytes, read_caption_table

    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "images" / "a.jpg").write_bytes(b"photo-a")
    (tmp_path / "data" / "cap.json").write_text(json.dumps({"images": [
        {"filename": "a.jpg", "split": "train", "sentences": [{"raw": "a dog", "sentid": 1}]}]}))
    ws = Workspace(root=tmp_path / "ws")
    out = caption_table(tmp_path / "data" / "cap.json", ws)
    assert out == ws.captions
    (row,) = read_caption_table(out)
    assert (row.image_id, row.text, row.split) == (image_id_for_bytes(b"photo-a"), "a dog", "train")
    assert caption_table(out, ws) == out  # a table is used as given

"""One config resolver: CLI flag > REGIONRANK_* env > the workspace's regionrank.json > defaults, for every command and serve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from regionrank.flows.config import EncodeConfig, ExtractConfig, IndexConfig, Settings, Workspace
from regionrank.flows.settings import (
    ConfigOverrides,
    load_workspace_config,
    read_workspace_config_file,
    resolve_config,
    save_workspace_config,
)


@pytest.fixture(autouse=True)
def _no_user_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(f"REGIONRANK_{name.upper()}", raising=False)


def _saved(tmp_path: Path) -> Workspace:
    ws = Workspace(root=tmp_path / "ws")
    save_workspace_config(ws, ExtractConfig(detector="butd-r101-c4", options={"max_boxes": 5}, device="cpu", images_per_task=7),
                          EncodeConfig(encoder="teran", model_name="teran-tiny", batch_size=3), IndexConfig(memory_budget="1G"))
    return ws


def test_defaults_when_nothing_is_saved_or_set(tmp_path: Path) -> None:
    cfg = resolve_config(Workspace(root=tmp_path), [tmp_path])
    assert cfg.extract == ExtractConfig()
    assert cfg.encode == EncodeConfig(encoder="teran")  # a bottom-up detector gets TERAN
    assert cfg.index == IndexConfig() and cfg.dask_address is None
    demo = resolve_config(Workspace(root=tmp_path), [tmp_path], ConfigOverrides(detector="ssd-mobilenet-coco"))
    assert demo.encode.encoder == "grounded"


def test_the_saved_workspace_config_beats_the_defaults(tmp_path: Path) -> None:
    cfg = resolve_config(_saved(tmp_path), [tmp_path])
    assert (cfg.extract.options, cfg.extract.device, cfg.extract.images_per_task) == ({"max_boxes": 5}, "cpu", 7)
    assert (cfg.encode.encoder, cfg.encode.model_name, cfg.encode.batch_size) == ("teran", "teran-tiny", 3)
    assert cfg.index.memory_budget == "1G"


def test_environment_beats_the_saved_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGIONRANK_DEVICE", "auto")
    monkeypatch.setenv("REGIONRANK_DETECTOR_OPTIONS", json.dumps({"max_boxes": 9}))
    monkeypatch.setenv("REGIONRANK_ENCODER_MODEL", "teran-f30k")
    monkeypatch.setenv("REGIONRANK_DASK_ADDRESS", "tcp://env:8786")
    cfg = resolve_config(_saved(tmp_path), [tmp_path])
    assert (cfg.extract.options, cfg.extract.device, cfg.encode.device) == ({"max_boxes": 9}, "auto", "auto")
    assert cfg.extract.images_per_task == 7  # not set in the environment: still the saved value
    assert (cfg.encode.model_name, cfg.encode.batch_size) == ("teran-f30k", 3)
    assert cfg.dask_address == "tcp://env:8786"


def test_a_cli_flag_beats_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGIONRANK_DEVICE", "auto")
    monkeypatch.setenv("REGIONRANK_DASK_ADDRESS", "tcp://env:8786")
    cfg = resolve_config(_saved(tmp_path), [tmp_path], ConfigOverrides(device="cpu", dask_address="tcp://flag:1"))
    assert (cfg.extract.device, cfg.encode.device, cfg.dask_address) == ("cpu", "cpu", "tcp://flag:1")


def test_another_detector_does_not_inherit_the_saved_options(tmp_path: Path) -> None:
    cfg = resolve_config(_saved(tmp_path), [tmp_path], ConfigOverrides(detector="ssd-mobilenet-coco"))
    assert (cfg.extract.detector, cfg.extract.options, cfg.extract.images_per_task) == ("ssd-mobilenet-coco", {}, 64)
    assert cfg.encode.encoder == "teran"  # the saved encoder still applies; saving then refuses the mix


def test_workspace_config_file_round_trip(tmp_path: Path) -> None:
    ws = Workspace(root=tmp_path / "ws")
    assert read_workspace_config_file(ws) is None
    with pytest.raises(FileNotFoundError, match="run `regionrank index DIR` first"):
        load_workspace_config(ws)
    ws = _saved(tmp_path)
    ext, enc, idx = load_workspace_config(ws)
    assert (ext.images_per_task, enc.model_name, idx.memory_budget) == (7, "teran-tiny", "1G")
    assert read_workspace_config_file(ws)["extract"]["detector"] == "butd-r101-c4"


def test_serve_resolves_its_config_like_the_other_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from regionrank.flows import deployments
    from regionrank.flows.cli import app

    seen: dict[str, Any] = {}

    def make(cfg: Any, *, cron: str | None = None, interval: float | None = None) -> list[Any]:
        seen["cfg"], seen["interval"] = cfg, interval
        return []

    monkeypatch.setattr(deployments, "make_deployments", make)
    monkeypatch.setattr(deployments, "serve_deployments", lambda deps: seen.setdefault("served", deps))
    ws = _saved(tmp_path)
    monkeypatch.setenv("REGIONRANK_DEVICE", "auto")  # serve used to ignore REGIONRANK_* settings
    res = CliRunner().invoke(app, ["serve", str(tmp_path), "-w", str(ws.root), "--embedded", "--interval", "5"])
    assert res.exit_code == 0, res.output
    cfg = seen["cfg"]
    assert cfg == resolve_config(ws, [tmp_path], lock_timeout=600.0)
    assert (cfg.extract.device, cfg.extract.images_per_task, cfg.encode.model_name) == ("auto", 7, "teran-tiny")
    assert seen["interval"] == 5 and seen["served"] == []

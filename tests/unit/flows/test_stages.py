"""Both run paths execute the stages of flows/stages.py in order; the plain path reads each image once
and records unreadable inputs (a symlink loop) in the store's failure table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flows_testdata import TINY_BUTD
from flows_testdata import write_photos as _photos

from regionrank.flows import commands, stages
from regionrank.flows.config import EncodeConfig, ExtractConfig, PipelineConfig, Workspace


def _cfg(images: Path, ws: Path) -> PipelineConfig:
    return PipelineConfig(images=[images], workspace=Workspace(root=ws),
                          extract=ExtractConfig(detector="butd-r101-c4", options=TINY_BUTD, device="cpu", num_workers=0),
                          encode=EncodeConfig(encoder="teran", model_name="teran-tiny", device="cpu"))


def test_the_stage_list_is_expand_extract_encode_index() -> None:
    assert [f.__name__ for f in stages.PIPELINE_STAGES] == ["expand_inputs", "extract_regions", "encode_regions", "update_index"]


def test_expand_inputs_walks_folders_and_names_a_missing_path(tmp_path: Path) -> None:
    photos = _photos(tmp_path / "a", 2)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    assert stages.expand_inputs([tmp_path / "a", photos[0]]) == [str(p) for p in photos] + [str(photos[0])]
    with pytest.raises(FileNotFoundError, match="no-such"):
        stages.expand_inputs([tmp_path / "no-such"])


@pytest.mark.parametrize("incremental", [True, False])
def test_the_plain_run_calls_the_stages_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, incremental: bool) -> None:
    calls: list[tuple[str, Any]] = []
    monkeypatch.setattr(stages, "expand_inputs", lambda paths: calls.append(("expand_inputs", paths)) or ["x.png"])
    monkeypatch.setattr(stages, "extract_regions", lambda paths, ws, cfg, progress=None: calls.append(("extract_regions", paths)) or {
        "images": 1, "extracted": 1, "skipped": 0, "duplicates": 0, "failed": 0, "seconds": 1.0, "failures": [],
        "stage_seconds": {}, "image_ids": ["i1"]})
    monkeypatch.setattr(stages, "sum_extract_reports", lambda ws, reports: {
        "image_ids": reports[0]["image_ids"], "extracted": 1, "skipped": 0, "failed": 0, "failures": [], "seconds": 1.0,
        "images_per_s": 1.0, "regions": 3})
    monkeypatch.setattr(stages, "encode_regions", lambda ids, ws, cfg, det, progress=None: calls.append(("encode_regions", ids)) or {
        "images": 1, "encoded": 1, "skipped": 0, "seconds": 1.0})
    monkeypatch.setattr(stages, "update_index", lambda ws, ids, cfg, rebuild, dask_address: calls.append(("update_index", (ids, rebuild, dask_address))) or {"version": 1})
    rep = commands.run_pipeline(_cfg(tmp_path, tmp_path / "ws"), incremental=incremental, orchestrate=False)
    assert calls == [("expand_inputs", [tmp_path]), ("extract_regions", ["x.png"]), ("encode_regions", ["i1"]),
                     ("update_index", (["i1"], not incremental, None))]
    assert (rep["stored"], rep["encoded"], rep["regions"], rep["index_version"]) == (1, 1, 3, 1)


def test_plain_run_reads_each_image_once_and_records_a_symlink_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from file_reads import count_reads

    from regionrank.storage import ImageEmbeddingStore, RegionStore

    photos = _photos(tmp_path / "images", 3)
    (tmp_path / "images" / "a.png").symlink_to(tmp_path / "images" / "b.png")
    (tmp_path / "images" / "b.png").symlink_to(tmp_path / "images" / "a.png")
    opens = count_reads(monkeypatch, photos)
    ws = tmp_path / "ws"
    rep = commands.run_pipeline(_cfg(tmp_path / "images", ws), incremental=False, orchestrate=False)

    assert (rep["images"], rep["stored"], rep["extracted"], rep["failed"], rep["encoded"], rep["index_version"]) == (5, 3, 3, 2, 3, 1)
    assert opens == {str(p): 1 for p in photos}
    loops = {str(tmp_path / "images" / n) for n in ("a.png", "b.png")}
    assert {f["uri"] for f in rep["failures"]} == loops
    assert {f["uri"] for f in RegionStore(ws / "regions").failures()} == loops  # what `regionrank status` counts
    assert len(ImageEmbeddingStore(ws / "embeddings" / "images")) == 3

"""The index manifest: JSON round trip, numpy scalars, format version, unknown and missing fields."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from regionrank.index import IndexInfo, Manifest


def _info(**changes: object) -> IndexInfo:
    fields: dict = dict(
        kind="global", spec="IVF64,Flat", file="global.faiss", dim=32, n_vectors=1000, n_at_train=900, train_size=900,
        search_param="nprobe", search_value=8, k=10, target_recall=0.95, measured_recall=0.97, current_recall=0.96,
        target_met=True, memory_bytes=140_000, estimated_memory_bytes=150_000, memory_budget=1 << 20,
        build_s=0.5, tune_s=0.25, tried={"4": 0.9, "8": 0.97}, recall_lower=0.94, certified=False,
    )
    return IndexInfo(**{**fields, **changes})


def _manifest() -> Manifest:
    return Manifest(
        version=3, corpus="images", source="/data/emb", embed_dim=32, n_items=250,
        indexes={"global": _info(), "region": _info(kind="region", spec="HNSW32", file="region.faiss", search_param="efSearch",
                                                    search_value=64, tombstones=5, chosen_by="user")},
        build={"memory_budget": 1 << 20, "target_recall": 0.95, "specs": {"global": None}},
        created_at="2025-01-02T03:04:05+00:00", parent_version=2, history=["build", "add 12"], encoder="teran-coco",
    )


def test_json_round_trip_is_lossless(tmp_path: Path) -> None:
    m = _manifest()
    text = m.to_json()
    back = Manifest.from_json(text)
    assert back == m
    assert isinstance(back.indexes["region"], IndexInfo) and back.indexes["region"].search_value == 64
    assert back.to_json() == text
    m.write(tmp_path)
    assert Manifest.read(tmp_path) == m
    assert json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))["format_version"] == 1


def test_numpy_scalars_are_written_as_plain_json_numbers() -> None:
    m = _manifest()
    m.n_items = np.int64(250)  # what a build computes with numpy
    m.indexes["global"].measured_recall = np.float32(0.5)
    data = json.loads(m.to_json())
    assert data["n_items"] == 250 and data["indexes"]["global"]["measured_recall"] == 0.5
    m.build["bad"] = object()
    with pytest.raises(TypeError, match="cannot serialise object into an index manifest"):
        m.to_json()


def test_nan_recall_bound_survives_the_round_trip() -> None:
    m = _manifest()
    m.indexes["global"].recall_lower = float("nan")
    assert np.isnan(Manifest.from_json(m.to_json()).indexes["global"].recall_lower)


def test_missing_optional_fields_take_their_defaults() -> None:
    data = json.loads(_manifest().to_json())
    for key in ("rebuild_due", "parent_version", "history", "encoder", "encoder_hash"):
        del data[key]
    for key in ("tombstones", "tried", "chosen_by", "tuned_on", "tune_queries", "recall_lower", "certified", "predicted"):
        del data["indexes"]["global"][key]
    back = Manifest.from_json(json.dumps(data))
    assert back.parent_version is None and back.history == [] and back.encoder == ""
    g = back.indexes["global"]
    assert (g.tombstones, g.tried, g.chosen_by, g.tuned_on, g.certified) == (0, {}, "auto", "data", False)
    assert np.isnan(g.recall_lower)


@pytest.mark.parametrize("version", [0, 2, None, "1"])
def test_other_format_versions_are_refused_naming_them(version: object) -> None:
    data = json.loads(_manifest().to_json())
    if version is None:
        del data["format_version"]
    else:
        data["format_version"] = version
    with pytest.raises(ValueError, match=rf"index manifest format {version!r} is not supported \(expected 1\).*rebuild"):
        Manifest.from_json(json.dumps(data))


def test_unknown_and_missing_required_fields_are_errors_naming_the_field() -> None:
    data = json.loads(_manifest().to_json())
    with pytest.raises((TypeError, ValueError), match="surprise"):
        Manifest.from_json(json.dumps({**data, "surprise": 1}))
    with pytest.raises((TypeError, ValueError), match="embed_dim"):
        Manifest.from_json(json.dumps({k: v for k, v in data.items() if k != "embed_dim"}))
    data["indexes"]["global"]["nlist_typo"] = 3
    with pytest.raises((TypeError, ValueError), match="nlist_typo"):
        Manifest.from_json(json.dumps(data))


def test_reading_a_folder_without_manifest_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'manifest.json'} does not exist.*not a published index version"):
        Manifest.read(tmp_path)

"""Caption table and caption readers (Karpathy JSON, SCAN precomp captions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from regionrank.storage import (
    external_image_id,
    image_id_for_bytes,
    read_caption_table,
    read_karpathy_json,
    read_scan_captions,
    write_caption_table,
)


def _karpathy(tmp_path: Path) -> Path:
    data = {
        "dataset": "coco",
        "images": [
            {"filepath": "val2014", "filename": f"img{i}.jpg", "imgid": i, "cocoid": 100 + i, "split": "test" if i else "train",
             "sentences": [{"raw": f" caption {i}.{k} ", "sentid": 10 * i + k, "tokens": []} for k in range(5)]}
            for i in range(3)
        ],
    }
    p = tmp_path / "dataset_coco.json"
    p.write_text(json.dumps(data))
    return p


def test_karpathy_with_images_hashes_their_bytes(tmp_path: Path) -> None:
    p = _karpathy(tmp_path)
    (tmp_path / "imgs" / "val2014").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "imgs" / "val2014" / f"img{i}.jpg").write_bytes(f"bytes{i}".encode())
    caps = read_karpathy_json(p, images_root=tmp_path / "imgs")
    assert len(caps) == 15
    assert caps[7].image_id == image_id_for_bytes(b"bytes1") and caps[7].text == "caption 1.2" and caps[7].caption_id == "12"
    test = read_karpathy_json(p, images_root=tmp_path / "imgs", splits=["test"])
    assert {c.split for c in test} == {"test"} and len(test) == 10


def test_karpathy_without_images_uses_namespaced_ids(tmp_path: Path) -> None:
    caps = read_karpathy_json(_karpathy(tmp_path))
    assert caps[0].image_id == external_image_id("coco", 100)


def test_karpathy_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"Karpathy caption JSON not found: .*nope.json"):
        read_karpathy_json(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"not a Karpathy split JSON"):
        read_karpathy_json(bad)
    (tmp_path / "imgs").mkdir()
    with pytest.raises(FileNotFoundError, match=r"image for 'img0.jpg' not found"):
        read_karpathy_json(_karpathy(tmp_path), images_root=tmp_path / "imgs")


def test_scan_captions_five_lines_per_image(tmp_path: Path) -> None:
    (tmp_path / "test_caps.txt").write_text("\n".join(f"cap {j}" for j in range(10)) + "\n")
    (tmp_path / "test_ids.txt").write_text("391895\n522418\n")
    caps = read_scan_captions(tmp_path, "test", namespace="coco")
    assert len(caps) == 10
    assert caps[4].image_id == external_image_id("coco", "391895") and caps[5].image_id == external_image_id("coco", "522418")
    with pytest.raises(FileNotFoundError, match=r"SCAN caption file for split 'dev' not found"):
        read_scan_captions(tmp_path, "dev", namespace="coco")
    (tmp_path / "bad_caps.txt").write_text("a\nb\nc\n")
    with pytest.raises(ValueError, match=r"3 captions, not a multiple of 5"):
        read_scan_captions(tmp_path, "bad", namespace="coco")


def test_caption_table_round_trip_and_split_filter(tmp_path: Path) -> None:
    caps = read_karpathy_json(_karpathy(tmp_path))
    out = write_caption_table(tmp_path / "captions.parquet", caps)
    assert read_caption_table(out) == caps
    assert read_caption_table(out, split="train") == [c for c in caps if c.split == "train"]
    with pytest.raises(ValueError, match=r"duplicate caption_id '0'"):
        write_caption_table(tmp_path / "dup.parquet", caps[:1] * 2)
    with pytest.raises(FileNotFoundError, match=r"caption table not found"):
        read_caption_table(tmp_path / "missing.parquet")

"""Importers, each tested on small files written here in that exact format."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

from regionrank.storage import RegionStore, external_image_id, import_bottomup_tsv, import_milvlg_npz, import_scan_precomp


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()


def test_scan_precomp_one_row_per_image_and_per_caption(tmp_path: Path, rng: np.random.Generator) -> None:
    ims = rng.standard_normal((3, 36, 32)).astype(np.float32)
    np.save(tmp_path / "test_ims.npy", ims)
    (tmp_path / "test_ids.txt").write_text("11\n22\n33\n")
    rep = import_scan_precomp(tmp_path, "test", tmp_path / "store", namespace="coco")
    assert (rep.n_written, rep.n_skipped_existing) == (3, 0)
    store = RegionStore(tmp_path / "store")
    (r,) = store.get([external_image_id("coco", "22")])
    np.testing.assert_array_equal(r.features, ims[1].astype(np.float16))
    assert r.num_regions == 36 and r.detector == "import:scan-precomp"
    assert import_scan_precomp(tmp_path, "test", tmp_path / "store", namespace="coco").n_skipped_existing == 3

    np.save(tmp_path / "dev_ims.npy", np.repeat(ims, 5, axis=0))  # SCAN's per-caption layout
    (tmp_path / "dev_ids.txt").write_text("11\n22\n33\n")
    rep = import_scan_precomp(tmp_path, "dev", tmp_path / "store2", namespace="coco")
    assert rep.n_written == 3
    np.testing.assert_array_equal(RegionStore(tmp_path / "store2").get([external_image_id("coco", "33")])[0].features,
                                  ims[2].astype(np.float16))
    with pytest.raises(FileNotFoundError, match=r"train_ims.npy"):
        import_scan_precomp(tmp_path, "train", tmp_path / "s3", namespace="coco")


def test_anderson_tsv_with_a_malformed_line(tmp_path: Path, rng: np.random.Generator) -> None:
    rows = []
    feats = {}
    for img_id, n in ((42, 10), (43, 12)):
        boxes = rng.uniform(0, 100, (n, 4)).astype(np.float32)
        f = rng.standard_normal((n, 64)).astype(np.float32)
        feats[img_id] = (boxes, f)
        rows.append("\t".join([str(img_id), "640", "480", str(n), _b64(boxes), _b64(f)]))
    rows.insert(1, "44\t640\t480\t3\tnot-base64!!\tAAAA")
    tsv = tmp_path / "feats.tsv.0"
    tsv.write_text("\n".join(rows) + "\n")
    rep = import_bottomup_tsv([tsv], tmp_path / "store", variant="anderson", namespace="coco")
    assert rep.n_written == 2 and len(rep.failures) == 1 and "feats.tsv.0:2" in rep.failures[0][0]
    store = RegionStore(tmp_path / "store")
    (r,) = store.get([external_image_id("coco", 43)])
    assert (r.width, r.height, r.num_regions) == (640, 480, 12)
    np.testing.assert_array_equal(r.boxes, feats[43][0])
    np.testing.assert_array_equal(r.features, feats[43][1].astype(np.float16))
    assert store.failures()[0]["uri"].endswith("feats.tsv.0:2")


def test_airsplay_tsv_height_before_width_and_labels(tmp_path: Path, rng: np.random.Generator) -> None:
    n = 36
    boxes = rng.uniform(0, 100, (n, 4)).astype(np.float32)
    f = rng.standard_normal((n, 32)).astype(np.float32)
    obj = rng.integers(0, 1600, n).astype(np.int64)
    att = rng.integers(0, 400, n).astype(np.int64)
    line = "\t".join(["COCO_val2014_000000000042", "480", "640", _b64(obj), _b64(rng.random(n).astype(np.float32)),
                      _b64(att), _b64(rng.random(n).astype(np.float32)), str(n), _b64(boxes), _b64(f)])
    tsv = tmp_path / "val.tsv"
    tsv.write_text(line + "\n")
    import_bottomup_tsv(tsv, tmp_path / "store", variant="airsplay", namespace="coco")
    (r,) = RegionStore(tmp_path / "store").get([external_image_id("coco", "COCO_val2014_000000000042")])
    assert (r.width, r.height) == (640, 480)
    np.testing.assert_array_equal(r.class_ids, obj.astype(np.int32))
    np.testing.assert_array_equal(r.attr_ids, att.astype(np.int32))
    with pytest.raises(ValueError, match=r"variant must be 'anderson' or 'airsplay'; got 'x'"):
        import_bottomup_tsv(tsv, tmp_path / "s", variant="x", namespace="coco")


def test_milvlg_npz(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = tmp_path / "npz"
    folder.mkdir()
    n = 15
    x = rng.standard_normal((n, 48)).astype(np.float32)
    bbox = rng.uniform(0, 300, (n, 4)).astype(np.float32)
    info = {"image_id": "000000000139", "image_h": 426, "image_w": 640, "num_boxes": n,
            "objects_id": rng.integers(0, 1601, n), "objects_conf": rng.random(n).astype(np.float32),
            "attrs_id": rng.integers(0, 401, n), "attrs_conf": rng.random(n).astype(np.float32)}
    np.savez_compressed(folder / "000000000139.jpg.npz", x=x, bbox=bbox, num_bbox=n, image_h=426, image_w=640,
                        info=np.array(info, dtype=object))
    (folder / "broken.npz").write_bytes(b"not a zip")
    rep = import_milvlg_npz(folder, tmp_path / "store", namespace="coco")
    assert rep.n_written == 1 and len(rep.failures) == 1
    (r,) = RegionStore(tmp_path / "store").get([external_image_id("coco", "000000000139")])
    assert (r.width, r.height) == (640, 426)
    np.testing.assert_array_equal(r.features, x.astype(np.float16))
    np.testing.assert_array_equal(r.class_ids, info["objects_id"].astype(np.int32))

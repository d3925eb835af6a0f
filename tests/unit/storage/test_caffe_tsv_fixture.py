"""The TSV importer on real Caffe bottom-up features: two rows of airsplay's ``train2014_obj36.tsv``.

The rows are copied from airsplay/py-bottom-up-attention@85ec9b77 (``demo/data/caffe_coco_features/``;
features of the original Caffe model, fixed 36 boxes, LXMERT-style fields, height before width).
"""

from __future__ import annotations

import base64
import csv
import sys
from pathlib import Path

import numpy as np

from regionrank.storage import RegionStore, external_image_id, import_bottomup_tsv

TSV = Path(__file__).resolve().parents[2] / "fixtures" / "reference" / "caffe_tsv" / "train2014_obj36_head2.tsv"


def _raw_rows() -> list[list[str]]:
    csv.field_size_limit(sys.maxsize)
    with open(TSV, newline="") as fh:
        return list(csv.reader(fh, delimiter="\t"))


def test_real_caffe_tsv_imports_with_boxes_inside_each_image(tmp_path: Path) -> None:
    rep = import_bottomup_tsv(TSV, tmp_path / "store", variant="airsplay", namespace="coco")
    rows = _raw_rows()
    assert rep.n_written == len(rows) == 2 and not rep.failures
    records = RegionStore(tmp_path / "store").get([external_image_id("coco", row[0]) for row in rows])
    for row, r in zip(rows, records, strict=True):
        assert (r.height, r.width) == (int(row[1]), int(row[2]))  # height before width in this format
        assert r.boxes.shape == (36, 4) and r.features.shape == (36, 2048)
        b = r.boxes
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
        assert (b[:, 2] <= r.width).all() and (b[:, 3] <= r.height).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        raw = np.frombuffer(base64.b64decode(row[9]), np.float32).reshape(36, 2048)
        np.testing.assert_allclose(r.features.astype(np.float32), raw, rtol=1e-3, atol=1e-3)
        # pool5 after ReLU and a spatial mean: non-negative and sparse
        assert (raw >= 0).all()
        assert 0.2 < (raw == 0).mean() < 0.95
        assert (r.class_ids >= 0).all() and (r.class_ids < 1600).all()

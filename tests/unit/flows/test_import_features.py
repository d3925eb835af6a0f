"""``regionrank import-features tsv-airsplay`` on real Caffe features: two rows of airsplay's ``train2014_obj36.tsv``.

The rows (airsplay/py-bottom-up-attention@85ec9b77, ``demo/data/caffe_coco_features/``) hold the original
Caffe model's features of COCO images; imported by the command a user runs, into a fresh workspace,
then read back through the store. ``slow``: the command runs the ``import-features`` flow, whose
temporary Prefect server takes ~20 s to start on 2 cores
(``python -m pytest -m slow tests/unit/flows/test_import_features.py``).
"""

from __future__ import annotations

import base64
import csv
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from regionrank.flows.cli import app
from regionrank.storage import RegionStore, external_image_id

TSV = Path(__file__).resolve().parents[2] / "fixtures" / "reference" / "caffe_tsv" / "train2014_obj36_head2.tsv"
runner = CliRunner()


@pytest.mark.slow
def test_import_features_command_imports_real_caffe_features(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    res = runner.invoke(app, ["import-features", "tsv-airsplay", str(TSV), "-w", str(ws)])
    assert res.exit_code == 0, res.output
    assert "imported 2 images (0 already stored, 0 failed)" in res.output

    csv.field_size_limit(sys.maxsize)
    with open(TSV, newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    store = RegionStore(ws / "regions")
    ids = [external_image_id("coco", row[0]) for row in rows]  # sha256("coco:COCO_train2014_...") (--namespace coco)
    assert sorted(store.ids()) == sorted(ids) and store.feature_dim == 2048
    for row, rec in zip(rows, store.get(ids), strict=True):
        assert rec.uri == f"tsv://coco/{row[0]}" and rec.detector == "import:bottomup-tsv-airsplay"
        assert (rec.height, rec.width) == (int(row[1]), int(row[2]))  # height before width in this format
        b = rec.boxes
        assert b.shape == (36, 4)
        assert (b[:, :2] >= 0).all() and (b[:, 2] <= rec.width).all() and (b[:, 3] <= rec.height).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        feats = rec.features.astype(np.float32)
        assert feats.shape == (36, 2048)
        assert (feats >= 0).all()  # pool5 after ReLU and a spatial mean
        assert 0.2 < (feats == 0).mean() < 0.95  # and sparse
        raw = np.frombuffer(base64.b64decode(row[9]), np.float32).reshape(36, 2048)
        np.testing.assert_allclose(feats, raw, rtol=1e-3, atol=1e-3)  # float16 storage

    again = runner.invoke(app, ["import-features", "tsv-airsplay", str(TSV), "-w", str(ws)])
    assert again.exit_code == 0 and "imported 0 images (2 already stored, 0 failed)" in again.output

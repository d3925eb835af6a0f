"""The ``detectron2`` backend, for real: airsplay/py-bottom-up-attention (a detectron2 fork) runs it.

detectron2 is imported from a snapshot of the fork with its C++ extension stubbed (the
``detectron2_fork`` fixture of ``conftest.py``; skipped with the reason when ``REGIONRANK_D2_SOURCE``
does not point at one). regionrank's backend builds the fork's model from its config, loads the
fixture weights in the fork's ``.pkl`` layout through the fork's checkpointer, and must give the
fork's outputs stored in ``tests/fixtures/reference/butd`` (made by ``make_butd.py``): the Caffe
10-100 selection, boxes, foreground classes, attributes and pool5 features. Run it with::

    REGIONRANK_D2_SOURCE=/work/ref/airsplay \\
    REGIONRANK_D2_EXTRA_PATH=/work/ref/venv-det/lib/python3.11/site-packages \\
    python -m pytest -m slow tests/unit/extractors/test_d2_reference.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from regionrank.extractors import PreparedImage, get_detector

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "reference" / "butd"
NAME = "000000000802"
CAFFE_PIXEL_MEANS_BGR = (102.9801, 115.9465, 122.7717)  # the fork's config: PIXEL_MEAN, PIXEL_STD 1

pytestmark = pytest.mark.slow


@pytest.mark.filterwarnings("ignore:torch.meshgrid:UserWarning")  # the fork's anchor generator (2020 code)
def test_detectron2_backend_gives_the_forks_outputs(detectron2_fork: Path, airsplay_fixture_weights: Path, tmp_path: Path) -> None:
    meta = json.loads((FIXTURES / "meta.json").read_text())
    base = detectron2_fork / meta["config"]
    overrides = meta["overrides"]
    config = tmp_path / "vg_r101_c4_attr_small.yaml"
    config.write_text(
        f"_BASE_: {json.dumps(str(base))}\n"
        f"MODEL:\n  RPN:\n    POST_NMS_TOPK_TEST: {overrides['RPN.POST_NMS_TOPK_TEST']}\n"
        f"INPUT:\n  MIN_SIZE_TEST: {overrides['INPUT.MIN_SIZE_TEST']}\n  MAX_SIZE_TEST: {overrides['INPUT.MAX_SIZE_TEST']}\n"
    )
    det = get_detector("detectron2", weights=airsplay_fixture_weights, config_file=config, device="cpu")  # Caffe 10-100 at 0.2, NMS 0.3
    assert det.feature_dim == 2048

    with np.load(FIXTURES / f"{NAME}.npz") as npz:
        z = dict(npz)
    width, height = Image.open(FIXTURES / f"{NAME}.jpg").size
    # the reference's network input (Caffe pre-processing, BGR minus means); the model subtracts the means again
    x = torch.from_numpy(z["input"]) + torch.tensor(CAFFE_PIXEL_MEANS_BGR).view(3, 1, 1)
    (out,) = det.detect([PreparedImage(tensor=x, scale=float(z["scale"]), width=width, height=height)])

    sel = z["sel_adaptive"]
    assert out.num_regions == len(sel)
    # original pixels the detectron2 way (detector_postprocess: output size / network input size per axis);
    # the fixture's boxes_adaptive divide by Caffe's scale instead, so compare the RoIs in network pixels
    in_h, in_w = z["input"].shape[1:]
    ratio = np.array([width / in_w, height / in_h] * 2, np.float32)
    rois = out.boxes / ratio
    iou = box_iou(torch.from_numpy(rois), torch.from_numpy(z["proposals"][sel])).diagonal().numpy()
    assert (iou >= 0.99).mean() >= 0.99  # same selection, same order
    np.testing.assert_allclose(rois, z["proposals"][sel], rtol=0, atol=1e-2)
    rows = np.searchsorted(z["feat_ids"], sel)
    ref = z["features"][rows]
    rel = np.linalg.norm(out.features - ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert rel.max() <= 1e-4
    # detectron2 ids are contiguous, background (class 1600, attribute 400) last and left out
    cls_ids, attr_ids = z["cls_top_ids"][sel], z["attr_top_ids"][sel]
    np.testing.assert_array_equal(out.class_ids, cls_ids[np.arange(len(sel)), np.argmax(cls_ids != 1600, axis=1)])
    np.testing.assert_array_equal(out.attr_ids, attr_ids[np.arange(len(sel)), np.argmax(attr_ids != 400, axis=1)])
    assert out.class_scores is not None and (out.class_scores > 0).all()

"""``butd-r101-c4`` against outputs of airsplay/py-bottom-up-attention (tests/fixtures/reference/butd).

Same weights in (the fork's own ``.pkl`` layout, rebuilt from ``weights_recipe.json``), same network
input: regionrank must give the fork's proposals, class / attribute probabilities, pooled features
and selections, within the tolerances of the fixture's README. The full-network tests are ``slow``
(a ResNet-101 with 300 RoIs on CPU): ``python -m pytest -m slow tests/unit/extractors/test_butd_reference.py``.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from butd_refs import (
    BOX_FRACTION,
    BOX_IOU,
    FEATURE_REL_TOL,
    IMAGES,
    PROB_ABS_TOL,
    REFERENCE,
    SMALL,
    best_iou,
    load_npz,
    prepared,
    weights_module,
)
from PIL import Image

from regionrank.extractors.butd import (
    BottomUpCfg,
    BottomUpDetector,
    BottomUpRCNN,
    CaffePreprocessor,
    create_butd_detector,
    load_bottom_up_state,
)
from regionrank.extractors.butd_boxes import iou_boxes
from regionrank.extractors.checkpoint import detect_checkpoint_format, map_checkpoint
from regionrank.extractors.selection import select_bottom_up

FIXTURES = REFERENCE / "butd"


def _recipe() -> dict:
    return json.loads((FIXTURES / "weights_recipe.json").read_text())


def _ref(name: str) -> dict[str, np.ndarray]:
    return load_npz(FIXTURES / f"{name}.npz")


def _bg_first_probs(z: dict[str, np.ndarray]) -> torch.Tensor:
    """The reference's top-10 class probabilities as a dense [R, 1601] matrix, background moved to column 0."""
    r = z["cls_top_ids"].shape[0]
    dense = np.zeros((r, 1601), dtype=np.float32)
    np.put_along_axis(dense, (z["cls_top_ids"] + 1) % 1601, z["cls_top_probs"], axis=1)
    return torch.from_numpy(dense)


def _ref_fg_class(z: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Foreground argmax of the reference (its first top-10 id that is not background), as regionrank ids (1..1600)."""
    ids = z["cls_top_ids"][rows]
    first_fg = np.argmax(ids != 1600, axis=1)
    return ids[np.arange(len(rows)), first_fg] + 1


# ---- default run: layout, selection rules, pre-processing -------------------------------------


def test_the_forks_own_layout_maps_completely():
    with torch.device("meta"):
        target = BottomUpRCNN(BottomUpCfg()).state_dict()
        state = {name: torch.empty(shape) for name, shape in _recipe()["params"]}
    assert detect_checkpoint_format(state) == "airsplay"
    assert set(map_checkpoint(state, target)) == set(target)


def test_a_fork_file_of_another_shape_is_refused_naming_the_key():
    with torch.device("meta"):
        target = BottomUpRCNN(BottomUpCfg()).state_dict()
        state = {name: torch.empty(shape) for name, shape in _recipe()["params"]}
        state["roi_heads.box_predictor.fc_attr.weight"] = torch.empty(512, 2048)
    with pytest.raises(ValueError, match=r"roi_heads\.box_predictor\.fc_attr\.weight: \(512, 2048\) -> attr_fc1\.weight"):
        map_checkpoint(state, target)


@pytest.mark.parametrize("name", IMAGES)
@pytest.mark.parametrize(("rule", "lo", "hi"), [("adaptive", 10, 100), ("fixed36", 36, 36)])
def test_selection_rules_give_the_references_boxes(name, rule, lo, hi):
    # Exact per-class NMS 0.3 on the raw proposals (the reference loops torchvision.ops.nms over
    # the classes, exclusive IoU under detectron2's convention). Only pairs >= 0.2 decide these
    # selections (>= 36 proposals pass 0.2 in both images, see meta.json) and the top-10 per
    # proposal hold every such pair.
    z = _ref(name)
    boxes = iou_boxes("detectron2", torch.from_numpy(z["proposals"]))
    sel = select_bottom_up(boxes, _bg_first_probs(z), nms_iou=0.3, conf_thresh=0.2, min_boxes=lo, max_boxes=hi)
    np.testing.assert_array_equal(sel.keep.numpy(), z[f"sel_{rule}"])
    passing = z["max_conf"] >= 0.2
    np.testing.assert_allclose(sel.max_conf.numpy()[passing], z["max_conf"][passing], rtol=0, atol=0)


@pytest.mark.parametrize("name", IMAGES)
def test_caffe_preprocessing_gives_the_references_network_input(name):
    z = _ref(name)
    rgb = np.asarray(Image.open(FIXTURES / f"{name}.jpg").convert("RGB"))
    im = CaffePreprocessor(SMALL["min_size"], SMALL["max_size"])(rgb)
    assert im.scale == pytest.approx(float(z["scale"]), rel=1e-6)
    assert tuple(im.tensor.shape) == z["input"].shape
    np.testing.assert_allclose(im.tensor.numpy(), z["input"], rtol=0, atol=1e-3)


# ---- slow: the whole network against the reference --------------------------------------------


@pytest.fixture(scope="module")
def native_state() -> dict[str, torch.Tensor]:
    """The fixture weights, mapped once from the fork's layout into regionrank's names."""
    weights = weights_module().build_weights(_recipe())
    model = BottomUpRCNN(BottomUpCfg(box_convention="detectron2", **SMALL))
    assert load_bottom_up_state(model, {k: torch.from_numpy(v) for k, v in weights.items()}) == "airsplay"
    return model.state_dict()


def _detector(state: dict[str, torch.Tensor], **cfg: int) -> BottomUpDetector:
    model = BottomUpRCNN(BottomUpCfg(box_convention="detectron2", **SMALL, **cfg))
    model.load_state_dict(state, strict=True)
    return BottomUpDetector(model, weights_hash="fixture", device="cpu")


@pytest.fixture(scope="module")
def reference_detector(native_state) -> BottomUpDetector:
    return _detector(native_state)


@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGES)
def test_stages_match_the_reference(reference_detector, name):
    z = _ref(name)
    model = reference_detector.model
    x = torch.from_numpy(z["input"])[None]
    with torch.inference_mode():
        feats = model.trunk(x)
        (rois,) = model.proposals(feats, [tuple(x.shape[2:])], [float(z["scale"])])
        ids = torch.from_numpy(z["feat_ids"])
        pool5 = model.box_features(feats, [torch.from_numpy(z["proposals"])[ids]])
        probs, attr_probs = model.classify(pool5)
    ref_rois = z["proposals"]
    assert rois.shape == ref_rois.shape  # RPN: same proposals, same (objectness) order
    np.testing.assert_allclose(rois.numpy(), ref_rois, rtol=0, atol=1e-2)
    rel = np.linalg.norm(pool5.numpy() - z["features"], axis=1) / np.linalg.norm(z["features"], axis=1)
    assert rel.max() <= FEATURE_REL_TOL
    top = torch.from_numpy((z["cls_top_ids"][z["feat_ids"]] + 1) % 1601)
    np.testing.assert_allclose(probs.gather(1, top).numpy(), z["cls_top_probs"][z["feat_ids"]], rtol=0, atol=PROB_ABS_TOL)
    atop = torch.from_numpy((z["attr_top_ids"][z["feat_ids"]] + 1) % 401)
    np.testing.assert_allclose(attr_probs.gather(1, atop).numpy(), z["attr_top_probs"][z["feat_ids"]], rtol=0, atol=PROB_ABS_TOL)


@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGES)
@pytest.mark.parametrize("rule", ["adaptive", "fixed36"])
def test_end_to_end_selection_matches_the_reference(native_state, name, rule):
    z = _ref(name)
    lo, hi = (10, 100) if rule == "adaptive" else (36, 36)
    (det,) = _detector(native_state, min_boxes=lo, max_boxes=hi).detect([prepared(z)])
    ref_boxes, sel = z[f"boxes_{rule}"], z[f"sel_{rule}"]
    assert det.num_regions == len(sel)
    assert (best_iou(det.boxes, ref_boxes) >= BOX_IOU).mean() >= BOX_FRACTION
    np.testing.assert_array_equal(det.class_ids, _ref_fg_class(z, sel))
    rows = np.searchsorted(z["feat_ids"], sel)
    rel = np.linalg.norm(det.features - z["features"][rows], axis=1) / np.linalg.norm(z["features"][rows], axis=1)
    assert rel.max() <= FEATURE_REL_TOL


@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGES)
def test_given_boxes_match_the_references_given_box_mode(reference_detector, name):
    z = _ref(name)
    given = z["given_boxes"]
    ok = (given[:, 2] >= given[:, 0]) & (given[:, 3] >= given[:, 1])  # jittered boxes: one is inverted
    if not ok.all():
        with pytest.raises(ValueError, match="x1 <= x2"):
            reference_detector.describe_boxes(prepared(z), given)
    det = reference_detector.describe_boxes(prepared(z), given[ok])
    np.testing.assert_array_equal(det.boxes, given[ok])
    ref_feats = z["given_features"][ok]
    rel = np.linalg.norm(det.features - ref_feats, axis=1) / np.linalg.norm(ref_feats, axis=1)
    assert rel.max() <= FEATURE_REL_TOL
    ref_ids = z["given_cls_ids"][ok]
    fg = ref_ids != 1600  # the reference's argmax includes background (last)
    np.testing.assert_array_equal(det.class_ids[fg], ref_ids[fg] + 1)
    np.testing.assert_array_equal(det.attr_ids, z["given_attr_ids"][ok] + 1)


@pytest.mark.slow
def test_the_forks_pkl_loads_through_the_public_factory(tmp_path):
    weights = weights_module().build_weights(_recipe())
    path = tmp_path / "faster_rcnn_from_caffe_attr.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"model": weights, "__author__": "fixture"}, fh, protocol=4)
    det = create_butd_detector(weights=path, **SMALL)
    assert det.cfg.box_convention == "detectron2"  # chosen from the layout
    z = _ref(IMAGES[0])
    with torch.inference_mode():
        feats = det.model.trunk(torch.from_numpy(z["input"])[None])
        (rois,) = det.model.proposals(feats, [z["input"].shape[1:]], [float(z["scale"])])
    np.testing.assert_allclose(rois.numpy(), z["proposals"], rtol=0, atol=1e-2)

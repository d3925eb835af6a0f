"""butd-r101-c4: Caffe pre-processing, anchors, architecture and the output contract (small random-init network)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from regionrank.extractors import get_detector
from regionrank.extractors.butd import BottomUpCfg, BottomUpRCNN, CaffePreprocessor, caffe_anchors, create_butd_detector
from regionrank.extractors.detector import PreparedImage, StageTimer

TINY = dict(
    blocks=(1, 1, 1, 1), num_classes=21, num_attributes=9, rpn_post_nms_top_n=24, rpn_pre_nms_top_n=500,
    roi_pool_size=7, min_size=96, max_size=160, min_boxes=4, max_boxes=12,
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_detector():
    return create_butd_detector(seed=0, **TINY)


def test_caffe_anchors_match_py_faster_rcnn_table():
    # The table printed in py-faster-rcnn's generate_anchors.py for scales (8, 16, 32).
    want = [
        [-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
        [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
        [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359],
    ]  # fmt: skip
    assert caffe_anchors(16, (0.5, 1, 2), (8, 16, 32)).tolist() == want
    a = caffe_anchors()  # the bottom-up scales (4, 8, 16, 32): 12 anchors, 64..512 px for ratio 1
    assert a.shape == (12, 4)
    sides = (a[:, 2] - a[:, 0] + 1)[4:8]
    assert sides.tolist() == [64, 128, 256, 512]


@pytest.mark.parametrize(("w", "h"), [(640, 480), (480, 640), (1000, 200), (300, 300), (2000, 1200)])
def test_caffe_scale_rule(w, h):
    pre = CaffePreprocessor()
    s = 600 / min(w, h)
    if round(s * max(w, h)) > 1000:
        s = 1000 / max(w, h)
    assert pre.scale_for(w, h) == pytest.approx(s)
    assert pre.target_size(w, h) == (round(s * h), round(s * w))


def test_caffe_preprocessing_is_bgr_minus_means(rng):
    rgb = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    pre = CaffePreprocessor(min_size=6, max_size=100)  # scale 1: no resize
    out = pre(rgb)
    assert out.scale == 1.0 and out.tensor.shape == (3, 6, 8)
    means = np.array([102.9801, 115.9465, 122.7717], dtype=np.float32)
    want = rgb[:, :, ::-1].astype(np.float32) - means  # BGR, mean-subtracted, no std
    np.testing.assert_array_equal(out.tensor.permute(1, 2, 0).numpy(), want)


def test_architecture_follows_the_caffe_network():
    model = BottomUpRCNN(BottomUpCfg(blocks=(2, 2, 2, 3)))
    for block in model.head:  # res5: stride 1, dilation 2 in every 3x3 conv
        assert block.conv2.stride == (1, 1) and block.conv2.dilation == (2, 2) and block.conv2.padding == (2, 2)
    assert model.head[0].downsample[0].stride == (1, 1)
    for layer in (model.trunk.layer2, model.trunk.layer3):  # stride in the first 1x1
        assert layer[0].conv1.stride == (2, 2) and layer[0].conv2.stride == (1, 1)
    assert model.rpn.conv.out_channels == 512 and model.rpn.cls_logits.out_channels == 12
    assert model.cls_score.out_features == 1601 and model.bbox_pred.out_features == 6404
    assert model.attr_fc1.in_features == 2048 + 256 and model.attr_fc2.out_features == 401
    with torch.inference_mode():
        feats = model.trunk(torch.zeros(1, 3, 160, 224))
    assert feats.shape == (1, 1024, 10, 14)  # stride 16 (Caffe ceil-mode pooling)


def test_output_contract(tiny_detector, rng):
    rgb = rng.integers(0, 256, size=(90, 130, 3), dtype=np.uint8)
    timer = StageTimer()
    (det,) = tiny_detector.detect([tiny_detector.preprocessor(rgb)], timer)
    n = det.num_regions
    assert TINY["min_boxes"] <= n <= TINY["max_boxes"]
    assert det.features.shape == (n, 2048) and det.features.dtype == np.float32
    assert np.isfinite(det.features).all() and det.features.std() > 0
    b = det.boxes
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= 130).all() and (b[:, 3] <= 90).all()
    assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
    assert ((det.class_ids >= 1) & (det.class_ids < TINY["num_classes"])).all()
    assert ((det.attr_ids >= 1) & (det.attr_ids < TINY["num_attributes"])).all()
    assert set(timer.seconds) == {"trunk", "rpn", "roi_head", "nms"}


def test_each_feature_is_pooled_from_its_returned_box(tiny_detector, rng):
    rgb = rng.integers(0, 256, size=(100, 120, 3), dtype=np.uint8)
    prepared = tiny_detector.preprocessor(rgb)
    (det,) = tiny_detector.detect([prepared])
    model = tiny_detector.model
    with torch.inference_mode():
        feats = model.trunk(prepared.tensor[None])
        rois = torch.from_numpy(det.boxes) * prepared.scale  # back to network pixels
        repooled = model.box_features(feats, [rois]).numpy()
    np.testing.assert_allclose(repooled, det.features, rtol=1e-4, atol=1e-4)


def test_bitwise_deterministic_on_cpu(rng):
    rgb = rng.integers(0, 256, size=(80, 110, 3), dtype=np.uint8)
    a = create_butd_detector(seed=3, **TINY)
    b = create_butd_detector(seed=3, **TINY)
    da, db = a.detect([a.preprocessor(rgb)])[0], b.detect([b.preprocessor(rgb)])[0]
    assert np.array_equal(da.boxes, db.boxes) and np.array_equal(da.features, db.features)
    assert a.weights_hash == "random-init-seed-3"
    other = create_butd_detector(seed=4, **TINY).detect([a.preprocessor(rgb)])[0]
    assert not np.array_equal(other.features[:1], da.features[:1])


def test_batched_equals_one_by_one(tiny_detector, rng):
    imgs = [rng.integers(0, 256, size=(80, 120, 3), dtype=np.uint8) for _ in range(3)]
    imgs.append(rng.integers(0, 256, size=(120, 80, 3), dtype=np.uint8))  # another shape: its own forward
    prepared = [tiny_detector.preprocessor(x) for x in imgs]
    batched = tiny_detector.detect(prepared)
    for p, d in zip(prepared, batched, strict=True):
        (single,) = tiny_detector.detect([p])
        np.testing.assert_array_equal(single.boxes, d.boxes)
        np.testing.assert_allclose(single.features, d.features, rtol=0, atol=1e-4)


def test_fixed_36_and_registry_options():
    det = get_detector("butd-r101-c4", fixed_36=True, **{k: v for k, v in TINY.items() if "boxes" not in k})
    assert det.cfg.min_boxes == det.cfg.max_boxes == 36
    assert det.config["min_boxes"] == 36 and det.config["box_mode"] == "raw-proposals"
    with pytest.raises(ValueError, match="unknown butd-r101-c4 option"):
        get_detector("butd-r101-c4", not_an_option=1)


def test_native_weights_round_trip(tmp_path, rng):
    src = create_butd_detector(seed=5, **TINY)
    path = tmp_path / "butd.pth"
    torch.save(src.model.state_dict(), path)
    loaded = create_butd_detector(weights=path, seed=99, **TINY)
    assert loaded.weights_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    rgb = rng.integers(0, 256, size=(70, 100, 3), dtype=np.uint8)
    a, b = src.detect([src.preprocessor(rgb)])[0], loaded.detect([loaded.preprocessor(rgb)])[0]
    assert np.array_equal(a.features, b.features) and np.array_equal(a.boxes, b.boxes)


def test_prepared_image_shape_key_groups_equal_sizes(tiny_detector, rng):
    p1 = tiny_detector.preprocessor(rng.integers(0, 256, size=(80, 120, 3), dtype=np.uint8))
    p2 = tiny_detector.preprocessor(rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8))
    assert isinstance(p1, PreparedImage) and p1.shape_key == p2.shape_key  # same aspect ratio -> same network size


@pytest.mark.slow
def test_full_size_reference_network(rng):
    """The real configuration: ResNet-101, 600 x 1000 input, 300 proposals, 14 x 14 RoI pooling."""
    det = create_butd_detector(seed=0)
    rgb = rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    prepared = det.preprocessor(rgb)
    assert tuple(prepared.tensor.shape[1:]) == (600, 800)
    (out,) = det.detect([prepared])
    assert 10 <= out.num_regions <= 100 and out.features.shape[1] == 2048


@pytest.mark.gpu
def test_cuda_matches_cpu(rng):
    """fp32 on CUDA agrees with the CPU; the default bf16 autocast + channels_last path runs and stays finite."""
    rgb = rng.integers(0, 256, size=(90, 130, 3), dtype=np.uint8)
    cpu = create_butd_detector(seed=0, **TINY)
    prepared = cpu.preprocessor(rgb)
    (want,) = cpu.detect([prepared])
    exact = create_butd_detector(seed=0, device="cuda", amp=None, **TINY)
    (got,) = exact.detect([prepared])
    np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-2)
    np.testing.assert_allclose(got.features, want.features, rtol=1e-3, atol=1e-3)
    fast = create_butd_detector(seed=0, device="cuda", **TINY)
    assert fast.config["amp"] == "bfloat16"
    (half,) = fast.detect([prepared, prepared])[:1]
    assert np.isfinite(half.features).all() and half.features.shape[1] == 2048

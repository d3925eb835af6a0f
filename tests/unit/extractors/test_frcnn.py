"""torchvision-frcnn-r50-fpn: features re-pooled from the final regressed boxes; boxes back in original pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from regionrank.extractors import get_detector


@pytest.fixture(scope="module")
def frcnn():
    return get_detector("torchvision-frcnn-r50-fpn", seed=0, min_size=96, max_size=160, min_boxes=3, max_boxes=6)


def test_contract_and_repooling(frcnn, rng):
    rgb = rng.integers(0, 256, size=(90, 150, 3), dtype=np.uint8)
    prepared = frcnn.preprocessor(rgb)
    h, w = prepared.tensor.shape[1:]
    assert (h, w) == (96, 160)
    (det,) = frcnn.detect([prepared])
    assert frcnn.feature_dim == 1024 and det.features.shape == (det.num_regions, 1024)
    assert 3 <= det.num_regions <= 6
    assert ((det.class_ids >= 1) & (det.class_ids <= 90)).all()
    assert (det.boxes[:, [0, 2]] <= 150 + 1e-3).all() and (det.boxes[:, [1, 3]] <= 90 + 1e-3).all()
    # Independent wiring: pool the returned boxes (mapped to network pixels) through the model's own head.
    model = frcnn.model
    with torch.inference_mode():
        x = torch.nn.functional.pad(prepared.tensor[None], (0, (32 - w % 32) % 32, 0, (32 - h % 32) % 32))
        feats = model.backbone(x)
        boxes = torch.from_numpy(det.boxes) * torch.tensor([w / 150, h / 90] * 2)
        want = model.roi_heads.box_head(model.roi_heads.box_roi_pool(feats, [boxes], [(h, w)]))
    np.testing.assert_allclose(det.features, want.numpy(), rtol=1e-4, atol=1e-4)


def test_options_are_checked():
    with pytest.raises(ValueError, match="unknown torchvision-frcnn-r50-fpn option"):
        get_detector("torchvision-frcnn-r50-fpn", box_score=0.1)
    with pytest.raises(ValueError, match="unknown torchvision weights 'NOPE'"):
        get_detector("torchvision-frcnn-r50-fpn", weights="torchvision:NOPE")


def test_preprocessing_equals_torchvision_transform(frcnn, rng):
    rgb = rng.integers(0, 256, size=(90, 150, 3), dtype=np.uint8)
    prepared = frcnn.preprocessor(rgb)
    reference = GeneralizedRCNNTransform(96, 160, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    reference.eval()
    with torch.inference_mode():
        images, _ = reference([torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0])
    h, w = images.image_sizes[0]
    assert (h, w) == tuple(prepared.tensor.shape[1:])
    torch.testing.assert_close(prepared.tensor, images.tensors[0, :, :h, :w], rtol=1e-5, atol=1e-5)

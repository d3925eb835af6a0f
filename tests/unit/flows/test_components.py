"""components: random-init notices, the label map of a detector, one detector per configuration and process."""

from __future__ import annotations

import pytest

from regionrank.flows import components
from regionrank.flows.config import EncodeConfig, ExtractConfig


def test_random_init_notices_name_each_unweighted_model() -> None:
    notes = components.is_random_init(ExtractConfig(detector="butd-r101-c4"), EncodeConfig(encoder="teran"))
    assert len(notes) == 2
    assert "'butd-r101-c4' is RANDOMLY INITIALISED" in notes[0] and "--detector-weights" in notes[0]
    assert "TERAN encoder 'teran-coco'" in notes[1] and "--checkpoint" in notes[1]
    assert components.is_random_init(ExtractConfig(detector="ssd-mobilenet-coco"), EncodeConfig(encoder="grounded")) == []


def test_label_names_for_a_coco_detector_and_a_clear_error_otherwise() -> None:
    names = components.label_names_for("ssd-mobilenet-coco")
    assert "cat" in names.values()
    with pytest.raises(ValueError, match="butd-r101-c4"):
        components.label_names_for("butd-r101-c4")


def test_a_detector_is_loaded_once_per_configuration() -> None:
    tiny = {"blocks": [1, 1, 1, 1], "min_size": 64, "max_size": 96}
    cfg = ExtractConfig(detector="butd-r101-c4", options=tiny, device="cpu")
    det = components.load_detector(cfg)
    assert components.load_detector(cfg.model_copy()) is det
    assert det.weights_hash == "random-init-seed-0"  # no weights: seeded from the config
    assert components.load_detector(cfg.model_copy(update={"seed": 1})) is not det

"""The model registry: every family and shipped config resolves."""

from __future__ import annotations

import pytest

from regionrank.encoders import registry
from regionrank.encoders.scan_model import MeanPoolBaseline, ScanModel
from regionrank.encoders.teran import TeranModel


def test_registry_maps_every_family_and_config() -> None:
    assert registry.MODEL_FAMILIES == {"teran": TeranModel, "scan": ScanModel, "scan-meanpool": MeanPoolBaseline}
    for name in registry.list_models():
        assert registry.family_of_config(registry.get_model_cfg(name)).kind == registry.get_model_cfg(name).get("kind", "teran")
    spec = registry.load_scan_spec("scan-coco-t2i-lse")
    assert spec.family is ScanModel and spec.name == "scan-coco-t2i-lse" and "vocab_size" not in spec.arch
    with pytest.raises(ValueError, match="known kinds"):
        registry.model_family("clip")
    with pytest.raises(TypeError, match="model_name_or_cfg"):
        registry.family_of_config(3)


def test_every_model_class_declares_the_protocol() -> None:
    from regionrank.encoders.grounded import GroundedEncoder
    from regionrank.encoders.protocol import CheckpointableModel, RetrievalModel

    for cls in (TeranModel, ScanModel, MeanPoolBaseline, GroundedEncoder):
        for member in ("encoder_name", "embed_dim", "fingerprint", "embed_image_records", "embed_caption_texts",
                       "score_encoded"):
            assert hasattr(cls, member) or member == "embed_dim", (cls, member)
    for cls in registry.MODEL_FAMILIES.values():
        for member in ("kind", "checkpoint_config", "save_checkpoint_files", "from_checkpoint", "feature_dim"):
            assert hasattr(cls, member), (cls, member)
    assert RetrievalModel is not CheckpointableModel

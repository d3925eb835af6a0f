"""Detector registry, config hashing, labels, and the detectron2 backend's install hint."""

from __future__ import annotations

import importlib.util

import pytest

from regionrank.extractors import config_hash, get_detector, list_detectors, register_detector
from regionrank.extractors.labels import coco_label_names, load_vg_attributes, load_vg_objects


def test_registry_lists_every_backend():
    assert list_detectors() == ["butd-r101-c4", "detectron2", "ssd-mobilenet-coco", "torchvision-frcnn-r50-fpn"]


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        get_detector("yolo")
    assert "unknown detector 'yolo'" in str(info.value)
    for name in list_detectors():
        assert name in str(info.value)


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered under the name 'butd-r101-c4'"):
        register_detector("butd-r101-c4", lambda **kw: None)


def test_config_hash_is_canonical():
    a = config_hash({"x": 1, "y": [1, 2], "z": {"b": 0.3, "a": None}})
    b = config_hash({"z": {"a": None, "b": 0.3}, "y": [1, 2], "x": 1})
    assert a == b and len(a) == 64
    assert config_hash({"x": 1, "conf_thresh": 0.2}) != config_hash({"x": 1, "conf_thresh": 0.4})


@pytest.mark.skipif(importlib.util.find_spec("detectron2") is not None, reason="detectron2 is installed here")
def test_detectron2_backend_explains_how_to_install():
    with pytest.raises(RuntimeError, match="detectron2 is not installed .*not on PyPI"):
        get_detector("detectron2", weights="model.pth", config_file="cfg.yaml")


def test_detectron2_backend_needs_config_and_weights():
    pytest.importorskip("detectron2")
    with pytest.raises(ValueError, match="config_file"):
        get_detector("detectron2")


def test_coco_labels():
    names = coco_label_names()
    assert names[0] == "scene" and names[1] == "person" and names[90] == "toothbrush"
    assert len(names) == 81 and 12 not in names and 83 not in names  # the TF map's gaps
    assert 0 not in coco_label_names(include_scene=False)


def test_visual_genome_vocab_files(tmp_path):
    objects = tmp_path / "objects_vocab.txt"
    objects.write_text("\n".join(["man,person", "shirt", "tree"]) + "\n")
    assert load_vg_objects(objects, expected=3) == {1: "man", 2: "shirt", 3: "tree"}
    with pytest.raises(ValueError, match="has 3 entries; expected 1600"):
        load_vg_objects(objects)
    with pytest.raises(FileNotFoundError, match="attributes_vocab.txt"):
        load_vg_attributes(None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_vg_attributes(tmp_path / "missing.txt")

"""Key mapping of the converted bottom-up checkpoints, on synthetic state dicts with those files' names and shapes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from regionrank.extractors.butd import BottomUpCfg, BottomUpRCNN, caffe_anchors, create_butd_detector, load_bottom_up_state
from regionrank.extractors.checkpoint import detect_checkpoint_format, map_checkpoint, read_checkpoint

BLOCKS = (1, 2, 1, 2)
C, A = 11, 7  # classes incl. background, attributes incl. "no attribute"
CFG = BottomUpCfg(blocks=BLOCKS, num_classes=C, num_attributes=A)


def _bn(prefix: str, ch: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": torch.rand(ch, generator=g) + 0.5,
        f"{prefix}.bias": torch.randn(ch, generator=g),
        f"{prefix}.running_mean": torch.randn(ch, generator=g),
        f"{prefix}.running_var": torch.rand(ch, generator=g) + 0.5,
    }


def _stage(prefix: str, n: int, cin: int, mid: int, cout: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for i in range(n):
        c_in = cin if i == 0 else cout
        for j, shape in ((1, (mid, c_in, 1, 1)), (2, (mid, mid, 3, 3)), (3, (cout, mid, 1, 1))):
            sd[f"{prefix}.{i}.conv{j}.weight"] = torch.randn(shape, generator=g) * 0.01
            sd.update(_bn(f"{prefix}.{i}.conv{j}.norm", shape[0], g))
        if i == 0:
            sd[f"{prefix}.{i}.shortcut.weight"] = torch.randn(cout, c_in, 1, 1, generator=g) * 0.01
            sd.update(_bn(f"{prefix}.{i}.shortcut.norm", cout, g))
    return sd


def detectron2_style_state(layout: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the key names and shapes of MILVLG's .pth or airsplay's .pkl (written from their code)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {"backbone.stem.conv1.weight": torch.randn(64, 3, 7, 7, generator=g) * 0.01}
    sd.update(_bn("backbone.stem.conv1.norm", 64, g))
    sd.update(_stage("backbone.res2", BLOCKS[0], 64, 64, 256, g))
    sd.update(_stage("backbone.res3", BLOCKS[1], 256, 128, 512, g))
    sd.update(_stage("backbone.res4", BLOCKS[2], 512, 256, 1024, g))
    sd.update(_stage("roi_heads.res5", BLOCKS[3], 1024, 512, 2048, g))
    rpn = "proposal_generator.rpn_head"
    sd[f"{rpn}.conv.weight"] = torch.randn(512, 1024, 3, 3, generator=g) * 0.01
    sd[f"{rpn}.conv.bias"] = torch.randn(512, generator=g)
    sd[f"{rpn}.objectness_logits.weight"] = torch.randn(24, 512, 1, 1, generator=g)  # Caffe: 2 x 12, softmax
    sd[f"{rpn}.objectness_logits.bias"] = torch.randn(24, generator=g)
    sd[f"{rpn}.anchor_deltas.weight"] = torch.randn(48, 512, 1, 1, generator=g) * 0.01
    sd[f"{rpn}.anchor_deltas.bias"] = torch.randn(48, generator=g)
    box = "roi_heads.box_predictor"
    sd[f"{box}.cls_score.weight"] = torch.randn(C, 2048, generator=g)
    sd[f"{box}.cls_score.bias"] = torch.randn(C, generator=g)
    reg_rows = 4 * C if layout == "milvlg" else 4 * (C - 1)
    sd[f"{box}.bbox_pred.weight"] = torch.randn(reg_rows, 2048, generator=g)
    sd[f"{box}.bbox_pred.bias"] = torch.randn(reg_rows, generator=g)
    if layout == "milvlg":
        sd[f"{box}.cls_embed.weight"] = torch.randn(C, 256, generator=g)
        sd[f"{box}.attr_linear1.weight"] = torch.randn(512, 2048 + 256, generator=g)
        sd[f"{box}.attr_linear1.bias"] = torch.randn(512, generator=g)
        sd[f"{box}.attr_linear2.weight"] = torch.randn(A, 512, generator=g)
        sd[f"{box}.attr_linear2.bias"] = torch.randn(A, generator=g)
    else:
        att = "roi_heads.attribute_predictor"
        sd[f"{att}.obj_embed.weight"] = torch.randn(C, 256, generator=g)
        sd[f"{att}.fc.0.weight"] = torch.randn(512, 2048 + 256, generator=g)
        sd[f"{att}.fc.0.bias"] = torch.randn(512, generator=g)
        sd[f"{att}.attr_score.weight"] = torch.randn(A, 512, generator=g)
        sd[f"{att}.attr_score.bias"] = torch.randn(A, generator=g)
        sd["pixel_mean"] = torch.tensor([102.98, 115.95, 122.77]).view(3, 1, 1)
    return sd


@pytest.fixture(scope="module")
def target():
    return BottomUpRCNN(CFG).state_dict()


@pytest.mark.parametrize("layout", ["milvlg", "airsplay"])
def test_mapping_fills_every_parameter(layout, target):
    src = detectron2_style_state(layout)
    assert detect_checkpoint_format(src) == layout
    out = map_checkpoint(src, target)
    assert set(out) == set(target)
    assert torch.equal(out["trunk.conv1.weight"], src["backbone.stem.conv1.weight"])
    assert torch.equal(out["trunk.layer2.1.bn2.running_var"], src["backbone.res3.1.conv2.norm.running_var"])
    assert torch.equal(out["trunk.layer3.0.downsample.0.weight"], src["backbone.res4.0.shortcut.weight"])
    assert torch.equal(out["head.1.conv3.weight"], src["roi_heads.res5.1.conv3.weight"])
    assert torch.equal(out["head.0.downsample.1.bias"], src["roi_heads.res5.0.shortcut.norm.bias"])


@pytest.mark.parametrize("layout", ["milvlg", "airsplay"])
def test_rpn_softmax_pair_becomes_an_equivalent_sigmoid_logit(layout, target, torch_gen):
    src = detectron2_style_state(layout)
    out = map_checkpoint(src, target)
    h = torch.randn(5, 512, generator=torch_gen)
    w2, b2 = src["proposal_generator.rpn_head.objectness_logits.weight"][:, :, 0, 0], src["proposal_generator.rpn_head.objectness_logits.bias"]
    pair = (h @ w2.T + b2).view(5, 2, 12).softmax(dim=1)[:, 1]  # Caffe: (bg block, fg block), softmax over the pair
    w1, b1 = out["rpn.cls_logits.weight"][:, :, 0, 0], out["rpn.cls_logits.bias"]
    torch.testing.assert_close(torch.sigmoid(h @ w1.T + b1), pair, rtol=1e-5, atol=1e-6)


def test_airsplay_background_moves_to_row_zero(target):
    src = detectron2_style_state("airsplay")
    out = map_checkpoint(src, target)
    w = src["roi_heads.box_predictor.cls_score.weight"]
    assert torch.equal(out["cls_score.weight"][0], w[-1]) and torch.equal(out["cls_score.weight"][1:], w[:-1])
    emb = src["roi_heads.attribute_predictor.obj_embed.weight"]
    assert torch.equal(out["attr_embed.weight"][0], emb[-1])
    reg = out["bbox_pred.weight"]
    assert torch.equal(reg[:4], torch.zeros(4, 2048)) and torch.equal(reg[4:], src["roi_heads.box_predictor.bbox_pred.weight"])


def test_milvlg_keeps_caffe_class_order(target):
    src = detectron2_style_state("milvlg")
    out = map_checkpoint(src, target)
    assert torch.equal(out["cls_score.weight"], src["roi_heads.box_predictor.cls_score.weight"])
    assert torch.equal(out["attr_fc2.bias"], src["roi_heads.box_predictor.attr_linear2.bias"])


def test_unmapped_misshaped_and_missing_keys_are_listed(target):
    src = detectron2_style_state("milvlg")
    src["backbone.res4.0.conv9.weight"] = torch.zeros(1)
    src["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(C + 1, 2048)
    del src["backbone.res2.0.conv1.norm.bias"]
    with pytest.raises(ValueError) as info:
        map_checkpoint(src, target)
    msg = str(info.value)
    assert "backbone.res4.0.conv9.weight" in msg
    assert "roi_heads.box_predictor.cls_score.weight: (12, 2048) -> cls_score.weight expects (11, 2048)" in msg
    assert "trunk.layer1.0.bn1.bias" in msg


def test_unknown_layout_raises():
    with pytest.raises(ValueError, match="unrecognised checkpoint layout"):
        detect_checkpoint_format({"foo.weight": torch.zeros(1)})


def test_milvlg_pth_loads_into_the_detector(tmp_path, rng):
    path = tmp_path / "bua-caffe-frcn-r101_with_attributes.pth"
    torch.save({"model": detectron2_style_state("milvlg")}, path)
    det = create_butd_detector(weights=path, blocks=BLOCKS, num_classes=C, num_attributes=A,
                               rpn_post_nms_top_n=10, roi_pool_size=4, min_size=64, max_size=96, min_boxes=2)  # fmt: skip
    assert torch.equal(det.model.head[0].conv2.weight, detectron2_style_state("milvlg")["roi_heads.res5.0.conv2.weight"])
    (out,) = det.detect([det.preprocessor(rng.integers(0, 256, size=(64, 80, 3), dtype=np.uint8))])
    assert out.features.shape[1] == 2048 and out.num_regions >= 2


ANCHORS = "proposal_generator.anchor_generator.cell_anchors.0"


def test_milvlg_anchors_equal_to_caffes_load():
    src = detectron2_style_state("milvlg")
    src[ANCHORS] = caffe_anchors()
    assert load_bottom_up_state(BottomUpRCNN(CFG), src) == "milvlg"


def test_milvlg_anchors_of_another_geometry_are_refused_naming_the_key():
    # what MILVLG's config alone gives (detectron2 anchors of sizes 4-32 px): the RPN would read other anchors
    src = detectron2_style_state("milvlg")
    src[ANCHORS] = torch.tensor([[-s * r, -s / r, s * r, s / r] for s in (2.0, 4.0, 8.0, 16.0) for r in (1.41, 1.0, 0.71)])
    with pytest.raises(ValueError, match=r"proposal_generator\.anchor_generator\.cell_anchors\.0: the checkpoint's anchors"):
        load_bottom_up_state(BottomUpRCNN(CFG), src)
    src[ANCHORS] = caffe_anchors()  # right anchors, wrong convention for them
    with pytest.raises(ValueError, match="box_convention='detectron2'"):
        load_bottom_up_state(BottomUpRCNN(BottomUpCfg(blocks=BLOCKS, num_classes=C, num_attributes=A, box_convention="detectron2")), src)


def test_a_milvlg_file_without_anchors_loads_with_a_warning(caplog):
    with caplog.at_level("WARNING", logger="regionrank.extractors.butd"):
        assert load_bottom_up_state(BottomUpRCNN(CFG), detectron2_style_state("milvlg")) == "milvlg"
    assert ANCHORS in caplog.text and "4-32 px" in caplog.text


def test_airsplay_pkl_is_read_with_a_numpy_only_unpickler(tmp_path, target):
    src = {k: v.numpy() for k, v in detectron2_style_state("airsplay").items()}
    path = tmp_path / "faster_rcnn_from_caffe_attr.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"model": src, "__author__": "synthetic"}, fh)
    state = read_checkpoint(path)
    assert np.array_equal(state["backbone.stem.conv1.weight"].numpy(), src["backbone.stem.conv1.weight"])
    assert set(map_checkpoint(state, target)) == set(target)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"model": {"x": _Evil()}}, fh)
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle builtins.print"):
        read_checkpoint(path)


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")

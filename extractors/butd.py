"""The bottom-up-attention detector (``butd-r101-c4``), built from torchvision parts.

Reproduces the Caffe test network of peteanderson80/bottom-up-attention
(ALGORITHMS.md §1) following the reference *code*:

* Caffe pre-processing: BGR, pixel means subtracted, no std, one scale with the
  shorter side 600 and the longer side at most 1000 (§1.2).
* ResNet-101 trunk to res4 (stride 16, 1024 channels), frozen BatchNorm, the
  stride in the first 1x1 conv of each stage (MSRA/Caffe ResNet, detectron2's
  ``STRIDE_IN_1X1``), Caffe's stem max-pool (3x3, stride 2, no padding, ceil mode).
* RPN with the py-faster-rcnn anchors (base 16, scales 4/8/16/32, ratios
  0.5/1/2, centres at 7.5 px), py-faster-rcnn box decoding and clipping with
  the ``+1`` pixel convention, proposals smaller than ``rpn_min_size`` original
  pixels dropped, top 6000 -> NMS 0.7 -> top 300. The ``rpn_min_size`` = 16
  filter is py-faster-rcnn's ``TEST.RPN_MIN_SIZE``; that this fork keeps it is
  [unverified] (ALGORITHMS.md §1.5).
* Max RoI pooling 14x14 at 1/16 on res4, then res5 with stride 1 and dilation 2
  in *every* 3x3 conv (torchvision leaves the first block at dilation 1; fixed
  here), spatial mean -> ``pool5`` (2048-d): the exported feature.
* 1601-way classifier, 6404-d box regression (kept for weight parity; the
  exported boxes do not use it), attribute head on the argmax class over all
  1601 columns (background included, as in the original).
* Region selection of ``generate_tsv.py`` (§1.3, :mod:`extractors.selection`).

Batching: the reference runs one image per forward pass; padding a batch to a
common size changes features near the borders (airsplay #3). Here only images
with the same network input size share a pass, with no padding at all, so a
batched image gets the features it gets alone (to ~1e-5, kernel rounding).

Box / feature convention: the returned boxes are the raw proposals (quirk #1 of
ALGORITHMS.md), so the final box *is* the RoI each feature was pooled from; no
re-pooling is needed and every feature belongs to its box. All NMS calls use
Caffe's inclusive ``+1`` area convention (the selection's in original-image pixels,
as ``generate_tsv.py``; :mod:`extractors.butd_boxes`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.ops import RoIPool
from torchvision.ops.misc import FrozenBatchNorm2d

from regionrank.extractors.butd_boxes import (
    BOX_CONVENTIONS,
    BoxConvention,
    caffe_anchors,
    cell_anchors,
    given_rois,
    rpn_channel_permutation,
    select_proposals,
    selection_boxes,
)
from regionrank.extractors.butd_preprocess import CAFFE_PIXEL_MEANS_BGR, CaffePreprocessor, resize_like_cv2
from regionrank.extractors.checkpoint import (
    CheckpointFormat,
    detect_checkpoint_format,
    map_checkpoint,
    read_checkpoint,
)
from regionrank.extractors.detector import (
    Detections,
    PreparedImage,
    StageTimer,
    register_detector,
    timed,
    weights_sha256,
)
from regionrank.extractors.selection import select_bottom_up

__all__ = [
    "BottomUpCfg",
    "BottomUpDetector",
    "BottomUpRCNN",
    "CaffePreprocessor",
    "caffe_anchors",
    "resize_like_cv2",
    "create_butd_detector",
    "load_bottom_up_state",
]

logger = logging.getLogger(__name__)

class CaffeRPNHead(nn.Module):
    """3x3 conv (``mid_channels``) + ReLU, then 1x1 objectness (one sigmoid logit per anchor) and 1x1 deltas."""

    def __init__(self, in_channels: int = 1024, mid_channels: int = 512, num_anchors: int = 12) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, mid_channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(mid_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(mid_channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = F.relu(self.conv(x))
        return self.cls_logits(t), self.bbox_pred(t)


class CaffeResNetTrunk(nn.Module):
    """ResNet conv1..res4 with Caffe's stem pooling and stride in the 1x1 convs."""

    def __init__(self, resnet: ResNet) -> None:
        super().__init__()
        self.conv1, self.bn1 = resnet.conv1, resnet.bn1
        self.layer1, self.layer2, self.layer3 = resnet.layer1, resnet.layer2, resnet.layer3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=0, ceil_mode=True)
        return self.layer3(self.layer2(self.layer1(x)))


def _stride_in_1x1(layer: nn.Sequential) -> None:
    first = layer[0]
    stride = first.conv2.stride
    if stride != (1, 1):
        first.conv1.stride, first.conv2.stride = stride, (1, 1)


@dataclass(frozen=True)
class BottomUpCfg:
    """Architecture, pre-processing and selection options of ``butd-r101-c4`` (all hashed into the shard's config_hash).

    Defaults are the reference values (ALGORITHMS.md §1); ``blocks``,
    ``rpn_post_nms_top_n``, ``roi_pool_size`` and the sizes exist so that tests
    can run a small network on small images.
    """

    blocks: tuple[int, int, int, int] = (3, 4, 23, 3)
    num_classes: int = 1601
    num_attributes: int = 401
    attr_embed_dim: int = 256
    attr_hidden: int = 512
    rpn_channels: int = 512
    anchor_scales: tuple[float, ...] = (4.0, 8.0, 16.0, 32.0)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n: int = 6000
    rpn_post_nms_top_n: int = 300
    rpn_nms_thresh: float = 0.7
    rpn_min_size: float = 16.0
    roi_pool_size: int = 14
    min_size: int = 600
    max_size: int = 1000
    nms_thresh: float = 0.3
    conf_thresh: float = 0.2
    min_boxes: int = 10
    max_boxes: int = 100
    amp: str | None = "auto"
    box_convention: BoxConvention = "caffe"

    def __post_init__(self) -> None:
        if self.box_convention not in BOX_CONVENTIONS:
            raise ValueError(f"box_convention must be one of {BOX_CONVENTIONS}; got {self.box_convention!r}")
        if self.amp not in (None, "auto", "bf16", "fp16"):
            raise ValueError(f"amp must be None, 'auto', 'bf16' or 'fp16'; got {self.amp!r}")
        if not 0 < self.min_boxes <= self.max_boxes:
            raise ValueError(f"need 0 < min_boxes <= max_boxes; got {self.min_boxes}, {self.max_boxes}")
        if len(self.blocks) != 4 or min(self.blocks) < 1:
            raise ValueError(f"blocks must be 4 positive block counts (res2..res5); got {self.blocks}")


class BottomUpRCNN(nn.Module):
    """The bottom-up Faster R-CNN network; :meth:`forward` returns per-image proposal-level outputs."""

    def __init__(self, cfg: BottomUpCfg) -> None:
        super().__init__()
        self.cfg = cfg
        resnet = ResNet(Bottleneck, list(cfg.blocks), norm_layer=FrozenBatchNorm2d)
        for layer in (resnet.layer2, resnet.layer3):
            _stride_in_1x1(layer)
        self.trunk = CaffeResNetTrunk(resnet)
        # res5 head: stride 1, dilation 2 in every 3x3 conv (torchvision leaves block 0 at dilation 1).
        head = resnet.layer4
        head[0].conv1.stride = (1, 1)
        head[0].downsample[0].stride = (1, 1)
        for block in head:
            block.conv2.stride, block.conv2.dilation, block.conv2.padding = (1, 1), (2, 2), (2, 2)
        self.head = head
        anchors = cell_anchors(cfg.box_convention, cfg.anchor_scales, cfg.anchor_ratios)
        self.register_buffer("cell_anchors", anchors, persistent=False)
        num_anchors = len(cfg.anchor_ratios) * len(cfg.anchor_scales)
        self.rpn = CaffeRPNHead(1024, cfg.rpn_channels, num_anchors)
        self.roi_pool = RoIPool((cfg.roi_pool_size, cfg.roi_pool_size), spatial_scale=1.0 / 16)
        self.cls_score = nn.Linear(2048, cfg.num_classes)
        self.bbox_pred = nn.Linear(2048, 4 * cfg.num_classes)
        self.attr_embed = nn.Embedding(cfg.num_classes, cfg.attr_embed_dim)
        self.attr_fc1 = nn.Linear(2048 + cfg.attr_embed_dim, cfg.attr_hidden)
        self.attr_fc2 = nn.Linear(cfg.attr_hidden, cfg.num_attributes)
        for lin, std in ((self.cls_score, 0.01), (self.bbox_pred, 0.001), (self.attr_fc1, 0.01), (self.attr_fc2, 0.01)):
            nn.init.normal_(lin.weight, std=std)
            nn.init.zeros_(lin.bias)
        nn.init.normal_(self.attr_embed.weight, std=0.01)

    def zero_init_residual(self) -> None:
        """Zero the last BN scale of every residual branch (random-init mode; ENVIRONMENT.md §5.3)."""
        for m in self.modules():
            if isinstance(m, Bottleneck):
                m.bn3.weight.zero_()

    def proposals(self, feats: torch.Tensor, image_sizes: Sequence[tuple[int, int]], scales: Sequence[float]) -> list[torch.Tensor]:
        """RPN proposals per image: ``FloatTensor[<=post_nms_top_n, 4]`` in network pixels, objectness order."""
        cfg = self.cfg
        logits, deltas = self.rpn(feats)
        n, a, h, w = logits.shape
        stride = 16.0
        shift_x = torch.arange(w, device=feats.device, dtype=torch.float32) * stride
        shift_y = torch.arange(h, device=feats.device, dtype=torch.float32) * stride
        sy, sx = torch.meshgrid(shift_y, shift_x, indexing="ij")
        shifts = torch.stack([sx, sy, sx, sy], dim=-1).reshape(-1, 1, 4)  # [H*W, 1, 4]
        anchors = (shifts + self.cell_anchors.view(1, a, 4)).reshape(-1, 4)  # [H*W*A, 4], (h, w, a) order
        scores_all = logits.float().permute(0, 2, 3, 1).reshape(n, -1)  # [N, H*W*A]
        deltas_all = deltas.float().view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
        out = []
        for i in range(n):
            boxes, _ = select_proposals(
                cfg.box_convention, anchors, deltas_all[i], scores_all[i], image_hw=image_sizes[i],
                min_size=cfg.rpn_min_size * scales[i], pre_nms_top_n=cfg.rpn_pre_nms_top_n,
                nms_thresh=cfg.rpn_nms_thresh, post_nms_top_n=cfg.rpn_post_nms_top_n,
            )  # fmt: skip
            out.append(boxes)
        return out

    def box_features(self, feats: torch.Tensor, rois: list[torch.Tensor]) -> torch.Tensor:
        """``pool5``: ``FloatTensor[sum R_i, 2048]``, mean of res5 over the max-pooled RoI grid."""
        # RoIs stay float32 (bf16 would round coordinates by up to 4 px); under autocast
        # torchvision's roi_pool runs in float32 anyway.
        pooled = self.roi_pool(feats, rois)  # [R, 1024, P, P]
        return self.head(pooled).mean(dim=(2, 3))  # [R, 2048]

    def classify(self, pool5: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class and attribute softmax (float32): ``[R, num_classes]``, ``[R, num_attributes]``."""
        logits = self.cls_score(pool5).float()
        probs = logits.softmax(dim=-1)
        embed = self.attr_embed(logits.argmax(dim=-1))  # argmax over all columns, background included
        hidden = F.relu(self.attr_fc1(torch.cat([pool5, embed.to(pool5.dtype)], dim=1)))
        attr_probs = self.attr_fc2(hidden).float().softmax(dim=-1)
        return probs, attr_probs


class BottomUpDetector:
    """``butd-r101-c4``: :class:`BottomUpRCNN` plus Caffe pre-processing and bottom-up selection.

    Returned per image: boxes = raw proposals / scale (original pixels), features
    = their ``pool5`` rows, ``class_ids`` = argmax over the 1600 foreground classes
    (ids 1..1600; ``labels.load_vg_objects``), ``class_scores`` = that
    probability, ``attr_ids`` = argmax over attributes 1..400 and its probability.
    """

    name = "butd-r101-c4"
    feature_dim = 2048

    def __init__(self, model: BottomUpRCNN, *, weights_hash: str, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.cfg = model.cfg
        self.weights_hash = weights_hash
        self._pre = CaffePreprocessor(self.cfg.min_size, self.cfg.max_size)
        self.amp_dtype: torch.dtype | None = None
        if self.device.type == "cuda":
            amp = "bf16" if self.cfg.amp == "auto" else self.cfg.amp
            self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[amp]
            self.model.to(memory_format=torch.channels_last)
        self.config: dict[str, Any] = {
            "detector": self.name,
            **asdict(self.cfg),
            "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else None,
            "pixel_means_bgr": list(CAFFE_PIXEL_MEANS_BGR),
            "box_mode": "raw-proposals",
            "roi_op": "max-roipool",
        }

    @property
    def preprocessor(self) -> CaffePreprocessor:
        return self._pre

    @torch.inference_mode()
    def detect(self, images: Sequence[PreparedImage], timer: StageTimer | None = None) -> list[Detections]:
        """Run the network on ``images``; images of equal network size share one forward pass (no padding)."""
        results: list[Detections | None] = [None] * len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(im.shape_key, []).append(i)
        for idxs in groups.values():
            for i, det in zip(idxs, self._detect_same_shape([images[i] for i in idxs], timer), strict=True):
                results[i] = det
        return [r for r in results if r is not None]

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _detect_same_shape(self, images: Sequence[PreparedImage], timer: StageTimer | None) -> list[Detections]:
        cfg, model = self.cfg, self.model
        x = torch.stack([im.tensor for im in images]).to(self.device, non_blocking=True)  # [N, 3, H, W]
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        sizes = [tuple(im.tensor.shape[1:]) for im in images]
        scales = [im.scale for im in images]
        with self._autocast():
            with timed(timer, "trunk"):
                feats = model.trunk(x)  # [N, 1024, H/16, W/16]
            with timed(timer, "rpn"):
                rois = model.proposals(feats, sizes, scales)
            with timed(timer, "roi_head"):
                pool5 = model.box_features(feats, rois)
                probs, attr_probs = model.classify(pool5)
        out = []
        with timed(timer, "nms"):
            start = 0
            for im, r in zip(images, rois, strict=True):
                stop = start + r.shape[0]
                p, ap, f = probs[start:stop], attr_probs[start:stop], pool5[start:stop]
                start = stop
                sel = select_bottom_up(
                    selection_boxes(cfg.box_convention, r, im.scale), p, nms_iou=cfg.nms_thresh, conf_thresh=cfg.conf_thresh,
                    min_boxes=cfg.min_boxes, max_boxes=cfg.max_boxes,
                ).keep  # fmt: skip
                out.append(_detections(r[sel], im.scale, p[sel], ap[sel], f[sel]))
        return out

    @torch.inference_mode()
    def describe_boxes(self, image: PreparedImage, boxes: np.ndarray) -> Detections:
        """Features, classes and attributes of *given* boxes (MILVLG's ``bbox_feats`` mode, airsplay's given-box demo).

        Args:
            image: one prepared image (:attr:`preprocessor` output).
            boxes: ``float[n, 4]`` ``(x1, y1, x2, y2)`` in original-image pixels.

        Returns:
            :class:`Detections` with one row per given box, in the given order: the
            boxes as given, their ``pool5`` features (pooled from ``boxes * scale``; clipped
            to the network input under ``box_convention="detectron2"`` only, see
            :func:`extractors.butd_boxes.given_rois`) and
            the argmax class and attribute, as for detected boxes.

        Raises:
            ValueError: ``boxes`` is not ``(n, 4)`` with ``x1 <= x2``, ``y1 <= y2``.
        """
        given = np.asarray(boxes, dtype=np.float32)
        if given.size == 0:
            given = given.reshape(0, 4)
        if given.ndim != 2 or given.shape[1] != 4:
            raise ValueError(f"boxes must be (n, 4) (x1, y1, x2, y2); got shape {given.shape}")
        if (given[:, 2] < given[:, 0]).any() or (given[:, 3] < given[:, 1]).any():
            raise ValueError("boxes must have x1 <= x2 and y1 <= y2 (original-image pixels)")
        x = image.tensor[None].to(self.device)
        height, width = image.tensor.shape[1:]
        rois = given_rois(self.cfg.box_convention, torch.from_numpy(given).to(self.device), image.scale, height, width)
        with self._autocast():
            pool5 = self.model.box_features(self.model.trunk(x), [rois])
            probs, attr_probs = self.model.classify(pool5)
        det = _detections(rois, image.scale, probs, attr_probs, pool5)
        det.boxes = given
        return det


def _detections(rois: torch.Tensor, scale: float, probs: torch.Tensor, attr_probs: torch.Tensor, pool5: torch.Tensor) -> Detections:
    """Detections of RoIs in network pixels: foreground argmax class (ids 1..) and attribute (ids 1..)."""
    cls_scores, cls_ids = probs[:, 1:].max(dim=1)
    attr_scores, attr_ids = attr_probs[:, 1:].max(dim=1)
    return Detections(
        boxes=(rois / scale).float().cpu().numpy(),
        features=pool5.float().cpu().numpy(),
        class_ids=(cls_ids + 1).cpu().numpy(),
        class_scores=cls_scores.float().cpu().numpy(),
        attr_ids=(attr_ids + 1).cpu().numpy(),
        attr_scores=attr_scores.float().cpu().numpy(),
    )


def create_butd_detector(
    *,
    weights: str | Path | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    checkpoint_format: CheckpointFormat = "auto",
    fixed_36: bool = False,
    **cfg: Any,
) -> BottomUpDetector:
    """Build ``butd-r101-c4``.

    Args:
        weights: local checkpoint (native state dict, MILVLG ``bua-caffe-frcn-r101*.pth``
            or airsplay ``faster_rcnn_from_caffe*.pkl``); ``None`` = seeded random
            initialisation with zero-init residuals (tests only; logs a warning).
        device: torch device.
        seed: seed of the random initialisation (recorded as ``random-init-seed-<seed>``).
        checkpoint_format: ``"auto"``, ``"native"``, ``"milvlg"`` or ``"airsplay"``.
            Unless ``box_convention`` is given, an airsplay checkpoint runs under
            ``"detectron2"`` box conventions (the fork's own, so that it gives the
            fork's outputs) and every other under ``"caffe"`` (the original model);
            see :mod:`extractors.butd_boxes`.
        fixed_36: shorthand for ``min_boxes = max_boxes = 36`` (the SCAN / TERAN files).
        **cfg: fields of :class:`BottomUpCfg`.

    Raises:
        ValueError: unknown option, or a checkpoint that does not fit (lists the keys).
        FileNotFoundError: ``weights`` does not exist.
    """
    known = set(BottomUpCfg.__dataclass_fields__)
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown butd-r101-c4 option(s) {unknown}; known: {sorted(known | {'seed', 'checkpoint_format', 'fixed_36'})}")
    if fixed_36:
        cfg = {**cfg, "min_boxes": 36, "max_boxes": 36}
    for key in ("blocks", "anchor_scales", "anchor_ratios"):
        if key in cfg:
            cfg[key] = tuple(cfg[key])
    state, fmt = None, checkpoint_format
    if weights is not None:
        state = read_checkpoint(weights)
        fmt = detect_checkpoint_format(state) if checkpoint_format == "auto" else checkpoint_format
        cfg.setdefault("box_convention", "detectron2" if fmt == "airsplay" else "caffe")
    bcfg = BottomUpCfg(**cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BottomUpRCNN(bcfg)
    if state is None:
        logger.warning(
            "butd-r101-c4: no weights given, using random initialisation (seed %d); features are meaningless "
            "except for tests", seed,
        )  # fmt: skip
        model.zero_init_residual()
        weights_hash = f"random-init-seed-{seed}"
    else:
        load_bottom_up_state(model, state, fmt)
        weights_hash = weights_sha256(weights)
    return BottomUpDetector(model, weights_hash=weights_hash, device=device)


MILVLG_ANCHORS_KEY = "proposal_generator.anchor_generator.cell_anchors.0"


def _check_checkpoint_anchors(anchors: torch.Tensor | None, model: BottomUpRCNN) -> None:
    """MILVLG runs the anchors its ``.pth`` carries; they must be the ones the RPN channels are read with here.

    detectron2 (MILVLG's pinned commit) saves the cell anchors as a persistent buffer and loads
    them from the checkpoint, overriding the config (whose ``SIZES [[4, 8, 16, 32]]`` would give
    4-32 px anchors). A converted Caffe model carries Caffe's 64-512 px ratio-major anchors there.
    """
    if anchors is None:
        logger.warning(
            "butd-r101-c4: the MILVLG checkpoint carries no %s; MILVLG itself would then use its config's "
            "4-32 px anchors, regionrank uses the %r convention's anchors", MILVLG_ANCHORS_KEY, model.cfg.box_convention,
        )  # fmt: skip
        return
    want = model.cell_anchors
    if tuple(anchors.shape) != tuple(want.shape) or not torch.allclose(anchors.float().cpu(), want.cpu(), atol=1e-3):
        raise ValueError(
            f"{MILVLG_ANCHORS_KEY}: the checkpoint's anchors {anchors.tolist()} differ from the anchors of "
            f"box_convention={model.cfg.box_convention!r} ({want.tolist()}); its RPN channels follow its own anchors. "
            f"Use box_convention='caffe' for a converted Caffe checkpoint, or check anchor_scales / anchor_ratios"
        )


def load_bottom_up_state(model: BottomUpRCNN, state: dict[str, torch.Tensor], checkpoint_format: CheckpointFormat = "auto") -> str:
    """Load a source state dict (any layout of :mod:`extractors.checkpoint`) into ``model``; returns the layout.

    airsplay's RPN channels follow detectron2's size-major anchors; under the
    ``"caffe"`` box convention they are reordered to Caffe's ratio-major anchors.

    Raises:
        ValueError: unmapped, missing or mis-shaped keys (listed; the first offending key named first).
    """
    fmt = detect_checkpoint_format(state) if checkpoint_format == "auto" else checkpoint_format
    mapped = map_checkpoint(state, model.state_dict(), fmt)
    cfg = model.cfg
    if fmt == "milvlg":
        _check_checkpoint_anchors(state.get(MILVLG_ANCHORS_KEY), model)
    if fmt == "airsplay" and cfg.box_convention == "caffe":
        perm = rpn_channel_permutation(len(cfg.anchor_scales), len(cfg.anchor_ratios))
        for p in ("weight", "bias"):
            mapped[f"rpn.cls_logits.{p}"] = mapped[f"rpn.cls_logits.{p}"][perm]
            d = mapped[f"rpn.bbox_pred.{p}"]
            mapped[f"rpn.bbox_pred.{p}"] = d.view(len(perm), 4, *d.shape[1:])[perm].reshape(d.shape)
    model.load_state_dict(mapped, strict=True)
    return fmt


register_detector("butd-r101-c4", create_butd_detector)

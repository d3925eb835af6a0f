"""Loading weights into the bottom-up detector, with an explicit key-mapping table.

Three source layouts are accepted (``checkpoint_format``):

* ``"native"``: the state dict of :class:`extractors.butd.BottomUpRCNN` itself;
* ``"milvlg"``: MILVLG's converted Caffe checkpoints ``bua-caffe-frcn-r101*.pth``
  (detectron2 key names under ``"model"``; Caffe class order, background first;
  RPN objectness as ``2 x 12`` softmax logits, background block first, channels in
  Caffe's ratio-major anchor order; BN step counters for res4/res5, which use
  ``BatchNorm2d``; the cell anchors under
  ``proposal_generator.anchor_generator.cell_anchors.0``, checked by
  ``butd.load_bottom_up_state``). Read from the model code of
  MILVLG/bottom-up-attention.pytorch@4dbce86 (``bua/caffe``, detectron2@be792b9)
  and proven on a file saved from its model (``tests/fixtures/reference/butd_milvlg``);
* ``"airsplay"``: airsplay's ``faster_rcnn_from_caffe[_attr].pkl`` (a pickle of
  numpy arrays under ``"model"``; detectron2 conventions: background is the
  *last* class row, "no attribute" the last attribute row, box regression has no
  background rows, RPN objectness is one sigmoid logit per anchor in detectron2's
  size-major anchor order; the attribute head lives under
  ``roi_heads.box_predictor.{cls_embedding,fc_attr,attr_score}``). Read from the
  fork's code (``FastRCNNOutputLayers``, airsplay/py-bottom-up-attention@85ec9b7)
  and proven on a file saved in its layout (``tests/fixtures/reference/butd``).
  An older guess of this layout (``roi_heads.attribute_predictor.*``) is still
  accepted.

``"auto"`` picks the layout from the key names. Every source key must be mapped
or explicitly ignored, every target key filled, and every shape must match;
otherwise a ``ValueError`` lists the offending keys.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

__all__ = [
    "CheckpointFormat",
    "detect_checkpoint_format",
    "map_checkpoint",
    "read_checkpoint",
]

CheckpointFormat = Literal["auto", "native", "milvlg", "airsplay"]

Transform = Callable[[torch.Tensor, torch.Size], torch.Tensor]

_BN = r"(?P<p>weight|bias|running_mean|running_var)"
_WB = r"(?P<p>weight|bias)"


def _identity(t: torch.Tensor, target: torch.Size) -> torch.Tensor:
    return t


def _softmax_pair_to_logit(t: torch.Tensor, target: torch.Size) -> torch.Tensor:
    """Caffe RPN: ``2A`` outputs, background block then foreground block, softmax over the pair.

    ``softmax([b, f])[1] == sigmoid(f - b)``, so the foreground-minus-background
    difference of the weights (and biases) is an exactly equivalent sigmoid logit.
    """
    a = target[0]
    if t.shape[0] == 2 * a:
        return t[a:] - t[:a]
    return t


def _bg_last_to_first(t: torch.Tensor, target: torch.Size) -> torch.Tensor:
    """detectron2 puts background in the last class row; Caffe (and we) in row 0."""
    if t.shape[0] == target[0]:
        return torch.cat([t[-1:], t[:-1]], dim=0)
    return t


def _prepend_background_deltas(t: torch.Tensor, target: torch.Size) -> torch.Tensor:
    """detectron2 regresses ``4 K`` deltas (no background); Caffe ``4 (K + 1)``. The background rows are never used."""
    if t.shape[0] + 4 == target[0]:
        return torch.cat([t.new_zeros((4, *t.shape[1:])), t], dim=0)
    return t


def _res_layer(m: re.Match[str]) -> str:
    return str(int(m.group("res")) - 1)


# (source regex, target template, transform). ``{layer}`` is res-stage minus one
# (detectron2 res2..res4 = torchvision layer1..layer3); other ``{name}`` fields are regex groups.
_D2_BACKBONE: list[tuple[str, str, Transform]] = [
    (r"backbone\.stem\.conv1\.weight", "trunk.conv1.weight", _identity),
    (rf"backbone\.stem\.conv1\.norm\.{_BN}", "trunk.bn1.{p}", _identity),
    (r"backbone\.res(?P<res>[234])\.(?P<i>\d+)\.conv(?P<j>[123])\.weight", "trunk.layer{layer}.{i}.conv{j}.weight", _identity),
    (rf"backbone\.res(?P<res>[234])\.(?P<i>\d+)\.conv(?P<j>[123])\.norm\.{_BN}", "trunk.layer{layer}.{i}.bn{j}.{p}", _identity),
    (r"backbone\.res(?P<res>[234])\.(?P<i>\d+)\.shortcut\.weight", "trunk.layer{layer}.{i}.downsample.0.weight", _identity),
    (rf"backbone\.res(?P<res>[234])\.(?P<i>\d+)\.shortcut\.norm\.{_BN}", "trunk.layer{layer}.{i}.downsample.1.{p}", _identity),
    (r"roi_heads\.res5\.(?P<i>\d+)\.conv(?P<j>[123])\.weight", "head.{i}.conv{j}.weight", _identity),
    (rf"roi_heads\.res5\.(?P<i>\d+)\.conv(?P<j>[123])\.norm\.{_BN}", "head.{i}.bn{j}.{p}", _identity),
    (r"roi_heads\.res5\.(?P<i>\d+)\.shortcut\.weight", "head.{i}.downsample.0.weight", _identity),
    (rf"roi_heads\.res5\.(?P<i>\d+)\.shortcut\.norm\.{_BN}", "head.{i}.downsample.1.{p}", _identity),
    (rf"proposal_generator\.rpn_head\.conv\.{_WB}", "rpn.conv.{p}", _identity),
    (rf"proposal_generator\.rpn_head\.objectness_logits\.{_WB}", "rpn.cls_logits.{p}", _softmax_pair_to_logit),
    (rf"proposal_generator\.rpn_head\.anchor_deltas\.{_WB}", "rpn.bbox_pred.{p}", _identity),
]  # fmt: skip

KEY_MAPS: dict[str, list[tuple[str, str, Transform]]] = {
    "milvlg": _D2_BACKBONE + [
        (rf"roi_heads\.box_predictor\.cls_score\.{_WB}", "cls_score.{p}", _identity),
        (rf"roi_heads\.box_predictor\.bbox_pred\.{_WB}", "bbox_pred.{p}", _identity),
        (r"roi_heads\.box_predictor\.cls_embed\.weight", "attr_embed.weight", _identity),
        (rf"roi_heads\.box_predictor\.attr_linear1\.{_WB}", "attr_fc1.{p}", _identity),
        (rf"roi_heads\.box_predictor\.attr_linear2\.{_WB}", "attr_fc2.{p}", _identity),
    ],
    "airsplay": _D2_BACKBONE + [
        (rf"roi_heads\.box_predictor\.cls_score\.{_WB}", "cls_score.{p}", _bg_last_to_first),
        (rf"roi_heads\.box_predictor\.bbox_pred\.{_WB}", "bbox_pred.{p}", _prepend_background_deltas),
        (r"roi_heads\.box_predictor\.cls_embedding\.weight", "attr_embed.weight", _bg_last_to_first),
        (rf"roi_heads\.box_predictor\.fc_attr\.{_WB}", "attr_fc1.{p}", _identity),
        (rf"roi_heads\.box_predictor\.attr_score\.{_WB}", "attr_fc2.{p}", _bg_last_to_first),
        (r"roi_heads\.attribute_predictor\.obj_embed\.weight", "attr_embed.weight", _bg_last_to_first),
        (rf"roi_heads\.attribute_predictor\.fc\.0\.{_WB}", "attr_fc1.{p}", _identity),
        (rf"roi_heads\.attribute_predictor\.attr_score\.{_WB}", "attr_fc2.{p}", _identity),
    ],
}  # fmt: skip

# Keys that carry no weights of ours: BN step counters, detectron2's input
# normalisation constants (we normalise in the preprocessor), cached anchors.
IGNORED_KEYS = (
    r".*num_batches_tracked",
    r"pixel_mean",
    r"pixel_std",
    r"proposal_generator\.anchor_generator\..*",
)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only; anything else is refused (no code execution)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("collections", "OrderedDict"),
        ("builtins", "set"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to unpickle {module}.{name}: weights pickles may only hold dicts and numpy arrays"
        )


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file into a flat ``{key: CPU tensor}`` dict.

    ``.pkl`` files are read with a numpy-only unpickler (detectron2 / airsplay
    pickles); anything else with ``torch.load(weights_only=True)``. A top-level
    ``"model"`` or ``"state_dict"`` entry is unwrapped.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file holds no tensor dict.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file {str(p)!r} does not exist; pass a local checkpoint path")
    if p.suffix == ".pkl":
        with open(p, "rb") as fh:
            obj: Any = _NumpyOnlyUnpickler(fh, encoding="latin1").load()
    else:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{str(p)!r} holds no state dict (got {type(obj).__name__}); expected {{name: tensor}}")
    out: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if isinstance(v, np.ndarray):
            out[str(k)] = torch.from_numpy(np.ascontiguousarray(v))
        elif isinstance(v, torch.Tensor):
            out[str(k)] = v
    if not out:
        raise ValueError(f"{str(p)!r} holds no tensors; expected a state dict of tensors or numpy arrays")
    return out


def detect_checkpoint_format(state: Mapping[str, Any]) -> Literal["native", "milvlg", "airsplay"]:
    """Guess the source layout of ``state`` from its key names.

    Raises:
        ValueError: none of the known layouts matches.
    """
    keys = set(state)
    if "trunk.conv1.weight" in keys:
        return "native"
    if "backbone.stem.conv1.weight" in keys:
        if "roi_heads.box_predictor.cls_embedding.weight" in keys:
            return "airsplay"
        if any(k.startswith("roi_heads.attribute_predictor.") for k in keys):
            return "airsplay"
        if "roi_heads.box_predictor.cls_embed.weight" in keys:
            return "milvlg"
        # No attribute head: decide by the box-regression layout (6404 Caffe rows vs 6400 detectron2 rows).
        w = state.get("roi_heads.box_predictor.bbox_pred.weight")
        cls = state.get("roi_heads.box_predictor.cls_score.weight")
        if w is not None and cls is not None and w.shape[0] == 4 * (cls.shape[0] - 1):
            return "airsplay"
        return "milvlg"
    sample = ", ".join(sorted(keys)[:5])
    raise ValueError(
        f"unrecognised checkpoint layout (first keys: {sample}); expected a native state dict "
        f"('trunk.conv1.weight') or a detectron2-style bottom-up checkpoint ('backbone.stem.conv1.weight'); "
        f"pass checkpoint_format= explicitly"
    )


def _summarise(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def map_checkpoint(
    state: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    checkpoint_format: CheckpointFormat = "auto",
) -> dict[str, torch.Tensor]:
    """Translate a source state dict into the key names and layouts of ``target``.

    Args:
        state: the source tensors (see :func:`read_checkpoint`).
        target: the model's ``state_dict()`` (names and shapes to fill).
        checkpoint_format: source layout, or ``"auto"`` (:func:`detect_checkpoint_format`).

    Returns:
        ``{target key: tensor}`` covering every key of ``target``, cast to its dtype.

    Raises:
        ValueError: unmapped source keys, unfilled target keys, or shape mismatches;
            the message lists them.
    """
    fmt = detect_checkpoint_format(state) if checkpoint_format == "auto" else checkpoint_format
    ignored = [re.compile(p) for p in IGNORED_KEYS]
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    misshaped: list[str] = []
    if fmt == "native":
        rules: list[tuple[re.Pattern[str], str, Transform]] = []
    elif fmt in KEY_MAPS:
        rules = [(re.compile(p), t, f) for p, t, f in KEY_MAPS[fmt]]
    else:
        raise ValueError(f"unknown checkpoint_format {fmt!r}; use one of auto, native, {', '.join(KEY_MAPS)}")
    for key, tensor in state.items():
        if any(p.fullmatch(key) for p in ignored):
            continue
        if fmt == "native":
            new_key, fn = key, _identity
        else:
            for pattern, template, fn in rules:
                m = pattern.fullmatch(key)
                if m:
                    fields = dict(m.groupdict())
                    if "res" in fields:
                        fields["layer"] = _res_layer(m)
                    new_key = template.format(**fields)
                    break
            else:
                unmapped.append(key)
                continue
        if new_key not in target:
            unmapped.append(f"{key} -> {new_key} (no such parameter)")
            continue
        want = target[new_key].shape
        value = fn(tensor, want)
        if tuple(value.shape) != tuple(want):
            misshaped.append(f"{key}: {tuple(tensor.shape)} -> {new_key} expects {tuple(want)}")
            continue
        out[new_key] = value.to(dtype=target[new_key].dtype)
    missing = sorted(k for k in target if k not in out and not k.endswith("num_batches_tracked"))
    problems = []
    if unmapped:
        problems.append(f"{len(unmapped)} unmapped key(s): {_summarise(sorted(unmapped))}")
    if misshaped:
        problems.append(f"{len(misshaped)} mis-shaped key(s): {_summarise(misshaped)}")
    if missing:
        problems.append(f"{len(missing)} model key(s) not in the checkpoint: {_summarise(missing)}")
    if problems:
        raise ValueError(
            f"cannot load a {fmt!r} checkpoint into the bottom-up detector: " + "; ".join(problems)
            + ". Check the architecture options (num_classes, num_attributes, blocks) against the checkpoint"
        )
    return out

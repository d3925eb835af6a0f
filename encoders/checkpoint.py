"""Checkpoints of TERAN and SCAN models: safetensors weights + JSON config + tokenizer or vocabulary.

A checkpoint is a folder, published atomically (written under a temporary name, then renamed)::

    model.safetensors     every parameter and buffer of the model (``state_dict``)
    model_config.json     {"format": ..., "kind": "teran" | "scan", "config": {...}, "encoder_hash": ...}
    text_model/           TERAN: the text backbone's config.json and tokenizer files (no weights: they
                          are in model.safetensors), so a checkpoint loads without the original folder
    vocab.json            SCAN: the vocabulary
    trainer_state.pt      optional: optimizer, scheduler, RNG states, epoch, history; plain tensors and
                          containers only, read back with ``torch.load(..., weights_only=True)``

Nothing here unpickles arbitrary objects.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "CHECKPOINT_FORMAT",
    "latest_checkpoint",
    "load_model",
    "load_trainer_state",
    "model_config",
    "model_hash",
    "model_kind",
    "save_checkpoint",
    "update_with_weights",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "regionrank-checkpoint-v1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
TRAINER_FILE = "trainer_state.pt"
TEXT_DIR = "text_model"
VOCAB_FILE = "vocab.json"
_EPOCH_RE = re.compile(r"^epoch-(\d{4,})$")

_SCAN_KINDS = ("scan", "scan-meanpool")


def model_kind(model: nn.Module) -> str:
    """``"teran"``, ``"scan"`` or ``"scan-meanpool"``; TypeError for any other module."""
    if getattr(model, "kind", None) == "teran":
        return "teran"
    from regionrank.encoders.scan import MeanPoolBaseline, ScanModel

    if isinstance(model, MeanPoolBaseline):
        return "scan-meanpool"
    if isinstance(model, ScanModel):
        return "scan"
    raise TypeError(f"cannot checkpoint a {type(model).__name__}; supported: TeranModel, ScanModel, MeanPoolBaseline")


def model_config(model: nn.Module) -> dict[str, Any]:
    """The JSON config that rebuilds ``model`` (``{"kind": ..., "config": {...}}``)."""
    kind = model_kind(model)
    if kind == "teran":
        cfg = model.cfg.to_dict()  # type: ignore[attr-defined]
        cfg["_text_pooler"] = getattr(model.text_backbone, "pooler", None) is not None  # type: ignore[attr-defined]
    else:
        cfg = model.cfg.to_dict()  # type: ignore[attr-defined]
    return {"kind": kind, "config": cfg}


def model_hash(model: nn.Module) -> str:
    """sha256 hex of the model's config and every tensor of its ``state_dict`` (order-independent).

    Two models hash equal exactly when they have the same architecture config and bit-identical weights;
    the embedding stores record it as ``encoder_hash``.
    """
    h = hashlib.sha256(json.dumps(model_config(model), sort_keys=True).encode())
    update_with_weights(h, model)
    return h.hexdigest()


def update_with_weights(hasher: Any, module: nn.Module) -> None:
    """Feed every ``state_dict`` tensor of ``module`` (name, dtype, shape, bytes; sorted by name) to ``hasher``."""
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        hasher.update(name.encode())
        hasher.update(str(t.dtype).encode())
        hasher.update(str(tuple(t.shape)).encode())
        hasher.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-d too


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, *, trainer_state: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (and optionally the trainer state) as a checkpoint folder, atomically.

    Args:
        path: the checkpoint folder; an existing one is replaced.
        model: a registered model kind (``TeranModel``, ``ScanModel``).
        trainer_state: tensors, numbers, strings and containers of those (it is read back with
            ``weights_only=True``), e.g. optimizer/scheduler ``state_dict``s and RNG states.

    Returns:
        The folder.
    """
    from safetensors.torch import save_file

    final = Path(path)
    kind = model_kind(model)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": CHECKPOINT_FORMAT, "kind": kind})
    meta = {"format": CHECKPOINT_FORMAT, **model_config(model), "encoder_hash": model_hash(model)}
    (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    if kind == "teran":
        model.text_backbone.config.save_pretrained(str(tmp / TEXT_DIR))  # type: ignore[attr-defined]
        model.tokenizer.save_pretrained(str(tmp / TEXT_DIR))  # type: ignore[attr-defined]
    else:
        vocab = getattr(model, "vocab", None)
        if vocab is None:
            raise ValueError("a SCAN model needs its vocabulary to be checkpointed: set model.vocab = Vocabulary(...)")
        vocab.save(tmp / VOCAB_FILE)
    if trainer_state is not None:
        torch.save(dict(trainer_state), tmp / TRAINER_FILE)
    if final.exists():
        old = final.with_name(final.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    logger.info("saved %s checkpoint to %s", kind, final)
    return final


def _read_meta(folder: Path) -> dict[str, Any]:
    cfg_file = folder / CONFIG_FILE
    if not folder.is_dir() or not cfg_file.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(
            f"{str(folder)!r} is not a checkpoint folder (expected {CONFIG_FILE} and {WEIGHTS_FILE}); "
            f"pass a folder written by encoders.checkpoint.save_checkpoint or encoders.training.train"
        )
    meta = json.loads(cfg_file.read_text())
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(cfg_file)!r} has format {meta.get('format')!r}; expected {CHECKPOINT_FORMAT!r}")
    return meta


def load_model(
    path: str | os.PathLike[str], *, device: torch.device | str = "cpu", text_model_path: str | Path | None = None
) -> nn.Module:
    """Rebuild a model from a checkpoint folder (weights from safetensors; no pickle).

    Args:
        path: a checkpoint folder, or a training output folder (its latest ``epoch-NNNN`` is used).
        device: where the model is placed.
        text_model_path: TERAN only: build the text backbone from this folder's config instead of the
            checkpoint's ``text_model/`` (the weights still come from the checkpoint).

    Returns:
        The model in eval mode.

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: an unknown model kind or a weights file that does not match the config.
    """
    from safetensors.torch import load_file

    folder = Path(path)
    if not (folder / CONFIG_FILE).is_file():
        latest = latest_checkpoint(folder) if folder.is_dir() else None
        if latest is not None:
            folder = latest
    meta = _read_meta(folder)
    kind = meta.get("kind")
    if kind == "teran":
        model = _build_teran(meta["config"], folder, text_model_path)
    elif kind in _SCAN_KINDS:
        model = _build_scan(kind, meta["config"], folder)
    else:
        raise ValueError(f"checkpoint {str(folder)!r} holds model kind {kind!r}; known kinds: teran, {_SCAN_KINDS}")
    state = load_file(str(folder / WEIGHTS_FILE))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"weights in {str(folder)!r} do not match its {kind} config: {exc}") from exc
    return model.to(device).eval()


def load_trainer_state(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The trainer state saved with a checkpoint (``torch.load(..., weights_only=True)``), or ``None``."""
    f = Path(path) / TRAINER_FILE
    if not f.is_file():
        return None
    return torch.load(f, map_location="cpu", weights_only=True)


def checkpoint_dir(out_dir: str | os.PathLike[str], epoch: int) -> Path:
    """``out_dir/epoch-NNNN`` (1-based epoch count)."""
    return Path(out_dir) / f"epoch-{epoch:04d}"


def latest_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """The complete ``epoch-NNNN`` checkpoint with the highest epoch under ``out_dir``, or ``None``."""
    root = Path(out_dir)
    if not root.is_dir():
        return None
    best: tuple[int, Path] | None = None
    for child in root.iterdir():
        m = _EPOCH_RE.match(child.name)
        if m and (child / CONFIG_FILE).is_file() and (child / WEIGHTS_FILE).is_file():
            if best is None or int(m.group(1)) > best[0]:
                best = (int(m.group(1)), child)
    return None if best is None else best[1]


def _build_teran(config: Mapping[str, Any], folder: Path, text_model_path: str | Path | None) -> nn.Module:
    from transformers import AutoConfig, AutoModel

    from regionrank.encoders.teran import TeranCfg, TeranModel
    from regionrank.encoders.text import load_tokenizer

    data = dict(config)
    pooler = bool(data.pop("_text_pooler", True))
    cfg = TeranCfg.from_dict(data)
    text_dir = Path(text_model_path) if text_model_path is not None else folder / TEXT_DIR
    bert_cfg = AutoConfig.from_pretrained(str(text_dir), local_files_only=True)
    kwargs = {} if pooler else {"add_pooling_layer": False}
    text_model = AutoModel.from_config(bert_cfg, **kwargs)
    return TeranModel(cfg, text_model, load_tokenizer(text_dir))


def _build_scan(kind: str, config: Mapping[str, Any], folder: Path) -> nn.Module:
    from regionrank.encoders.scan import MeanPoolBaseline, ScanModel
    from regionrank.encoders.vocab import Vocabulary

    cls = MeanPoolBaseline if kind == "scan-meanpool" else ScanModel
    model = cls(**dict(config))
    model.vocab = Vocabulary.load(folder / VOCAB_FILE)
    return model

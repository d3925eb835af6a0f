"""The model registry: shipped configs (``model_configs/*.json``), their loaders, and the model families.

A config's ``"kind"`` names its family; :data:`MODEL_FAMILIES` maps each family name to its class, and
is consulted only where a config or a checkpoint is turned into a model (:func:`model_family`). The
rest of the code calls the ``encoders.protocol.RetrievalModel`` methods of the model it holds.

:func:`create_encoder` builds a TERAN model from a name, a mapping or a ``TeranCfg``;
:func:`load_teran_cfg` and :func:`load_scan_spec` resolve a config of each family.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from regionrank.encoders.protocol import CheckpointableModel
from regionrank.encoders.scan_model import MeanPoolBaseline, ScanCfg, ScanModel
from regionrank.encoders.teran import TeranCfg, TeranModel, build_text_backbone

__all__ = [
    "CONFIG_DIR",
    "MODEL_FAMILIES",
    "SCAN_TRAIN_DEFAULTS",
    "ScanSpec",
    "create_encoder",
    "family_of_config",
    "get_model_cfg",
    "list_models",
    "load_scan_spec",
    "load_teran_cfg",
    "model_family",
]

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"

#: family name (a config's or checkpoint's ``"kind"``) -> model class.
MODEL_FAMILIES: dict[str, type[CheckpointableModel]] = {
    cls.kind: cls for cls in (TeranModel, ScanModel, MeanPoolBaseline)
}

#: SCAN training defaults (ALGORITHMS.md §3.5; README commands add --max_violation --bi_gru).
SCAN_TRAIN_DEFAULTS: dict[str, Any] = {
    "lr": 2e-4,
    "lr_step_epochs": 15,
    "lr_gamma": 0.1,
    "warmup_iters": 0,
    "batch_size": 128,
    "epochs": 30,
    "grad_clip": 2.0,
    "margin": 0.2,
    "max_violation": True,
    "vocab_threshold": 4,
}


def model_family(kind: str, *, where: str = "config") -> type[CheckpointableModel]:
    """The model class registered for ``kind``.

    Raises:
        ValueError: an unknown kind; the message lists the known kinds.
    """
    if kind not in MODEL_FAMILIES:
        raise ValueError(f"{where} holds model kind {kind!r}; known kinds: {sorted(MODEL_FAMILIES)}")
    return MODEL_FAMILIES[kind]


def _config_files() -> dict[str, Path]:
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.json"))}


def list_models() -> list[str]:
    """Names of the model configs shipped in ``encoders/model_configs/*.json``, sorted."""
    return sorted(_config_files())


def get_model_cfg(name: str) -> dict[str, Any]:
    """The raw JSON mapping of a shipped model config (``"kind"`` says which model family).

    Raises:
        ValueError: ``name`` is not a shipped config; the message lists the known names.
    """
    files = _config_files()
    if name not in files:
        raise ValueError(f"unknown model {name!r}; known models: {sorted(files)}")
    return json.loads(files[name].read_text())


def load_teran_cfg(name_or_cfg: str | Mapping[str, Any] | TeranCfg) -> TeranCfg:
    """Resolve a registry name, a JSON mapping or a ``TeranCfg`` into a ``TeranCfg``."""
    if isinstance(name_or_cfg, TeranCfg):
        return name_or_cfg
    data = dict(get_model_cfg(name_or_cfg)) if isinstance(name_or_cfg, str) else dict(name_or_cfg)
    kind = data.pop("kind", "teran")
    if kind != TeranModel.kind:
        raise ValueError(f"config {data.get('name')!r} is a {kind!r} model, not a TERAN model")
    return TeranCfg.from_dict(data)


@dataclass(frozen=True)
class ScanSpec:
    """A SCAN config before its vocabulary exists: the family, the name, the architecture keyword
    arguments (``ScanCfg`` fields but ``vocab_size``) and the training options (:data:`SCAN_TRAIN_DEFAULTS`
    overridden by the config)."""

    family: type[ScanModel]
    name: str
    arch: dict[str, Any]
    train: dict[str, Any]


def load_scan_spec(name_or_cfg: str | Mapping[str, Any] | ScanCfg) -> ScanSpec:
    """Resolve a registry name, a mapping with ``"kind": "scan" | "scan-meanpool"`` or a ``ScanCfg``.

    Raises:
        ValueError: unknown keys (the message lists the known ones) or a config of another family.
    """
    if isinstance(name_or_cfg, ScanCfg):
        return ScanSpec(ScanModel, f"scan-{name_or_cfg.direction}", name_or_cfg.to_dict(), dict(SCAN_TRAIN_DEFAULTS))
    data = get_model_cfg(name_or_cfg) if isinstance(name_or_cfg, str) else dict(name_or_cfg)
    family = model_family(str(data.get("kind")), where=f"config {data.get('name')!r}")
    if not issubclass(family, ScanModel):
        raise ValueError(f"config {data.get('name')!r} is a {data.get('kind')!r} model, not a SCAN model")
    fields = {f.name for f in dataclasses.fields(ScanCfg)}
    train_cfg = dict(SCAN_TRAIN_DEFAULTS)
    known = fields | set(train_cfg) | {"kind", "name", "description", "deviations"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown SCAN config keys {unknown}; known keys: {sorted(known)}")
    arch = {k: v for k, v in data.items() if k in fields}
    train_cfg.update({k: v for k, v in data.items() if k in SCAN_TRAIN_DEFAULTS})
    name = str(data.get("name", f"{family.kind}-{arch.get('direction', 't2i')}"))
    return ScanSpec(family, name, arch, train_cfg)


def create_encoder(
    name_or_cfg: str | Mapping[str, Any] | TeranCfg,
    weights: str | Path | None = None,
    text_model_path: str | Path | None = None,
    device: torch.device | str = "cpu",
) -> TeranModel:
    """Build a TERAN model from the registry (or a config) and optionally load trained weights.

    Args:
        name_or_cfg: a name from :func:`list_models`, a config mapping or a :class:`TeranCfg`.
        weights: a checkpoint folder written by ``encoders.checkpoint`` or a ``.safetensors`` file;
            ``None`` leaves the TERAN layers randomly initialised (the text backbone keeps its
            pretrained weights). Nothing is ever downloaded.
        text_model_path: a local BERT folder overriding the config's text backbone.
        device: where the model is placed.

    Raises:
        ValueError: unknown name or config keys (the message lists the known ones).
        FileNotFoundError: ``weights`` or ``text_model_path`` does not exist.
    """
    if weights is not None and Path(weights).is_dir():
        from regionrank.encoders.checkpoint import load_model

        model = load_model(weights, device=device, text_model_path=text_model_path)
        if not isinstance(model, TeranModel):
            raise ValueError(f"checkpoint {str(weights)!r} holds a {type(model).__name__}, not a TERAN model")
        return model
    cfg = load_teran_cfg(name_or_cfg)
    if weights is not None:
        from safetensors.torch import load_file

        if not Path(weights).is_file():
            raise FileNotFoundError(
                f"weights {str(weights)!r} does not exist; pass a checkpoint folder or a .safetensors file"
            )
        tokenizer, text_model = build_text_backbone(cfg, text_model_path, pretrained=False)
        model = TeranModel(cfg, text_model, tokenizer)
        try:
            model.load_state_dict(load_file(str(weights)), strict=True)
        except RuntimeError as exc:
            raise ValueError(f"weights {str(weights)!r} do not match config {cfg.name!r}: {exc}") from exc
        return model.to(device).eval()
    tokenizer, text_model = build_text_backbone(cfg, text_model_path)
    return TeranModel(cfg, text_model, tokenizer).to(device)


def family_of_config(config: Any) -> type[CheckpointableModel]:
    """The model family of a ``TeranCfg``, a ``ScanCfg`` or a config mapping (``"kind"``, default TERAN).

    Raises:
        TypeError: anything else.
        ValueError: a mapping of an unknown kind.
    """
    if isinstance(config, TeranCfg):
        return TeranModel
    if isinstance(config, ScanCfg):
        return ScanModel
    if isinstance(config, Mapping):
        return model_family(str(config.get("kind", TeranModel.kind)), where=f"config {config.get('name')!r}")
    raise TypeError(
        f"model_name_or_cfg must be a registry name, a TeranCfg, a ScanCfg or a config mapping with 'kind'; "
        f"got {type(config).__name__}"
    )

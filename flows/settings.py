"""The one config resolver: a workspace's saved ``regionrank.json``, ``REGIONRANK_*`` settings and CLI flags
merged into a :class:`PipelineConfig`, and the reading and writing of that file.

Precedence, highest first: a CLI flag > a ``REGIONRANK_*`` environment variable > what the workspace
was built with (``regionrank.json``) > the config defaults. Every command that runs the pipeline,
and ``regionrank serve``, resolves its configuration here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regionrank.flows.config import EncodeConfig, ExtractConfig, IndexConfig, PipelineConfig, Settings, Workspace

__all__ = [
    "CONFIG_FILE",
    "ConfigOverrides",
    "load_workspace_config",
    "read_workspace_config_file",
    "resolve_config",
    "save_workspace_config",
]

CONFIG_FILE = "regionrank.json"

# Settings field -> (stage, config field) it sets.
_SETTINGS_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "detector": (("extract", "detector"),),
    "detector_weights": (("extract", "weights"),),
    "detector_options": (("extract", "options"),),
    "device": (("extract", "device"), ("encode", "device")),
    "images_per_task": (("extract", "images_per_task"),),
    "rows_per_shard": (("extract", "rows_per_shard"),),
    "device_slots": (("extract", "device_slots"), ("encode", "device_slots")),
    "encoder_checkpoint": (("encode", "checkpoint"),),
    "encoder_model": (("encode", "model_name"),),
}


@dataclass(frozen=True)
class ConfigOverrides:
    """Values given on the command line (``None`` = not given)."""

    detector: str | None = None
    detector_weights: Path | None = None
    encoder: str | None = None
    checkpoint: Path | None = None
    device: str | None = None
    dask_address: str | None = None
    boxes_file: Path | None = None

    def layer(self) -> dict[str, dict[str, Any]]:
        """The flags as ``{"extract": {...}, "encode": {...}}`` of config fields."""
        out: dict[str, dict[str, Any]] = {"extract": {}, "encode": {}}
        for stage, key, value in (("extract", "detector", self.detector), ("extract", "weights", self.detector_weights),
                                  ("encode", "encoder", self.encoder), ("encode", "checkpoint", self.checkpoint),
                                  ("extract", "device", self.device), ("encode", "device", self.device),
                                  ("extract", "boxes_file", self.boxes_file)):
            if value is not None:
                out[stage][key] = value
        return out


def read_workspace_config_file(ws: Workspace) -> dict[str, Any] | None:
    """The raw content of the workspace's ``regionrank.json`` (``None`` when nothing was indexed yet)."""
    path = ws.root / CONFIG_FILE
    return json.loads(path.read_text()) if path.exists() else None


def save_workspace_config(ws: Workspace, extract: ExtractConfig, encode: EncodeConfig, index: IndexConfig) -> None:
    """Remember which detector/encoder built this workspace; refuse to mix in another one."""
    path = ws.root / CONFIG_FILE
    # the boxes file belongs to one run: a later run of this workspace must not describe its images again
    new = {"extract": json.loads(extract.model_dump_json(exclude={"boxes_file"})), "encode": json.loads(encode.model_dump_json()),
           "index": json.loads(index.model_dump_json())}
    old = read_workspace_config_file(ws)
    if old is not None:
        for stage, key in (("extract", "detector"), ("encode", "encoder")):
            if old[stage][key] != new[stage][key]:
                raise ValueError(
                    f"workspace {ws.root} was built with {key} {old[stage][key]!r}, this run asks for {new[stage][key]!r}; "
                    f"use another --workspace, or the same {key}"
                )
    ws.root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(new, indent=2))
    tmp.replace(path)


def load_workspace_config(ws: Workspace) -> tuple[ExtractConfig, EncodeConfig, IndexConfig]:
    """The configuration a workspace was built with.

    Raises:
        FileNotFoundError: nothing was indexed in this workspace yet.
    """
    data = read_workspace_config_file(ws)
    if data is None:
        raise FileNotFoundError(
            f"no regionrank workspace at {ws.root} (missing {CONFIG_FILE}); run `regionrank index DIR` first")
    return ExtractConfig(**data["extract"]), EncodeConfig(**data["encode"]), IndexConfig(**data["index"])


def _environment_layer(settings: Settings) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {"extract": {}, "encode": {}}
    for name in settings.model_fields_set & set(_SETTINGS_FIELDS):
        for stage, key in _SETTINGS_FIELDS[name]:
            out[stage][key] = getattr(settings, name)
    return out


def resolve_config(ws: Workspace, images: list[Path], overrides: ConfigOverrides = ConfigOverrides(), *,
                   settings: Settings | None = None, lock_timeout: float = 0.0) -> PipelineConfig:
    """The pipeline configuration of a run over ``images`` in ``ws``.

    Each field comes from the first of: ``overrides`` (CLI flags), ``settings`` fields set from the
    environment (``REGIONRANK_*``), the workspace's saved ``regionrank.json``, the defaults. The saved
    extract (encode) settings apply only while the detector (encoder) is the saved one; with no encoder
    chosen anywhere, the demo detector gets the zero-shot ``grounded`` encoder and others ``teran``.

    Raises:
        pydantic.ValidationError: a resolved value is invalid (e.g. a weights file that does not exist).
    """
    settings = settings if settings is not None else Settings()
    saved = read_workspace_config_file(ws) or {}
    env, cli = _environment_layer(settings), overrides.layer()
    chosen = {**env["extract"], **cli["extract"]}
    saved_ext = saved.get("extract") or {}
    detector = chosen.get("detector", saved_ext.get("detector", ExtractConfig.model_fields["detector"].default))
    ext_data = saved_ext if saved_ext.get("detector") == detector else {}
    extract = ExtractConfig(**{**ext_data, **chosen, "detector": detector})

    chosen = {**env["encode"], **cli["encode"]}
    saved_enc = saved.get("encode") or {}
    encoder = chosen.get("encoder", saved_enc.get("encoder", "grounded" if detector == "ssd-mobilenet-coco" else "teran"))
    enc_data = saved_enc if saved_enc.get("encoder") == encoder else {}
    encode = EncodeConfig(**{**enc_data, **chosen, "encoder": encoder})

    index = IndexConfig(**saved["index"]) if saved.get("index") else IndexConfig()
    dask = overrides.dask_address or settings.dask_address
    return PipelineConfig(images=images, workspace=ws, extract=extract, encode=encode, index=index, dask_address=dask,
                          lock_timeout=lock_timeout)

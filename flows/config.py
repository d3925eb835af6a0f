"""Run configurations (pydantic) and user settings (``REGIONRANK_*`` environment variables).

Library code never sees these objects: tasks unpack them into explicit keyword
arguments. Architecture configs live in ``encoders/model_configs/`` instead.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from regionrank.flows.runtime import DEFAULT_WORKSPACE
from regionrank.index.search.params import SearchParams

__all__ = [
    "EncodeConfig",
    "ExtractConfig",
    "IndexConfig",
    "PipelineConfig",
    "SearchConfig",
    "Settings",
    "Workspace",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Workspace(_Frozen):
    """Where one regionrank collection lives; every stage's output has a fixed place in it."""

    root: Path

    @property
    def regions(self) -> Path:
        return self.root / "regions"

    @property
    def image_embeddings(self) -> Path:
        return self.root / "embeddings" / "images"

    @property
    def caption_embeddings(self) -> Path:
        return self.root / "embeddings" / "captions"

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @property
    def caption_index_dir(self) -> Path:
        return self.root / "caption-index"

    @property
    def captions(self) -> Path:
        return self.root / "captions.parquet"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def lock(self) -> Path:
        return self.root / ".pipeline.lock"


class ExtractConfig(_Frozen):
    """Region extraction: which detector, which weights, how to batch."""

    detector: str = "butd-r101-c4"
    weights: Path | None = None
    options: dict[str, Any] = Field(default_factory=dict, description="backend options (thresholds, sizes, ...)")
    device: str = "auto"
    batch_size: int = Field(2, ge=1)
    num_workers: int = Field(0, ge=0)
    images_per_task: int = Field(64, ge=1, description="images per mapped task (one shard-sized unit of work)")
    rows_per_shard: int = Field(256, ge=1)
    device_slots: int = Field(1, ge=1, description="model-running tasks at once (raise to the GPU/worker count to scale out)")
    seed: int = 0
    boxes_file: Path | None = Field(None, description="JSON lines of given boxes (--boxes); this run only, never saved")

    @field_validator("weights")
    @classmethod
    def _weights_exist(cls, v: Path | None) -> Path | None:
        if v is not None and not Path(v).is_file():
            raise ValueError(f"detector weights file not found: {v}; pass the local path of a .pth/.pkl/.safetensors file")
        return v

    @field_validator("boxes_file")
    @classmethod
    def _boxes_file_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not Path(v).is_file():
            raise ValueError(f"boxes file not found: {v}; pass a JSON-lines file of "
                             '{"image": PATH_OR_IMAGE_ID, "boxes": [[x1, y1, x2, y2], ...]}')  # fmt: skip
        return v


class EncodeConfig(_Frozen):
    """Embedding: the zero-shot label-grounded baseline, or a trained TERAN checkpoint."""

    encoder: Literal["grounded", "teran"] = "grounded"
    checkpoint: Path | None = None
    model_name: str = "teran-coco"
    text_model_path: Path | None = None
    device: str = "auto"
    batch_size: int = Field(32, ge=1)
    images_per_task: int = Field(256, ge=1)
    device_slots: int = Field(1, ge=1, description="model-running tasks at once (raise to the GPU/worker count to scale out)")
    seed: int = 0

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not Path(v).exists():
            raise ValueError(f"encoder checkpoint not found: {v}; pass a folder written by `regionrank train`")
        return v


class IndexConfig(_Frozen):
    """FAISS indexes: chosen and tuned automatically under a memory budget and a recall target."""

    memory_budget: str = "4G"
    target_recall: float = Field(0.95, gt=0, le=1)
    kinds: tuple[Literal["global", "region"], ...] = ("global", "region")
    ngpu: int | Literal["auto"] = "auto"
    seed: int = 0


class SearchConfig(_Frozen):
    """Two-stage search: the library's :class:`index.SearchParams` (ANN candidates, exact TERAN
    alignment, SCAN re-rank; its one set of defaults and checks) and the SCAN re-ranker's temperature.

    The search knobs may be given flat, ``SearchConfig(k=3, rerank_k=0)`` (``rerank_k=0``: no
    re-ranking), or as ``params=SearchParams(...)``.
    """

    params: SearchParams = SearchParams()
    lambda_softmax: float = 9.0

    @model_validator(mode="before")
    @classmethod
    def _flat_search_params(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        names = {f.name for f in dataclasses.fields(SearchParams)}
        flat = {key: value for key, value in data.items() if key in names}
        if not flat:
            return data
        rest = {key: value for key, value in data.items() if key not in names}
        base = rest.get("params") or SearchParams()
        rest["params"] = dataclasses.replace(base if isinstance(base, SearchParams) else SearchParams(**base), **flat)
        return rest


class PipelineConfig(_Frozen):
    """The whole pipeline over one image folder (or list)."""

    images: list[Path]
    workspace: Workspace
    extract: ExtractConfig = ExtractConfig()
    encode: EncodeConfig = EncodeConfig()
    index: IndexConfig = IndexConfig()
    dask_address: str | None = None
    lock_timeout: float = Field(0.0, ge=0, description="seconds to wait for another run on the same workspace")


class Settings(BaseSettings):
    """User-level defaults, from ``REGIONRANK_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="REGIONRANK_", extra="ignore")

    workspace: Path = DEFAULT_WORKSPACE
    device: str = "auto"
    detector: str = "butd-r101-c4"
    detector_weights: Path | None = None
    detector_options: dict[str, Any] = {}
    encoder_checkpoint: Path | None = None
    encoder_model: str = "teran-coco"
    images_per_task: int = 64
    rows_per_shard: int = 256
    device_slots: int = 1
    dask_address: str | None = None

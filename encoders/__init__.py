"""regionrank encoders: TERAN and SCAN models, losses, training, evaluation, embedding writers.

Modules: ``teran`` (TERAN model, alignment pooling, ``create_encoder`` / ``list_models`` over
``model_configs/*.json``), ``text`` (offline BERT/MiniLM backbone), ``scan`` (stacked cross
attention), ``losses``, ``evaluation``, ``training`` (``train`` / ``evaluate``), ``checkpoint``,
``embed`` (``encode_images`` / ``encode_captions``), ``grounded`` (zero-shot label-grounded
baseline), ``adapters`` (query encoders and the SCAN re-ranker that ``index`` searches with).

The package imports nothing heavy itself; the names below load their module on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "create_encoder": "encoders.teran",
    "list_models": "encoders.teran",
    "alignment_scores": "encoders.teran",
    "TeranCfg": "encoders.teran",
    "TeranModel": "encoders.teran",
    "train": "encoders.training",
    "evaluate": "encoders.training",
    "encode_images": "encoders.embed",
    "encode_captions": "encoders.embed",
    "load_model": "encoders.checkpoint",
    "save_checkpoint": "encoders.checkpoint",
    "GroundedEncoder": "encoders.grounded",
    "TeranQueryEncoder": "encoders.adapters",
    "GroundedQueryEncoder": "encoders.adapters",
    "ScanReranker": "encoders.adapters",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'encoders' has no attribute {name!r}")

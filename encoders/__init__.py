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
    "create_encoder": "regionrank.encoders.teran",
    "list_models": "regionrank.encoders.teran",
    "alignment_scores": "regionrank.encoders.teran",
    "TeranCfg": "regionrank.encoders.teran",
    "TeranModel": "regionrank.encoders.teran",
    "train": "regionrank.encoders.training",
    "evaluate": "regionrank.encoders.training",
    "encode_images": "regionrank.encoders.embed",
    "encode_captions": "regionrank.encoders.embed",
    "load_model": "regionrank.encoders.checkpoint",
    "save_checkpoint": "regionrank.encoders.checkpoint",
    "GroundedEncoder": "regionrank.encoders.grounded",
    "TeranQueryEncoder": "regionrank.encoders.adapters",
    "GroundedQueryEncoder": "regionrank.encoders.adapters",
    "ScanReranker": "regionrank.encoders.adapters",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'encoders' has no attribute {name!r}")

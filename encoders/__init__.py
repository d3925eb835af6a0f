"""regionrank encoders: TERAN and SCAN models, losses, training, evaluation, embedding writers.

Modules: ``protocol`` (``RetrievalModel``, the interface every model implements), ``registry``
(``create_encoder`` / ``list_models`` over ``model_configs/*.json``, the model families), ``teran``
(TERAN model, alignment pooling), ``text`` (offline BERT/MiniLM backbone), ``scan`` (stacked cross
attention), ``scan_model`` (SCAN's trainable model), ``scan_estimate`` (SCAN scores from raw cosines),
``losses``, ``evaluation``, ``training`` (``train`` / ``evaluate``), ``checkpoint``, ``embed``
(``write_image_embeddings`` / ``write_caption_embeddings``), ``grounded`` (zero-shot label-grounded
baseline), ``adapters`` (query encoders and the SCAN re-ranker that ``index`` searches with).

The package imports nothing heavy itself; the names below load their module on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "RetrievalModel": "regionrank.encoders.protocol",
    "create_encoder": "regionrank.encoders.registry",
    "list_models": "regionrank.encoders.registry",
    "alignment_scores": "regionrank.encoders.alignment",
    "TeranCfg": "regionrank.encoders.teran",
    "TeranModel": "regionrank.encoders.teran",
    "train": "regionrank.encoders.training",
    "evaluate": "regionrank.encoders.training",
    "write_image_embeddings": "regionrank.encoders.embed",
    "write_caption_embeddings": "regionrank.encoders.embed",
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

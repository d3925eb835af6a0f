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

from regionrank.storage.lazy import lazy_exports

_LAZY: dict[str, tuple[str, str]] = {
    "RetrievalModel": ("regionrank.encoders.protocol", "RetrievalModel"),
    "create_encoder": ("regionrank.encoders.registry", "create_encoder"),
    "list_models": ("regionrank.encoders.registry", "list_models"),
    "alignment_scores": ("regionrank.encoders.alignment", "alignment_scores"),
    "TeranCfg": ("regionrank.encoders.teran", "TeranCfg"),
    "TeranModel": ("regionrank.encoders.teran", "TeranModel"),
    "train": ("regionrank.encoders.training", "train"),
    "evaluate": ("regionrank.encoders.training", "evaluate"),
    "write_image_embeddings": ("regionrank.encoders.embed", "write_image_embeddings"),
    "write_caption_embeddings": ("regionrank.encoders.embed", "write_caption_embeddings"),
    "load_model": ("regionrank.encoders.checkpoint", "load_model"),
    "save_checkpoint": ("regionrank.encoders.checkpoint", "save_checkpoint"),
    "GroundedEncoder": ("regionrank.encoders.grounded", "GroundedEncoder"),
    "TeranQueryEncoder": ("regionrank.encoders.adapters", "TeranQueryEncoder"),
    "GroundedQueryEncoder": ("regionrank.encoders.adapters", "GroundedQueryEncoder"),
    "ScanReranker": ("regionrank.encoders.adapters", "ScanReranker"),
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

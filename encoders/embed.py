"""Encode region shards and captions with a trained model and write the embedding shards.

Owns the batched, no-grad encoding of :class:`~storage.records.RegionRecord` s and caption texts by a
``encoders.protocol.RetrievalModel`` (:func:`encode_region_records`, :func:`encode_texts`), and the
resumable store writers :func:`write_image_embeddings` / :func:`write_caption_embeddings` that skip ids
already stored.

What is stored (all L2-normalised, float16 on disk):

* TERAN images: the R region vectors (the reserved slot 0 removed), boxes kept, and the slot-0 output
  as the global vector. Captions: the word-piece vectors that the alignment uses (``[CLS]``/``[SEP]``
  removed and, with the config's ``reference_trim``, the last word-piece too) and ``[CLS]`` as global.
* SCAN images: the projected region vectors; no global vector (SCAN trains none). Captions: every
  token including ``<start>``/``<end>`` (they take part in SCAN's attention). The mean-pool baseline
  stores the normalised mean of its vectors as global, which is exactly what it scores with.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from regionrank.encoders.protocol import EncodedCaption, EncodedImage, RetrievalModel
from regionrank.storage import CaptionEmbeddingStore, ImageEmbeddingStore, RegionStore
from regionrank.storage.records import Caption, CaptionEmbeddingRecord, ImageEmbeddingRecord, RegionRecord

__all__ = [
    "EmbedReport",
    "encode_region_records",
    "encode_texts",
    "encoder_name",
    "resolve_model",
    "write_caption_embeddings",
    "write_image_embeddings",
]

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass
class EmbedReport:
    """What an encoding run did."""

    encoder: str
    encoder_hash: str
    total: int
    written: int
    skipped_existing: int
    seconds: float


def resolve_model(
    checkpoint_or_model: RetrievalModel | str | os.PathLike[str], *, device: torch.device | str = "cpu"
) -> RetrievalModel:
    """A model object as is (a torch model moved to ``device``), or the model of a checkpoint folder."""
    if isinstance(checkpoint_or_model, RetrievalModel):
        if isinstance(checkpoint_or_model, nn.Module):
            checkpoint_or_model.to(device)
        return checkpoint_or_model
    from regionrank.encoders.checkpoint import load_model

    return load_model(Path(checkpoint_or_model), device=device)


def encoder_name(model: RetrievalModel) -> str:
    """The name recorded in the embedding stores: the TERAN config name, ``scan-<direction>``, ..."""
    return model.encoder_name


@contextlib.contextmanager
def _eval_mode(model: RetrievalModel) -> Iterator[None]:
    """No grad, and eval mode for a torch model (its training mode is restored afterwards)."""
    with torch.no_grad():
        if not isinstance(model, nn.Module):
            yield
            return
        was_training = model.training
        model.eval()
        try:
            yield
        finally:
            model.train(was_training)


def encode_region_records(
    model: RetrievalModel, records: Sequence[RegionRecord], *, device: torch.device | str = "cpu"
) -> list[EncodedImage]:
    """Encode one batch of region records (eval mode, no grad).

    Returns:
        One :class:`EncodedImage` per record, with exactly ``record.num_regions`` region rows.
    """
    with _eval_mode(model):
        return model.embed_image_records(records, device=device)


def encode_texts(model: RetrievalModel, texts: Sequence[str], *, device: torch.device | str = "cpu") -> list[EncodedCaption]:
    """Encode one batch of caption texts (eval mode, no grad).

    Returns:
        One :class:`EncodedCaption` per text, its rows exactly those the model's scorer uses.

    Raises:
        ValueError: ``texts`` is empty.
    """
    if len(texts) == 0:
        raise ValueError("encode_texts needs at least one text")
    with _eval_mode(model):
        return model.embed_caption_texts(texts, device=device)


def check_store_owner(store: Any, ids: Sequence[str], encoder_hash: str) -> None:
    absent = set(store.missing(ids))
    other = [k for k in ids if k not in absent and store.producer_of(k) != encoder_hash]
    if other:
        raise ValueError(
            f"store {store.root} already holds {len(other)} of these ids encoded by another model "
            f"(e.g. {other[0]!r} by encoder_hash {store.producer_of(other[0])[:12]}...); write each model's "
            f"embeddings to its own store folder"
        )


def write_image_embeddings(
    checkpoint_or_model: RetrievalModel | str | os.PathLike[str],
    region_store: RegionStore | str | os.PathLike[str],
    out: ImageEmbeddingStore | str | os.PathLike[str],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    image_ids: Sequence[str] | None = None,
    rows_per_shard: int = 512,
    progress: Progress | None = None,
) -> EmbedReport:
    """Encode every image of a region store (or ``image_ids``) into image-embedding shards; resumable.

    Ids already in ``out`` are skipped, so an interrupted run resumes where it stopped.

    Args:
        checkpoint_or_model: a model (any ``encoders.protocol.RetrievalModel``, e.g. an
            ``encoders.grounded.GroundedEncoder``, whose device is its own) or a checkpoint folder.
        region_store: the region shards (store or path).
        out: the image-embedding store (store or path); one model per store.
        device: where the model runs.
        batch_size: images per forward pass.
        image_ids: restrict to these ids (default: all stored images).
        rows_per_shard: images per output shard.
        progress: ``progress(done, total)`` after each batch.

    Raises:
        ValueError: ``out`` holds ids written by another model; bad ``batch_size``.
        KeyError: an id of ``image_ids`` is not in the region store.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    start = time.perf_counter()
    model = resolve_model(checkpoint_or_model, device=device)
    regions = region_store if isinstance(region_store, RegionStore) else RegionStore(region_store)
    store = out if isinstance(out, ImageEmbeddingStore) else ImageEmbeddingStore(out)
    ids = list(dict.fromkeys(regions.ids() if image_ids is None else image_ids))
    name, digest = model.encoder_name, model.fingerprint()
    check_store_owner(store, ids, digest)

    def make(keys: list[str]) -> list[ImageEmbeddingRecord]:
        records = regions.get(keys)
        return [
            ImageEmbeddingRecord(
                image_id=rec.image_id,
                uri=rec.uri,
                boxes=rec.boxes,
                region_embeddings=enc.region_embeddings,
                global_embedding=enc.global_embedding,
                width=rec.width,
                height=rec.height,
                labels=enc.labels,
            )
            for rec, enc in zip(records, encode_region_records(model, records, device=device))
        ]

    todo = store.missing(ids)
    written = write_in_batches(store, (name, digest), model.embed_dim, todo, make, batch_size=batch_size, rows_per_shard=rows_per_shard,
                             progress=progress)
    return EmbedReport(name, digest, len(ids), written, len(ids) - len(todo), time.perf_counter() - start)


def write_in_batches(
    store: Any,
    encoder: tuple[str, str],
    embed_dim: int,
    todo: list[str],
    make: Callable[[list[str]], list[Any]],
    *,
    batch_size: int,
    rows_per_shard: int,
    progress: Progress | None,
) -> int:
    if not todo:
        return 0
    written = 0
    name, digest = encoder
    with store.writer(encoder=name, encoder_hash=digest, embed_dim=embed_dim, rows_per_shard=rows_per_shard) as w:
        for b0 in range(0, len(todo), batch_size):
            for record in make(todo[b0 : b0 + batch_size]):
                written += w.write(record)
            if progress is not None:
                progress(min(b0 + batch_size, len(todo)), len(todo))
    logger.info("encoded %d rows with %s into %s", written, name, store.root)
    return written


def write_caption_embeddings(
    checkpoint_or_model: RetrievalModel | str | os.PathLike[str],
    captions: Sequence[Caption],
    out: CaptionEmbeddingStore | str | os.PathLike[str],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    rows_per_shard: int = 2048,
    progress: Progress | None = None,
) -> EmbedReport:
    """Encode captions into caption-embedding shards keyed by ``caption_id``; resumable.

    Args:
        checkpoint_or_model: a model or a checkpoint folder.
        captions: the caption rows (``storage.read_caption_table`` / ``read_karpathy_json``).
        out: the caption-embedding store (store or path); one model per store.
        device / batch_size / rows_per_shard / progress: as in :func:`write_image_embeddings`.

    Raises:
        ValueError: duplicate caption ids, or ``out`` holds ids written by another model.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    start = time.perf_counter()
    by_id: dict[str, Caption] = {}
    for cap in captions:
        if cap.caption_id in by_id:
            raise ValueError(f"duplicate caption_id {cap.caption_id!r} (image {cap.image_id!r}); caption ids must be unique")
        by_id[cap.caption_id] = cap
    model = resolve_model(checkpoint_or_model, device=device)
    store = out if isinstance(out, CaptionEmbeddingStore) else CaptionEmbeddingStore(out)
    name, digest = model.encoder_name, model.fingerprint()
    ids = list(by_id)
    check_store_owner(store, ids, digest)

    def make(keys: list[str]) -> list[CaptionEmbeddingRecord]:
        chunk = [by_id[k] for k in keys]
        return [
            CaptionEmbeddingRecord(
                caption_id=cap.caption_id,
                image_id=cap.image_id,
                text=cap.text,
                tokens=enc.tokens,
                word_embeddings=enc.word_embeddings,
                global_embedding=enc.global_embedding,
            )
            for cap, enc in zip(chunk, encode_texts(model, [c.text for c in chunk], device=device))
        ]

    todo = store.missing(ids)
    written = write_in_batches(store, (name, digest), model.embed_dim, todo, make, batch_size=batch_size, rows_per_shard=rows_per_shard,
                             progress=progress)
    return EmbedReport(name, digest, len(ids), written, len(ids) - len(todo), time.perf_counter() - start)

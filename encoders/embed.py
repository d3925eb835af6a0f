"""Encode region shards and captions with a trained model and write the embedding shards.

Owns the batched, no-grad encoding of :class:`~storage.records.RegionRecord` s and caption texts by a
TERAN or SCAN model (:func:`encode_region_records`, :func:`encode_texts`), and the resumable writers
:func:`encode_images` / :func:`encode_captions` that skip ids already stored.

What is stored (all L2-normalised, float16 on disk):

* TERAN images: the R region vectors (the reserved slot 0 removed), boxes kept, and the slot-0 output
  as the global vector. Captions: the word-piece vectors that the alignment uses (``[CLS]``/``[SEP]``
  removed and, with the config's ``reference_trim``, the last word-piece too) and ``[CLS]`` as global.
* SCAN images: the projected region vectors; no global vector (SCAN trains none). Captions: every
  token including ``<start>``/``<end>`` (they take part in SCAN's attention). The mean-pool baseline
  stores the normalised mean of its vectors as global, which is exactly what it scores with.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from regionrank.encoders.checkpoint import model_hash, model_kind
from regionrank.storage import CaptionEmbeddingStore, ImageEmbeddingStore, RegionStore
from regionrank.storage.records import Caption, CaptionEmbeddingRecord, ImageEmbeddingRecord, RegionRecord

__all__ = [
    "EmbedReport",
    "EncodedCaption",
    "EncodedImage",
    "encode_captions",
    "encode_images",
    "encode_region_records",
    "encode_texts",
    "encoder_name",
    "resolve_model",
]

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass
class EncodedImage:
    """One encoded image: ``region_embeddings`` ``float32[n, E]`` and ``global_embedding`` ``float32[E]`` or None."""

    region_embeddings: np.ndarray
    global_embedding: np.ndarray | None


@dataclass
class EncodedCaption:
    """One encoded caption: ``tokens`` (one per row), ``word_embeddings`` ``float32[L, E]``, ``global_embedding``."""

    tokens: list[str]
    word_embeddings: np.ndarray
    global_embedding: np.ndarray | None


@dataclass
class EmbedReport:
    """What an encoding run did."""

    encoder: str
    encoder_hash: str
    total: int
    written: int
    skipped_existing: int
    seconds: float


def resolve_model(checkpoint_or_model: nn.Module | str | os.PathLike[str], *, device: torch.device | str = "cpu") -> nn.Module:
    """A model object as is (moved to ``device``), or the model of a checkpoint folder."""
    if isinstance(checkpoint_or_model, nn.Module):
        return checkpoint_or_model.to(device)
    from regionrank.encoders.checkpoint import load_model

    return load_model(Path(checkpoint_or_model), device=device)


def encoder_name(model: nn.Module) -> str:
    """The name recorded in the embedding stores: the TERAN config name, or ``scan-<direction>``."""
    kind = model_kind(model)
    if kind == "teran":
        return str(model.cfg.name)  # type: ignore[attr-defined]
    return f"{kind}-{model.cfg.direction}" if kind == "scan" else kind  # type: ignore[attr-defined]


@torch.no_grad()
def encode_region_records(
    model: nn.Module, records: Sequence[RegionRecord], *, device: torch.device | str = "cpu"
) -> list[EncodedImage]:
    """Encode one batch of region records (eval mode, no grad).

    Returns:
        One :class:`EncodedImage` per record, with exactly ``record.num_regions`` region rows.
    """
    from regionrank.encoders.teran import region_batch

    kind = model_kind(model)
    was_training = model.training
    model.eval()
    try:
        if kind == "teran":
            batch = region_batch(records).to(device)
            region_emb, glob = model.encode_regions(batch)  # type: ignore[attr-defined]
            region_emb, glob = region_emb.float().cpu().numpy(), glob.float().cpu().numpy()
            return [
                EncodedImage(region_emb[i, 1 : 1 + r.num_regions].copy(), glob[i].copy()) for i, r in enumerate(records)
            ]
        batch = region_batch(records, reserved_slot=False).to(device)
        emb = model.encode_images(batch.features)  # type: ignore[attr-defined]
        out = []
        for i, r in enumerate(records):
            vecs = emb[i, : r.num_regions].float()
            glob = F.normalize(vecs.mean(dim=0), dim=0).cpu().numpy() if kind == "scan-meanpool" else None
            out.append(EncodedImage(vecs.cpu().numpy(), glob))
        return out
    finally:
        model.train(was_training)


def teran_caption_rows(lengths: torch.Tensor, reference_trim: bool) -> list[slice]:
    """Rows of TERAN's word output that the alignment uses, per caption (see ``trim_for_alignment``)."""
    drop_tail = 2 if reference_trim else 1
    return [slice(1, max(1, int(n) - drop_tail)) for n in lengths]


@torch.no_grad()
def encode_texts(model: nn.Module, texts: Sequence[str], *, device: torch.device | str = "cpu") -> list[EncodedCaption]:
    """Encode one batch of caption texts (eval mode, no grad).

    Returns:
        One :class:`EncodedCaption` per text, its rows exactly those the model's scorer uses.

    Raises:
        ValueError: ``texts`` is empty.
    """
    if len(texts) == 0:
        raise ValueError("encode_texts needs at least one text")
    kind = model_kind(model)
    was_training = model.training
    model.eval()
    try:
        if kind == "teran":
            tokens = model.tokenize(texts).to(device)  # type: ignore[attr-defined]
            word_emb, glob = model.encode_text(tokens)  # type: ignore[attr-defined]
            word_emb, glob = word_emb.float().cpu().numpy(), glob.float().cpu().numpy()
            rows = teran_caption_rows(tokens.lengths, model.cfg.reference_trim)  # type: ignore[attr-defined]
            return [
                EncodedCaption(list(tokens.tokens[i][rows[i]]), word_emb[i, rows[i]].copy(), glob[i].copy())
                for i in range(len(texts))
            ]
        vocab = getattr(model, "vocab", None)
        if vocab is None:
            raise ValueError("this SCAN model has no vocabulary attached: set model.vocab or load it from a checkpoint")
        ids, lens = vocab.encode_batch(list(texts))
        emb = model.encode_captions(ids.to(device), lens)  # type: ignore[attr-defined]
        out = []
        for i in range(len(texts)):
            n = int(lens[i])
            vecs = emb[i, :n].float()
            glob = F.normalize(vecs.mean(dim=0), dim=0).cpu().numpy() if kind == "scan-meanpool" else None
            out.append(EncodedCaption([vocab.id_to_word(int(t)) for t in ids[i, :n]], vecs.cpu().numpy(), glob))
        return out
    finally:
        model.train(was_training)


def check_store_owner(store: Any, ids: Sequence[str], encoder_hash: str) -> None:
    absent = set(store.missing(ids))
    other = [k for k in ids if k not in absent and store.producer_of(k) != encoder_hash]
    if other:
        raise ValueError(
            f"store {store.root} already holds {len(other)} of these ids encoded by another model "
            f"(e.g. {other[0]!r} by encoder_hash {store.producer_of(other[0])[:12]}...); write each model's "
            f"embeddings to its own store folder"
        )


def encode_images(
    checkpoint_or_model: Any,
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
        checkpoint_or_model: a model, a checkpoint folder, or an ``encoders.grounded.GroundedEncoder``
            (then its own ``encode_images`` runs; ``device`` is the encoder's).
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
    if hasattr(checkpoint_or_model, "encode_record"):  # the label-grounded baseline encodes by itself
        return checkpoint_or_model.encode_images(  # type: ignore[union-attr]
            region_store, out, batch_size=batch_size, image_ids=image_ids, rows_per_shard=rows_per_shard,
            progress=progress,
        )
    start = time.perf_counter()
    model = resolve_model(checkpoint_or_model, device=device)
    regions = region_store if isinstance(region_store, RegionStore) else RegionStore(region_store)
    store = out if isinstance(out, ImageEmbeddingStore) else ImageEmbeddingStore(out)
    ids = list(dict.fromkeys(regions.ids() if image_ids is None else image_ids))
    name, digest = encoder_name(model), model_hash(model)
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
            )
            for rec, enc in zip(records, encode_region_records(model, records, device=device))
        ]

    todo = store.missing(ids)
    written = write_in_batches(store, (name, digest), _embed_dim(model), todo, make, batch_size=batch_size, rows_per_shard=rows_per_shard,
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


def _embed_dim(model: nn.Module) -> int:
    if model_kind(model) == "teran":
        return int(model.cfg.embed_dim)  # type: ignore[attr-defined]
    return int(model.cfg.embed_size)  # type: ignore[attr-defined]


def encode_captions(
    checkpoint_or_model: nn.Module | str | os.PathLike[str],
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
        device / batch_size / rows_per_shard / progress: as in :func:`encode_images`.

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
    name, digest = encoder_name(model), model_hash(model)
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
    written = write_in_batches(store, (name, digest), _embed_dim(model), todo, make, batch_size=batch_size, rows_per_shard=rows_per_shard,
                             progress=progress)
    return EmbedReport(name, digest, len(ids), written, len(ids) - len(todo), time.perf_counter() - start)

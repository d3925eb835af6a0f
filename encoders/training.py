"""Training and evaluation of TERAN and SCAN models from region shards and a caption table.

Owns :func:`train` (one explicit loop: AdamW, per-iteration LR schedule, gradient clipping, AMP on
GPU, a checkpoint every epoch, exact resume) and :func:`evaluate` (recall metrics from the SCAN
engineer's ``encoders.evaluation``, with similarities computed in bounded blocks).

Reproducibility: the model is built after ``torch.manual_seed(seed)``; the caption order of epoch e
is a permutation drawn from a private generator seeded with ``(seed, e)``; every checkpoint stores the
optimizer, scheduler and torch RNG states. Resuming from the checkpoint of epoch k therefore continues
bit-for-bit like an uninterrupted run (on the same device and thread count).

Schedules: TERAN steps the LR by ``lr_gamma`` every ``lr_step_epochs`` epochs (StepLR) and, with
``warmup_iters`` (Flickr30K: 1000), ramps it linearly over the first iterations; SCAN decays by 0.1
every ``lr_update`` epochs. Both run as one per-iteration ``LambdaLR`` so that the state is one
counter. The optimizer is AdamW with weight decay 0 (the references use Adam; identical updates).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from regionrank.encoders.checkpoint import checkpoint_dir, latest_checkpoint, load_model, load_trainer_state, save_checkpoint
from regionrank.encoders.embed import encode_region_records, encode_texts
from regionrank.encoders.protocol import EncodedCaption, EncodedImage, RetrievalModel
from regionrank.encoders.scan_model import ScanModel
from regionrank.encoders.teran import TeranModel
from regionrank.storage import RegionStore, read_caption_table
from regionrank.storage.records import Caption

__all__ = ["EpochReport", "TrainReport", "evaluate", "score_encoded", "train"]

logger = logging.getLogger(__name__)

@dataclass
class EpochReport:
    """One finished epoch: mean loss per iteration, LR at its end, validation metrics (or None)."""

    epoch: int
    loss: float
    iterations: int
    lr: float
    seconds: float
    val: dict[str, float] | None = None


@dataclass
class TrainReport:
    """What :func:`train` did: per-epoch reports (resumed epochs included) and the last checkpoint."""

    model: str
    out_dir: Path
    checkpoint: Path | None
    epochs: list[EpochReport] = field(default_factory=list)
    resumed_from_epoch: int = 0
    train_pairs: int = 0
    val_images: int = 0
    val_captions: int = 0


@dataclass(frozen=True)
class _Plan:
    name: str
    lr: float
    lr_step_epochs: int
    lr_gamma: float
    warmup_iters: int
    batch_size: int
    epochs: int
    grad_clip: float
    margin: float
    max_violation: bool


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def _load_captions(captions: Sequence[Caption] | str | os.PathLike[str]) -> list[Caption]:
    if isinstance(captions, (str, os.PathLike)):
        return read_caption_table(captions)
    out = list(captions)
    if out and not isinstance(out[0], Caption):
        raise TypeError(f"captions must be storage.records.Caption rows or a caption table path; got {type(out[0]).__name__}")
    return out


def _split_captions(
    captions: list[Caption],
    stored: set[str],
    *,
    train_split: str | Sequence[str] | None,
    val_split: str | float | None,
    val_max_images: int | None,
    seed: int,
) -> tuple[list[Caption], list[Caption]]:
    usable = [c for c in captions if c.image_id in stored]
    if len(usable) < len(captions):
        logger.warning("%d of %d captions point at images missing from the region store; ignored",
                       len(captions) - len(usable), len(captions))
    if not usable:
        raise ValueError("no caption points at an image of the region store; check that captions and shards share image ids")
    if isinstance(val_split, float):
        if not 0.0 < val_split < 1.0:
            raise ValueError(f"a float val_split is the held-out image fraction in (0, 1); got {val_split}")
        images = sorted({c.image_id for c in usable})
        order = np.random.default_rng(seed).permutation(len(images))
        held = {images[i] for i in order[: max(1, int(round(val_split * len(images))))]}
        val = [c for c in usable if c.image_id in held]
        rest = [c for c in usable if c.image_id not in held]
    elif isinstance(val_split, str):
        val = [c for c in usable if c.split == val_split]
        rest = [c for c in usable if c.split != val_split]
    else:
        val, rest = [], usable
    if train_split is not None:
        wanted = {train_split} if isinstance(train_split, str) else set(train_split)
        if any(c.split for c in rest):
            rest = [c for c in rest if c.split in wanted]
    if not rest:
        raise ValueError(
            f"no training captions left after selecting train_split={train_split!r} and val_split={val_split!r}; "
            f"splits present: {sorted({c.split for c in usable})}"
        )
    if val_max_images is not None and val:
        keep = set(list(dict.fromkeys(c.image_id for c in val))[:val_max_images])
        val = [c for c in val if c.image_id in keep]
    return rest, val


# --------------------------------------------------------------------------------------------------
# Model construction
# --------------------------------------------------------------------------------------------------


def _teran_plan(cfg: Any) -> _Plan:
    return _Plan(cfg.name, cfg.lr, cfg.lr_step_epochs, cfg.lr_gamma, cfg.warmup_iters, cfg.batch_size,
                 cfg.epochs, cfg.grad_clip, cfg.margin, cfg.max_violation)


def _scan_plan(name: str, train_cfg: Mapping[str, Any]) -> _Plan:
    return _Plan(name, float(train_cfg["lr"]), int(train_cfg["lr_step_epochs"]), float(train_cfg["lr_gamma"]),
                 int(train_cfg["warmup_iters"]), int(train_cfg["batch_size"]), int(train_cfg["epochs"]),
                 float(train_cfg["grad_clip"]), float(train_cfg["margin"]), bool(train_cfg["max_violation"]))


def _from_checkpoint(folder: Path) -> tuple[TeranModel | ScanModel, _Plan]:
    """The model of a checkpoint folder (e.g. written by ``regionrank import-model``) with its weights and
    vocabulary, trained on its TERAN config's schedule or SCAN's default one."""
    from regionrank.encoders.registry import SCAN_TRAIN_DEFAULTS

    model = load_model(folder)
    if isinstance(model, TeranModel):
        return model, _teran_plan(model.cfg)
    if not isinstance(model, ScanModel):
        raise TypeError(f"{folder} holds a {type(model).__name__}, which regionrank does not train")
    return model, _scan_plan(f"{model.kind}-{model.cfg.direction}", SCAN_TRAIN_DEFAULTS)


def _build(spec: Any, train_texts: Sequence[str], text_model_path: str | Path | None) -> tuple[TeranModel | ScanModel, _Plan]:
    from regionrank.encoders.registry import family_of_config, get_model_cfg, load_scan_spec, load_teran_cfg
    from regionrank.encoders.teran import build_text_backbone
    from regionrank.encoders.vocab import build_vocab

    if isinstance(spec, (str, os.PathLike)) and (Path(spec) / "model_config.json").is_file():
        return _from_checkpoint(Path(spec))
    data: Any = get_model_cfg(spec) if isinstance(spec, str) else spec
    if issubclass(family_of_config(data), TeranModel):
        cfg = load_teran_cfg(data)
        tokenizer, text_model = build_text_backbone(cfg, text_model_path)
        return TeranModel(cfg, text_model, tokenizer), _teran_plan(cfg)
    scan = load_scan_spec(data)
    train_cfg = scan.train
    vocab = build_vocab(train_texts, threshold=int(train_cfg["vocab_threshold"]))
    model = scan.family(**{**scan.arch, "vocab_size": len(vocab)})
    model.vocab = vocab
    return model, _scan_plan(scan.name, train_cfg)


def _batch_loss(model: TeranModel | ScanModel, plan: _Plan, records: list[Any], texts: list[str], device: torch.device) -> torch.Tensor:
    from regionrank.encoders.losses import contrastive_loss
    from regionrank.encoders.teran import region_batch

    if isinstance(model, TeranModel):
        return model.loss(model(region_batch(records).to(device), model.tokenize(texts).to(device)))
    if not isinstance(model, ScanModel) or model.vocab is None:
        raise TypeError(f"cannot train a {type(model).__name__}; train a TERAN or SCAN model")
    batch = region_batch(records, reserved_slot=False).to(device)
    ids, lens = model.vocab.encode_batch(texts)
    scores = model(batch.features, batch.lengths, ids.to(device), lens)
    return contrastive_loss(scores, margin=plan.margin, max_violation=plan.max_violation)


def _lr_factor(plan: _Plan, iters_per_epoch: int) -> Callable[[int], float]:
    def factor(it: int) -> float:
        warm = min(1.0, (it + 1) / plan.warmup_iters) if plan.warmup_iters > 0 else 1.0
        epoch = it // max(1, iters_per_epoch)
        return warm * plan.lr_gamma ** (epoch // max(1, plan.lr_step_epochs))

    return factor


# --------------------------------------------------------------------------------------------------
# Scoring encoded collections (validation, evaluation)
# --------------------------------------------------------------------------------------------------


def _pad(mats: Sequence[np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
    lens = np.array([m.shape[0] for m in mats], dtype=np.int64)
    out = np.zeros((len(mats), max(1, int(lens.max(initial=0))), dim), dtype=np.float32)
    for i, m in enumerate(mats):
        out[i, : m.shape[0]] = m
    return out, lens


def score_encoded(
    model: RetrievalModel, images: Sequence[EncodedImage], captions: Sequence[EncodedCaption], *, device: torch.device | str = "cpu"
) -> np.ndarray:
    """Scores ``float32[n_image, n_caption]`` of already-encoded images and captions with the model's scorer.

    The model's ``score_encoded`` (TERAN: pooled alignment; SCAN: cross attention, or mean pooling for
    the baseline).
    """
    dim = images[0].region_embeddings.shape[1]
    regions, rlens = _pad([im.region_embeddings for im in images], dim)
    words, wlens = _pad([c.word_embeddings for c in captions], dim)
    with torch.no_grad():
        s = model.score_encoded(torch.from_numpy(regions).to(device), torch.from_numpy(rlens),
                                torch.from_numpy(words).to(device), torch.from_numpy(wlens))
    return s.float().cpu().numpy()


def _encode_collection(
    model: RetrievalModel, store: RegionStore, image_ids: Sequence[str], texts: Sequence[str], device: torch.device, batch_size: int
) -> tuple[list[EncodedImage], list[EncodedCaption]]:
    images: list[EncodedImage] = []
    for b0 in range(0, len(image_ids), batch_size):
        images.extend(encode_region_records(model, store.get(list(image_ids[b0 : b0 + batch_size])), device=device))
    caps: list[EncodedCaption] = []
    for b0 in range(0, len(texts), 4 * batch_size):
        caps.extend(encode_texts(model, list(texts[b0 : b0 + 4 * batch_size]), device=device))
    return images, caps


def _metrics(
    model: RetrievalModel,
    store: RegionStore,
    captions: Sequence[Caption],
    device: torch.device,
    batch_size: int,
    *,
    protocol: str | None = None,
    image_block: int = 128,
    caption_block: int = 1024,
    save_sims: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    from regionrank.encoders import evaluation

    image_ids = list(dict.fromkeys(c.image_id for c in captions))
    if protocol is not None:
        per_image: dict[str, list[Caption]] = {i: [] for i in image_ids}
        for c in captions:
            per_image[c.image_id].append(c)
        short = [i for i, cs in per_image.items() if len(cs) < 5]
        if short:
            raise ValueError(f"protocol {protocol!r} needs 5 captions per image; {len(short)} images have fewer (e.g. {short[0]!r})")
        captions = [c for i in image_ids for c in per_image[i][:5]]  # the first 5, as the references use
    row = {i: k for k, i in enumerate(image_ids)}
    mapping = np.array([row[c.image_id] for c in captions], dtype=np.int64)
    images, caps = _encode_collection(model, store, image_ids, [c.text for c in captions], device, batch_size)

    def scorer(ib: np.ndarray, cb: np.ndarray) -> np.ndarray:
        return score_encoded(model, [images[i] for i in ib], [caps[c] for c in cb], device=device)

    sims: Any = scorer  # a protocol without save_sims scores its fold blocks only
    if protocol is None or save_sims is not None:
        sims = evaluation.blockwise_similarity(scorer, np.arange(len(images)), np.arange(len(caps)),
                                               image_block=image_block, caption_block=caption_block)
        if save_sims is not None:  # [images, captions] in the split's order, as the reference evaluations compute it
            np.save(Path(save_sims), sims)
    if protocol is not None:
        return evaluation.evaluate_protocol(sims, protocol, image_block=image_block, caption_block=caption_block)  # type: ignore[arg-type]
    return evaluation.evaluate(sims, caption_image=mapping)


def _flat(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {f"{d}_{k}": float(metrics[d][k]) for d in ("i2t", "t2i") for k in ("r1", "r5", "r10", "medr", "meanr")}
    out["rsum"] = float(metrics["rsum"])
    return out


# --------------------------------------------------------------------------------------------------
# train / evaluate
# --------------------------------------------------------------------------------------------------


def train(
    model_name_or_cfg: Any,
    region_root: RegionStore | str | os.PathLike[str],
    captions: Sequence[Caption] | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    resume: bool = True,
    train_split: str | Sequence[str] | None = ("train", "restval"),
    val_split: str | float | None = "val",
    val_max_images: int | None = 1000,
    amp: bool = True,
    text_model_path: str | Path | None = None,
    keep_last: int | None = None,
    progress: Callable[[EpochReport], None] | None = None,
) -> TrainReport:
    """Train a TERAN or SCAN model on region shards + captions; checkpoint every epoch; resume exactly.

    Every caption is one training pair (its image's regions, its text), as in the references; a batch
    of B pairs gives a B x B score matrix and the hinge loss with the config's margin / max-violation.

    Args:
        model_name_or_cfg: a registry name (``teran-coco``, ``teran-f30k``, ``teran-tiny``), a checkpoint
            folder to start from (its weights, config and vocabulary, e.g. from ``regionrank import-model``), a
            ``TeranCfg``, a ``ScanCfg`` (its ``vocab_size`` is replaced by the vocabulary built from the
            training captions) or a mapping with ``"kind": "teran" | "scan" | "scan-meanpool"``.
        region_root: the region store (or its path).
        captions: caption rows or a caption table path (``storage.write_caption_table``).
        out_dir: checkpoints go to ``out_dir/epoch-NNNN``.
        epochs / batch_size / lr: override the config's defaults.
        seed: seeds model init, data order and dropout.
        device: ``"cpu"`` or ``"cuda[:N]"``; bf16 autocast runs on CUDA when ``amp``.
        resume: continue from the latest checkpoint in ``out_dir`` (its config must match).
        train_split: caption splits trained on (ignored when captions carry no split).
        val_split: a split name, a held-out image fraction (float), or None (no validation).
        val_max_images: validate on at most this many images (the first ones) to bound the cost.
        text_model_path: TERAN: a local BERT folder overriding the config's backbone.
        keep_last: keep only this many newest epoch checkpoints (None keeps all).
        progress: called with each :class:`EpochReport`.

    Returns:
        A :class:`TrainReport` with per-epoch loss and validation R@K.

    Raises:
        ValueError: no usable captions, a config mismatch on resume, bad numeric arguments.
    """
    dev = torch.device(device)
    store = region_root if isinstance(region_root, RegionStore) else RegionStore(region_root)
    rows = _load_captions(captions)
    train_caps, val_caps = _split_captions(rows, set(store.ids()), train_split=train_split, val_split=val_split,
                                           val_max_images=val_max_images, seed=seed)
    torch.manual_seed(seed)
    model, plan = _build(model_name_or_cfg, [c.text for c in train_caps], text_model_path)
    plan = dataclasses.replace(plan, epochs=epochs if epochs is not None else plan.epochs,
                               batch_size=batch_size if batch_size is not None else plan.batch_size,
                               lr=lr if lr is not None else plan.lr)
    if plan.epochs < 1 or plan.batch_size < 2 or plan.lr <= 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 2 and lr > 0; got {plan.epochs}, {plan.batch_size}, {plan.lr}")
    feat_dim = store.feature_dim
    want_dim = model.feature_dim
    if feat_dim is not None and feat_dim != want_dim:
        raise ValueError(
            f"the region store holds {feat_dim}-d features but {plan.name!r} expects {want_dim}-d; "
            f"set feature_dim/img_dim in the config to {feat_dim}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    iters_per_epoch = math.ceil(len(train_caps) / plan.batch_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=plan.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(plan, iters_per_epoch))
    report = TrainReport(model=plan.name, out_dir=out, checkpoint=None, train_pairs=len(train_caps),
                         val_images=len({c.image_id for c in val_caps}), val_captions=len(val_caps))
    start_epoch = 0
    latest = latest_checkpoint(out) if resume else None
    if latest is not None:
        from regionrank.encoders.checkpoint import model_config

        restored = load_model(latest)
        if model_config(restored) != model_config(model):
            raise ValueError(
                f"{latest} was trained with a different model config; use another out_dir or resume=False"
            )
        model.load_state_dict(restored.state_dict())
        if isinstance(model, ScanModel) and isinstance(restored, ScanModel):
            model.vocab = restored.vocab
        state = load_trainer_state(latest)
        if state is None:
            raise ValueError(f"{latest} has no trainer state to resume from; use resume=False")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if dev.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], dev)
        start_epoch = int(state["epoch"])
        report.epochs = [EpochReport(**h) for h in state["history"]]
        report.resumed_from_epoch = start_epoch
        report.checkpoint = latest
        logger.info("resumed %s from %s (epoch %d)", plan.name, latest, start_epoch)
    model.to(dev)
    pairs_img = [c.image_id for c in train_caps]
    pairs_txt = [c.text for c in train_caps]
    use_amp = amp and dev.type == "cuda"
    for epoch in range(start_epoch, plan.epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_caps), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
        total, n_iter = 0.0, 0
        for b0 in range(0, len(order), plan.batch_size):
            idx = order[b0 : b0 + plan.batch_size]
            if len(idx) < 2:
                scheduler.step()  # keep the per-iteration schedule aligned with iters_per_epoch
                continue
            records = store.get([pairs_img[i] for i in idx])
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = _batch_loss(model, plan, records, [pairs_txt[i] for i in idx], dev)
            optimizer.zero_grad(set_to_none=True)
            loss.float().backward()
            if plan.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), plan.grad_clip)
            optimizer.step()
            scheduler.step()
            total += float(loss.detach())
            n_iter += 1
        val = None
        if val_caps:
            model.eval()
            val = _flat(_metrics(model, store, val_caps, dev, batch_size=64))
        rep = EpochReport(epoch=epoch + 1, loss=total / max(1, n_iter), iterations=n_iter,
                          lr=float(optimizer.param_groups[0]["lr"]), seconds=time.perf_counter() - t0, val=val)
        report.epochs.append(rep)
        state = {
            "epoch": epoch + 1,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "history": [dataclasses.asdict(e) for e in report.epochs],
            "seed": seed,
        }
        if dev.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(dev)
        report.checkpoint = save_checkpoint(checkpoint_dir(out, epoch + 1), model, trainer_state=state)
        if keep_last is not None:
            _prune(out, keep_last)
        logger.info("epoch %d/%d loss %.4f %s", epoch + 1, plan.epochs, rep.loss, val or "")
        if progress is not None:
            progress(rep)
    model.eval()
    return report


def _prune(out: Path, keep_last: int) -> None:
    import shutil

    done = sorted(p for p in out.iterdir() if p.is_dir() and p.name.startswith("epoch-") and not p.name.endswith((".tmp", ".old")))
    for old in done[: max(0, len(done) - max(1, keep_last))]:
        shutil.rmtree(old)


def evaluate(
    checkpoint: RetrievalModel | str | os.PathLike[str],
    region_root: RegionStore | str | os.PathLike[str],
    captions: Sequence[Caption] | str | os.PathLike[str],
    *,
    split: str | None = "test",
    protocol: str | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    image_block: int = 128,
    caption_block: int = 1024,
    save_sims: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Retrieval metrics of a model on one caption split, with similarities in bounded blocks.

    Args:
        checkpoint: a checkpoint folder (or training output folder) or a model.
        region_root: the region store (or path).
        captions: caption rows or a caption table path.
        split: evaluate the captions of this split (None: all) whose images are in the store.
        protocol: None (all images vs all their captions), or ``"coco1k"`` / ``"coco5k"`` /
            ``"f30k1k"`` (the first 5 captions of each image in the layout those protocols need).
        device / batch_size: encoding.
        image_block / caption_block: block sizes of the score matrix.
        save_sims: also write the whole ``float32[n_image, n_caption]`` score matrix here (``np.save``),
            rows in the order images first appear among the captions, columns in caption order.

    Returns:
        ``encoders.evaluation.evaluate`` (or ``evaluate_protocol``) output: ``i2t``/``t2i`` dicts with
        r1, r5, r10, medr, meanr, and ``rsum``.

    Raises:
        ValueError: no captions of ``split`` point at stored images; a protocol size mismatch.
    """
    from regionrank.encoders.embed import resolve_model

    dev = torch.device(device)
    model = resolve_model(checkpoint, device=dev).eval()
    store = region_root if isinstance(region_root, RegionStore) else RegionStore(region_root)
    stored = set(store.ids())
    rows = [c for c in _load_captions(captions) if (split is None or c.split == split) and c.image_id in stored]
    if not rows:
        raise ValueError(f"no captions of split {split!r} point at images of the region store {store.root}")
    return _metrics(model, store, rows, dev, batch_size, protocol=protocol, image_block=image_block,
                    caption_block=caption_block, save_sims=save_sims)

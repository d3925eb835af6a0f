"""Real-photo evaluation: text→image and image→text R@K on the coco-mini photos, three zero-shot modes.

Data: ``../shared/data/coco-mini`` (239 real COCO photos x 5 human captions, Karpathy JSON; never
copied into the repository). Regions come from ``ssd-mobilenet-coco`` (``extractors.extract`` into a
fresh region store; its detection + feature throughput is reported as ``images_per_s``). Modes, each
a full ``[n_image, n_caption]`` score matrix evaluated with ``encoders.evaluation`` (caption→image
map, every image a gallery item):

* ``grounded``: :class:`encoders.grounded.GroundedEncoder` as the product runs it (contextual mode):
  region vectors = each label's contextual token states in the image's label-bag sentence ("a photo
  of two people and a dog"), the scene box = that sentence's vector; query word vectors = the caption's
  contextual MiniLM token states per word, stop words dropped (``--keep-stopwords`` keeps them).
  Exhaustive TERAN MrSw (``encoders.teran.alignment_scores``). Every image is padded with at least one
  zero region, so every word's maximum is ``max(best region cosine, 0)`` (TERAN's zero fill applied to
  all images alike).
* ``grounded_scan``: ``grounded`` + SCAN t2i stacked cross attention (``encoders.scan.xattn_scores``
  with :class:`encoders.adapters.ScanReranker`'s defaults: clipped_l2norm, λ1 9, LogSumExp λ2 6) over
  the same embeddings, re-ranking the top ``--rerank-k`` MrSw candidates of each query; the
  candidates past K keep their MrSw order below the re-ranked ones, as ``index.Searcher`` does. The
  fusion (``"scan"`` only, or ``index.search.fuse_scores``'s weighted sum
  ``w * scan + (1 - w) * MrSw / n_words``) is **chosen on the ``val`` captions** by t2i R@1 (then
  R@5, R@10) and reported on all captions. Image→text uses the same fused matrix, each image
  re-ranking its own top-K MrSw captions.
* ``labelbag``: :class:`encoders.labelbag.LabelBagEncoder`, the sentence embedding of the image's
  label bag (detections with score > 0.4, scene box excluded) vs the caption's. The quoted reference
  (t2i R@1 0.39, R@5 0.70, R@10 0.79) matches this baseline on a gallery of the 159 val2017 images
  (0.404 / 0.736 / 0.801); over all 239 images it gives 0.340 / 0.689 / 0.758 (see ``encoders.labelbag``).

Measured (``python -m bench.real --json``, all 239 images, 1,195 captions), t2i R@1/5/10: grounded
0.375/0.713/0.796, grounded_scan 0.383/0.706/0.804 (fusion weighted:0.25 chosen on val), labelbag
0.340/0.689/0.758; diagnostics: grounded_static 0.236, labelbag_natural 0.360, grounded_f1 0.353;
with ``--keep-stopwords`` grounded 0.385 and grounded_scan 0.381 (val prefers dropping: 0.430 vs 0.403
after re-ranking).

Diagnostics are reported beside them (keys ``grounded_static_*``, ``grounded_f1_*``, ``labelbag_natural_*``):

* ``grounded_static``: MrSw of the encoder's static mode (``contextual=False``: every label and query
  word embedded on its own), the previous ``grounded`` mode. Query words go through
  :func:`encoders.labelbag.normalize_query_text` first (COCO synonyms such as "man" -> "person",
  plurals such as "dogs" -> "dog"; ``--no-normalize`` turns it off) and, optionally, a filter that
  drops words whose best cosine with any label is below ``--min-label-cos``; the threshold is
  **chosen on the ``val`` captions** from ``LABEL_COS_GRID`` (0 = no filter; ``--quick`` uses 0).
* ``grounded_f1``: a BERTScore-style F1 of greedy word/region matching over each image's *distinct*
  labels (see :class:`GroundedScores`) on the ``grounded`` embeddings.
* ``labelbag_natural``: the label-bag baseline with the English bag sentence
  (``LabelBagEncoder(text_format="natural")``), a stronger variant of ``labelbag``.

A TERAN learning sanity check follows in the full run (``--teran-epochs 0`` skips it): ``teran-tiny``
with ``feature_dim`` 1280 trained by ``encoders.training.train`` on the 80 ``train`` images (400
captions), validated each epoch on ``val`` and evaluated on ``test`` before and after training.

Usage::

    python -m bench.real --quick --json         # a 32-image subset, < 1 min on 2 CPU cores
    python -m bench.real                        # all 239 images + the TERAN check (a few minutes)
    python -m bench.real --data DIR --regions /tmp/coco-mini-regions   # keep/reuse the region store

Recalls are fractions in [0, 1] (``encoders.evaluation`` gives percent; divided by 100 here).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from regionrank.encoders.evaluation import i2t, t2i  # noqa: E402
from regionrank.storage import Caption, ImageEmbeddingRecord, RegionRecord, RegionStore, read_karpathy_json  # noqa: E402

DETECTOR = "ssd-mobilenet-coco"
MODES = ("grounded", "grounded_scan", "labelbag")
EXTRA_MODES = ("grounded_static", "grounded_f1", "labelbag_natural")  # diagnostics, see the module docstring
FUSIONS: tuple[tuple[str, float], ...] = (("scan", 1.0), ("weighted", 0.25), ("weighted", 0.5), ("weighted", 0.75))
LABEL_COS_GRID = (0.0, 0.5, 0.6, 0.7)
QUICK_IMAGES = 32

logger = logging.getLogger("bench.real")


def default_data_dir() -> Path:
    """``<repo>/../shared/data/coco-mini`` (the shared test data; never inside the repository)."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco-mini"


# --------------------------------------------------------------------------------------------------
# Data and regions
# --------------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """Images (rows of every score matrix) and their captions (columns), in the JSON's order."""

    image_ids: list[str]
    paths: list[Path]
    splits: list[str]
    captions: list[Caption]
    caption_image: np.ndarray  # int64[n_caption]: row of each caption's image


def load_dataset(data: Path, *, n_images: int | None = None) -> Dataset:
    """Read ``dataset_coco_mini.json`` (image ids = sha256 of the files, as the region store's).

    Args:
        data: the coco-mini folder (``dataset_coco_mini.json`` and ``images/``).
        n_images: keep an evenly spaced subset of this many images (all splits represented).

    Raises:
        FileNotFoundError: the folder, the JSON or an image is missing.
    """
    json_path, images = data / "dataset_coco_mini.json", data / "images"
    if not json_path.is_file() or not images.is_dir():
        raise FileNotFoundError(
            f"{data} is not the coco-mini folder (needs dataset_coco_mini.json and images/); pass --data DIR"
        )
    captions = read_karpathy_json(json_path, images_root=images)
    order: dict[str, Caption] = {}
    for c in captions:
        order.setdefault(c.image_id, c)
    ids = list(order)
    if n_images is not None and n_images < len(ids):
        ids = [ids[i] for i in np.linspace(0, len(ids) - 1, n_images).round().astype(int)]
    row = {image_id: i for i, image_id in enumerate(ids)}
    kept = [c for c in captions if c.image_id in row]
    return Dataset(
        image_ids=ids,
        paths=[images / order[i].filename for i in ids],
        splits=[order[i].split for i in ids],
        captions=kept,
        caption_image=np.array([row[c.image_id] for c in kept], dtype=np.int64),
    )


def extract_regions(ds: Dataset, store_dir: Path, *, device: str, num_workers: int, batch_size: int) -> tuple[list[RegionRecord], dict[str, Any]]:
    """Run ``ssd-mobilenet-coco`` on the dataset's images into ``store_dir``; records in dataset order.

    Returns:
        The records and timing facts: ``images_per_s`` (newly extracted images per second of the
        ``extract`` run, model loading excluded; ``None`` when every image was already stored),
        ``load_s``, ``extract_s``, ``n_extracted``, ``stage_seconds``.
    """
    from regionrank.extractors import extract, get_detector

    t0 = time.perf_counter()
    det = get_detector(DETECTOR, device=device)
    load_s = time.perf_counter() - t0
    store = RegionStore(store_dir)
    rep = extract([str(p) for p in ds.paths], store, detector=det, num_workers=num_workers, batch_size=batch_size)
    if rep.n_failed:
        raise RuntimeError(f"{rep.n_failed} coco-mini images failed to extract: {rep.failures[:3]}")
    records = store.get(ds.image_ids)
    facts = {
        "images_per_s": rep.n_extracted / rep.seconds if rep.n_extracted else None,
        "load_s": load_s,
        "extract_s": rep.seconds,
        "n_extracted": rep.n_extracted,
        "stage_seconds": dict(rep.stage_seconds),
    }
    return records, facts


# --------------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------------


def _pad(mats: Sequence[np.ndarray], width: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    out = np.zeros((len(mats), width, dim), dtype=np.float32)
    lens = np.zeros(len(mats), dtype=np.int64)
    for i, m in enumerate(mats):
        out[i, : m.shape[0]] = m
        lens[i] = m.shape[0]
    return out, lens


def grounded_query_words(encoder: Any, text: str, *, normalize: bool = True, min_label_cos: float = 0.0) -> list[str]:
    """The words a caption is matched with: normalised onto the labels, then kept if some label is near.

    ``normalize``: :func:`encoders.labelbag.normalize_query_text` first (synonyms, plurals).
    ``min_label_cos``: drop the content words whose best cosine with any label is below it (colour
    and verb words that no detector label names); a query left without words keeps them all. 0 keeps
    every word (the encoder's own ``query_words``).
    """
    from regionrank.encoders.labelbag import normalize_query_text

    words = encoder.query_words(normalize_query_text(text, encoder.label_names.values()) if normalize else text)
    if min_label_cos <= 0 or not words:
        return words
    labels = sorted(set(encoder.label_names.values()))
    best = (encoder.embed_phrases(words) @ encoder.embed_phrases(labels).T).max(axis=1)
    return [w for w, b in zip(words, best, strict=True) if b >= min_label_cos] or words


@dataclass
class GroundedScores:
    """Exhaustive scores of the label-grounded embeddings: ``float32[n_image, n_caption]`` each.

    ``f1`` is a diagnostic, not one of the three modes: BERTScore-style F1 of greedy matching between
    the query words and the image's *distinct* labels (scene box excluded): recall = MrSw / n_words,
    precision = MwSr / n_labels, both on cosines clipped at 0. Unlike MrSw it penalises labels the
    caption does not mention, so crowded images stop winning every query.
    """

    mrsw: np.ndarray
    scan: np.ndarray
    f1: np.ndarray
    n_words: np.ndarray  # int64[n_caption]: words per query


def _distinct_label_vectors(image: ImageEmbeddingRecord) -> np.ndarray:
    """The region vector of each distinct label of an image (first region of each), scene boxes excluded."""
    labels = image.labels or []
    first = {lab: i for i, lab in reversed(list(enumerate(labels))) if lab != "scene"}
    rows = sorted(first.values()) or list(range(min(1, image.num_regions)))
    return image.region_embeddings[rows].astype(np.float32)


def grounded_scores(
    encoder: Any,
    images: Sequence[ImageEmbeddingRecord],
    queries: Sequence[np.ndarray],
    *,
    with_scan: bool = True,
    scan_options: dict[str, Any] | None = None,
) -> GroundedScores:
    """MrSw, SCAN t2i and the F1 diagnostic for every (image, caption) pair over the grounded embeddings.

    Args:
        encoder: a :class:`encoders.grounded.GroundedEncoder`.
        images: its image records (``encoder.encode_record``), the rows.
        queries: the word vectors ``float32[W_c, H]`` of each caption (columns), e.g.
            ``encoder.encode_query(text).word_embeddings``.
        with_scan: compute the SCAN matrix (else ``scan`` is all zeros).
        scan_options: ``xattn_scores`` options (default: ``ScanReranker``'s, SCAN t-i LSE).
    """
    from regionrank.encoders.scan import xattn_scores
    from regionrank.encoders import alignment_scores

    queries = [np.asarray(q, np.float32) for q in queries]
    dim = encoder.embed_dim
    regions, region_lens = _pad([im.region_embeddings.astype(np.float32) for im in images],
                                max(im.num_regions for im in images) + 1, dim)  # +1: a zero region for all
    words, word_lens = _pad(queries, max(len(q) for q in queries) + 1, dim)  # +1: a zero word for all (F1)
    mrsw = alignment_scores(regions, np.full(len(images), regions.shape[1]), words, word_lens, pooling="MrSw")
    opts = {"raw_feature_norm": "clipped_l2norm", "agg_func": "LogSumExp", "lambda_softmax": 9.0, "lambda_lse": 6.0}
    opts.update(scan_options or {})
    scan = np.zeros_like(mrsw)
    if with_scan:
        with torch.no_grad():
            scan = xattn_scores(torch.from_numpy(regions), torch.from_numpy(words), word_lens, direction="t2i",
                                region_lens=np.maximum(region_lens, 1), **opts).numpy()
    distinct = [_distinct_label_vectors(im) for im in images]
    lab_emb, lab_lens = _pad(distinct, max(map(len, distinct)) + 1, dim)
    full_words = np.full(len(queries), words.shape[1])
    recall = alignment_scores(lab_emb, np.full(len(images), lab_emb.shape[1]), words, word_lens, pooling="MrSw") / word_lens[None, :]
    precision = alignment_scores(lab_emb, lab_lens, words, full_words, pooling="MwSr") / np.maximum(lab_lens, 1)[:, None]
    f1 = 2 * recall * precision / np.maximum(recall + precision, 1e-12)
    return GroundedScores(mrsw=np.asarray(mrsw, np.float32), scan=scan.astype(np.float32),
                          f1=f1.astype(np.float32), n_words=word_lens)


def fuse(gs: GroundedScores, fusion: str, weight: float) -> np.ndarray:
    """``regionrank.index.fuse_scores`` applied to every caption column (``float32[n_image, n_caption]``)."""
    from regionrank.index import fuse_scores

    out = np.empty_like(gs.mrsw)
    for c in range(gs.mrsw.shape[1]):
        out[:, c] = fuse_scores(gs.mrsw[:, c], gs.scan[:, c], int(gs.n_words[c]), fusion=fusion, weight=weight)  # type: ignore[arg-type]
    return out


def rerank_top_k(first: np.ndarray, final: np.ndarray, k: int, *, axis: int) -> np.ndarray:
    """Two-stage ranking as a score matrix: the top ``k`` of ``first`` along ``axis`` by ``final``.

    For each query (a column for ``axis=0``: a caption ranking images; a row for ``axis=1``), the
    ``k`` best candidates by ``first`` (stable on ties) keep their ``final`` score; the others are
    placed below all of them in ``first`` order (``min(final top-k) - 1 - j``), as ``index.Searcher``
    does with the candidates it does not re-rank.

    Args:
        first, final: ``float[n_image, n_caption]`` stage-1 and re-ranked scores.
        k: candidates re-ranked per query (>= 1).
        axis: 0 ranks images per caption (t2i), 1 ranks captions per image (i2t).

    Returns:
        ``float64[n_image, n_caption]`` whose ranking along ``axis`` is the two-stage ranking.
    """
    if k < 1:
        raise ValueError(f"rerank k must be >= 1; got {k}")
    f = np.moveaxis(np.asarray(first, np.float64), axis, -1)  # [queries, candidates]
    g = np.moveaxis(np.asarray(final, np.float64), axis, -1)
    out = np.empty_like(g)
    for q in range(f.shape[0]):
        order = np.argsort(-f[q], kind="stable")
        top, rest = order[:k], order[k:]
        out[q, top] = g[q, top]
        out[q, rest] = g[q, top].min() - 1.0 - np.arange(rest.size)
    return np.moveaxis(out, -1, axis)


def recalls(sims: np.ndarray, caption_image: np.ndarray, *, columns: np.ndarray | None = None) -> dict[str, float]:
    """t2i R@1/5/10, i2t R@1/5/10 (fractions) and t2i median rank of a score matrix.

    ``columns`` restricts the caption queries of t2i (all images stay in the gallery); i2t always
    uses every caption.
    """
    cols = np.arange(sims.shape[1]) if columns is None else columns
    a = t2i(sims[:, cols], caption_image=caption_image[cols])
    b = i2t(sims, caption_image=caption_image)
    out = {f"t2i_r{k}": a[f"r{k}"] / 100.0 for k in (1, 5, 10)}
    out.update({f"i2t_r{k}": b[f"r{k}"] / 100.0 for k in (1, 5, 10)})
    out["t2i_medr"] = a["medr"]
    return out


# --------------------------------------------------------------------------------------------------
# TERAN sanity check
# --------------------------------------------------------------------------------------------------


def teran_sanity(store_dir: Path, captions: Sequence[Caption], out_dir: Path, *, epochs: int, device: str) -> dict[str, Any]:
    """Train ``teran-tiny`` (feature_dim 1280) on the ``train`` split, evaluate on ``test`` before and after.

    Returns:
        ``before`` / ``after`` (t2i and i2t R@1/5/10 in percent on ``test``), ``curve`` (per epoch: loss,
        val t2i R@1/R@5), ``train_pairs``, ``seconds``.
    """
    from regionrank.encoders import create_encoder, evaluate, train
    from regionrank.encoders.registry import load_teran_cfg

    cfg = load_teran_cfg("teran-tiny").replace(feature_dim=1280)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    untrained = create_encoder(cfg)
    before = evaluate(untrained, store_dir, list(captions), split="test", device=device)
    report = train(cfg, store_dir, list(captions), out_dir, epochs=epochs, device=device, seed=0, resume=False,
                   train_split="train", val_split="val", keep_last=1, amp=False)
    after = evaluate(report.checkpoint, store_dir, list(captions), split="test", device=device)

    def brief(m: dict[str, Any]) -> dict[str, float]:
        return {f"{d}_r{k}": float(m[d][f"r{k}"]) for d in ("t2i", "i2t") for k in (1, 5, 10)}

    curve = [{"epoch": e.epoch, "loss": round(e.loss, 4), **({k: round(v, 2) for k, v in (e.val or {}).items()
                                                             if k in ("t2i_r1", "t2i_r5", "rsum")})}
             for e in report.epochs]  # fmt: skip
    return {"before": brief(before), "after": brief(after), "curve": curve, "train_pairs": report.train_pairs,
            "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def run(
    data: Path,
    *,
    quick: bool = False,
    n_images: int | None = None,
    regions: Path | None = None,
    rerank_k: int = 30,
    teran_epochs: int = 12,
    normalize: bool = True,
    min_label_cos: float | None = None,
    exclude_stopwords: bool = True,
    device: str = "cpu",
    num_workers: int = 0,
    batch_size: int = 4,
) -> dict[str, Any]:
    """The whole evaluation; returns the summary (see the module docstring)."""
    from regionrank.encoders import GroundedEncoder
    from regionrank.encoders.labelbag import LabelBagEncoder
    from regionrank.encoders.text import load_text_model
    from regionrank.extractors.labels import coco_label_names

    n_images = n_images if n_images is not None else (QUICK_IMAGES if quick else None)
    ds = load_dataset(data, n_images=n_images)
    texts = [c.text for c in ds.captions]
    with tempfile.TemporaryDirectory(prefix="regionrank-real-") as tmp:
        store_dir = regions if regions is not None else Path(tmp) / "regions"
        records, ext = extract_regions(ds, store_dir, device=device, num_workers=num_workers, batch_size=batch_size)
        text_model = load_text_model(device=device)
        labels = coco_label_names()

        val_cols = np.flatnonzero(np.array([ds.splits[i] == "val" for i in ds.caption_image]))
        val = val_cols if val_cols.size else None
        t0 = time.perf_counter()
        grounded = GroundedEncoder(labels, text_model=text_model, device=device, exclude_stopwords=exclude_stopwords)
        images = [grounded.encode_record(r) for r in records]
        query_vectors = [grounded.encode_query(t).word_embeddings for t in texts]
        gs = grounded_scores(grounded, images, query_vectors)
        grounded_s = time.perf_counter() - t0
        # diagnostic: the static mode (the previous `grounded`); its word filter's threshold given, or chosen
        # on the val captions by MrSw t2i R@1 (then R@5, R@10)
        static = GroundedEncoder(labels, text_model=text_model, device=device, contextual=False)
        static_images = [static.encode_record(r) for r in records]
        label_cos_table = []
        grid = (min_label_cos,) if min_label_cos is not None else ((0.0,) if quick else LABEL_COS_GRID)
        for cos in grid:
            words = [static.embed_phrases(grounded_query_words(static, t, normalize=normalize, min_label_cos=cos))
                     for t in texts]  # fmt: skip
            mrsw = grounded_scores(static, static_images, words, with_scan=False).mrsw
            r = recalls(mrsw, ds.caption_image, columns=val)
            label_cos_table.append(((r["t2i_r1"], r["t2i_r5"], r["t2i_r10"]), cos, mrsw))
        _, chosen_cos, static_mrsw = max(label_cos_table, key=lambda row: row[0])
        t0 = time.perf_counter()
        bag = LabelBagEncoder(labels, text_model=text_model, device=device)
        bag_sims = bag.scores(records, texts)
        labelbag_s = time.perf_counter() - t0
        natural_sims = LabelBagEncoder(labels, text_model=text_model, device=device, text_format="natural").scores(
            records, texts)

        k = min(rerank_k, len(records))
        candidates = []
        for fusion, weight in FUSIONS:
            fused = fuse(gs, fusion, weight)
            t2i_sims = rerank_top_k(gs.mrsw, fused, k, axis=0)
            r = recalls(t2i_sims, ds.caption_image, columns=val)
            candidates.append(((r["t2i_r1"], r["t2i_r5"], r["t2i_r10"]), fusion, weight, fused, t2i_sims))
        best = max(candidates, key=lambda c: c[0])  # first of equals wins: "scan" before the weighted sums
        _, fusion, weight, fused, t2i_sims = best
        i2t_sims = rerank_top_k(gs.mrsw, fused, k, axis=1)

        per_mode = {
            "grounded": recalls(gs.mrsw, ds.caption_image),
            "grounded_scan": {**{m: v for m, v in recalls(t2i_sims, ds.caption_image).items() if m.startswith("t2i")},
                              **{m: v for m, v in recalls(i2t_sims, ds.caption_image).items() if m.startswith("i2t")}},
            "labelbag": recalls(bag_sims, ds.caption_image),
            "grounded_static": recalls(static_mrsw, ds.caption_image),
            "grounded_f1": recalls(gs.f1, ds.caption_image),
            "labelbag_natural": recalls(natural_sims, ds.caption_image),
        }
        fusion_table = [
            {"fusion": f, "weight": w, "val_t2i_r1": s[0], **{m: v for m, v in recalls(ts, ds.caption_image).items()
                                                                if m in ("t2i_r1", "t2i_r5", "t2i_r10")}}
            for s, f, w, _, ts in candidates
        ]  # fmt: skip
        teran = None
        if not quick and teran_epochs > 0:
            teran = teran_sanity(store_dir, ds.captions, Path(tmp) / "teran", epochs=teran_epochs, device=device)

    summary: dict[str, Any] = {"n_images": len(records), "n_captions": len(texts), "images_per_s": ext["images_per_s"]}
    for mode in (*MODES, *EXTRA_MODES):
        for key, value in per_mode[mode].items():
            summary[f"{mode}_{key}"] = value
    summary.update({
        "chance_r1": 1.0 / len(records),
        "rerank_k": k,
        "fusion": fusion if fusion == "scan" else f"weighted:{weight}",
        "fusion_table": fusion_table,
        "n_val_captions": int(val_cols.size),
        "mean_query_words": float(gs.n_words.mean()),
        "exclude_stopwords": exclude_stopwords, "normalize_queries": normalize, "min_label_cos": chosen_cos,
        "label_cos_table": [{"min_label_cos": c, "val_t2i_r1": v[0]} for v, c, _ in label_cos_table],
        "extract_s": ext["extract_s"], "detector_load_s": ext["load_s"], "n_extracted": ext["n_extracted"],
        "stage_seconds": ext["stage_seconds"], "grounded_s": grounded_s, "labelbag_s": labelbag_s,
        "teran": teran,
    })  # fmt: skip
    return summary


def _print_report(s: dict[str, Any]) -> None:
    ips = s["images_per_s"]
    print(f"coco-mini: {s['n_images']} images x {s['n_captions']} captions (chance R@1 {s['chance_r1']:.4f})")
    print(f"detection + features ({DETECTOR}): {s['n_extracted']} images in {s['extract_s']:.1f} s = "
          f"{'n/a (all cached)' if ips is None else f'{ips:.2f} images/s'} (model load {s['detector_load_s']:.1f} s)")
    print(f"{'mode':<15}{'t2i R@1':>9}{'R@5':>7}{'R@10':>7}{'medr':>6}{'i2t R@1':>10}{'R@5':>7}{'R@10':>7}")
    for m in (*MODES, *EXTRA_MODES):
        medr = s.get(f"{m}_t2i_medr", float("nan"))
        print(f"{m:<15}" + f"{s[f'{m}_t2i_r1']:>9.3f}{s[f'{m}_t2i_r5']:>7.3f}{s[f'{m}_t2i_r10']:>7.3f}{medr:>6.0f}"
              f"{s[f'{m}_i2t_r1']:>10.3f}{s[f'{m}_i2t_r5']:>7.3f}{s[f'{m}_i2t_r10']:>7.3f}")
    per_cos = ", ".join(f"{r['min_label_cos']}: {r['val_t2i_r1']:.3f}" for r in s["label_cos_table"])
    print(f"grounded: contextual, stop words {'dropped' if s['exclude_stopwords'] else 'kept'}, "
          f"{s['mean_query_words']:.1f} words per caption")
    print(f"grounded_static query words: normalised {s['normalize_queries']}, min label cosine {s['min_label_cos']} "
          f"(val t2i R@1 per threshold: {per_cos})")
    print(f"grounded_scan: re-rank top {s['rerank_k']}, fusion {s['fusion']} (chosen on {s['n_val_captions']} val captions)")
    for row in s["fusion_table"]:
        print(f"  fusion {row['fusion']:<9} w={row['weight']:<5} val t2i R@1 {row['val_t2i_r1']:.3f}   "
              f"all t2i R@1/5/10 {row['t2i_r1']:.3f} {row['t2i_r5']:.3f} {row['t2i_r10']:.3f}")
    t = s.get("teran")
    if t:
        print(f"TERAN sanity (teran-tiny, feature_dim 1280): {t['train_pairs']} train pairs, {t['seconds']:.0f} s; "
              f"per epoch: loss, val t2i R@1 / R@5 / rsum (percent)")
        print(f"  test R@K in percent (80 images, chance R@1 1.25) before training: {t['before']}")
        print(f"  test R@K in percent after training:  {t['after']}")
        for row in t["curve"]:
            print(f"  epoch {row}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.real", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=default_data_dir(), help="the coco-mini folder")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_IMAGES}-image subset, no TERAN training (< 1 min)")
    ap.add_argument("--n-images", type=int, default=None, help="evenly spaced subset of this many images")
    ap.add_argument("--regions", type=Path, default=None, help="region store folder to keep and reuse (default: a temp dir)")
    ap.add_argument("--rerank-k", type=int, default=30, help="MrSw candidates re-ranked by SCAN per query")
    ap.add_argument("--teran-epochs", type=int, default=12, help="epochs of the TERAN sanity check (0 skips it)")
    ap.add_argument("--keep-stopwords", action="store_true", help="grounded: keep stop words in the queries")
    ap.add_argument("--no-normalize", action="store_true",
                    help="grounded_static: no synonym/plural query normalisation")
    ap.add_argument("--min-label-cos", type=float, default=None,
                    help=f"grounded_static: drop query words farther from every label (0 keeps all; default: chosen on val from {LABEL_COS_GRID})")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--num-workers", type=int, default=0, help="decoding processes of extract()")
    ap.add_argument("--batch-size", type=int, default=4, help="images per detector forward")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    summary = run(args.data, quick=args.quick, n_images=args.n_images, regions=args.regions, rerank_k=args.rerank_k,
                  teran_epochs=args.teran_epochs, normalize=not args.no_normalize, min_label_cos=args.min_label_cos,
                  exclude_stopwords=not args.keep_stopwords,
                  device=args.device, num_workers=args.num_workers,
                  batch_size=args.batch_size)
    _print_report(summary)
    if args.json:
        print(json.dumps(summary, default=float))
    return summary


if __name__ == "__main__":
    main()

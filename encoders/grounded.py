"""Zero-shot label-grounded visual encoder: regions embedded as the text of their detector labels.

A **baseline beside TERAN, not TERAN**: nothing is trained. Each region's embedding is the MiniLM
embedding of its class label (``"cat"``), or ``"<attribute> <label>"`` when the detector gives
attributes (bottom-up: 400 Visual Genome attributes), so regions live in the same space as the
query's word embeddings. Everything built for TERAN then works unchanged on real photos: the region
index, MrSw alignment scoring, SCAN cross-attention re-ranking (parameter-free given embeddings),
per-word explanations and heatmaps.

Design choice: **static per-word embeddings**. Every word, and every label, is embedded on its own
(``[CLS] word [SEP]``, mean of its word-pieces' last hidden states, L2-normalised), so a caption's "cat"
and a region labelled "cat" have cosine exactly 1 (the per-word explanation is then literal), and
related words ("kitten", "puppy") stay close. Contextual token vectors of the whole caption score
about 2 R@1 points higher under MrSw (measurements below) but no longer match a label exactly.
Query words that no label can match are dropped: English stop words (``encoders.text.STOP_WORDS``); a
query made only of stop words keeps all its words. Consecutive query words that form a multi-word label ("traffic light", "hot dog") are
merged into one token.

Global vectors (the first-stage ANN index) are MiniLM **sentence** embeddings (mean over all token
states, the model's own sentence-transformers pooling): of the image's label bag ("a photo of 2 person,
1 dog") and of the query text. Measured on the 239 real COCO photos of ``shared/data/coco-mini`` (1,195
captions, ``ssd-mobilenet-coco`` regions, 6.0 per image), text->image R@1/5/10: sentence globals
34.6/70.5/78.6; mean of the static label vectors 23.0/57.4/66.4; MrSw over static word/label vectors
23.4/63.1/73.6 (contextual caption-token vectors 25.6/66.7/76.2, not used: they break the exact word =
label match that explanations rely on, for +2 points); SCAN t2i re-scoring of all pairs 26.9/64.9/75.1;
global + 0.5 x MrAVGw 35.9/71.6/79.4.

The label map is a parameter (``label_names``): ``encoders`` never imports ``extractors``; the flows
layer passes e.g. ``extractors.labels.coco_label_names()`` for ``ssd-mobilenet-coco`` shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from encoders.checkpoint import update_with_weights
from encoders.embed import EmbedReport
from encoders.text import STOP_WORDS, embed_words, load_text_model, split_words, tokenize
from storage import ImageEmbeddingStore, RegionStore
from storage.records import ImageEmbeddingRecord, QueryEmbedding, RegionRecord

__all__ = ["GroundedEncoder"]

_MAX_PHRASE_WORDS = 3


class GroundedEncoder:
    """Label-grounded zero-shot encoder (see the module docstring).

    Args:
        label_names: detector class id -> label text (e.g. ``{17: "cat", 18: "dog"}``).
        text_model_path: a local BERT-family folder; ``None`` uses the installed all-MiniLM-L6-v2.
        device: where the text model runs.
        attr_names: attribute id -> text, for detectors with attributes (id 0 / missing = none).
        stop_words: words dropped from queries.
        min_attr_score: attributes scored below this are ignored.
        text_model: an already loaded ``(tokenizer, model)`` pair (tests), instead of a folder.
        normalize_queries: map query synonyms and plurals onto the label vocabulary (measured on coco-mini:
            text->image R@1 0.234 -> 0.241 with MrSw).

    Raises:
        ValueError: an empty label map.
        FileNotFoundError: ``text_model_path`` is not a model folder.
    """

    name = "grounded-minilm"

    def __init__(
        self,
        label_names: Mapping[int, str],
        text_model_path: str | os.PathLike[str] | None = None,
        *,
        device: torch.device | str = "cpu",
        attr_names: Mapping[int, str] | None = None,
        stop_words: Collection[str] = STOP_WORDS,
        min_attr_score: float = 0.0,
        text_model: tuple[Any, torch.nn.Module] | None = None,
        normalize_queries: bool = True,
    ) -> None:
        if not label_names:
            raise ValueError("label_names is empty: pass the detector's class id -> label map")
        self.label_names = {int(k): str(v).strip().lower() for k, v in label_names.items()}
        self.attr_names = {int(k): str(v).strip().lower() for k, v in (attr_names or {}).items()}
        self.stop_words = frozenset(w.lower() for w in stop_words)
        self.min_attr_score = float(min_attr_score)
        self.normalize_queries = bool(normalize_queries)
        self.device = torch.device(device)
        if text_model is None:
            tokenizer, model = load_text_model(text_model_path, device=self.device)
        else:
            tokenizer, model = text_model[0], text_model[1].to(self.device)
        self.tokenizer, self.text_model = tokenizer, model.eval()
        self.embed_dim = int(model.config.hidden_size)
        self._phrases = {tuple(v.split()) for v in self.label_names.values() if len(v.split()) > 1}
        self._cache: dict[str, np.ndarray] = {}
        h = hashlib.sha256(b"grounded-v1")
        h.update(json.dumps([sorted(self.label_names.items()), sorted(self.attr_names.items()),
                             sorted(self.stop_words), self.min_attr_score]).encode())
        update_with_weights(h, self.text_model)
        self.encoder_hash = h.hexdigest()

    # ------------------------------------------------------------------ words and labels

    def embed_phrases(self, phrases: Sequence[str]) -> np.ndarray:
        """``float32[n, H]`` unit vectors, one per word/phrase embedded on its own (cached)."""
        todo = [p for p in dict.fromkeys(phrases) if p not in self._cache]
        if todo:
            for p, v in zip(todo, embed_words(self.tokenizer, self.text_model, todo, device=self.device)):
                self._cache[p] = v
        if not phrases:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        return np.stack([self._cache[p] for p in phrases]).astype(np.float32, copy=False)

    def region_labels(self, record: RegionRecord) -> list[str]:
        """The text each region is embedded as: its label, prefixed by its attribute when present.

        Raises:
            ValueError: the record has no class ids, or an id is missing from ``label_names``.
        """
        if record.class_ids is None:
            raise ValueError(
                f"image_id={record.image_id!r} (detector {record.detector!r}) has no class_ids; the grounded encoder "
                f"needs a detector that labels regions (e.g. ssd-mobilenet-coco)"
            )
        unknown = sorted({int(c) for c in record.class_ids} - set(self.label_names))
        if unknown:
            raise ValueError(
                f"class ids {unknown[:5]} of image_id={record.image_id!r} are not in label_names "
                f"({len(self.label_names)} labels); pass the label map of detector {record.detector!r}"
            )
        labels = [self.label_names[int(c)] for c in record.class_ids]
        if record.attr_ids is not None and self.attr_names:
            scores = record.attr_scores if record.attr_scores is not None else np.ones(len(labels), dtype=np.float32)
            for i, (a, s) in enumerate(zip(record.attr_ids, scores)):
                attr = self.attr_names.get(int(a))
                if attr and float(s) >= self.min_attr_score:
                    labels[i] = f"{attr} {labels[i]}"
        return labels

    @torch.no_grad()
    def sentence_embeddings(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """``float32[n, H]`` sentence vectors: mean of all token states (attention-masked), L2-normalised."""
        from encoders.labelbag import sentence_embeddings

        return sentence_embeddings(self.tokenizer, self.text_model, texts, batch_size=batch_size, device=self.device)

    @staticmethod
    def label_bag_text(labels: Sequence[str]) -> str:
        """``"a photo of 2 person, 1 dog"``: label counts, most frequent first, then alphabetical."""
        from encoders.labelbag import label_bag_text

        return label_bag_text(labels)

    def encode_record(self, record: RegionRecord) -> ImageEmbeddingRecord:
        """The image-embedding record of one image: label vectors per region, ``labels`` filled.

        The global vector is the sentence embedding of :meth:`label_bag_text`.
        """
        labels = self.region_labels(record)
        vecs = self.embed_phrases(labels)
        return ImageEmbeddingRecord(
            image_id=record.image_id,
            uri=record.uri,
            boxes=record.boxes,
            region_embeddings=vecs,
            global_embedding=self.sentence_embeddings([self.label_bag_text(labels)])[0],
            width=record.width,
            height=record.height,
            labels=labels,
        )

    # ------------------------------------------------------------------ queries

    def query_words(self, text: str) -> list[str]:
        """Words of a query as matched against labels: lower-cased, synonyms and plurals mapped onto the label
        vocabulary (``"men"`` -> ``"person"``, ``"dogs"`` -> ``"dog"``; see ``encoders.labelbag.normalize_query_text``),
        multi-word labels merged, stop words dropped."""
        if self.normalize_queries:
            from encoders.labelbag import normalize_query_text

            text = normalize_query_text(text, self.label_names.values())
        words = split_words(text)
        merged: list[str] = []
        i = 0
        while i < len(words):
            for n in range(min(_MAX_PHRASE_WORDS, len(words) - i), 1, -1):
                if tuple(words[i : i + n]) in self._phrases:
                    merged.append(" ".join(words[i : i + n]))
                    i += n
                    break
            else:
                merged.append(words[i])
                i += 1
        content = [w for w in merged if w not in self.stop_words]
        return content or merged

    def encode_query(self, text: str) -> QueryEmbedding:
        """Encode a text query: one static vector per content word, global = the query's sentence embedding.

        Raises:
            ValueError: the query has no word at all.
        """
        words = self.query_words(text)
        if not words:
            raise ValueError(f"query {text!r} has no words to search for; type at least one word")
        vecs = self.embed_phrases(words)
        return QueryEmbedding(text=text, tokens=words, word_embeddings=vecs,
                              global_embedding=self.sentence_embeddings([text])[0])

    # ------------------------------------------------------------------ stores

    def encode_images(
        self,
        region_store: RegionStore | str | os.PathLike[str],
        out: ImageEmbeddingStore | str | os.PathLike[str],
        *,
        batch_size: int = 256,
        image_ids: Sequence[str] | None = None,
        rows_per_shard: int = 512,
        progress: Callable[[int, int], None] | None = None,
    ) -> EmbedReport:
        """Write the image-embedding shards of a region store; ids already in ``out`` are skipped.

        Raises:
            ValueError: ``out`` holds ids written by another encoder; a record without usable labels.
        """
        from encoders.embed import check_store_owner, write_in_batches

        start = time.perf_counter()
        regions = region_store if isinstance(region_store, RegionStore) else RegionStore(Path(region_store))
        store = out if isinstance(out, ImageEmbeddingStore) else ImageEmbeddingStore(Path(out))
        ids = list(dict.fromkeys(regions.ids() if image_ids is None else image_ids))
        check_store_owner(store, ids, self.encoder_hash)
        todo = store.missing(ids)
        written = write_in_batches(
            store, (self.name, self.encoder_hash), self.embed_dim, todo,
            lambda keys: [self.encode_record(r) for r in regions.get(keys)],
            batch_size=batch_size, rows_per_shard=rows_per_shard, progress=progress,
        )
        return EmbedReport(self.name, self.encoder_hash, len(ids), written, len(ids) - len(todo),
                           time.perf_counter() - start)
